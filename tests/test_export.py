"""The deployment export (quantization.py --mode export): thinned checkpoint -> BN folded -> ONNX fp32 / int8,
checked against PyTorch (failing loudly, nothing written), latency table; on tiny models, seconds each."""
from __future__ import annotations

import copy

import pytest
import torch

import pruning
from compression_tool.cli import quantization
from compression_tool.engine.cost import thinned_copy
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.quant.export import ExportMismatch, export_fp32_checked, quantize_checked
from model_define import get_model


@pytest.fixture(scope="module")
def thinned_ckpt(tmp_path_factory):
    """digits_net with non-trivial BN statistics, thinned by pruning.py (odd widths: 16 -> 9 channels)."""
    torch.manual_seed(0)
    m = get_model("digits_net")
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    d = tmp_path_factory.mktemp("exp")
    torch.save({"state_dict": m.state_dict()}, d / "dn.pth")
    (d / "s.yaml").write_text("version: 1\npruners:\n  p:\n    class: L1RankedStructureParameterPruner\n"
                              "    desired_sparsity: 0.45\n    weights: [block.conv1.weight, down.0.weight]\n")
    pt = d / "pruned.pth"
    pruning.main(["--mode", "prune", "--model", "digits_net", "--best_model_path", str(d / "dn.pth"), "--yaml",
                  str(d / "s.yaml"), "--save_model_pt", "--output", str(pt), "--work_space", str(d / "ws"),
                  "--eval_batches", "1"])
    return pt


def test_export_cli_thinned_checkpoint(thinned_ckpt, tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["--mode", "export", "--pruned_model", str(thinned_ckpt), "--out_dir", str(out), "--threads", "1",
            "--train_batches", "4", "--calib_batches", "2", "--latency_rounds", "2", "--latency_batch", "4"]
    quantization.main(argv)
    text = capsys.readouterr().out
    fp32, int8 = out / "digits_net_deploy_fp32.onnx", out / "digits_net_deploy_int8.onnx"
    assert fp32.exists() and int8.exists()
    assert "(thinned checkpoint)" in text and "passed" in text
    table = [ln for ln in text.splitlines() if ln.startswith(("PyTorch fp32", "ONNX Runtime"))]
    assert [ln[:26].strip() for ln in table] == ["PyTorch fp32", "PyTorch fp32, BN folded", "ONNX Runtime fp32",
                                                 "ONNX Runtime int8"]
    assert all(float(ln[26:].split()[0]) > 0 and float(ln[26:].split()[1]) > 0 for ln in table)
    # the exported graph has the thinned widths and no BatchNormalization left
    import onnx
    g = onnx.load(str(fp32)).graph
    assert not [n for n in g.node if n.op_type == "BatchNormalization"]
    widths = sorted({i.dims[0] for i in g.initializer if len(i.dims) == 4})
    assert 9 in widths, widths
    # outputs are never overwritten without --force
    before = fp32.read_bytes()
    with pytest.raises(SystemExit) as e:
        quantization.main(argv)
    assert e.value.code == 2 and fp32.read_bytes() == before
    quantization.main(argv + ["--force", "--no_int8"])


def test_export_fails_loudly_and_writes_nothing(tmp_path):
    torch.manual_seed(0)
    model = get_model("digits_net").eval()
    xs = [torch.randn(4, 1, 16, 16) for _ in range(2)]
    wrong = copy.deepcopy(model)
    with torch.no_grad():
        wrong.fc2.bias.add_(1e-2)            # a reference the export cannot match
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportMismatch, match="max \\|Δ\\|"):
        export_fp32_checked(model, xs, path, tolerance=1e-4, reference=wrong)
    assert not path.exists() and not list(tmp_path.iterdir())
    path, stats = export_fp32_checked(model, xs, path, tolerance=1e-4)
    assert path.exists() and stats.max_abs < 1e-4
    # int8: an impossible cosine requirement fails, a sane one passes
    q = tmp_path / "m8.onnx"
    with pytest.raises(ExportMismatch, match="cosine"):
        quantize_checked(path, q, model, xs, xs, min_cosine=1.0 + 1e-9)
    assert not q.exists()
    q, stats8 = quantize_checked(path, q, model, xs, xs, min_cosine=0.9)
    assert q.exists() and 0.9 <= stats8.cosine_mean <= 1.0


def test_export_thinned_mobilefacenet_prelu_matches():
    """A thinned face embedder (PReLU, depthwise, BN-first GDC head) exports within 1e-4."""
    torch.manual_seed(0)
    m = get_model("mobilefacenet", input_size=(56, 48)).eval()
    x = torch.randn(1, 3, 56, 48)
    idx = GroupIndex(m, x)
    pruned = {g.name: list(range(g.channels // 3)) for g in idx.groups[:6]}
    thin = thinned_copy(m, x, pruned)
    from compression_tool.engine.quant.bn_fold import fold_bn
    folded, _ = fold_bn(thin)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        _, stats = export_fp32_checked(folded, [torch.randn(2, 3, 56, 48)], f"{d}/m.onnx", 1e-4, reference=thin)
    assert stats.relative < 1e-4
