"""Target-true schedules (issue 12): splits, the composed check, the per-layer rule's failure, bad inputs."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from compression_tool.data.splits import SplitSpec, parse_split, split_groups, split_indices, split_tensors
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.schedule import choose_sparsities
from compression_tool.engine.target_true import (
    Measurement,
    TargetTrueConfig,
    bootstrap_mean_bound,
    classifier_evaluator,
    composed_metric,
    format_result,
    target_true_schedule,
)
from compression_tool.io.errors import UserError


class TwoConv(nn.Module):
    """Two independent prunable convs; each feeds half of the logits."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.b = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        fa = torch.relu(self.a(x)).mean((2, 3))
        fb = torch.relu(self.b(x)).mean((2, 3))
        return self.fc(torch.cat([fa, fb], 1))


def toy_problem(n=600, seed=0):
    """Model + data where each conv alone holds the accuracy at 50 % pruning but both together do not:
    the class is decided by a score that both branches contribute to, with small margins."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = TwoConv()
    with torch.no_grad():
        for conv in (m.a, m.b):
            conv.weight.zero_()
            for k in range(8):                       # channel k: constant kernel of strength k + 1 (L1 order)
                conv.weight[k].fill_((k + 1) / 9.0)
        m.fc.weight.zero_()
        m.fc.weight[1, :] = 1.0
        m.fc.bias.zero_()
    # a random brightness per image spreads the score, so small scalings flip a few per cent of the images
    x = torch.rand(n, 1, 6, 6, generator=g) * (0.5 + torch.rand(n, 1, 1, 1, generator=g))
    with torch.no_grad():
        score = m(x)[:, 1]
        thr = score.median()
        m.fc.bias[0] = thr                          # logit0 = thr, logit1 = score: class = score > thr
    y = (score > thr).long()
    return m.eval(), x, y


def sensitivity_table(model, x, y, levels=(0.0, 0.125, 0.25, 0.5, 0.75)):
    """Per-layer curves measured on (x, y) by composed_metric with a single layer pruned."""
    crit = make_criterion("l1")
    ex = x[:1]
    table = {}
    for w in ("a.weight", "b.weight"):
        rows = []
        for s in levels:
            m, _ = composed_metric(model, ex, crit, {w: s}, classifier_evaluator(x, y))
            rows.append((s, {"top1": m.value}))
        table[w] = rows
    return table


def test_splits_disjoint_seeded_and_cover():
    spec = SplitSpec((0.2, 0.4, 0.4), seed=3)
    a, b = split_indices(101, spec), split_indices(101, spec)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    allidx = np.concatenate(list(a.values()))
    assert len(allidx) == len(set(allidx.tolist())) == 101
    c = split_indices(101, SplitSpec((0.2, 0.4, 0.4), seed=4))
    assert not np.array_equal(a["check"], c["check"])
    counts = split_indices(1000, parse_split("512,100,rest"))
    assert [len(counts[k]) for k in ("sa", "check", "report")] == [512, 100, 388]
    x, y = torch.arange(50).float().view(50, 1), torch.arange(50)
    parts = split_tensors(x, y, spec)
    assert set(parts["sa"][1].tolist()).isdisjoint(parts["report"][1].tolist())


def test_split_by_identity_keeps_identities_apart():
    ids = [f"s{i // 10}" for i in range(100)]
    parts = split_groups(ids, SplitSpec((0.4, 0.3, 0.3), seed=0))
    owners = {k: {ids[i] for i in v} for k, v in parts.items()}
    assert owners["sa"].isdisjoint(owners["check"]) and owners["check"].isdisjoint(owners["report"])
    assert sum(len(v) for v in parts.values()) == 100


def test_bad_split_and_bad_targets_are_one_line_user_errors():
    for text in ("0.5,0.5", "a,b,c", "rest,rest,10", "900,900,rest"):
        with pytest.raises(UserError):
            split_indices(1000, parse_split(text))
    model, x, y = toy_problem(200)
    table = sensitivity_table(model, x[:50], y[:50])
    ev = classifier_evaluator(x[50:], y[50:])
    crit = make_criterion("l1")
    for cfg in (TargetTrueConfig(target=float("nan")), TargetTrueConfig(target=101.0),
                TargetTrueConfig(target=90.0, drop=1.0), TargetTrueConfig(), TargetTrueConfig(drop=-1.0)):
        with pytest.raises(UserError) as e:
            target_true_schedule(model, x[:1], crit, table, ev, None, [], dataclass_copy(cfg, bn_recalib_batches=0))
        assert "\n" not in str(e.value)


def dataclass_copy(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_composition_matters_and_target_true_meets_the_target():
    model, x, y = toy_problem(900)
    parts = split_tensors(x, y, SplitSpec((0.34, 0.33, 0.33), seed=0))
    table = sensitivity_table(model, *parts["sa"])
    crit = make_criterion("l1")
    ex = x[:1]
    check, report = classifier_evaluator(*parts["check"]), classifier_evaluator(*parts["report"])
    base = check(model).value
    target = base - 7.0
    # the per-layer rule: each layer alone stays above the target ...
    per_layer = choose_sparsities(table, "top1", target, "strict")
    for w, s in per_layer.items():
        alone, _ = composed_metric(model, ex, crit, {w: s}, check)
        assert alone.value >= target - 2.0
    composed, _ = composed_metric(model, ex, crit, per_layer, check)
    assert composed.value < target                    # ... but the composed model misses it
    cfg = TargetTrueConfig(target=target, bn_recalib_batches=0, confidence=0.9, max_evals=20)
    r = target_true_schedule(model, ex, crit, table, check, report, [], cfg, progress=False)
    again, _ = composed_metric(model, ex, crit, r.sparsities, check)
    assert again.value >= target and r.check_bound >= target       # composed and noise-aware on the check split
    assert r.macs < r.base_macs                                      # and it still prunes
    assert r.level == r.guards["simultaneous"]["level"] >= 0.9      # at the default guard's level (lower bounds)
    assert r.report is not None and r.report >= target - 3.0
    assert r.trace[0].step == "baseline" and len(r.trace) == r.evals + 1


def test_drop_mode_with_adabn_and_bound():
    model, x, y = toy_problem(600, seed=1)
    parts = split_tensors(x, y, SplitSpec((0.34, 0.33, 0.33), seed=1))
    table = sensitivity_table(model, *parts["sa"])
    calib = [parts["sa"][0][:64]]
    cfg = TargetTrueConfig(drop=5.0, bn_recalib_batches=1, max_evals=15)
    r = target_true_schedule(model, x[:1], make_criterion("l1"), table, classifier_evaluator(*parts["check"]),
                             classifier_evaluator(*parts["report"]), calib, cfg, progress=False)
    assert r.check_bound <= 5.0 and r.check_baseline - r.check <= 5.0
    assert math.isfinite(r.report)


def test_drop_finer_than_the_check_split_is_said_and_prunes_nothing():
    model, x, y = toy_problem(300, seed=2)
    parts = split_tensors(x, y, SplitSpec((100, 60, "rest"), seed=2))
    table = sensitivity_table(model, *parts["sa"])
    r = target_true_schedule(model, x[:1], make_criterion("l1"), table, classifier_evaluator(*parts["check"]),
                             classifier_evaluator(*parts["report"]), [],
                             TargetTrueConfig(drop=1.0, bn_recalib_batches=0), progress=False)
    assert not r.resolvable and not any(r.sparsities.values()) and r.evals == 0


def test_confirm_split_retests_the_winner():
    """A confirm split that agrees keeps the winner; one on which every pruned model fails (here: labels flipped
    for the images pruning changes) leaves nothing pruned, after at most confirm_tries candidates."""
    model, x, y = toy_problem(900, seed=3)
    parts = split_tensors(x, y, SplitSpec((0.34, 0.33, 0.33), seed=3))
    table = sensitivity_table(model, *parts["sa"])
    crit = make_criterion("l1")
    check = classifier_evaluator(*parts["check"])
    cfg = TargetTrueConfig(drop=6.0, bn_recalib_batches=0, max_evals=15, confirm_tries=3)
    r = target_true_schedule(model, x[:1], crit, table, check, None, [], cfg, progress=False,
                             confirm_eval=classifier_evaluator(*parts["report"]))
    assert r.confirm["passed"] and r.confirm["tries"] >= 1 and any(r.sparsities.values())

    def hostile(m):                       # every pruned model loses all its images on the confirm split
        got = check(m)
        if m is model:
            return got
        return type(got)(0.0, np.zeros_like(got.per_sample), got.n)
    r2 = target_true_schedule(model, x[:1], crit, table, check, None, [], cfg, progress=False, confirm_eval=hostile)
    assert not r2.confirm["passed"] and 1 <= r2.confirm["tries"] <= 3 and not any(r2.sparsities.values())
    assert r2.macs == r2.base_macs


def test_confirm_walks_the_chain_and_stops_at_the_first_failure():
    """The confirm split tests the search's nested chain least pruned first (a fixed-sequence test): the result is
    the last link that holds before the first that fails, and nothing after that failure is tested."""
    from compression_tool.engine.target_true import Measurement, chain_points, confirm_sequence

    links = list(range(10))
    assert chain_points(links, 3) == [3, 6, 9] and chain_points(links, 20) == links[1:]
    sequence = [{"a": k / 10} for k in range(8)]
    drops = {0.0: 0.0, 0.1: 0.2, 0.2: 0.4, 0.3: 3.0, 0.4: 3.0, 0.5: 3.0, 0.6: 0.1, 0.7: 0.1}  # 0.3-0.5 fail

    class FakeChecker:                  # the model "is" its level; the bound is the drop looked up for it
        def build(self, sp):
            return sp["a"]

        def measure(self, sp):               # (the BN choice on the search's data)
            return None

        def cost(self, m):
            return {"macs": 100.0 - (100 * m if isinstance(m, float) else 0.0), "params": 10.0}

        def bound(self, m, base, level=None):
            assert level == 0.95                 # the confirm level is never Bonferroni-corrected
            return m.value, m.value <= 1.0

    def confirm_eval(m):
        v = 0.0 if not isinstance(m, float) else drops[m]
        return Measurement(v, np.zeros(4), 4)
    cfg = TargetTrueConfig(drop=1.0, confirm_tries=20)
    held, info = confirm_sequence(FakeChecker(), None, sequence, confirm_eval, cfg)
    assert held.sparsities == {"a": 0.2} and info["tries"] == 3 and info["passed"] and info["chain"] == 7
    assert [r["passed"] for r in info["tested"]] == [True, True, False]
    assert [round(r["reduction"], 2) for r in info["tested"]] == [0.1, 0.2, 0.3]
    held, info = confirm_sequence(FakeChecker(), None, sequence, confirm_eval, replace(cfg, confirm_tries=3))
    assert [round(r["reduction"], 2) for r in info["tested"]] == [0.2, 0.5]    # links 2, 5 (fails); 7 untested
    assert held.sparsities == {"a": 0.2}
    drops[0.1] = 2.0                             # the lightest link fails: nothing is pruned
    held, info = confirm_sequence(FakeChecker(), None, sequence, confirm_eval, cfg)
    assert held.sparsities == {"a": 0.0} and not info["passed"] and info["tries"] == 1


def test_confirm_sequence_walks_every_prefix_of_the_bisection():
    """The schedules a confirm test walks: every prefix of the moves up to the bisection's, then the greedy's links,
    each thinning different channels once; the bisection's own coarse links alone could end the test at once."""
    from compression_tool.engine.target_true import Trial, nested_schedules

    class FakeChecker:
        def key(self, sp):
            return tuple(sorted((k, int(round(10 * v))) for k, v in sp.items() if v > 0))

    moves = [("a", 0.1, 0), ("b", 0.1, 0), ("a", 0.2, 0), ("b", 0.2, 0), ("a", 0.3, 0)]
    layers = ["a", "b"]
    zero = {"a": 0.0, "b": 0.0}
    chain = [Trial("baseline", zero, 90.0, 0.0, True, 100.0, 10.0),
             Trial("bisect", {"a": 0.2, "b": 0.2}, 90.0, 0.5, True, 60.0, 10.0),
             Trial("greedy", {"a": 0.2, "b": 0.3}, 90.0, 0.5, True, 50.0, 10.0),
             Trial("greedy", {"a": 0.2, "b": 0.3}, 90.0, 0.5, True, 50.0, 10.0)]
    seq = nested_schedules(FakeChecker(), moves, layers, 4, chain)
    assert seq == [zero, {"a": 0.1, "b": 0.0}, {"a": 0.1, "b": 0.1}, {"a": 0.2, "b": 0.1}, {"a": 0.2, "b": 0.2},
                   {"a": 0.2, "b": 0.3}]
    assert nested_schedules(FakeChecker(), moves, layers, 0, chain[:1]) == [zero]


def test_guard_backs_off_to_lighter_schedules_than_the_search_tried():
    """The back-off guards walk the search's chain plus lighter nested schedules measured for them: when the
    guard's level rejects the search's only (coarse) link, a light cut that passes is kept instead of nothing."""
    from compression_tool.engine.target_true import Measurement, Trial, back_off, guard_steps

    drops = {k: (0.2 if k <= 4 else 3.0) for k in range(9)}     # levels 0.1..0.4 pass, 0.5.. fail

    class FakeChecker:
        evals = 0

        def key(self, sp):
            return int(round(10 * sp["a"]))

        def measure(self, sp):
            self.evals += 1
            k = int(round(10 * sp["a"]))
            return Measurement(drops[k], np.zeros(4), 4), {"macs": 100.0 - 10 * k, "params": 10.0}

        def bound(self, m, base, level=None):
            return m.value, m.value <= 1.0

    sequence = [{"a": k / 10} for k in range(9)]
    chain = [Trial("baseline", {"a": 0.0}, 90.0, 0.0, True, 100.0, 10.0),
             Trial("bisect", {"a": 0.8}, 90.0, 0.9, True, 20.0, 10.0)]   # passed at the search's level only
    chk, trace = FakeChecker(), []
    steps = guard_steps(chk, None, sequence, chain, TargetTrueConfig(drop=1.0, guard_steps=4), 0.95, trace)
    assert [t.sparsities["a"] for t in steps] == [0.0, 0.2, 0.4, 0.6, 0.8] and steps[-1] is chain[-1]
    assert chk.evals == 3 and [t.step for t in trace] == ["guard"] * 3
    assert back_off(chk, None, steps, 0.99, quiet=True).sparsities == {"a": 0.4}
    assert back_off(chk, None, chain, 0.99, quiet=True) is chain[0]          # the chain alone keeps nothing
    none = guard_steps(FakeChecker(), None, sequence, chain, TargetTrueConfig(drop=1.0, guard_steps=0), 0.95, [])
    assert none == chain


def test_search_confidence_only_loosens_the_search_under_confirm():
    """With a confirm split the search may propose at a lower level (the confirm part re-tests at ``confidence``);
    without one, ``search_confidence`` is ignored."""
    cfg = TargetTrueConfig(drop=1.0, search_confidence=0.5)
    assert cfg.search_level(True) == 0.5 and cfg.search_level(False) == cfg.confidence
    with pytest.raises(UserError, match="search confidence"):
        TargetTrueConfig(drop=1.0, search_confidence=0.2).validate()
    model, x, y = toy_problem(900, seed=3)
    parts = split_tensors(x, y, SplitSpec((0.34, 0.33, 0.33), seed=3))
    table = sensitivity_table(model, *parts["sa"])
    check, confirm = classifier_evaluator(*parts["check"]), classifier_evaluator(*parts["report"])
    runs = {lvl: target_true_schedule(model, x[:1], make_criterion("l1"), table, check, None, [],
                                      TargetTrueConfig(drop=6.0, bn_recalib_batches=0, max_evals=15,
                                                       search_confidence=lvl), progress=False, confirm_eval=confirm)
            for lvl in (None, 0.5)}
    assert runs[0.5].confirm["chain"] >= runs[None].confirm["chain"]
    assert all(t.bound <= r.trace[0].bound + 100 for r in runs.values() for t in r.trace)   # both ran
    loose = [t for t in runs[0.5].trace if t.step == "bisect"]
    tight = [t for t in runs[None].trace if t.step == "bisect"]
    assert loose[0].sparsities == tight[0].sparsities and loose[0].bound < tight[0].bound   # same model, lower level


def test_posthoc_backs_off_along_the_chain_at_the_adjusted_level():
    """multiple_testing='posthoc': the search runs at ``confidence``; its pick is then re-decided at Bonferroni over
    the candidates it measured, backing off along its chain (from cached measurements) to the most pruned link that
    passes there."""
    from compression_tool.engine.target_true import Measurement, Trial, back_off

    cfg = TargetTrueConfig(drop=1.0, multiple_testing="posthoc")
    assert cfg.adjusted_level(50) == pytest.approx(0.999) and cfg.adjusted_level(0) == cfg.confidence
    chain = [Trial("baseline", {"a": 0.0}, 90.0, 0.0, True, 100.0, 10.0)] + [
        Trial("greedy", {"a": k / 10}, 90.0, 0.5, True, 100.0 - 10 * k, 10.0) for k in range(1, 5)]
    margin = {0.1: 0.1, 0.2: 0.3, 0.3: 0.9, 0.4: 0.95}     # the drop's bound grows with the level by this much

    class FakeChecker:
        evals = 50

        def measure(self, sp):
            return Measurement(sp["a"], np.zeros(2), 2), {}

        def bound(self, m, base, level=None):
            b = 0.5 + margin[m.value] * (level > 0.99)
            return b, b <= 1.0
    assert back_off(FakeChecker(), None, chain, 0.999) is chain[2]
    assert back_off(FakeChecker(), None, chain, 0.95) is chain[4]
    margin.update({0.1: 0.9, 0.2: 0.9})
    assert back_off(FakeChecker(), None, chain, 0.999) is chain[0]

    model, x, y = toy_problem(900, seed=3)
    parts = split_tensors(x, y, SplitSpec((0.34, 0.33, 0.33), seed=3))
    table = sensitivity_table(model, *parts["sa"])
    runs = {mt: target_true_schedule(model, x[:1], make_criterion("l1"), table, classifier_evaluator(*parts["check"]),
                                     None, [], TargetTrueConfig(drop=30.0, bn_recalib_batches=0, max_evals=15,
                                                                multiple_testing=mt), progress=False)
            for mt in ("none", "posthoc", "simultaneous")}
    assert runs["posthoc"].level == pytest.approx(cfg.adjusted_level(runs["posthoc"].evals))
    assert runs["posthoc"].macs >= runs["none"].macs and runs["none"].level == 0.95
    assert runs["posthoc"].check_bound <= 30.0 + 1e-9
    sim = runs["simultaneous"]             # between the search's level and Bonferroni's, and cuts at least as much
    assert 0.95 <= sim.level <= cfg.adjusted_level(sim.evals) and sim.check_bound <= 30.0 + 1e-9
    assert runs["posthoc"].macs >= sim.macs >= runs["none"].macs
    for r in runs.values():                # every run reports both guards' picks; the active one is the result
        assert set(r.guards) == {"posthoc", "simultaneous"}
        assert r.guards["simultaneous"]["level"] == pytest.approx(sim.level)
    assert runs["none"].guards["posthoc"]["sparsities"] == runs["posthoc"].sparsities
    assert runs["none"].guards["simultaneous"]["sparsities"] == sim.sparsities
    adj = runs["none"].adjusted            # unguarded: the pick's bound once its candidates are accounted for
    assert adj["level"] == pytest.approx(sim.level) and runs["posthoc"].adjusted is None
    assert adj["passed"] == (adj["bound"] <= 30.0) and adj["bound"] >= runs["none"].check_bound
    assert not adj["passed"] or runs["posthoc"].sparsities == runs["none"].sparsities
    for r in runs.values():                # the report says when a guard backed off from the search's pick
        assert ("the search's own pick" in format_result(r)) == (r.search_pick is not None)
    backed = replace(sim, search_pick={"sparsities": {}, "adabn": False, "check": 0.0, "bound": 31.0})
    assert f"own pick (upper bound of the drop 31.00 at its per-candidate level) does not hold at " \
           f"{100 * sim.level:.4g} %" in format_result(backed)
    ph = runs["posthoc"]                   # the search's own pick is kept when the adjustment backs off from it
    assert (ph.search_pick is None) == (ph.sparsities == runs["none"].sparsities)
    assert ph.search_pick is None or ph.search_pick["sparsities"] == runs["none"].sparsities


def test_simultaneous_level_counts_how_candidates_move_together():
    """The max-rank level: one candidate, or many copies of it, need no correction; independent candidates need
    about Šidák's level; a candidate that moves with another costs nothing extra."""
    from compression_tool.engine.target_true import bootstrap_means, simultaneous_level

    rng = np.random.default_rng(0)
    one = 100.0 * (rng.random(400) < 0.1)
    m1 = bootstrap_means(one, n_boot=4000, seed=1)
    assert m1.shape == (1, 4000)
    assert simultaneous_level(m1, 0.95, True) == pytest.approx(0.95, abs=1e-3)
    assert simultaneous_level(np.repeat(m1, 20, axis=0), 0.95, True) == pytest.approx(0.95, abs=1e-3)
    indep = 100.0 * (rng.random((20, 400)) < 0.1)
    level = simultaneous_level(bootstrap_means(indep, n_boot=4000, seed=1), 0.95, True)
    assert level == pytest.approx(0.95 ** (1 / 20), abs=1.5e-3) and level > 0.995
    lower = simultaneous_level(bootstrap_means(indep, n_boot=4000, seed=1), 0.95, False)
    assert lower == pytest.approx(0.95 ** (1 / 20), abs=1.5e-3)
    nested = np.stack([one, np.where(np.arange(400) < 5, 100.0, one)])   # the second changes 5 more outcomes
    assert simultaneous_level(bootstrap_means(nested, n_boot=4000, seed=1), 0.95, True) < 0.97
    # the same draws for every row: a row's bound from the many-row call is its single-row bound
    many = bootstrap_means(np.stack([one, indep[0]]), n_boot=500, seed=2, adverse=100.0)
    assert np.array_equal(many[1], bootstrap_means(indep[0], n_boot=500, seed=2, adverse=100.0)[0])
    pairs = rng.integers(0, 60, size=(200, 2))
    groups = np.arange(60) // 6
    pv = rng.random((3, 200))
    many = bootstrap_means(pv, n_boot=300, seed=3, pairs=pairs, groups=groups)
    assert np.array_equal(many[2], bootstrap_means(pv[2], n_boot=300, seed=3, pairs=pairs, groups=groups)[0])


def test_simultaneous_level_keeps_the_chance_of_a_lucky_pass_at_the_nominal_rate():
    """The winner's curse, simulated: 10 candidates whose true drop is exactly the budget (each as bad as may be let
    through). Kept whenever its own 95 % bound passes, one of them gets through in about half of the data sets; at
    the simultaneous level, about as often as a single candidate tested alone (the percentile bound's own rate at
    n = 300, a little above 5 %)."""
    from compression_tool.engine.target_true import bootstrap_means, simultaneous_level

    rng = np.random.default_rng(7)
    budget, runs, lucky, guarded, alone = 1.0, 120, 0, 0, 0
    for run in range(runs):
        u = rng.random((10, 300))            # 10 % of the outcomes change; net drop 1 point (= the budget)
        drops = np.where(u < 0.055, 100.0, np.where(u < 0.1, -100.0, 0.0))
        means = bootstrap_means(drops, n_boot=400, seed=run)
        level = simultaneous_level(means, 0.95, True)
        passed = np.quantile(means, 0.95, axis=1) <= budget
        lucky, alone = lucky + bool(passed.any()), alone + bool(passed[0])
        guarded += bool((np.quantile(means, level, axis=1) <= budget).any())
    assert lucky / runs > 0.3 and guarded / runs < 0.15 and guarded <= alone + 0.04 * runs


def test_reanalyse_orders_greedy_moves_by_the_composed_model_on_sa(monkeypatch):
    """NNI-style re-analysis: the first greedy move tried on check is the one whose composed model scores best on
    the SA split (measured here independently), and the SA measurements are counted."""
    from compression_tool.engine.target_true import ComposedChecker, composed_metric

    model, x, y = toy_problem(900, seed=3)
    parts = split_tensors(x, y, SplitSpec((0.34, 0.33, 0.33), seed=3))
    table = sensitivity_table(model, *parts["sa"])
    sa, check = classifier_evaluator(*parts["sa"]), classifier_evaluator(*parts["check"])
    cfg = TargetTrueConfig(drop=30.0, bn_recalib_batches=0, max_evals=15, reanalyse=True)
    with pytest.raises(UserError, match="sa_eval"):
        target_true_schedule(model, x[:1], make_criterion("l1"), table, check, None, [], cfg, progress=False)
    calls = []                            # (on SA?, schedule) of every measurement, cached or not
    original = ComposedChecker.measure

    def spy(self, sp):
        calls.append((self.check_eval is sa, dict(sp)))
        return original(self, sp)
    monkeypatch.setattr(ComposedChecker, "measure", spy)
    r = target_true_schedule(model, x[:1], make_criterion("l1"), table, check, None, [], cfg, progress=False,
                             sa_eval=sa)
    assert r.sa_evals > 0
    first_sa = next(i for i, (on_sa, _) in enumerate(calls) if on_sa)
    start = [t for t in r.trace if t.step in ("baseline", "bisect") and t.passed][-1].sparsities
    tried = next(sp for on_sa, sp in calls[first_sa:] if not on_sa)
    monkeypatch.setattr(ComposedChecker, "measure", original)
    options = {}
    for layer, curve in table.items():
        nxt = sorted(s for s, _ in curve if s > start[layer] + 1e-9)
        if nxt:
            options[layer] = composed_metric(model, x[:1], make_criterion("l1"), {**start, layer: nxt[0]}, sa)[0].value
    assert len(options) == 2 and options["a.weight"] != options["b.weight"]
    assert {k for k, v in tried.items() if v != start[k]} == {max(options, key=options.get)}


def test_nothing_pruned_says_how_many_check_samples_would_vouch(caplog):
    """When no schedule passes, one line says what the lightest one did to the check outcomes and about how many
    check samples would vouch for it (the normal-approximation size agrees with the bootstrap bound)."""
    import logging

    from compression_tool.engine.target_true import samples_to_vouch

    rng = np.random.default_rng(0)
    d = np.zeros(4000)
    idx = rng.choice(4000, 320, replace=False)           # 8 % of the outcomes change, net drop 0.3 points
    d[idx[:166]], d[idx[166:]] = 100.0, -100.0
    need = samples_to_vouch(d, 1.0, 0.95)
    assert 3000 < need < 6000
    assert bootstrap_mean_bound(rng.permutation(d)[:need], 0.95, True) == pytest.approx(1.0, abs=0.25)
    assert samples_to_vouch(d, 0.2, 0.95) is None         # its mean drop alone exceeds 0.2
    # with the adverse pseudo-sample the bound adds: 2 of 144 outcomes changed, net 0, yet 144 do not vouch for 3
    # points at 98.45 % (digits' case), and the size it names does, as the bootstrap sees it
    small = np.zeros(144)
    small[:2] = (100.0, -100.0)
    assert bootstrap_mean_bound(small, 0.9845, True, adverse=100.0) > 3.0
    need = samples_to_vouch(small, 3.0, 0.9845, adverse=100.0)
    assert need > 144 and need > samples_to_vouch(small, 3.0, 0.9845)
    grown = np.zeros(need)
    grown[:2 * round(need / 144)] = np.tile([100.0, -100.0], round(need / 144))
    assert bootstrap_mean_bound(grown, 0.9845, True, adverse=100.0) == pytest.approx(3.0, abs=0.3)
    model, x, y = toy_problem(900, seed=3)
    parts = split_tensors(x, y, SplitSpec((0.34, 0.33, 0.33), seed=3))
    table = sensitivity_table(model, *parts["sa"])
    with caplog.at_level(logging.WARNING, logger="compression_tool.engine.target_true"):
        r = target_true_schedule(model, x[:1], make_criterion("l1"), table, classifier_evaluator(*parts["check"]),
                                 None, [], TargetTrueConfig(drop=1.5, bn_recalib_batches=0, max_evals=8),
                                 progress=False)
    assert r.resolvable and not any(r.sparsities.values())
    assert any("nothing pruned. The lightest schedule tried" in m and "the check split has 297" in m
               for m in caplog.messages)

    plain = classifier_evaluator(*parts["check"])            # the same images as 12 clusters ("identities")

    def clustered(model):
        m = plain(model)
        ids = np.arange(m.n) % 12
        return Measurement(m.value, m.per_sample, m.n, np.stack([ids, ids], 1), "identity")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="compression_tool.engine.target_true"):
        target_true_schedule(model, x[:1], make_criterion("l1"), table, clustered, None, [],
                             TargetTrueConfig(drop=3.0, bn_recalib_batches=0, max_evals=8), progress=False)
    hint = [m for m in caplog.messages if "nothing pruned" in m]
    assert len(hint) == 1 and "check identities would vouch for it (it has 12)" in hint[0]


def test_bonferroni_is_stricter():
    cfg = TargetTrueConfig(drop=1.0, max_evals=50, multiple_testing="bonferroni")
    assert cfg.decision_confidence() == pytest.approx(0.999)
    with pytest.raises(UserError):
        TargetTrueConfig(drop=1.0, multiple_testing="holm").validate()


def test_bootstrap_bound_brackets_the_mean():
    v = np.array([100.0] * 90 + [0.0] * 10)
    lo, hi = bootstrap_mean_bound(v, 0.95, False), bootstrap_mean_bound(v, 0.95, True)
    assert lo < 90.0 < hi and 83 < lo and hi < 97
    assert bootstrap_mean_bound(np.zeros(10), 0.95, True) == 0.0


# ---------------------------------------------------------------------------- the CLI chain on digits

from tests.test_workflow import ckpt  # noqa: E402,F401  (a briefly trained digits_net checkpoint)


def test_cli_chain_target_true(ckpt, tmp_path):  # noqa: F811
    import json

    import yaml

    import pruning
    from compression_tool.cli import auto_make_yaml
    from tests.zoo_util import DIGITS_SPLIT as split
    from tests.zoo_util import digits_sa_csv

    csv = digits_sa_csv(ckpt, tmp_path)
    out = tmp_path / "tt.yaml"
    auto_make_yaml.main([str(csv), "--drop", "5", "--model", "digits_net", "--best_model_path", str(ckpt),
                         "--data", "digits", "--output", str(out), "--bn_recalib", "2", "--max_evals", "12", *split])
    doc = yaml.safe_load(out.read_text())
    ext = doc["extensions"]["target_true"]
    assert ext["split"] == {"parts": ["sa", "check", "report"], "sizes": [0.2, 0.4, 0.4], "seed": 1}
    rep = json.loads(out.with_suffix(".report.json").read_text())
    # up to 12 for the search, up to 16 (--guard_steps) lighter schedules for the guard to back off to
    assert rep["check_bound"] <= 5.0 and rep["report"] is not None and rep["evals"] <= 12 + 16
    assert ext["guard_steps"] == 16
    # the default guard: the pick re-decided at the simultaneous level over the candidates measured
    assert ext["multiple_testing"] == "simultaneous" and rep["level"] == rep["guards"]["simultaneous"]["level"]
    # the family: every check measurement, both BN variants of a candidate under bn_mode auto
    assert rep["guards"]["simultaneous"]["tests"] >= rep["evals"]
    assert 0.95 <= rep["level"] <= 1 - 0.05 / rep["guards"]["simultaneous"]["tests"]
    # the guards against the winner's curse, and NNI-style re-analysis, from the CLI
    base = [str(csv), "--drop", "5", "--model", "digits_net", "--best_model_path", str(ckpt), "--data", "digits",
            "--bn_recalib", "2", "--max_evals", "12", "--force", *split]
    auto_make_yaml.main([*base, "--output", str(tmp_path / "ph.yaml"), "--multiple_testing", "posthoc",
                         "--reanalyse", "--guard_steps", "0"])
    ph = json.loads((tmp_path / "ph.report.json").read_text())
    assert ph["evals"] <= 12 and not any(t["step"] == "guard" for t in ph["trace"])
    assert ph["level"] == pytest.approx(1 - 0.05 / ph["guards"]["posthoc"]["tests"]) and ph["check_bound"] <= 5.0
    assert ph["sa_evals"] > 0
    auto_make_yaml.main([*base, "--output", str(tmp_path / "cf.yaml"), "--confirm", "0.5", "--search_confidence",
                         "0.5"])
    cf = json.loads((tmp_path / "cf.report.json").read_text())
    assert cf["confirm"]["n"] == pytest.approx(rep["check_n"] / 2, abs=1) and cf["check_n"] < rep["check_n"]
    assert all(t["passed"] for t in cf["confirm"]["tested"][:-1]) and cf["level"] == 0.5
    assert cf["guards"] is None                 # with a confirm part, the confirm test is the guard
    for bad in ([str(csv), "--drop", "5", "--output", str(out)],                 # never overwrite without --force
                [str(csv), "101", "--output", str(tmp_path / "x.yaml")],              # above the unpruned model
                [str(csv), "nan", "--output", str(tmp_path / "y.yaml")],              # not a number
                [str(csv), "--drop", "5", "--guard_steps", "-1", "--output", str(tmp_path / "z.yaml")]):
        with pytest.raises(SystemExit) as e:
            auto_make_yaml.main([*bad, "--model", "digits_net", "--best_model_path", str(ckpt), "--data", "digits",
                                 *split])
        assert e.value.code == 2
    if doc["pruners"]:
        pruning.main(["--mode", "prune", "--model", "digits_net", "--best_model_path", str(ckpt), "--yaml", str(out),
                      "--bn_recalib", "2", "--output", str(tmp_path / "p.pth"), "--save_model_pt",
                      "--work_space", str(tmp_path), *split])
        assert (tmp_path / "p.pth").exists()
    # only a CSV: the seed rule stays the default
    seed_out = auto_make_yaml.main([str(csv), "80", "digits_net", "1,16,16", "--output", str(tmp_path / "s.yaml")])
    assert "target_true" not in yaml.safe_load(seed_out.read_text())["extensions"]


def test_ci_columns_resume_and_resolution_note(ckpt, tmp_path, capsys):  # noqa: F811
    import csv as csvmod

    import pruning
    from compression_tool.cli import auto_make_yaml
    from compression_tool.engine.sensitivity import load_csv
    from compression_tool.engine.sensitivity_ci import samples_to_resolve, wilson

    out = tmp_path / "sa.csv"
    args = ["--mode", "sa", "--model", "digits_net", "--best_model_path", str(ckpt), "--output", str(out),
            "--sparsities", "0,0.5", "--split", "0.2,0.4,0.4", "--ci"]
    pruning.main(args)
    rows = list(csvmod.reader(open(out)))
    assert rows[0] == ["parameter", "sparsity", "top1", "top5", "loss", "top1_lo", "top1_hi", "top5_lo", "top5_hi"]
    lo, hi = float(rows[1][5]), float(rows[1][6])
    assert lo < float(rows[1][2]) <= hi and (lo, hi) == pytest.approx(wilson(float(rows[1][2]), 72), abs=1e-3)
    # a resumed sweep (two rows lost) strips, appends and recomputes: the same file again
    full = out.read_text()
    out.write_text("\n".join(full.splitlines()[:-2]) + "\n")
    pruning.main(args)
    assert out.read_text() == full
    _, data = load_csv(out)
    base = data["fc1.weight"][0][1]["top1"]
    auto_make_yaml.main([str(out), str(base - 0.5), "digits_net", "1,16,16", "--output", str(tmp_path / "s.yaml")])
    note = [line for line in capsys.readouterr().out.splitlines() if "finer than the sensitivity" in line]
    need = samples_to_resolve(base, 0.5)
    assert len(note) == 1 and f"about {need} evaluation images would resolve it" in note[0]
    for n, inside in ((need, True), (need - 1, False)):       # the smallest split whose interval is ±0.5
        lo, hi = wilson(base, n)
        assert ((hi - lo) / 2 <= 0.5) == inside
    assert 150 < samples_to_resolve(100.0, 1.0) < 400 < samples_to_resolve(90.0, 1.0) and \
        samples_to_resolve(90.0, 0.0) is None
