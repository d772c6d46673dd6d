"""Side experiments on PReLU for int8 ONNX Runtime (exported by default as Relu/Mul/Mul/Add):

- dw-PReLU: two 1x1 depthwise convs (``(1 - a) * relu(x) + a * x`` with the slopes as conv weights), exact;
- one-Mul: ``x + c * relu(x)`` with ``c = (1 - a) / a`` — the structure of ``a * (x + c * relu(x))`` once the
  slope ``a`` is folded into the next conv's input channels (not done here: timing only, outputs differ).

    python benchmarks/int8_prelu_dw.py [CKPT]     # default: the CASIA MobileFaceNet, 3x112x96, 1 thread

Prints fp32 / int8 latency (interleaved, batch 1 and 16) with and without the rewrite and ONNX Runtime's
per-operator profile. Calibration: two random batches (latency does not depend on it).
"""
from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from compression_tool.engine.checkpoint import load_model
from compression_tool.engine.cost import interleaved_latency
from compression_tool.engine.quant.bn_fold import fold_bn
from compression_tool.engine.quant.int8_tuning import layer_kinds, op_profile, profile_lines
from compression_tool.engine.quant.ptq_onnx import OrtModule, export_onnx, ort_session, quantize_onnx

CKPT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mobilefacenet_casia" / "068.ckpt"


class DwPReLU(nn.Module):
    def __init__(self, p: nn.PReLU):
        super().__init__()
        c, a = p.weight.numel(), p.weight.detach().reshape(-1)
        self.pos = nn.Conv2d(c, c, 1, groups=c, bias=False)
        self.neg = nn.Conv2d(c, c, 1, groups=c, bias=False)
        self.pos.weight.data = (1 - a).view(c, 1, 1, 1).clone()
        self.neg.weight.data = a.view(c, 1, 1, 1).clone()

    def forward(self, x):
        return self.pos(torch.relu(x)) + self.neg(x)


class OneMul(nn.Module):
    def __init__(self, p: nn.PReLU):
        super().__init__()
        a = p.weight.detach().clamp(min=0.05)
        self.c = nn.Parameter(((1 - a) / a).view(1, -1, 1, 1))

    def forward(self, x):
        return x + self.c * torch.relu(x)


def swap(model: nn.Module, cls=DwPReLU) -> nn.Module:
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.PReLU) and m.weight.numel() > 1:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, cls(m))
    return model


def main() -> None:
    torch.set_num_threads(1)
    path = sys.argv[1] if len(sys.argv) > 1 else str(CKPT)
    m = load_model(path)[0] if path.endswith(".pth") else load_model(path, "mobilefacenet",
                                                                      input_size=(3, 112, 96))[0]
    m = fold_bn(m.eval())[0]
    m2 = swap(m)
    x = torch.randn(1, 3, 112, 96)
    calib = [torch.randn(8, 3, 112, 96) for _ in range(2)]
    with torch.no_grad():
        print("rewrite max |diff|", float((m(x) - m2(x)).abs().max()))
    d = Path(tempfile.mkdtemp())
    f32, f32b = export_onnx(m, x, d / "a32.onnx"), export_onnx(m2, x, d / "b32.onnx")
    f32c = export_onnx(swap(m, OneMul), x, d / "c32.onnx", prelu_split=False)
    q8, q8b = quantize_onnx(f32, d / "a8.onnx", calib), quantize_onnx(f32b, d / "b8.onnx", calib)
    q8c = quantize_onnx(f32c, d / "c8.onnx", calib)
    sess = [OrtModule(ort_session(p, 1)) for p in (f32, f32b, q8, q8b, q8c)]
    for b in (1, 16):
        t = interleaved_latency(sess, torch.randn(b, 3, 112, 96), rounds=11)
        print(f"b{b}: fp32 {t[0]:.2f}  fp32 dw-PReLU {t[1]:.2f}  int8 {t[2]:.2f} (x{t[0] / t[2]:.2f})  "
              f"int8 dw-PReLU {t[3]:.2f} (x{t[0] / t[3]:.2f})  int8 one-Mul {t[4]:.2f} (x{t[0] / t[4]:.2f}) ms")
    kinds = layer_kinds(m)
    print("\n".join(profile_lines([(n, op_profile(p, x, 1, 10, kinds))
                                   for n, p in (("fp32", f32), ("int8", q8), ("int8 dw-PReLU", q8b))], top=0)))


if __name__ == "__main__":
    main()
