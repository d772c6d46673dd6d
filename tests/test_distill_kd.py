"""--distill kd: Hinton's knowledge distillation of classifier logits (T^2 * KL of temperature-softened softmaxes)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from compression_tool.io.errors import UserError
from train_module.finetune import FinetuneConfig, FinetuneLoss, distillation_loss, finetune_classifier


def kd_by_hand(student, teacher, t: float) -> float:
    """T^2 * mean over rows of sum_c p_c (log p_c - log q_c), p = softmax(teacher/T), q = softmax(student/T)."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = [math.exp(v / t) for v in s_row]
        zt = [math.exp(v / t) for v in t_row]
        q = [v / sum(zs) for v in zs]
        p = [v / sum(zt) for v in zt]
        total += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
    return t * t * total / len(student)


STUDENT = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
TEACHER = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]])


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_kd_loss_matches_a_hand_computation(t):
    got = distillation_loss(STUDENT, TEACHER, "kd", temperature=t).item()
    assert got == pytest.approx(kd_by_hand(STUDENT, TEACHER, t), rel=1e-5)
    assert got > 0
    assert distillation_loss(TEACHER, TEACHER, "kd", temperature=t).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_is_scaled_by_t_squared_so_gradients_keep_their_size():
    # the loss is T^2 * KL: dividing by T^2 must give the plain KL of the softened distributions
    t = 4.0
    p = torch.softmax(TEACHER / t, 1)
    kl = (p * (p.log() - torch.log_softmax(STUDENT / t, 1))).sum(1).mean()
    assert distillation_loss(STUDENT, TEACHER, "kd", temperature=t).item() == pytest.approx(16 * kl.item(), rel=1e-5)
    # its gradient w.r.t. the student logits is T * (q - p) / N: T^2 cancels the 1/T^2 of the softened softmax
    s = STUDENT.clone().requires_grad_(True)
    distillation_loss(s, TEACHER, "kd", temperature=t).backward()
    expected = t * (torch.softmax(STUDENT / t, 1) - p) / len(STUDENT)
    assert torch.allclose(s.grad, expected, atol=1e-6)
    # for small logit gaps the T^2-scaled loss approaches the T-independent 1/(2C) * centred-logit MSE
    small_s, small_t = STUDENT * 0.01, TEACHER * 0.01
    a = distillation_loss(small_s, small_t, "kd", temperature=20.0).item()
    b = distillation_loss(small_s, small_t, "kd", temperature=40.0).item()
    assert a == pytest.approx(b, rel=1e-2) and a > 0


def tiny(out: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, out))


def test_kd_gradient_reaches_the_student_and_not_the_teacher():
    student, teacher = tiny(seed=0), tiny(seed=1)
    loss_fn = FinetuneLoss("classifier", teacher=teacher, distill="kd", alpha=1.0, temperature=4.0)
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    loss, parts = loss_fn(student, x, y)
    loss.backward()
    assert set(parts) == {"ce", "distill"} and parts["distill"] > 0
    assert loss.item() == pytest.approx(parts["ce"] + parts["distill"], rel=1e-5)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_kd_refuses_bad_input():
    student = tiny(out=4)
    with pytest.raises(UserError, match="teacher model and --distill"):
        FinetuneLoss("classifier", distill="kd")
    with pytest.raises(UserError, match="embedder"):
        FinetuneLoss("embedder", teacher=tiny(), distill="kd")
    with pytest.raises(UserError, match="--temperature"):
        FinetuneLoss("classifier", teacher=tiny(), distill="kd", temperature=0.0)
    loss_fn = FinetuneLoss("classifier", teacher=tiny(out=3), distill="kd")
    with pytest.raises(UserError, match=r"teacher output \(2, 3\) differ"):
        loss_fn(student, torch.randn(2, 8), torch.tensor([0, 1]))


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x).argmax(1) == b(x).argmax(1)).float().mean().item()


def test_finetune_with_kd_learns_the_teacher():
    """Labels agree with the teacher on only ~60 % of the points; KD pulls the student to the teacher's decisions
    (beyond what the labels alone give) and lowers the softened KL on held-out points."""
    teacher = tiny(seed=1)
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(256, 8, generator=g), torch.randn(256, 8, generator=g)
    with torch.no_grad():
        ytr = teacher(xtr).argmax(1)
    noisy = torch.rand(len(ytr), generator=g) < 0.4
    ytr = torch.where(noisy, torch.randint(0, 4, ytr.shape, generator=g), ytr)

    def run(distill):
        student = tiny(seed=0)
        cfg = FinetuneConfig(epochs=20, lr=0.05, weight_decay=0.0, distill=distill, alpha=4.0, temperature=2.0,
                             progress=False)
        loader = DataLoader(TensorDataset(xtr, ytr), batch_size=32, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        finetune_classifier(student, loader, cfg, teacher=teacher if distill else None)
        return student

    before = agreement(tiny(seed=0), teacher, xte)
    ce_only, kd = run(None), run("kd")
    with torch.no_grad():
        kl_ce = distillation_loss(ce_only(xte), teacher(xte), "kd", 2.0).item()
        kl_kd = distillation_loss(kd(xte), teacher(xte), "kd", 2.0).item()
    assert agreement(kd, teacher, xte) > max(before, agreement(ce_only, teacher, xte)) + 0.05
    assert kl_kd < 0.5 * kl_ce, (kl_kd, kl_ce)


def test_cli_passes_kd_flags_through_both_entry_points():
    from compression_tool.cli.finetune import build_parser, job_from_args

    argv = ["--best_model_path", "s.pth", "--teacher_path", "t.pth", "--distill", "kd", "--temperature", "2.5",
            "--alpha", "0.7"]
    for prog in ("python -m train_module", "pruning.py --mode finetune"):
        job = job_from_args(build_parser(prog).parse_args(argv))
        assert (job.train.distill, job.train.temperature, job.train.alpha) == ("kd", 2.5, 0.7)
    assert build_parser().parse_args(["--best_model_path", "s.pth"]).temperature == 4.0
