"""Unstructured pruning: masks kept through training, ratio/threshold modes, skipping, GMP, sparse checkpoints,
resume, and the train_sparse.py CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.engine.unstructured import (
    GMPSchedule,
    GMPUnstructuredPruner,
    UnstructuredPruner,
    default_skip_params,
)
from compression_tool.io.errors import UserError
from compression_tool.io.sparse_checkpoint import (
    bit_equal,
    load_sparse_checkpoint,
    nonzero_pattern,
    pack_bits,
    save_sparse_checkpoint,
    unpack_bits,
)
from train_module.sparse import restore_training_checkpoint, save_training_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PRUNED = ["conv1.weight", "conv2.weight", "fc.weight"]


class Tiny(nn.Module):
    """Every kind of normalisation layer, biases, a PReLU slope: only the three weights are pruned by default."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(2, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.ln = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv1(x)))
        x = self.inorm(self.gn(self.conv2(x)))
        return self.fc(self.ln(torch.flatten(F.adaptive_avg_pool2d(x, 2), 1)))


def make(seed: int = 0) -> Tuple[Tiny, List[Tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = Tiny()
    g = torch.Generator().manual_seed(123)
    data = [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(6)]
    return model, data


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, data, n: int,
                after: Callable[[], None] = lambda: None) -> None:
    for i in range(n):
        x, y = data[i % len(data)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        after()


def optimizers() -> Dict[str, Callable[[nn.Module], torch.optim.Optimizer]]:
    return {"sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
            "nesterov": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                                  weight_decay=1e-2),
            "adam": lambda m: torch.optim.Adam(m.parameters(), lr=0.05, weight_decay=1e-2),
            "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.1)}


def masked_values(pruner: UnstructuredPruner) -> torch.Tensor:
    return torch.cat([p.detach()[~pruner.masks[n]] for n, p in pruner.params.items()])


def weights_sparsity(model: nn.Module, names=PRUNED) -> float:
    params = dict(model.named_parameters())
    return 1 - sum(int(params[n].count_nonzero()) for n in names) / sum(params[n].numel() for n in names)


# ---------------------------------------------------------------- skipping

def test_default_skip_leaves_norms_biases_and_1d_params():
    model, _ = make()
    pruner = UnstructuredPruner(model, mode="ratio", ratio=0.5)
    assert sorted(pruner.params) == PRUNED
    names = dict(model.named_parameters())
    assert default_skip_params(model) == set(names) - set(PRUNED)


def test_skipped_params_untouched_and_custom_skip():
    model, data = make()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = UnstructuredPruner(model, mode="threshold", threshold=1e9)   # masks every pruned entry
    pruner.step()
    for n, p in model.named_parameters():
        if n in PRUNED:
            assert p.count_nonzero() == 0, n
        else:
            assert torch.equal(p, before[n]), n
    x, y = data[0]
    F.cross_entropy(model(x), y).backward()
    assert model.fc.bias.grad.abs().sum() > 0        # skipped parameters keep training

    model2, _ = make()
    keep = model2.conv1.weight.detach().clone()
    custom = UnstructuredPruner(model2, mode="threshold", threshold=1e9, skip_params_func=lambda m: ["conv1.weight"])
    assert "conv1.weight" not in custom.params and "bn.weight" in custom.params   # replaces the default
    custom.step()
    assert torch.equal(model2.conv1.weight, keep)
    assert model2.conv2.weight.count_nonzero() == 0


def test_unknown_skip_name_and_bad_settings():
    model, _ = make()
    with pytest.raises(UserError, match="unknown parameter"):
        UnstructuredPruner(model, skip_params_func=lambda m: ["conv9.weight"])
    with pytest.raises(UserError, match="ratio"):
        UnstructuredPruner(model, mode="ratio", ratio=1.5)
    with pytest.raises(UserError, match="mode"):
        UnstructuredPruner(model, mode="l1")
    with pytest.raises(UserError, match="nothing to prune"):
        UnstructuredPruner(model, skip_params_func=lambda m: [n for n, _ in m.named_parameters()])


# ---------------------------------------------------------------- modes

@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("ratio", [0.1, 0.55, 0.9])
def test_ratio_mode_hits_requested_sparsity(ratio: float, local: bool):
    model, data = make()
    opt = optimizers()["sgd"](model)
    pruner = UnstructuredPruner(model, mode="ratio", ratio=ratio, local_sparsity=local, optimizer=opt)
    train_steps(model, opt, data, 12, pruner.step)
    assert abs(weights_sparsity(model) - ratio) <= 0.005
    assert abs(pruner.sparsity() - ratio) <= 0.005
    if local:
        for n in PRUNED:
            assert abs(weights_sparsity(model, [n]) - ratio) <= 0.005 + 1 / dict(model.named_parameters())[n].numel()


def test_threshold_mode_masks_small_magnitudes():
    model, data = make()
    opt = optimizers()["sgd"](model)
    thr = 0.08
    small = {n: p.detach().abs() < thr for n, p in model.named_parameters() if n in PRUNED}
    pruner = UnstructuredPruner(model, mode="threshold", threshold=thr, optimizer=opt)
    pruner.step()
    for n, p in pruner.params.items():
        assert torch.equal(pruner.masks[n], ~small[n]), n
        assert torch.all(p[small[n]] == 0) and torch.all(p[~small[n]].abs() >= thr)
    train_steps(model, opt, data, 10, pruner.step)
    for n, p in pruner.params.items():
        nz = p.detach()[p.detach() != 0]
        assert torch.all(nz.abs() >= thr)   # every weight still alive is above the threshold
        assert torch.all(p.detach()[small[n]] == 0)
    assert 0 < pruner.sparsity() < 1


def test_total_sparse_counts_all_parameters():
    model, _ = make()
    with torch.no_grad():
        model.conv2.weight[:3] = 0
        model.bn.bias.zero_()
    params = list(model.parameters())
    zeros = sum(int((p == 0).sum()) for p in params)
    assert UnstructuredPruner.total_sparse(model) == pytest.approx(zeros / sum(p.numel() for p in params))
    assert zeros >= 3 * 72 + 8


# ---------------------------------------------------------------- masks kept through training

def _pretrained_with_state(kind: str):
    model, data = make()
    opt = optimizers()[kind](model)
    train_steps(model, opt, data, 5)          # optimizer state (momentum, Adam moments) is now non-zero
    return model, data, opt


@pytest.mark.parametrize("kind", list(optimizers()))
def test_zeros_stay_zero_without_update_params(kind: str):
    model, data, opt = _pretrained_with_state(kind)
    pruner = UnstructuredPruner(model, mode="ratio", ratio=0.6, optimizer=opt)
    pruner.step()
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    train_steps(model, opt, data, 40)         # the user never calls step() or update_params()
    for n, p in pruner.params.items():
        assert torch.equal(pruner.masks[n], masks[n])
        dead = p.detach()[~masks[n]]
        assert torch.all(dead == 0) and not torch.any(torch.signbit(dead)), n   # exactly +0.0
        for v in opt.state[p].values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert torch.all(v[~masks[n]] == 0), n
    assert abs(weights_sparsity(model) - 0.6) <= 0.005


@pytest.mark.parametrize("kind", list(optimizers()))
def test_control_without_pruner_momentum_revives_zeros(kind: str):
    """The same training with a one-off zeroing (no pruner): the optimizer brings the weights back."""
    model, data, opt = _pretrained_with_state(kind)
    with torch.no_grad():
        w = model.conv2.weight
        w.masked_fill_(w.abs() < w.abs().median(), 0.0)
    dead = w.detach() == 0
    train_steps(model, opt, data, 5)
    assert w.detach()[dead].count_nonzero() > 0


def test_forward_and_grad_guards_without_optimizer():
    model, data, opt = _pretrained_with_state("sgd")
    pruner = UnstructuredPruner(model, mode="ratio", ratio=0.7)   # not told about the optimizer
    pruner.step()
    for i in range(10):
        x, y = data[i % len(data)]
        opt.zero_grad()
        out = model(x)                         # the forward pre-hook re-zeroes what momentum moved
        for n, p in pruner.params.items():
            assert torch.all(p.detach()[~pruner.masks[n]] == 0), n
        F.cross_entropy(out, y).backward()
        for n, p in pruner.params.items():
            assert torch.all(p.grad[~pruner.masks[n]] == 0), n
        opt.step()
    pruner.update_params()
    assert torch.all(masked_values(pruner) == 0)
    pruner.remove()
    train_steps(model, opt, data, 3)           # hooks gone: momentum now moves the masked weights again
    assert masked_values(pruner).count_nonzero() > 0


# ---------------------------------------------------------------- GMP

def test_gmp_schedule_is_cubic_and_discrete():
    s = GMPSchedule(initial_ratio=0.2, final_ratio=0.8, pruning_iters=100, stable_iters=10, update_every=10)
    assert s.ratio_at(0) == 0.0 and s.ratio_at(9) == 0.0
    assert s.ratio_at(10) == pytest.approx(0.2)
    assert s.ratio_at(60) == pytest.approx(0.8 - 0.6 * 0.5 ** 3)
    assert s.ratio_at(69) == s.ratio_at(60)
    assert s.ratio_at(110) == s.ratio_at(10 ** 6) == 0.8
    ratios = [s.ratio_at(t) for t in range(130)]
    assert all(a <= b for a, b in zip(ratios, ratios[1:]))
    with pytest.raises(UserError):
        GMPSchedule(0.9, 0.5, 10)
    with pytest.raises(UserError):
        GMPSchedule(0.1, 0.5, 0)


def test_gmp_pruner_ramps_to_final_ratio():
    model, data = make()
    opt = optimizers()["sgd"](model)
    pruner = GMPUnstructuredPruner(model, GMPSchedule(0.1, 0.75, pruning_iters=20, stable_iters=2, update_every=4),
                                   optimizer=opt)
    seen: List[float] = []
    train_steps(model, opt, data, 30, lambda: (pruner.step(), seen.append(pruner.sparsity())))
    assert seen[0] == 0.0                                  # stable phase: dense
    assert all(a <= b + 1e-12 for a, b in zip(seen, seen[1:]))
    assert abs(seen[-1] - 0.75) <= 0.005
    assert pruner.settings()["schedule"]["final_ratio"] == 0.75


# ---------------------------------------------------------------- sparse checkpoints

def test_pack_bits_round_trip_odd_lengths():
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 9, 1001):
        flags = torch.rand(n, generator=g) < 0.3
        packed = pack_bits(flags)
        assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
        assert torch.equal(unpack_bits(packed, n), flags)


def test_sparse_checkpoint_bit_exact_and_small(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 500, generator=g)
    w[torch.rand(w.shape, generator=g) < 0.9] = 0.0
    w[0, :3] = torch.tensor([-0.0, float("nan"), float("-inf")])
    half = torch.randn(64, 64, generator=g).half()
    half[:50] = 0
    sd = {"w": w, "half": half, "dense": torch.randn(300, generator=g), "steps": torch.tensor(7),
          "small": torch.zeros(4)}
    mask = nonzero_pattern(w).clone()
    mask[1, 0] = True                          # a kept weight that happens to be 0.0
    w[1, 0] = 0.0
    path = save_sparse_checkpoint(tmp_path / "s.pth", sd, {"model": "x"}, masks={"w": mask})
    dense = tmp_path / "d.pth"
    torch.save(sd, dense)
    assert path.stat().st_size < 0.2 * dense.stat().st_size
    ck = load_sparse_checkpoint(path)
    assert list(ck.state_dict) == list(sd)
    for k, v in sd.items():
        assert bit_equal(ck.state_dict[k], v), k
    assert not bit_equal(torch.tensor([-0.0]), torch.tensor([0.0]))
    assert torch.equal(ck.masks["w"], mask) and ck.meta == {"model": "x"}
    assert load_sparse_checkpoint(path).meta == {"model": "x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pth", "s.pth"]   # no temp files left


def test_sparse_checkpoint_no_clobber_and_bad_files(tmp_path: Path):
    sd = {"w": torch.zeros(100)}
    path = save_sparse_checkpoint(tmp_path / "a.pth", sd)
    with pytest.raises(UserError, match="--force"):
        save_sparse_checkpoint(path, {"w": torch.ones(100)})
    assert torch.equal(load_sparse_checkpoint(path).state_dict["w"], sd["w"])
    save_sparse_checkpoint(path, {"w": torch.ones(100)}, force=True)
    assert torch.equal(load_sparse_checkpoint(path).state_dict["w"], torch.ones(100))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        load_sparse_checkpoint(junk)
    with pytest.raises(UserError, match="no such"):
        load_sparse_checkpoint(tmp_path / "missing.pth")


# ---------------------------------------------------------------- resume

def test_resume_restores_masks_and_continues_identically(tmp_path: Path):
    model, data = make()
    opt = optimizers()["sgd"](model)
    pruner = UnstructuredPruner(model, mode="ratio", ratio=0.6, optimizer=opt)
    train_steps(model, opt, data, 6, pruner.step)
    ckpt = save_training_checkpoint(tmp_path / "e1.pth", model, pruner, epoch=1, optimizer=opt)
    masks_at_save = {n: m.clone() for n, m in pruner.masks.items()}
    train_steps(model, opt, data, 6, pruner.step)

    resumed, _ = make(seed=99)                  # different init: everything must come from the file
    opt2 = optimizers()["sgd"](resumed)
    pruner2 = UnstructuredPruner(resumed, mode="ratio", ratio=0.6, optimizer=opt2)
    meta = restore_training_checkpoint(ckpt, resumed, pruner2, opt2)
    assert meta["epoch"] == 1 and pruner2.steps == 6
    for n in masks_at_save:
        assert torch.equal(pruner2.masks[n], masks_at_save[n])
    train_steps(resumed, opt2, data, 6, pruner2.step)
    for (n, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    with pytest.raises(UserError, match="mode"):
        restore_training_checkpoint(ckpt, *_fresh_threshold_pruner())


def _fresh_threshold_pruner():
    model, _ = make()
    return model, UnstructuredPruner(model, mode="threshold")


# ---------------------------------------------------------------- the CLI

def _cli(capsys, *args: str) -> Tuple[int, str, str]:
    """Run the CLI in-process (fast); returns (exit code, stdout, stderr)."""
    from compression_tool.cli.train_sparse import main

    try:
        main(["--no_progress", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_train_resume_eval(tmp_path: Path, capsys):
    common = ["--model_path", str(tmp_path), "--dense_epochs", "0", "--pruning_mode", "ratio", "--ratio", "0.7",
              "--lr", "0.05", "--batch_size", "128", "--num_epochs", "2"]
    code, _, err = _cli(capsys, *common)
    assert code == 0, err
    straight = load_sparse_checkpoint(tmp_path / "epoch_2.pth")
    assert abs(straight.meta["sparsity"] - 0.7) <= 0.005

    code, _, err = _cli(capsys, *common)                          # would overwrite epoch_1/epoch_2
    assert code == 2 and "--force" in err and "Traceback" not in err

    other_lr = [("0.1" if a == "0.05" else a) for a in common]    # the saved run's LR must not change silently
    code, _, err = _cli(capsys, *other_lr, "--resume_epoch", "1", "--force")
    assert code == 2 and "--resume_epoch:" in err and "ran iteration 0 at LR 0.05" in err, err
    code, _, err = _cli(capsys, *common, "--resume_epoch", "1", "--force")
    assert code == 0, err
    resumed = load_sparse_checkpoint(tmp_path / "epoch_2.pth")
    for n, m in straight.masks.items():
        assert torch.equal(resumed.masks[n], m), n
    for n, v in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[n], v), n

    # the documented command line, from the repo root, as a user runs it
    r = subprocess.run([sys.executable, "train_module/train_sparse.py", "--eval_only", "--pretrained_model",
                        str(tmp_path / "epoch_2.pth")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("total_sparse", "top1")))
    assert float(lines["total_sparse"].split()[0]) == pytest.approx(straight.meta["total_sparse"], abs=1e-4)
    assert float(lines["top1"].split()[0]) == pytest.approx(straight.meta["metrics"]["top1"], abs=1e-3)


@pytest.mark.parametrize("args, needle", [
    (["--resume_epoch", "3", "--num_epochs", "5", "--dense_epochs", "0"], "epoch_3"),
    (["--pruning_strategy", "gmp", "--pruning_mode", "threshold", "--dense_epochs", "0"], "gmp"),
    (["--ratio", "1.5", "--dense_epochs", "0"], "ratio"),
    (["--eval_only"], "--pretrained_model"),
    (["--eval_only", "--pretrained_model", "nope.pth"], "nope.pth"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, capsys, args: List[str], needle: str):
    code, _, err = _cli(capsys, "--model_path", str(tmp_path), *args)
    assert code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
