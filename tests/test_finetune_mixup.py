"""--mixup: label-free distillation on blended images (teacher and student see the same mixed batch)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from compression_tool.cli.finetune import main as finetune_main
from compression_tool.engine.checkpoint import save_pruned
from compression_tool.io.errors import UserError
from model_define import model_spec
from train_module.finetune import FinetuneConfig, finetune_classifier, finetune_embedder, mixup_batch

SIZE = (1, 16, 16)


def digits(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return model_spec("digits_net").build_for(list(SIZE)).eval()


class Recorder(nn.Module):
    """Wraps a model and keeps every input batch it is called with."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


def test_mixup_batch_off_is_identity_on_is_a_seeded_convex_blend():
    x = torch.randn(8, *SIZE, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8)
    assert mixup_batch(x, 0.0, 1) is x
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = mixup_batch(x, 0.4, 7)
    assert torch.equal(torch.get_rng_state(), before)          # the global RNG (augmentation, dropout) untouched
    assert torch.equal(a, mixup_batch(x, 0.4, 7))                # reproducible from the seed
    assert not torch.equal(a, mixup_batch(x, 0.4, 8))            # another seed, another blend
    assert not torch.equal(a, x) and a.shape == x.shape
    # every mixed image is lam * x_i + (1 - lam) * x_j for some j: a point on a segment between two images
    for i in range(8):
        ok = False
        for j in range(8):
            d = x[i] - x[j]
            if torch.equal(a[i], x[i]) or (d.abs().sum() > 0 and torch.allclose(
                    a[i], x[j] + (d * (a[i] - x[j])).sum() / (d * d).sum() * d, atol=1e-5)):
                ok = True
        assert ok, i
    mixed, labels = mixup_batch((x, y), 1.0, 7)
    assert labels is y and not torch.equal(mixed, x)


def run(alpha: float, seed: int = 0) -> tuple:
    student, teacher = Recorder(digits(1)), Recorder(digits(0))
    x = torch.randn(16, *SIZE, generator=torch.Generator().manual_seed(5))
    loader = DataLoader(TensorDataset(x), batch_size=8, shuffle=True)
    cfg = FinetuneConfig(max_iters=3, lr=0.01, distill="cosine", mixup=alpha, seed=seed, progress=False)
    result = finetune_embedder(student, loader, cfg, teacher=teacher)
    return x, student.seen, teacher.seen, [loss for _, loss in result.losses]


def test_distillation_with_mixup_feeds_teacher_and_student_the_same_blended_batch():
    x, plain_s, plain_t, plain_loss = run(0.0)
    rows = {tuple(r.flatten().tolist()) for r in x}
    assert all(tuple(r.flatten().tolist()) in rows for b in plain_s for r in b)     # off: the images as they are
    _, mix_s, mix_t, mix_loss = run(0.4)
    assert len(mix_s) == len(mix_t) == 3
    assert all(torch.equal(s, t) for s, t in zip(mix_s, mix_t))                      # consistent teaching
    assert any(tuple(r.flatten().tolist()) not in rows for b in mix_s for r in b)    # on: new inputs
    assert mix_loss != plain_loss
    _, again_s, _, again_loss = run(0.4)
    assert all(torch.equal(a, b) for a, b in zip(mix_s, again_s)) and again_loss == mix_loss   # same seed
    _, other_s, _, _ = run(0.4, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(mix_s, other_s))


def test_bad_mixup_values_and_mixup_with_labels_are_user_errors():
    teacher = digits()
    loader = DataLoader(TensorDataset(torch.randn(8, *SIZE)), batch_size=4)
    labelled = DataLoader(TensorDataset(torch.randn(8, *SIZE), torch.zeros(8, dtype=torch.long)), batch_size=4)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--mixup must be a non-negative number"):
            finetune_embedder(digits(1), loader, FinetuneConfig(mixup=bad, distill="cosine", progress=False),
                              teacher=teacher)
    with pytest.raises(UserError, match="--mixup blends images but not their labels"):
        finetune_classifier(digits(1), labelled, FinetuneConfig(mixup=0.4, distill="kd", progress=False),
                            teacher=teacher)


def test_cli_mixup_help_and_one_line_error(tmp_path, capsys):
    teacher = digits()
    pruned = save_pruned(tmp_path / "student.pth", digits(1), {"model": "digits_net", "input_size": list(SIZE),
                                                               "keep": []})
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    args = ["--best_model_path", str(pruned), "--teacher_path", str(tmp_path / "teacher.pth"), "--distill", "kd",
            "--max_iters", "2", "--batch_size", "32", "--threads", "1", "--eval_data", "digits",
            "--save_dir", str(tmp_path / "out")]
    for extra, msg in ((["--mixup", "-1"], "--mixup must be a non-negative number"),
                       (["--mixup", "0.4"], "--mixup blends images but not their labels")):
        with pytest.raises(SystemExit) as exc:
            finetune_main(args + extra)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and err.count("\n") == 0 and msg in err, err
    with pytest.raises(SystemExit):
        finetune_main(["--help"])
    assert "--mixup ALPHA" in capsys.readouterr().out
