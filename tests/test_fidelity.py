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
