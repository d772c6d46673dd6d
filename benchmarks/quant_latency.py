"""fp32 PyTorch vs fp32 ONNX Runtime vs int8 ONNX Runtime, side by side in one run: latency (batch 1 and 16),
model size and metric.

    python benchmarks/quant_latency.py                       # digits_net, mobilefacenet, resnet_ir18
    python benchmarks/quant_latency.py --models digits_net --threads 1

- digits_net: the embedded default (trained by compression_tool.apps.default_model when --digits_ckpt is missing);
metric
  top-1 on the held-out digits; calibration on 8 training batches.
- mobilefacenet: the CASIA-WebFace checkpoint in ../shared/data when present (else random weights); metric
  ORL 1-NN identification (flip-concatenated embeddings, all 380 images) and the mean cosine between int8 and
  fp32 embeddings; calibration on 64 ORL images.
- resnet_ir18 (and other zoo models): no pretrained weights, so only the int8-vs-fp32 embedding cosine.
PReLU is exported as the exact ``(1-a)*relu(x) + a*x`` (ONNX Runtime's PRelu kernel is slow and has no int8
form); the plain PRelu export is timed too, for reference. Latencies are medians; the three back-ends are timed in
interleaved rounds and the best round is kept, so
load from other processes hits them alike (the load average is printed with the results).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from compression_tool.engine.quant.ptq_onnx import (  # noqa: E402
    OrtModule,
    default_reduce_range,
    export_onnx,
    file_mb,
    latency_ms,
    ort_session,
    quantize_onnx,
    state_dict_mb,
)
from compression_tool.io.errors import UserError, cli_main  # noqa: E402

Batches = List[torch.Tensor]
PLAIN = "fp32 ORT, ONNX PRelu"


def digits_case(ckpt: Path) -> Tuple[nn.Module, Batches, torch.Tensor, callable]:
    from compression_tool.data.digits import digits_loaders
    from compression_tool.engine.checkpoint import load_model
    from test_module.classification import evaluate_classifier
    if not ckpt.is_file():
        from compression_tool.apps.default_model import train_default
        train_default(ckpt)
    model = load_model(ckpt, "digits_net")[0]
    train, test = digits_loaders(16, 1, 64, 0)
    calib = [x for x, _ in list(train)[:8]]
    return model, calib, calib[0], lambda m, ref: {"top1": evaluate_classifier(m, test)["top1"]}


def face_case(name: str, data: Path) -> Tuple[nn.Module, Batches, torch.Tensor, callable]:
    from compression_tool.engine.checkpoint import load_model
    from model_define import model_spec
    from model_define.pretrained import MOBILEFACENET_FILE
    from test_module.reference import flip_embeddings, forward_batches, nn_identification, orl_tensors
    spec = model_spec(name)
    ckpt = data / MOBILEFACENET_FILE
    pretrained = name == "mobilefacenet" and ckpt.is_file()
    model = load_model(ckpt, name)[0] if pretrained else spec.build().eval()
    if (data / "orl_faces").is_dir():
        x, y = orl_tensors(data / "orl_faces", width=spec.input_size[-1])
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        x, y = x[order], (y[order] if pretrained else None)
    else:
        x, y = torch.randn(128, *spec.input_size, generator=torch.Generator().manual_seed(0)), None
    calib = [x[i:i + 16] for i in range(0, 64, 16)]
    probe = x[64:128]

    def metric(m: nn.Module, ref: Optional[nn.Module]) -> Dict[str, float]:
        out: Dict[str, float] = {}
        if y is not None:
            out["orl_1nn_id"] = nn_identification(flip_embeddings(m, x), y)
        if ref is not None:
            cos = F.cosine_similarity(forward_batches(m, probe), forward_batches(ref, probe))
            out["cos_to_fp32"] = cos.mean().item()
        return out

    return model, calib, calib[0], metric


def time_backends(backends: Dict[str, nn.Module], example: torch.Tensor, batch: int, rounds: int, iters: int
                  ) -> Dict[str, float]:
    x = example[:1].repeat(batch, *([1] * (example.dim() - 1))).contiguous()
    best = {k: float("inf") for k in backends}
    with torch.no_grad():
        for _ in range(rounds):
            for k, m in backends.items():
                best[k] = min(best[k], latency_ms(lambda: m(x), warmup=2, iters=iters))
    return best


def run_model(name: str, args: argparse.Namespace, work: Path) -> List[str]:
    model, calib, example, metric = digits_case(Path(args.digits_ckpt)) if name == "digits_net" \
        else face_case(name, Path(args.data))
    reduce_range = default_reduce_range() if args.reduce_range == "auto" else args.reduce_range == "on"
    fp32 = export_onnx(model, example[:1], work / f"{name}_fp32.onnx")
    int8 = quantize_onnx(fp32, work / f"{name}_int8.onnx", calib, reduce_range=reduce_range)
    backends = {"fp32 PyTorch": model, "fp32 ONNX Runtime": OrtModule(ort_session(fp32, args.threads)),
                "int8 ONNX Runtime": OrtModule(ort_session(int8, args.threads))}
    sizes = {"fp32 PyTorch": state_dict_mb(model), "fp32 ONNX Runtime": file_mb(fp32),
             "int8 ONNX Runtime": file_mb(int8)}
    if any(isinstance(m, nn.PReLU) for m in model.modules()):      # the plain export, for reference
        plain = export_onnx(model, example[:1], work / f"{name}_fp32_prelu.onnx", prelu_split=False)
        backends[PLAIN] = OrtModule(ort_session(plain, args.threads))
        sizes[PLAIN] = file_mb(plain)
    lat1 = time_backends(backends, example, 1, args.rounds, args.iters)
    lat16 = time_backends(backends, example, 16, args.rounds, max(3, args.iters // 4))
    metrics = {k: metric(m, None if k == "fp32 PyTorch" else model) for k, m in backends.items()}
    lines = [f"-- {name}: {args.threads} threads, reduce_range={reduce_range}, calibration {len(calib)} batches",
             f"{'':20s} {'b1 ms':>8s} {'b16 ms':>9s} {'size MB':>8s}  metric"]
    for k in backends:
        shown = " ".join(f"{n}={v:.4g}" for n, v in metrics[k].items())
        lines.append(f"{k:20s} {lat1[k]:8.2f} {lat16[k]:9.2f} {sizes[k]:8.2f}  {shown}")
    f32, i8 = "fp32 ONNX Runtime", "int8 ONNX Runtime"
    lines.append(f"int8 vs fp32 ONNX Runtime: speed-up x{lat1[f32] / lat1[i8]:.2f} (b1), "
                 f"x{lat16[f32] / lat16[i8]:.2f} (b16); size x{sizes[f32] / sizes[i8]:.2f} smaller")
    if PLAIN in backends:
        lines.append(f"int8 vs fp32 ONNX Runtime with ONNX PRelu: speed-up x{lat1[PLAIN] / lat1[i8]:.2f} (b1), "
                     f"x{lat16[PLAIN] / lat16[i8]:.2f} (b16)")
    head = next(iter(metrics["fp32 PyTorch"] or {}), None)
    if head:
        lines.append(f"{head} drop int8 vs fp32: {metrics['fp32 PyTorch'][head] - metrics[i8][head]:+.2f} points")
    return lines


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    from model_define import list_models
    from model_define.pretrained import shared_data_dir
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["digits_net", "mobilefacenet", "resnet_ir18"],
                   help="registered models to benchmark (default digits_net mobilefacenet resnet_ir18)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for PyTorch and ONNX Runtime")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best round kept)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per round at batch 1 (batch 16: a quarter)")
    p.add_argument("--reduce_range", choices=("auto", "on", "off"), default="auto",
                   help="7-bit weights (auto: on for CPUs without VNNI)")
    p.add_argument("--digits_ckpt", default="work_space/checkpoints/digits_net.pth",
                   help="digits_net checkpoint (trained when missing)")
    p.add_argument("--data", default=str(shared_data_dir()), help="folder with orl_faces/ and mobilefacenet_casia/")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in list_models()]
    if unknown:
        raise UserError(f"--models: unknown {unknown}; registered: {', '.join(list_models())}")
    torch.set_num_threads(args.threads)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; cpu: "
          f"{'VNNI' if not default_reduce_range() else 'no VNNI (AVX2)'}")
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            for line in run_model(name, args, Path(work)):
                print(line, flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
