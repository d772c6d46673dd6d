"""The face chain: budget search over a sensitivity CSV (compression_tool.engine.budget) and a tiny end-to-end run on
ORL
(sensitivity on a verification metric -> schedule for a FLOPs budget -> thin -> fine-tune -> verify -> report)."""
import csv
import subprocess

import pytest
import torch

from compression_tool.apps.face_chain import ChainConfig, format_table, run_chain
from compression_tool.cli.auto_make_yaml import main as auto_make_yaml_main
from compression_tool.cli.face_chain import main as face_chain_main
from compression_tool.engine import budget
from compression_tool.engine.checkpoint import example_input, load_model
from compression_tool.engine.cost import params_and_macs
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.schedule import read_schedule
from compression_tool.engine.sensitivity import load_csv
from compression_tool.io.errors import UserError
from tests.conftest import ROOT, SHARED_DATA
from tests.zoo_util import build_randomised

ORL = SHARED_DATA / "orl_faces"


def synthetic_csv(path, index, levels=(0.0, 0.25, 0.5, 0.75)):
    """Each group loses accuracy at its own rate (group i at slope 2 + 3i), so the schedule is not uniform."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["parameter", "sparsity", "lfw_acc", "auc"])
        for i, g in enumerate(index.groups):
            for s in levels:
                acc = 90.0 - (2 + 3 * i) * 10 * s
                w.writerow([g.name, s, f"{acc:.4f}", f"{0.95 - 0.01 * acc / 90:.4f}"])
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, size = build_randomised("digits_net")
    x = example_input(size)
    path = synthetic_csv(tmp_path_factory.mktemp("budget") / "s.csv", GroupIndex(model, x))
    return model, x, path


@pytest.mark.parametrize("reduction", [0.2, 0.4, 0.6])
def test_budget_meets_target_with_least_pruning(tiny, reduction):
    model, x, path = tiny
    res = budget.schedule_for_budget(str(path), model, x, 1 - reduction)
    base = params_and_macs(model, x)["macs"]
    assert res.base_macs == base
    assert res.macs <= (1 - reduction) * base                       # the budget holds
    index = GroupIndex(model, x)
    assert budget.thinned_cost(model, x, budget.prune_counts(index, res.sparsities))["macs"] == res.macs
    # one move fewer would break the budget: the shortest prefix that fits
    _, data = load_csv(path)
    moves = budget.ordered_moves(data, "lfw_acc")
    fewer = budget.schedule_after(moves, res.moves - 1, list(data))
    assert budget.thinned_cost(model, x, budget.prune_counts(index, fewer))["macs"] > (1 - reduction) * base
    # the fragile (steep) groups keep more channels than the robust ones
    levels = [res.sparsities[g.name] for g in index.groups]
    assert levels == sorted(levels, reverse=True) and levels[0] > levels[-1]
    assert params_and_macs(model, x)["macs"] == base                 # the model itself is untouched


def test_budget_more_reduction_more_moves(tiny):
    model, x, path = tiny
    results = [budget.schedule_for_budget(str(path), model, x, 1 - r) for r in (0.1, 0.3, 0.5, 0.7)]
    assert [r.moves for r in results] == sorted(r.moves for r in results)
    assert [r.macs for r in results] == sorted((r.macs for r in results), reverse=True)


def test_moves_follow_the_running_minimum():
    """A lucky value at a high level does not jump ahead of the dip below it; lower-is-better metrics too."""
    curve = [(0.0, {"acc": 90.0, "eer": 0.1}), (0.25, {"acc": 80.0, "eer": 0.3}), (0.5, {"acc": 95.0, "eer": 0.05})]
    flat = [(0.0, {"acc": 90.0, "eer": 0.1}), (0.25, {"acc": 89.0, "eer": 0.12}), (0.5, {"acc": 85.0, "eer": 0.2})]
    assert budget.envelope(curve, "acc") == [(0.0, 90.0), (0.25, 80.0), (0.5, 80.0)]
    assert budget.envelope(curve, "eer") == [(0.0, 0.1), (0.25, 0.3), (0.5, 0.3)]
    for metric in ("acc", "eer"):
        moves = budget.ordered_moves({"a": curve, "b": flat}, metric)
        assert [(m[0], m[1]) for m in moves] == [("b", 0.25), ("b", 0.5), ("a", 0.25), ("a", 0.5)]
    assert budget.schedule_after(moves, 3, ["a", "b"]) == {"a": 0.25, "b": 0.5}


def test_budget_schedule_file(tiny, tmp_path):
    model, x, path = tiny
    res = budget.schedule_for_budget(str(path), model, x, 1 - 0.4)
    out = budget.write_budget_schedule(res, tmp_path / "s.yaml", str(path), "fpgm", "digits_net", "digits",
                                       [1, 16, 16])
    sched = read_schedule(out)
    assert {w: s for p in sched.pruners for w, s in p.sparsities.items()} == \
        {w: s for w, s in res.sparsities.items() if s > 0}
    assert {p.pruner_class for p in sched.pruners} == {"FPGMStructureParameterPruner"}
    assert "auto_make_yaml.py --flops" in out.read_text().splitlines()[0]


def test_budget_bad_input(tiny, tmp_path):
    model, x, path = tiny
    with pytest.raises(UserError, match="highest level"):
        budget.schedule_for_budget(str(path), model, x, 1 - 0.99)
    with pytest.raises(UserError, match="--flops"):
        budget.schedule_for_budget(str(path), model, x, 1 - 1.5)
    with pytest.raises(UserError, match="not a column"):
        budget.schedule_for_budget(str(path), model, x, 1 - 0.3, metric="top1")
    with pytest.raises(UserError, match="no such sensitivity CSV"):
        budget.schedule_for_budget(str(tmp_path / "missing.csv"), model, x, 0.7)


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        face_chain_main(["report", "baseline", "--data", "orl:x"])
    assert e.value.code == 2 and "LABEL=CHECKPOINT" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        auto_make_yaml_main([str(tmp_path / "none.csv"), "--flops", "0.7", "--best_model_path",
                     str(tmp_path / "none.pth"), "--model", "digits_net"])
    assert e.value.code == 2 and "no such checkpoint" in capsys.readouterr().err


def test_prune_face_sh_parses():
    assert subprocess.run(["sh", "-n", str(ROOT / "prune_face.sh")]).returncode == 0


def test_format_table_rows():
    text = format_table([("baseline", {"lfw_acc": 90.0, "macs": 2e6, "params": 1e6}), ("pruned", {})])
    lines = text.splitlines()
    assert len(lines) == 4 and "| baseline | 90.00 |" in lines[2] and "| 2.00 | 1.000 |" in lines[2]
    assert lines[3].count("—") == 7


@pytest.mark.skipif(not ORL.is_dir(), reason=f"ORL faces not found at {ORL}")
def test_face_chain_end_to_end_on_orl(tmp_path):
    cfg = ChainConfig(orl=str(ORL), work=str(tmp_path), input_size=(3, 28, 24), reductions=(0.3,),
                      sparsities="0,0.5", eval_batches=2, batch_size=32, base_epochs=1, base_max_iters=3,
                      ft_epochs=1, ft_max_iters=2, distill=("none", "cosine"))
    res = run_chain(cfg)
    labels = [label for label, _ in res.rows]
    assert labels == ["baseline", "-30% MACs, pruned", "-30% MACs, fine-tuned",
                      "-30% MACs, fine-tuned + cosine distill"]
    rows = dict(res.rows)
    base, pruned = rows["baseline"], rows["-30% MACs, pruned"]
    b = res.budgets[0.3]
    assert pruned["macs"] <= 0.7 * base["macs"] and pruned["macs"] == b.macs and base["macs"] == b.base_macs
    for m in rows.values():
        assert 0.0 <= m["tpr@fpr=1e-2"] <= 1.0 and 40.0 <= m["lfw_acc"] <= 100.0
    # the schedule auto_make_yaml wrote is the one the budget search measured
    sched = read_schedule(tmp_path / "mobilefacenet_flops-30.yaml")
    written = {w: s for p in sched.pruners for w, s in p.sparsities.items()}
    assert written == {w: s for w, s in b.sparsities.items() if s > 0}
    # the CSV: every group at both levels, on the verification metric
    metrics, data = load_csv(tmp_path / "mobilefacenet_l1_lfw_acc.csv")
    assert metrics[0] == "lfw_acc" and all(len(c) == 2 for c in data.values())
    # fine-tuned checkpoints rebuild at the pruned width and have moved away from the pruned weights
    p_model, _ = load_model(res.paths["-30% MACs, pruned"])
    for label in ("-30% MACs, fine-tuned", "-30% MACs, fine-tuned + cosine distill"):
        assert rows[label]["macs"] == pruned["macs"] and rows[label]["params"] == pruned["params"]
        ft, meta = load_model(res.paths[label])
        assert meta["input_size"] == [3, 28, 24] and meta["keep"]
        moved = [not torch.equal(a, b) for a, b in zip(ft.state_dict().values(), p_model.state_dict().values())
                 if a.is_floating_point()]
        assert any(moved)
    assert (tmp_path / "report.json").is_file()
