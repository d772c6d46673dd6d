"""Face metrics say what they can resolve; pair subsets keep both classes; pair labels are validated."""
import logging
import pickle

import numpy as np
import pytest
import torch

from compression_tool.data import readers
from compression_tool.data.preprocess import ImageTransform
from compression_tool.io.errors import UserError
from test_module import verification
from test_module.verification import PairSet, roc_metrics
from tests.test_readers import _png_bytes
from tests.test_verification import _identity_folders

# --------------------------------------------------------------------------- resolution of tpr@fpr

def test_resolvable_needs_one_over_fpr_different_pairs():
    need, ok = verification.min_different_pairs, verification.resolvable
    assert need(1e-3) == 1000 and need(1e-1) == 10 and need(1e-6) == 1_000_000
    assert not ok("tpr@fpr=1e-3", 450) and not ok("tar@far=1e-3", 999)
    assert ok("tpr@fpr=1e-3", 1000) and ok("tpr@fpr=1e-2", 450)
    assert ok("lfw_acc", 3) and ok("auc", 3)


def test_unresolvable_rates_warn_once_per_metric(caplog, monkeypatch):
    monkeypatch.setattr(verification, "_warned", set())
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1, 1, 450), rng.normal(0, 1, 450)])
    same = np.r_[np.ones(450, bool), np.zeros(450, bool)]
    with caplog.at_level(logging.WARNING, logger="test_module.verification"):
        roc_metrics(scores, same)
        roc_metrics(scores, same)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key in ("tpr@fpr=1e-6", "tpr@fpr=1e-5", "tpr@fpr=1e-4", "tpr@fpr=1e-3"):
        assert sum(key in m for m in msgs) == 1, key
        assert any(key in m and "450" in m for m in msgs)
    assert not any("tpr@fpr=1e-2" in m or "tpr@fpr=1e-1" in m for m in msgs)


def test_sensitivity_target_must_be_resolvable(tmp_path):
    from test_module.setup import face_setup
    _identity_folders(tmp_path / "faces")              # 5 ids x 4 images: 30 same, 30 different pairs
    spec = f"identity_folders:{tmp_path / 'faces'}"
    with pytest.raises(UserError, match=r"tpr@fpr=1e-2.*30 different.*at least 100") as err:
        face_setup(spec, (1, 16, 16), metric="tar@far=1e-2")
    assert "\n" not in str(err.value)
    assert face_setup(spec, (1, 16, 16), metric="tpr@fpr=1e-1").metric_names[0] == "tpr@fpr=1e-1"
    assert face_setup(spec, (1, 16, 16), metric="lfw_acc").metric_names[0] == "lfw_acc"


# --------------------------------------------------------------------------- stratified subsets

def _interleaved(n=900):
    """ORL-style list: same, different, same, different… (make_identity_pairs' interleave)."""
    images = torch.arange(2 * n, dtype=torch.float32).reshape(2 * n, 1, 1, 1)
    pairs = torch.arange(2 * n).reshape(n, 2)
    return PairSet(images, pairs, torch.arange(n) % 2 == 0, paths=[f"img{i}" for i in range(2 * n)])


def test_subset_keeps_both_classes_in_every_fold():
    ps = _interleaved()
    sub = ps.subset(450, seed=0)
    assert len(sub) == 450
    assert int(sub.issame.sum()) == 225
    for fold in sub.issame.reshape(10, 45):
        assert fold.any() and (~fold).any()
    # pairs are real pairs of the original list, in its order
    orig = [int(sub.paths[a][3:]) // 2 for a, _ in sub.pairs.tolist()]
    assert orig == sorted(orig) and len(set(orig)) == 450
    assert all(bool(ps.issame[o]) == bool(s) for o, s in zip(orig, sub.issame))


def test_subset_is_seeded_and_stratified_on_unbalanced_lists():
    ps = _interleaved()
    assert torch.equal(ps.subset(100, seed=3).pairs, ps.subset(100, seed=3).pairs)
    assert not torch.equal(ps.subset(100, seed=3).images, ps.subset(100, seed=4).images)
    lfw_like = PairSet(torch.zeros(2000, 1, 1, 1), torch.arange(2000).reshape(1000, 2),
                       torch.arange(1000) % 100 < 10)   # 10% same
    sub = lfw_like.subset(50, seed=0)
    assert int(sub.issame.sum()) == 5 and len(sub) == 50


# --------------------------------------------------------------------------- label validation

def _write_bin(path, issame):
    arrays = [np.full((4, 4, 3), 10 * i, np.uint8) for i in range(2 * len(issame))]
    with open(path, "wb") as fh:
        pickle.dump(([_png_bytes(a) for a in arrays], issame), fh, protocol=2)
    return path


@pytest.mark.parametrize("labels,bad", [([True, 2], "2"), ([1, -1], "-1"), (np.array(["yes", "no"]), "yes"),
                                        ([1, 0.5], "0.5")])
def test_read_bin_refuses_labels_other_than_bool_0_1(tmp_path, labels, bad):
    path = _write_bin(tmp_path / "x.bin", labels)
    with pytest.raises(UserError, match=rf"x\.bin.*{bad}") as err:
        readers.read_bin(path, ImageTransform(size=(4, 4)))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("labels", [[True, False], [1, 0], np.array([1, 0], np.int64), np.array([True, False]),
                                    [1.0, 0.0]])
def test_read_bin_accepts_bool_and_0_1(tmp_path, labels):
    ps = readers.read_bin(_write_bin(tmp_path / "x.bin", labels), ImageTransform(size=(4, 4)))
    assert ps.issame.tolist() == [True, False]


def test_metric_arrays_refuse_minus_one():
    with pytest.raises(UserError, match="-1"):
        roc_metrics(np.array([0.9, 0.1, 0.5, 0.4]), np.array([1, -1, 1, 0]))
    with pytest.raises(UserError, match="-1"):
        verification.kfold_verification(np.array([0.9, 0.1, 0.5, 0.4]), np.array([1, -1, 1, 0]), folds=2)
