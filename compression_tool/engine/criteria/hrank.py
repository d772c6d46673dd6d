"""HRank: rank of each output feature map (the paper's choice of tensor is discussed in docs/criteria.md)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.criteria.base import Criterion, _register
from compression_tool.engine.criteria.weight import L1
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)


def state_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@_register
class HRank(Criterion):
    """HRank: average matrix rank of each output feature map over ``limit`` batches (low rank goes first).
    Ranks are cached per model fingerprint under ``cache_dir`` (the seed tool's work_space/rank_conv)."""
    name, pruner_class = "hrank", "HRankStructureParameterPruner"
    needs_data = True

    def __init__(self, limit: int = 5, cache_dir: Optional[str] = "work_space/rank_conv", tag: str = "model"):
        self.limit, self.cache_dir, self.tag = limit, cache_dir, tag
        self.ranks: Dict[str, torch.Tensor] = {}

    def prepare(self, model, batches, roots):
        folder = Path(self.cache_dir) / f"{self.tag}_{state_fingerprint(model)}_limit{self.limit}" \
            if self.cache_dir else None
        todo = {}
        for name, m in roots.items():
            f = folder / f"{name}.npy" if folder else None
            if f is not None and f.exists():
                self.ranks[name] = torch.from_numpy(np.load(f))
            elif isinstance(m, nn.modules.conv._ConvNd):
                todo[name] = m
        if not todo:
            return
        sums: Dict[str, torch.Tensor] = {n: torch.zeros(m.out_channels, dtype=torch.float64) for n, m in todo.items()}
        counts = {"n": 0}

        def hook(name):
            def fn(mod, inp, out):
                sums[name] += torch.linalg.matrix_rank(out.detach().double()).sum(0).cpu()
            return fn

        hooks = [m.register_forward_hook(hook(n)) for n, m in todo.items()]
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i, x in enumerate(batches):
                    if i >= self.limit:
                        break
                    model(x)
                    counts["n"] += x.shape[0]
        finally:
            for h in hooks:
                h.remove()
            model.train(was)
        if counts["n"] == 0:
            raise UserError("hrank: the data loader yielded no batches")
        for n in todo:
            self.ranks[n] = (sums[n] / counts["n"]).float()
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{n}.npy", self.ranks[n].numpy())

    def channel_scores(self, root_name, root):
        if root_name not in self.ranks:
            # rank of a vector is uninformative: Linear groups fall back to L1
            log.info("hrank: %s is not a convolution; ranking it by L1", root_name)
            return L1().channel_scores(root_name, root)
        return self.ranks[root_name]
