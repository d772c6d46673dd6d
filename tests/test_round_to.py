"""--round_to N: every pruned group keeps a multiple of N channels (rounded up), in --mode prune, --mode search and
the FLOPs-budget schedules (auto_make_yaml.py --flops)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import model_define as md
import pruning
from compression_tool.cli import auto_make_yaml
from compression_tool.engine.checkpoint import example_input, load_model
from compression_tool.engine.cost import params_and_macs, thinned_copy
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex, PrunableGroup
from compression_tool.engine.schedule import read_schedule, resolve
from compression_tool.engine.search.fitness import PruningFitness
from compression_tool.io.errors import UserError
from tests.zoo_util import classifier_sa_csv

X = example_input((1, 16, 16))


def group(channels: int, r: int) -> PrunableGroup:
    return PrunableGroup("c.weight", "c", nn.Identity(), ["c"], ["c.weight"], channels, r)


def test_n_prune_rounds_kept_width_up():
    assert group(24, 8).n_prune(0.5) == 8              # keep 12 -> 16
    assert group(24, 8).n_prune(0.7) == 16             # keep 8 (floor 16.8 = 16 removed)
    assert group(10, 8).n_prune(0.5) == 2              # keep 5 -> 8
    assert group(6, 8).n_prune(0.9) == 0               # narrower than N: stays whole
    assert group(24, 1).n_prune(0.5) == 12             # N = 1: Distiller's floor, unchanged
    assert group(64, 16).n_prune(0.99) == 48           # at least N channels kept
    for c in (7, 10, 24, 64, 100):
        for r in (1, 4, 8, 16):
            g = group(c, r)
            for s in np.linspace(0, 0.95, 20):
                n = g.n_prune(float(s))
                kept = c - n
                assert 0 <= n <= int(s * c + 1e-9) and (n == 0 or kept % r == 0)
                assert g.n_prune(g.ratio_for(n)) == n and group(c, 1).n_prune(g.ratio_for(n)) == n
    with pytest.raises(UserError, match="round_to"):
        GroupIndex(md.get_model("digits_net").eval(), X, round_to=0)


def widths_ok(model: nn.Module, before: nn.Module, r: int) -> list:
    """(layer, before, after) of every conv/linear whose out width changed; all must be multiples of r."""
    old = dict(before.named_modules())
    changed = [(n, old[n].weight.shape[0], m.weight.shape[0]) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.shape[0] != old[n].weight.shape[0]]
    assert changed and all(after % r == 0 for _, _, after in changed), changed
    return changed


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("r2") / "digits_net.pth"
    torch.save({"state_dict": md.get_model("digits_net").state_dict()}, p)
    return p


def test_prune_cli_round_to(ckpt, tmp_path):
    yml = tmp_path / "s.yaml"
    yml.write_text("version: 1\npruners:\n  p:\n    class: L1RankedStructureParameterPruner\n"
                   "    desired_sparsity: 0.6\n    weights: [stem.0.weight, down.0.weight, fc1.weight]\n")
    outs = {}
    for r in (1, 8):
        out = tmp_path / f"p{r}.pth"
        pruning.main(["--mode", "prune", "--model", "digits_net", "--best_model_path", str(ckpt), "--yaml",
                      str(yml), "--save_model_pt", "--output", str(out), "--work_space", str(tmp_path / "ws"),
                      "--eval_batches", "1", "--round_to", str(r)])
        outs[r] = load_model(out)[0]
    base = md.get_model("digits_net")
    plain = {n: a for n, _, a in widths_ok(outs[1], base, 1)}
    rounded = {n: a for n, _, a in widths_ok(outs[8], base, 8)}
    assert plain != rounded and all(rounded[n] >= plain[n] for n in rounded)   # rounded up, never further


def test_search_fitness_round_to_meets_budget_on_multiples():
    torch.manual_seed(0)
    model = md.get_model("digits_net").eval()
    index = GroupIndex(model, X, round_to=8)
    calib = [torch.randn(16, 1, 16, 16)]
    f = PruningFitness(model, X, make_criterion("l1"), lambda m: {"top1": 0.0}, calib, 0.5, index=index)
    rng = np.random.default_rng(0)
    for ratios in [rng.uniform(0, 0.9, f.n_groups) for _ in range(3)] + [f.uniform_ratios()]:
        pruned, exact = f.meet_exactly(f.repair(ratios))
        assert exact["macs"] <= 0.5 * f.full["macs"]
        for g, n in zip(f.groups, pruned):
            assert n == 0 or (g.channels - n) % 8 == 0, (g.name, g.channels, n)


def test_search_cli_round_to(ckpt, tmp_path):
    out = tmp_path / "s.yaml"
    pruning.main(["--mode", "search", "--model", "digits_net", "--best_model_path", str(ckpt), "--output",
                  str(out), "--population", "3", "--iterations", "1", "--eval_batches", "1", "--search_batches",
                  "1", "--algo", "ga", "--flops", "0.5", "--round_to", "8"])
    model = md.get_model("digits_net").eval()
    index = GroupIndex(model, X)                     # no --round_to at prune time: the schedule is exact
    plan = resolve(read_schedule(out), index)
    for g in index.groups:
        if g.name in plan:
            n = g.n_prune(plan[g.name][0])
            assert (g.channels - n) % 8 == 0, (g.name, n)
    assert "--round_to 8" in out.read_text()


def test_budget_schedule_round_to(ckpt, tmp_path):
    model = md.get_model("digits_net").eval()
    index = GroupIndex(model, X)
    path = classifier_sa_csv(tmp_path / "sa.csv", index)
    out = tmp_path / "b.yaml"
    auto_make_yaml.main([str(path), "--flops", "0.6", "--model", "digits_net", "--best_model_path", str(ckpt),
                         "--output", str(out), "--round_to", "8"])
    plan = resolve(read_schedule(out), GroupIndex(model, X))
    pruned = {}
    for g in index.groups:
        if g.name in plan:
            n = g.n_prune(plan[g.name][0])
            assert (g.channels - n) % 8 == 0, (g.name, g.channels, n)
            pruned[g.name] = list(range(n))
    thin = thinned_copy(model, X, pruned)
    assert params_and_macs(thin, X)["macs"] <= 0.6 * params_and_macs(model, X)["macs"]
