"""Evaluate a model: a classifier's top-1/top-5/loss on --data, or a face embedder on verification pairs
(LFW-style k-fold accuracy, AUC, EER, TAR@FAR). Thinned checkpoints name their own model and input size.

    python -m test_module.evaluate --best_model_path work_space/pruned_model/digits_net.pth --data digits
    python -m test_module.evaluate --model mobilefacenet --best_model_path ckpt.pth \\
        --identity_folders ../shared/data/orl_faces --subjects s31..s40 --input_size 112,96 --flip
"""
from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from compression_tool.apps.workflow import ModelSource, eval_setup, load_source
from compression_tool.cli.common import add_device_arg, add_split_args, floats
from compression_tool.cli.parser import ArgumentParser, add_threads_arg, apply_threads
from compression_tool.data import readers
from compression_tool.data.preprocess import FITS
from compression_tool.data.spec import parse_data_spec
from compression_tool.engine.device import check_amp, resolve_device, with_amp
from compression_tool.io.errors import UserError, cli_main
from compression_tool.io.files import check_writable
from test_module.setup import EvalConfig
from test_module.verification import evaluate_pairs, fold_indices, metric_names, ordered_metrics, resolve_metric

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m compression_tool.cli.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="registered model name (see model_define.list_models()); not needed for thinned checkpoints")
    p.add_argument("--best_model_path", required=True, help="checkpoint to evaluate (state_dict + metadata)")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow a checkpoint that needs full unpickling (can run code: only your own files)")
    p.add_argument("--from_data_parallel", action="store_true",
                   help="the checkpoint keys carry DataParallel's 'module.' prefix; strip it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="SPEC",
                     help="any data spec of pruning.py --data: classifier data (digits, image_folder:DIR, mnist:DIR, "
                          "cifar10:DIR, json:DIR…) gives top1/top5/loss; face specs (orl:DIR, lfw:…) verification")
    src.add_argument("--pairs", metavar="FILE", help="pair list, lines 'img0 img1 issame' relative to --test_root_path")
    src.add_argument("--lfw_pairs", metavar="FILE",
                     help="LFW pairs.txt; images at --test_root_path/<name>/<name>_<nnnn>.<--lfw_ext>")
    src.add_argument("--bin", metavar="FILE", help="insightface .bin: pickle of (encoded images, issame list)")
    src.add_argument("--identity_folders", metavar="DIR",
                     help="DIR/<identity>/<image>: build balanced seeded pairs (see --subjects, --seed, --max_same)")
    p.add_argument("--test_root_path", metavar="DIR",
                   help="image root for --pairs (default: the pair list's folder) and --lfw_pairs (required)")
    p.add_argument("--lfw_ext", default="jpg", help="image extension for --lfw_pairs (default jpg)")
    p.add_argument("--subjects", help="identity folders to use, e.g. s31..s40 or s31,s32 (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed for the identity-folder pair list (default 0)")
    p.add_argument("--max_same", type=int, help="at most this many same-identity pairs (default: all)")
    p.add_argument("--input_size", help="model input C,H,W (H,W takes the model's channels), e.g. 3,112,96 "
                                        "(default: the checkpoint's or the model's registered size)")
    p.add_argument("--mean", type=floats, default=None, help="classifier data: per-channel mean on the [0,1] scale")
    p.add_argument("--std", type=floats, default=None, help="classifier data: per-channel std on the [0,1] scale")
    p.add_argument("--eval_batches", type=int, default=None, help="classifier data: evaluate N batches only")
    add_split_args(p, "classifier data: evaluate one part of the target-true splits sa,check,report (as "
                      "pruning.py --split); --split_part names it (default report)")
    p.add_argument("--split_part", choices=("sa", "check", "report"), default="report",
                   help="the part of --split to evaluate")
    p.add_argument("--fit", choices=FITS, default="pad",
                   help="how images of another aspect ratio reach --input_size: pad (default), crop, resize")
    p.add_argument("--folds", type=int, default=10, help="k of the k-fold accuracy (default 10, as LFW)")
    p.add_argument("--flip", action="store_true",
                   help="test-time augmentation: add the embedding of the horizontally flipped image")
    p.add_argument("--bgr", action="store_true", help="feed channels in BGR order (models trained with OpenCV)")
    p.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=0, help="threads decoding images (default 0: main thread)")
    p.add_argument("--metric", default="lfw_acc",
                   help="metric printed first, e.g. lfw_acc, auc, eer, tar@far=1e-3 (default lfw_acc)")
    p.add_argument("--roc", metavar="PNG", help="also write the ROC curve to this PNG")
    p.add_argument("--force", action="store_true", help="overwrite an existing --roc file")
    add_threads_arg(p)
    add_device_arg(p)
    return p


def pair_spec(args: argparse.Namespace) -> str:
    """The readers.load_pairset spec selected by --pairs / --lfw_pairs / --bin / --identity_folders."""
    flags = (("pairs", "pairs"), ("lfw_pairs", "lfw"), ("bin", "bin"), ("identity_folders", "identity_folders"))
    for flag, kind in flags:
        if getattr(args, flag):
            return f"{kind}:{getattr(args, flag)}"
    raise UserError("give one of --pairs, --lfw_pairs, --bin, --identity_folders")


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    check_amp(args.device, args.amp)
    resolve_metric(args.metric, metric_names())
    if args.roc:
        check_writable(args.roc, args.force)   # before the evaluation, not after it
    model, meta = load_source(ModelSource(args.best_model_path, args.model, args.from_data_parallel,
                                          args.input_size, args.trust_checkpoint))
    model.to(device)
    size = tuple(meta["input_size"])
    spec = args.data or pair_spec(args)
    if not parse_data_spec(spec).is_face:
        cfg = EvalConfig(data=spec, batch_size=args.batch_size, eval_batches=args.eval_batches, seed=args.seed,
                         mean=args.mean, std=args.std, split=args.split, split_seed=args.split_seed,
                         split_part=args.split_part, device=args.device, amp=args.amp)
        setup = eval_setup(cfg, meta)   # the model's registry normalisation; --split: one part of the splits
        for k, v in setup.evaluate(model).items():
            print(f"{k:<16} {v:.6g}")
        return
    pairset = readers.load_pairset(spec, size, args.seed, args.test_root_path, args.bgr, args.fit,
                                   args.subjects, args.max_same, args.lfw_ext, args.workers)
    log.info("%d pairs (%d same), %d images %s", len(pairset), int(pairset.issame.sum()),
             pairset.images.shape[0], tuple(pairset.images.shape[1:]))
    fold_indices(len(pairset), args.folds)          # a bad --folds fails before the embedding pass
    result = with_amp(evaluate_pairs, device, args.amp)(model, pairset, args.folds, args.flip, args.batch_size,
                                                         args.roc)
    for k, v in ordered_metrics(result, args.metric).items():
        print(f"{k:<16} {v:.6g}")


if __name__ == "__main__":
    main()
