"""HRank: rank of each feature map after BN and the nonlinearity, as the paper ranks them (docs/criteria.md)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.criteria.base import _register
from compression_tool.engine.criteria.data import DataCriterion, _SiteHooks, take_batches
from compression_tool.engine.criteria.weight import L1
from compression_tool.engine.groups import _param_dtype, activation_sites
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)


def state_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


HRANK_VERSION = "post-activation-2"   # bump when what is ranked changes: older caches are then never read


def data_fingerprint(xs: List[torch.Tensor]) -> str:
    """A hash of the input batches (shapes, dtypes and values)."""
    h = hashlib.sha1()
    for x in xs:
        h.update(f"{tuple(x.shape)}{x.dtype}".encode())
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@_register
class HRank(DataCriterion):
    """HRank: average matrix rank of each feature map after BN and the nonlinearity, over ``limit`` batches (low rank
    goes first). Ranks are cached under ``cache_dir`` (the seed tool's work_space/rank_conv), keyed on the model's
    weights, the batches, the input size, ``limit`` and the criterion version."""
    name, pruner_class = "hrank", "HRankStructureParameterPruner"

    def __init__(self, limit: int = 5, cache_dir: Optional[str] = "work_space/rank_conv", tag: str = "model"):
        super().__init__(limit)
        self.cache_dir, self.tag = cache_dir, tag
        self.ranks = self.scores
        self._warned: set = set()

    def cache_folder(self, model: nn.Module, xs: List[torch.Tensor]) -> Optional[Path]:
        if not self.cache_dir:
            return None
        key = hashlib.sha1("|".join([HRANK_VERSION, state_fingerprint(model), data_fingerprint(xs),
                                     "x".join(map(str, xs[0].shape[1:])), str(self.limit)]).encode()).hexdigest()[:16]
        return Path(self.cache_dir) / f"{self.tag}_{key}"

    def prepare(self, model, batches, roots):
        xs = [_param_dtype(model, x) for x, _ in take_batches(batches, self.limit, self.name)]
        folder = self.cache_folder(model, xs)
        todo = {}
        for name, m in roots.items():
            f = folder / f"{name}.npy" if folder else None
            if f is not None and f.exists():
                self.ranks[name] = torch.from_numpy(np.load(f))
            elif isinstance(m, nn.modules.conv._ConvNd):
                todo[name] = m
        if not todo:
            return
        sites = activation_sites(model, xs[0], todo)
        log.info("hrank: ranking %d feature maps after BN / activation (%s)", len(todo),
                 ", ".join(f"{n} -> {type(sites[n]).__name__}" for n in list(todo)[:3]))
        sums: Dict[str, torch.Tensor] = {}

        def add(name: str, out: torch.Tensor) -> None:
            sums[name] = sums.get(name, 0) + torch.linalg.matrix_rank(out.detach().double()).sum(0).cpu()

        was = model.training
        model.eval()
        try:
            with _SiteHooks(sites, add), torch.no_grad():
                for x in xs:
                    model(_param_dtype(model, x))
        finally:
            model.train(was)
        n = sum(len(x) for x in xs)
        for name in todo:
            if name not in sums:
                raise UserError(f"hrank: layer {name!r} did not run in the model's forward pass")
            self.ranks[name] = (sums[name] / n).float()
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{name}.npy", self.ranks[name].numpy())

    def channel_scores(self, root_name, root):
        if root_name not in self.ranks:
            if isinstance(root, nn.modules.conv._ConvNd):
                return super().channel_scores(root_name, root)   # the "call prepare first" error
            # rank of a vector is uninformative: Linear groups fall back to L1
            log.info("hrank: %s is not a convolution; ranking it by L1", root_name)
            return L1().channel_scores(root_name, root)
        return self.ranks[root_name]

    def __call__(self, index, group):
        s = super().__call__(index, group)
        if group.channels > 1 and group.root_name in self.ranks and bool((s == s[0]).all()) \
                and group.name not in self._warned:
            self._warned.add(group.name)
            log.warning("hrank: every channel of %s has the same mean rank (%.2f); the group cannot be ranked and "
                        "is cut in channel order", group.name, float(s[0]))
        return s
