"""auto_make_yaml.py --flops F --select finetune_proxy|adabn (compression_tool.apps.proxy_select) on digits_net."""
import json

import pytest
import torch
import yaml

from compression_tool.apps import proxy_select as ps
from compression_tool.cli import auto_make_yaml
from compression_tool.data.splits import SplitSpec
from compression_tool.io.errors import UserError
from tests.test_workflow import ckpt  # noqa: F401  (a briefly trained digits_net checkpoint)

SPLIT = ["--split", "0.3,0.4,0.3", "--split_seed", "1"]


def cli(ckpt, out, *extra):  # noqa: F811
    return ["--flops", "0.5", "--select", "finetune_proxy", "--model", "digits_net", "--best_model_path", str(ckpt),
            "--data", "digits", "--output", str(out), "--bn_recalib", "2", "--sa_dir", str(out.parent / "sa"),
            *SPLIT, *extra]


def job(ckpt, out, **cfg):  # noqa: F811
    config = ps.ProxySelectConfig(keep=0.5, criteria=["l1"], work_dir=str(out.parent / "sa"), **cfg)
    return ps.ProxySelectJob(checkpoint=str(ckpt), data="digits", config=config, model_name="digits_net",
                             split=SplitSpec((0.3, 0.4, 0.3), 1), bn_recalib=2, output=str(out))


def test_the_best_proxy_score_wins_and_yaml_plus_report_are_written(ckpt, tmp_path):  # noqa: F811
    """An injected scorer decides: the winner is its best candidate, not the first or the AdaBN-best."""
    out = tmp_path / "sel.yaml"
    seen = []

    def scorer(name, model):
        seen.append(name)
        return {"l1/loss/inner": 90.0, "l1/top1/all": 10.0}.get(name, 50.0)
    result, path, report = ps.run_proxy_select(job(ckpt, out), scorer=scorer)
    assert seen == ["l1/top1/all", "l1/loss/all", "l1/top1/inner", "l1/loss/inner"]   # criteria x orderings x scopes
    assert result.chosen == "l1/loss/inner" and path == out
    doc = yaml.safe_load(out.read_text())
    win = result.winner
    assert doc["extensions"]["proxy_select"]["chosen"] == "l1/loss/inner"
    listed = {w: p["desired_sparsity"] for p in doc["pruners"].values() for w in p["weights"]}
    assert listed == pytest.approx(win.schedule) and listed
    assert win.budget.macs_kept <= 0.5 + 1e-9
    rep = json.loads(report.read_text())
    assert rep["chosen"] == "l1/loss/inner" and len(rep["candidates"]) == 4
    assert {c["name"]: c["scores"]["finetune_proxy"] for c in rep["candidates"]}["l1/top1/all"] == 10.0
    assert all(0 < c["macs_kept"] <= 0.5 + 1e-9 for c in rep["candidates"])
    assert rep["sizes"]["selection"] > 0 and rep["sizes"]["proxy_train"] > rep["sizes"]["sa"]
    # never overwritten without force
    with pytest.raises(UserError):
        ps.run_proxy_select(job(ckpt, out), scorer=scorer)


def test_proxy_scorer_fine_tunes_a_copy_on_the_training_side_only():
    """The default scorer trains a copy (the candidate's pruned weights stay as they were) on proxy_train and
    scores on the selection part; the parts are disjoint and seeded."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 1, 8, 8, generator=g), torch.randint(0, 3, (120,), generator=g)
    parts = {"sa": (x[:40], y[:40]), "check": (x[40:80], y[40:80]), "report": (x[80:], y[80:])}
    data = ps.ProxyData.from_parts(parts, 0.25, seed=3, calib_batches=2, calib_batch_size=16)
    again = ps.ProxyData.from_parts(parts, 10, seed=3, calib_batches=2, calib_batch_size=16)
    assert torch.equal(data.select[0], again.select[0]) and len(data.select[1]) == 10
    assert len(data.proxy_train[1]) == 70 and len(data.train[1]) == 80 and len(data.calib) == 2
    rows = {tuple(r.tolist()) for r in data.select[0].flatten(1)}
    assert not rows & {tuple(r.tolist()) for r in data.proxy_train[0].flatten(1)}
    assert not rows & {tuple(r.tolist()) for r in parts["report"][0].flatten(1)}
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    before = [p.clone() for p in model.parameters()]
    cfg = ps.ProxySelectConfig(recipe=ps.ProxyRecipe(batch_size=16, augment="crop", pad=1))
    s = ps.proxy_scorer(data, cfg)("m", model)
    assert 0.0 <= s <= 100.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(UserError):
        ps.ProxyData.from_parts(parts, 40, seed=3, calib_batches=2)     # nothing left to proxy-train on


def test_cli_route_writes_the_winner_and_refuses_bad_flags(ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "cli.yaml"
    monkeypatch.setattr(ps, "proxy_scorer",       # the scoring rule itself is tested above; keep the CLI test fast
                        lambda data, cfg, teacher=None: lambda name, m: 70.0 if name == "fpgm/top1/all" else 60.0)
    got = auto_make_yaml.main(cli(ckpt, out, "--criteria", "l1,fpgm", "--orderings", "top1", "--scopes", "all"))
    assert got == out
    assert yaml.safe_load(out.read_text())["extensions"]["proxy_select"]["chosen"] == "fpgm/top1/all"
    assert "FPGM" in yaml.safe_load(out.read_text())["pruners"][next(iter(yaml.safe_load(out.read_text())[
        "pruners"]))]["class"].upper()
    assert json.loads(out.with_suffix(".report.json").read_text())["chosen"] == "fpgm/top1/all"
    assert "<- chosen" in capsys.readouterr().out
    bad = [
        [],                                              # output exists: no --force
        ["--criteria", "l1,nosuch"],
        ["--proxy_epochs", "0"],
        ["--scopes", "outer"],
        ["--orderings", "top9"],
        ["--select_part", "1.5"],
        ["--select_part", "many"],
        ["--lr", "-1"],
        ["--augment", "rotate"],
    ]
    for extra in bad:
        target = out if not extra else tmp_path / "new.yaml"
        args = cli(ckpt, target, *extra)
        with pytest.raises(SystemExit) as e:
            auto_make_yaml.main(args)
        assert e.value.code == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, (extra, err)
        assert not (tmp_path / "new.yaml").exists()
    for argv in (["--select", "finetune_proxy", "--best_model_path", str(ckpt), "--data", "digits"],   # no --flops
                 [str(tmp_path / "x.csv"), "--flops", "0.5", "--select", "adabn", "--best_model_path", str(ckpt),
                  "--data", "digits"],                                                             # a CSV given
                 ["--flops", "0.5", "--select", "adabn", "--best_model_path", str(ckpt), "--data", "orl:/nowhere",
                  "--model", "digits_net", "--output", str(tmp_path / "f.yaml")]):                 # face data
        with pytest.raises(SystemExit) as e:
            auto_make_yaml.main(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, (argv, err)
