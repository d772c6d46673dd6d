"""Accuracy of the pretrained checkpoints in ../shared/data with our model definitions.

    python benchmarks/pretrained_accuracy.py                 # CIFAR ResNet-20/32/44/56 (10,000 JPEGs) + ORL
    python benchmarks/pretrained_accuracy.py --per_class 100 --depths 20

Prints ResNet top-1 (with the independent reference 81.0/82.3/82.7/83.0 %) and MobileFaceNet's 1-NN
identification and pair AUC on ORL (flip-concatenated embeddings), next to raw pixels as a baseline.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List, Optional

from compression_tool.engine.checkpoint import load_model  # noqa: E402
from compression_tool.io.errors import UserError, cli_main  # noqa: E402
from model_define.pretrained import CIFAR_RESNET_FILES, MOBILEFACENET_FILE, cifar_resnet_path, shared_data_dir  # noqa: E402
from test_module.reference import cifar_jpeg_tensors, flip_embeddings, nn_identification, orl_tensors, pair_auc, top1  # noqa: E402

REFERENCE_TOP1 = {20: 81.0, 32: 82.3, 44: 82.7, 56: 83.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_data_dir(),
                   help="folder holding cifar10_test/, resnet_cifar10/, mobilefacenet_casia/, orl_faces/ "
                        "(default ../shared/data)")
    p.add_argument("--depths", type=int, nargs="*", default=sorted(CIFAR_RESNET_FILES),
                   help="CIFAR ResNet depths to evaluate (default 20 32 44 56; none to skip)")
    p.add_argument("--per_class", type=int, default=None,
                   help="evaluate on a seeded subset of this many CIFAR images per class (default: all 1,000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --per_class subset (default 0)")
    p.add_argument("--skip_faces", action="store_true", help="do not run the MobileFaceNet ORL check")
    return p


def cifar_report(data: Path, depths: List[int], per_class: Optional[int], seed: int) -> None:
    x, y = cifar_jpeg_tensors(data / "cifar10_test", per_class, seed)
    print(f"CIFAR-10 JPEG test images: {len(y)}")
    print(f"{'model':<10}{'top-1 %':>9}{'reference %':>13}{'diff':>7}{'seconds':>9}")
    for depth in depths:
        t = time.perf_counter()
        model = load_model(cifar_resnet_path(depth, data), f"resnet{depth}", from_data_parallel=True)[0]
        acc = top1(model, x, y)
        ref = REFERENCE_TOP1.get(depth, float("nan"))
        print(f"resnet{depth:<4}{acc:>9.2f}{ref:>13.1f}{acc - ref:>+7.2f}{time.perf_counter() - t:>9.1f}")


def face_report(data: Path) -> None:
    x, y = orl_tensors(data / "orl_faces")
    model = load_model(data / MOBILEFACENET_FILE, "mobilefacenet")[0]
    emb = flip_embeddings(model, x)
    raw = x.reshape(len(x), -1)
    print(f"ORL faces: {len(y)} images, {len(set(y.tolist()))} identities, input {tuple(x.shape[1:])}")
    print(f"{'features':<34}{'1-NN id %':>10}{'pair AUC':>10}")
    print(f"{'MobileFaceNet flip-concat (256-d)':<34}{nn_identification(emb, y):>10.2f}{pair_auc(emb, y):>10.4f}")
    print(f"{'raw pixels':<34}{nn_identification(raw, y):>10.2f}{pair_auc(raw, y):>10.4f}")


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.data.is_dir():
        raise UserError(f"--data {args.data}: no such folder")
    unknown = sorted(set(args.depths) - set(CIFAR_RESNET_FILES))
    if unknown:
        raise UserError(f"--depths {unknown}: pretrained files exist for {sorted(CIFAR_RESNET_FILES)} only")
    if args.depths:
        cifar_report(args.data, args.depths, args.per_class, args.seed)
    if not args.skip_faces:
        face_report(args.data)


if __name__ == "__main__":
    main()
