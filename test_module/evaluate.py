"""Evaluate a face embedder on verification pairs: LFW-style k-fold accuracy, AUC, EER, TAR@FAR.

    python -m test_module.evaluate --model mobilefacenet --best_model_path ckpt.pth \\
        --identity_folders ../shared/data/orl_faces --subjects s31..s40 --input_size 112,96 --flip
"""
from __future__ import annotations

import argparse
import logging
from typing import List, Optional, Tuple

import torch.nn as nn

from common.errors import UserError, cli_main
from test_module import readers
from test_module.preprocess import FITS, parse_input_size
from test_module.verification import evaluate_pairs, fold_indices, metric_names, ordered_metrics, resolve_metric

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m test_module.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered model name (see model_define.list_models())")
    p.add_argument("--best_model_path", required=True, help="checkpoint to evaluate (state_dict + metadata)")
    p.add_argument("--from_data_parallel", action="store_true",
                   help="the checkpoint keys carry DataParallel's 'module.' prefix; strip it")
    src = p.add_mutually_exclusive_group(required=True)
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
    p.add_argument("--input_size", help="model input H,W, e.g. 112,96 (default: the model's registered size)")
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
    return p


def load_model(name: Optional[str], path: str, from_data_parallel: bool,
               input_size: Optional[str] = None) -> Tuple[nn.Module, Tuple[int, int, int]]:
    """The model and its (C, H, W) input: a thinned checkpoint rebuilds itself (its own name and size), a plain
    one is built as ``name`` for ``--input_size``."""
    from core.checkpoint_io import load_model as load_any

    size = model_input_size(name, input_size) if name else None
    model, meta = load_any(path, name, from_data_parallel, size)
    if input_size and not size:
        size = (meta["input_size"][0], *parse_input_size(input_size))
    return model, tuple(size or meta["input_size"])


def pair_spec(args: argparse.Namespace) -> str:
    """The readers.load_pairset spec selected by --pairs / --lfw_pairs / --bin / --identity_folders."""
    flags = (("pairs", "pairs"), ("lfw_pairs", "lfw"), ("bin", "bin"), ("identity_folders", "identity_folders"))
    for flag, kind in flags:
        if getattr(args, flag):
            return f"{kind}:{getattr(args, flag)}"
    raise UserError("give one of --pairs, --lfw_pairs, --bin, --identity_folders")


def model_input_size(model_name: str, input_size: Optional[str]) -> Tuple[int, int, int]:
    """(C, H, W): the model's registered input unless --input_size overrides H, W."""
    from model_define import model_spec

    channels, h, w = model_spec(model_name).input_size
    return (channels, *parse_input_size(input_size)) if input_size else (channels, h, w)


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    resolve_metric(args.metric, metric_names())
    if args.roc and not args.force:
        from common.io import check_writable

        check_writable(args.roc, force=False)
    model, size = load_model(args.model, args.best_model_path, args.from_data_parallel, args.input_size)
    pairset = readers.load_pairset(pair_spec(args), size, args.seed, args.test_root_path, args.bgr, args.fit,
                                   args.subjects, args.max_same, args.lfw_ext, args.workers)
    log.info("%d pairs (%d same), %d images %s", len(pairset), int(pairset.issame.sum()),
             pairset.images.shape[0], tuple(pairset.images.shape[1:]))
    fold_indices(len(pairset), args.folds)          # a bad --folds fails before the embedding pass
    result = evaluate_pairs(model, pairset, args.folds, args.flip, args.batch_size, args.roc)
    for k, v in ordered_metrics(result, args.metric).items():
        print(f"{k:<16} {v:.6g}")


if __name__ == "__main__":
    main()
