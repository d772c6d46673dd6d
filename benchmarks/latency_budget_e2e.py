"""End to end with a latency budget on the real MobileFaceNet: coarse L1 sensitivity on ORL -> schedule keeping
``--keep`` of the ONNX Runtime latency (widths rounded to 16) -> thinned checkpoint with the per-layer latency
report -> the thinned and the unpruned model measured side by side on ONNX Runtime (fp32, BN folded, 1 thread).

    python benchmarks/latency_budget_e2e.py [--keep 0.5] [--work work_space/latency_e2e] [--runtime ort]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from compression_tool.cli import auto_make_yaml, pruning
from compression_tool.engine.checkpoint import load_model
from compression_tool.engine.cost import params_and_macs
from compression_tool.engine.latency import LatencyTable

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CKPT = DATA / "mobilefacenet_casia" / "068.ckpt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--runtime", default="ort")
    ap.add_argument("--work", default="work_space/latency_e2e")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = ["--model", "mobilefacenet", "--best_model_path", str(CKPT), "--input_size", "3,112,96"]
    csv = work / "mobilefacenet_l1.csv"
    pruning.main(["--mode", "sa", *common, "--data", f"orl:{DATA / 'orl_faces'}", "--method", "l1",
                  "--sparsities", "0,0.25,0.5,0.75", "--output", str(csv)])
    tag = round(100 * args.keep)
    yml = work / f"mobilefacenet_{args.runtime}_latency{tag}.yaml"
    lat = ["--latency_dir", str(work / "tables")]
    auto_make_yaml.main([str(csv), "--latency", str(args.keep), "--latency_runtime", args.runtime,
                         "--latency_threads", "1", "--latency_batch", "1", *common, "--round_to", "16",
                         "--output", str(yml), "--force", *lat])
    pt = work / f"mobilefacenet_{args.runtime}_latency{tag}.pth"
    pruning.main(["--mode", "prune", *common, "--data", f"orl:{DATA / 'orl_faces'}", "--yaml", str(yml),
                  "--save_model_pt", "--output", str(pt), "--force", "--latency_runtime", args.runtime, *lat])
    orig = load_model(CKPT, "mobilefacenet", input_size=(3, 112, 96))[0].eval()
    thin = load_model(pt)[0].eval()
    x = torch.randn(1, 3, 112, 96)
    a, b = LatencyTable(args.runtime, 1, 1, work / "tables").measure_models([orig, thin], x, rounds=21)
    m0, m1 = params_and_macs(orig, x)["macs"], params_and_macs(thin, x)["macs"]
    print(f"measured on {args.runtime} (1 thread, batch 1, interleaved, 21 rounds): unpruned {a:.3f} ms, thinned "
          f"{b:.3f} ms -> {b / a:.3f} of the latency kept (budget {args.keep}); MACs kept {m1 / m0:.3f}")


if __name__ == "__main__":
    main()
