"""Quantize a model: BN folding, int8 PTQ through ONNX Runtime, LSQ mixed precision, dynamic fixed point.

  python quantization.py --mode fold --model digits_net --best_model_path work_space/checkpoints/digits_net.pth
  python quantization.py --mode ptq  ...   # int8 ONNX (QDQ, per-channel), accuracy / size / latency vs fp32
  python quantization.py --mode lsq  --avg_bit_weights 4 --avg_bit_fm 6 ...   # searched per-layer bits + QAT
  python quantization.py --mode lsq  --w_bit 8,4,4,4,8 --a_bit 8 ...          # explicit per-layer bits
  python quantization.py --mode dfp  ...   # Ristretto dynamic fixed point, fl per layer, with/without BN folding
  python quantization.py --mode hist ...   # per-layer weight / activation histograms (PNG)
  python quantization.py --mode ptq --pruned_model work_space/pruned_model/digits_net.pth   # prune, then quantize
  python quantization.py --mode export --pruned_model work_space/pruned_model/digits_net.pth --threads 1
      # deploy: BN folded -> ONNX fp32 + int8, checked against PyTorch, latency table (batch 1 and N)
  python quantization.py --mode int8 ...   # calibration / format / fp32 fallbacks chosen by measurement
"""
from __future__ import annotations

import argparse
import math
from dataclasses import fields
from typing import List, Optional

from compression_tool.cli.common import add_model_args
from compression_tool.cli.parser import DEFAULT_THREADS, ArgumentParser, apply_threads
from compression_tool.io.errors import UserError, cli_main

MODES = ("fold", "ptq", "lsq", "dfp", "hist", "export", "int8", "all")


def bit_list(text: str) -> List[int]:
    """'8,4,4' or '8 4 4' -> [8, 4, 4]."""
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, required=True,
                   help="fold: merge BN and check outputs; ptq: int8 ONNX Runtime; lsq: learned-step QAT with "
                        "per-layer bits; dfp: dynamic fixed point; hist: histograms; export: BN-folded ONNX "
                        "fp32 + int8 checked against PyTorch, with a latency table; int8: choose calibration, "
                        "format and fp32 fallbacks by measurement; all: every mode but export and int8")
    add_model_args(p, required=False)   # no checkpoint: --model (default digits_net) with random weights
    p.add_argument("--pruned_model", default=None,
                   help="a thinned checkpoint from pruning.py (rebuilt at its pruned width); replaces "
                        "--best_model_path")
    p.add_argument("--data", default="digits",
                   help="evaluation data spec, as for pruning.py: digits | image_folder:DIR | mnist:DIR | "
                        "cifar10:DIR | orl:DIR | lfw:PAIRS …")
    p.add_argument("--batch_size", type=int, default=64, help="batch size for evaluation, calibration and QAT")
    p.add_argument("--eval_batches", type=int, default=None, help="evaluate on this many batches only")
    p.add_argument("--train_batches", type=int, default=None,
                   help="use only this many calibration/QAT batches (default: the whole digits training split)")
    p.add_argument("--calib_batches", type=int, default=8,
                   help="batches for calibration, sensitivity, fixed-point ranges and histograms")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"intra-op threads for PyTorch and ONNX Runtime (default {DEFAULT_THREADS})")
    p.add_argument("--seed", type=int, default=0, help="seed for data order and initialisation")
    p.add_argument("--out_dir", default="work_space/output/quant", help="ONNX files and histograms go here")
    p.add_argument("--force", action="store_true", help="overwrite existing output files / checkpoints")
    ptq = p.add_argument_group("ptq")
    ptq.add_argument("--reduce_range", choices=("auto", "on", "off"), default="auto",
                     help="7-bit weights (avoids u8s8 saturation on CPUs without VNNI); auto = on without VNNI")
    ptq.add_argument("--keep_prelu", action="store_true",
                     help="export PReLU as ONNX PRelu (default: the exact (1-a)*relu(x) + a*x, faster in ORT)")
    e = p.add_argument_group("export")
    e.add_argument("--tolerance", type=float, default=1e-4,
                   help="fail unless fp32 ONNX Runtime (and the BN-folded model) is within max |Δ| <= "
                        "TOLERANCE x max(1, max |y|) of PyTorch")
    e.add_argument("--int8_min_cosine", type=float, default=0.9,
                   help="fail unless int8 outputs keep this mean cosine similarity to PyTorch fp32")
    e.add_argument("--no_int8", action="store_true", help="export fp32 ONNX only")
    e.add_argument("--check_batches", type=int, default=2,
                   help="batches after the calibration batches used for the equivalence check")
    e.add_argument("--latency_batch", type=int, default=16, help="the batch size N of the latency table")
    e.add_argument("--latency_rounds", type=int, default=7, help="interleaved timing rounds (median kept)")
    i8 = p.add_argument_group("int8")
    i8.add_argument("--calibrations", default="minmax,percentile,entropy",
                    help="calibration methods to compare (comma list of minmax, percentile, entropy)")
    i8.add_argument("--fallbacks", default="none,prelu,depthwise,prelu+depthwise",
                    help="layer classes to try in fp32 (comma list of none, prelu, depthwise, prelu+depthwise)")
    i8.add_argument("--max_drop", type=float, default=1.0,
                    help="the chosen int8 model may lose at most this many points of the headline metric")
    q = p.add_argument_group("lsq")
    q.add_argument("--w_bit", type=bit_list, default=None,
                   help="weight bits per conv/linear layer in model order ('8,4,4,8'), or one value for all")
    q.add_argument("--a_bit", type=bit_list, default=None,
                   help="input-activation bits per conv/linear layer, or one value for all (32 = float)")
    q.add_argument("--avg_bit_weights", type=float, default=4.0,
                   help="without --w_bit: average weight bits (weighted by weight count); searched per layer")
    q.add_argument("--avg_bit_fm", type=float, default=6.0,
                   help="without --a_bit: average feature-map bits (weighted by activation size); searched")
    q.add_argument("--fix_bw_weights", action="store_true",
                   help="every layer gets --avg_bit_weights weight bits (no search)")
    q.add_argument("--fix_bw_fm", action="store_true", help="every layer gets --avg_bit_fm activation bits")
    q.add_argument("--search_batches", type=int, default=2,
                   help="bit search: batches used to measure each layer's sensitivity")
    q.add_argument("--min_bw", type=int, default=2, help="bit search: fewest bits a layer may get")
    q.add_argument("--max_bw", type=int, default=8, help="bit search: most bits a layer may get")
    q.add_argument("--per_channel", action="store_true", help="one learned weight step per output channel")
    q.add_argument("--epochs", type=int, default=3, help="QAT epochs (0: only initialise the steps)")
    q.add_argument("--lr", type=float, default=0.01, help="QAT learning rate (weights and steps)")
    q.add_argument("--weight_decay", type=float, default=1e-4, help="QAT weight decay")
    q.add_argument("--save", default=None, help="write the LSQ model (state_dict + bits meta) here")
    d = p.add_argument_group("dfp")
    d.add_argument("--dfp_w_bits", type=int, default=8, help="dynamic fixed point: weight bits")
    d.add_argument("--dfp_a_bits", type=int, default=8, help="dynamic fixed point: activation bits")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.pruned_model and args.best_model_path:
        raise UserError("give either --pruned_model or --best_model_path, not both")
    for flag in ("batch_size", "calib_batches", "search_batches", "threads", "check_batches", "latency_batch",
                 "latency_rounds"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("epochs",):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    for flag in ("lr", "weight_decay", "avg_bit_weights", "avg_bit_fm"):
        v = getattr(args, flag)
        if not math.isfinite(v) or v < 0:
            raise UserError(f"--{flag} must be a non-negative number, got {v}")
    if not args.tolerance > 0 or not -1 <= args.int8_min_cosine <= 1:
        raise UserError(f"--tolerance must be > 0 and --int8_min_cosine in [-1, 1], got {args.tolerance}, "
                        f"{args.int8_min_cosine}")
    if not 2 <= args.min_bw <= args.max_bw <= 16:
        raise UserError(f"--min_bw/--max_bw must satisfy 2 <= min <= max <= 16, got {args.min_bw}/{args.max_bw}")
    if not (2 <= args.dfp_w_bits <= 32 and 2 <= args.dfp_a_bits <= 32):
        raise UserError("--dfp_w_bits/--dfp_a_bits must be 2..32")


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    apply_threads(args.threads)
    from compression_tool.apps.quantize import QuantConfig, run  # heavy imports after argument checks

    cfg = QuantConfig(**{f.name: getattr(args, f.name) for f in fields(QuantConfig)})
    for line in run(cfg):
        print(line)


if __name__ == "__main__":
    main()
