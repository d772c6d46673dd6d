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
    model = get_model(name, input_size=(56, 56)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 56, 56)).shape == (1, 512)


@pytest.mark.parametrize("size", [(112, 96), (112, 112), (56, 48)])
def test_mobilefacenet_input_sizes(size):
    model = get_model("mobilefacenet", input_size=size).eval()
    assert model.linear7.conv.kernel_size == ((size[0] + 15) // 16, (size[1] + 15) // 16)
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 128)


@pytest.mark.parametrize("size", [(112, 112), (112, 96), (144, 122), (56, 56)])
def test_resnet_ir_input_sizes(size):
    model = get_model("resnet_irse18" if size == (144, 122) else "resnet_ir18", input_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 512)


def test_resnet_ir_rejects_mismatched_input():
    model = get_model("resnet_ir18").eval()
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 96, 96))


def test_in_channels_and_small_inputs():
    with torch.no_grad():
        assert get_model("resnet20", in_channels=1)(torch.randn(2, 1, 16, 16)).shape == (2, 10)
        assert get_model("lenet5", in_channels=3, input_size=(32, 32))(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert get_model("dnn2", input_size=(16, 16))(torch.randn(2, 1, 16, 16)).shape == (2, 10)
        big = get_model("mobilenet_v2", input_size=(128, 128)).eval()
        assert big(torch.randn(1, 3, 128, 128)).shape == (1, 10)


def test_embedders_and_classifiers_are_labelled():
    assert model_spec("mobilefacenet").kind == "embedder"
    assert model_spec("resnet_ir50").kind == "embedder" and model_spec("resnet_ir50").input_size == (3, 112, 112)
    assert model_spec("resnet20").kind == "classifier" and model_spec("resnet20").input_size == (3, 32, 32)


def test_pad_shortcut_subsamples_and_zero_pads():
    sc = PadShortcut(4, 8, stride=2)
    x = torch.randn(1, 4, 6, 6)
    y = sc(x)
    assert y.shape == (1, 8, 3, 3)
    assert (sc.pad_front, sc.pad_back) == (2, 2)
    assert torch.equal(y[:, 2:6], x[:, :, ::2, ::2])
    assert y[:, :2].abs().sum() == 0 and y[:, 6:].abs().sum() == 0


def test_cifar_resnet_blocks_use_named_shortcut_modules():
    model = get_model("resnet56")
    shortcuts = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2 and [(s.planes_in, s.planes_out) for s in shortcuts] == [(16, 32), (32, 64)]
    assert not any(type(m).__name__ == "LambdaLayer" for m in model.modules())
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
