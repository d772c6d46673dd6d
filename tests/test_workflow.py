"""The core workflow through its CLIs: sa -> CSV (resumable) -> auto_make_yaml -> prune -> reload; bad input."""
import csv
import subprocess
import sys

import pytest
import torch

import pruning
from compression_tool.cli import auto_make_yaml
from compression_tool.engine import schedule as rules
from compression_tool.engine.checkpoint import load_model
from compression_tool.engine.sensitivity import load_csv
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A briefly trained digits_net (a few Adam steps: enough for a meaningful metric)."""
    import model_define as md
    from compression_tool.data.digits import digits_loaders
    torch.manual_seed(0)
    train, _ = digits_loaders(batch_size=64)
    m = md.get_model("digits_net")
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(2):
        for x, y in train:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    p = tmp_path_factory.mktemp("ck") / "digits_net.pth"
    torch.save({"state_dict": m.state_dict()}, p)
    return p


def sa(ckpt, out, *extra):
    pruning.main(["--mode", "sa", "--model", "digits_net", "--best_model_path", str(ckpt), "--output", str(out),
                  "--sparsities", "0,0.25,0.5,0.75", "--eval_batches", "3", *extra])


def test_sensitivity_csv_shape_and_resume(ckpt, tmp_path):
    out = tmp_path / "sa.csv"
    sa(ckpt, out)
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["parameter", "sparsity", "top1", "top5", "loss"]
    assert [r[1] for r in rows[1:5]] == ["0", "0.25", "0.5", "0.75"]  # rounded, no 0.30000000000000004
    layers = [r[0] for r in rows[1::4]]
    assert layers == ["stem.0.weight", "block.conv1.weight", "down.0.weight", "fc1.weight"]
    # an interrupted run: drop the last 5 rows, leave a torn line; resuming redoes exactly those rows
    full = out.read_text().splitlines()
    out.write_text("\n".join(full[:-5]) + "\nfc1.weight,0.2")
    sa(ckpt, out)
    _, data = load_csv(out)
    assert sum(len(v) for v in data.values()) == 16
    again = {(r[0], r[1]): r[2:] for r in csv.reader(open(out))}
    assert again == {(r[0], r[1]): r[2:] for r in csv.reader(full)}  # the redone rows match the first run


def test_cache_gives_identical_csv(ckpt, tmp_path):
    sa(ckpt, tmp_path / "a.csv")
    sa(ckpt, tmp_path / "b.csv", "--no_cache")
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def write_csv(path, rows):
    path.write_text("parameter,sparsity,top1,top5,loss\n" + "".join(f"{a},{b},{c},99,0.1\n" for a, b, c in rows))
    return path


def test_auto_make_yaml_rules(tmp_path):
    # conv1: closest to 90 is 0.4 (89.9); highest level at least that good is 0.6 (90.2)
    rows = [("conv1.weight", s, v) for s, v in [(0, 95), (0.2, 93), (0.4, 89.9), (0.6, 90.2), (0.8, 70)]]
    rows += [("conv2.weight", s, v) for s, v in [(0, 95), (0.2, 94), (0.4, 91), (0.6, 89), (0.8, 80)]]
    _, data = load_csv(write_csv(tmp_path / "s.csv", rows))
    assert rules.choose_sparsities(data, "top1", 90, "closest") == {"conv1.weight": 0.6, "conv2.weight": 0.4}
    strict = rules.choose_sparsities(data, "top1", 90.1, "strict")
    assert strict == {"conv1.weight": 0.6, "conv2.weight": 0.4}
    assert rules.pick_level(data["conv2.weight"], "top1", 96, "strict") == 0.0


def test_chain_prune_and_reload(ckpt, tmp_path):
    out = tmp_path / "sa.csv"
    sa(ckpt, out)
    _, data = load_csv(out)
    base = data["stem.0.weight"][0][1]["top1"]
    yml = tmp_path / "s.yaml"
    auto_make_yaml.main([str(out), str(base - 5), "digits_net", "1,16,16", "--output", str(yml)])
    text = yml.read_text()
    assert "L1RankedStructureParameterPruner" in text and "net_thinner" in text
    pt = tmp_path / "pruned.pth"
    argv = ["--mode", "prune", "--model", "digits_net", "--best_model_path", str(ckpt), "--yaml", str(yml),
            "--save_model_pt", "--output", str(pt), "--work_space", str(tmp_path / "ws"), "--eval_batches", "3"]
    pruning.main(argv)
    model, meta = load_model(pt)
    assert meta["keep"] and pt.with_suffix(".keep.json").exists()          # named after the checkpoint
    assert meta["metrics"]["after"]["macs"] < meta["metrics"]["before"]["macs"]
    x = torch.randn(3, 1, 16, 16)
    assert model(x).shape == (3, 10)
    # the checkpoint is not clobbered without --force
    before = pt.read_bytes()
    with pytest.raises(SystemExit) as e:
        pruning.main(argv)
    assert e.value.code == 2 and pt.read_bytes() == before
    # prune the thinned model again: both rounds replay on reload
    pt2 = tmp_path / "pruned2.pth"
    yml2 = tmp_path / "s2.yaml"
    yml2.write_text("version: 1\npruners:\n  p:\n    class: FPGMStructureParameterPruner\n"
                    "    desired_sparsity: 0.5\n    weights: [module.down.0.weight]\n")
    pruning.main(["--mode", "prune", "--best_model_path", str(pt), "--yaml", str(yml2), "--save_model_pt",
                  "--output", str(pt2), "--work_space", str(tmp_path / "ws"), "--eval_batches", "1"])
    m2, meta2 = load_model(pt2)
    assert len(meta2["keep"]) == 2 and m2.down[0].out_channels < model.down[0].out_channels


def run_cli(*args):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stderr.strip()


@pytest.mark.parametrize("case", ["unknown_model", "missing_layer", "bad_yaml", "bad_sparsity", "no_ckpt",
                                  "wrong_keys"])
def test_bad_input_one_line(ckpt, tmp_path, case):
    yml = tmp_path / "s.yaml"
    args = ["pruning.py", "--mode", "prune", "--model", "digits_net", "--best_model_path", str(ckpt),
            "--yaml", str(yml)]
    yml.write_text("pruners:\n  p:\n    class: L1RankedStructureParameterPruner\n    desired_sparsity: 0.5\n"
                   "    weights: [stem.0.weight]\n")
    expect = {"unknown_model": "unknown model", "missing_layer": "no.such.weight", "bad_yaml": "malformed YAML",
              "bad_sparsity": "[0, 1)", "no_ckpt": "no such checkpoint", "wrong_keys": "keys do not match"}[case]
    if case == "unknown_model":
        args[4] = "resnet9000"
    elif case == "missing_layer":
        yml.write_text(yml.read_text().replace("stem.0.weight", "no.such.weight"))
    elif case == "bad_yaml":
        yml.write_text("pruners: [unclosed\n")
    elif case == "bad_sparsity":
        yml.write_text(yml.read_text().replace("0.5", "1.5"))
    elif case == "no_ckpt":
        args[6] = str(tmp_path / "missing.pth")
    elif case == "wrong_keys":
        args[4] = "lenet5"
    code, err = run_cli(*args)
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err and err.splitlines()[-1] == errors[0], err
    assert expect in errors[0], err


def test_csv_and_target_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,level\nx,1\n")
    code, err = run_cli("pruning_analysis_tools/auto_make_yaml.py", str(bad), "90", "digits_net", "16")
    assert code == 2 and "not a sensitivity CSV" in err and "Traceback" not in err
    good = write_csv(tmp_path / "g.csv", [("a.weight", 0, 90), ("a.weight", 0.5, 80)])
    code, err = run_cli("pruning_analysis_tools/auto_make_yaml.py", str(good), "95", "digits_net", "16")
    assert code == 2 and "baseline" in err
    code, err = run_cli("pruning.py", "--mode", "sa", "--model", "digits_net", "--best_model_path", "x",
                        "--sparsities", "0,1.2")
    assert code == 2 and "[0, 1)" in err
    code, _ = run_cli("pruning_analysis_tools/auto_make_yaml.py", str(good), "85", "digits_net", "16",
                      "--output", str(tmp_path / "o.yaml"))
    assert code == 0
    code, err = run_cli("pruning_analysis_tools/auto_make_yaml.py", str(good), "85", "digits_net", "16",
                        "--output", str(tmp_path / "o.yaml"))
    assert code == 2 and "--force" in err
