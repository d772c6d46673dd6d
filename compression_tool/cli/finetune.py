"""Fine-tune a (pruned) model: cross-entropy for classifiers, ArcFace/CosFace for face embedders,
optionally distilling the unpruned teacher's outputs.

    python -m train_module --model digits_net --best_model_path work_space/pruned_model/digits_net.pth \\
        --data digits --epochs 5 --lr 0.01
    python -m train_module --model mobilefacenet --best_model_path pruned.pth --data orl:../shared/data/orl_faces \\
        --head arcface --teacher_path ../shared/data/mobilefacenet_casia/068.ckpt --distill cosine --alpha 1
    python -m train_module ... --head none --distill cosine --teacher_path T.pth   # pure distillation, no labels
    python -m train_module ... --unlabeled orl:ORL --subjects s31..s40 --teacher_path T.pth --distill cosine \\
        --feature_distill blocks.4,blocks.11,blocks.14 --feature_weight 1   # + the teacher's feature maps
    python -m train_module ... --unlabeled orl:ORL --teacher_path T.pth --distill cosine --augment --mixup 0.4
    python -m train_module --model resnet56 --best_model_path pruned.pth --data image_folder:DIR \\
        --teacher_path resnet56.th --teacher_from_data_parallel --distill kd --temperature 4 --alpha 1
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional

from compression_tool.apps.finetune import FinetuneJob, run_finetune
from compression_tool.apps.workflow import ModelSource
from compression_tool.cli.common import add_device_arg, add_split_args, floats
from compression_tool.cli.parser import ArgumentParser, add_threads_arg, apply_threads
from compression_tool.data.preprocess import FITS
from compression_tool.io.errors import UserError, cli_main
from test_module.setup import EvalConfig
from train_module.features import FEATURE_LOSSES, parse_layers
from train_module.finetune import DISTILL_KINDS, FinetuneConfig
from train_module.heads import HEADS
from train_module.optim import LR_SCHEDULES

log = logging.getLogger(__name__)



def build_parser(prog: str = "python -m train_module") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered model name; optional when the checkpoint is a pruned one (it "
                                   "names its model)")
    p.add_argument("--best_model_path", required=True,
                   help="checkpoint to fine-tune: a pruned (thinned) checkpoint or a plain state_dict")
    p.add_argument("--from_data_parallel", action="store_true",
                   help="--best_model_path keys carry DataParallel's 'module.' prefix; strip it")
    p.add_argument("--data", default="digits",
                   help="training data: any classifier spec of pruning.py --data (digits = its train split, "
                        "mnist:/cifar10:/cifar100:/json: their train files, image_folder:DIR all its images), or "
                        "for embedders identity_folders:DIR (DIR/<identity>/<image>, see --subjects) or orl:DIR "
                        "(subjects s3..s30 by default)")
    p.add_argument("--unlabeled", metavar="DATA", nargs="+",
                   help="label-free distillation: fine-tune on these images only, matching the --teacher_path "
                        "embeddings (needs --distill; no --head); one or more of image_folder:DIR (read whole), "
                        "identity_folders:DIR or orl:DIR (--subjects applies to these two; identities ignored), "
                        "e.g. --unlabeled orl:ORL image_folder:OTHER_IMAGES --subjects s31..s40")
    p.add_argument("--mean", type=floats, default=None, help="classifier data: per-channel mean on the [0,1] scale")
    p.add_argument("--std", type=floats, default=None, help="classifier data: per-channel std on the [0,1] scale")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow checkpoints that need full unpickling (can run code: only your own files)")
    p.add_argument("--subjects", help="identity folders to train on, e.g. s3..s30 (default: all; orl: s3..s30)")
    add_split_args(p, "classifier data: choose the best checkpoint on the check part of these target-true splits "
                      "(sa,check,report, as pruning.py --split), never on the report part")
    p.add_argument("--eval_data",
                   help="evaluation data spec as in pruning.py --data (default: digits for digits, the held-out "
                        "s31..s40 pairs for orl:DIR, none for identity_folders)")
    p.add_argument("--metric", default="lfw_acc",
                   help="face metric to maximise when choosing the best checkpoint (default lfw_acc; fidelity "
                        "compares to --teacher_path); classifiers use top1")
    p.add_argument("--fit", default="pad", choices=FITS,
                   help="how face images of another aspect ratio reach the model input (default pad)")
    p.add_argument("--hflip", action="store_true", help="augment training images with random horizontal flips")
    p.add_argument("--augment", action="store_true",
                   help="augment training images: random rotation (±10°), scale (±10 %%), shift (±6 %%), "
                        "brightness and contrast (±0.2), drawn per image and batch from --seed (with --hflip: "
                        "flips too)")
    p.add_argument("--head", choices=sorted(HEADS) + ["none"],
                   help="margin head for embedders (default arcface); 'none' = pure distillation, no labels "
                        "used; classifiers are trained with plain cross-entropy and take no head")
    p.add_argument("--s", type=float, help="head scale (default: arcface/cosface 64)")
    p.add_argument("--m", type=float, help="head margin (default: arcface 0.5, cosface 0.35)")
    p.add_argument("--teacher_path", help="unpruned teacher checkpoint (same --model) for distillation")
    p.add_argument("--teacher_from_data_parallel", action="store_true",
                   help="--teacher_path keys carry DataParallel's 'module.' prefix; strip it")
    p.add_argument("--distill", choices=DISTILL_KINDS,
                   help="distillation loss to the teacher's outputs (needs --teacher_path): cosine or mse on the "
                        "outputs (embedders or logits); kd = Hinton's knowledge distillation for classifiers, "
                        "KL divergence between the teacher's and the student's logits softened by --temperature, "
                        "times T^2")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="weight of the distillation loss; the loss is cross-entropy (or the margin head) + alpha * "
                        "distillation (default 1)")
    p.add_argument("--temperature", type=float, default=4.0,
                   help="--distill kd: softmax temperature T of both logits (default 4)")
    p.add_argument("--feature_distill", metavar="LAYER[,LAYER...]",
                   help="also match the teacher's feature maps at these layers (names of model.named_modules(), "
                        "shell wildcards allowed, e.g. blocks.4,blocks.11,blocks.14 or 'blocks.*.conv.5'; needs "
                        "--distill): a thinned layer is compared on the teacher channels it kept (its checkpoint's "
                        "keep-arrays say which)")
    p.add_argument("--feature_weight", type=float, default=1.0,
                   help="weight of the feature-map term (mean over the --feature_distill layers; default 1)")
    p.add_argument("--feature_loss", choices=FEATURE_LOSSES, default="mse",
                   help="--feature_distill loss per layer: mse = mean squared error divided by the teacher map's "
                        "mean square, on the kept channels (default); at = attention transfer, the normalised "
                        "spatial maps of mean squared activation (any widths)")
    p.add_argument("--mixup", metavar="ALPHA", type=float, default=0.0,
                   help="label-free distillation only: replace every image of a batch by lam*x + (1-lam)*x' with x' "
                        "another image of the batch and lam ~ Beta(ALPHA, ALPHA) drawn per image from --seed, "
                        "before the teacher and the student see it (both match on the same blended images: "
                        "function matching, Beyer et al. 2022); 0 = off (default), e.g. 0.4 or 1; refused when "
                        "labels are trained on (a --head or a classifier's cross-entropy)")
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
    p.add_argument("--lr_schedule", choices=LR_SCHEDULES, default="step",
                   help="step: the LR drops by --gamma at each --milestones epoch (none: constant); cosine: a half "
                        "cosine from --lr to 0 over the whole run (--epochs or --max_iters), after the warm-up; "
                        "wsd: constant --lr, then a linear decay to 0 over the last --decay_iters iterations (a "
                        "constant run resumes into its decay: --resume with a longer --max_iters)")
    p.add_argument("--decay_iters", type=int, default=0,
                   help="--lr_schedule wsd: iterations of the final linear decay to 0 (default 0: required for wsd)")
    p.add_argument("--freeze_bn", action="store_true",
                   help="keep BatchNorm running statistics fixed (small fine-tuning sets)")
    p.add_argument("--sync_bn", choices=("on", "off"), default="on",
                   help="under torchrun: BatchNorm in training mode normalises over the whole batch across the "
                        "processes (on, the default: nn.SyncBatchNorm on CUDA, an all-reduce over gloo on the CPU) "
                        "or over each process's share (off); one process: no effect")
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
    add_threads_arg(p)
    add_device_arg(p)
    return p


def parse_milestones(text: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--milestones: expected comma-separated epochs such as 3,6, got {text!r}") from None


def job_from_args(args: argparse.Namespace) -> FinetuneJob:
    source = ModelSource(args.best_model_path, args.model, args.from_data_parallel, None, args.trust_checkpoint)
    teacher = ModelSource(args.teacher_path, None, args.teacher_from_data_parallel, None, args.trust_checkpoint) \
        if args.teacher_path else None
    eval_data = args.eval_data or (args.data if args.split else None)
    eval_cfg = EvalConfig(data=eval_data, batch_size=args.batch_size, seed=args.seed, metric=args.metric,
                          device=args.device, amp=args.amp, split=args.split, split_seed=args.split_seed,
                          split_part="check") \
        if eval_data else None
    train = FinetuneConfig(epochs=args.epochs, max_iters=args.max_iters, lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay, gamma=args.gamma, warmup_iters=args.warmup_iters,
                           lr_schedule=args.lr_schedule, decay_iters=args.decay_iters,
                           distill=args.distill, alpha=args.alpha, temperature=args.temperature,
                           feature_layers=parse_layers(args.feature_distill), feature_weight=args.feature_weight,
                           feature_loss=args.feature_loss, mixup=args.mixup,
                           freeze_bn=args.freeze_bn, sync_bn=args.sync_bn == "on",
                           eval_every=args.eval_every, eval_at_start=args.eval_at_start, save_dir=args.save_dir,
                           force=args.force, seed=args.seed, device=args.device, amp=args.amp)
    return FinetuneJob(source=source, data=args.data, subjects=args.subjects, eval=eval_cfg, fit=args.fit,
                       hflip=args.hflip, augment=args.augment, head=args.head, s=args.s, m=args.m, teacher=teacher,
                       batch_size=args.batch_size, milestones=parse_milestones(args.milestones), train=train,
                       resume=args.resume, unlabeled=args.unlabeled, mean=args.mean, std=args.std)


@cli_main
def main(argv: Optional[List[str]] = None, prog: str = "python -m train_module") -> None:
    args = build_parser(prog).parse_args(argv)
    apply_threads(args.threads)
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    result = run_finetune(job_from_args(args))
    if int(os.environ.get("RANK", "0")) != 0:      # under torchrun rank 0 reports (and alone writes)
        return
    if result.best_metrics is not None:
        print(f"best at step {result.best_step}: " +
              ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items()))
    print(f"checkpoint: {result.best_path or result.last_path or '(none new: no improvement after resume)'}")


if __name__ == "__main__":
    main()
