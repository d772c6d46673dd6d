#!/usr/bin/env python
"""Label-free pruning of the real MobileFaceNet: fidelity-driven vs TPR-driven schedules, then label-free
distillation, judged on identities the method never saw.

    python benchmarks/mobilefacenet_fidelity.py                 # keep 50 % of the MACs, L1, 5 distillation epochs

Steps (all on 068.ckpt at 112x96, one torch thread):
  1. sensitivity analysis on ORL s31..s40 with ``--metric fidelity`` (mean cosine to the unpruned embeddings) and
     with ``--metric tpr@fpr=1e-2`` (450 same / 450 different pairs);
  2. from each CSV, the FLOPs-budget schedule (``auto_make_yaml.py --flops``: least sensitive layers first);
  3. thin; judge on pairs of s3..s30 (unseen identities; 10-fold accuracy, TPR@FPR=1e-2, fidelity);
  4. label-free distillation of each thinned model on the *unlabeled* images of s31..s40 (the unpruned model as
     teacher, cosine loss), judged again on s3..s30.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from compression_tool.apps.finetune import FinetuneJob, run_finetune  # noqa: E402
from compression_tool.apps.workflow import (  # noqa: E402
    CriterionConfig,
    ModelSource,
    PruneConfig,
    SensitivityConfig,
    eval_setup,
    load_source,
    run_prune,
    run_sensitivity,
)
from compression_tool.engine.budget import schedule_for_budget, write_budget_schedule  # noqa: E402
from compression_tool.engine.checkpoint import example_input  # noqa: E402
from compression_tool.engine.sensitivity import parse_sparsities  # noqa: E402
from model_define.pretrained import MOBILEFACENET_FILE, shared_data_dir  # noqa: E402
from test_module.setup import EvalConfig  # noqa: E402
from train_module.finetune import FinetuneConfig  # noqa: E402

SIZE = (3, 112, 96)
COLUMNS = ("lfw_acc", "tpr@fpr=1e-2", "fidelity")


def judge(model, source_meta, reference, orl: str, subjects: str):
    cfg = EvalConfig(data=f"orl:{orl}", metric="fidelity", subjects=subjects)
    return eval_setup(cfg, source_meta, reference=reference).evaluate(model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_data_dir(), help="folder with mobilefacenet_casia/, orl_faces/")
    p.add_argument("--flops", type=float, default=0.5, help="fraction of the MACs to keep")
    p.add_argument("--method", default="l1", help="pruning criterion")
    p.add_argument("--epochs", type=int, default=5, help="label-free distillation epochs (100 images each)")
    p.add_argument("--lr", type=float, default=0.005, help="distillation learning rate")
    p.add_argument("--sparsities", default="0,0.2,0.4,0.6,0.8", help="sensitivity levels")
    p.add_argument("--work", type=Path, default=Path("work_space/bench_fidelity"), help="outputs")
    args = p.parse_args()
    torch.set_num_threads(1)
    orl = str(args.data / "orl_faces")
    source = ModelSource(str(args.data / MOBILEFACENET_FILE), "mobilefacenet", input_size=SIZE)
    base, meta = load_source(source)
    args.work.mkdir(parents=True, exist_ok=True)
    crit = CriterionConfig(args.method, cache_dir=str(args.work / "rank_conv"))
    rows, t0 = [("unpruned", judge(base, meta, base, orl, "s3..s30"), 1.0)], time.time()
    for metric in ("fidelity", "tpr@fpr=1e-2"):
        tag = metric.replace("@", "_").replace("=", "")
        csv = args.work / f"sa_{tag}.csv"
        run_sensitivity(SensitivityConfig(source, EvalConfig(data=f"orl:{orl}", metric=metric), crit,
                                          parse_sparsities(args.sparsities), str(csv), str(args.work)))
        res = schedule_for_budget(str(csv), base, example_input(SIZE), args.flops, metric)
        yaml_path = args.work / f"schedule_{tag}.yaml"
        write_budget_schedule(res, yaml_path, str(csv), args.method, "mobilefacenet", "orl", SIZE, force=True)
        pruned_path = args.work / f"pruned_{tag}.pth"
        pr = run_prune(PruneConfig(source, str(yaml_path), EvalConfig(data=f"orl:{orl}", metric="fidelity"), crit,
                                   save=True, output=str(pruned_path), work_space=str(args.work), force=True))
        kept = pr.after["macs"] / pr.before["macs"]
        rows.append((f"{metric}-driven, thinned", judge(pr.model, meta, base, orl, "s3..s30"), kept))
        job = FinetuneJob(source=ModelSource(str(pruned_path)), unlabeled=f"orl:{orl}", subjects="s31..s40",
                          teacher=ModelSource(source.path, "mobilefacenet", input_size=SIZE), batch_size=20,
                          train=FinetuneConfig(epochs=args.epochs, lr=args.lr, distill="cosine", freeze_bn=False,
                                               save_dir=str(args.work / f"distill_{tag}"), force=True,
                                               progress=False))
        out = run_finetune(job)
        tuned, _ = load_source(ModelSource(str(out.last_path)))
        rows.append((f"{metric}-driven, + label-free distillation", judge(tuned, meta, base, orl, "s3..s30"), kept))
    print(f"\nMobileFaceNet 068.ckpt 112x96, keep {args.flops:.0%} of the MACs ({args.method}); schedules chosen on "
          f"ORL s31..s40, judged on s3..s30 pairs (unseen identities); {time.time() - t0:.0f} s")
    print("| model | MACs kept | " + " | ".join(COLUMNS) + " |\n|---|---|" + "---|" * len(COLUMNS))
    for name, m, kept in rows:
        print(f"| {name} | {kept:.3f} | " + " | ".join(f"{m[c]:.4f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
