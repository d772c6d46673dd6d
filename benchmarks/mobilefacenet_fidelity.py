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
     teacher, cosine loss), judged again on s3..s30;
  5. the label-free route (``--route_iters N``, 0 skips it), on the fidelity-driven model: AdaBN (BN statistics
     re-estimated on the s31..s40 images and their mirror images), then distillation on those images augmented
     (``--augment --hflip``: a fresh rotation/scale/shift/brightness/contrast draw each time), N iterations of 20
     images, BN statistics kept at their AdaBN values (``--route_bn train``: updated, then AdaBN again); ``--other
     DIR`` mixes in other unlabeled images (``--other_per_class`` per class, e.g. CIFAR-10 upsampled). Judged on
     s3..s30 like every other row. ``--route_features`` runs variants that also match the teacher's feature maps
     (``train_module --feature_distill``); ``--route_subjects s31..s37 --route_check s38..s40 --judge none`` chooses
     among them on held-out s31..s40 identities without looking at s3..s30 (docs/label_free.md); ``--route_mixup
     ALPHA`` blends the distillation images (train_module --mixup).

    python benchmarks/mobilefacenet_fidelity.py --epochs 20 --lr 0.01 --metrics fidelity --route_iters 300
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from compression_tool.apps.finetune import FinetuneJob, run_finetune, unlabeled_images  # noqa: E402
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
from compression_tool.engine.bn_stats import reestimate_bn  # noqa: E402
from compression_tool.engine.budget import schedule_for_budget, write_budget_schedule  # noqa: E402
from compression_tool.engine.checkpoint import example_input, save_pruned  # noqa: E402
from compression_tool.engine.sensitivity import parse_sparsities  # noqa: E402
from compression_tool.io.errors import UserError  # noqa: E402
from model_define.pretrained import MOBILEFACENET_FILE, shared_data_dir  # noqa: E402
from test_module.setup import EvalConfig  # noqa: E402
from train_module.features import parse_layers  # noqa: E402
from train_module.finetune import FinetuneConfig  # noqa: E402
from train_module.optim import LR_SCHEDULES  # noqa: E402

SIZE = (3, 112, 96)
COLUMNS = ("lfw_acc", "tpr@fpr=1e-2", "fidelity")


def judge(model, source_meta, reference, orl: str, subjects: str):
    cfg = EvalConfig(data=f"orl:{orl}", metric="fidelity", subjects=subjects)
    return eval_setup(cfg, source_meta, reference=reference).evaluate(model)


def adabn(model, images: torch.Tensor, batch: int = 20, method: str = "adabn", reference=None, keep=None):
    """Re-estimate the BN statistics on ``images`` and their mirror images (in place; ``method`` paired: corrected
    against the unpruned ``reference`` thinned by ``keep``, engine.bn_stats); the model is returned."""
    both = torch.cat([images, images.flip(-1)])
    reestimate_bn(method, reference, model, keep or {}, [both[i:i + batch] for i in range(0, len(both), batch)])
    return model


def subset_folder(root: Path, per_class: int, out: Path) -> Path:
    """A folder of symbolic links to the first ``per_class`` images (sorted) of each class folder of ``root``."""
    for cls in sorted(d for d in root.iterdir() if d.is_dir()):
        (out / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            link = out / cls.name / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return out


def route_variants(text: str) -> list:
    """``--route_features``: variants separated by ';', each ``none`` (cosine only) or
    ``[mse|at:]LAYER,LAYER[@WEIGHT]``, e.g. ``none;blocks.4,blocks.11,blocks.14@1;at:blocks.4,blocks.11@10``."""
    out = []
    for v in (t.strip() for t in text.split(";") if t.strip()):
        if v == "none":
            out.append((v, (), "mse", 1.0))
            continue
        kind, _, rest = v.rpartition(":") if v.startswith(("mse:", "at:")) else ("mse", "", v)
        layers, _, weight = rest.partition("@")
        out.append((v, parse_layers(layers), kind, float(weight or 1.0)))
    return out


def judged(model, meta, base, orl: str, args) -> dict:
    """The judge on s3..s30; NaN everywhere with ``--judge none``."""
    return judge(model, meta, base, orl, "s3..s30") if args.judge == "s3..s30" else {c: float("nan") for c in COLUMNS}


def route_checks(model, meta, base, orl: str, args) -> dict:
    """The judge on s3..s30 (unless ``--judge none``) and the fidelity on the --route_check identities."""
    m = judged(model, meta, base, orl, args)
    if args.route_check:
        m["fid_check"] = judge(model, meta, base, orl, args.route_check)["fidelity"]
    return m


def label_free_route(pr, meta, base, source, orl: str, args) -> list:
    """AdaBN -> distillation on augmented --route_subjects (+ other images), once per --route_features variant;
    rows judged on s3..s30 (and the fidelity on the held-out --route_check identities)."""
    subj = args.route_subjects
    faces = unlabeled_images(f"orl:{orl}", SIZE, subjects=subj)
    model = adabn(pr.model, faces, method=args.route_bn_method, reference=base, keep=pr.keep)
    kept = pr.after["macs"] / pr.before["macs"]
    way = "AdaBN" if args.route_bn_method == "adabn" else "paired BN correction"
    rows = [(f"fidelity-driven, thinned + {way} ({subj})", route_checks(model, meta, base, orl, args), kept)]
    start = save_pruned(args.work / "route_adabn.pth", model, pr.meta, force=True)
    other = subset_folder(Path(args.other), args.other_per_class, args.work / "other") if args.other else None
    unlabeled = [f"orl:{orl}"] + ([f"image_folder:{other}"] if other else [])
    for n, (label, layers, kind, weight) in enumerate(route_variants(args.route_features)):
        t0 = time.process_time()
        job = FinetuneJob(source=ModelSource(str(start)), unlabeled=unlabeled, subjects=subj, augment=True,
                          hflip=True, teacher=ModelSource(source.path, "mobilefacenet", input_size=SIZE),
                          batch_size=20,
                          train=FinetuneConfig(max_iters=args.route_iters, lr=args.lr, distill="cosine",
                                               warmup_iters=args.route_warmup, lr_schedule=args.route_lr_schedule,
                                               decay_iters=args.route_decay_iters,
                                               freeze_bn=args.route_bn == "frozen", feature_layers=layers,
                                               feature_loss=kind, feature_weight=weight, mixup=args.route_mixup,
                                               seed=args.route_seed, save_dir=str(args.work / f"route_distill_{n}"),
                                               force=True, progress=False),
                          resume=args.route_resume or None)
        try:
            out = run_finetune(job)
        except UserError as exc:             # e.g. a loss that diverged: a row saying so, then the next variant
            rows.append((f"variant {label}: {exc}", {}, kept))
            print(rows[-1][0], flush=True)
            continue
        tuned, _ = load_source(ModelSource(str(out.last_path)))
        what = f"augmented {subj}" + (f" + {Path(args.other).name} ({args.other_per_class}/class)" if other else "")
        feat = ("" if not layers else f", features {label}") + (f", mixup {args.route_mixup:g}"
                                                                 if args.route_mixup else "") \
            + (f", LR {args.route_lr_schedule}" if args.route_lr_schedule != "step" else "") \
            + (f" (decay over the last {args.route_decay_iters})" if args.route_decay_iters else "")
        rows.append((f"fidelity-driven, {way} + distillation on {what}{feat} ({args.route_iters} it, "
                     f"{time.process_time() - t0:.0f} CPU-s)", route_checks(tuned, meta, base, orl, args), kept))
        print("row:", rows[-1][0], {k: round(v, 4) for k, v in rows[-1][1].items()}, flush=True)
        if args.route_bn == "train":
            rows.append(("  ... + AdaBN again", route_checks(adabn(tuned, faces), meta, base, orl, args), kept))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_data_dir(), help="folder with mobilefacenet_casia/, orl_faces/")
    p.add_argument("--flops", type=float, default=0.5, help="fraction of the MACs to keep")
    p.add_argument("--method", default="l1", help="pruning criterion")
    p.add_argument("--epochs", type=int, default=5, help="label-free distillation epochs (100 images each)")
    p.add_argument("--lr", type=float, default=0.005, help="distillation learning rate")
    p.add_argument("--sparsities", default="0,0.2,0.4,0.6,0.8", help="sensitivity levels")
    p.add_argument("--metrics", default="fidelity,tpr@fpr=1e-2", help="SA metrics, one schedule each")
    p.add_argument("--route_iters", type=int, default=300,
                   help="iterations (20 images) of the label-free route's distillation; 0 skips the route")
    p.add_argument("--route_bn_method", choices=("adabn", "paired"), default="adabn",
                   help="route: how the thinned model's BN statistics are re-estimated on the route's images before "
                        "distillation (engine.bn_stats; paired: corrected against the unpruned model)")
    p.add_argument("--route_bn", choices=("frozen", "train"), default="frozen",
                   help="route: BN statistics kept from AdaBN during distillation (frozen) or updated (train)")
    p.add_argument("--route_features", default="none",
                   help="route: distillation variants separated by ';', each 'none' (embedding cosine only) or "
                        "'[mse|at:]LAYER,LAYER[@WEIGHT]' (train_module --feature_distill/--feature_loss/"
                        "--feature_weight), e.g. 'none;blocks.4,blocks.11,blocks.14@1'")
    p.add_argument("--route_warmup", type=int, default=0,
                   help="route: linear LR warm-up iterations of the distillation (train_module --warmup_iters)")
    p.add_argument("--route_lr_schedule", choices=LR_SCHEDULES, default="step",
                   help="route: the distillation's LR schedule (train_module --lr_schedule; step without milestones "
                        "= constant --lr, the default; cosine = a half cosine to 0 over --route_iters; wsd = "
                        "constant, then linear to 0 over the last --route_decay_iters)")
    p.add_argument("--route_decay_iters", type=int, default=0,
                   help="route: --lr_schedule wsd's final decay in iterations (a constant run resumes into it)")
    p.add_argument("--route_resume", metavar="CKPT", default="",
                   help="route: continue the distillation from a checkpoint an earlier route run wrote (e.g. "
                        "WORK/route_distill_0/last_step=4800.pth) up to --route_iters; the run is the same, bit for "
                        "bit, as a straight one with the same flags (one --route_features variant only)")
    p.add_argument("--route_mixup", metavar="ALPHA", type=float, default=0.0,
                   help="route: mixup of the distillation images, lam ~ Beta(ALPHA, ALPHA) per image, teacher and "
                        "student on the same blended images (train_module --mixup; default 0 = off)")
    p.add_argument("--route_seed", type=int, default=0,
                   help="route: seed of the distillation (batch order, augmentation, mixup draws); the thinned start "
                        "is the same for every seed, so runs with other seeds measure the fine-tune's own spread")
    p.add_argument("--route_subjects", default="s31..s40",
                   help="route: the identities whose (unlabeled) images AdaBN and distillation use")
    p.add_argument("--route_check", default="",
                   help="route: also report the fidelity on these held-out identities (e.g. s38..s40 with "
                        "--route_subjects s31..s37): the signal variants may be chosen on")
    p.add_argument("--judge", choices=("s3..s30", "none"), default="s3..s30",
                   help="none: do not evaluate on the judge identities (while choosing a variant)")
    p.add_argument("--reuse_sa", action="store_true",
                   help="reuse a sensitivity CSV already in --work (same command before) instead of measuring it")
    p.add_argument("--other", default="", help="route: other unlabeled images mixed in (an image folder, e.g. "
                                               "DATA/cifar10_test; default none: the s31..s40 faces only)")
    p.add_argument("--other_per_class", type=int, default=100, help="images taken from each class of --other")
    p.add_argument("--work", type=Path, default=Path("work_space/bench_fidelity"), help="outputs")
    args = p.parse_args()
    if args.route_resume and len(route_variants(args.route_features)) != 1:
        p.error("--route_resume continues one distillation: give one --route_features variant")
    torch.set_num_threads(1)
    orl = str(args.data / "orl_faces")
    source = ModelSource(str(args.data / MOBILEFACENET_FILE), "mobilefacenet", input_size=SIZE)
    base, meta = load_source(source)
    args.work.mkdir(parents=True, exist_ok=True)
    crit = CriterionConfig(args.method, cache_dir=str(args.work / "rank_conv"))
    rows, t0 = [("unpruned", judged(base, meta, base, orl, args), 1.0)], time.time()
    for metric in args.metrics.split(","):
        tag = metric.replace("@", "_").replace("=", "")
        csv = args.work / f"sa_{tag}.csv"
        if not (args.reuse_sa and csv.exists()):
            run_sensitivity(SensitivityConfig(source, EvalConfig(data=f"orl:{orl}", metric=metric), crit,
                                              parse_sparsities(args.sparsities), str(csv), str(args.work)))
        res = schedule_for_budget(str(csv), base, example_input(SIZE), args.flops, metric)
        yaml_path = args.work / f"schedule_{tag}.yaml"
        write_budget_schedule(res, yaml_path, str(csv), args.method, "mobilefacenet", "orl", SIZE, force=True)
        pruned_path = args.work / f"pruned_{tag}.pth"
        pr = run_prune(PruneConfig(source, str(yaml_path), EvalConfig(data=f"orl:{orl}", metric="fidelity"), crit,
                                   save=True, output=str(pruned_path), work_space=str(args.work), force=True))
        kept = pr.after["macs"] / pr.before["macs"]
        rows.append((f"{metric}-driven, thinned", judged(pr.model, meta, base, orl, args), kept))
        if args.epochs > 0:
            rows += plain_distillation(pruned_path, meta, base, source, orl, metric, kept, args)
        if metric == "fidelity" and args.route_iters > 0:
            rows += label_free_route(pr, meta, base, source, orl, args)
    columns = COLUMNS + (("fid_check",) if args.route_check else ())
    print(f"\nMobileFaceNet 068.ckpt 112x96, keep {args.flops:.0%} of the MACs ({args.method}); schedules chosen on "
          f"ORL s31..s40, judged on s3..s30 pairs (unseen identities); {time.time() - t0:.0f} s")
    print("| model | MACs kept | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for name, m, kept in rows:
        print(f"| {name} | {kept:.3f} | " + " | ".join(f"{m.get(c, float('nan')):.4f}" for c in columns) + " |")


def plain_distillation(pruned_path, meta, base, source, orl: str, metric: str, kept: float, args) -> list:
    """Label-free distillation of the thinned model on the s31..s40 images (no AdaBN, no augmentation)."""
    tag = metric.replace("@", "_").replace("=", "")
    job = FinetuneJob(source=ModelSource(str(pruned_path)), unlabeled=f"orl:{orl}", subjects="s31..s40",
                      teacher=ModelSource(source.path, "mobilefacenet", input_size=SIZE), batch_size=20,
                      train=FinetuneConfig(epochs=args.epochs, lr=args.lr, distill="cosine", freeze_bn=False,
                                           save_dir=str(args.work / f"distill_{tag}"), force=True, progress=False))
    out = run_finetune(job)
    tuned, _ = load_source(ModelSource(str(out.last_path)))
    return [(f"{metric}-driven, + label-free distillation", judged(tuned, meta, base, orl, args), kept)]


if __name__ == "__main__":
    main()
