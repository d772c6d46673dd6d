"""train_module: margin heads, optimizer groups and LR schedule, fine-tuning loops, checkpoints and resume."""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from compression_tool.io.errors import UserError
from train_module.finetune import (
    FinetuneConfig,
    checkpoint_name,
    finetune,
    finetune_classifier,
    finetune_embedder,
    load_checkpoint,
)
from train_module.heads import ArcFace, CosFace, make_head
from train_module.optim import build_optimizer, build_scheduler, split_decay_params

# ---------------------------------------------------------------- helpers



def two_class_head(cls, **kw):
    """A head over 2-d embeddings whose class centres are the x axis (class 0) and the y axis (class 1)."""
    head = cls(2, 2, **kw)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))   # norms differ: the head must normalise
    return head


def at_angle(theta: float, norm: float = 2.0) -> torch.Tensor:
    return norm * torch.tensor([[math.cos(theta), math.sin(theta)]])


def identities(n_per: int, seed: int, dim: int = 16):
    """4 identities separated in 2 dims, buried under larger nuisance variance in the other dims."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.arange(4) * (math.pi / 2)
    centres = torch.stack([ang.cos(), ang.sin()], 1) * 1.5
    y = torch.arange(4).repeat_interleave(n_per)
    x = torch.randn(len(y), dim, generator=g) * 2.0
    x[:, :2] = centres[y] + 0.3 * torch.randn(len(y), 2, generator=g)
    return x, y


def embedder(width: int = 32, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Linear(16, width), nn.BatchNorm1d(width), nn.PReLU(width), nn.Dropout(dropout),
                         nn.Linear(width, 8))


def loader(*tensors, batch_size: int = 32, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def verification_auc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """AUC of cosine similarity over all pairs of held-out samples (same identity = positive)."""
    e = F.normalize(embed(model, x), dim=1)
    sim, same = (e @ e.T).numpy(), (y[:, None] == y[None]).numpy()
    iu = np.triu_indices(len(y), 1)
    return float(roc_auc_score(same[iu], sim[iu]))


def quiet(**kw) -> FinetuneConfig:
    return FinetuneConfig(progress=False, **kw)


# ---------------------------------------------------------------- heads


def test_arcface_target_logit_is_s_cos_theta_plus_m():
    s, m, theta = 10.0, 0.5, 0.3
    logits = two_class_head(ArcFace, s=s, m=m)(at_angle(theta), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(s * math.cos(theta + m), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(s * math.cos(math.pi / 2 - theta), abs=1e-5)  # no margin
    logits = two_class_head(ArcFace, s=s, m=m)(at_angle(theta), torch.tensor([1]))
    assert logits[0, 0].item() == pytest.approx(s * math.cos(theta), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(s * math.cos(math.pi / 2 - theta + m), abs=1e-5)


def test_arcface_past_pi_uses_monotone_fallback_and_easy_margin():
    s, m, theta = 10.0, 0.5, 2.9                      # theta + m > pi: cos(theta + m) would increase again
    x, y = at_angle(theta), torch.tensor([0])
    hard = two_class_head(ArcFace, s=s, m=m)(x, y)[0, 0].item()
    assert hard == pytest.approx(s * (math.cos(theta) - m * math.sin(m)), abs=1e-5)
    assert hard < s * math.cos(theta + m)
    easy = two_class_head(ArcFace, s=s, m=m, easy_margin=True)(x, y)[0, 0].item()
    assert easy == pytest.approx(s * math.cos(theta), abs=1e-5)  # cos < 0: no margin with easy_margin
    easy_small = two_class_head(ArcFace, s=s, m=m, easy_margin=True)(at_angle(0.3), y)[0, 0].item()
    assert easy_small == pytest.approx(s * math.cos(0.3 + m), abs=1e-5)


def test_cosface_target_logit_and_no_label_logits():
    s, m, theta = 8.0, 0.35, 0.7
    head = two_class_head(CosFace, s=s, m=m)
    logits = head(at_angle(theta), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(s * (math.cos(theta) - m), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(s * math.sin(theta), abs=1e-5)
    plain = head(at_angle(theta))
    assert plain[0, 0].item() == pytest.approx(s * math.cos(theta), abs=1e-5)


def test_make_head():
    head = make_head("ArcFace", 8, 5, s=32.0)
    assert isinstance(head, ArcFace) and head.s == 32.0 and head.m == 0.5
    assert head(torch.randn(3, 8), torch.tensor([0, 4, 2])).shape == (3, 5)
    assert isinstance(make_head("cosface", 8, 5), CosFace) and make_head("cosface", 8, 5).s == 64.0
    with pytest.raises(UserError, match="unknown head 'sphereface'"):
        make_head("sphereface", 8, 5)


# ---------------------------------------------------------------- optimizer and schedule


def test_no_weight_decay_groups_are_exactly_bn_bias_prelu():
    from model_define import get_model

    model, head = get_model("digits_net"), ArcFace(10, 4)
    names = {id(p): n for n, p in model.named_parameters()}
    names.update({id(p): "head." + n for n, p in head.named_parameters()})
    expected_no_decay = {"stem.1.weight", "stem.1.bias", "block.bn1.weight", "block.bn1.bias",
                         "block.prelu.weight", "block.bn2.weight", "block.bn2.bias", "down.1.weight",
                         "down.1.bias", "fc1.bias", "fc2.bias"}
    opt = build_optimizer(model, head, lr=0.1, momentum=0.9, weight_decay=5e-4)
    decay, no_decay = opt.param_groups
    assert {names[id(p)] for p in no_decay["params"]} == expected_no_decay
    assert {names[id(p)] for p in decay["params"]} == set(names.values()) - expected_no_decay
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    frozen = nn.Linear(2, 2)
    frozen.weight.requires_grad_(False)
    assert split_decay_params([frozen, None]) == ([], [frozen.bias])


def test_warmup_then_milestones_per_iteration():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, milestones=(6, 8), gamma=0.1, warmup_iters=4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    with pytest.raises(UserError, match="--warmup_iters"):
        build_scheduler(opt, warmup_iters=-1)


def test_cosine_schedule_warms_up_then_decays_to_zero_over_the_run():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, warmup_iters=2, schedule="cosine", total_iters=8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    cos = [0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
    assert lrs == pytest.approx([0.1 * c * min(1.0, (i + 1) / 2) for i, c in enumerate(cos)])
    assert lrs[1] == pytest.approx(0.1 * cos[1]) and lrs[-1] < 0.005      # warm, then nearly 0 at the end
    with pytest.raises(UserError, match="drop --milestones"):
        build_scheduler(opt, milestones=(4,), schedule="cosine", total_iters=8)
    with pytest.raises(UserError, match="--lr_schedule: expected one of step, cosine"):
        build_scheduler(opt, schedule="linear")


# ---------------------------------------------------------------- training


def test_arcface_training_improves_held_out_verification():
    torch.manual_seed(0)
    model, head = embedder(), ArcFace(8, 4, s=16.0, m=0.5)
    (xtr, ytr), (xte, yte) = identities(32, seed=1), identities(25, seed=2)
    before = verification_auc(model, xte, yte)
    result = finetune_embedder(model, loader(xtr, ytr), quiet(epochs=12, lr=0.1), head=head)
    after = verification_auc(model, xte, yte)
    assert result.step == 12 * 4
    assert after > before + 0.2 and after > 0.9, (before, after)


def test_pure_distillation_without_labels_reduces_cosine_distance():
    torch.manual_seed(0)
    teacher = embedder(width=32)
    student = embedder(width=12)          # a "pruned" narrower student with the same embedding size
    xtr, _ = identities(32, seed=1)
    xte, _ = identities(25, seed=2)

    def distance() -> float:
        return (1 - F.cosine_similarity(embed(student, xte), embed(teacher, xte))).mean().item()

    before = distance()
    finetune_embedder(student, loader(xtr), quiet(epochs=15, lr=0.1, distill="cosine"), teacher=teacher)
    after = distance()
    assert after < 0.5 * before, (before, after)


def test_freeze_bn_keeps_running_stats():
    torch.manual_seed(0)
    x, y = identities(16, seed=1)
    for freeze in (True, False):
        model = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
        mean0 = model[1].running_mean.clone()
        finetune_classifier(model, loader(x, y), quiet(max_iters=3, lr=0.05, freeze_bn=freeze))
        assert torch.equal(model[1].running_mean, mean0) == freeze
        assert not torch.equal(model[0].weight, torch.zeros_like(model[0].weight))


def test_bad_setups_are_user_errors(tmp_path):
    x, y = identities(4, seed=1)
    model = embedder()
    with pytest.raises(UserError, match="margin head .* or a teacher"):
        finetune_embedder(model, loader(x, y), quiet())
    with pytest.raises(UserError, match="teacher model and --distill"):
        finetune_embedder(model, loader(x, y), quiet(distill="cosine"), head=ArcFace(8, 4))
    with pytest.raises(UserError, match="needs labels"):
        finetune_classifier(model, loader(x), quiet())
    with pytest.raises(UserError, match="no such --resume checkpoint"):
        finetune_embedder(model, loader(x, y), quiet(), head=ArcFace(8, 4), resume=tmp_path / "missing.pth")


def test_resume_equals_straight_run_and_best_name_carries_metric(tmp_path):
    """12 iterations straight vs resume from the best checkpoint (step 6, mid-epoch) and continue."""
    (x, y) = identities(16, seed=1)                            # 64 samples, batch 16: 4 iterations per epoch
    scores = iter([1.0, 3.0, 2.0, 0.5])                        # evaluations at steps 3, 6, 9, 12

    def run(save_dir, eval_fn, resume=None, init_seed=0):
        torch.manual_seed(init_seed)
        model, head = embedder(dropout=0.2), ArcFace(8, 4, s=16.0)
        cfg = quiet(epochs=3, lr=0.05, warmup_iters=2, milestones=(8,), eval_every=3, save_dir=str(save_dir))
        res = finetune_embedder(model, loader(x, y, batch_size=16), cfg, head=head, eval_fn=eval_fn,
                                meta={"model": "tiny"}, resume=resume)
        return model, head, res

    straight_model, straight_head, straight = run(tmp_path / "a", lambda m: OrderedDict(score=next(scores)))
    assert straight.best_step == 6 and straight.best_metrics == {"score": 3.0}
    assert straight.best_path.name == "best_score=3.00_step=6.pth" == checkpoint_name("score", 3.0, 6)
    assert [p.name for p in (tmp_path / "a").iterdir()] == [straight.best_path.name]  # earlier best removed
    ckpt = load_checkpoint(straight.best_path)
    assert ckpt["meta"]["model"] == "tiny" and ckpt["meta"]["step"] == 6
    assert ckpt["meta"]["train_state"]["optimizer"] is not None

    resumed_model, resumed_head, resumed = run(tmp_path / "a", lambda m: OrderedDict(score=0.0),
                                               resume=straight.best_path, init_seed=123)
    assert resumed.losses == straight.losses[6:]               # same loss at the same step, bit for bit
    assert resumed.best_path is None                           # 0.0 never beats the restored best 3.0
    for a, b in ((straight_model, resumed_model), (straight_head, resumed_head)):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k

    with pytest.raises(UserError, match="already holds checkpoints"):   # never clobber without force
        run(tmp_path / "a", lambda m: OrderedDict(score=3.0))
    (tmp_path / "a" / "best_score=4.00_step=9.pth").write_text("not ours")
    with pytest.raises(UserError, match="already exists"):             # nor a resumed run
        run(tmp_path / "a", lambda m: OrderedDict(score=4.0), resume=straight.best_path)
    assert (tmp_path / "a" / "best_score=4.00_step=9.pth").read_text() == "not ours"
    with pytest.raises(UserError, match="trained with a margin head"):
        finetune_embedder(embedder(), loader(x), quiet(distill="mse"), teacher=embedder(),
                          resume=straight.best_path)
    with pytest.raises(UserError, match="ran iteration 0 at LR 0.025 .*these flags give 0.01 there"):
        finetune_embedder(embedder(dropout=0.2), loader(x, y, batch_size=16), quiet(epochs=3, lr_schedule="cosine"),
                          head=ArcFace(8, 4, s=16.0), resume=straight.best_path)
    with pytest.raises(UserError, match="ran iteration 0 at LR 0.025 .*lr=0.05.*these flags give 0.05"):
        finetune_embedder(embedder(dropout=0.2), loader(x, y, batch_size=16),    # another --lr: refused, not ignored
                          quiet(epochs=3, lr=0.1, warmup_iters=2, milestones=(8,)),
                          head=ArcFace(8, 4, s=16.0), resume=straight.best_path)


def test_cosine_resume_equals_straight_run(tmp_path):
    """The cosine curve is saved with the run: resuming at step 6 of 12 continues it bit for bit."""
    (x, y) = identities(16, seed=1)
    scores = iter([1.0, 3.0, 2.0, 0.5])

    def run(save_dir, eval_fn, resume=None):
        torch.manual_seed(0)
        model, head = embedder(), ArcFace(8, 4, s=16.0)
        cfg = quiet(epochs=3, lr=0.05, warmup_iters=2, lr_schedule="cosine", eval_every=3, save_dir=str(save_dir))
        return finetune_embedder(model, loader(x, y, batch_size=16), cfg, head=head, eval_fn=eval_fn,
                                 meta={"model": "tiny"}, resume=resume)

    straight = run(tmp_path / "a", lambda m: OrderedDict(score=next(scores)))
    resumed = run(tmp_path / "a", lambda m: OrderedDict(score=0.0), resume=straight.best_path)
    assert straight.best_step == 6 and resumed.losses == straight.losses[6:]


def test_wsd_schedule_holds_then_decays_linearly_to_zero():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, warmup_iters=2, schedule="wsd", total_iters=8, decay_iters=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1, 0.075, 0.05, 0.025])
    with pytest.raises(UserError, match="--decay_iters must be in 1..8"):
        build_scheduler(opt, schedule="wsd", total_iters=8, decay_iters=9)
    with pytest.raises(UserError, match="--decay_iters belongs to --lr_schedule wsd"):
        build_scheduler(opt, schedule="cosine", total_iters=8, decay_iters=2)


def test_constant_run_resumes_into_a_wsd_decay_bit_for_bit(tmp_path):
    """A constant-LR run stopped at step 8, resumed with --lr_schedule wsd over 12 iterations (decay over the last
    4): the same losses and weights as a straight wsd run; a milestone moved past the checkpoint counts too."""
    (x, y) = identities(16, seed=1)

    def run(save_dir, cfg, resume=None):
        torch.manual_seed(0)
        model, head = embedder(), ArcFace(8, 4, s=16.0)
        res = finetune_embedder(model, loader(x, y, batch_size=16), cfg, head=head, meta={"model": "tiny"},
                                resume=resume)
        return model, res

    wsd = dict(max_iters=12, lr=0.05, warmup_iters=2, lr_schedule="wsd", decay_iters=4)
    straight_model, straight = run(tmp_path / "s", quiet(**wsd))
    _, first = run(tmp_path / "c", quiet(max_iters=8, lr=0.05, warmup_iters=2, save_dir=str(tmp_path / "c")))
    resumed_model, resumed = run(tmp_path / "r", quiet(**wsd), resume=first.last_path)
    assert resumed.losses == straight.losses[8:]
    for (k, a), b in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    constant_model, _ = run(tmp_path / "k", quiet(max_iters=12, lr=0.05, warmup_iters=2),
                            resume=first.last_path)                  # the decay is what changed the weights
    assert not torch.equal(constant_model[0].weight, resumed_model[0].weight)
    moved_model, moved = run(tmp_path / "m", quiet(max_iters=12, lr=0.05, warmup_iters=2, milestones=(10,)),
                             resume=first.last_path)
    _, straight_m = run(tmp_path / "sm", quiet(max_iters=12, lr=0.05, warmup_iters=2, milestones=(10,)))
    assert moved.losses == straight_m.losses[8:]
    with pytest.raises(UserError, match="ran iteration 6 at LR 0.05 .*these flags give 0.005 there"):
        run(tmp_path / "e", quiet(max_iters=12, lr=0.05, warmup_iters=2, milestones=(6,)), resume=first.last_path)


def test_checkpoint_name():
    assert checkpoint_name("lfw_acc", 98.1666, 300) == "best_lfw_acc=98.17_step=300.pth"
    assert checkpoint_name("tpr@fpr=1e-3", 0.5, 7) == "best_tpr@fpr_1e-3=0.50_step=7.pth"


def test_cli_finetunes_a_plain_digits_checkpoint(tmp_path, capsys):
    from compression_tool.cli.finetune import main
    from model_define import get_model

    torch.manual_seed(0)
    src = tmp_path / "digits_net.pth"
    torch.save(get_model("digits_net").state_dict(), src)
    main(["--model", "digits_net", "--best_model_path", str(src), "--data", "digits", "--max_iters", "4",
          "--eval_every", "2", "--lr", "0.05", "--batch_size", "32", "--save_dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    saved = list((tmp_path / "out").glob("best_top1=*_step=*.pth"))
    assert len(saved) == 1 and str(saved[0]) in out
    meta = load_checkpoint(saved[0])["meta"]
    assert meta["model"] == "digits_net" and meta["finetune"]["data"] == "digits"
    assert meta["finetune"]["lr_schedule"] == "step"
    with pytest.raises(SystemExit):
        main(["--model", "digits_net", "--best_model_path", str(src), "--data", "digits", "--epochs", "2",
              "--milestones", "1", "--lr_schedule", "cosine", "--save_dir", str(tmp_path / "cos")])
    assert "drop --milestones" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "digits_net", "--best_model_path", str(src), "--head", "arcface"])
    assert "is a classifier" in capsys.readouterr().err


def test_plain_finetune_is_the_general_entry_point():
    x, y = identities(4, seed=1)
    res = finetune(embedder(), loader(x, y), quiet(max_iters=2, eval_every=2, eval_at_start=True), task="embedder",
                   head=CosFace(8, 4), eval_fn=lambda m: {"n_params": sum(p.numel() for p in m.parameters())})
    assert res.step == 2 and len(res.losses) == 2 and all(math.isfinite(v) for _, v in res.losses)
    assert [s for s, _ in res.evals] == [0, 2] and res.best_step == 0 and res.best_path is None
