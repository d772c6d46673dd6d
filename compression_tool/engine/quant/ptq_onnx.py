"""Post-training int8 the way these models are deployed: ONNX export, static QDQ quantization, ONNX Runtime (CPU).

- ``ptq_fake_quant``: the PyTorch mirror (BN folded, per-channel int8 weights, per-tensor uint8 activations,
  min-max calibration), to predict and check the int8 ONNX model.
- ``export_onnx`` (legacy TorchScript exporter, ``dynamo=False``: works offline, dynamic batch axis).
- ``quantize_onnx``: ``onnxruntime.quantization.quantize_static`` with a ``CalibrationDataReader`` over a few
  batches, QDQ format, per-channel weights (QInt8), QUInt8 activations, MinMax calibration.
- ``ort_session`` (``intra_op_num_threads`` set explicitly), ``ort_run``, ``OrtModule``, ``latency_ms``.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.cost import median_ms
from compression_tool.engine.quant.bn_fold import fold_bn
from compression_tool.engine.quant.qmodules import calibrate, quantize_layers
from compression_tool.engine.quant.quantizers import MinMaxQuantizer
from compression_tool.io.files import atomic_save_with

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "output"


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX512-VNNI / AVX-VNNI / AMX) int8 dot products (Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def default_reduce_range() -> bool:
    """7-bit weights unless the CPU has VNNI: without it ONNX Runtime's u8s8 kernels (VPMADDUBSW) can
    saturate 16-bit sums, which costs accuracy (measured: 3.6 points of top-1 on digits, see docs)."""
    return not cpu_has_vnni()


def ptq_fake_quant(model: nn.Module, batches: Sequence[torch.Tensor], bits: int = 8, per_channel: bool = True,
                   reduce_range: bool = False) -> nn.Module:
    """BN-folded copy of ``model`` with min-max fake-quantized weights and inputs, calibrated on ``batches``."""
    folded, _ = fold_bn(model)
    q = quantize_layers(folded, lambda name, layer: (
        MinMaxQuantizer(bits, weight=True, per_channel=per_channel, reduce_range=reduce_range),
        MinMaxQuantizer(bits, weight=False)))
    return calibrate(q, batches)


class SplitPReLU(nn.Module):
    """``PReLU(x) = (1 - a) * relu(x) + a * x``, exactly (up to float rounding). ONNX Runtime's PRelu kernel is
    slow (measured: 58 % of MobileFaceNet's fp32 time) and has no int8 form; this one runs as Relu/Mul/Add,
    which ONNX Runtime executes faster in fp32 and quantizes (QLinearMul/QLinearAdd) in int8."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.weight = prelu.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight.view(1, -1, *([1] * (x.dim() - 2)))
        return (1 - a) * torch.relu(x) + a * x


def split_prelu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.PReLU`` replaced by ``SplitPReLU`` (same outputs)."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.PReLU):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, SplitPReLU(m))
    return model


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, force: bool = True,
                opset: int = 17, prelu_split: bool = True) -> Path:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch axis; written atomically.
    ``prelu_split``: export PReLU as ``(1 - a) * relu(x) + a * x`` (see ``SplitPReLU``)."""
    model = (split_prelu(model) if prelu_split else model).eval()

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})

    return atomic_save_with(path, write, force)


class BatchReader:
    """``CalibrationDataReader`` over a list of input batches (duck-typed: ORT only calls get_next/rewind)."""

    def __init__(self, batches: Sequence[torch.Tensor], input_name: str = INPUT_NAME):
        self._batches = [b.detach().cpu().numpy().astype(np.float32) for b in batches]
        self._name = input_name
        self._i = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return {self._name: self._batches[self._i - 1]}

    def rewind(self) -> None:
        self._i = 0


CALIBRATIONS = ("minmax", "percentile", "entropy")
FORMATS = ("qdq", "qoperator")


def quantize_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, batches: Sequence[torch.Tensor],
                  per_channel: bool = True, reduce_range: bool = False, force: bool = True,
                  calibration: str = "minmax", quant_format: str = "qdq",
                  exclude: Optional[Callable[[object], List[str]]] = None) -> Path:
    """Static int8 quantization (QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax calibration).

    The fp32 model first goes through ONNX Runtime's ``quant_pre_process`` (shape inference and graph
    optimisation): without it the convolutions stay fp32 between Q/DQ pairs (measured: no QLinearConv at all
    in ResNet-IR-18), so the int8 model is slower than the fp32 one.

    ``calibration``: minmax | percentile (99.999th) | entropy (ORT's calibrators); ``quant_format``: qdq (Q/DQ
    pairs, fused by ORT at load time) | qoperator (QLinearConv… in the file); ``exclude(preprocessed onnx
    model) -> node names`` that stay fp32 (per-layer fallback)."""
    if calibration not in CALIBRATIONS or quant_format not in FORMATS:
        raise ValueError(f"calibration {calibration!r} / format {quant_format!r}")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(BatchReader, CalibrationDataReader):
        pass

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory(dir=Path(tmp).parent) as work:
            pre = str(Path(work) / "preprocessed.onnx")
            quant_pre_process(str(fp32_path), pre)
            data = batches
            if calibration != "minmax" and len({len(b) for b in batches}) > 1:
                # ORT's histogram calibrators stack the batches: equal sizes (the remainder is dropped)
                x, size = torch.cat(list(batches)), len(batches[0])
                data = list(x[: len(x) // size * size].split(size))
            skip: List[str] = []
            if exclude is not None:
                import onnx

                skip = exclude(onnx.load(pre))
            method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                      "entropy": CalibrationMethod.Entropy}[calibration]
            fmt = QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator
            quantize_static(pre, tmp, _Reader(data), quant_format=fmt, per_channel=per_channel,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=skip)

    return atomic_save_with(int8_path, write, force)


def ort_session(path: str | os.PathLike, threads: int = 2):
    """A CPU ONNX Runtime session with ``threads`` intra-op threads (one inter-op thread, full optimization)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_run(session, x: torch.Tensor) -> torch.Tensor:
    """Run a session on one batch; returns the first output as a tensor."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0])


class OrtModule(nn.Module):
    """An ONNX Runtime session as an ``nn.Module`` (so evaluation code written for modules can use it)."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ort_run(self.session, x)


def latency_ms(fn: Callable[[], object], warmup: int = 5, iters: int = 30, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds (``compression_tool.engine.cost.median_ms``)."""
    return median_ms(fn, warmup, iters, min_seconds)


def file_mb(path: str | os.PathLike) -> float:
    return Path(path).stat().st_size / 1e6


def state_dict_mb(model: nn.Module) -> float:
    """fp32 size of the model's parameters and buffers in MB."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
