"""Verification metrics against independent computations, pair evaluation, metric selection and the CLI."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy.stats import norm
from sklearn.metrics import roc_curve

from compression_tool.cli import evaluate as evaluate_cli
from compression_tool.data.pairs import PairSet
from compression_tool.io.errors import UserError
from test_module.verification import (
    embed_images,
    evaluate_pairs,
    kfold_verification,
    make_pair_evaluator,
    metric_names,
    ordered_metrics,
    plot_roc,
    rate_key,
    roc_metrics,
    roc_points,
    verification_metrics,
)

# --------------------------------------------------------------------------- k-fold accuracy

def test_kfold_hand_made_two_folds():
    # fold 1 = pairs 0..3, fold 2 = pairs 4..7 (in order, no shuffling)
    dist = np.array([0.2, 0.4, 1.0, 1.6, 0.3, 1.2, 0.8, 1.4])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], dtype=bool)
    # Held-out fold 1, trained on fold 2 (0.3 T, 0.8 F, 1.2 T, 1.4 F): thresholds 0.55 and 1.3 both give 3/4,
    # the smaller (0.55) wins; on fold 1 it classifies all four right -> 1.0.
    # Held-out fold 2, trained on fold 1: 0.7 separates fold 1 perfectly; on fold 2 it misses 1.2 T -> 0.75.
    r = kfold_verification(dist, same, folds=2)
    assert r["fold_thresholds"] == pytest.approx([0.55, 0.7])
    assert r["fold_accs"] == pytest.approx([1.0, 0.75])
    assert r["acc_mean"] == pytest.approx(0.875)
    assert r["acc_std"] == pytest.approx(0.125)
    assert r["threshold_mean"] == pytest.approx(0.625)


def _contiguous_folds(n, folds):
    chunks = np.array_split(np.arange(n), folds)
    return [(np.concatenate([c for j, c in enumerate(chunks) if j != k]), test) for k, test in enumerate(chunks)]


def _reference_kfold(dist, same, thresholds, folds):
    """insightface-style loops: contiguous folds, search on the other folds, first best threshold.

    ``thresholds``: a grid, or a function of the training distances giving the candidates."""
    accs, thrs = [], []
    for train, test in _contiguous_folds(len(dist), folds):
        cuts = thresholds(dist[train]) if callable(thresholds) else thresholds
        train_acc = [np.mean((dist[train] < t) == same[train]) for t in cuts]
        t = cuts[int(np.argmax(train_acc))]
        accs.append(np.mean((dist[test] < t) == same[test]))
        thrs.append(t)
    return np.mean(accs), np.std(accs), np.mean(thrs), accs


def _synthetic_distances(n, seed=0, sep=0.8):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    dist = np.clip(np.where(same, 1.0, 1.0 + sep) + 0.35 * rng.standard_normal(n), 0.0, 4.0)
    return dist, same


def test_kfold_ten_folds_matches_grid_reference():
    dist, same = _synthetic_distances(203)          # 203 pairs: folds of 21 and 20, as KFold splits
    grid = np.arange(0, 4, 0.01)
    r = kfold_verification(dist, same, folds=10, thresholds=grid)
    acc, std, thr, accs = _reference_kfold(dist, same, grid, 10)
    assert len(r["fold_accs"]) == 10
    assert r["fold_accs"] == pytest.approx(accs)
    assert (r["acc_mean"], r["acc_std"], r["threshold_mean"]) == pytest.approx((acc, std, thr))


def test_kfold_exact_thresholds_match_exhaustive_reference():
    dist, same = _synthetic_distances(157, seed=3)

    def every_cut(train_dist):          # one threshold inside each gap between training distances
        u = sorted(set(train_dist.tolist()))
        return [u[0] - 1] + [(a + b) / 2 for a, b in zip(u, u[1:])] + [u[-1] + 1]

    r = kfold_verification(dist, same, folds=10)
    acc, _, thr, accs = _reference_kfold(dist, same, every_cut, 10)
    assert r["fold_accs"] == pytest.approx(accs)
    assert (r["acc_mean"], r["threshold_mean"]) == pytest.approx((acc, thr))
    # and no grid threshold does better on any training split than the exact search
    grid = np.arange(0, 4, 0.005)
    for (train, _), t in zip(_contiguous_folds(len(dist), 10), r["fold_thresholds"]):
        best_grid = max(np.mean((dist[train] < g) == same[train]) for g in grid)
        assert np.mean((dist[train] < t) == same[train]) >= best_grid


def test_kfold_rejects_bad_input():
    with pytest.raises(UserError, match="folds"):
        kfold_verification(np.zeros(5), np.ones(5, bool), folds=6)
    with pytest.raises(ValueError, match="NaN"):
        kfold_verification(np.array([0.1, np.nan, 0.2, 0.3]), np.array([1, 0, 1, 0], bool), folds=2)


# --------------------------------------------------------------------------- ROC

def _naive_tpr_at_fpr(scores, same, target):
    pos, neg = scores[same], scores[~same]
    best = 0.0
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        if np.mean(neg >= t) <= target:
            best = max(best, float(np.mean(pos >= t)))
    return best


def test_roc_points_and_tpr_at_fpr_against_naive_counts():
    rng = np.random.default_rng(1)
    same = rng.random(400) < 0.5
    scores = np.round(np.where(same, 0.6, 0.3) + 0.2 * rng.standard_normal(400), 2)   # many ties
    fpr, tpr, thr = roc_points(scores, same)
    ref_fpr, ref_tpr, ref_thr = roc_curve(same, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):
        assert f == pytest.approx(np.mean(scores[~same] >= th))
        assert t == pytest.approx(np.mean(scores[same] >= th))
    fprs = (1e-3, 1e-2, 5e-2, 1e-1, 0.3)
    m = roc_metrics(scores, same, fprs)
    for x in fprs:
        assert m[rate_key(x)] == pytest.approx(_naive_tpr_at_fpr(scores, same, x))
    assert list(m) == ["auc", "eer"] + [rate_key(x) for x in fprs]


def test_two_gaussians_eer_auc_tar_at_far():
    d = 2.0
    rng = np.random.default_rng(7)
    n = 100_000
    scores = np.concatenate([d + rng.standard_normal(n), rng.standard_normal(n)])
    same = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    m = roc_metrics(scores, same, fprs=(1e-2, 1e-1))
    assert m["eer"] == pytest.approx(norm.cdf(-d / 2), abs=0.005)
    assert m["auc"] == pytest.approx(norm.cdf(d / math.sqrt(2)), abs=0.005)
    for far in (1e-2, 1e-1):
        assert m[rate_key(far)] == pytest.approx(norm.cdf(d - norm.ppf(1 - far)), abs=0.01)


def test_unreachable_far_is_zero_not_nan():
    # the best-scoring pair is a different-identity pair: with no false accept nothing is accepted
    scores = np.array([0.99, 0.9, 0.8, 0.7, 0.2, 0.1])
    same = np.array([0, 1, 1, 0, 0, 1], bool)
    m = roc_metrics(scores, same, fprs=(1e-6, 0.34))
    assert m["tpr@fpr=1e-6"] == 0.0
    assert m[rate_key(0.34)] == pytest.approx(2 / 3)
    assert all(np.isfinite(v) for v in m.values())


def test_roc_needs_both_classes():
    with pytest.raises(UserError, match="both"):
        roc_metrics(np.array([0.1, 0.2]), np.array([1, 1], bool))


def test_rate_key_spelling():
    assert [rate_key(x) for x in (1e-6, 1e-3, 0.1, 5e-4)] == \
        ["tpr@fpr=1e-6", "tpr@fpr=1e-3", "tpr@fpr=1e-1", "tpr@fpr=5e-4"]


def test_plot_roc_writes_png_atomically(tmp_path):
    rng = np.random.default_rng(0)
    same = rng.random(200) < 0.5
    scores = same + rng.standard_normal(200)
    fpr, tpr, _ = roc_points(scores, same)
    out = plot_roc(tmp_path / "roc.png", fpr, tpr, 0.8, marks=(1e-2, 1e-1))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]


# --------------------------------------------------------------------------- metric selection

def test_ordered_metrics_accepts_both_spellings():
    result = dict(zip(metric_names(), range(len(metric_names()))))
    for name in ("tar@far=1e-3", "tpr@fpr=1e-3", "TAR@FAR=0.001"):
        out = ordered_metrics(result, name)
        assert list(out)[0] == "tpr@fpr=1e-3"
        assert sorted(out) == sorted(result) and out["tpr@fpr=1e-3"] == result["tpr@fpr=1e-3"]
    assert list(ordered_metrics(result, "eer"))[:2] == ["eer", "lfw_acc"]
    assert list(ordered_metrics(result, "accuracy"))[0] == "lfw_acc"


def test_ordered_metrics_unknown_name_lists_valid_ones():
    with pytest.raises(UserError, match=r"tpr@fpr=1e-3.*tar@far"):
        ordered_metrics(dict.fromkeys(metric_names(), 0.0), "tar@far=2e-3")
    with pytest.raises(UserError, match="lfw_acc"):
        ordered_metrics(dict.fromkeys(metric_names(), 0.0), "top1")


# --------------------------------------------------------------------------- pairs of images

class CountingEmbedder(nn.Module):
    """A fixed random projection of the pixels that records its calls and mode."""

    def __init__(self, in_features: int, dim: int = 8):
        super().__init__()
        self.proj = nn.Linear(in_features, dim)
        self.drop = nn.Dropout(0.5)
        self.calls, self.modes = 0, []

    def forward(self, x):
        self.calls += 1
        self.modes.append(self.training)
        return self.drop(self.proj(x.flatten(1)))


def _tiny_pairset(n_ids=6, per_id=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(n_ids, 1, 6, 5, generator=g)
    images = (protos.repeat_interleave(per_id, 0) + 0.6 * torch.randn(n_ids * per_id, 1, 6, 5, generator=g))
    ident = torch.arange(n_ids).repeat_interleave(per_id)
    pairs = torch.combinations(torch.arange(n_ids * per_id), 2)
    return PairSet(images, pairs, ident[pairs[:, 0]] == ident[pairs[:, 1]])


def test_evaluate_pairs_embeds_once_and_matches_direct_computation():
    ps = _tiny_pairset()
    torch.manual_seed(0)
    model = CountingEmbedder(30).train()
    res = evaluate_pairs(model, ps, folds=10, batch_size=7)
    assert model.calls == math.ceil(24 / 7) and not any(model.modes) and model.training
    with torch.no_grad():
        emb = F.normalize(model.proj(ps.images.flatten(1)), dim=1)
    dist = ((emb[ps.pairs[:, 0]] - emb[ps.pairs[:, 1]]) ** 2).sum(1).numpy()
    kf = kfold_verification(dist, ps.issame.numpy(), folds=10)
    roc = roc_metrics(1 - dist / 2, ps.issame.numpy())
    assert list(res) == metric_names()
    assert res["lfw_acc"] == pytest.approx(100 * kf["acc_mean"])
    assert res["lfw_std"] == pytest.approx(100 * kf["acc_std"])
    assert res["threshold"] == pytest.approx(kf["threshold_mean"])
    for k, v in roc.items():
        assert res[k] == pytest.approx(v)
    assert res["lfw_acc"] > 60          # identities are separable: the metric sees it


def test_flip_sums_embeddings_of_image_and_mirror():
    ps = _tiny_pairset()
    model = CountingEmbedder(30)
    emb = embed_images(model, ps.images, batch_size=10, flip=True)
    assert model.calls == 3                       # image and mirror share one forward per batch
    with torch.no_grad():
        model.eval()
        ref = F.normalize(model(ps.images) + model(ps.images.flip(3)), dim=1)
    torch.testing.assert_close(emb, ref)
    assert not torch.allclose(emb, embed_images(model, ps.images, flip=False))


def test_pairset_subset_keeps_classes_and_reindexes():
    ps = PairSet(torch.arange(40.0).reshape(10, 1, 2, 2), torch.tensor([[i, i + 1] for i in range(9)] + [[0, 9]]),
                 torch.tensor([True] * 5 + [False] * 5), paths=[f"img{i}" for i in range(10)])
    sub = ps.subset(4)
    assert len(sub) == 4 and int(sub.issame.sum()) == 2   # stratified: 2 same + 2 different
    picked = [ps.pairs.tolist().index([int(sub.paths[a][3:]), int(sub.paths[b][3:])]) for a, b in sub.pairs.tolist()]
    assert picked == sorted(picked)                         # the original order
    for (a, b), k in zip(sub.pairs.tolist(), picked):
        pa, pb = ps.pairs[k].tolist()
        assert torch.equal(sub.images[a], ps.images[pa]) and torch.equal(sub.images[b], ps.images[pb])
        assert bool(sub.issame[picked.index(k)]) == bool(ps.issame[k])
    assert sub.images.shape[0] == len(set(sub.pairs.flatten().tolist()))
    assert ps.subset(100) is ps


def test_pair_evaluator_puts_chosen_metric_first_and_checks_early():
    ps = _tiny_pairset()
    evaluate = make_pair_evaluator(ps, metric="tar@far=1e-1", folds=5)
    out = evaluate(CountingEmbedder(30))
    assert list(out)[0] == "tpr@fpr=1e-1" and "lfw_acc" in out
    with pytest.raises(UserError, match="unknown metric"):
        make_pair_evaluator(ps, metric="top1")


def test_verification_metrics_writes_roc(tmp_path):
    dist, same = _synthetic_distances(120)
    verification_metrics(dist, same, folds=4, roc_path=tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


# --------------------------------------------------------------------------- CLI

def _identity_folders(root: Path, n_ids=5, per_id=4, size=(16, 16)):
    rng = np.random.default_rng(0)
    for i in range(n_ids):
        base = rng.integers(0, 256, size)
        (root / f"p{i}").mkdir(parents=True)
        for k in range(per_id):
            img = np.clip(base + rng.normal(0, 30, size), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"p{i}" / f"{k}.png")


def test_cli_prints_metrics_with_chosen_first(tmp_path, monkeypatch, capsys):
    from compression_tool.data.readers import load_pairset
    from model_define import get_model

    _identity_folders(tmp_path / "faces")
    torch.manual_seed(0)
    model = get_model("digits_net")
    torch.save(model.state_dict(), tmp_path / "m.pth")
    evaluate_cli.main(["--model", "digits_net", "--best_model_path", str(tmp_path / "m.pth"),
                       "--identity_folders", str(tmp_path / "faces"), "--folds", "4", "--seed", "3",
                       "--metric", "tar@far=1e-1", "--roc", str(tmp_path / "roc.png")])
    lines = [ln.split() for ln in capsys.readouterr().out.strip().splitlines()]
    printed = {k: float(v) for k, v in lines}
    assert lines[0][0] == "tpr@fpr=1e-1" and set(printed) == set(metric_names())
    assert (tmp_path / "roc.png").is_file()
    ref = evaluate_pairs(model, load_pairset(f"identity_folders:{tmp_path / 'faces'}", (1, 16, 16), seed=3), folds=4)
    for k, v in ref.items():
        assert printed[k] == pytest.approx(v, rel=1e-5, abs=1e-9)


def test_cli_user_errors_exit_2(tmp_path, monkeypatch, capsys):
    from model_define import get_model

    _identity_folders(tmp_path / "faces", n_ids=2, per_id=2)
    torch.save(get_model("digits_net").state_dict(), tmp_path / "m.pth")
    common = ["--model", "digits_net", "--best_model_path", str(tmp_path / "m.pth")]
    for extra, msg in ((["--identity_folders", str(tmp_path / "nope")], "nope"),
                       (["--identity_folders", str(tmp_path / "faces"), "--metric", "top1"], "unknown metric"),
                       (["--lfw_pairs", str(tmp_path / "pairs.txt")], "--test_root_path")):
        with pytest.raises(SystemExit) as exc:
            evaluate_cli.main(common + extra)
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err
