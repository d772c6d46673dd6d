"""Soft pruning (masks) equals thinning on the REAL checkpoints, on real images; and the sensitivity CLI on them.

* ResNet-20/56 (`resnet_cifar10/*.th`, DataParallel keys: loaded the `--from_data_parallel` way) on a few CIFAR-10
  JPEGs: thinning goes through the zero-padding shortcut, so the residual streams of unequal width are cut too.
* MobileFaceNet (`mobilefacenet_casia/068.ckpt`) at 112x96 on ORL faces: thinning goes through the depthwise
  bottlenecks (expand 1x1 -> depthwise 3x3 -> project 1x1, residual streams).
The thinned model must give the masked model's outputs (max abs diff <= 1e-4, in float32 as deployed), and
pruning must change the outputs (else the comparison would be vacuous). Skipped when ../shared/data is absent.
"""
from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from compression_tool.data.normalise import RGB_MEAN, RGB_STD
from compression_tool.engine.checkpoint import load_model, save_pruned
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.masking import apply_slices, group_slices
from compression_tool.engine.thinning import thin
from model_define.pretrained import MOBILEFACENET_FILE
from test_module.reference import orl_tensors

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESNET_FILES = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
FACE_SIZE = [3, 112, 96]
TOLERANCE = 1e-4


def need(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="module")
def cifar_images() -> torch.Tensor:
    """One JPEG of each of the ten classes (seeded pick), normalised like the checkpoints' training data."""
    from compression_tool.data.imagefolder import load_image_folder
    x, _, _ = load_image_folder(need("cifar10_test"), (32, 32), RGB_MEAN, RGB_STD, per_class=1, seed=3,
                                progress=False)
    return x


@pytest.fixture(scope="module")
def orl_faces() -> torch.Tensor:
    x, y = orl_tensors(need("orl_faces"))          # 112x96: ORL's 92 px width padded with black
    return x[torch.tensor([0, 1, 150, 379])]        # two images of one subject, two of others


def load_real(name: str) -> nn.Module:
    if name == "mobilefacenet":
        model, _ = load_model(need(MOBILEFACENET_FILE), "mobilefacenet", input_size=FACE_SIZE)
    else:
        model, _ = load_model(need("resnet_cifar10", RESNET_FILES[name]), name, from_data_parallel=True)
    return model.eval()


def soft_and_hard(model: nn.Module, x: torch.Tensor, criterion: str, sparsity: float):
    """(masked copy, thinned copy, keep-arrays): every group loses ``sparsity`` of its channels, chosen once on
    the original model by ``criterion`` and then masked on one copy and cut out of the other."""
    index = GroupIndex(model, x[:1])
    crit = make_criterion(criterion, cache_dir=None, limit=1)
    if crit.needs_data:
        crit.prepare(model, [x], {g.root_name: g.root for g in index.groups})
    chosen = {g.name: crit.select(index, g, g.n_prune(sparsity)) for g in index.groups}
    soft = copy.deepcopy(model)
    soft_index = GroupIndex(soft, x[:1])
    for name, idxs in chosen.items():
        apply_slices(group_slices(soft_index, soft_index.find(name), idxs))
    hard = copy.deepcopy(model)
    return soft, hard, thin(GroupIndex(hard, x[:1]), chosen)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,criterion", [("resnet20", "l1"), ("resnet20", "hrank"), ("resnet56", "fpgm"),
                                            ("mobilefacenet", "l1"), ("mobilefacenet", "hrank")])
def test_masked_equals_thinned_on_real_checkpoint(name, criterion, cifar_images, orl_faces):
    model = load_real(name)
    x = orl_faces if name == "mobilefacenet" else cifar_images
    soft, hard, keep = soft_and_hard(model, x, criterion, sparsity=0.3)
    with torch.no_grad():
        y0, ys, yh = model(x), soft(x), hard(x)
    diff = (ys - yh).abs().max().item()
    assert diff <= TOLERANCE, f"{name}/{criterion}: masked and thinned outputs differ by {diff:.3g}"
    assert (y0 - yh).abs().max().item() > 1e3 * TOLERANCE, f"{name}: pruning 30% changed nothing"
    assert n_params(hard) < 0.9 * n_params(model)
    assert len(keep) == len(GroupIndex(model, x[:1]).groups), "some group was not thinned"


def test_resnet_streams_are_thinned_through_the_zero_pad_shortcut(cifar_images):
    model = load_real("resnet20")
    _, hard, keep = soft_and_hard(model, cifar_images, "l1", sparsity=0.5)
    for stage, width in (("layer2", 32), ("layer3", 64)):
        sc = hard.get_submodule(f"{stage}.0.shortcut")
        conv2 = hard.get_submodule(f"{stage}.0.conv2")
        assert sc.planes_out == conv2.out_channels == width // 2, f"{stage}: stream not halved"
        assert sc.planes_in == hard.get_submodule(f"{stage}.0.conv1").in_channels == width // 4
    assert hard.linear.out_features == 10 and hard.linear.in_features == 32


def test_mobilefacenet_depthwise_convs_stay_depthwise(orl_faces):
    model = load_real("mobilefacenet")
    _, hard, _ = soft_and_hard(model, orl_faces, "l1", sparsity=0.3)
    before = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert len(before) == 17                                     # dw_conv1, 15 bottlenecks, the GDC
    for name, conv in before.items():
        thinned = hard.get_submodule(name)
        assert thinned.groups == thinned.in_channels == thinned.out_channels, name
        assert thinned.out_channels < conv.out_channels, f"{name}: depthwise conv not thinned"
    with torch.no_grad():
        assert hard(orl_faces).shape == (len(orl_faces), 128)      # the embedding is never pruned


def test_thinned_real_checkpoint_round_trips(tmp_path, orl_faces):
    model = load_real("mobilefacenet")
    _, hard, keep = soft_and_hard(model, orl_faces, "fpgm", sparsity=0.2)
    path = save_pruned(tmp_path / "mfn.pth", hard, {"model": "mobilefacenet", "input_size": FACE_SIZE,
                                                    "keep": [keep]})
    reloaded, meta = load_model(path)
    with torch.no_grad():
        assert torch.equal(reloaded(orl_faces), hard(orl_faces))
    assert meta["input_size"] == FACE_SIZE


def test_sensitivity_cli_on_real_resnet20(tmp_path):
    """`pruning.py --mode sa` on the real ResNet-20 and the CIFAR JPEGs writes one sane row per (group, level)."""
    ckpt = need("resnet_cifar10", RESNET_FILES["resnet20"])
    images = need("cifar10_test")
    out = tmp_path / "sa.csv"
    cmd = [sys.executable, str(ROOT / "pruning.py"), "--mode", "sa", "--model", "resnet20",
           "--best_model_path", str(ckpt), "--from_data_parallel", "--data", f"image_folder:{images}",
           "--eval_batches", "2", "--sparsities", "0,0.5", "--output", str(out), "--work_space", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}   # as fast as one busy core allows
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["parameter", "sparsity", "top1", "top5", "loss"]
    groups = [g.name for g in GroupIndex(load_real("resnet20"), torch.randn(1, 3, 32, 32)).groups]
    assert sorted((r["parameter"], float(r["sparsity"])) for r in rows) == \
        sorted((g, s) for g in groups for s in (0.0, 0.5))
    base = {(r["top1"], r["top5"], r["loss"]) for r in rows if float(r["sparsity"]) == 0}
    assert len(base) == 1, "the unpruned rows must all be the same baseline"
    top1_0 = float(next(iter(base))[0])
    assert 70.0 <= top1_0 <= 92.0, f"baseline top-1 {top1_0} on 128 JPEGs; the full set gives 81.0 %"
    half = [r for r in rows if float(r["sparsity"]) == 0.5]
    for r in rows:
        assert 0.0 <= float(r["top1"]) <= float(r["top5"]) <= 100.0 and float(r["loss"]) > 0.0, r
    drops = sorted(top1_0 - float(r["top1"]) for r in half)
    assert drops[-1] > 20.0, "halving some group (e.g. the stem's stream) must hurt a lot"
    assert sum(drops) / len(drops) > 5.0, "halving groups must hurt on average"
