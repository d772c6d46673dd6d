"""``quantization.py --mode export``: the deployment path for a (thinned) checkpoint.

checkpoint (thinned or not) -> BN folded (exact, ``engine.quant.bn_fold``) -> ONNX fp32 -> [int8 QDQ] ->
ONNX Runtime sessions with every graph optimisation on. Each file is checked against PyTorch before it is
written (``engine.quant.export``), then PyTorch, ONNX Runtime fp32 and int8 are timed side by side
(``engine.cost.interleaved_latency``: interleaved rounds, median) at batch 1 and ``--latency_batch``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch

from compression_tool.apps.quantize import Context, QuantConfig, fmt_metrics
from compression_tool.engine.cost import interleaved_latency, params_and_macs
from compression_tool.engine.quant.bn_fold import count_bn, fold_bn
from compression_tool.engine.quant.export import agreement, check_fp32, export_fp32_checked, quantize_checked
from compression_tool.engine.quant.ptq_onnx import OrtModule, default_reduce_range, file_mb, ort_session
from compression_tool.io.files import check_writable


def _batch(xs: List[torch.Tensor], n: int) -> torch.Tensor:
    x = torch.cat(xs)
    if len(x) < n:
        x = x.repeat((n + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))
    return x[:n].contiguous()


def run_export(ctx: Context, cfg: QuantConfig) -> List[str]:
    out = Path(cfg.out_dir)
    fp32_path, int8_path = out / f"{ctx.name}_deploy_fp32.onnx", out / f"{ctx.name}_deploy_int8.onnx"
    for p in [fp32_path] + ([] if cfg.no_int8 else [int8_path]):
        check_writable(p, cfg.force)          # refuse before any work, not after the export
    inputs = ctx.inputs
    calib = inputs[: cfg.calib_batches]
    held = inputs[cfg.calib_batches: cfg.calib_batches + cfg.check_batches] or calib[: cfg.check_batches]
    example = calib[0][:1]
    model = ctx.model.eval()
    folded, report = fold_bn(model)
    fold_stats = agreement(model, folded, held)
    check_fp32(fold_stats, cfg.tolerance, "the BN-folded PyTorch model")
    cost = params_and_macs(model, example)
    lines = [ctx.note,
             f"{ctx.name}: {cost['params'] / 1e6:.3f}M params, {cost['macs'] / 1e6:.2f}M MACs at input "
             f"{tuple(example.shape[1:])}" + (" (thinned checkpoint)" if ctx.meta.get("keep") else ""),
             f"BN folding: {len(report.folded)} folded, {len(report.skipped)} left "
             f"({count_bn(model)} -> {count_bn(folded)} BN layers); folded vs PyTorch: {fold_stats.line()}"]
    lines += [f"  {s}" for s in report.lines() if s.startswith("left")]
    fp32_path, fp32_stats = export_fp32_checked(folded, calib, fp32_path, cfg.tolerance, cfg.threads, cfg.force,
                                                prelu_split=not cfg.keep_prelu, reference=model)
    # the check above ran on the calibration inputs; report the held-out inputs too
    s32 = ort_session(fp32_path, cfg.threads)
    held32 = agreement(model, OrtModule(s32), held)
    check_fp32(held32, cfg.tolerance, "fp32 ONNX Runtime")
    lines.append(f"fp32 ONNX Runtime vs PyTorch: {held32.line()}  [tolerance {cfg.tolerance:g} x max(1, max|y|): "
                 "passed]")
    rows = [("PyTorch fp32", model, None), ("PyTorch fp32, BN folded", folded, None),
            ("ONNX Runtime fp32", OrtModule(s32), file_mb(fp32_path))]
    if not cfg.no_int8:
        reduce_range = default_reduce_range() if cfg.reduce_range == "auto" else cfg.reduce_range == "on"
        int8_path, _ = quantize_checked(fp32_path, int8_path, model, calib, held, cfg.int8_min_cosine,
                                        cfg.threads, cfg.force, reduce_range=reduce_range)
        s8 = ort_session(int8_path, cfg.threads)
        held8 = agreement(model, OrtModule(s8), held)
        lines.append(f"int8 ONNX Runtime vs PyTorch: {held8.line()}  [mean cosine >= {cfg.int8_min_cosine:g}: "
                     f"passed; QDQ, per-channel weights, reduce_range={reduce_range}, {len(calib)} calibration "
                     "batches]")
        rows.append(("ONNX Runtime int8", OrtModule(s8), file_mb(int8_path)))
    lines.append("metrics: " + "; ".join(f"{label}: {fmt_metrics(dict(list(ctx.evaluate(m).items())[:2]))}"
                                          for label, m, _ in rows if label != "PyTorch fp32, BN folded"))
    n = cfg.latency_batch
    x1, xn = _batch(inputs, 1), _batch(inputs, n)
    t1 = interleaved_latency([m for _, m, _ in rows], x1, rounds=cfg.latency_rounds)
    tn = interleaved_latency([m for _, m, _ in rows], xn, rounds=cfg.latency_rounds)
    lines += [f"latency: {cfg.threads} thread(s), medians of {cfg.latency_rounds} interleaved rounds "
              "(all rows timed in one alternating loop)",
              f"{'':26s} {'b1 ms':>9s} {f'b{n} ms':>9s} {'b1 x':>7s} {f'b{n} x':>7s} {'MB':>7s}"]
    for (label, _, mb), a, b in zip(rows, t1, tn):
        size = f"{mb:7.2f}" if mb is not None else f"{'':7s}"
        lines.append(f"{label:26s} {a:9.3f} {b:9.3f} {t1[0] / a:7.2f} {tn[0] / b:7.2f} {size}")
    lines += ["(x = speed-up over PyTorch fp32)", f"fp32 ONNX -> {fp32_path}"]
    if not cfg.no_int8:
        lines.append(f"int8 ONNX -> {int8_path}")
    return lines
