"""Groups the dependency graph cannot resolve (a channel split + concat + channel shuffle, ShuffleNet-style) are
skipped with a warning that names them, before the model is touched; the rest is pruned, and soft (masked)
still equals hard (thinned) pruning on it."""
import copy
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.masking import apply_slices, group_slices
from compression_tool.engine.thinning import thin
from compression_tool.io.errors import UserError


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 stride-1 unit: split the channels, transform one half, concat, shuffle."""

    def __init__(self, c: int):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
                                    nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h),
                                    nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, 1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)


class ShuffleToy(nn.Module):
    def __init__(self, c: int = 16, units: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.units = nn.Sequential(*[ShuffleUnit(c) for _ in range(units)])
        self.last = nn.Sequential(nn.Conv2d(c, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.last(self.units(self.stem(x))).mean((2, 3)))


def build(units: int = 2):
    torch.manual_seed(0)
    model = ShuffleToy(units=units).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model, torch.randn(2, 3, 8, 8, dtype=torch.float64)


UNITS = pytest.mark.parametrize("units", [2, 3])  # from 3 units on, torch-pruning's graph build itself failed


@UNITS
def test_shuffle_groups_are_skipped_with_a_warning(caplog, units):
    model, x = build(units)
    with caplog.at_level(logging.WARNING, logger="compression_tool.engine.groups"):
        index = GroupIndex(model, x[:1])
    skipped = [name for name, _ in index.skipped]
    assert "stem.0.weight" in skipped
    for name in skipped:
        assert any(name in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING), name
    names = [g.name for g in index.groups]
    assert "last.0.weight" in names and "units.0.branch.0.weight" in names
    assert not set(names) & set(skipped)


@UNITS
def test_the_rest_is_pruned_and_soft_equals_hard(units):
    model, x = build(units)
    soft, hard = copy.deepcopy(model), copy.deepcopy(model)
    gs, gh = GroupIndex(soft, x[:1]), GroupIndex(hard, x[:1])
    pruned = {g.name: list(range(1, 1 + g.n_prune(0.5))) for g in gs.groups}
    for g in gs.groups:
        apply_slices(group_slices(gs, g, pruned[g.name]))
    keep = thin(gh, pruned)
    assert keep
    with torch.no_grad():
        y, ys, yh = model(x), soft(x), hard(x)
    assert yh.shape == y.shape
    assert (ys - yh).abs().max().item() <= 1e-4
    assert (y - yh).abs().max().item() > 1e-4
    assert sum(p.numel() for p in hard.parameters()) < sum(p.numel() for p in model.parameters())


def test_thin_refuses_a_skipped_group_by_name():
    model, x = build()
    index = GroupIndex(model, x[:1])
    weights = [p.clone() for p in model.parameters()]
    with pytest.raises(UserError, match=r"stem\.0\.weight cannot be pruned: thinning it breaks"):
        thin(index, {"last.0.weight": [0], "stem.0.weight": [0]})
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))  # refused before any change
    with pytest.raises(UserError, match="'stem.0.weight' cannot be pruned"):
        index.find("stem.0.weight")


class Inception(nn.Module):
    """Two branches concatenated (no shuffle): torch-pruning resolves it, so the trial must keep both groups."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)
        self.b, self.bn_b = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = torch.cat([F.relu(self.bn_a(self.a(x))), F.relu(self.bn_b(self.b(x)))], 1)
        return self.fc(F.relu(self.c(y)).flatten(1))


def test_resolvable_concat_is_tried_and_kept():
    torch.manual_seed(0)
    model, x = Inception().double().eval(), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    index = GroupIndex(model, x[:1])
    assert index.skipped == []
    assert [g.name for g in index.groups] == ["a.weight", "b.weight", "c.weight"]
    soft, hard = copy.deepcopy(model), copy.deepcopy(model)
    gs, gh = GroupIndex(soft, x[:1]), GroupIndex(hard, x[:1])
    pruned = {g.name: [1, 2] for g in gs.groups}
    for g in gs.groups:
        apply_slices(group_slices(gs, g, pruned[g.name]))
    thin(gh, pruned)
    with torch.no_grad():
        assert (soft(x) - hard(x)).abs().max().item() <= 1e-4
