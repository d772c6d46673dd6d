"""Validate the latency cost model (engine/latency.py): predicted vs measured latency of whole thinned
MobileFaceNets (112x96), on PyTorch CPU and ONNX Runtime CPU, with ``--threads`` threads and batch ``--batch``.

    python benchmarks/latency_model.py [--threads 1] [--batch 1] [--rounds 15] [--round_to 8]

Variants: uniform ratios 0.25 / 0.5 / 0.75 and three seeded random per-group ratios in [0, 0.8], widths
rounded to ``--round_to``. Measured latencies are interleaved (all variants of one runtime alternate in one
loop, medians); weights are random (latency does not depend on their values). The per-layer tables go to a
temporary folder unless ``--latency_dir`` is given.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from compression_tool.engine.cost import interleaved_latency, params_and_macs, thinned_copy
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.latency import LatencyModel, LatencyTable
from compression_tool.engine.quant.bn_fold import fold_bn
from compression_tool.engine.quant.ptq_onnx import OrtModule, export_onnx, ort_session
from model_define import get_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--round_to", type=int, default=8)
    ap.add_argument("--latency_dir", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = get_model("mobilefacenet", input_size=(112, 96)).eval()
    x1 = torch.randn(1, 3, 112, 96)
    x = torch.randn(args.batch, 3, 112, 96)
    index = GroupIndex(model, x1, round_to=args.round_to)
    rng = np.random.default_rng(0)
    variants = [("unpruned", model)]
    for s in (0.25, 0.5, 0.75):
        variants.append((f"uniform {s}", thinned_copy(model, x1, {g.name: list(range(g.n_prune(s)))
                                                                 for g in index.groups})))
    for i in range(3):
        r = rng.uniform(0, 0.8, len(index.groups))
        variants.append((f"random {i}", thinned_copy(model, x1, {g.name: list(range(g.n_prune(float(s))))
                                                                for g, s in zip(index.groups, r)})))
    base_macs = params_and_macs(model, x1)["macs"]
    with tempfile.TemporaryDirectory() as d:
        folder = args.latency_dir or d
        for runtime in ("torch", "ort"):
            lm = LatencyModel(model, x1, LatencyTable(runtime, args.threads, args.batch, folder))
            pred = [lm.predict(m) for _, m in variants]
            if runtime == "torch":
                meas = interleaved_latency([m for _, m in variants], x, rounds=args.rounds)
            else:
                mods = [OrtModule(ort_session(export_onnx(fold_bn(m)[0], x1, Path(d) / f"v{i}.onnx"), args.threads))
                        for i, (_, m) in enumerate(variants)]
                meas = interleaved_latency(mods, x, rounds=args.rounds)
            print(f"\n{runtime}: {args.threads} thread(s), batch {args.batch}, widths rounded to {args.round_to}; "
                  f"prediction = {lm.scale:.2f} x sum of layers {lm.offset:+.2f} ms (fitted on the unpruned model "
                  "and a 50 % probe); "
                  f"{lm.table.measured} layer shapes timed")
            print("| variant | MACs kept | predicted ms | measured ms | predicted kept | measured kept "
                  "| error of kept |")
            print("|---|---|---|---|---|---|---|")
            for (label, m), p, t in zip(variants, pred, meas):
                pk, mk = p / pred[0], t / meas[0]
                print(f"| {label} | {params_and_macs(m, x1)['macs'] / base_macs:.3f} | {p:.2f} | {t:.2f} | {pk:.3f} | "
                      f"{mk:.3f} | {100 * (pk - mk) / mk:+.0f} % |")


if __name__ == "__main__":
    main()
