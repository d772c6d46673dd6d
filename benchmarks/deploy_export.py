"""Export path on the real MobileFaceNet (CASIA checkpoint, 3x112x96): unpruned and with 50 % of every prunable
group removed (L1), each BN-folded -> ONNX fp32 + int8, checked against PyTorch, timed side by side.

    python benchmarks/deploy_export.py [--threads 1] [--work DIR] [--ratio 0.5]

Writes DIR/mobilefacenet_50.yaml and DIR/mobilefacenet_50.pth (the thinned checkpoint), then runs
``quantization.py --mode export`` on both checkpoints with ORL (s31..s40 pairs) as evaluation/calibration data.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from compression_tool.cli import pruning, quantization
from compression_tool.engine.groups import GroupIndex
from model_define import get_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CKPT = DATA / "mobilefacenet_casia" / "068.ckpt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1")
    ap.add_argument("--work", default="work_space/deploy_bench")
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tag = round(100 * args.ratio)
    yml, pt = work / f"mobilefacenet_{tag}.yaml", work / f"mobilefacenet_{tag}.pth"
    if not pt.exists():
        groups = GroupIndex(get_model("mobilefacenet", input_size=(112, 96)).eval(), torch.randn(1, 3, 112, 96)).groups
        yml.write_text("version: 1\npruners:\n  p:\n    class: L1RankedStructureParameterPruner\n"
                       f"    desired_sparsity: {args.ratio}\n    weights: [{', '.join(g.name for g in groups)}]\n")
        pruning.main(["--mode", "prune", "--model", "mobilefacenet", "--best_model_path", str(CKPT),
                      "--input_size", "3,112,96", "--data", f"orl:{DATA / 'orl_faces'}", "--yaml", str(yml),
                      "--save_model_pt", "--output", str(pt), "--work_space", str(work / "ws"), "--force"])
    common = ["--mode", "export", "--data", f"orl:{DATA / 'orl_faces'}", "--threads", args.threads,
              "--batch_size", "16", "--calib_batches", "8", "--out_dir", str(work / "onnx"), "--force",
              "--latency_rounds", "9"]
    print("==== unpruned ====", flush=True)
    quantization.main(common + ["--model", "mobilefacenet", "--best_model_path", str(CKPT), "--input_size",
                                "3,112,96"])
    print(f"==== {tag} % of every group removed ====", flush=True)
    quantization.main(common + ["--pruned_model", str(pt)])


if __name__ == "__main__":
    main()
