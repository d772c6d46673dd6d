#!/usr/bin/env python
"""Sensitivity analysis with N local worker processes vs the serial run, side by side in one run.

    python benchmarks/sa_workers.py                   # ResNet-20 on the CIFAR-10 JPEGs, 1,024 images, 2 workers

Both runs use the same total of CPU threads (serial: 1 thread; parallel: N processes x 1 thread on an N-core
machine), the prefix cache, the same seeded evaluation subset; the CSVs must be byte-identical. Wall times include
each run's own data loading: the main process decodes the subset's JPEGs (only those), and the workers start from
its tensors in shared memory. Run it on an otherwise idle machine: other jobs on the cores skew the ratio.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from compression_tool.apps.workflow import CriterionConfig, ModelSource, SensitivityConfig, run_sensitivity  # noqa: E402
from model_define.pretrained import cifar_resnet_path, shared_data_dir  # noqa: E402
from test_module.setup import EvalConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_data_dir(), help="folder with resnet_cifar10/, cifar10_test/")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the parallel run")
    p.add_argument("--eval_batches", type=int, default=16, help="batches of 64 images in the evaluation subset")
    p.add_argument("--repeats", type=int, default=1, help="alternate the two runs N times and report the fastest of "
                                                          "each (a machine shared with other jobs)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sa_workers_"))
    source = ModelSource(str(cifar_resnet_path(20, args.data)), "resnet20", from_data_parallel=True)
    ev = EvalConfig(data=f"image_folder:{args.data / 'cifar10_test'}", eval_batches=args.eval_batches)
    times: dict = {}
    paths: dict = {}
    runs = (("serial", 1, 1), (f"{args.workers} workers", args.workers, args.workers))
    for r in range(args.repeats):          # alternated: a load that comes and goes hits both runs alike
        for tag, workers, threads in runs:
            torch.set_num_threads(threads)
            cfg = SensitivityConfig(source, ev, CriterionConfig("l1", cache_dir=str(work / "rank_conv")),
                                    output=str(work / f"{tag.replace(' ', '_')}_{r}.csv"), work_space=str(work),
                                    workers=workers)
            t0 = time.perf_counter()
            paths.setdefault(tag, []).append(run_sensitivity(cfg).read_bytes())
            times.setdefault(tag, []).append(time.perf_counter() - t0)
    serial, parallel = min(times["serial"]), min(times[runs[1][0]])
    same = len({*paths["serial"], *paths[runs[1][0]]}) == 1
    print(f"ResNet-20 sensitivity, 12 groups x 10 levels, {64 * args.eval_batches} images: serial {serial:.1f} s, "
          f"{args.workers} workers {parallel:.1f} s -> {serial / parallel:.2f}x faster; identical CSV: {same}"
          + (f" (min of {args.repeats} alternated runs each)" if args.repeats > 1 else ""))


if __name__ == "__main__":
    main()
