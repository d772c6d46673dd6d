"""int8 that is worth it: which layers stay fp32, and where the time goes.

- ``node_classes``: the ONNX nodes of layer classes that may be slower in int8 than in fp32 — ``depthwise``
  (Conv with group > 1: memory-bound, int8 kernels gain little) and ``prelu`` (the Relu/Mul/Add of an exported
  ``SplitPReLU``: each becomes QLinearMul/QLinearAdd with requantisation in int8).
- ``fp32_fallback(classes, prelu_modules)``: the ``exclude`` callback of ``ptq_onnx.quantize_onnx``.
- ``op_profile``: ONNX Runtime's own profiler, summed per operator type (ms per run): which kernels take the time
  in fp32 and in int8.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Sequence, Set

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.quant.ptq_onnx import SplitPReLU

CLASSES = ("depthwise", "prelu")


def prelu_modules(model: nn.Module) -> Set[str]:
    """Names of the PReLU modules (plain or split) of a PyTorch model."""
    return {n for n, m in model.named_modules() if isinstance(m, (nn.PReLU, SplitPReLU))}


def _module_of(node_name: str) -> str:
    """The PyTorch module a node came from. The exporter names nodes by scope, one component per module, a
    container's child as ``<container>.<index>``: ``/blocks/blocks.0/conv/conv.2/Relu`` is module
    ``blocks.0.conv.2``, ``/conv1/prelu/Mul`` is ``conv1.prelu``."""
    parts = node_name.strip("/").split("/")[:-1]
    full: List[str] = []
    prev = None
    for comp in parts:
        head, _, tail = comp.rpartition(".")
        full.append(tail if head and head == prev else comp)
        prev = comp
    return ".".join(full)


def node_classes(model, prelus: Set[str]) -> Dict[str, List[str]]:
    """{class: node names} for ``CLASSES`` in an ONNX model (``onnx.ModelProto``)."""
    out: Dict[str, List[str]] = {c: [] for c in CLASSES}
    for node in model.graph.node:
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
            out["depthwise"].append(node.name)
        elif node.op_type in ("Relu", "Mul", "Add", "Sub", "PRelu") and _module_of(node.name) in prelus:
            out["prelu"].append(node.name)
    return out


def fp32_fallback(classes: Iterable[str], prelus: Set[str]) -> Callable[[object], List[str]]:
    """``exclude`` for ``quantize_onnx``: the nodes of ``classes`` stay fp32."""
    classes = list(classes)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"unknown fp32 fallback class(es) {unknown}; expected {CLASSES}")

    def exclude(model) -> List[str]:
        found = node_classes(model, prelus)
        return [n for c in classes for n in found[c]]

    return exclude


def layer_kinds(model: nn.Module) -> Dict[str, str]:
    """{module name: kind} for profiles: conv ``depthwise`` / ``1x1`` / ``kxk``, ``linear``, ``prelu``."""
    out: Dict[str, str] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[n] = ("depthwise" if m.groups > 1 and m.groups == m.in_channels else
                      "1x1" if m.kernel_size == (1, 1) else "kxk")
        elif isinstance(m, nn.Linear):
            out[n] = "linear"
        elif isinstance(m, (nn.PReLU, SplitPReLU)):
            out[n] = "prelu"
    return out


def fp32_modules(modules: Iterable[str]) -> Callable[[object], List[str]]:
    """``exclude`` for ``quantize_onnx``: every node exported from these PyTorch modules stays fp32."""
    modules = set(modules)

    def exclude(model) -> List[str]:
        return [n.name for n in model.graph.node if _module_of(n.name) in modules]

    return exclude


def slower_in_int8(fp32: Dict[str, float], int8: Dict[str, float], margin: float = 1.0) -> List[str]:
    """Modules whose int8 kernels (including their Q/DQ nodes) took longer than ``margin`` x their fp32 ones."""
    return sorted(m for m, t in int8.items() if m and t > margin * fp32.get(m, 0.0))


def op_profile(path: str | os.PathLike, x: torch.Tensor, threads: int = 1, runs: int = 20,
               kinds: Dict[str, str] | None = None, by_module: bool = False) -> Dict[str, float]:
    """{operator type: ms per run} from ONNX Runtime's profiler (kernel time only), sorted, largest first.
    ``kinds`` ({module: kind}, see ``layer_kinds``) splits each operator type by the kind of layer its node came
    from, e.g. ``QLinearConv [depthwise]``, ``QLinearMul [prelu]``; ``by_module``: {PyTorch module: ms} instead
    (every node attributed to the module it was exported from)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(path).with_suffix("")) + "_profile"
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.detach().cpu().numpy().astype(np.float32)}
    for _ in range(3 + runs):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    per_node: Dict[tuple, List[tuple]] = defaultdict(list)
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            per_node[(ev["name"], ev["args"].get("op_name", "?"))].append((ev["ts"], ev["dur"] / 1e3))
    out: Dict[str, float] = defaultdict(float)
    for (node, op), calls in per_node.items():           # the 3 warm-up calls of each node are left out
        if by_module:
            op = _module_of(node[: -len("_kernel_time")])
        elif kinds is not None:
            kind = kinds.get(_module_of(node[: -len("_kernel_time")]))
            op = f"{op} [{kind}]" if kind else op
        out[op] += sum(d for _, d in sorted(calls)[3:]) / runs
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def profile_lines(profiles: Sequence[tuple], top: int = 12) -> List[str]:
    """A table of ``(label, {op: ms})`` profiles side by side, rows = operator types."""
    ops: List[str] = []
    for _, prof in profiles:
        ops += [op for op in prof if op not in ops]
    width = max([len(op) for op in ops] + [8])
    head = f"{'operator':{width}s} " + " ".join(f"{label:>18s}" for label, _ in profiles)
    lines = [head]
    for op in ops[:top] if top else ops:
        lines.append(f"{op:{width}s} " + " ".join(f"{prof.get(op, 0.0):18.3f}" for _, prof in profiles))
    lines.append(f"{'total':{width}s} " + " ".join(f"{sum(prof.values()):18.3f}" for _, prof in profiles))
    return lines
