"""ChannelPruner: soft masks that survive training, hard thinning of the same channels, if_zero report,
uniform / per-layer / global ratios, FLOPs and params budgets, progressive pruning, bad input."""
import copy

import pytest
import torch
import torch.nn as nn

from compression_tool.engine.cost import params_and_macs
from compression_tool.engine.strategies import ChannelPruner, extend_selection, format_zero_report, if_zero
from compression_tool.engine.thinning import layer_widths
from compression_tool.io.errors import UserError
from tests.zoo_util import build_randomised


def model_and_input(name="digits_net", n=8, seed=0):
    model, size = build_randomised(name, seed)
    model = model.double()
    return model, torch.randn(n, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def train_steps(model, x, steps=3, pruner=None, lr=0.05):
    """A few SGD steps with momentum and weight decay: both would revive masked weights without the hooks."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-2)
    handle = pruner.attach(opt) if pruner is not None else None
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    model.eval()
    if handle is not None:
        handle.remove()


@pytest.mark.parametrize("name,criterion", [("digits_net", "fpgm"), ("resnet20", "apoz"), ("mobilefacenet", "bn")])
def test_soft_masks_survive_training_and_match_hard(name, criterion):
    model, x = model_and_input(name, n=4)
    pruner = ChannelPruner(model, x[:1], criterion, batches=[x])
    selected = pruner.soft(0.5)
    train_steps(model, x, pruner=pruner)
    g = pruner.index.groups[0]
    assert pruner.zero_report()[g.root_name] == pytest.approx(len(selected[g.name]) / g.channels)
    soft = copy.deepcopy(model)
    keep = pruner.hard()
    assert {k: v["pruned"] for k, v in keep.items()} == {k: v for k, v in selected.items() if v}
    with torch.no_grad():
        assert (soft(x) - model(x)).abs().max().item() <= 1e-6
    assert if_zero(model)[g.root_name] == 0.0  # thinned: nothing left zeroed


def test_gradient_hooks_alone_keep_masks_zero():
    model, x = model_and_input()
    pruner = ChannelPruner(model, x[:1], "l1")
    pruner.soft(0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no momentum / decay: the hooks are enough
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    assert if_zero(model)["stem.0"] == pytest.approx(4 / 16)
    assert if_zero(model)["stem.1"] == pytest.approx(4 / 16)  # BN gamma of the same channels


def test_without_reapply_momentum_revives_masked_weights():
    """Why attach()/reapply() exist: an optimizer that already has momentum moves masked weights."""
    model, x = model_and_input()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()  # momentum buffers now non-zero everywhere
    pruner = ChannelPruner(model, x[:1], "l1")
    pruner.soft(0.25)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    assert if_zero(model)["stem.0"] < 4 / 16
    pruner.reapply()
    assert if_zero(model)["stem.0"] == pytest.approx(4 / 16)


def test_zero_report_format():
    model, x = model_and_input()
    ChannelPruner(model, x[:1], "l2").soft({"down.0.weight": 0.5})
    report = if_zero(model)
    assert report["down.0"] == 0.5 and report["stem.0"] == 0.0 and report["fc2"] == 0.0
    assert "down.0: 50.00% of channels zero" in format_zero_report(report)


def test_uniform_and_per_layer_ratios():
    model, x = model_and_input()
    pruner = ChannelPruner(model, x[:1], "l1")
    assert pruner.counts(0.5) == {g.name: g.channels // 2 for g in pruner.index.groups}
    assert pruner.counts({"block.conv1": 0.25, "down.0.weight": 0.5}) == {"block.conv1.weight": 4,
                                                                          "down.0.weight": 16}
    pruner.hard({"block.conv1": 0.25})
    widths = layer_widths(model)
    assert widths["block.conv1"] == 12 and widths["stem.0"] == 16


def test_global_ranking_uses_normalised_scores():
    model, x = model_and_input()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.div_(m.weight.flatten(1).norm(dim=1).view(-1, *[1] * (m.weight.dim() - 1)))
        model.block.conv1.weight[:8] *= 0.01  # half of one group is tiny *relative to its group*
        model.down[0].weight *= 100.0          # uniformly large: irrelevant after normalisation
    pruner = ChannelPruner(model, x[:1], "l2", reduction="first")  # the leading filters carry the signal
    total = sum(g.channels for g in pruner.index.groups)
    counts = pruner.counts(8 / total, global_ranking=True)
    assert counts["block.conv1.weight"] == 8 and sum(counts.values()) == 8
    capped = pruner.counts(0.5, global_ranking=True, max_ratio=0.25)
    assert all(n <= int(0.25 * g.channels) for g, n in zip(pruner.index.groups, capped.values()))


@pytest.mark.parametrize("key,glob", [("flops", False), ("flops", True), ("params", False)])
def test_prune_to_budget(key, glob):
    model, x = model_and_input()
    before = params_and_macs(model, x[:1])
    result = ChannelPruner(model, x[:1], "l1").prune_to_budget(**{key: 0.5}, global_ranking=glob)
    after = params_and_macs(model, x[:1])
    measured = after["macs" if key == "flops" else "params"] / before["macs" if key == "flops" else "params"]
    assert measured <= 0.5
    assert measured >= 0.5 - 0.02
    assert result["macs" if key == "flops" else "params"] == pytest.approx(measured)


def test_prune_to_budget_soft_leaves_shapes_and_zeroes_channels():
    model, x = model_and_input()
    widths = layer_widths(model)
    pruner = ChannelPruner(model, x[:1], "fpgm")
    pruner.prune_to_budget(flops=0.6, how="soft")
    assert layer_widths(model) == widths
    assert max(if_zero(model).values()) > 0


def test_prune_to_budget_refuses_bad_targets():
    model, x = model_and_input()
    pruner = ChannelPruner(model, x[:1], "l1")
    with pytest.raises(UserError, match="exactly one"):
        pruner.prune_to_budget(flops=0.5, params=0.5)
    with pytest.raises(UserError, match="fraction"):
        pruner.prune_to_budget(flops=1.5)
    with pytest.raises(UserError, match="out of reach"):
        pruner.prune_to_budget(flops=0.001)


@pytest.mark.parametrize("how", ["hard", "soft"])
def test_progressive_prunes_one_group_at_a_time(how):
    model, x = model_and_input()
    pruner = ChannelPruner(model, x[:1], "taylor", batches=[x])
    seen = []

    def train_fn(m):
        seen.append((dict(layer_widths(m)), if_zero(m)))
        train_steps(m, x, steps=1, lr=0.01)

    keeps = pruner.progressive(0.5, train_fn, how=how)
    groups = ["stem.0", "block.conv1", "down.0", "fc1"]
    assert len(seen) == len(groups)
    for step, (widths, zeros) in enumerate(seen):
        for k, layer in enumerate(groups):
            done = k <= step
            if how == "hard":
                assert widths[layer] == (layer_widths(model)[layer] if done else
                                         {"stem.0": 16, "block.conv1": 16, "down.0": 32, "fc1": 64}[layer])
            else:
                assert (zeros[layer] == 0.5) == done, (step, layer, zeros[layer])
    if how == "hard":
        assert len(keeps) == 4 and layer_widths(model)["down.0"] == 16
    else:
        assert if_zero(model)["fc1"] == 0.5  # masks held through every train_fn


def test_soft_then_more_keeps_earlier_channels():
    model, x = model_and_input()
    pruner = ChannelPruner(model, x[:1], "random", seed=5)
    first = pruner.soft(0.25)
    second = pruner.soft(0.5)
    for name, idxs in first.items():
        assert set(idxs) <= set(second[name]) and len(second[name]) == 2 * len(idxs)
    assert extend_selection([5, 1], [0, 1, 2, 3, 5], 4) == [0, 1, 2, 5]


def test_bad_ratios_are_user_errors():
    model, x = model_and_input()
    pruner = ChannelPruner(model, x[:1], "l1")
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        pruner.soft(1.0)
    with pytest.raises(UserError, match="not a prunable layer"):
        pruner.soft({"nope.weight": 0.5})
    with pytest.raises(UserError, match="one ratio"):
        pruner.counts({"stem.0": 0.5}, global_ranking=True)
    with pytest.raises(UserError, match="unknown pruning criterion"):
        ChannelPruner(model, x[:1], "l3")


def test_per_group_criteria_select_what_each_criterion_selects_alone():
    """One pruner path: ``assign`` gives groups their own criterion (a schedule with several pruner classes); each
    group loses exactly the channels its criterion alone would pick, data criteria collect statistics once, lazily."""
    from compression_tool.engine.criteria import make_criterion
    from compression_tool.engine.groups import GroupIndex
    from compression_tool.engine.thinning import thin

    model, x = model_and_input("resnet20", n=4)
    plan = {"conv1.weight": ("bn", 0.5), "layer1.0.conv1.weight": ("fpgm", 0.25), "layer2.0.conv1.weight": ("apoz", .5)}
    direct = copy.deepcopy(model)
    index = GroupIndex(direct, x[:1])
    roots = {g.root_name: g.root for g in index.groups}
    expected = {}
    for weight, (cname, s) in plan.items():
        crit = make_criterion(cname)
        if crit.needs_data:
            crit.prepare(direct, [x], roots)
        g = index.find(weight)
        expected[g.name] = crit.select(index, g, g.n_prune(s))
    keep_direct = thin(index, expected)

    calls = []
    pruner = ChannelPruner(model, x[:1], "l1", batches=lambda: calls.append(1) or [x])
    pruner.assign({w: c for w, (c, _) in plan.items()})
    counts = {pruner.index.find(w).name: pruner.index.find(w).n_prune(s) for w, (_, s) in plan.items()}
    assert pruner.select_counts(counts) == expected
    assert len(calls) == 2                       # bn and apoz prepared once each; l1 and fpgm need no data
    assert pruner.hard_select(pruner.select_counts(counts)) == keep_direct
    assert layer_widths(model) == layer_widths(direct)
    with pytest.raises(UserError, match="not a prunable layer"):
        pruner.assign({"nope.weight": "l1"})


def test_apply_schedule_goes_through_the_channel_pruner(monkeypatch):
    from compression_tool.apps.api import apply_schedule
    from compression_tool.engine.schedule import build_schedule

    model, x = model_and_input("digits_net")
    model = model.float()
    sched = build_schedule({"block.conv1.weight": 0.5, "stem.0.weight": 0.25}, "fpgm", "digits_net", "digits",
                           list(x.shape[1:]))
    seen = []
    real = ChannelPruner.hard_select
    monkeypatch.setattr(ChannelPruner, "hard_select", lambda self, sel: seen.append(sel) or real(self, sel))
    net, keep = apply_schedule(model, sched, x.shape[1:])
    assert len(seen) == 1 and set(keep) == set(seen[0]) == {"stem.0.weight", "block.conv1.weight"}
    assert net.block.conv1.out_channels == model.block.conv1.out_channels // 2
