"""docs/coming_from.md: every row claimed to work for users of the five reference tools (OneFlow channel-pruning
platform, PaddleSlim UnstructuredPruner, the Distiller-fork compression_tool, Prune_Quant, MaskImpt) runs here on
tiny data, seconds each."""
import json
import logging

import numpy as np
import pytest
import torch

import run
from compression_tool.data import readers
from compression_tool.engine.checkpoint import load_model
from compression_tool.io.errors import UserError


def one_line_error(capsys, fn, *args):
    with pytest.raises(SystemExit) as exc:
        fn(*args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def write_json_dataset(folder, side=12, channels=1, classes=3, n=(48, 24), shape=False, seed=0):
    """OneFlow-style train.json/test.json: 'data' N x C*H*W in 0..255, 'label' N, no 'shape' unless asked."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "test"), n):
        y = rng.integers(0, classes, count)
        x = rng.integers(0, 60, (count, channels, side, side)).astype(float)
        for i, c in enumerate(y):                              # class c: a bright band, learnable in one epoch
            x[i, :, c * side // classes:(c + 1) * side // classes, :] += 180
        obj = {"data": x.reshape(count, -1).tolist(), "label": y.tolist()}
        if shape:
            obj["shape"] = [channels, side, side]
        (folder / f"{split}.json").write_text(json.dumps(obj))
    return folder


def pipeline(ws, *args):
    run.main(["--work_space", str(ws), "--epochs", "1", "--refine_epochs", "1", "--no_progress", *args])


# ---------------------------------------------------------------------------------------------- OneFlow: data

@pytest.mark.parametrize("channels,side", [(1, 12), (3, 8)])
def test_json_without_shape_infers_square_images(tmp_path, channels, side):
    write_json_dataset(tmp_path, side=side, channels=channels)
    x, y = readers.read_json_data(tmp_path, "test")
    assert tuple(x.shape) == (24, channels, side, side) and len(y) == 24


def test_json_without_shape_that_is_not_square_is_one_line(tmp_path):
    (tmp_path / "test.json").write_text(json.dumps({"data": [[0] * 10, [1] * 10], "label": [0, 1]}))
    with pytest.raises(UserError, match=r"no 'shape'.*10 values per row.*\"shape\": \[C, H, W\]") as exc:
        readers.read_json_data(tmp_path, "test")
    assert "\n" not in str(exc.value)
    assert readers.infer_square_shape(3 * 32 * 32) == (3, 32, 32)
    assert readers.infer_square_shape(28 * 28) == (1, 28, 28)
    assert readers.infer_square_shape(2 * 16 * 16) is None


def test_run_data_type_name_reads_mydata_and_names_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_json_dataset(tmp_path / "myData" / "shapes")
    pipeline(tmp_path / "ws", "--model", "dnn_2", "--data_type=shapes", "--step=123")
    out = tmp_path / "ws" / "output" / "dnn2" / "shapes"
    for stage in ("model_base", "model_prune", "model_refine"):
        assert (out / stage / "model.pth").is_file()
    assert (tmp_path / "ws" / "log" / "dnn2_shapes_refine.log").is_file()
    _, meta = load_model(out / "model_refine" / "model.pth")
    assert meta["dataset"] == "shapes" and meta["data_type"] == "json"


def test_two_json_datasets_do_not_share_outputs(tmp_path):
    a = write_json_dataset(tmp_path / "setA", seed=1)
    b = write_json_dataset(tmp_path / "setB", seed=2)
    for d in (a, b):
        pipeline(tmp_path / "ws", "--model", "dnn2", "--data_type", "json", "--data_path", str(d), "--step", "1")
    out = tmp_path / "ws" / "output" / "dnn2"
    assert all((out / d / "model_base" / "model.pth").is_file() for d in ("setA", "setB"))


def test_unknown_data_type_name_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, pipeline, tmp_path / "ws", "--data_type", "nosuch")
    assert "myData/<name>/" in err and "train.json" in err


# ---------------------------------------------------------------------------------------------- OneFlow: models

@pytest.mark.parametrize("alias,ours", [("dnn_2", "dnn2"), ("dnn_4", "dnn4"), ("resnet", "resnet20"),
                                        ("resnet100", "resnet_ir100"), ("resnet50", "resnet_ir50")])
def test_reference_model_names_are_aliases_with_a_note(alias, ours, caplog):
    from model_define import registry

    registry._NOTED.discard(alias)
    with caplog.at_level(logging.WARNING, logger="model_define.registry"):
        assert registry.model_spec(alias).name == ours
    notes = [r.getMessage() for r in caplog.records if alias in r.getMessage()]
    assert notes == [f"note: model {alias!r} is called {ours!r} here"]


@pytest.mark.parametrize("model", ["alexnet", "lenet"])
def test_bn_criterion_on_a_model_without_bn_is_refused_before_training(tmp_path, model, capsys):
    ws = tmp_path / "ws"
    err = one_line_error(capsys, pipeline, ws, "--model", model, "--prune_method", "bn", "--data_type", "json",
                         "--data_path", str(write_json_dataset(tmp_path / "d", side=28)))
    assert "no BatchNorm" in err and "l1" in err
    assert not ws.exists()                                     # nothing trained, nothing written


def test_model_too_big_for_the_images_is_one_line(tmp_path, capsys):
    err = one_line_error(capsys, pipeline, tmp_path / "ws", "--model", "alexnet", "--data_type", "json",
                         "--data_path", str(write_json_dataset(tmp_path / "d", side=12)))
    assert "alexnet" in err and "1x12x12" in err


def test_diverging_loss_stops_with_one_line_naming_lr(tmp_path, capsys):
    err = one_line_error(capsys, pipeline, tmp_path / "ws", "--model", "dnn2", "--lr", "1e8", "--epochs", "2",
                         "--step", "1", "--data_type", "json",
                         "--data_path", str(write_json_dataset(tmp_path / "d", side=28, classes=10)))
    assert "NaN" in err and "lower --lr" in err


# ---------------------------------------------------------------------------------------------- compression_tool (fork)

@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Four identities of random 24x24 images, a pair list 'img0 img1 issame' and a DataParallel-style
    MobileFaceNet state_dict at 32x32 (random weights: the commands, not the accuracy, are under test)."""
    from PIL import Image

    from model_define import model_spec

    root = tmp_path_factory.mktemp("fork")
    rng = np.random.default_rng(0)
    names = ["ann", "bob", "cid", "dan"]
    for n in names:
        (root / "faces" / n).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "faces" / n / f"{k}.png")
    lines = [f"{n}/0.png {n}/1.png 1\n{n}/0.png {names[(i + 1) % 4]}/2.png 0" for i, n in enumerate(names)]
    (root / "faces" / "pairs.txt").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    net = model_spec("mobilefacenet").build_for((3, 32, 32))
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, root / "mfn.pth")
    return root


def fork(*args):
    from compression_tool.cli.legacy import main

    main(list(args))


def test_fork_main_py_sa_prune_test_finetune(faces, monkeypatch, capsys, caplog):
    """The fork's README commands, flag for flag (plus --sparsities/--folds to keep them to seconds)."""
    monkeypatch.chdir(faces)
    common = ["--model", "mobilefacenet", "--input_size", "32", "--best_model_path", "mfn.pth", "--from_data_parallel",
              "--test_root_path", "faces", "--img_list_label_path", "faces/pairs.txt", "--data_source", "company",
              "--fpgm", "--folds", "2", "--test_batch_size", "8"]
    with caplog.at_level(logging.WARNING):
        fork("--mode", "sa", *common, "--sparsities", "0,0.5")
    assert "note: --img_list_label_path faces/pairs.txt --data_source company is --data pairs:faces/pairs.txt" \
        in caplog.text
    csv = faces / "work_space" / "sensitivity_data" / "mobilefacenet_fpgm.csv"
    assert csv.read_text().startswith("parameter,sparsity,lfw_acc")
    capsys.readouterr()

    err = one_line_error(capsys, fork, "--mode", "prune", *common, "--save_model_pt")
    assert "--yaml" in err and "auto_make_yaml.py" in err

    from compression_tool.cli.auto_make_yaml import main as auto_make_yaml

    auto_make_yaml([str(csv), "30", "mobilefacenet", "32"])
    yaml = next((faces / "yaml_file").glob("mobilefacenet_*.yaml"))
    fork("--mode", "prune", *common, "--yaml_path", str(yaml), "--save_model_pt", "--cal_flops_and_forward")
    pruned = faces / "work_space" / "pruned_model" / "mobilefacenet.pth"
    assert pruned.is_file() and "thinned checkpoint" in capsys.readouterr().out

    fork("--mode", "test", "--best_model_path", str(pruned), "--test_root_path", "faces",
         "--img_list_label_path", "faces/pairs.txt", "--data_source", "company", "--folds", "2")
    assert "lfw_acc" in capsys.readouterr().out

    fork("--mode", "finetune", "--pruned_checkpoint", str(pruned), "--train_data_path", "faces", "--epoch", "1",
         "--train_batch_size", "4", "--milestones", "1", "--head", "arcface", "--device", "auto",
         "--save_dir", "ft")
    assert list((faces / "ft").glob("*.pth"))


def test_fork_flag_translation_and_refusals(capsys):
    from compression_tool.cli.legacy import translate

    assert translate("sa", ["--test_root_path", "R", "--data_source", "lfw"]) == ["--data", "bin:R/lfw.bin"]
    assert translate("prune", ["--yaml_path=s.yaml", "--rank_path", "x/"]) == ["--yaml", "s.yaml"]
    with pytest.raises(UserError, match="--img_list_label_path"):
        translate("sa", ["--data_source", "company"])
    with pytest.raises(UserError, match="--fp16.*quantization.py"):
        translate("sa", ["--fp16"])
    err = one_line_error(capsys, fork, "--mode", "quantization")
    assert "quantization.py" in err


def test_main_py_is_a_shim(faces):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--mode", "prune", "--best_model_path", "x.pth"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=faces,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --mode prune needs --yaml")


# ---------------------------------------------------------------------------------------------- MaskImpt

@pytest.mark.parametrize("cls_name", ["MaskFPGM", "MaskThiNet", "MaskAPoZ", "MaskFilterNorm"])
@pytest.mark.parametrize("pre_layer", [False, True])
def test_maskimpt_soft_equals_hard(cls_name, pre_layer, capsys):
    from compression_tool.apps.maskimpt import MASKS
    from tests.zoo_util import build_randomised

    model, size = build_randomised("resnet20")
    x = torch.randn(6, *size, generator=torch.Generator().manual_seed(1))
    dense_params = sum(p.numel() for p in model.parameters())
    loader = [(x, torch.zeros(6, dtype=torch.long))]
    mask = MASKS[cls_name](model, pre_layer=pre_layer, rate_dist_per_layer=0.3, input_shape=(1, *size),
                           dataloader=loader)
    mask.make()
    steps = 0
    while mask.do_mask():          # one-shot: one step; pre_layer: one step per group
        steps += 1
        if not pre_layer:
            break
    assert steps == (len(mask.pruner.index.groups) if pre_layer else 1)
    assert not mask.do_mask() if not pre_layer else True
    zeros = mask.if_zero()
    assert max(zeros.values()) > 0.2 and "% of channels zero" in capsys.readouterr().out
    assert sum(p.numel() for p in model.parameters()) == dense_params          # soft: same size
    with torch.no_grad():
        soft = model(x)
        pruned = mask.generate_pruned_model()
        hard = pruned(x)
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * dense_params
    assert (soft - hard).abs().max().item() <= 1e-4


def test_maskimpt_per_layer_rates_and_order_errors():
    from compression_tool.apps.maskimpt import MaskFilterNorm
    from tests.zoo_util import build_randomised

    model, size = build_randomised("resnet20")
    mask = MaskFilterNorm(model, rate_dist_per_layer={"conv1": 0.5}, input_shape=(1, *size))
    with pytest.raises(UserError, match="make"):
        mask.do_mask()
    mask.make().do_mask()
    zeros = mask.if_zero()
    assert zeros["conv1"] == 0.5 and zeros["layer1.0.conv1"] == 0.0
    with pytest.raises(UserError, match="input_shape"):
        MaskFilterNorm(model, input_shape=(3, 32, 32))


# ---------------------------------------------------------------------------------------------- PaddleSlim

def _pointwise_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1),
                               torch.nn.Flatten(), torch.nn.LazyLinear(5))


def test_paddleslim_prune_params_type_conv1x1_only():
    from compression_tool.engine.unstructured import UnstructuredPruner

    model = _pointwise_net()
    model(torch.zeros(1, 3, 6, 6))
    pruner = UnstructuredPruner(model, mode="ratio", ratio=0.5, prune_params_type="conv1x1_only")
    assert sorted(pruner.params) == ["3.weight", "5.weight"]
    pruner.step()
    assert (model[0].weight != 0).all() and (model[3].weight == 0).float().mean() > 0.3
    with pytest.raises(UserError, match="conv1x1_only"):
        UnstructuredPruner(model, prune_params_type="conv3x3")


def test_paddleslim_skip_params_func_may_return_layer_names():
    from compression_tool.engine.unstructured import UnstructuredPruner, default_skip_params

    model = _pointwise_net()
    model(torch.zeros(1, 3, 6, 6))
    pruner = UnstructuredPruner(model, skip_params_func=lambda m: default_skip_params(m) | {"0", "7"})
    assert sorted(pruner.params) == ["3.weight", "5.weight"]
    with pytest.raises(UserError, match="unknown"):
        UnstructuredPruner(model, skip_params_func=lambda m: ["nosuch"])


def test_paddleslim_summarize_weights_gives_the_threshold_for_a_ratio():
    from compression_tool.engine.unstructured import UnstructuredPruner

    model = _pointwise_net()
    model(torch.zeros(1, 3, 6, 6))
    thr = UnstructuredPruner.summarize_weights(model, 0.4)
    pruner = UnstructuredPruner(model, mode="threshold", threshold=thr)
    pruner.step()
    assert pruner.sparsity() == pytest.approx(0.4, abs=0.01)


def test_paddleslim_sparse_checkpoint_reads_in_evaluate_and_pruning(tmp_path, capsys):
    from compression_tool.cli.evaluate import main as evaluate
    from compression_tool.cli.train_sparse import main as train_sparse

    train_sparse(["--no_progress", "--model_path", str(tmp_path), "--dense_epochs", "0", "--pruning_mode", "ratio",
                  "--ratio", "0.7", "--num_epochs", "1", "--batch_size", "128"])
    ckpt = tmp_path / "epoch_1.pth"
    from compression_tool.engine.unstructured import weight_sparsity

    model, _ = load_model(ckpt)                          # the sparse format, decoded to dense tensors
    assert weight_sparsity(model) == pytest.approx(0.7, abs=0.01)
    capsys.readouterr()
    evaluate(["--best_model_path", str(ckpt), "--data", "digits"])
    assert "top1" in capsys.readouterr().out
    from compression_tool.cli.pruning import main as pruning

    pruning(["--mode", "sa", "--best_model_path", str(ckpt), "--sparsities", "0,0.5", "--eval_batches", "1",
            "--output", str(tmp_path / "sa.csv")])
    assert (tmp_path / "sa.csv").read_text().startswith("parameter,sparsity,top1")


def test_oneflow_device_flags_single_device_noted_more_refused(tmp_path, capsys, caplog):
    data = str(write_json_dataset(tmp_path / "d"))
    with caplog.at_level(logging.WARNING):
        pipeline(tmp_path / "ws", "--model", "dnn2", "--data_type", "json", "--data_path", data, "--step", "1",
                 "--gpu_num_per_node", "1", "--num_nodes=1", "--batch_size_per_device", "16", "--num_epochs", "1",
                 "--learning_rate", "0.01")
    assert "note: --gpu_num_per_node 1 is not needed here" in caplog.text
    assert "note: --batch_size_per_device is --batch_size here" in caplog.text
    for flag, value in (("--gpu_num_per_node", "4"), ("--num_nodes", "2"), ("--node_ips", "10.0.0.1,10.0.0.2")):
        err = one_line_error(capsys, pipeline, tmp_path / "ws2", flag, value)
        assert "not supported yet" in err and "torchrun" in err


def test_maskimpt_handles_modulelist_models():
    from compression_tool.apps.maskimpt import MaskFPGM

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleList([torch.nn.Conv2d(3, 8, 3, padding=1),
                                              torch.nn.Conv2d(8, 8, 3, padding=1)])
            self.bns = torch.nn.ModuleList([torch.nn.BatchNorm2d(8), torch.nn.BatchNorm2d(8)])
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            for conv, bn in zip(self.convs, self.bns):
                x = torch.relu(bn(conv(x)))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    mask = MaskFPGM(model, rate_dist_per_layer=0.5, input_shape=(1, 3, 8, 8))
    mask.make().do_mask()
    with torch.no_grad():
        soft = model(x)
    hard = mask.generate_pruned_model()(x)
    assert model.convs[0].out_channels == 4 and (soft - hard).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------- the document

def _parsers():
    from compression_tool.cli import auto_make_yaml, evaluate, finetune, pruning, quantization, run, train_sparse

    return {"python run.py": run.build_parser, "python pruning.py --mode sa": pruning.sa_parser,
            "python pruning.py --mode prune": pruning.prune_parser,
            "python pruning.py --mode search": pruning.search_parser,
            "python pruning.py --mode finetune": finetune.build_parser, "python -m train_module": finetune.build_parser,
            "python -m test_module.evaluate": evaluate.build_parser,
            "python quantization.py": quantization.build_parser,
            "python train_module/train_sparse.py": train_sparse.build_parser,
            "python pruning_analysis_tools/auto_make_yaml.py": auto_make_yaml.build_parser}


def test_every_command_of_the_document_uses_flags_its_parser_has():
    import re

    from tests.conftest import ROOT

    text = (ROOT / "docs" / "coming_from.md").read_text()
    parsers = _parsers()
    checked = 0
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 3 or set(cells[0]) <= set("-"):
            continue
        for cmd in re.findall(r"`(python [^`]+)`", cells[1]):
            cmd = cmd.replace("…", "")
            prefix = max((p for p in parsers if cmd.startswith(p)), key=len, default=None)
            if prefix is None:
                assert cmd.startswith("python main.py --mode "), cmd
                continue
            options = parsers[prefix]()._option_string_actions
            flags = [t.split("=")[0] for t in cmd[len(prefix):].split() if t.startswith("--")]
            unknown = [f for f in flags if f not in options and f != "--mode"]
            assert not unknown, f"{cmd}: {unknown}"
            checked += 1
    assert checked >= 30


def test_readme_links_the_document():
    from tests.conftest import ROOT

    assert "docs/coming_from.md" in (ROOT / "README.md").read_text()


# ---------------------------------------------------------------------------------------------- Prune_Quant

def test_prune_quant_search_schedule_prune_then_lsq_dfp_fold(tmp_path, capsys):
    """ABC rate search -> best_candidates_prune + schedule -> thinned model -> LSQ bits / Ristretto / merge BN
    (random weights and a handful of batches: the commands, not the numbers, are under test)."""
    from compression_tool.cli.pruning import main as pruning
    from compression_tool.cli.quantization import main as quantization
    from compression_tool.io.files import atomic_torch_save
    from tests.zoo_util import build_randomised

    model, _ = build_randomised("digits_net")
    ckpt = atomic_torch_save({"state_dict": model.state_dict()}, tmp_path / "base.pth")
    schedule = tmp_path / "abc.yaml"
    pruning(["--mode", "search", "--algo", "abc", "--flops", "0.5", "--model", "digits_net", "--best_model_path",
             str(ckpt), "--population", "2", "--iterations", "1", "--eval_batches", "1", "--search_batches", "1",
             "--output", str(schedule)])
    assert "best_candidates_prune=[" in capsys.readouterr().out and schedule.is_file()
    pruned = tmp_path / "pruned.pth"
    pruning(["--mode", "prune", "--best_model_path", str(ckpt), "--model", "digits_net", "--yaml", str(schedule),
             "--save_model_pt", "--output", str(pruned), "--eval_batches", "1"])
    common = ["--pruned_model", str(pruned), "--out_dir", str(tmp_path / "q"), "--train_batches", "2",
              "--calib_batches", "1", "--search_batches", "1", "--eval_batches", "1", "--threads", "1"]
    capsys.readouterr()
    quantization(["--mode", "lsq", *common, "--avg_bit_weights", "4", "--avg_bit_fm", "6", "--epochs", "0"])
    out = capsys.readouterr().out
    assert "w_bit=[" in out and "a_bit=[" in out
    quantization(["--mode", "dfp", *common])
    assert "fl_w=[" in capsys.readouterr().out
    quantization(["--mode", "fold", *common])
    assert "folded" in capsys.readouterr().out
