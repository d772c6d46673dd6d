"""Ratio search: each algorithm finds a known optimum, seeds make it reproducible, the budget repair meets
the FLOPs/params target on digits_net, and ``pruning.py --mode search`` writes a schedule that prunes to it."""
import numpy as np
import pytest
import torch

import model_define as md
import pruning
from compression_tool.data.digits import digits_split
from compression_tool.engine.checkpoint import example_input
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.schedule import read_schedule, resolve
from compression_tool.engine.search import ALGORITHMS, make_searcher
from compression_tool.engine.search.fitness import PruningFitness, bn_recalibrate

TARGET = np.array([0.1, 0.7, 0.3, 0.55, 0.85])


def toy(x: np.ndarray) -> float:
    return -float(((x - TARGET) ** 2).sum())


def run_toy(algo: str, seed: int, fitness=toy):
    s = make_searcher(algo, population=20, iterations=60, seed=seed, low=0.0, high=1.0, progress=False)
    return s, s.search(fitness, len(TARGET))


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_finds_known_optimum(algo):
    s, best = run_toy(algo, seed=3)
    assert np.abs(best - TARGET).max() < 0.02, (algo, best)
    assert s.best_score == pytest.approx(toy(best))
    assert all(a <= b for a, b in zip(s.trace.best_scores, s.trace.best_scores[1:]))   # best never gets worse


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_seed_determines_the_search(algo):
    s1, b1 = run_toy(algo, seed=7)
    s2, b2 = run_toy(algo, seed=7)
    s3, _ = run_toy(algo, seed=8)
    assert np.array_equal(b1, b2) and s1.trace.best_scores == s2.trace.best_scores
    assert s1.trace.best_scores != s3.trace.best_scores


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_projection_is_kept_and_uniform_start(algo):
    """A fitness with project(): every scored point is projected, the answer too; the budget seeds the start."""
    seen = []

    class OnSimplex:
        def project(self, x):
            return x / max(x.sum(), 1e-9) * 1.5

        def __call__(self, x):
            seen.append(x.copy())
            return toy(x)

    s = make_searcher(algo, population=6, iterations=3, seed=0, low=0.0, high=1.0, progress=False)
    best = s.search(OnSimplex(), len(TARGET), budget=0.25)
    assert all(abs(x.sum() - 1.5) < 1e-6 or x.max() >= 1.0 for x in seen)
    assert abs(best.sum() - 1.5) < 1e-6 or best.max() >= 1.0
    assert np.allclose(seen[0], 0.3)        # uniform start: 1 - sqrt(0.25) = 0.5 per group, projected


# ---------------------------------------------------------------------------- the pruning fitness


@pytest.fixture(scope="module")
def digits_setup():
    torch.manual_seed(0)
    model = md.get_model("digits_net").eval()
    (xtr, _), (xte, yte) = digits_split(image_size=16, seed=0)
    calib = [xtr[i:i + 64] for i in range(0, 128, 64)]
    held = (xte[:128], yte[:128])
    return model, calib, held


def make_fitness(digits_setup, budget, resource="macs"):
    from test_module.classification import evaluate_classifier
    model, calib, (x, y) = digits_setup
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
    return PruningFitness(model, example_input((1, 16, 16)), make_criterion("l1"),
                          lambda m: evaluate_classifier(m, loader), calib, budget, resource)


@pytest.mark.parametrize("resource,budget", [("macs", 0.5), ("macs", 0.3), ("params", 0.5)])
def test_repair_meets_budget_within_2_percent(digits_setup, resource, budget):
    f = make_fitness(digits_setup, budget, resource)
    full = f.full[resource]
    rng = np.random.default_rng(0)
    candidates = [rng.uniform(0, 0.9, f.n_groups) for _ in range(4)] + [np.zeros(f.n_groups),
                                                                          np.full(f.n_groups, 0.9)]
    for ratios in candidates + [f.uniform_ratios()]:
        pruned, exact = f.meet_exactly(f.repair(ratios))
        kept = exact[resource] / full
        assert budget * 0.98 <= kept <= budget, (ratios, pruned, kept)
        assert (pruned <= f.max_pruned).all() and (pruned >= 0).all()


def test_project_is_idempotent_and_fitness_deterministic(digits_setup):
    f = make_fitness(digits_setup, 0.5)
    r = f.project(np.array([0.2, 0.6, 0.1, 0.4]))
    assert np.array_equal(f.project(r), r)
    again = make_fitness(digits_setup, 0.5)            # a fresh cache: the score is recomputed
    assert f(r) == again(r)


def test_bn_recalibration_matches_batch_statistics():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), bn)
    batches = [torch.randn(8, 1, 6, 6) * 2 + 1 for _ in range(3)]
    assert bn_recalibrate(model, batches) == 3
    with torch.no_grad():
        feats = torch.cat([model[0](b) for b in batches])
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert not model.training and bn.momentum == 0.1


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("search") / "digits_net.pth"
    torch.save({"state_dict": md.get_model("digits_net").state_dict()}, p)
    return p


def search_cli(ckpt, out, *extra):
    pruning.main(["--mode", "search", "--model", "digits_net", "--best_model_path", str(ckpt), "--output", str(out),
                  "--population", "4", "--iterations", "2", "--eval_batches", "1", "--search_batches", "1", *extra])


def test_search_cli_writes_a_schedule_that_meets_the_budget(ckpt, tmp_path, capsys):
    out = tmp_path / "s.yaml"
    search_cli(ckpt, out, "--algo", "ga", "--flops", "0.5")
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("best_candidates_prune=["))
    ratios = [float(v) for v in line.split("=[")[1].rstrip("]").split(",")]
    model = md.get_model("digits_net")
    index = GroupIndex(model, example_input((1, 16, 16)))
    plan = resolve(read_schedule(out), index)
    assert len(ratios) == len(index.groups)
    assert {g.name: r for g, r in zip(index.groups, ratios) if r > 0} == {g: s for g, (s, _) in plan.items()}
    out_ckpt = tmp_path / "pruned.pth"
    pruning.main(["--mode", "prune", "--model", "digits_net", "--best_model_path", str(ckpt), "--yaml", str(out),
                  "--eval_batches", "1", "--save_model_pt", "--output", str(out_ckpt), "--work_space", str(tmp_path)])
    macs_line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("macs"))
    assert 0.49 <= float(macs_line.split()[-1]) <= 0.5


@pytest.mark.parametrize("extra,needle", [
    ([], "exactly one budget"),
    (["--flops", "0.5", "--params", "0.5"], "exactly one budget"),
    (["--flops", "1.5"], "--flops"),
    (["--flops", "0.01"], "even pruning every group"),
])
def test_search_cli_bad_budget_is_one_line(ckpt, tmp_path, capsys, extra, needle):
    with pytest.raises(SystemExit) as e:
        search_cli(ckpt, tmp_path / "s.yaml", *extra)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and needle in err and len(err.splitlines()) == 1


def test_search_cli_refuses_to_clobber(ckpt, tmp_path, capsys):
    out = tmp_path / "s.yaml"
    out.write_text("mine")
    with pytest.raises(SystemExit):
        search_cli(ckpt, out, "--flops", "0.5")
    assert "--force" in capsys.readouterr().err and out.read_text() == "mine"
