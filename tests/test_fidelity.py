"""Label-free paths for embedders: the fidelity metric and distillation on unlabeled images."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from compression_tool.apps.finetune import FinetuneJob, run_finetune
from compression_tool.apps.workflow import ModelSource
from compression_tool.engine.checkpoint import save_pruned
from compression_tool.io.errors import UserError
from model_define import get_model, model_spec
from test_module.fidelity import fidelity
from test_module.setup import EvalConfig, build_setup
from train_module.finetune import FinetuneConfig

SIZE = (1, 16, 16)


def faces(root, ids=4, per=4, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(ids):
        (root / f"p{i}").mkdir(parents=True)
        base = rng.integers(0, 255, (16, 16))
        for k in range(per):
            img = np.clip(base + rng.normal(0, 30, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"p{i}" / f"{k}.png")
    return root


def embedder(seed=0):
    torch.manual_seed(seed)
    return get_model("digits_net").eval()      # 10-d outputs serve as embeddings


def test_fidelity_is_one_for_the_reference_and_drops_when_perturbed():
    ref = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    assert fidelity(ref, ref)["fidelity"] == pytest.approx(1.0)
    noisy = torch.nn.functional.normalize(ref + 0.5 * torch.randn(50, 8), dim=1)
    f = fidelity(noisy, ref)
    assert f["fidelity_p05"] <= f["fidelity"] < 0.99
    with pytest.raises(ValueError):
        fidelity(ref[:10], ref)


@pytest.mark.parametrize("spec", ["identity_folders", "image_folder"])
def test_fidelity_setup_needs_no_labels(tmp_path, spec):
    data = f"{spec}:{faces(tmp_path / 'f')}"
    model = embedder()
    setup = build_setup(EvalConfig(data=data, metric="fidelity", folds=2), "embedder", SIZE, reference=model)
    assert setup.metric_names[:2] == ["fidelity", "fidelity_p05"]
    assert setup.evaluate(model)["fidelity"] == pytest.approx(1.0, abs=1e-6)
    other = embedder(seed=1)
    assert setup.evaluate(other)["fidelity"] < 0.99
    with pytest.raises(UserError, match="reference"):
        build_setup(EvalConfig(data=data, metric="fidelity"), "embedder", SIZE)


def test_label_free_distillation_raises_fidelity(tmp_path):
    data = f"image_folder:{faces(tmp_path / 'f', ids=3, per=8)}"
    size = (3, 32, 32)
    torch.manual_seed(0)
    teacher = model_spec("mobilefacenet").build_for(size).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    meta = {"model": "mobilefacenet", "model_kwargs": {}, "input_size": list(size), "keep": []}
    save_pruned(tmp_path / "student.pth", student, meta)
    save_pruned(tmp_path / "teacher.pth", teacher, meta)
    setup = build_setup(EvalConfig(data=data, metric="fidelity"), "embedder", size, reference=teacher)
    before = setup.evaluate(student)["fidelity"]
    ci = build_setup(EvalConfig(data=data, metric="fidelity", ci=True), "embedder", size, reference=teacher)
    row = ci.evaluate(student)                        # --ci on image folders: a band around the same value
    assert ci.metric_names[-2:] == ["fidelity_lo", "fidelity_hi"] and row["fidelity"] == pytest.approx(before)
    assert row["fidelity_lo"] < before < row["fidelity_hi"]
    job = FinetuneJob(source=ModelSource(str(tmp_path / "student.pth")), unlabeled=data,
                      teacher=ModelSource(str(tmp_path / "teacher.pth")), batch_size=8,
                      train=FinetuneConfig(epochs=6, lr=0.01, distill="cosine", freeze_bn=True,
                                           save_dir=str(tmp_path / "out"), progress=False, restore_best=False))
    result = run_finetune(job)
    tuned = torch.load(result.last_path, weights_only=True)["state_dict"]
    student.load_state_dict(tuned)
    assert setup.evaluate(student)["fidelity"] > before + 0.01
    with pytest.raises(UserError, match="--unlabeled"):
        run_finetune(FinetuneJob(source=ModelSource(str(tmp_path / "student.pth")), unlabeled=data))


def test_unlabeled_mixes_several_folders_and_subjects_pick_identities_only(tmp_path):
    from compression_tool.apps.finetune import unlabeled_images

    ids = faces(tmp_path / "ids", ids=4, per=3)
    other = faces(tmp_path / "other", ids=2, per=5, seed=1)
    one = unlabeled_images(f"identity_folders:{ids}", (1, 16, 16), subjects="p1..p2")
    assert one.shape == (6, 1, 16, 16)
    both = unlabeled_images([f"identity_folders:{ids}", f"image_folder:{other}"], (1, 16, 16), subjects="p1..p2")
    assert both.shape == (16, 1, 16, 16)          # 2 identities x 3 + the whole image folder (10)
    assert torch.equal(both[:6], one)
    with pytest.raises(UserError, match="--unlabeled"):
        unlabeled_images([f"image_folder:{other}", "digits"], (1, 16, 16))
    with pytest.raises(UserError, match="at least one"):
        unlabeled_images([], (1, 16, 16))


def test_augment_varies_images_and_is_the_identity_at_zero_strength():
    from compression_tool.data.augment import AugmentConfig, RandomAugment, augment_image

    torch.manual_seed(0)
    x = torch.rand(3, 24, 20) * 2 - 1
    still = augment_image(x, AugmentConfig(rotate=0, scale=0, shift=0, brightness=0, contrast=0))
    assert torch.allclose(still, x, atol=1e-5)
    a, b = augment_image(x), augment_image(x)
    assert a.shape == x.shape and not torch.allclose(a, b) and not torch.allclose(a, x, atol=1e-2)
    ds = RandomAugment(torch.utils.data.TensorDataset(x[None].repeat(4, 1, 1, 1), torch.arange(4)))
    img, label = ds[2]
    assert img.shape == x.shape and int(label) == 2 and len(ds) == 4
