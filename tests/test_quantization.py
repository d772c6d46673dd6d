"""Quantization: exact BN folding (both orders), 8-bit fake-quant vs fp32, LSQ gradients, ONNX int8 vs
fake-quant, bit search under a budget, dynamic fixed point, histograms, CLI errors."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.engine.quant import bit_search, lsq
from compression_tool.engine.quant.bn_fold import count_bn, fold_bn, fold_bn_before, max_output_diff
from compression_tool.engine.quant.fixed_point import dynamic_fixed_point, fractional_length
from compression_tool.engine.quant.ptq_onnx import OrtModule, export_onnx, ort_session, ptq_fake_quant, quantize_onnx
from compression_tool.engine.quant.qmodules import input_batches, quant_layer_names
from compression_tool.io.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FOLD_TOL = 1e-4
ZOO_TOL = 0.1       # relative L2 output error of 8-bit fake-quant (measured 0.01-0.05 on the small zoo)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (fresh BNs are the identity and would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return model.eval()


class BnFirst(nn.Module):
    """BN -> conv blocks: 1x1 conv, 3x3 grouped conv without padding, 3x3 conv with replicate / zero padding."""

    def __init__(self, padding_mode: str = "zeros", pad: int = 1):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(4)
        self.conv0 = nn.Conv2d(4, 6, 1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(6, 4, 3, padding=0, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=pad, padding_mode=padding_mode)

    def forward(self, x):
        return self.conv2(self.bn2(torch.relu(self.conv1(self.bn1(self.conv0(self.bn0(x)))))))


class Head(nn.Module):
    """ResNet-IR style output: BN2d -> Dropout -> Flatten -> Linear -> BN1d; plus a conv used twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_shared = nn.BatchNorm2d(4)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.4)
        self.fc = nn.Linear(4 * 5 * 5, 8)
        self.bn1d = nn.BatchNorm1d(8)

    def forward(self, x):
        y = self.conv(x)
        y = self.bn_shared(y) + y                 # conv output used twice: its BN must not be folded
        return self.bn1d(self.fc(torch.flatten(self.drop(self.bn(y)), 1)))


def test_fold_conv_bn_digits_net_exact():
    from model_define import get_model
    model = randomize_bn(get_model("digits_net"))
    folded, report = fold_bn(model)
    x = [torch.randn(8, 1, 16, 16)]
    assert count_bn(model) == 4 and count_bn(folded) == 0 and len(report.folded) == 4
    assert max_output_diff(model, folded, x) <= FOLD_TOL
    assert count_bn(model) == 4          # the original is untouched


def test_fold_bn_first_without_zero_padding_is_exact():
    model = randomize_bn(BnFirst(padding_mode="replicate"))
    folded, report = fold_bn(model)
    orders = {bn: order for _, bn, order in report.folded}
    assert orders == {"bn0": "bn-conv", "bn1": "conv-bn", "bn2": "bn-conv"}
    assert count_bn(folded) == 0
    assert max_output_diff(model, folded, [torch.randn(2, 4, 9, 9)]) <= FOLD_TOL


def test_bn_first_before_zero_padded_conv_is_left_and_would_be_wrong():
    model = randomize_bn(BnFirst(padding_mode="zeros"))
    folded, report = fold_bn(model)
    assert [bn for bn, _ in report.skipped] == ["bn2"] and "zero padding" in report.skipped[0][1]
    x = torch.randn(2, 4, 9, 9)
    assert max_output_diff(model, folded, [x]) <= FOLD_TOL
    # forcing the fold changes exactly the border outputs, which is why it is refused
    forced = copy.deepcopy(model)
    fold_bn_before(forced.bn2, forced.conv2)
    forced.bn2 = nn.Identity()
    with torch.no_grad():
        diff = (forced(x) - model(x)).abs()
    assert diff[..., 1:-1, 1:-1].max() <= FOLD_TOL
    assert diff[..., 0, :].max() > 1e-2


def test_fold_bn_through_flatten_and_linear_bn1d_but_not_shared_conv():
    model = randomize_bn(Head())
    folded, report = fold_bn(model)
    pairs = {(layer, bn, order) for layer, bn, order in report.folded}
    assert pairs == {("fc", "bn", "bn-conv"), ("fc", "bn1d", "conv-bn")}
    assert [bn for bn, _ in report.skipped] == ["bn_shared"]
    assert max_output_diff(model, folded, [torch.randn(3, 3, 5, 5)]) <= FOLD_TOL


def _small_zoo():
    """Registered models on small inputs with at most 5M parameters (depthwise MobileNets excluded: with
    random weights and noise inputs their per-tensor activation error is large; the pretrained MobileFaceNet
    test below checks real weights)."""
    from model_define import list_models, model_spec
    out = []
    for name in list_models():
        spec = model_spec(name)
        if spec.input_size[-1] <= 32 and "mobile" not in name and \
                sum(p.numel() for p in spec.build().parameters()) <= 5_000_000:
            out.append(name)
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> nn.Module:
    """BN statistics from data (as after training), so a randomly initialised deep net stays well scaled."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None                     # cumulative average over the batches
    model.train()
    for x in batches:
        model(x)
    return model.eval()


@pytest.mark.parametrize("name", _small_zoo())
def test_fake_quant_8bit_close_to_fp32_on_zoo(name):
    from model_define import model_spec
    torch.manual_seed(0)
    spec = model_spec(name)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(16, *spec.input_size, generator=g) for _ in range(2)]
    model = recalibrate_bn(spec.build(), calib)
    fq = ptq_fake_quant(model, calib)
    with torch.no_grad():
        x = torch.randn(16, *spec.input_size, generator=g)
        ref, out = model(x), fq(x)
    assert ((out - ref).norm() / ref.norm()).item() < ZOO_TOL, name
    # and 8 bits must be clearly better than 4 bits (the quantizers really act)
    with torch.no_grad():
        out4 = ptq_fake_quant(model, calib, bits=4)(x)
    assert (out4 - ref).norm() > 2 * (out - ref).norm()


@pytest.fixture(scope="module")
def trained_digits():
    from compression_tool.data.digits import digits_loaders
    from model_define import get_model
    from train_module.finetune import FinetuneConfig, finetune_classifier
    torch.manual_seed(0)
    train, test = digits_loaders(16, 1, 64, 0)
    model = get_model("digits_net")
    finetune_classifier(model, train, FinetuneConfig(epochs=2, lr=0.05, progress=False))
    return model.eval(), train, test


def test_onnx_int8_runs_and_agrees_with_fake_quant(trained_digits, tmp_path):
    model, train, test = trained_digits
    calib = input_batches(train, 4)
    fp32 = export_onnx(model, calib[0][:1], tmp_path / "m.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "m8.onnx", calib, reduce_range=True)
    assert int8.stat().st_size < fp32.stat().st_size / 2
    ort8 = OrtModule(ort_session(int8, threads=1))
    fq = ptq_fake_quant(model, calib, reduce_range=True)
    x = torch.cat([b for b, _ in test])
    y = torch.cat([b for _, b in test])
    with torch.no_grad():
        p8, pfq, p32 = ort8(x).argmax(1), fq(x).argmax(1), model(x).argmax(1)
    assert (p8 == pfq).float().mean() >= 0.95
    assert (p8 == y).float().mean() >= (p32 == y).float().mean() - 0.03


def test_lsq_gradients_reach_every_step(trained_digits):
    model, train, _ = trained_digits
    names = quant_layer_names(model)
    q = lsq.lsq_model(model, lsq.bits_for_layers([4], names, "--w_bit"), lsq.bits_for_layers([4], names, "--a_bit"),
                      per_channel_weights=True)
    x, y = next(iter(train))
    lsq.init_lsq(q, [x])
    q.train()
    F.cross_entropy(q(x), y).backward()
    steps = lsq.step_parameters(q)
    assert len(steps) == 2 * len(names)
    for s in steps:
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # 4-bit codes: weights take at most 16 distinct values per output channel
    w = q.get_submodule(names[1])
    wq = w.w_quant(w.layer.weight)[0]
    assert torch.unique(wq).numel() <= 16


def test_bits_for_layers_rejects_wrong_count():
    with pytest.raises(UserError, match="--w_bit has 2 values"):
        lsq.bits_for_layers([8, 4], ["a", "b", "c"], "--w_bit")


def test_assign_bits_meets_budget_and_favours_sensitive_layers():
    bits = range(2, 9)
    sens = bit_search.Sensitivity(
        dist={"sensitive": {b: 10.0 * 4.0 ** -b for b in bits}, "robust": {b: 0.01 * 4.0 ** -b for b in bits}},
        size={"sensitive": 100, "robust": 100})
    out = bit_search.assign_bits(sens, budget=5.0, min_bw=2, max_bw=8)
    assert bit_search.average_bits(out, sens.size) <= 5.0
    assert out["sensitive"] > out["robust"]
    with pytest.raises(UserError):
        bit_search.assign_bits(sens, budget=1.0, min_bw=2, max_bw=8)


def test_search_bits_on_model_respects_budget(trained_digits):
    model, train, _ = trained_digits
    calib = input_batches(train, 1)
    sens = bit_search.layer_sensitivity(model, calib, [2, 4, 8], "weight")
    assert all(s[2] > s[8] for s in sens.dist.values())        # fewer bits, more distortion
    out = bit_search.assign_bits(sens, 4.0, 2, 8)
    assert bit_search.average_bits(out, sens.size) <= 4.0 and set(out) == set(quant_layer_names(model))


def test_fractional_length_ristretto_rule():
    assert fractional_length(1.5, 8) == 6        # il = ceil(log2 1.5) + 1 = 2
    assert fractional_length(0.2, 8) == 9        # il = ceil(-2.32) + 1 = -1
    assert fractional_length(100.0, 8) == 0      # il = 7 + 1 = 8


def test_dynamic_fixed_point_values_on_grid(trained_digits):
    model, train, test = trained_digits
    calib = input_batches(train, 2)
    q, formats = dynamic_fixed_point(model, calib, fold=True)
    assert [f.name for f in formats] == quant_layer_names(model)
    for f in formats:
        layer = q.get_submodule(f.name)
        w = layer.w_quant(layer.layer.weight)
        k = w * 2.0 ** f.fl_weight
        assert torch.allclose(k, k.round(), atol=1e-3) and k.abs().max() <= 128
    x = torch.cat([b for b, _ in test])
    with torch.no_grad():
        assert (q(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.95


def test_histograms_one_png_per_layer(tmp_path):
    from compression_tool.engine.quant.histograms import save_histograms
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    paths = save_histograms(model, [torch.randn(8, 1, 8, 8)], tmp_path)
    assert len(paths) == len(quant_layer_names(model))
    assert all(p.suffix == ".png" and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_cli_rejects_both_checkpoints(capsys):
    import quantization
    with pytest.raises(SystemExit) as exc:
        quantization.main(["--mode", "fold", "--pruned_model", "a.pth", "--best_model_path", "b.pth"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: give either --pruned_model")


def test_cli_missing_checkpoint_is_one_line(capsys, tmp_path):
    import quantization
    with pytest.raises(SystemExit) as exc:
        quantization.main(["--mode", "fold", "--best_model_path", str(tmp_path / "none.pth")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "none.pth" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not (SHARED_DATA / "mobilefacenet_casia" / "068.ckpt").is_file(),
                    reason="../shared/data/mobilefacenet_casia absent")
def test_fake_quant_8bit_pretrained_mobilefacenet_embeddings():
    from compression_tool.engine.checkpoint import load_model
    from test_module.reference import orl_tensors
    x, _ = orl_tensors(SHARED_DATA / "orl_faces")
    g = torch.Generator().manual_seed(0)
    x = x[torch.randperm(len(x), generator=g)[:32]]
    model = load_model(SHARED_DATA / "mobilefacenet_casia" / "068.ckpt", "mobilefacenet")[0]
    fq = ptq_fake_quant(model, [x[:16]])
    with torch.no_grad():
        cos = F.cosine_similarity(model(x[16:]), fq(x[16:]), dim=1)
    assert cos.min() > 0.95


@pytest.mark.skipif(not (SHARED_DATA / "resnet_cifar10").is_dir() or not (SHARED_DATA / "cifar10_test").is_dir(),
                    reason="../shared/data CIFAR ResNets or JPEGs absent")
def test_fake_quant_8bit_pretrained_resnet20_top1():
    from compression_tool.engine.checkpoint import load_model
    from model_define.pretrained import cifar_resnet_path
    from test_module.reference import cifar_jpeg_tensors, top1
    x, y = cifar_jpeg_tensors(SHARED_DATA / "cifar10_test", per_class=20, seed=0)
    model = load_model(cifar_resnet_path(20, SHARED_DATA), "resnet20", from_data_parallel=True)[0]
    fq = ptq_fake_quant(model, [x[:64]])
    assert top1(fq, x, y) >= top1(model, x, y) - 2.0


def test_split_prelu_is_exact():
    from compression_tool.engine.quant.ptq_onnx import SplitPReLU, split_prelu
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.PReLU(4), nn.Flatten(), nn.Linear(4 * 9, 5), nn.PReLU())
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, -0.3, 0.7, 2.0]))
    split = split_prelu(model)
    assert isinstance(split[1], SplitPReLU) and isinstance(model[1], nn.PReLU)
    x = torch.randn(4, 3, 3, 3)
    assert torch.allclose(split(x), model(x), atol=1e-6)


def test_cli_all_modes_end_to_end(trained_digits, tmp_path, capsys):
    import quantization
    from compression_tool.io.files import atomic_torch_save
    model, _, _ = trained_digits
    ckpt = atomic_torch_save({"state_dict": model.state_dict()}, tmp_path / "digits.pth")
    quantization.main(["--mode", "all", "--model", "digits_net", "--best_model_path", str(ckpt),
                       "--out_dir", str(tmp_path / "out"), "--epochs", "1", "--train_batches", "3",
                       "--calib_batches", "2", "--search_batches", "1", "--eval_batches", "2", "--threads", "1",
                       "--avg_bit_weights", "5", "--save", str(tmp_path / "lsq.pth")])
    out = capsys.readouterr().out
    for needle in ("folded block.bn1 into block.conv1", "int8 ONNX Runtime", "w_bit=[", "a_bit=[", "fl_w=[",
                   "fl_w(folded)=[", "histograms"):
        assert needle in out, needle
    w_bit = [int(v) for v in out.split("w_bit=[")[1].split("]")[0].split(",")]
    assert len(w_bit) == 6 and all(2 <= b <= 8 for b in w_bit)
    assert (tmp_path / "out" / "digits_net_int8.onnx").is_file()
    assert len(list((tmp_path / "out" / "histograms" / "digits_net").glob("*.png"))) == 6
    saved = torch.load(tmp_path / "lsq.pth", weights_only=False)
    assert saved["meta"]["w_bit"] == w_bit
    with pytest.raises(SystemExit):                 # the LSQ checkpoint is not clobbered without --force
        quantization.main(["--mode", "lsq", "--model", "digits_net", "--best_model_path", str(ckpt),
                           "--epochs", "0", "--save", str(tmp_path / "lsq.pth"), "--fix_bw_weights",
                           "--fix_bw_fm"])
