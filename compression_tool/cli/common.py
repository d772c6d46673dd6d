"""Flags shared by the command lines, and their translation into the applications' typed configs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from compression_tool.apps.workflow import CriterionConfig, ModelSource
from compression_tool.cli.parser import add_threads_arg
from compression_tool.io.errors import UserError
from test_module.setup import EvalConfig

HELP_FORMAT = argparse.RawDescriptionHelpFormatter


def floats(text: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {v}")
    return v


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="architecture name from the model zoo (needed for plain checkpoints; thinned "
                        "checkpoints name their own)")
    g.add_argument("--best_model_path", required=required,
                   help="checkpoint to start from: a state_dict (maybe wrapped), or a thinned/sparse checkpoint")
    g.add_argument("--from_data_parallel", action="store_true",
                   help="strip the 'module.' prefix DataParallel adds to checkpoint keys")
    g.add_argument("--input_size", default=None,
                   help="model input as C,H,W (e.g. 3,112,96); H,W or H take the model's channels; "
                        "default: the model's registered size")
    g.add_argument("--trust_checkpoint", action="store_true",
                   help="load checkpoints that need full unpickling (pickled modules or classes). Unpickling can "
                        "run code: only for files you made yourself. Default: weights only")


def add_eval_args(p: argparse.ArgumentParser, eval_batches_default: Optional[int] = None) -> None:
    g = p.add_argument_group("evaluation data")
    g.add_argument("--data", default="digits",
                   help="digits | image_folder:DIR | mnist:DIR | cifar10:DIR | cifar100:DIR | json:DIR "
                        "(classifiers); orl:DIR | identity_folders:DIR | pairs:FILE | lfw:PAIRS_TXT | bin:FILE "
                        "(face verification pairs)")
    g.add_argument("--mean", type=floats, default=None,
                   help="classifier data: per-channel mean on the [0,1] scale (default: the model's registry "
                        "entry, else the data kind's: ImageNet stats for RGB folders/CIFAR, 0.1307 MNIST, 0.5 "
                        "digits/JSON)")
    g.add_argument("--std", type=floats, default=None, help="classifier data: per-channel std on the [0,1] scale")
    g.add_argument("--metric", default="lfw_acc",
                   help="face embedders: the metric put first in the CSV and targeted: lfw_acc (k-fold accuracy), "
                        "auc, eer, tpr@fpr=1e-3 (= tar@far=1e-3; needs >= 1000 different pairs), or fidelity (mean "
                        "cosine to the unpruned model's embeddings: label-free, works on image_folder:DIR too); "
                        "classifiers always report top1, top5, loss")
    add_face_args(g)
    g.add_argument("--eval_batches", type=positive_int, default=eval_batches_default,
                   help="evaluate on N batches only: a fixed, seeded subset (default: all)")
    g.add_argument("--batch_size", type=positive_int, default=64, help="evaluation batch size")
    g.add_argument("--seed", type=int, default=0, help="seed for data subsets, pairs, random criteria, search")
    add_split_args(g, "target-true splits sa,check,report (e.g. 0.34,0.33,0.33 or 512,1000,rest; face data: by "
                      "identity, or by fold for pair lists; identity folders also s31..s35/s36..s40/s3..s30): sa "
                      "measures on the SA part only, search on the check part, prune reports on the report part "
                      "(see auto_make_yaml.py --mode target_true)")
    add_threads_arg(g)
    add_device_arg(g)


def add_face_args(g) -> None:
    """How face verification data is read and scored (pair lists, k-fold, flip, channel order, identities)."""
    g.add_argument("--test_root_path", default=None, help="image root for pairs:/lfw: pair lists")
    g.add_argument("--folds", type=positive_int, default=10, help="face verification: k of the k-fold accuracy")
    g.add_argument("--flip", action="store_true", help="face verification: add the flipped image's embedding")
    g.add_argument("--bgr", action="store_true", help="face images: feed BGR (models trained on OpenCV input)")
    g.add_argument("--subjects", default=None,
                   help="identity folders (orl:/identity_folders:): the identities to pair (or, with --split, to "
                        "split), e.g. s31..s40 (orl's default) or s3..s30")


def add_bn_method_arg(g, default: Optional[str] = "adabn", default_text: Optional[str] = None) -> None:
    from compression_tool.engine.bn_stats import BN_METHODS

    g.add_argument("--bn_method", choices=BN_METHODS, default=default,
                   help="how BN statistics are re-estimated after thinning (with --bn_recalib N): 'adabn' measures "
                        "the thinned model's own statistics on the calibration images; 'paired' keeps the unpruned "
                        "model's and corrects each BN by what thinning changed on those images (BNs it did not "
                        "touch stay exactly as they were: fewer changed predictions for light cuts). Default: "
                        f"{default_text or default}")


def add_device_arg(p) -> None:
    p.add_argument("--device", default="cpu",
                   help="where the model runs: cpu (default) | cuda | cuda:N | auto (cuda when available)")
    p.add_argument("--amp", action="store_true",
                   help="CUDA only: mixed precision (float16 autocast) for evaluation and fine-tuning (with a "
                        "gradient scaler); refused on the CPU, which stays exact float32")


def add_criterion_args(p: argparse.ArgumentParser, default: Optional[str] = "l1") -> None:
    from compression_tool.engine.criteria import describe_criteria
    from compression_tool.engine.criteria.weight import DEFAULT_REDUCTION, REDUCTIONS

    g = p.add_argument_group("criterion", "channel ranking criteria (lowest score removed first):\n" +
                             describe_criteria())
    g.add_argument("--method", default=None,
                   help=f"pruning criterion (see the list above; default {default or 'the schedule’s classes'})")
    g.add_argument("--fpgm", action="store_true", help="the seed tool's switch for --method fpgm")
    g.add_argument("--hrank", action="store_true", help="the seed tool's switch for --method hrank")
    g.add_argument("--limit", type=positive_int, default=5,
                   help="batches data-driven criteria (hrank, apoz, thinet, taylor) collect statistics on")
    g.add_argument("--reduction", choices=REDUCTIONS, default=DEFAULT_REDUCTION,
                   help=f"l1 / l2 / fpgm: 'first' scores the leading layer's filters only (Distiller); mean / sum "
                        f"/ max combine every coupled slice of the group — filters, BN gamma, PReLU, the consumers' "
                        f"input columns — each normalised by its mean (default {DEFAULT_REDUCTION}: best measured "
                        f"in docs/criteria.md)")


def add_output_args(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("outputs")
    g.add_argument("--output", default=None, help=what)
    g.add_argument("--work_space", default="work_space", help="root folder for outputs and caches")
    g.add_argument("--force", action="store_true", help="overwrite existing outputs")
    g.add_argument("--ignore", nargs="*", default=[],
                   help="layer names never to prune (output layers — logits, embeddings — never are)")


def model_source(args: argparse.Namespace) -> ModelSource:
    return ModelSource(path=args.best_model_path, model=args.model, from_data_parallel=args.from_data_parallel,
                       input_size=args.input_size, trust=args.trust_checkpoint)


def eval_config(args: argparse.Namespace, split_part: str = "sa") -> EvalConfig:
    return EvalConfig(data=args.data, batch_size=args.batch_size, eval_batches=args.eval_batches, seed=args.seed,
                      metric=args.metric, test_root=args.test_root_path, folds=args.folds, flip=args.flip,
                      bgr=args.bgr, subjects=args.subjects, split=args.split, split_seed=args.split_seed,
                      split_part=split_part, mean=args.mean, std=args.std,
                      device=getattr(args, "device", "cpu"), amp=getattr(args, "amp", False))


def criterion_name(args: argparse.Namespace, default: Optional[str] = "l1") -> Optional[str]:
    """--fpgm / --hrank switch the criterion globally (the seed tool's flags); --method names any."""
    if args.fpgm and args.hrank:
        raise UserError("--fpgm and --hrank are exclusive; pick one (or use --method)")
    if args.fpgm or args.hrank:
        return "fpgm" if args.fpgm else "hrank"
    return args.method or default


def criterion_config(args: argparse.Namespace, default: Optional[str] = "l1") -> CriterionConfig:
    from compression_tool.engine.criteria import CRITERIA

    name = criterion_name(args, default)
    if name is not None and name not in CRITERIA:
        raise UserError(f"--method: unknown pruning criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    return CriterionConfig(name=name or "l1", limit=args.limit, seed=args.seed, reduction=args.reduction,
                           cache_dir=str(Path(args.work_space) / "rank_conv"))


def add_latency_args(g, budget_help: Optional[str] = None, runtime_default: Optional[str] = "torch",
                     runtime_help: str = "the runtime the model ships on: PyTorch CPU or ONNX Runtime CPU") -> None:
    """The latency flags shared by every tool that budgets or reports latency (per-layer tables, cached per machine
    in --latency_dir, measured on --latency_runtime at --latency_threads and --latency_batch)."""
    if budget_help:
        g.add_argument("--latency", type=float, default=None, help=budget_help)
    g.add_argument("--latency_runtime", choices=("torch", "ort"), default=runtime_default, help=runtime_help)
    g.add_argument("--latency_threads", type=int, default=1, help="latency: intra-op threads of the measurement")
    g.add_argument("--latency_batch", type=int, default=1, help="latency: batch size of the measurement")
    g.add_argument("--latency_dir", default="work_space/latency", help="latency: where the per-layer tables live")


def add_split_args(g, help: str, default: Optional[str] = None) -> None:
    """``--split sa,check,report`` (fractions or counts, one may be 'rest') and its ``--split_seed``: the
    target-true splits every tool reads the same way (compression_tool.data.splits)."""
    g.add_argument("--split", default=default, help=help)
    g.add_argument("--split_seed", type=int, default=0, help="seed of the --split permutation")
