"""Reuse activations of the part of the network a sensitivity step does not change.

When one group is masked, every module that finishes executing before the first masked module starts
sees exactly the same inputs as in the unmasked model, so its outputs can be replayed from memory. We
record the call order once, pick the largest such modules (called once per forward), capture their outputs
during the first evaluation of a group and replay them for the remaining sparsity levels.
Requires the evaluation to feed the same batches in the same order each time (a fixed evaluation subset).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Set

import torch
import torch.nn as nn

from compression_tool.engine.device import to_model_device


class PrefixCache:
    def __init__(self, model: nn.Module, example_inputs: torch.Tensor):
        self.model = model
        self.mods: Dict[str, nn.Module] = dict(model.named_modules())
        self.start: Dict[str, int] = {}
        self.end: Dict[str, int] = {}
        self.calls: Dict[str, int] = {}
        self._trace(example_inputs)
        self.store: Dict[str, List[torch.Tensor]] = {}

    def _trace(self, x: torch.Tensor) -> None:
        clock = [0]

        def pre(name):
            def fn(mod, inp):
                self.calls[name] = self.calls.get(name, 0) + 1
                self.start.setdefault(name, clock[0])
                clock[0] += 1
            return fn

        def post(name):
            def fn(mod, inp, out):
                self.end[name] = clock[0]
                clock[0] += 1
            return fn

        hs = [m.register_forward_pre_hook(pre(n)) for n, m in self.mods.items() if n]
        hs += [m.register_forward_hook(post(n)) for n, m in self.mods.items() if n]
        try:
            with torch.no_grad():
                self.model(to_model_device(self.model, x))
        finally:
            for h in hs:
                h.remove()

    def reusable(self, touched: Set[str]) -> List[str]:
        """Largest modules that complete before any module in ``touched`` starts, called once per forward."""
        starts = [self.start[n] for n in touched if n in self.start]
        if not starts:
            return []
        first = min(starts)
        ok = [n for n in self.start if self.calls[n] == 1 and n in self.end and self.end[n] < first]
        ok_set = set(ok)
        return [n for n in ok if not any(p in ok_set for p in _parents(n))]

    @contextlib.contextmanager
    def reuse(self, names: List[str]) -> Iterator[None]:
        """Replay stored outputs of ``names``; capture them on the first pass if not stored yet."""
        for n in list(self.store):
            if n not in names:
                del self.store[n]  # keep memory to what the current group needs
        counters = {n: 0 for n in names}
        handles, patched = [], []
        for n in names:
            m = self.mods[n]
            if n in self.store:
                m.forward = self._replayer(n, counters)  # instance attribute shadows the class method
                patched.append(m)
            else:
                self.store[n] = []
                handles.append(m.register_forward_hook(
                    lambda mod, i, o, n=n: self.store[n].append(o.detach().clone())))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for m in patched:
                del m.forward

    def _replayer(self, name: str, counters: Dict[str, int]):
        def forward(*args, **kwargs):
            out = self.store[name][counters[name]]
            counters[name] += 1
            return out.clone()  # later in-place ops (ReLU(inplace)) must not corrupt the cache
        return forward


def _parents(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
