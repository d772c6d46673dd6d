"""The real pretrained checkpoints load into our definitions and reach their known accuracy; image folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compression_tool.data.imagefolder import load_image_folder
from compression_tool.engine.checkpoint import load_model
from compression_tool.io.checkpoint import read_checkpoint
from compression_tool.io.errors import UserError
from model_define import get_model
from model_define.pretrained import CIFAR_RESNET_FILES, MOBILEFACENET_FILE
from test_module.reference import cifar_jpeg_tensors, flip_embeddings, nn_identification, orl_tensors, pair_auc, top1

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def need(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


# --- image folders (no shared data needed) --------------------------------------------------------------------

def _write_folder(root: Path, per_class: int = 3) -> None:
    for c, name in enumerate(["b", "a", "s10", "s2"]):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(np.full((6, 5, 3), 10 * c + k, np.uint8)).save(root / name / f"{k}.png")


def test_load_image_folder_orders_classes_and_normalises(tmp_path):
    _write_folder(tmp_path)
    x, y, classes = load_image_folder(tmp_path, mean=0.5, std=0.25, progress=False)
    assert classes == ["a", "b", "s2", "s10"]
    assert x.shape == (12, 3, 6, 5) and y.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    pixel = 10 * 1 + 0                      # class "a" was written second (c=1), image 0
    assert torch.allclose(x[0], torch.full((3, 6, 5), (pixel / 255 - 0.5) / 0.25))


def test_load_image_folder_resizes_subsamples_and_greys(tmp_path):
    _write_folder(tmp_path, per_class=5)
    x, y, _ = load_image_folder(tmp_path, size=(8, 4), per_class=2, seed=1, channels=1, progress=False)
    assert x.shape == (8, 1, 8, 4) and torch.bincount(y).tolist() == [2, 2, 2, 2]
    x2, _, _ = load_image_folder(tmp_path, size=(8, 4), per_class=2, seed=1, channels=1, progress=False)
    assert torch.equal(x, x2)


def test_load_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="no such image folder"):
        load_image_folder(tmp_path / "absent")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UserError, match="found none"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="broken.jpg: cannot read image"):
        load_image_folder(tmp_path, progress=False)


# --- the real checkpoints -------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", sorted(CIFAR_RESNET_FILES))
def test_cifar_resnet_checkpoints_load_strictly(depth):
    path = need("resnet_cifar10", CIFAR_RESNET_FILES[depth])
    sd, meta = read_checkpoint(path)
    assert "best_prec1" in meta and all(k.startswith("module.") for k in sd)
    model = load_model(path, f"resnet{depth}", from_data_parallel=True)[0]
    assert torch.equal(model.linear.weight, sd["module.linear.weight"])


def test_mobilefacenet_checkpoint_loads_strictly():
    path = need(MOBILEFACENET_FILE)
    sd, meta = read_checkpoint(path)
    assert meta == {"epoch": 68} and len(sd) == 333
    model = load_model(path, "mobilefacenet")[0]
    assert torch.equal(model.linear7.conv.weight, sd["linear7.conv.weight"])


def test_resnet20_top1_on_cifar_jpeg_subset():
    path = need("resnet_cifar10", CIFAR_RESNET_FILES[20])
    x, y = cifar_jpeg_tensors(need("cifar10_test"), per_class=100, seed=0)
    assert len(y) == 1000
    acc = top1(load_model(path, "resnet20", from_data_parallel=True)[0], x, y)
    assert 78.0 <= acc <= 84.0, f"ResNet-20 top-1 {acc:.2f}% on 1,000 JPEGs; the full set gives about 81%"
    assert top1(get_model("resnet20"), x, y) < 30.0, "an untrained ResNet-20 must be near chance"


def test_mobilefacenet_orl_identification():
    path = need(MOBILEFACENET_FILE)
    x, y = orl_tensors(need("orl_faces"))
    assert x.shape == (380, 3, 112, 96)
    emb = flip_embeddings(load_model(path, "mobilefacenet")[0], x)
    assert emb.shape == (380, 256)
    # 1-NN alone is easy on ORL (raw pixels: 97.6 %, an untrained MobileFaceNet: 96.6 %); the pair AUC separates
    # a face embedder from those baselines (raw pixels 0.938, untrained 0.914, the checkpoint 0.994).
    assert nn_identification(emb, y) >= 99.0
    assert pair_auc(emb, y) >= 0.98
