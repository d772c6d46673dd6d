"""Soft pruning (masks) and hard pruning (thinning) must compute the same function, on every zoo model.

Compared in float64: the equivalence is exact maths, and float32 rounding in deep random nets (outputs of
1e3..1e4) would otherwise dominate the 1e-4 bound. A wrong mask (e.g. a BN shift left on a removed channel)
gives differences of order 0.1..10, so the test still fails loudly on a real bug.
"""
import copy

import pytest
import torch

from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.masking import apply_slices, group_slices
from compression_tool.engine.thinning import layer_widths, replay, thin
from tests.zoo_util import build_randomised, zoo_names


def soft_and_hard(name, criterion="l1", sparsity=0.4, seed=0):
    model, size = build_randomised(name, seed)
    model = model.double()
    x = torch.randn(2, *size, dtype=torch.float64)
    soft, hard = copy.deepcopy(model), copy.deepcopy(model)
    gs, gh = GroupIndex(soft, x[:1]), GroupIndex(hard, x[:1])
    crit = make_criterion(criterion, cache_dir=None, limit=1)
    if crit.needs_data:
        crit.prepare(soft, [x], {g.root_name: g.root for g in gs.groups})
    pruned = {}
    for g in gs.groups:
        pruned[g.name] = crit.select(gs, g, g.n_prune(sparsity))
        apply_slices(group_slices(gs, g, pruned[g.name]))
    keep = thin(gh, pruned)
    return model, soft, hard, x, keep, size


@pytest.mark.parametrize("name", zoo_names())
def test_soft_equals_hard_on_zoo(name):
    model, soft, hard, x, keep, _ = soft_and_hard(name)
    with torch.no_grad():
        diff = (soft(x) - hard(x)).abs().max().item()
        changed = (model(x) - hard(x)).abs().max().item()
    assert keep, f"{name}: nothing was pruned"
    assert diff <= 1e-4, f"{name}: masked and thinned outputs differ by {diff}"
    assert changed > 1e-4, f"{name}: pruning 40% changed nothing; the comparison would be vacuous"
    assert sum(p.numel() for p in hard.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "hrank"])
@pytest.mark.parametrize("name", ["digits_net", "resnet20", "mobilefacenet"])
def test_soft_equals_hard_per_criterion(name, criterion):
    _, soft, hard, x, _, _ = soft_and_hard(name, criterion)
    with torch.no_grad():
        assert (soft(x) - hard(x)).abs().max().item() <= 1e-4


def test_leaving_bn_shift_breaks_equivalence():
    """The pitfall the design names: zeroing only the conv filters is NOT soft pruning when BN follows."""
    model, size = build_randomised("digits_net")
    x = torch.randn(2, *size)
    soft, hard = copy.deepcopy(model), copy.deepcopy(model)
    gs, gh = GroupIndex(soft, x[:1]), GroupIndex(hard, x[:1])
    g = gs.groups[0]
    with torch.no_grad():
        soft.get_submodule(g.root_name).weight[[0, 1]] = 0.0  # filters only
    thin(gh, {g.name: [0, 1]})
    assert (soft(x) - hard(x)).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", ["digits_net", "resnet20", "mobilenet_v2", "mobilefacenet", "resnet_ir18"])
def test_widths_and_replay_follow_keep_arrays(name):
    model, soft, hard, x, keep, size = soft_and_hard(name)
    widths = layer_widths(hard)
    for g in keep.values():
        for layer in g["layers"]:
            if layer in widths:
                assert widths[layer] == len(g["kept"]), f"{layer}: {widths[layer]} != {len(g['kept'])}"
    import model_define as md
    fresh = md.model_spec(name).build_for(size).double().eval()
    replay(fresh, x[:1], keep)
    fresh.load_state_dict(hard.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), hard(x))


def test_flops_drop_as_predicted():
    """digits_net, stem group halved: MACs of every layer touching those channels halve exactly."""
    from compression_tool.engine.cost import params_and_macs
    model, size = build_randomised("digits_net")
    x = torch.randn(1, *size)
    before = params_and_macs(model, x)
    gi = GroupIndex(model, x)
    thin(gi, {"stem.0.weight": list(range(8))})  # 16 -> 8 channels on the residual stream
    after = params_and_macs(model, x)
    # stem conv (1->16, 3x3, 16x16 px) + block convs (16->16 twice) + down conv (16->32, 8x8 px) on the stream
    px = 16 * 16
    stem, block, down = 16 * 9 * px, 2 * 16 * 16 * 9 * px, 16 * 32 * 9 * 64
    # conv1 loses half its inputs, conv2 half its outputs: every conv on the stream halves
    removed_conv_macs = (stem + block + down) / 2
    assert before["macs"] - after["macs"] >= removed_conv_macs
    assert before["macs"] - after["macs"] <= removed_conv_macs * 1.05  # BN/PReLU element-wise extras only


def test_output_layers_are_never_pruned():
    model, size = build_randomised("mobilefacenet")
    gi = GroupIndex(model, torch.randn(1, *size))
    assert not any("linear1" in m for g in gi.groups for m in g.members)  # the 128-d embedding
    model, size = build_randomised("digits_net")
    gi = GroupIndex(model, torch.randn(1, *size))
    assert "fc2.weight" not in [g.name for g in gi.groups]


def test_face_model_at_144x122():
    """Face crops of other sizes (144x122) thin the same way: GDC kernel and flatten follow the input."""
    import model_define as md
    torch.manual_seed(0)
    model = md.model_spec("mobilefacenet").build_for((3, 144, 122)).double().eval()
    x = torch.randn(2, 3, 144, 122, dtype=torch.float64)
    soft, hard = copy.deepcopy(model), copy.deepcopy(model)
    gs, gh = GroupIndex(soft, x[:1]), GroupIndex(hard, x[:1])
    crit = make_criterion("fpgm")
    pruned = {g.name: crit.select(gs, g, g.n_prune(0.5)) for g in gs.groups}
    for g in gs.groups:
        apply_slices(group_slices(gs, g, pruned[g.name]))
    thin(gh, pruned)
    with torch.no_grad():
        assert hard(x).shape == (2, 128)
        assert (soft(x) - hard(x)).abs().max().item() <= 1e-4
