"""The latency cost model: per-layer tables cached per machine key, predictions of thinned models, the
--latency budget of auto_make_yaml.py and the per-layer latency report of pruning.py --mode prune."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

import model_define as md
import pruning
from compression_tool.cli import auto_make_yaml
from compression_tool.engine.checkpoint import example_input
from compression_tool.engine.cost import thinned_copy
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.latency import LatencyModel, LatencyTable, MachineKey, timed_leaves
from compression_tool.engine.schedule import read_schedule, resolve
from compression_tool.io.errors import UserError
from tests.zoo_util import classifier_sa_csv


class Wide(nn.Module):
    """Convs heavy enough that their latency clearly follows their width."""

    def __init__(self, c: int = 96):
        super().__init__()
        self.c1 = nn.Conv2d(3, c, 3, padding=1)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)
        self.b2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


X = torch.randn(1, 3, 32, 32)


def test_table_is_cached_per_machine_key(tmp_path):
    torch.manual_seed(0)
    m = Wide().eval()
    t = LatencyTable("torch", threads=1, batch=1, folder=tmp_path)
    ms = t.layer_ms(m, X)
    assert set(ms) == {n for n, _ in timed_leaves(m)} and all(v > 0 for v in ms.values())
    assert t.measured == 4 and t.path.exists()                          # b1 and b2 share one shape
    doc = json.loads(t.path.read_text())
    assert doc["key"]["threads"] == 1 and doc["key"]["batch"] == 1 and doc["key"]["runtime"] == "torch"
    assert t.path.name == f"{t.key.slug()}.json" and "t1_b1" in t.path.name
    again = LatencyTable("torch", 1, 1, tmp_path)
    assert again.layer_ms(m, X) == ms and again.measured == 0            # read back, nothing re-timed
    thin = thinned_copy(m, X, {"c1.weight": list(range(48))})
    again.layer_ms(thin, X)
    assert again.measured == 3                                          # c1, b1, c2 new; b2, fc unchanged
    other = LatencyTable("torch", 1, 2, tmp_path)
    assert other.path != t.path and other.layers == {}                  # batch is part of the key
    with pytest.raises(UserError, match="runtime"):
        MachineKey.here("tensorrt", 1, 1)


def test_predicted_latency_falls_with_width_and_scale_fits_base(tmp_path):
    torch.manual_seed(0)
    m = Wide().eval()
    lm = LatencyModel(m, X, LatencyTable("torch", 1, 1, tmp_path))
    assert lm.predict(m) == pytest.approx(lm.base, rel=1e-6)           # the scale is fitted on the model
    half = thinned_copy(m, X, {"c1.weight": list(range(48))})
    quarter = thinned_copy(m, X, {"c1.weight": list(range(72))})
    assert lm.predict(quarter) < lm.predict(half) < lm.base


def test_ort_table_times_the_bn_folded_export(tmp_path):
    m = md.get_model("digits_net").eval()
    t = LatencyTable("ort", 1, 1, tmp_path)
    ms = t.layer_ms(m, example_input((1, 16, 16)))
    assert "onnxruntime" in t.key.versions and t.path.name != LatencyTable("torch", 1, 1, tmp_path).path.name
    assert ms and not any("bn" in n or n.endswith(".1") for n in ms), ms     # BNs folded away first


@pytest.fixture
def counted_ms(monkeypatch):
    """Deterministic "timings": a layer costs its parameters times its input's spatial size; a whole model the sum
    of its layers plus what timing layers alone misses (x 1.2 + 0.05 ms). The tests below check what the CLIs do
    with latencies, not the clock: digits_net's layers take microseconds, and on a loaded machine real timings of
    them can swap order."""
    def layer(self, module, shape):
        return 1e-3 + 1e-6 * sum(p.numel() for p in module.parameters()) * float(np.prod(shape[2:] or (1,)))

    def models(self, models, example, rounds=9):
        return [1.2 * sum(self.layer_ms(m, example).values()) + 0.05 for m in models]

    monkeypatch.setattr(LatencyTable, "_measure", layer)
    monkeypatch.setattr(LatencyTable, "measure_models", models)


def test_latency_budget_schedule(tmp_path, capsys, counted_ms):
    torch.manual_seed(0)
    model = md.get_model("digits_net").eval()
    ck = tmp_path / "d.pth"
    torch.save({"state_dict": model.state_dict()}, ck)
    x = example_input((1, 16, 16))
    index = GroupIndex(model, x)
    path = classifier_sa_csv(tmp_path / "sa.csv", index)
    out = tmp_path / "l.yaml"
    auto_make_yaml.main([str(path), "--latency", "0.7", "--model", "digits_net", "--best_model_path", str(ck),
                         "--output", str(out), "--latency_dir", str(tmp_path / "lat")])
    text = out.read_text()
    assert "--latency" in text and "predicted latency" in text
    plan = resolve(read_schedule(out), index)
    thin = thinned_copy(model, x, {g.name: list(range(g.n_prune(plan[g.name][0]))) for g in index.groups
                                   if g.name in plan})
    said = re.search(r"predicted ([0-9.]+) ms of ([0-9.]+) ms", capsys.readouterr().out)
    assert said and float(said[1]) <= 0.7 * float(said[2]) + 1e-3
    lm = LatencyModel(model, x, LatencyTable("torch", 1, 1, tmp_path / "lat"))
    assert plan and lm.predict(thin) <= 0.7 * lm.base + 1e-9              # the same (counted) numbers again
    with pytest.raises(SystemExit):
        auto_make_yaml.main([str(path), "--latency", "0.7", "--flops", "0.5", "--model", "digits_net",
                             "--best_model_path", str(ck)])


def test_prune_report_prints_per_layer_latency(tmp_path, capsys, counted_ms):
    torch.manual_seed(0)
    ck = tmp_path / "d.pth"
    torch.save({"state_dict": md.get_model("digits_net").state_dict()}, ck)
    yml = tmp_path / "s.yaml"
    yml.write_text("version: 1\npruners:\n  p:\n    class: L1RankedStructureParameterPruner\n"
                   "    desired_sparsity: 0.5\n    weights: [down.0.weight]\n")
    pruning.main(["--mode", "prune", "--model", "digits_net", "--best_model_path", str(ck), "--yaml", str(yml),
                  "--eval_batches", "1", "--work_space", str(tmp_path), "--latency_runtime", "torch",
                  "--latency_dir", str(tmp_path / "lat")])
    out = capsys.readouterr().out
    assert "per-layer latency on torch" in out and "sum of layers" in out and "predicted model" in out
    assert "(1.200 x sum +0.050 ms" in out                              # the fit recovers the whole-model law
    row = next(ln for ln in out.splitlines() if ln.startswith("down.0 "))
    assert float(row.split()[-1]) < 1.0                                  # the thinned layer got cheaper


def test_group_latency_model_tracks_the_table_and_search_meets_latency_budget(tmp_path, capsys):
    from compression_tool.engine.latency import GroupLatencyModel

    torch.manual_seed(0)
    model = md.get_model("digits_net").eval()
    x = example_input((1, 16, 16))
    index = GroupIndex(model, x)
    lm = LatencyModel(model, x, LatencyTable("torch", 1, 1, tmp_path / "lat"))
    fast = GroupLatencyModel(lm, model, index, x)
    ch = np.array([g.channels for g in index.groups])
    assert fast.predict(ch)["latency_ms"] == pytest.approx(lm.base, rel=1e-6)
    assert set(fast.out_group) and set(fast.in_group)                      # widths traced to their groups
    rng = np.random.default_rng(0)
    for _ in range(3):
        n = np.array([g.n_prune(float(s)) for g, s in zip(index.groups, rng.uniform(0.2, 0.8, len(ch)))])
        thin = thinned_copy(model, x, {g.name: list(range(k)) for g, k in zip(index.groups, n) if k})
        assert fast.predict(ch - n)["latency_ms"] < lm.base
        assert fast.predict(ch - n)["latency_ms"] == pytest.approx(lm.predict(thin), rel=0.5)
    ck = tmp_path / "d.pth"
    torch.save({"state_dict": model.state_dict()}, ck)
    out = tmp_path / "s.yaml"
    pruning.main(["--mode", "search", "--model", "digits_net", "--best_model_path", str(ck), "--output", str(out),
                  "--population", "3", "--iterations", "1", "--eval_batches", "1", "--search_batches", "1",
                  "--algo", "ga", "--latency", "0.8", "--latency_dir", str(tmp_path / "lat")])
    printed = capsys.readouterr().out
    kept = [float(ln.split("ms predicted (")[1].split("%")[0]) for ln in printed.splitlines()
            if "ms predicted (" in ln]
    assert kept and all(k <= 80.0 + 1e-6 for k in kept), printed
    assert "--latency 0.8" in out.read_text()
