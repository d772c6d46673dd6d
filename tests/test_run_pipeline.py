"""run.py: the three steps run separately and reuse what the earlier ones saved; logs; data formats; errors."""
import gzip
import json
import re
import struct

import numpy as np
import pytest
import torch

import run
from compression_tool.apps.pipeline import parse_steps
from compression_tool.engine.checkpoint import example_input, load_model
from compression_tool.engine.cost import params_and_macs
from compression_tool.engine.strategies import global_counts


def cli(ws, *args):
    run.main(["--work_space", str(ws), "--epochs", "1", "--refine_epochs", "1", "--no_progress", *args])


def epoch_lines(path):
    return [ln for ln in path.read_text().splitlines() if ln.startswith("epoch=")]


def test_steps_separately_reuse_saved_outputs(tmp_path, capsys):
    ws = tmp_path / "ws"
    out = ws / "output" / "digits_net" / "digits"
    cli(ws, "--step", "1")
    base = out / "model_base" / "model.pth"
    assert base.exists() and not (out / "model_prune").exists()
    line = epoch_lines(ws / "log" / "digits_net_digits_base.log")[-1]
    assert re.fullmatch(r"epoch=1 top1=[\d.]+ top5=[\d.]+ loss=[\d.]+ train_img_per_s=[\d.]+ eval_img_per_s=[\d.]+",
                        line)
    base_bytes = base.read_bytes()

    cli(ws, "--step", "2", "--prune_method", "l1", "--percent", "0.5")
    assert base.read_bytes() == base_bytes                        # step 2 read step 1's model, did not redo it
    base_model, _ = load_model(base)
    pruned, meta = load_model(out / "model_prune" / "model.pth")
    x = example_input(meta["input_size"])
    assert params_and_macs(pruned, x)["macs"] < 0.6 * params_and_macs(base_model, x)["macs"]
    assert "after/before" in (ws / "log" / "digits_net_digits_prune.log").read_text()

    cli(ws, "--step", "3")
    refined, rmeta = load_model(out / "model_refine" / "model.pth")
    assert [p.shape for p in refined.parameters()] == [p.shape for p in pruned.parameters()]
    assert not torch.equal(next(refined.parameters()), next(pruned.parameters()))   # it trained
    assert len(epoch_lines(ws / "log" / "digits_net_digits_refine.log")) == 1
    summaries = capsys.readouterr().out
    assert "step 1 (train base)" in summaries and "step 3 (fine-tune)" in summaries
    assert rmeta["metrics"]["top1"] > 50                          # the pipeline learns digits


def test_later_step_without_earlier_output_names_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(tmp_path, "--step", "3")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "model_prune/model.pth" in err and "--step 2" in err


def test_rerun_refuses_to_clobber_before_training(tmp_path, capsys):
    base = tmp_path / "output" / "digits_net" / "digits" / "model_base" / "model.pth"
    base.parent.mkdir(parents=True)
    base.write_bytes(b"earlier run")
    with pytest.raises(SystemExit):
        cli(tmp_path, "--step", "1")
    assert "--force" in capsys.readouterr().err and base.read_bytes() == b"earlier run"
    assert not (tmp_path / "log").exists()                        # failed before any training


def test_missing_mnist_gives_one_line_with_the_expected_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(tmp_path, "--model", "lenet", "--data_type", "mnist", "--data_path", str(tmp_path / "nope"), "--step", "1")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert str(tmp_path / "nope" / "train-images-idx3-ubyte.gz") in err


def _idx(path, arr: np.ndarray) -> None:
    code = {np.uint8: 0x08}[arr.dtype.type]
    head = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(head + arr.tobytes()))


def test_mnist_idx_and_json_data_train_lenet(tmp_path):
    rng = np.random.default_rng(0)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for prefix, n in (("train", 64), ("t10k", 32)):
        _idx(mnist / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(mnist / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    cli(tmp_path / "ws", "--model", "lenet", "--data_type", "mnist", "--data_path", str(mnist), "--step", "12")
    _, meta = load_model(tmp_path / "ws" / "output" / "lenet5" / "mnist" / "model_prune" / "model.pth")
    assert meta["input_size"] == [1, 28, 28] and meta["model_kwargs"] == {"num_classes": 10}

    js = tmp_path / "json"
    js.mkdir()
    for split, n in (("train", 40), ("test", 12)):
        data = rng.integers(0, 256, (n, 3 * 12 * 12)).tolist()
        (js / f"{split}.json").write_text(json.dumps({"data": data, "label": rng.integers(0, 3, n).tolist(),
                                                      "shape": [3, 12, 12]}))
    cli(tmp_path / "ws", "--model", "lenet", "--data_type", "json", "--data_path", str(js), "--step", "1")
    model, meta = load_model(tmp_path / "ws" / "output" / "lenet5" / "json" / "model_base" / "model.pth")
    assert meta["input_size"] == [3, 12, 12] and model(torch.zeros(2, 3, 12, 12)).shape == (2, 3)


def test_global_threshold_counts():
    channels = [4, 4, 2]
    scores = [torch.tensor([0.1, 0.9, 0.2, 0.8]), torch.tensor([0.5, 0.6, 0.7, 0.05]), torch.tensor([0.01, 0.02])]
    # raw scores (BN gammas): the 5 lowest of 10 are 0.01, [0.02: group 2 keeps one], 0.05, 0.1, 0.2, 0.5
    assert global_counts(channels, scores, 0.5, max_ratio=1.0, normalise=False) == [2, 2, 1]
    assert global_counts(channels, scores, 0.0, normalise=False) == [0, 0, 0]
    # normalised by each group's mean |score|: 0.05 (0.11 of group 1's mean), then 0.1 and 0.2 (0.2, 0.4 of group
    # 0's); group 2's 0.01 is 0.67 of its mean and stays
    assert global_counts(channels, scores, 0.3, max_ratio=1.0) == [2, 1, 0]


@pytest.mark.parametrize("text", ["", "4", "1a", "abc"])
def test_bad_steps(text):
    with pytest.raises(Exception, match="--step"):
        parse_steps(text)
