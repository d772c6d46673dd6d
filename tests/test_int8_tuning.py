"""int8 recipes chosen by measurement (quantization.py --mode int8): calibration methods, QDQ/QOperator, fp32
fallback of depthwise convs and PReLUs, ONNX Runtime operator profiles; tiny models, seconds each."""
from __future__ import annotations

import onnx
import pytest
import torch

from compression_tool.cli import quantization
from compression_tool.engine.quant.bn_fold import fold_bn
from compression_tool.engine.quant.int8_tuning import (
    fp32_fallback,
    fp32_modules,
    node_classes,
    op_profile,
    prelu_modules,
    slower_in_int8,
)
from compression_tool.engine.quant.ptq_onnx import export_onnx, quantize_onnx
from model_define import get_model


@pytest.fixture(scope="module")
def mfn(tmp_path_factory):
    torch.manual_seed(0)
    m = get_model("mobilefacenet", input_size=(56, 48)).eval()
    d = tmp_path_factory.mktemp("i8")
    path = export_onnx(fold_bn(m)[0], torch.randn(1, 3, 56, 48), d / "m.onnx")
    return m, path, d


def test_node_classes_find_depthwise_and_prelu(mfn):
    m, path, _ = mfn
    classes = node_classes(onnx.load(str(path)), prelu_modules(m))
    n_dw = sum(1 for x in m.modules() if isinstance(x, torch.nn.Conv2d) and x.groups > 1)
    n_prelu = sum(1 for x in m.modules() if isinstance(x, torch.nn.PReLU))
    assert len(classes["depthwise"]) == n_dw > 0
    assert len(classes["prelu"]) == 4 * n_prelu > 0          # Relu, Mul, Mul, Add each
    with pytest.raises(ValueError):
        fp32_fallback(["softmax"], set())


def _quantized_convs(path) -> dict:
    """{conv node: whether its weight comes through DequantizeLinear (int8)}."""
    g = onnx.load(str(path)).graph
    producers = {o: n for n in g.node for o in n.output}
    return {n.name: producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"
            for n in g.node if n.op_type == "Conv"}


def test_fallback_keeps_exactly_those_layers_fp32(mfn):
    m, path, d = mfn
    calib = [torch.randn(4, 3, 56, 48)]
    plain = quantize_onnx(path, d / "q.onnx", calib)
    dw = quantize_onnx(path, d / "q_dw.onnx", calib, exclude=fp32_fallback(["depthwise"], prelu_modules(m)))
    dws = set(node_classes(onnx.load(str(path)), set())["depthwise"])
    q_plain, q_dw = _quantized_convs(plain), _quantized_convs(dw)
    assert all(q_plain.values())
    assert {n for n, q in q_dw.items() if not q} == dws
    pr = quantize_onnx(path, d / "q_pr.onnx", calib, exclude=fp32_fallback(["prelu"], prelu_modules(m)))

    def mul_outputs_quantized(p) -> list:
        g = onnx.load(str(p)).graph
        users = {}
        for n in g.node:
            for i in n.input:
                users.setdefault(i, []).append(n.op_type)
        return [any(u == "QuantizeLinear" for u in users.get(n.output[0], [])) for n in g.node if n.op_type == "Mul"]

    assert mul_outputs_quantized(plain) and all(mul_outputs_quantized(plain))      # int8 Muls: output re-quantized
    assert mul_outputs_quantized(pr) and not any(mul_outputs_quantized(pr))        # fp32 PReLU: Mul -> Add in fp32
    # QOperator format writes QLinearConv into the file; entropy / percentile calibrations run
    uneven = [torch.randn(4, 3, 56, 48), torch.randn(3, 3, 56, 48)]     # histogram calibrators need equal sizes
    qop = quantize_onnx(path, d / "q_op.onnx", uneven, quant_format="qoperator", calibration="percentile")
    assert any(n.op_type == "QLinearConv" for n in onnx.load(str(qop)).graph.node)
    prof = op_profile(plain, torch.randn(1, 3, 56, 48), threads=1, runs=3)
    assert prof and all(v >= 0 for v in prof.values()) and "QLinearConv" in prof
    # per layer: one named module stays fp32; profiles attribute kernel time to modules
    one = quantize_onnx(path, d / "q_one.onnx", calib, exclude=fp32_modules(["blocks.0.conv.0"]))
    q_one = _quantized_convs(one)
    assert [n for n, q in q_one.items() if not q] == ["/blocks/blocks.0/conv/conv.0/Conv"]
    by_mod = op_profile(plain, torch.randn(1, 3, 56, 48), threads=1, runs=3, by_module=True)
    assert "blocks.0.conv.0" in by_mod and "conv1.prelu" in by_mod
    assert slower_in_int8({"a": 1.0, "b": 2.0}, {"a": 1.5, "b": 1.0, "c": 0.1}) == ["a", "c"]


def test_int8_mode_cli(tmp_path, capsys):
    out = tmp_path / "q"
    quantization.main(["--mode", "int8", "--model", "digits_net", "--threads", "1", "--out_dir", str(out),
                       "--train_batches", "4", "--calib_batches", "2", "--latency_rounds", "2", "--latency_batch",
                       "4", "--calibrations", "minmax,entropy", "--fallbacks", "none,depthwise"])
    text = capsys.readouterr().out
    for needle in ("chosen calibration:", "int8 qdq, fp32 depthwise", "int8 qoperator", "chosen: ",
                   "ONNX Runtime profile"):
        assert needle in text, needle
    assert (out / "digits_net_int8_tuned.onnx").exists()
    with pytest.raises(SystemExit) as e:            # bad lists are one-line errors; no clobbering without --force
        quantization.main(["--mode", "int8", "--model", "digits_net", "--out_dir", str(tmp_path / "z"),
                           "--calibrations", "kl"])
    assert e.value.code == 2
