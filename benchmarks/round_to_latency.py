"""What hardware-friendly widths (--round_to N) do to CPU latency at (about) equal MACs: MobileFaceNet 112x96,
every prunable group thinned by one uniform ratio (or seeded random per-group ratios, --random),
bisected per N so the model keeps about ``--keep`` of the MACs;
PyTorch and ONNX Runtime (BN folded, fp32) timed side by side, interleaved, with ``--threads`` threads.

    python benchmarks/round_to_latency.py [--keep 0.3] [--threads 1] [--batch 1] [--rounds 15]

Latency does not depend on the weight values, so the weights are random (seeded).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from compression_tool.engine.cost import interleaved_latency, params_and_macs, thinned_copy
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.quant.bn_fold import fold_bn
from compression_tool.engine.quant.ptq_onnx import OrtModule, export_onnx, ort_session
from model_define import get_model


def uniform(model, x, r: int, keep: float, shape=None):
    """Thinned copy at the smallest ratio t whose MACs are <= keep of the model's (widths rounded to r); group
    j gets ratio t * shape[j] (capped at 0.9): shape = None is one uniform ratio."""
    index = GroupIndex(model, x, round_to=r)
    base = params_and_macs(model, x)["macs"]
    shape = np.ones(len(index.groups)) if shape is None else shape

    def build(t):
        return thinned_copy(model, x, {g.name: list(range(g.n_prune(min(0.9, t * f))))
                                       for g, f in zip(index.groups, shape)})

    lo, hi = 0.0, 0.95 / shape.min()
    for _ in range(16):
        mid = (lo + hi) / 2
        if params_and_macs(build(mid), x)["macs"] <= keep * base:
            hi = mid
        else:
            lo = mid
    return build(hi), hi


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--round_to", default="1,4,8,16")
    ap.add_argument("--random", type=int, default=None,
                    help="seed of per-group ratio shapes U(0.2, 1) (a non-uniform schedule); default: uniform")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = get_model("mobilefacenet", input_size=(112, 96)).eval()
    x1 = torch.randn(1, 3, 112, 96)
    x = torch.randn(args.batch, 3, 112, 96)
    n_groups = len(GroupIndex(model, x1).groups)
    shape = None if args.random is None else np.random.default_rng(args.random).uniform(0.2, 1.0, n_groups)
    rows = [("unpruned", model, None)]
    for r in (int(v) for v in args.round_to.split(",")):
        m, s = uniform(model, x1, r, args.keep, shape)
        rows.append((f"round_to {r}", m, s))
    base = params_and_macs(model, x1)["macs"]
    pt = interleaved_latency([m for _, m, _ in rows], x, rounds=args.rounds)
    with tempfile.TemporaryDirectory() as d:
        ort = [OrtModule(ort_session(export_onnx(fold_bn(m)[0], x1, Path(d) / f"{i}.onnx"), args.threads))
               for i, (_, m, _) in enumerate(rows)]
        ortt = interleaved_latency(ort, x, rounds=args.rounds)
    kind = "uniform ratio" if shape is None else f"per-group ratios t * U(0.2, 1) (seed {args.random}), t"
    print(f"MobileFaceNet 112x96, batch {args.batch}, {args.threads} thread(s), {kind} bisected per N for <= "
          f"{args.keep:.0%} of the MACs; medians of {args.rounds} interleaved rounds (PyTorch rows together, then "
          "ONNX Runtime rows together)")
    print("| model | ratio | MACs (M) | MACs kept | convs with width % 8 / % 16 != 0 | PyTorch ms | x | % of MAC ratio "
          "| ORT fp32 ms | x | % of MAC ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (label, m, s), a, b in zip(rows, pt, ortt):
        macs = params_and_macs(m, x1)["macs"]
        widths = [mod.out_channels for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
        odd = f"{sum(w % 8 > 0 for w in widths)} / {sum(w % 16 > 0 for w in widths)}"
        print(f"| {label} | {'' if s is None else f'{s:.3f}'} | {macs / 1e6:.1f} | {macs / base:.3f} | {odd} | "
              f"{a:.2f} | {pt[0] / a:.2f} | {100 * pt[0] / a * macs / base:.0f} % | {b:.2f} | {ortt[0] / b:.2f} | "
              f"{100 * ortt[0] / b * macs / base:.0f} % |")


if __name__ == "__main__":
    main()
