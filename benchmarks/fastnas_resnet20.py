#!/usr/bin/env python
"""ResNet-20 / CIFAR-10 at 50 % MACs: NVIDIA ModelOpt FastNAS vs our sensitivity routes vs uniform L1, side by side.

    python benchmarks/fastnas_resnet20.py --output work_space/fastnas_resnet20.json

One seeded split of the 10,000 CIFAR-10 test JPEGs (``compression_tool.data.splits``, as ``--split 1000,4000,rest``
of the CLIs, seed 0): the first 5,000 images are the **training half**, the other 5,000 the **evaluation half**.
Everything that chooses uses only the training half: its SA part (``--sa_images``: sensitivity analysis and
FastNAS's score), a seeded selection subset of the rest (``--select_images``: choosing among our candidate
schedules) and BN-calibration batches. Arms:

- ``fastnas``: ``modelopt.torch.prune.prune(mode=[("fastnas", cfg)], constraints={"flops": "50%"})``, channel
  divisor 8 (16 cannot reach 50 % here), BN calibration on 50 training batches (FastNAS silently skips it with
  fewer: "data queue not filled"), score = top-1 on the SA part. ModelOpt cannot see through the option-A
  zero-pad shortcut (``PadShortcut``), so its search space is each block's first conv (printed in the log).
- ``sa_budget``: our L1 sensitivity analysis on the SA part (``engine.sensitivity.sweep``), the budget schedule of
  ``auto_make_yaml.py --flops 0.5`` (``engine.budget.schedule_for_budget``), thinned, AdaBN on the calibration
  batches (``engine.target_true.ComposedChecker``).
- ``ours_selected``: the same budget route for several criteria (``--criteria``) and both orderings of the moves
  (by SA top-1 and by SA loss, the finer signal on a small SA part); each candidate is thinned + AdaBN and the one
  with the best top-1 on the selection part is kept (EagleEye-style selection, training half only).
- ``ours_ftproxy``: the same candidates, each given a ``--proxy_epochs`` run of the same fine-tune recipe on the
  training half minus the selection part and measured on the selection part; the chosen candidate's *pruned*
  weights (not the proxy's) then get the fine-tune every arm gets. Both selections are
  ``compression_tool.apps.proxy_select`` (``auto_make_yaml.py --flops F --select adabn|finetune_proxy``).
- ``uniform_l1``: one L1 ratio over every group (``engine.strategies.ChannelPruner.prune_to_budget``) + AdaBN.

Each arm then gets the identical fine-tune (``train_module.finetune.finetune_classifier``, ``--epochs`` over the
training half, random crop + flip, SGD momentum 0.9, wd 5e-4, lr /10 at 50 % and 75 %, same seed and batch order;
``--distill`` adds the existing logit distillation from the unpruned model, for every arm alike) and is evaluated
once on the evaluation half: top-1, MACs and params kept (``engine.cost.params_and_macs``), and an exact McNemar
test on per-image correctness against FastNAS.

ModelOpt is a benchmark-only dependency, never imported by the package or the tests:
``pip install --no-deps nvidia-modelopt==0.47.0 torchprofile==0.0.4`` (torchprofile 0.1.0 breaks it), then the
few modules it imports unconditionally: ``pip install requests huggingface_hub omegaconf pulp``. The optional extra
``fastnas`` in pyproject.toml records the same pins; do not install it with the resolver (it may replace the CPU
torch). The README's install does not include it.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared machine

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional, Tuple  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from compression_tool.apps.proxy_select import (  # noqa: E402
    ProxyData,
    ProxyRecipe,
    ProxySelectConfig,
    budget_candidates,
    proxy_select,
)
from compression_tool.data.imagefolder import load_image_folder  # noqa: E402
from compression_tool.data.normalise import RGB_MEAN, RGB_STD  # noqa: E402
from compression_tool.data.splits import parse_split, split_tensors  # noqa: E402
from compression_tool.engine.checkpoint import load_model  # noqa: E402
from compression_tool.engine.cost import params_and_macs  # noqa: E402
from compression_tool.engine.search.fitness import bn_recalibrate  # noqa: E402
from compression_tool.engine.strategies import ChannelPruner  # noqa: E402
from compression_tool.engine.target_true import correct_per_sample  # noqa: E402
from compression_tool.engine.thinning import layer_widths  # noqa: E402
from compression_tool.io.errors import UserError, cli_main  # noqa: E402
from compression_tool.io.files import atomic_write_json, check_writable  # noqa: E402
from model_define.pretrained import cifar_resnet_path, shared_data_dir  # noqa: E402

log = logging.getLogger("fastnas_resnet20")


def mcnemar_exact(a: torch.Tensor, b: torch.Tensor) -> Tuple[int, int, float]:
    """Exact (binomial) two-sided McNemar test on paired per-image correctness: (a right & b wrong, a wrong & b
    right, p-value)."""
    n10 = int((a & ~b).sum())
    n01 = int((~a & b).sum())
    n = n10 + n01
    if n == 0:
        return n10, n01, 1.0
    tail = sum(math.comb(n, k) for k in range(min(n10, n01) + 1)) / 2 ** n
    return n10, n01, min(1.0, 2 * tail)


# ------------------------------------------------------------------------------------------------ the arms

def fastnas(model: nn.Module, x0: torch.Tensor, keep: float, calib: List[torch.Tensor], score_x: torch.Tensor,
            score_y: torch.Tensor, divisor: int) -> nn.Module:
    """ModelOpt FastNAS to ``keep`` of the FLOPs (its FLOPs are 2 x MACs; the ratio is the same)."""
    import modelopt.torch.prune as mtp  # benchmark-only dependency (see the module docstring)
    from modelopt.torch.prune.fastnas import FastNASConfig

    cfg = FastNASConfig().model_dump()
    for key, field in (("nn.Conv2d", "channel_divisor"), ("nn.BatchNorm2d", "feature_divisor"),
                       ("nn.Linear", "feature_divisor")):
        cfg[key]["*"][field] = divisor
    evals = [0]

    def score(m: nn.Module) -> float:
        evals[0] += 1
        return float(correct_per_sample(m, score_x, score_y).mean())

    with tempfile.TemporaryDirectory() as tmp:   # a fresh search state: never resume an earlier run's
        pruned, _ = mtp.prune(copy.deepcopy(model), mode=[("fastnas", cfg)], constraints={"flops": f"{keep:.0%}"},
                              dummy_input=x0, config={"data_loader": calib, "collect_func": lambda batch: batch,
                                                      "score_func": score, "verbose": False,
                                                      "checkpoint": str(Path(tmp) / "fastnas_search.pth")})
    log.info("fastnas: %d score evaluations", evals[0])
    return pruned.eval()


def recipe(args: argparse.Namespace) -> ProxyRecipe:
    """The one fine-tune recipe of every arm (and of ours_ftproxy's short proxy runs)."""
    return ProxyRecipe(lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                       distill=None if args.distill == "none" else args.distill, alpha=args.alpha)


def uniform_l1(model: nn.Module, x0: torch.Tensor, keep: float, calib) -> nn.Module:
    m = copy.deepcopy(model).eval()
    ChannelPruner(m, x0, "l1").prune_to_budget(flops=keep)
    bn_recalibrate(m, calib)
    return m


# ------------------------------------------------------------------------------------------------ driver

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_data_dir(),
                   help="folder holding cifar10_test/ and resnet_cifar10/ (default ../shared/data)")
    p.add_argument("--keep_macs", type=float, default=0.5, help="fraction of the MACs to keep")
    p.add_argument("--arms", default="fastnas,sa_budget,ours_selected,ours_ftproxy,uniform_l1")
    p.add_argument("--criteria", default="l1,fpgm",
                   help="ours_selected / ours_ftproxy: criteria of the candidate schedules")
    p.add_argument("--proxy_epochs", type=int, default=1, help="ours_ftproxy: epochs of each candidate's proxy run")
    p.add_argument("--sa_images", type=int, default=1000, help="training-half images for SA and FastNAS's score")
    p.add_argument("--train_images", type=int, default=5000,
                   help="the training half: the first part of the seeded split (the rest is the evaluation half)")
    p.add_argument("--select_images", type=int, default=1000,
                   help="other training-half images on which ours_selected picks its candidate")
    p.add_argument("--calib_batches", type=int, default=50, help="BN calibration batches (FastNAS needs 50)")
    p.add_argument("--calib_batch_size", type=int, default=64)
    p.add_argument("--divisor", type=int, default=8, help="FastNAS channel divisor")
    p.add_argument("--epochs", type=int, default=3, help="fine-tune epochs over the 5,000-image training half")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--distill", choices=["none", "mse", "cosine"], default="none",
                   help="logit distillation from the unpruned model during the fine-tune, every arm alike")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the distillation term")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the sub-splits and the fine-tune")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("work_space/fastnas_resnet20"), help="SA CSVs go here")
    p.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    return p


def run(args: argparse.Namespace) -> Dict:
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    model, _ = load_model(cifar_resnet_path(20, args.data), "resnet20", from_data_parallel=True)
    model.eval()
    x, y, _ = load_image_folder(args.data / "cifar10_test", (32, 32), RGB_MEAN, RGB_STD)
    parts = split_tensors(x, y, parse_split(f"{args.sa_images},{args.train_images - args.sa_images},rest", args.seed))
    sa, (x_ev, y_ev) = parts["sa"], parts["report"]
    data = ProxyData.from_parts(parts, args.select_images, args.seed, args.calib_batches, args.calib_batch_size)
    (x_tr, y_tr), sel, calib, b = data.train, data.select, data.calib, args.calib_batch_size
    x0 = x_ev[:1]
    full = params_and_macs(model, x0)
    base_correct = torch.from_numpy(correct_per_sample(model, x_ev, y_ev) > 0)
    print(f"ResNet-20, CIFAR-10 JPEGs: training half {len(y_tr)} (SA {len(sa[1])}, selection {len(sel[1])}, "
          f"calibration {args.calib_batches}x{b}), evaluation half {len(y_ev)}; seed {args.seed}; "
          f"unpruned top-1 {100 * base_correct.double().mean():.2f} %, {full['macs'] / 1e6:.2f}M MACs", flush=True)

    teacher = copy.deepcopy(model).eval() if args.distill != "none" else None
    pruned: Dict[str, nn.Module] = {}
    notes: Dict[str, Dict] = {}
    seconds: Dict[str, float] = {}
    if "fastnas" in arms:
        t = time.perf_counter()
        pruned["fastnas"] = fastnas(model, x0, args.keep_macs, calib, *sa, args.divisor)
        seconds["fastnas"] = time.perf_counter() - t
    ours = {"sa_budget", "ours_selected", "ours_ftproxy"} & set(arms)
    searching = bool({"ours_selected", "ours_ftproxy"} & set(arms))
    if ours:
        t = time.perf_counter()
        criteria = [c.strip() for c in args.criteria.split(",") if c.strip()] if searching else []
        cfg = ProxySelectConfig(keep=args.keep_macs, criteria=list(dict.fromkeys(["l1", *criteria])),
                                orderings=("top1", "loss") if searching else ("top1",),
                                scopes=("all", "inner") if searching else ("all",), proxy_epochs=args.proxy_epochs,
                                recipe=recipe(args), work_dir=str(args.work))
        cands = budget_candidates(model, x0, data, cfg)
        seconds["sa_budget"] = time.perf_counter() - t
        by_name = {c.name: c for c in cands}
        if "sa_budget" in arms:
            pruned["sa_budget"] = copy.deepcopy(by_name["l1/top1/all"].model)
            notes["sa_budget"] = {"schedule": by_name["l1/top1/all"].schedule}
        t_cands = time.perf_counter() - t
        for arm, select in (("ours_selected", "adabn"), ("ours_ftproxy", "finetune_proxy")):
            if arm not in arms:
                continue
            t = time.perf_counter()
            chosen = proxy_select(model, x0, data, dataclasses.replace(cfg, select=select), teacher=teacher,
                                  candidates=cands)
            print(f"{arm}: top-1 on the selection part " + ("after AdaBN" if select == "adabn" else
                  f"after a {args.proxy_epochs}-epoch proxy fine-tune on the other {len(data.proxy_train[1])} "
                  "images"))
            for c in cands:
                print(f"  candidate {c.name:<18} {c.scores[select]:6.2f}  MACs kept {c.budget.macs_kept:.3f}"
                      f"{'  <- chosen' if c.name == chosen.chosen else ''}", flush=True)
            pruned[arm] = copy.deepcopy(chosen.winner.model)       # the pruned weights, not the proxy's
            notes[arm] = {"chosen": chosen.chosen, "selection_top1": {c.name: c.scores[select] for c in cands},
                          "schedule": chosen.winner.schedule}
            seconds[arm] = t_cands + time.perf_counter() - t
    if "uniform_l1" in arms:
        t = time.perf_counter()
        pruned["uniform_l1"] = uniform_l1(model, x0, args.keep_macs, calib)
        seconds["uniform_l1"] = time.perf_counter() - t

    rows: List[Dict] = []
    correct: Dict[str, torch.Tensor] = {}
    for name in arms:
        m = pruned[name]
        c = params_and_macs(m, x0)
        before = float(correct_per_sample(m, x_ev, y_ev).mean())
        t = time.perf_counter()
        recipe(args).finetune(m, x_tr, y_tr, args.epochs, teacher)
        ft_s = time.perf_counter() - t
        correct[name] = torch.from_numpy(correct_per_sample(m, x_ev, y_ev) > 0)
        rows.append({"arm": name, "macs_kept": c["macs"] / full["macs"], "params_kept": c["params"] / full["params"],
                     "macs": c["macs"], "params": c["params"], "top1_pruned": before,
                     "top1": 100 * float(correct[name].double().mean()), "prune_seconds": seconds.get(name),
                     "finetune_seconds": ft_s, "widths": dict(layer_widths(m)), **notes.get(name, {})})
        print(f"{name}: MACs kept {rows[-1]['macs_kept']:.3f}, top-1 after pruning {before:.2f} -> fine-tuned "
              f"{rows[-1]['top1']:.2f} (fine-tune {ft_s:.0f} s)", flush=True)
    ref = "fastnas" if "fastnas" in correct else None
    for r in rows:
        if ref and r["arm"] != ref:
            n10, n01, p = mcnemar_exact(correct[r["arm"]], correct[ref])
            r.update({"vs_fastnas_points": r["top1"] - rows[arms.index(ref)]["top1"], "mcnemar_only_this": n10,
                      "mcnemar_only_fastnas": n01, "mcnemar_p": p})
    result = {"args": {k: str(v) for k, v in vars(args).items()},
              "baseline": {"top1": 100 * float(base_correct.double().mean()), "n_eval": len(y_ev), **full},
              "rows": rows,
              "wall_seconds": time.perf_counter() - t_start}
    print_table(result, args)
    return result


def print_table(result: Dict, args: argparse.Namespace) -> None:
    fin = f"{args.epochs}-epoch fine-tune" + (f" + {args.distill} distillation" if args.distill != "none" else "")
    n_ev = result["baseline"]["n_eval"]
    print(f"\nResNet-20, {args.keep_macs:.0%} MACs, {fin} on the {10000 - n_ev}-image training half; top-1 % on the "
          f"{n_ev}-image evaluation half (seed {args.seed}); McNemar: exact, two-sided, vs fastnas")
    print(f"| arm | MACs kept | params kept | top-1 pruned | top-1 fine-tuned | vs FastNAS | only this / only FastNAS "
          f"right | McNemar p |\n|---|---|---|---|---|---|---|---|\n"
          f"| unpruned | 1.000 | 1.000 | | {result['baseline']['top1']:.2f} | | | |")
    for r in result["rows"]:
        vs = f"{r['vs_fastnas_points']:+.2f}" if "vs_fastnas_points" in r else ""
        mc = (f"{r['mcnemar_only_this']} / {r['mcnemar_only_fastnas']} | {r['mcnemar_p']:.3g}"
              if "mcnemar_p" in r else " | ")
        print(f"| {r['arm']} | {r['macs_kept']:.3f} | {r['params_kept']:.3f} | {r['top1_pruned']:.2f} | "
              f"{r['top1']:.2f} | {vs} | {mc} |")
    for r in result["rows"]:
        if "vs_fastnas_points" in r:
            fn = next(q for q in result["rows"] if q["arm"] == "fastnas")
            print(f"{r['arm']} vs fastnas: {r['vs_fastnas_points']:+.2f} points, top-1 ratio "
                  f"{r['top1'] / fn['top1']:.4f}, McNemar p = {r['mcnemar_p']:.3g}")
    print(f"wall time {result['wall_seconds']:.0f} s")


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if not 0.0 < args.keep_macs < 1.0:
        raise UserError(f"--keep_macs: expected a fraction in (0, 1), got {args.keep_macs}")
    if args.sa_images + args.select_images > args.train_images:
        raise UserError("--sa_images + --select_images must fit in the training half (--train_images)")
    if args.output:
        check_writable(args.output, args.force)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    result = run(args)
    if args.output:
        atomic_write_json(args.output, json.loads(json.dumps(result, default=float)))


if __name__ == "__main__":
    main()
