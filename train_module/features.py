"""Feature-map distillation: the student matches the teacher's intermediate feature maps, not only its output.

One output per image (a 128-d embedding) is little signal when there are only a few images to distil on; every
intermediate feature map gives thousands of numbers per image. ``FeatureDistill`` hooks named layers of the student
and of the teacher and, after both forward passes, compares what they produced:

- ``mse``: normalised MSE, ``mean((s - t)^2) / mean(t^2)`` per layer (scale-free, so layers of different magnitude
  weigh alike). Thinning removes channels, so each student channel *is* one teacher channel: ``channels[layer]``
  lists, for the student's channels in order, the teacher channel each one was (see
  ``compression_tool.engine.thinning.teacher_channels``); a layer without an entry must have the teacher's width.
- ``at``: attention transfer (Zagoruyko & Komodakis 2017), channel-agnostic: the L2-normalised spatial map
  ``mean_c(f^2)`` of each image, squared distance summed over positions. Needs the same spatial size only.

Both are 0 when the student's maps equal the teacher's (on the kept channels for ``mse``). A hook records the
layer's output tensor itself: an in-place activation right after the layer (``ReLU(inplace=True)``) makes that the
activated map, in the student and the teacher alike.
"""
from __future__ import annotations

import contextlib
import difflib
import fnmatch
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.io.errors import UserError

FEATURE_LOSSES = ("mse", "at")


def parse_layers(text: Optional[str | Sequence[str]]) -> tuple:
    """``'a,b'`` or ``['a', 'b,c']`` -> ``('a', 'b', 'c')`` (blanks dropped, order kept, duplicates removed)."""
    if not text:
        return ()
    parts = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for p in parts for n in str(p).split(",") if n.strip()]
    return tuple(dict.fromkeys(names))


def expand_layers(model: nn.Module, names: Sequence[str]) -> tuple:
    """Names with shell wildcards (``blocks.*.conv.5``) -> the matching module names of ``model``, in model order;
    other names are kept as they are (checked later). A pattern that matches nothing is a UserError."""
    all_names = [n for n, _ in model.named_modules() if n]
    out: List[str] = []
    for name in names:
        if not any(c in name for c in "*?["):
            out.append(name)
            continue
        hits = [n for n in all_names if fnmatch.fnmatchcase(n, name)]
        if not hits:
            raise UserError(f"--feature_distill: no layer of the model matches {name!r}")
        out.extend(hits)
    return tuple(dict.fromkeys(out))


def find_module(model: nn.Module, name: str, which: str) -> nn.Module:
    """``model``'s submodule ``name``; a UserError naming the closest layer names when there is none."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; layer names are those of model.named_modules()"
    raise UserError(f"--feature_distill: the {which} has no layer {name!r}{hint}")


def output_leaf(model: nn.Module, name: str) -> str:
    """The layer whose output channels the output of container ``name`` has: its last leaf module with parameters
    (parameter-free leaves such as ReLU keep the channels; ``name`` itself when it is a leaf): ``conv1`` ->
    ``conv1.prelu``, ``stem`` (conv, BN, ReLU) -> ``stem.1``, a residual block -> its last BN."""
    leaves = [(n, m) for n, m in find_module(model, name, "model").named_modules()
              if not any(True for _ in m.children())]
    with_params = [n for n, m in leaves if any(True for _ in m.parameters(recurse=False))]
    last = (with_params or [n for n, _ in leaves] or [""])[-1]
    return f"{name}.{last}" if last else name


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, prod(spatial)): L2-normalised mean over channels of the squared activations."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse",
                 channels: Optional[torch.Tensor] = None, layer: str = "") -> torch.Tensor:
    """The loss between one layer's student and teacher maps (see the module doc)."""
    if kind not in FEATURE_LOSSES:
        raise UserError(f"unknown --feature_loss {kind!r}; expected one of: {', '.join(FEATURE_LOSSES)}")
    if kind == "at":
        if student.dim() < 3 or student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
            raise UserError(f"--feature_distill {layer}: attention transfer needs maps of the same spatial size, got "
                            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}")
        return (attention_map(student) - attention_map(teacher)).pow(2).sum(1).mean()
    if channels is not None:
        if student.dim() < 2 or teacher.dim() < 2 or int(channels.max()) >= teacher.shape[1]:
            raise UserError(f"--feature_distill {layer}: the kept channels do not fit the teacher's map "
                            f"{tuple(teacher.shape)}")
        teacher = teacher.index_select(1, channels)
    if student.shape != teacher.shape:
        raise UserError(f"--feature_distill {layer}: student map {tuple(student.shape)} and teacher map "
                        f"{tuple(teacher.shape)} differ and the channels cannot be mapped (no keep-array names "
                        "this layer); choose a layer of the same width or --feature_loss at")
    return (student - teacher).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)


class FeatureDistill:
    """Forward hooks on ``layers`` of ``student`` and ``teacher``; ``loss()`` after a forward pass of both inside
    ``with fd.recording():``.

    ``channels[layer]``: teacher channel index of each student channel (``mse`` only). Call ``close()`` (or use it
    as a context manager) to remove the hooks.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, layers: Sequence[str], kind: str = "mse",
                 channels: Optional[Mapping[str, Sequence[int]]] = None):
        if not layers:
            raise UserError("--feature_distill: give at least one layer name")
        if kind not in FEATURE_LOSSES:
            raise UserError(f"unknown --feature_loss {kind!r}; expected one of: {', '.join(FEATURE_LOSSES)}")
        self.layers, self.kind = list(layers), kind
        self.channels: Dict[str, torch.Tensor] = {
            k: torch.as_tensor(list(v), dtype=torch.long) for k, v in (channels or {}).items() if k in self.layers}
        self._out: Dict[str, Dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
        self._handles: List = []
        self._recording = False
        self._models = {"student": student, "teacher": teacher}
        self.attach()

    def attach(self) -> None:
        """(Re-)register the hooks on the modules now under the layer names (after BN layers were swapped for
        synchronised ones under torchrun, say)."""
        self.close()
        for which, model in self._models.items():
            for name in self.layers:
                module = find_module(model, name, which)
                self._handles.append(module.register_forward_hook(self._hook(which, name)))

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """The hooks keep the layers' outputs only inside this block (not during evaluations)."""
        self._recording, self._out = True, {"student": {}, "teacher": {}}
        try:
            yield
        finally:
            self._recording = False

    def _hook(self, which: str, name: str):
        def hook(_module, _inputs, output):
            if not self._recording:
                return
            if not isinstance(output, torch.Tensor):
                raise UserError(f"--feature_distill {name}: the layer outputs {type(output).__name__}, not a tensor")
            self._out[which][name] = output
        return hook

    def loss(self) -> torch.Tensor:
        """Mean over the layers of the per-layer loss, from the maps of the last student and teacher forwards."""
        s_out, t_out = self._out["student"], self._out["teacher"]
        missing = [n for n in self.layers if n not in s_out or n not in t_out]
        if missing:
            raise UserError(f"--feature_distill: layer {missing[0]} was not run by the forward pass")
        total = None
        for name in self.layers:
            ch = self.channels.get(name)
            s = s_out[name]
            term = feature_loss(s, t_out[name].detach(), self.kind, ch.to(s.device) if ch is not None else None,
                                name)
            total = term if total is None else total + term
        self._out = {"student": {}, "teacher": {}}
        return total / len(self.layers)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "FeatureDistill":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
