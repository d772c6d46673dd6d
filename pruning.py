#!/usr/bin/env python
"""compression_tool pruning CLI: sensitivity analysis (--mode sa), schedule-driven thinning (--mode prune) and
per-layer ratio search under a FLOPs/params budget (--mode search)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common.errors import UserError, cli_main  # noqa: E402
from core.search.cli import add_search_args, run_search  # noqa: E402
from core.sensitivity import default_sparsities, parse_sparsities  # noqa: E402

MODES = ("sa", "prune", "search", "finetune")


def _floats(text: str):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _mode(argv):
    for i, a in enumerate(argv):
        if a == "--mode" and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if a.startswith("--mode="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, argv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=MODES, required=True,
                   help="sa: sensitivity analysis -> CSV; prune: apply a --yaml schedule, thin, report, save; "
                        "search: per-layer ratios under a --flops/--params budget -> schedule YAML; "
                        "finetune: fine-tune (thinned) models — its flags are train_module's, see "
                        "'python pruning.py --mode finetune --help'")
    p.add_argument("--model", default=None,
                   help="architecture name from the model zoo (needed for plain checkpoints; "
                        "thinned checkpoints name their own)")
    p.add_argument("--best_model_path", help="checkpoint to start from (.pth: state_dict, or a thinned checkpoint)")
    p.add_argument("--from_data_parallel", action="store_true",
                   help="strip the 'module.' prefix DataParallel adds to checkpoint keys")
    p.add_argument("--data", default="digits",
                   help="evaluation data: digits | image_folder:DIR | mnist:DIR | cifar10:DIR | json:DIR | "
                        "orl:DIR | identity_folders:DIR | pairs:FILE | lfw:PAIRS_TXT | bin:FILE")
    p.add_argument("--test_root_path", default=None, help="image root for pairs:/lfw: pair lists")
    p.add_argument("--mean", type=_floats, default=None,
                   help="classifier data: per-channel mean on the [0,1] scale, e.g. 0.485,0.456,0.406 "
                        "(RGB image folders and CIFAR pickles default to these ImageNet/CIFAR constants)")
    p.add_argument("--std", type=_floats, default=None,
                   help="classifier data: per-channel std on the [0,1] scale (default 0.229,0.224,0.225 for RGB)")
    p.add_argument("--input_size", default=None,
                   help="model input as C,H,W or H,W or H (e.g. 112,96); default: the model's own")
    p.add_argument("--metric", default="lfw_acc",
                   help="face embedders: the metric to put first in the CSV and to target "
                        "(lfw_acc, auc, tpr@fpr=1e-3 / tar@far=1e-3, …); classifiers always use top1")
    p.add_argument("--folds", type=int, default=10, help="face verification: k of the k-fold accuracy")
    p.add_argument("--flip", action="store_true", help="face verification: flip test-time augmentation")
    p.add_argument("--bgr", action="store_true", help="face images: feed BGR (models trained on BGR)")
    p.add_argument("--method", default=None,
                   help="pruning criterion (l1, l2, fpgm, hrank, …); for --mode prune it overrides the "
                        "schedule's pruner classes")
    p.add_argument("--fpgm", action="store_true", help="use FPGM (geometric median) everywhere")
    p.add_argument("--hrank", action="store_true", help="use HRank (feature-map rank) everywhere")
    p.add_argument("--limit", type=int, default=5, help="hrank/data-driven criteria: batches used for statistics")
    p.add_argument("--sparsities", type=parse_sparsities, default=default_sparsities(),
                   help="sa: levels as '0,0.2,0.4' or 'start:stop:step' (default 0.0..0.9 step 0.1)")
    p.add_argument("--eval_batches", type=int, default=None,
                   help="evaluate on the first N batches only (a fixed subset; default: all)")
    p.add_argument("--batch_size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--no_cache", action="store_true",
                   help="sa: recompute the unchanged prefix of the network instead of reusing its activations")
    p.add_argument("--ignore", nargs="*", default=[], help="layer names never to prune (output layers always are)")
    p.add_argument("--yaml", default=None, help="prune: the schedule (from auto_make_yaml.py or written by hand)")
    p.add_argument("--save_model_pt", action="store_true", help="prune: write the thinned checkpoint")
    p.add_argument("--output", default=None,
                   help="output path (sa: CSV, default work_space/sensitivity_data/<model>_<method>.csv; "
                        "prune: checkpoint, default work_space/pruned_model/<model>.pth; "
                        "search: schedule, default yaml_file/<model>_search_<algo>_<flops>.yaml)")
    p.add_argument("--work_space", default="work_space", help="root folder for outputs and caches")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing output (checkpoint, or the schedule --mode search writes)")
    p.add_argument("--seed", type=int, default=0, help="seed for data splits, pairs, random criteria and the search")
    add_search_args(p)
    return p


@cli_main
def main(argv=None) -> None:
    mode, rest = _mode(list(sys.argv[1:] if argv is None else argv))
    if mode == "finetune":  # the seed tool's mode: same engine as python -m train_module
        from train_module.cli import main as finetune_main
        return finetune_main(rest)
    args = build_parser().parse_args(argv)
    from core import workflow

    if args.limit <= 0 or args.batch_size <= 0 or (args.eval_batches is not None and args.eval_batches <= 0):
        raise UserError("--limit, --batch_size and --eval_batches must be positive")
    {"sa": workflow.run_sensitivity, "prune": workflow.run_prune, "search": run_search}[args.mode](args)


if __name__ == "__main__":
    main()
