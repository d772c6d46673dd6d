"""Fine-tune a (pruned) model: cross-entropy for classifiers, ArcFace/CosFace for face embedders,
optionally distilling the unpruned teacher's outputs.

    python -m train_module --model digits_net --best_model_path work_space/pruned_model/digits_net.pth \\
        --data digits --epochs 5 --lr 0.01
    python -m train_module --model mobilefacenet --best_model_path pruned.pth --data orl:../shared/data/orl_faces \\
        --head arcface --teacher_path ../shared/data/mobilefacenet_casia/068.ckpt --distill cosine --alpha 1
    python -m train_module ... --head none --distill cosine --teacher_path T.pth   # pure distillation, no labels
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from common.errors import UserError, cli_main
from test_module.preprocess import FITS
from train_module.finetune import EvalFn, FinetuneConfig, config_dict, finetune
from train_module.heads import HEADS, make_head

log = logging.getLogger(__name__)

ORL_TRAIN_SUBJECTS = "s3..s30"     # the held-out s31..s40 are test_module's ORL verification pairs
TRAIN_SPECS = ("digits", "identity_folders:DIR", "orl:DIR")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train_module", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered model name; optional when the checkpoint is a pruned one (it "
                                   "names its model)")
    p.add_argument("--best_model_path", required=True,
                   help="checkpoint to fine-tune: a pruned (thinned) checkpoint or a plain state_dict")
    p.add_argument("--from_data_parallel", action="store_true",
                   help="--best_model_path keys carry DataParallel's 'module.' prefix; strip it")
    p.add_argument("--data", default="digits",
                   help="training data: digits (default; the train split), identity_folders:DIR "
                        "(DIR/<identity>/<image>, see --subjects) or orl:DIR (subjects s3..s30 by default)")
    p.add_argument("--subjects", help="identity folders to train on, e.g. s3..s30 (default: all; orl: s3..s30)")
    p.add_argument("--eval_data",
                   help="evaluation data spec as in pruning.py --data (default: digits for digits, the held-out "
                        "s31..s40 pairs for orl:DIR, none for identity_folders)")
    p.add_argument("--metric", default="lfw_acc",
                   help="face metric to maximise when choosing the best checkpoint (default lfw_acc); "
                        "classifiers use top1")
    p.add_argument("--fit", default="pad", choices=FITS,
                   help="how face images of another aspect ratio reach the model input (default pad)")
    p.add_argument("--hflip", action="store_true", help="augment training images with random horizontal flips")
    p.add_argument("--head", choices=sorted(HEADS) + ["none"],
                   help="margin head for embedders (default arcface); 'none' = pure distillation, no labels "
                        "used; classifiers are trained with plain cross-entropy and take no head")
    p.add_argument("--s", type=float, help="head scale (default: arcface/cosface 64)")
    p.add_argument("--m", type=float, help="head margin (default: arcface 0.5, cosface 0.35)")
    p.add_argument("--teacher_path", help="unpruned teacher checkpoint (same --model) for distillation")
    p.add_argument("--teacher_from_data_parallel", action="store_true",
                   help="--teacher_path keys carry DataParallel's 'module.' prefix; strip it")
    p.add_argument("--distill", choices=("cosine", "mse"),
                   help="distillation loss to the teacher's outputs (needs --teacher_path)")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the distillation loss (default 1)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--max_iters", type=int, help="stop after this many iterations in total (overrides --epochs)")
    p.add_argument("--batch_size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate (default 0.01)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight_decay", type=float, default=5e-4,
                   help="weight decay, not applied to BN / bias / PReLU parameters (default 5e-4)")
    p.add_argument("--milestones", default="",
                   help="comma-separated epochs at which the LR is multiplied by --gamma, e.g. 3,6 (default none)")
    p.add_argument("--gamma", type=float, default=0.1, help="LR factor at each milestone (default 0.1)")
    p.add_argument("--warmup_iters", type=int, default=0, help="linear LR warm-up iterations (default 0)")
    p.add_argument("--freeze_bn", action="store_true",
                   help="keep BatchNorm running statistics fixed (small fine-tuning sets)")
    p.add_argument("--eval_every", type=int, default=0,
                   help="evaluate every N iterations (default 0: at the end of every epoch)")
    p.add_argument("--eval_at_start", action="store_true",
                   help="also evaluate before training (the starting point counts as a best candidate)")
    p.add_argument("--save_dir", help="folder for best_<metric>=<value>_step=<n>.pth "
                                      "(default work_space/finetune/<model>)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint this tool wrote (model, head, "
                                                    "optimizer, LR schedule and step)")
    p.add_argument("--seed", type=int, default=0, help="seed for batch order, augmentation and pairs (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite existing checkpoint files")
    return p


def parse_milestones(text: str, iters_per_epoch: int) -> Tuple[int, ...]:
    """'3,6' (epochs) -> iteration counts."""
    try:
        epochs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--milestones: expected comma-separated epochs such as 3,6, got {text!r}") from None
    return tuple(int(round(e * iters_per_epoch)) for e in epochs)


class RandomHFlip(Dataset):
    """Wrap a tensor dataset: flip each image horizontally with probability 1/2 (global torch RNG)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, *rest = self.base[i]
        if torch.rand(()) < 0.5:
            x = torch.flip(x, dims=[-1])
        return (x, *rest)


def train_tensors(spec: str, input_size: Sequence[int], subjects: Optional[str], fit: str, seed: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) for the training spec, at the model's (C, H, W)."""
    kind, _, arg = spec.partition(":")
    c, h, w = (int(v) for v in input_size)
    if kind == "digits":
        from common.data import digits_split

        if h != w:
            raise UserError(f"--data digits: the model input must be square, got {h}x{w}")
        return digits_split(image_size=h, channels=c, seed=seed)[0]
    if kind in ("identity_folders", "orl") and arg:
        from test_module import readers
        from test_module.preprocess import ImageTransform

        chosen = subjects if subjects is not None else (ORL_TRAIN_SUBJECTS if kind == "orl" else None)
        data = readers.read_identity_dataset(arg, ImageTransform(size=(h, w), channels=c, fit=fit),
                                             readers.parse_subjects(chosen))
        images, labels = data[0], data[1]
        log.info("%d training images of %d identities from %s", len(labels), int(labels.max()) + 1, arg)
        return images, labels
    raise UserError(f"--data {spec!r}: expected one of {', '.join(TRAIN_SPECS)}")


def default_eval_spec(spec: str) -> Optional[str]:
    kind = spec.partition(":")[0]
    return spec if kind in ("digits", "orl") else None


def output_size(model: nn.Module, input_size: Sequence[int]) -> int:
    """Width of the model's output (embedding size of an embedder) for one dummy input."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *[int(v) for v in input_size]))
    model.train(was)
    return int(out.flatten(1).shape[1])


def checkpoint_meta(meta: Dict[str, Any], cfg: FinetuneConfig, data: str) -> Dict[str, Any]:
    """The loaded model's meta (name, widths, keep-arrays, schedule) in core's pruned format, so that
    ``core.checkpoint_io.load_model`` rebuilds fine-tuned checkpoints too."""
    from core.checkpoint_io import FORMAT

    carried = {k: v for k, v in meta.items() if k not in ("metrics", "train_state", "step", "best_metric",
                                                            "best_value", "finetune", "source_meta")}
    return {**carried, "format": FORMAT, "keep": meta.get("keep", []),
            "finetune": {**config_dict(cfg), "data": data}}


def build_loader(args: argparse.Namespace, input_size: Sequence[int]) -> Tuple[DataLoader, int]:
    """Shuffled (seeded) training loader and the number of classes / identities in it."""
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    x, y = train_tensors(args.data, input_size, args.subjects, args.fit, args.seed)
    dataset: Dataset = TensorDataset(x, y)
    if args.hflip:
        dataset = RandomHFlip(dataset)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    return loader, int(y.max()) + 1


def build_head(args: argparse.Namespace, kind: str, name: str, model: nn.Module, input_size: Sequence[int],
               num_classes: int) -> Optional[nn.Module]:
    if kind == "classifier":
        if args.head not in (None, "none"):
            raise UserError(f"--head {args.head}: {name} is a classifier (plain cross-entropy); "
                            "heads are for embedders")
        return None
    if args.head == "none":
        return None
    return make_head(args.head or "arcface", output_size(model, input_size), num_classes, s=args.s, m=args.m)


def build_eval_fn(args: argparse.Namespace, kind: str, input_size: Sequence[int]) -> Optional[EvalFn]:
    spec = args.eval_data or default_eval_spec(args.data)
    if not spec:
        log.warning("no --eval_data: no best-checkpoint selection; the last state is saved")
        return None
    from core.evaluation import build_setup

    return build_setup(spec, kind, input_size, batch_size=args.batch_size, seed=args.seed,
                       metric=args.metric).evaluate


def config_from_args(args: argparse.Namespace, iters_per_epoch: int, name: str) -> FinetuneConfig:
    return FinetuneConfig(epochs=args.epochs, max_iters=args.max_iters, lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay,
                          milestones=parse_milestones(args.milestones, iters_per_epoch), gamma=args.gamma,
                          warmup_iters=args.warmup_iters, distill=args.distill, alpha=args.alpha,
                          freeze_bn=args.freeze_bn, eval_every=args.eval_every, eval_at_start=args.eval_at_start,
                          save_dir=args.save_dir or f"work_space/finetune/{name}", force=args.force, seed=args.seed)


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    import model_define  # noqa: F401  (registers the zoo)
    from core.checkpoint_io import load_model
    from model_define import model_spec

    if (args.teacher_path is None) != (args.distill is None):
        raise UserError("distillation needs both --teacher_path and --distill cosine|mse")
    model, meta = load_model(args.best_model_path, args.model, args.from_data_parallel)
    name, input_size = meta["model"], meta["input_size"]
    kind = model_spec(name).kind
    teacher = None
    if args.teacher_path:
        teacher, _ = load_model(args.teacher_path, name, args.teacher_from_data_parallel, input_size,
                                **meta.get("model_kwargs", {}))
    loader, num_classes = build_loader(args, input_size)
    torch.manual_seed(args.seed)  # the margin head's initialisation follows --seed too
    head = build_head(args, kind, name, model, input_size, num_classes)
    cfg = config_from_args(args, len(loader), name)
    result = finetune(model, loader, cfg, task=kind, head=head, teacher=teacher,
                      eval_fn=build_eval_fn(args, kind, input_size), meta=checkpoint_meta(meta, cfg, args.data),
                      resume=args.resume)
    if result.best_metrics is not None:
        print(f"best at step {result.best_step}: " +
              ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items()))
    print(f"checkpoint: {result.best_path or result.last_path or '(none new: no improvement after resume)'}")


if __name__ == "__main__":
    main()
