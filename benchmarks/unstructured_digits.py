"""Unstructured sparsity on digits: accuracy and sparsity at several ratios after a short fine-tune, and the
on-disk size of the sparse checkpoint next to the dense one.

    python benchmarks/unstructured_digits.py                       # ratios 0.5 0.7 0.9, one-shot + fine-tune
    python benchmarks/unstructured_digits.py --strategy both       # also the GMP ramp over the same epochs

digits_net is trained dense from scratch first (--dense_epochs), then each ratio starts from that same dense
model. "pruned" is top-1 right after masking, "tuned" after --finetune_epochs of SGD with the pruner stepping.
Sizes: the plain dense state_dict file (torch.save) vs the sparse checkpoint (common/sparse_checkpoint.py),
both weights only; the sparse one is checked to load back bit-exactly.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from compression_tool.apps.sparse_training import classifier_spec, digits_for, load_initial, train_dense  # noqa: E402
from compression_tool.engine.unstructured import GMPSchedule, GMPUnstructuredPruner, UnstructuredPruner, weight_sparsity  # noqa: E402
from compression_tool.io.errors import UserError, cli_main  # noqa: E402
from compression_tool.io.sparse_checkpoint import bit_equal, load_sparse_checkpoint, save_sparse_checkpoint  # noqa: E402
from test_module.classification import evaluate_classifier  # noqa: E402
from train_module.optim import build_optimizer, build_scheduler  # noqa: E402
from train_module.sparse import SparseTrainConfig, sparse_train  # noqa: E402

STRATEGIES = {"oneshot": ("oneshot",), "gmp": ("gmp",), "both": ("oneshot", "gmp")}


def file_sizes(model: nn.Module, masks: Dict[str, torch.Tensor], folder: Path, tag: str) -> Dict[str, int]:
    """Bytes of the dense state_dict file and of the sparse checkpoint; checks the bit-exact round trip."""
    sd = model.state_dict()
    dense, sparse = folder / f"{tag}_dense.pth", folder / f"{tag}_sparse.pth"
    torch.save(sd, dense)
    save_sparse_checkpoint(sparse, sd, {"model": "digits_net"}, masks=masks)
    back = load_sparse_checkpoint(sparse).state_dict
    if list(back) != list(sd) or not all(bit_equal(back[k], v) for k, v in sd.items()):
        raise RuntimeError(f"{sparse}: did not load back bit-exactly")
    return {"dense_bytes": dense.stat().st_size, "sparse_bytes": sparse.stat().st_size}


def run_ratio(dense: nn.Module, train: Any, test: Any, ratio: float, strategy: str, args: argparse.Namespace,
              folder: Path) -> Dict[str, Any]:
    model = copy.deepcopy(dense)
    optimizer = build_optimizer(model, None, args.lr, 0.9, 5e-4)
    scheduler = build_scheduler(optimizer)
    iters = args.finetune_epochs * len(train)
    if strategy == "gmp":
        ramp = max(1, iters * 3 // 4)                   # ramp over 3/4 of the fine-tune, then recover at the end
        pruner: UnstructuredPruner = GMPUnstructuredPruner(
            model, GMPSchedule(args.initial_ratio, ratio, ramp, update_every=max(1, ramp // 10)), optimizer=optimizer)
        pruned_top1 = float("nan")
    else:
        pruner = UnstructuredPruner(model, mode="ratio", ratio=ratio, optimizer=optimizer)
        pruner.update_masks()
        pruner.update_params()
        pruned_top1 = evaluate_classifier(model, test)["top1"]
    cfg = SparseTrainConfig(epochs=args.finetune_epochs, test_period=args.finetune_epochs,
                            model_period=args.finetune_epochs, seed=args.seed, progress=not args.no_progress)
    sparse_train(model, pruner, train, optimizer, scheduler, cfg)
    row = {"ratio": ratio, "strategy": strategy, "pruned_top1": pruned_top1,
           "tuned_top1": evaluate_classifier(model, test)["top1"], "weight_sparsity": pruner.sparsity(),
           "total_sparse": UnstructuredPruner.total_sparse(model)}
    row.update(file_sizes(model, pruner.masks, folder, f"{strategy}_{ratio}"))
    return row


def print_table(rows: List[Dict[str, Any]]) -> None:
    head = f"{'ratio':>6} {'strategy':>8} {'pruned':>7} {'tuned':>7} {'w_sparse':>8} {'total':>7} " \
           f"{'dense_B':>8} {'sparse_B':>8} {'size':>6}"
    print(head)
    for r in rows:
        print(f"{r['ratio']:>6} {r['strategy']:>8} {r['pruned_top1']:>7.2f} {r['tuned_top1']:>7.2f} "
              f"{r['weight_sparsity']:>8.4f} {r['total_sparse']:>7.4f} {r['dense_bytes']:>8d} "
              f"{r['sparse_bytes']:>8d} {r['sparse_bytes'] / r['dense_bytes']:>6.3f}")


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7, 0.9], help="sparsity ratios to test")
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default="oneshot",
                   help="oneshot: mask to the ratio at once, then fine-tune; gmp: cubic ramp during the "
                        "fine-tune; both (default oneshot)")
    p.add_argument("--initial_ratio", type=float, default=0.2, help="gmp: ratio at the start of the ramp")
    p.add_argument("--dense_epochs", type=int, default=5, help="dense training from scratch (default 5)")
    p.add_argument("--finetune_epochs", type=int, default=2, help="sparse fine-tune epochs per ratio (default 2)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tune SGD learning rate (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, init and batch order (default 0)")
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    args = p.parse_args(argv)
    if args.dense_epochs < 1 or args.finetune_epochs < 1:
        raise UserError("--dense_epochs and --finetune_epochs must be >= 1")
    t0 = time.perf_counter()
    dense, name = load_initial("digits_net", None, False, args.seed)
    train, test = digits_for(classifier_spec(name), 64, args.seed)
    train_dense(dense, train, args.dense_epochs, args.seed, not args.no_progress)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        dense_top1 = evaluate_classifier(dense, test)["top1"]
        rows.append({"ratio": 0.0, "strategy": "dense", "pruned_top1": dense_top1, "tuned_top1": dense_top1,
                     "weight_sparsity": weight_sparsity(dense), "total_sparse": UnstructuredPruner.total_sparse(dense),
                     **file_sizes(dense, {}, Path(tmp), "dense")})
        for ratio in args.ratios:
            for strategy in STRATEGIES[args.strategy]:
                rows.append(run_ratio(dense, train, test, ratio, strategy, args, Path(tmp)))
    print(f"digits_net on digits 16x16 (1,438 train / 359 test, seed {args.seed}); dense {args.dense_epochs} "
          f"epochs from scratch; fine-tune {args.finetune_epochs} epochs per row, SGD lr {args.lr}, "
          f"momentum 0.9, wd 5e-4; top-1 in %")
    print_table(rows)
    print(f"wall time {time.perf_counter() - t0:.1f} s, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
