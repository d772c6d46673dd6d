#!/usr/bin/env python
"""Core-workflow benchmarks, each measured side by side in one run.

(a) ResNet-IR-50 at 112x112, 50% channel sparsity on every prunable group (L1): CPU latency of the thinned vs
    the original model next to the FLOPs ratio. Target: speedup >= 70% of what the FLOPs ratio implies.
(b) Sensitivity analysis of ResNet-20 with and without reusing the cached activations of the unchanged
    prefix (identical CSVs are checked). Target: >= 2x faster with the cache.

    python benchmarks/core_benchmarks.py [--part latency|sa|all] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch  # noqa: E402

import model_define as md  # noqa: E402
from compression_tool.engine.cost import interleaved_latency, params_and_macs  # noqa: E402
from compression_tool.engine.criteria import make_criterion  # noqa: E402
from compression_tool.engine.groups import GroupIndex  # noqa: E402
from compression_tool.engine.sensitivity import sweep  # noqa: E402
from compression_tool.engine.thinning import thin  # noqa: E402
from test_module.classification import evaluate_classifier  # noqa: E402


def bench_latency(batch: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 112, 112)
    orig = md.get_model("resnet_ir50").eval()
    thinned = md.get_model("resnet_ir50").eval()
    thinned.load_state_dict(orig.state_dict())
    gi = GroupIndex(thinned, x[:1])
    crit = make_criterion("l1")
    thin(gi, {g.name: crit.select(gi, g, g.n_prune(0.5)) for g in gi.groups})
    a, b = params_and_macs(orig, x[:1]), params_and_macs(thinned, x[:1])
    lat_o, lat_t = interleaved_latency([orig, thinned], x)
    flops_ratio = a["macs"] / b["macs"]
    speedup = lat_o / lat_t
    print(f"(a) resnet_ir50 112x112 batch {batch}, 50% channels removed in {len(gi.groups)} groups")
    print(f"    MACs {a['macs']/1e9:.2f}G -> {b['macs']/1e9:.2f}G (ratio {flops_ratio:.2f}x), "
          f"params {a['params']/1e6:.1f}M -> {b['params']/1e6:.1f}M")
    print(f"    latency {lat_o:.1f} ms -> {lat_t:.1f} ms: speedup {speedup:.2f}x = "
          f"{100 * speedup / flops_ratio:.0f}% of the FLOPs ratio (target >= 70%)")


def bench_sa(eval_images: int) -> None:
    torch.manual_seed(0)
    model = md.get_model("resnet20").eval()
    x = torch.randn(eval_images, 3, 32, 32)
    y = torch.randint(0, 10, (eval_images,))
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, eval_images, 64)]
    gi = GroupIndex(model, x[:1])
    crit = make_criterion("l1")
    levels = [round(0.1 * i, 1) for i in range(10)]
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for cache in (False, True):
            p = Path(d) / f"sa_{cache}.csv"
            t0 = time.perf_counter()
            sweep(model, gi, crit, lambda m: evaluate_classifier(m, loader), p, levels,
                  ["top1", "top5", "loss"], use_cache=cache)
            out[cache] = (time.perf_counter() - t0, p.read_text())
    same = out[False][1] == out[True][1]
    print(f"(b) resnet20 sensitivity, {len(gi.groups)} groups x {len(levels)} levels, {eval_images} images")
    print(f"    without cache {out[False][0]:.1f} s, with cache {out[True][0]:.1f} s: "
          f"{out[False][0] / out[True][0]:.2f}x faster (target >= 2x); identical CSV: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("latency", "sa", "all"), default="all", help="which benchmark to run")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (2 threads on a machine shared with another busy process spin-wait)")
    p.add_argument("--batch", type=int, default=1, help="(a) batch size")
    p.add_argument("--eval_images", type=int, default=512, help="(b) images in the fixed evaluation subset")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("latency", "all"):
        bench_latency(args.batch)
    if args.part in ("sa", "all"):
        bench_sa(args.eval_images)


if __name__ == "__main__":
    main()
