"""The steps behind ``quantization.py``: load a model and data, then fold / ptq / lsq / dfp / hist.

Each ``run_*`` returns printable lines (the CLI prints them); the work is in the other quant modules.
Data: ``--data`` specs as in pruning.py (test_module.setup). Calibration and QAT use the digits training split
for ``digits``; for other specs they use the first batches of the evaluation data (said in the output).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from compression_tool.apps.workflow import ModelSource, eval_setup, load_source
from compression_tool.data.digits import digits_loaders
from compression_tool.engine.quant import bit_search, lsq
from compression_tool.engine.quant.bn_fold import count_bn, fold_bn, max_output_diff
from compression_tool.engine.quant.fixed_point import dynamic_fixed_point
from compression_tool.engine.quant.histograms import save_histograms
from compression_tool.engine.quant.ptq_onnx import (
    OrtModule,
    default_reduce_range,
    export_onnx,
    file_mb,
    latency_ms,
    ort_session,
    ptq_fake_quant,
    quantize_onnx,
    state_dict_mb,
)
from compression_tool.engine.quant.qmodules import input_batches, quant_layer_names
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_torch_save, check_writable, check_writable_dir
from model_define import model_spec
from test_module.setup import EvalConfig
from train_module.finetune import FinetuneConfig, finetune

log = logging.getLogger(__name__)


@dataclass
class Context:
    """A loaded model and its data: ``evaluate(model) -> metrics`` (first entry is the headline metric)."""
    name: str
    model: nn.Module
    kind: str
    input_size: Sequence[int]
    evaluate: Callable[[nn.Module], Dict[str, float]]
    train_batches: List[Any]           # (x, y) pairs, or x alone when there are no labels
    note: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> List[torch.Tensor]:
        return input_batches(self.train_batches, len(self.train_batches))


@dataclass
class QuantConfig:
    """One quantization run (``quantization.py``): the model, the data and the settings of every mode."""
    mode: str = "all"
    model: Optional[str] = None
    best_model_path: Optional[str] = None
    pruned_model: Optional[str] = None              # a thinned checkpoint (same loader as best_model_path)
    from_data_parallel: bool = False
    input_size: Optional[str] = None                # C,H,W for plain checkpoints (H,W takes the model's channels)
    trust_checkpoint: bool = False
    data: str = "digits"
    batch_size: int = 64
    eval_batches: Optional[int] = None
    train_batches: Optional[int] = None
    calib_batches: int = 8
    threads: int = 2
    seed: int = 0
    out_dir: str = "work_space/output/quant"
    force: bool = False
    reduce_range: str = "auto"
    keep_prelu: bool = False
    w_bit: Optional[List[int]] = None
    a_bit: Optional[List[int]] = None
    avg_bit_weights: float = 4.0
    avg_bit_fm: float = 6.0
    fix_bw_weights: bool = False
    fix_bw_fm: bool = False
    search_batches: int = 2
    min_bw: int = 2
    max_bw: int = 8
    per_channel: bool = False
    epochs: int = 3
    lr: float = 0.01
    weight_decay: float = 1e-4
    save: Optional[str] = None
    dfp_w_bits: int = 8
    dfp_a_bits: int = 8
    tolerance: float = 1e-4                         # export: fp32 max |Δ| <= tolerance * max(1, max |y|)
    int8_min_cosine: float = 0.9                    # export: int8 must keep this mean cosine to fp32
    no_int8: bool = False                           # export: fp32 ONNX only
    check_batches: int = 2                          # export: held-out batches for the equivalence check
    latency_batch: int = 16                         # export: the batch N of the latency table (besides 1)
    latency_rounds: int = 7
    calibrations: str = "minmax,percentile,entropy"  # int8: calibration methods tried
    fallbacks: str = "none,prelu,depthwise,prelu+depthwise"   # int8: layer classes tried in fp32
    max_drop: float = 1.0                           # int8: allowed headline-metric drop (points) vs fp32


# ---------------------------------------------------------------- loading

def load_quant_model(cfg: QuantConfig):
    """(model, name, meta) from --pruned_model, --best_model_path or a fresh --model (random weights)."""
    path = cfg.pruned_model or cfg.best_model_path
    if path:
        model, meta = load_source(ModelSource(path, cfg.model, cfg.from_data_parallel, cfg.input_size,
                                              cfg.trust_checkpoint))
        return model.eval(), meta["model"], meta
    name = cfg.model or "digits_net"
    log.warning("no checkpoint given: quantizing %s with random weights", name)
    return model_spec(name).build().eval(), name, {}


def build_context(cfg: QuantConfig) -> Context:
    model, name, meta = load_quant_model(cfg)
    spec = model_spec(name)
    input_size = tuple(meta.get("input_size") or spec.input_size)
    setup = eval_setup(EvalConfig(data=cfg.data, batch_size=cfg.batch_size, eval_batches=cfg.eval_batches,
                                  seed=cfg.seed), {"model": name, "input_size": input_size})
    if cfg.data == "digits":
        train, _ = digits_loaders(input_size[-1], input_size[0], cfg.batch_size, cfg.seed)
        batches, note = list(train)[: cfg.train_batches or None], "calibration/QAT data: digits training split"
    else:
        batches = list(setup.batches())[: cfg.train_batches or None]
        note = f"calibration/QAT data: the first {len(batches)} batches of --data {cfg.data} (no training split)"
    return Context(name, model, spec.kind, input_size, setup.evaluate, batches, note, meta)


def fmt_metrics(m: Dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in m.items())


def metric_lines(ctx: Context, models: Sequence[tuple]) -> List[str]:
    """One aligned ``label: metrics`` line per ``(label, model)``."""
    width = max(len(label) for label, _ in models) + 1
    return [f"{label + ':':{width}s} {fmt_metrics(ctx.evaluate(m))}" for label, m in models]


# ---------------------------------------------------------------- modes

def run_fold(ctx: Context, cfg: QuantConfig) -> List[str]:
    folded, report = fold_bn(ctx.model)
    xs = ctx.inputs[: cfg.calib_batches]
    diff = max_output_diff(ctx.model, folded, xs)
    lines = report.lines() + [
        f"BN layers: {count_bn(ctx.model)} before, {count_bn(folded)} after folding",
        f"max |output difference| folded vs original: {diff:.3g}"]
    return lines + metric_lines(ctx, [("original", ctx.model), ("folded", folded)])


def run_ptq(ctx: Context, cfg: QuantConfig) -> List[str]:
    out = Path(cfg.out_dir)
    calib = ctx.inputs[: cfg.calib_batches]
    reduce_range = default_reduce_range() if cfg.reduce_range == "auto" else cfg.reduce_range == "on"
    fp32_path = export_onnx(ctx.model, calib[0][:1], out / f"{ctx.name}_fp32.onnx", force=cfg.force,
                            prelu_split=not cfg.keep_prelu)
    int8_path = quantize_onnx(fp32_path, out / f"{ctx.name}_int8.onnx", calib, reduce_range=reduce_range,
                              force=cfg.force)
    fake = ptq_fake_quant(ctx.model, calib, reduce_range=reduce_range)
    s32, s8 = ort_session(fp32_path, cfg.threads), ort_session(int8_path, cfg.threads)
    rows = [("fp32 PyTorch", ctx.model, state_dict_mb(ctx.model)),
            ("int8 fake-quant PyTorch", fake, None),
            ("fp32 ONNX Runtime", OrtModule(s32), file_mb(fp32_path)),
            ("int8 ONNX Runtime", OrtModule(s8), file_mb(int8_path))]
    lines = [ctx.note, f"calibration: {len(calib)} batches; per-channel int8 weights, uint8 activations, QDQ; "
                       f"reduce_range={reduce_range}; {cfg.threads} threads",
             f"{'':26s} {'metric':>28s} {'size MB':>8s} {'b1 ms':>8s} {'b16 ms':>8s}"]
    x1, x16 = _latency_inputs(ctx, calib)
    for label, model, size in rows:
        metric = ", ".join(f"{k}={v:.4g}" for k, v in list(ctx.evaluate(model).items())[:2])
        timed = label != "int8 fake-quant PyTorch"      # a simulation: its speed means nothing
        with torch.no_grad():
            t1, t16 = (latency_ms(lambda: model(x1)), latency_ms(lambda: model(x16))) if timed else (None, None)
        lines.append(f"{label:26s} {metric:>28s} {_num(size, 8)} {_num(t1, 8)} {_num(t16, 8)}")
    agree = top1_agreement(OrtModule(s8), fake, calib)
    lines += [f"top-1 agreement int8 ONNX vs int8 fake-quant PyTorch (calibration inputs): {100 * agree:.1f}%",
              f"fp32 ONNX -> {fp32_path}", f"int8 ONNX -> {int8_path}"]
    return lines


def _num(v: Optional[float], width: int) -> str:
    return f"{v:{width}.3f}" if v is not None else f"{'-':>{width}s}"


def _latency_inputs(ctx: Context, calib: List[torch.Tensor]):
    x = torch.cat(calib)
    if len(x) < 16:
        x = x.repeat((16 + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))
    return x[:1].contiguous(), x[:16].contiguous()


@torch.no_grad()
def top1_agreement(a: nn.Module, b: nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """Fraction of inputs on which two models' arg-max outputs agree."""
    same = total = 0
    for x in batches:
        same += int((a(x).argmax(1) == b(x).argmax(1)).sum())
        total += len(x)
    return same / max(total, 1)


def lsq_bits(ctx: Context, cfg: QuantConfig):
    """Per-layer (w_bits, a_bits) from --w_bit/--a_bit lists, else --avg_bit_* fixed or searched."""
    names = quant_layer_names(ctx.model)
    calib = ctx.inputs[: cfg.search_batches]

    def pick(values: Optional[List[int]], avg: float, fixed: bool, which: str, flag: str) -> Dict[str, int]:
        if values:
            return lsq.bits_for_layers(values, names, flag)
        if fixed:
            if avg != int(avg):
                raise UserError(f"--avg_bit_{'weights' if which == 'weight' else 'fm'} {avg}: a fixed bit width "
                                "(--fix_bw_*) must be a whole number")
            return lsq.bits_for_layers([int(avg)], names, flag)
        return bit_search.search_bits(ctx.model, calib, avg, which, cfg.min_bw, cfg.max_bw)

    w = pick(cfg.w_bit, cfg.avg_bit_weights, cfg.fix_bw_weights, "weight", "--w_bit")
    a = pick(cfg.a_bit, cfg.avg_bit_fm, cfg.fix_bw_fm, "act", "--a_bit")
    return names, w, a


def run_lsq(ctx: Context, cfg: QuantConfig) -> List[str]:
    names, w_bits, a_bits = lsq_bits(ctx, cfg)
    if cfg.save:
        check_writable(cfg.save, cfg.force)
    q = lsq.init_lsq(lsq.lsq_model(ctx.model, w_bits, a_bits, cfg.per_channel), ctx.inputs)
    before = ctx.evaluate(q)
    _qat(q, ctx, cfg)
    after = ctx.evaluate(q)
    lines = [ctx.note, lsq.format_bits("w_bit", w_bits, names), lsq.format_bits("a_bit", a_bits, names),
             f"fp32:            {fmt_metrics(ctx.evaluate(ctx.model))}",
             f"LSQ before QAT:  {fmt_metrics(before)}",
             f"LSQ after {cfg.epochs} epoch(s) QAT: {fmt_metrics(after)}"]
    if cfg.save:
        meta = {"model": ctx.name, "w_bit": [w_bits.get(n, 32) for n in names],
                "a_bit": [a_bits.get(n, 32) for n in names], "layers": names, "metrics": after,
                "source_meta": {k: v for k, v in ctx.meta.items() if k != "schedule"}}
        saved = atomic_torch_save({'state_dict': q.state_dict(), 'meta': meta}, cfg.save, force=cfg.force)
        lines.append(f"LSQ checkpoint -> {saved}")
    return lines


def _qat(q: nn.Module, ctx: Context, cfg: QuantConfig) -> None:
    """Quantization-aware training: cross-entropy with labels, else distillation from the fp32 model."""
    if cfg.epochs <= 0:
        return

    labelled = isinstance(ctx.train_batches[0], (tuple, list)) and ctx.kind == "classifier"
    if labelled:
        data = TensorDataset(torch.cat([b[0] for b in ctx.train_batches]), torch.cat([b[1] for b in ctx.train_batches]))
    else:
        data = TensorDataset(torch.cat(ctx.inputs))
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    cfg = FinetuneConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
                         milestones=(int(0.7 * cfg.epochs * len(loader)),))
    if labelled:
        finetune(q, loader, cfg, task="classifier")
    else:
        cfg.distill = "mse" if ctx.kind == "classifier" else "cosine"
        finetune(q, loader, cfg, task="embedder", teacher=ctx.model)
    q.eval()


def run_dfp(ctx: Context, cfg: QuantConfig) -> List[str]:
    calib = ctx.inputs[: cfg.calib_batches]
    plain, fmt_plain = dynamic_fixed_point(ctx.model, calib, cfg.dfp_w_bits, cfg.dfp_a_bits, fold=False)
    folded, fmt_fold = dynamic_fixed_point(ctx.model, calib, cfg.dfp_w_bits, cfg.dfp_a_bits, fold=True)
    lines = [ctx.note, f"dynamic fixed point: {cfg.dfp_w_bits}-bit weights, {cfg.dfp_a_bits}-bit activations "
                       "(fl = fractional length; value = integer * 2^-fl)",
             f"{'layer':32s} {'fl_w':>5s} {'fl_a':>5s} | {'fl_w BN-folded':>14s} {'fl_a BN-folded':>14s}"]
    for a, b in zip(fmt_plain, fmt_fold):
        lines.append(f"{a.name:32s} {a.fl_weight:5d} {a.fl_act:5d} | {b.fl_weight:14d} {b.fl_act:14d}")
    lines += [f"fl_w={[f.fl_weight for f in fmt_plain]} fl_a={[f.fl_act for f in fmt_plain]}",
              f"fl_w(folded)={[f.fl_weight for f in fmt_fold]} fl_a(folded)={[f.fl_act for f in fmt_fold]}"]
    return lines + metric_lines(ctx, [("fp32", ctx.model), ("fixed point", plain),
                                      ("fixed point, BN folded", folded)])


def run_hist(ctx: Context, cfg: QuantConfig) -> List[str]:
    out = Path(cfg.out_dir) / "histograms" / ctx.name
    paths = save_histograms(ctx.model, ctx.inputs[: cfg.calib_batches], out)
    return [f"{len(paths)} histograms (weights | input activations per layer) -> {out}/"]


def run_export(ctx: Context, cfg: QuantConfig) -> List[str]:
    from compression_tool.apps.export import run_export as export  # it builds on this module

    return export(ctx, cfg)


def run_int8(ctx: Context, cfg: QuantConfig) -> List[str]:
    from compression_tool.apps.int8 import run_int8 as tune  # it builds on this module

    return tune(ctx, cfg)


MODES: Dict[str, Callable[[Context, QuantConfig], List[str]]] = {
    "fold": run_fold, "ptq": run_ptq, "lsq": run_lsq, "dfp": run_dfp, "hist": run_hist, "export": run_export,
    "int8": run_int8}
ALL = ("fold", "ptq", "lsq", "dfp", "hist")   # what --mode all runs (export is the deployment step)


def run(cfg: QuantConfig) -> List[str]:
    """Run ``cfg.mode`` (or every mode for ``all``); returns the lines to print."""
    if cfg.mode in ("ptq", "hist", "all"):   # the modes that write into --out_dir: fail before the work
        check_writable_dir(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        ctx = build_context(cfg)
        modes = list(ALL) if cfg.mode == "all" else [cfg.mode]
        lines: List[str] = []
        for mode in modes:
            lines += [f"== {mode} ({ctx.name}) =="] + MODES[mode](ctx, cfg)
        return lines
    finally:
        torch.set_num_threads(threads)
