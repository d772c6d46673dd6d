"""Output layers are decided from the dependency graph: any conv/linear whose output channels reach a model
output through parameter-free ops (F.normalize, mean, flatten/view, scaling, concatenation) is never offered
for pruning unless the user asks for it (``prune_outputs=True``)."""
import copy
import csv

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex, output_modules
from compression_tool.engine.sensitivity import sweep
from compression_tool.engine.thinning import thin


class Trunk(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU: two prunable groups that do not touch the output."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class FaceEmbedder(Trunk):
    """Linear -> BatchNorm1d -> F.normalize: the 16-d embedding must keep its 16 dimensions."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(super().forward(x), 4).flatten(1)
        return F.normalize(self.bn(self.fc(x)))


class Tempered(Trunk):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(super().forward(x).mean((2, 3))) * 0.5


class ConvClassifier(Trunk):
    """SqueezeNet-style: a 1x1 conv gives the class maps, a spatial mean the logits."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        return self.cls(super().forward(x)).mean((2, 3))


class TwoHeads(Trunk):
    def __init__(self):
        super().__init__()
        self.head_a, self.head_b = nn.Linear(8, 6), nn.Linear(8, 4)

    def forward(self, x):
        f = super().forward(x).mean((2, 3))
        return torch.cat([self.head_a(f), self.head_b(f)], 1)


class FlatConv(Trunk):
    """The last conv's maps, flattened, are the output."""

    def __init__(self):
        super().__init__()
        self.last = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.last(F.max_pool2d(super().forward(x), 2)).view(x.shape[0], -1)


class ReshapedConv(FlatConv):
    def forward(self, x):
        return self.last(F.max_pool2d(Trunk.forward(self, x), 2)).reshape(x.shape[0], 4, -1)


CASES = [(FaceEmbedder, ["fc"]), (Tempered, ["fc"]), (ConvClassifier, ["cls"]),
         (TwoHeads, ["head_a", "head_b"]), (FlatConv, ["last"]), (ReshapedConv, ["last"])]


def build(cls):
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("cls,outputs", CASES, ids=[c.__name__ for c, _ in CASES])
def test_output_layer_is_not_a_group(cls, outputs):
    model, x = build(cls)
    index = GroupIndex(model, x[:1])
    members = {m for g in index.groups for m in g.members}
    assert not members & set(outputs), f"{cls.__name__}: output layer offered for pruning"
    assert [g.name for g in index.groups] == ["conv1.weight", "conv2.weight"]  # the trunk is still prunable
    assert sorted(n for n, m in model.named_modules() if m in output_modules(model, x[:1])) == sorted(outputs)


@pytest.mark.parametrize("cls,outputs", CASES, ids=[c.__name__ for c, _ in CASES])
def test_pruning_everything_keeps_the_output_shape(cls, outputs):
    model, x = build(cls)
    shape = model(x).shape
    index = GroupIndex(model, x[:1])
    thin(index, {g.name: list(range(g.n_prune(0.5))) for g in index.groups})
    assert model(x).shape == shape


@pytest.mark.parametrize("cls,outputs", CASES[:2], ids=[c.__name__ for c, _ in CASES[:2]])
def test_prune_outputs_offers_them(cls, outputs):
    model, x = build(cls)
    index = GroupIndex(copy.deepcopy(model), x[:1], prune_outputs=True)
    assert {m for g in index.groups for m in g.members} >= set(outputs)


def test_sensitivity_sweep_has_no_row_for_the_embedding(tmp_path):
    model, x = build(FaceEmbedder)
    index = GroupIndex(model, x[:1])
    out = sweep(model, index, make_criterion("l1"), lambda m: {"norm": float(m(x).detach().norm())},
                tmp_path / "sa.csv", [0.0, 0.5], ["norm"], use_cache=False)
    params = {r["parameter"] for r in csv.DictReader(open(out))}
    assert params == {"conv1.weight", "conv2.weight"}
