"""``quantization.py --mode int8``: choose the int8 recipe by measurement, on the model's own metric.

1. BN-folded fp32 ONNX export, checked against PyTorch (as ``--mode export``).
2. Calibration: every method of ``--calibrations`` (min-max / percentile / entropy) with QDQ per-channel weights;
   each is scored on the evaluation data (the headline metric — for face embedders k-fold accuracy — plus
   TPR@FPR=1e-2 when the data are verification pairs) and the cosine of its outputs to PyTorch fp32.
3. Layout: with the best calibration, QDQ and QOperator formats and fp32 fallbacks of layer classes that may be
   slower in int8 (``--fallbacks``: depthwise convs, PReLUs) are quantized and timed side by side with fp32
   (interleaved, batch 1 and ``--latency_batch``), and one variant that keeps in fp32 exactly the layers whose
   int8 kernels (with their Q/DQ nodes) ONNX Runtime's profiler measured slower than their fp32 ones.
4. The fastest variant whose metric is within ``--max_drop`` points of fp32 is written as
   ``<model>_int8_tuned.onnx``; ONNX Runtime's profiler then shows per operator type where fp32 and int8 spend
   their time.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

from compression_tool.apps.export import _batch
from compression_tool.apps.quantize import Context, QuantConfig
from compression_tool.engine.cost import interleaved_latency
from compression_tool.engine.quant.bn_fold import fold_bn
from compression_tool.engine.quant.export import agreement, export_fp32_checked
from compression_tool.engine.quant.int8_tuning import (
    fp32_fallback,
    fp32_modules,
    layer_kinds,
    op_profile,
    prelu_modules,
    profile_lines,
    slower_in_int8,
)
from compression_tool.engine.quant.ptq_onnx import (
    CALIBRATIONS,
    FORMATS,
    OrtModule,
    default_reduce_range,
    file_mb,
    ort_session,
    quantize_onnx,
)
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_save_with, check_writable

VERIFY_KEYS = ("lfw_acc", "tpr@fpr=1e-2", "auc")


def _metrics(ctx: Context, model) -> Dict[str, float]:
    m = ctx.evaluate(model)
    keys = [k for k in VERIFY_KEYS if k in m] or list(m)[:2]
    return {k: float(m[k]) for k in keys}


def _fmt(m: Dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in m.items())


def _split(text: str, allowed, flag: str) -> List[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in allowed]
    if bad or not vals:
        raise UserError(f"{flag} {text!r}: expected a comma list of {', '.join(allowed)}")
    return vals


def run_int8(ctx: Context, cfg: QuantConfig) -> List[str]:
    calibrations = _split(cfg.calibrations, CALIBRATIONS, "--calibrations")
    fallbacks = [() if f == "none" else tuple(f.split("+")) for f in
                 _split(cfg.fallbacks, ("none", "prelu", "depthwise", "prelu+depthwise", "depthwise+prelu"),
                        "--fallbacks")]
    out = Path(cfg.out_dir) / f"{ctx.name}_int8_tuned.onnx"
    check_writable(out, cfg.force)
    reduce_range = default_reduce_range() if cfg.reduce_range == "auto" else cfg.reduce_range == "on"
    inputs = ctx.inputs
    calib = inputs[: cfg.calib_batches]
    held = inputs[cfg.calib_batches: cfg.calib_batches + cfg.check_batches] or calib[: cfg.check_batches]
    model = ctx.model.eval()
    prelus = prelu_modules(model)
    base = _metrics(ctx, model)
    head = next(iter(base))
    lines = [ctx.note, f"fp32 PyTorch: {_fmt(base)}  (headline: {head}; {len(calib)} calibration batches, "
                       f"reduce_range={reduce_range}, {cfg.threads} thread(s))"]
    with tempfile.TemporaryDirectory(dir=Path(cfg.out_dir) if Path(cfg.out_dir).exists() else None) as work:
        work = Path(work)
        fp32_path, _ = export_fp32_checked(fold_bn(model)[0], calib, work / "fp32.onnx", cfg.tolerance, cfg.threads,
                                           force=True, reference=model)
        # 2. calibration
        lines += ["-- calibration (QDQ, per-channel weights)",
                  f"{'method':12s} {'metrics':40s} {'cosine to fp32 (mean/min)':>26s}"]
        scored: List[Tuple[Tuple[float, float], str]] = []
        for method in calibrations:
            p = quantize_onnx(fp32_path, work / f"q_{method}.onnx", calib, reduce_range=reduce_range,
                              calibration=method)
            s = OrtModule(ort_session(p, cfg.threads))
            m, a = _metrics(ctx, s), agreement(model, s, held)
            lines.append(f"{method:12s} {_fmt(m):40s} {a.cosine_mean:13.4f} / {a.cosine_min:.4f}")
            scored.append(((m[head], a.cosine_mean), method))
        best_cal = max(scored)[1]
        lines.append(f"chosen calibration: {best_cal}")
        # 3. layout: format and fp32 fallbacks, timed side by side
        variants: List[Tuple[str, Path]] = []
        for fmt in FORMATS:
            for fb in fallbacks if fmt == "qdq" else [()]:
                label = f"int8 {fmt}" + (f", fp32 {'+'.join(fb)}" if fb else "")
                p = quantize_onnx(fp32_path, work / f"v{len(variants)}.onnx", calib, reduce_range=reduce_range,
                                  calibration=best_cal, quant_format=fmt,
                                  exclude=fp32_fallback(fb, prelus) if fb else None)
                variants.append((label, p))
        # per layer: the modules whose int8 kernels were measured slower than their fp32 ones stay fp32
        x1 = _batch(inputs, 1)
        plain = next(p for label, p in variants if label == "int8 qdq")
        slow = slower_in_int8(op_profile(fp32_path, x1, cfg.threads, by_module=True),
                              op_profile(plain, x1, cfg.threads, by_module=True))
        if slow:
            p = quantize_onnx(fp32_path, work / "v_slow.onnx", calib, reduce_range=reduce_range,
                              calibration=best_cal, exclude=fp32_modules(slow))
            variants.append((f"int8 qdq, fp32 {len(slow)} measured-slower layers", p))
            lines.append(f"layers measured slower in int8 than fp32 (ORT profile, batch 1): {', '.join(slow)}")
        sessions = [OrtModule(ort_session(fp32_path, cfg.threads))] + [OrtModule(ort_session(p, cfg.threads))
                                                                       for _, p in variants]
        n = cfg.latency_batch
        t1 = interleaved_latency(sessions, _batch(inputs, 1), rounds=cfg.latency_rounds)
        tn = interleaved_latency(sessions, _batch(inputs, n), rounds=cfg.latency_rounds)
        lines += [f"-- format and fp32 fallbacks ({best_cal} calibration); latency medians of {cfg.latency_rounds} "
                  f"interleaved rounds, {cfg.threads} thread(s)",
                  f"{'variant':44s} {'b1 ms':>8s} {f'b{n} ms':>8s} {'b1 x':>6s} {f'b{n} x':>6s} {'MB':>6s} "
                  f"{'cos':>7s}  metrics"]
        rows = []
        for i, (label, path) in enumerate([("fp32 ONNX Runtime", fp32_path)] + variants):
            m = _metrics(ctx, sessions[i]) if i else {k: v for k, v in _metrics(ctx, sessions[0]).items()}
            cos = agreement(model, sessions[i], held).cosine_mean
            rows.append((label, path, t1[i], tn[i], m))
            lines.append(f"{label:44s} {t1[i]:8.3f} {tn[i]:8.3f} {t1[0] / t1[i]:6.2f} {tn[0] / tn[i]:6.2f} "
                         f"{file_mb(path):6.2f} {cos:7.4f}  {_fmt(m)}")
        ok = [r for r in rows[1:] if base[head] - r[4][head] <= cfg.max_drop]
        if not ok:
            lines.append(f"no int8 variant keeps {head} within {cfg.max_drop:g} points of fp32: nothing written")
            return lines
        best = min(ok, key=lambda r: r[2])
        atomic_save_with(out, lambda tmp: Path(tmp).write_bytes(best[1].read_bytes()), cfg.force)
        lines.append(f"chosen: {best[0]} (fastest at batch 1 within {cfg.max_drop:g} points of {head}): "
                     f"x{t1[0] / best[2]:.2f} (b1), x{tn[0] / best[3]:.2f} (b{n}) vs fp32 ONNX Runtime -> {out}")
        if best[2] >= t1[0]:
            lines.append("warning: no eligible int8 variant is faster than fp32 ONNX Runtime at batch 1 on this "
                         "machine: ship the fp32 export (the profile below shows which kernels cost the time)")
        # 4. where the time goes
        kinds = layer_kinds(model)
        profs = [("fp32", op_profile(fp32_path, x1, cfg.threads, kinds=kinds)),
                 ("int8 qdq", op_profile(plain, x1, cfg.threads, kinds=kinds))]
        if best[1] != plain:
            profs.append(("chosen", op_profile(best[1], x1, cfg.threads, kinds=kinds)))
        lines += ["-- ONNX Runtime profile, batch 1: kernel ms per run by operator type [layer kind]"]
        lines += profile_lines(profs, top=0)
    return lines
