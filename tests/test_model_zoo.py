"""Every registered model builds and runs; face models adapt to other input sizes; checkpoint loading errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from model_define import get_model, list_models, model_spec
from model_define.resnet_cifar import PadShortcut

BIG_IR = {n for n in list_models() if n.startswith("resnet_ir") and not n.endswith("18")}


@pytest.mark.parametrize("name", sorted(set(list_models()) - BIG_IR))
def test_model_builds_and_forwards_at_default_input(name):
    spec = model_spec(name)
    kw = {"embedding_size": 64} if spec.kind == "embedder" else {"num_classes": 7}
    torch.manual_seed(0)
    model = spec.build(**kw).eval()
    x = torch.randn(2, *spec.input_size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 64 if spec.kind == "embedder" else 7)
    assert torch.isfinite(y).all()
    assert not torch.allclose(y[0], y[1]), "different inputs should give different outputs"


@pytest.mark.parametrize("name", sorted(BIG_IR))
def test_deep_resnet_ir_single_forward_small_input(name):
    model = get_model(name, input_size=(32, 32)).eval()      # small input keeps the flatten Linear small
    assert model.output_layer[3].in_features == 512 * 2 * 2
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 512)


@pytest.mark.parametrize("size", [(112, 96), (112, 112), (56, 48)])
def test_mobilefacenet_input_sizes(size):
    model = get_model("mobilefacenet", input_size=size).eval()
    assert model.linear7.conv.kernel_size == ((size[0] + 15) // 16, (size[1] + 15) // 16)
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 128)


@pytest.mark.parametrize("size", [(112, 96), (144, 122), (56, 56)])  # 112x112: the default-input test
def test_resnet_ir_input_sizes(size):
    model = get_model("resnet_irse18" if size == (144, 122) else "resnet_ir18", input_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 512)


def test_resnet_ir_rejects_mismatched_input():
    model = get_model("resnet_ir18", input_size=(32, 32)).eval()
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 48, 48))


def test_in_channels_and_small_inputs():
    with torch.no_grad():
        assert get_model("resnet20", in_channels=1)(torch.randn(2, 1, 16, 16)).shape == (2, 10)
        assert get_model("lenet5", in_channels=3, input_size=(32, 32))(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert get_model("dnn2", input_size=(16, 16))(torch.randn(2, 1, 16, 16)).shape == (2, 10)
        big = get_model("mobilenet_v2", input_size=(96, 96)).eval()   # ImageNet strides from 96 px up
        assert big.features[0][0].stride == (2, 2)
        assert big(torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_embedders_and_classifiers_are_labelled():
    assert model_spec("mobilefacenet").kind == "embedder"
    assert model_spec("resnet_ir50").kind == "embedder" and model_spec("resnet_ir50").input_size == (3, 112, 112)
    assert model_spec("resnet20").kind == "classifier" and model_spec("resnet20").input_size == (3, 32, 32)


def test_pad_shortcut_subsamples_and_zero_pads():
    sc = PadShortcut(4, 8, stride=2)
    x = torch.randn(1, 4, 6, 6)
    y = sc(x)
    assert y.shape == (1, 8, 3, 3)
    assert sc.pad_front == 2 and sc.pos.tolist() == [2, 3, 4, 5]
    assert torch.equal(y[:, 2:6], x[:, :, ::2, ::2])
    assert y[:, :2].abs().sum() == 0 and y[:, 6:].abs().sum() == 0


def test_cifar_resnet_blocks_use_named_shortcut_modules():
    model = get_model("resnet56")
    shortcuts = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2 and [(s.planes_in, s.planes_out) for s in shortcuts] == [(16, 32), (32, 64)]
    assert not any(type(m).__name__ == "LambdaLayer" for m in model.modules())
    assert isinstance(model.layer1[0].shortcut, nn.Identity)


# --- checkpoint loading (compression_tool.io.checkpoint) ---------------------------------------------------

from compression_tool.engine.checkpoint import load_model  # noqa: E402
from compression_tool.io.checkpoint import load_weights, read_checkpoint, strip_prefix  # noqa: E402
from compression_tool.io.errors import UserError  # noqa: E402


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_read_checkpoint_unwraps_known_keys_and_keeps_meta(tmp_path):
    sd = get_model("lenet5").state_dict()
    for key in ("state_dict", "net_state_dict", "model_state_dict", "model"):
        got, meta = read_checkpoint(_save({key: sd, "epoch": 3}, tmp_path / f"{key}.pth"))
        assert set(got) == set(sd) and meta == {"epoch": 3}
    got, meta = read_checkpoint(_save(sd, tmp_path / "bare.pth"))
    assert set(got) == set(sd) and meta == {}


def test_read_checkpoint_rejects_non_checkpoints(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="notes.txt: not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="no weights found"):
        read_checkpoint(_save({"epoch": 1, "lr": 0.1}, tmp_path / "meta_only.pth"))
    with pytest.raises(UserError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.pth")


def test_load_weights_data_parallel_prefix(tmp_path):
    src = get_model("resnet20", num_classes=4)
    wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = _save({"state_dict": wrapped, "best_prec1": 90.0}, tmp_path / "dp.th")
    with pytest.raises(UserError) as err:
        load_model(path, "resnet20", num_classes=4)
    msg = str(err.value)
    assert "\n" not in msg and "dp.th" in msg and "--from_data_parallel" in msg and "module.conv1.weight" in msg
    model, _ = load_model(path, "resnet20", from_data_parallel=True, num_classes=4)
    assert not model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src.eval()(x))


def test_load_weights_wrong_architecture_names_counts_and_keys():
    sd = get_model("resnet20").state_dict()
    with pytest.raises(UserError) as err:
        load_weights(get_model("resnet32"), sd, "r20.pth")
    msg = str(err.value)
    assert msg.startswith("r20.pth:") and "missing" in msg and "layer1.3." in msg
    assert "--from_data_parallel" not in msg


def test_load_weights_shape_mismatch_names_key_and_shapes():
    sd = get_model("mobilefacenet").state_dict()
    with pytest.raises(UserError, match=r"linear7\.conv\.weight.*\(512, 1, 7, 6\).*\(512, 1, 7, 7\)"):
        load_weights(get_model("mobilefacenet", input_size=(112, 112)), sd, "mfn.ckpt")


def test_load_weights_accepts_old_checkpoints_without_num_batches_tracked():
    sd = {k: v for k, v in get_model("lenet5").state_dict().items() if "num_batches_tracked" not in k}
    load_weights(get_model("lenet5"), sd, "old.pth")
    sd_bn = {k: v for k, v in get_model("resnet20").state_dict().items() if "num_batches_tracked" not in k}
    load_weights(get_model("resnet20"), sd_bn, "old_bn.pth")


def test_strip_prefix_only_touches_prefixed_keys():
    t = torch.zeros(1)
    assert list(strip_prefix({"module.a": t, "b": t, "x.module.c": t})) == ["a", "b", "x.module.c"]


def test_build_for_wants_c_h_w():
    """(H, W) where (C, H, W) is meant: one clear line, not an error from deep inside the model."""
    from compression_tool.io.errors import UserError

    assert model_spec("mobilefacenet").build_for((3, 56, 48)).linear7.conv.kernel_size == (4, 3)
    with pytest.raises(UserError, match=r"model mobilefacenet: input_size must be \(C, H, W\).*got \(112, 96\)"):
        model_spec("mobilefacenet").build_for((112, 96))
