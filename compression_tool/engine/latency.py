"""A latency cost model: per-layer latency tables measured on the runtime the model ships on.

Each leaf layer with parameters (conv, linear, BN, PReLU…) is timed *alone*, on an input of the shape it sees
in the model, on the chosen runtime — PyTorch CPU (the module itself) or ONNX Runtime CPU (the module exported
to a one-layer ONNX graph; PReLU exported as Relu/Mul/Add, see ``ptq_onnx.SplitPReLU``) — with the user's
thread count and batch size. Results are cached per machine in ``work_space/latency/<key>.json``, the key made
of the CPU model, the runtime and its version, torch's version, threads and batch, so each layer shape is timed
once per machine and setting: a thinned model only adds the shapes it has not seen.

A model's predicted latency is ``scale * (sum of its layers' times) + offset``, both fitted on two whole models
measured side by side: the unpruned model and a probe with half of every group removed. They absorb what
per-layer timing misses (parameter-free ops, fusions, per-call overhead, cache effects) and are assumed to carry
over to other thinned variants. For ONNX
Runtime the model is BN-folded first (as ``quantization.py --mode export`` ships it). docs/deployment.md
compares predicted and measured latency of whole thinned models.
"""
from __future__ import annotations

import json
import logging
import platform
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.cost import median_ms
from compression_tool.engine.quant.bn_fold import fold_bn
from compression_tool.engine.quant.ptq_onnx import SplitPReLU, export_onnx, ort_session, split_prelu
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_write_json

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "ort")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_version(runtime: str) -> str:
    if runtime == "ort":
        import onnxruntime

        return f"onnxruntime-{onnxruntime.__version__}"
    return f"torch-{torch.__version__}"


@dataclass(frozen=True)
class MachineKey:
    cpu: str
    runtime: str
    versions: str
    threads: int
    batch: int

    @classmethod
    def here(cls, runtime: str, threads: int, batch: int) -> "MachineKey":
        if runtime not in RUNTIMES:
            raise UserError(f"latency runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
        if threads < 1 or batch < 1:
            raise UserError(f"latency tables need threads >= 1 and batch >= 1, got {threads}, {batch}")
        versions = runtime_version(runtime) + ("" if runtime == "torch" else f"_torch-{torch.__version__}")
        return cls(cpu_model(), runtime, versions, threads, batch)

    def slug(self) -> str:
        text = f"{self.cpu}_{self.versions}_t{self.threads}_b{self.batch}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def signature(module: nn.Module, shape: Tuple[int, ...]) -> str:
    """What the latency of a leaf depends on: its type, configuration, parameter shapes and input shape."""
    params = ",".join("x".join(map(str, p.shape)) for p in module.parameters(recurse=False))
    return f"{type(module).__name__}({module.extra_repr()})[{params}]<-{'x'.join(map(str, shape))}"


def timed_leaves(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Leaves worth timing: those holding parameters (conv, linear, BN, PReLU…), in model order."""
    return [(n, m) for n, m in model.named_modules()
            if not list(m.children()) and (list(m.parameters(recurse=False)) or isinstance(m, SplitPReLU))]


@torch.no_grad()
def leaf_inputs(model: nn.Module, x: torch.Tensor) -> Dict[str, Tuple[int, ...]]:
    """{leaf name: input shape} from one forward pass (first call of each leaf)."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    hooks = []
    for name, m in timed_leaves(model):
        def hook(mod, args, name=name):
            if name not in shapes and args and isinstance(args[0], torch.Tensor):
                shapes[name] = tuple(args[0].shape)
        hooks.append(m.register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return shapes


def _median_ms(fn: Callable[[], object], min_reps: int = 15, min_seconds: float = 0.05) -> float:
    return median_ms(fn, 3, min_reps, min_seconds)


class LatencyTable:
    """Per-layer latencies (ms) for one machine key, cached in ``<folder>/<key>.json``."""

    def __init__(self, runtime: str = "torch", threads: int = 1, batch: int = 1,
                 folder: str | Path = "work_space/latency"):
        self.key = MachineKey.here(runtime, threads, batch)
        self.path = Path(folder) / f"{self.key.slug()}.json"
        self.layers: Dict[str, float] = {}
        self.measured = 0                  # layer shapes timed by this instance (the rest came from the cache)
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
                if doc.get("key") == self.key.__dict__:
                    self.layers = {k: float(v) for k, v in doc["layers"].items()}
            except (ValueError, KeyError, TypeError):
                log.warning("latency table %s is unreadable; re-measuring", self.path)

    def save(self) -> Path:
        return atomic_write_json(self.path, {"key": self.key.__dict__, "layers": self.layers}, force=True)

    @torch.no_grad()
    def _measure(self, module: nn.Module, shape: Tuple[int, ...]) -> float:
        x = torch.randn(*shape)
        module = module.eval()
        if self.key.runtime == "torch":
            threads = torch.get_num_threads()
            torch.set_num_threads(self.key.threads)
            try:
                return _median_ms(lambda: module(x))
            finally:
                torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as d:
            path = export_onnx(module, x[:1], Path(d) / "layer.onnx", prelu_split=False)
            sess = ort_session(path, self.key.threads)
            name = sess.get_inputs()[0].name
            feed = {name: x.numpy()}
            return _median_ms(lambda: sess.run(None, feed))

    def layer_ms(self, model: nn.Module, example: torch.Tensor) -> Dict[str, float]:
        """{leaf name: ms} for the model at the table's batch size (measuring and caching new shapes)."""
        model = self.deployed(model)
        x = example[:1].expand(self.key.batch, *example.shape[1:]).contiguous()
        shapes = leaf_inputs(model, x)
        out: Dict[str, float] = {}
        new = 0
        for name, m in timed_leaves(model):
            if name not in shapes:
                continue
            sig = signature(m, shapes[name])
            if sig not in self.layers:
                self.layers[sig] = self._measure(m, shapes[name])
                new += 1
            out[name] = self.layers[sig]
        if new:
            self.measured += new
            self.save()
        return out

    def deployed(self, model: nn.Module) -> nn.Module:
        """The model as the runtime runs it: ONNX Runtime gets the BN-folded, PReLU-split export."""
        if self.key.runtime == "ort":
            return split_prelu(fold_bn(model)[0]).eval()
        return model

    def measure_model(self, model: nn.Module, example: torch.Tensor, rounds: int = 9) -> float:
        """The whole model's measured latency (ms) on this runtime, threads and batch."""
        return self.measure_models([model], example, rounds)[0]

    @torch.no_grad()
    def measure_models(self, models: List[nn.Module], example: torch.Tensor, rounds: int = 9) -> List[float]:
        """Whole models measured side by side (interleaved rounds, medians) on this runtime."""
        from compression_tool.engine.cost import interleaved_latency
        from compression_tool.engine.quant.ptq_onnx import OrtModule

        x = example[:1].expand(self.key.batch, *example.shape[1:]).contiguous()
        threads = torch.get_num_threads()
        torch.set_num_threads(self.key.threads)
        try:
            if self.key.runtime == "torch":
                return interleaved_latency(models, x, rounds=rounds)
            with tempfile.TemporaryDirectory() as d:
                mods = [OrtModule(ort_session(export_onnx(fold_bn(m)[0], x[:1], Path(d) / f"m{i}.onnx"),
                                              self.key.threads)) for i, m in enumerate(models)]
                return interleaved_latency(mods, x, rounds=rounds)
        finally:
            torch.set_num_threads(threads)


class LatencyModel:
    """Predicted latency of thinned variants of one model: ``scale * (sum of the per-layer table) + offset``.

    ``scale`` and ``offset`` are fitted on two whole models measured side by side (interleaved): the model
    itself and a probe with half of every group's channels removed. The offset is the part that does not
    shrink with the widths (or, negative, the per-call overhead that timing each layer alone adds); without a
    probe (``probe=False``, or when the fit is degenerate) the offset is 0 and the scale proportional."""

    def __init__(self, model: nn.Module, example: torch.Tensor, table: LatencyTable, probe: bool = True,
                 rounds: int = 9):
        self.table, self.example = table, example
        self.base_layers = table.layer_ms(model, example)
        base_sum = sum(self.base_layers.values())
        self.offset = 0.0
        if probe:
            from compression_tool.engine.cost import thinned_copy
            from compression_tool.engine.groups import GroupIndex

            index = GroupIndex(model, example[:1])
            half = thinned_copy(model, example[:1], {g.name: list(range(g.n_prune(0.5))) for g in index.groups})
            probe_sum = sum(table.layer_ms(half, example).values())
            self.measured_base, measured_half = table.measure_models([model, half], example, rounds)
            if base_sum - probe_sum > 1e-6 * base_sum:
                scale = (self.measured_base - measured_half) / (base_sum - probe_sum)
                if scale > 0:
                    self.scale, self.offset = scale, self.measured_base - scale * base_sum
            if not self.offset:
                self.scale = self.measured_base / max(base_sum, 1e-9)
        else:
            self.measured_base = table.measure_model(model, example, rounds)
            self.scale = self.measured_base / max(base_sum, 1e-9)

    @property
    def base(self) -> float:
        return self.measured_base

    def per_layer(self, model: nn.Module) -> Dict[str, float]:
        return self.table.layer_ms(model, self.example)

    def predict(self, model: nn.Module) -> float:
        return max(self.scale * sum(self.per_layer(model).values()) + self.offset, 1e-3)


def layer_lines(before: Dict[str, float], after: Dict[str, float], scale: float = 1.0, top: int = 0,
                offset: float = 0.0) -> List[str]:
    """Aligned per-layer table (ms before, after, ratio), largest 'before' first; ``top`` > 0 keeps that many."""
    names = sorted(before, key=lambda n: -before[n])
    if top:
        names = names[:top]
    width = max([len(n) for n in names] + [5])
    out = [f"{'layer':{width}s} {'ms before':>10s} {'ms after':>10s} {'after/before':>12s}"]
    for n in names:
        a = after.get(n)
        out.append(f"{n:{width}s} {before[n]:10.4f} " + (f"{a:10.4f} {a / before[n]:12.3f}" if a is not None
                                                         else f"{'-':>10s} {'-':>12s}"))
    tb, ta = sum(before.values()), sum(after.values())
    out.append(f"{'sum of layers':{width}s} {tb:10.3f} {ta:10.3f} {ta / max(tb, 1e-9):12.3f}")
    if scale != 1.0 or offset:
        pb, pa = scale * tb + offset, max(scale * ta + offset, 1e-3)
        out.append(f"{'predicted model':{width}s} {pb:10.3f} {pa:10.3f} {pa / max(pb, 1e-9):12.3f}"
                   f"   ({scale:.3f} x sum {offset:+.3f} ms, fitted on the unpruned model and a 50 % probe)")
    return out


# ----------------------------------------------------------------------------------- fast prediction for search
GRID = (0.25, 0.5, 0.75, 1.0)


def _resized(m: nn.Module, cin: int, cout: int) -> Optional[nn.Module]:
    """A fresh module like ``m`` with ``cin`` input and ``cout`` output channels (None: type not handled)."""
    if isinstance(m, nn.Conv2d):
        groups = m.groups
        if m.groups > 1 and m.groups == m.in_channels:          # depthwise: width set by its input
            groups, cout = cin, cin * (m.out_channels // m.in_channels)
        elif m.groups > 1 and (cin % m.groups or cout % m.groups):
            return None
        return nn.Conv2d(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, groups, m.bias is not None,
                         m.padding_mode)
    if isinstance(m, nn.Linear):
        return nn.Linear(cin, cout, m.bias is not None)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return type(m)(cout)
    if isinstance(m, nn.PReLU):
        return nn.PReLU(cout if m.weight.numel() > 1 else 1)
    if isinstance(m, SplitPReLU):
        return SplitPReLU(nn.PReLU(cout if m.weight.numel() > 1 else 1))
    return None


def _channels(m: nn.Module, shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(input channels, output channels) of a leaf as the latency grid scales them."""
    cin = shape[1] if len(shape) > 1 else 1
    params = list(m.parameters(recurse=False))
    cout = params[0].shape[0] if params else cin
    return cin, cout


class GroupLatencyModel:
    """``predict(kept)`` -> {'latency_ms'} from the kept channel count of every group, without thinning: fast
    enough for the search's budget projection.

    Which group sets each layer's input and output width is found by thinning each group once (half of it);
    each layer's time is then measured (cached in the table) on a grid of width fractions ``GRID`` of its input
    and output groups and interpolated (bilinear; linear below 0.25). The scale and offset of ``LatencyModel``
    turn the sum into a model latency."""

    def __init__(self, lm: LatencyModel, model: nn.Module, index, example: torch.Tensor):
        from compression_tool.engine.cost import thinned_copy

        self.lm, self.table = lm, lm.table
        x = example[:1].expand(self.table.key.batch, *example.shape[1:]).contiguous()
        deployed = self.table.deployed(model)
        shapes = leaf_inputs(deployed, x)
        leaves = [(n, m) for n, m in timed_leaves(deployed) if n in shapes]
        base_io = {n: _channels(m, shapes[n]) for n, m in leaves}
        self.channels = np.array([g.channels for g in index.groups], dtype=float)
        self.in_group: Dict[str, int] = {}
        self.out_group: Dict[str, int] = {}
        for j, g in enumerate(index.groups):
            n = g.channels // 2
            if n == 0:
                continue
            thin = self.table.deployed(thinned_copy(model, example[:1], {g.name: list(range(n))}))
            tshapes = leaf_inputs(thin, x)
            for name, m in timed_leaves(thin):
                if name not in base_io or name not in tshapes:
                    continue
                cin, cout = _channels(m, tshapes[name])
                if cin != base_io[name][0]:
                    self.in_group[name] = j
                if cout != base_io[name][1]:
                    self.out_group[name] = j
        self.grids: Dict[str, np.ndarray] = {}
        self.fixed: Dict[str, float] = {}
        new_before = self.table.measured
        for name, m in leaves:
            cin, cout = base_io[name]
            gi, go = self.in_group.get(name), self.out_group.get(name)
            fis = GRID if gi is not None else (1.0,)
            fos = GRID if go is not None and go != gi else (None,)
            grid = np.zeros((len(fis), len(fos)))
            for a, fi in enumerate(fis):
                for b, fo in enumerate(fos):
                    ci = max(1, round(cin * fi))
                    if go is not None and go == gi:
                        co = max(1, round(cout * fi))
                    else:
                        co = max(1, round(cout * fo)) if fo is not None else cout
                    mod = _resized(m, ci, co)
                    if mod is None:
                        grid[a, b] = self._time(m, shapes[name])       # a type it cannot resize: fixed
                        continue
                    shape = (shapes[name][0], ci, *shapes[name][2:])
                    grid[a, b] = self._time(mod, shape)
            self.grids[name] = grid
        self.names = [n for n, _ in leaves]
        self.measured = self.table.measured - new_before
        if self.measured:
            self.table.save()

    def _time(self, module: nn.Module, shape: Tuple[int, ...]) -> float:
        sig = signature(module, shape)
        if sig not in self.table.layers:
            self.table.layers[sig] = self.table._measure(module, shape)
            self.table.measured += 1
        return self.table.layers[sig]

    @staticmethod
    def _interp(grid_1d: np.ndarray, f: float) -> float:
        xs = np.array(GRID)
        if f >= xs[0]:
            return float(np.interp(f, xs, grid_1d))
        slope = (grid_1d[1] - grid_1d[0]) / (xs[1] - xs[0])
        return max(0.0, float(grid_1d[0] - slope * (xs[0] - f)))

    def predict(self, kept: np.ndarray) -> Dict[str, float]:
        frac = np.asarray(kept, dtype=float) / self.channels
        total = 0.0
        for name in self.names:
            grid = self.grids[name]
            gi, go = self.in_group.get(name), self.out_group.get(name)
            if grid.shape == (1, 1):
                total += grid[0, 0]
                continue
            if grid.shape[1] == 1:                       # one group sets the width (or only the input)
                total += self._interp(grid[:, 0], frac[gi] if gi is not None else 1.0)
                continue
            if grid.shape[0] == 1:                       # only the output width varies
                total += self._interp(grid[0, :], frac[go])
                continue
            fo = frac[go]
            col = np.array([self._interp(grid[a, :], fo) for a in range(grid.shape[0])])
            total += self._interp(col, frac[gi])
        return {"latency_ms": max(self.lm.scale * total + self.lm.offset, 1e-3)}
