"""Target-true schedules on face verification data: identity-disjoint splits, per-pair outcomes, the CLI chain."""
import json

import numpy as np
import pytest
import torch
import yaml

from compression_tool.cli import auto_make_yaml
from compression_tool.cli import pruning as pruning_cli
from compression_tool.data.face_splits import split_pairsets
from compression_tool.data.pairs import PairSet
from compression_tool.data.splits import parse_split
from compression_tool.engine.checkpoint import save_pruned
from compression_tool.io.errors import UserError
from model_define import model_spec
from model_define.pretrained import shared_data_dir
from test_module.per_sample import accepted_at_fpr, pair_outcomes
from test_module.verification import kfold_verification, roc_metrics
from tests.test_fidelity import faces

SIZE = (3, 32, 32)


def test_subject_split_parses_and_refuses_overlap():
    s = parse_split("s31..s35/s36..s40/s3..s30")
    assert s.subjects == ("s31..s35", "s36..s40", "s3..s30")
    assert s.describe()["subjects"][2] == "s3..s30"
    with pytest.raises(UserError, match="s35 is in both"):
        parse_split("s31..s35/s35..s40/s3..s30")
    with pytest.raises(UserError, match="subject lists"):
        parse_split("s31..s35/s36..s40")


def test_identity_split_is_disjoint_and_seeded(tmp_path):
    root = faces(tmp_path / "f", ids=9, per=4)
    parts = split_pairsets(f"identity_folders:{root}", (1, 16, 16), parse_split("3,3,3", seed=1))
    ids = {p: {path.split("/")[-2] for path in ps.paths} for p, ps in parts.items()}
    assert sum(len(v) for v in ids.values()) == 9
    assert not (ids["sa"] & ids["check"] or ids["sa"] & ids["report"] or ids["check"] & ids["report"])
    again = split_pairsets(f"identity_folders:{root}", (1, 16, 16), parse_split("3,3,3", seed=1))
    assert all(torch.equal(parts[p].pairs, again[p].pairs) for p in parts)
    named = split_pairsets(f"identity_folders:{root}", (1, 16, 16), parse_split("p0..p2/p3..p5/p6..p8"))
    assert {path.split("/")[-2] for path in named["check"].paths} == {"p3", "p4", "p5"}
    with pytest.raises(UserError, match="at least 2"):
        split_pairsets(f"identity_folders:{root}", (1, 16, 16), parse_split("p0/p3..p5/p6..p8"))


def test_pair_list_splits_by_whole_folds(tmp_path, monkeypatch):
    images = torch.zeros(40, 1, 4, 4)
    ps = PairSet(images, torch.arange(40).reshape(20, 2), torch.tensor([i % 2 == 0 for i in range(20)]))
    monkeypatch.setattr("compression_tool.data.face_splits.load_pairset", lambda *a, **k: ps)
    parts = split_pairsets("bin:x.bin", (1, 4, 4), parse_split("0.3,0.3,0.4"))
    sizes = {p: len(v) for p, v in parts.items()}
    assert sizes == {"sa": 6, "check": 6, "report": 8}          # 2 pairs per fold, whole folds
    with pytest.raises(UserError, match="folds"):
        split_pairsets("bin:x.bin", (1, 4, 4), parse_split("p1..p2/p3..p4/p5..p6"))


def test_per_pair_outcomes_average_to_the_metrics():
    rng = np.random.default_rng(0)
    issame = np.arange(600) % 2 == 0
    dist = rng.uniform(0, 4, 600) - 1.2 * issame
    kf = kfold_verification(dist, issame, 10)
    assert pair_outcomes(dist, issame, "lfw_acc").mean() == pytest.approx(100 * kf["acc_mean"])
    tpr = roc_metrics(1 - dist / 2, issame, [1e-2])["tpr@fpr=1e-2"]
    assert accepted_at_fpr(1 - dist / 2, issame, 1e-2).mean() == pytest.approx(tpr)
    with pytest.raises(UserError, match="lfw_acc"):
        pair_outcomes(dist, issame, "auc")


@pytest.fixture(scope="module")
def face_chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ftt")
    root = faces(tmp / "faces", ids=9, per=5)
    torch.manual_seed(0)
    model = model_spec("mobilefacenet").build_for(SIZE).eval()
    ckpt = tmp / "m.pth"
    save_pruned(ckpt, model, {"model": "mobilefacenet", "model_kwargs": {}, "input_size": list(SIZE), "keep": []})
    return tmp, root, ckpt


@pytest.mark.parametrize("metric, drop, relearn", [("lfw_acc", 30.0, False), ("lfw_acc", 30.0, True),
                                                   ("fidelity", 0.5, False), ("tpr@fpr=1e-1", 0.5, False)])
def test_face_target_true_chain(face_chain, metric, drop, relearn, capsys, caplog):
    tmp, root, ckpt = face_chain
    data = f"identity_folders:{root}"
    common = ["--model", "mobilefacenet", "--best_model_path", str(ckpt), "--input_size", "3,32,32", "--data", data,
              "--metric", metric, "--split", "3,3,3", "--folds", "5"]
    csv = tmp / f"{metric}.csv"
    pruning_cli.main(["--mode", "sa", *common, "--sparsities", "0,0.5", "--output", str(csv),
                      "--work_space", str(tmp / "ws")])
    header = csv.read_text().splitlines()[0].split(",")
    assert header[1] == "sparsity" and header[2] == metric
    out = tmp / f"{metric}.yaml"
    auto_make_yaml.main([str(csv), "--drop", str(drop), *common, "--output", str(out), "--force",
                         "--max_evals", "6", "--bn_recalib", "1", *(["--relearn_thresholds"] if relearn else [])])
    printed = capsys.readouterr().out
    assert "judged on the report split" in printed
    assert "the check split holds 3 identities" in caplog.text and "at least 30" in caplog.text
    doc = yaml.safe_load(out.read_text())
    tt = doc["extensions"]["target_true"]
    assert tt["metric"] == metric and tt["split"]["sizes"] == [3.0, 3.0, 3.0]
    assert tt["bootstrap_unit"] == "identity"                # the default on identity folders
    assert tt["relearn_thresholds"] == (relearn or metric.startswith("tpr@fpr"))
    if metric == "fidelity":
        with pytest.raises(SystemExit) as e:
            auto_make_yaml.main([str(csv), "--drop", str(drop), *common, "--output", str(tmp / "r.yaml"),
                                 "--relearn_thresholds"])
        assert e.value.code == 2 and "--relearn_thresholds re-learns lfw_acc" in capsys.readouterr().err
    n_pairs = 3 * 10                                        # 3 identities x C(5,2) same pairs
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["metric"] == metric and len(report["measured_latency_ms_batch1"]) == 2
    if metric == "lfw_acc":
        assert tt["check"]["n"] == 2 * n_pairs
    elif metric.startswith("tpr@fpr"):                      # one outcome per same-identity pair
        assert tt["check"]["n"] == n_pairs
    else:                                                   # one cosine per image of the check identities
        assert tt["check"]["n"] == 15 and report["check_baseline"] == pytest.approx(1.0)


def test_face_sensitivity_ci_columns_and_resume(face_chain):
    """--ci on face pairs: <metric>_lo,_hi after Distiller's columns, bracketing the metric, from the bootstrap over
    people then images; a resumed sweep recomputes them to the same file."""
    import csv as csvmod

    tmp, root, ckpt = face_chain
    out = tmp / "ci.csv"
    args = ["--mode", "sa", "--model", "mobilefacenet", "--best_model_path", str(ckpt), "--input_size", "3,32,32",
            "--data", f"identity_folders:{root}", "--metric", "lfw_acc", "--split", "3,3,3", "--folds", "5",
            "--sparsities", "0,0.5", "--output", str(out), "--work_space", str(tmp / "ws_ci"), "--ci"]
    pruning_cli.main(args)
    rows = list(csvmod.reader(open(out)))
    assert rows[0][:3] == ["parameter", "sparsity", "lfw_acc"] and rows[0][-2:] == ["lfw_acc_lo", "lfw_acc_hi"]
    for r in rows[1:]:
        v, lo, hi = float(r[2]), float(r[-2]), float(r[-1])
        assert lo <= v + 1.0 and v - 1.0 <= hi and (hi - lo > 5.0 or v == 100.0)   # 3 people: wide
    full = out.read_text()
    out.write_text("\n".join(full.splitlines()[:-1]) + "\n")
    pruning_cli.main(args)
    assert out.read_text() == full
    from compression_tool.cli.plot_csv import figure
    assert figure(str(out))[1] == 20 and figure(str(out), "auc")[1] == 0    # a band per layer, for lfw_acc only
    with pytest.raises(SystemExit):
        pruning_cli.main([*args[:-1], "--metric", "auc", "--output", str(tmp / "auc.csv"), "--ci"])


def test_schedule_info_reads_pruners_and_adabn(tmp_path, capsys):
    from compression_tool.cli.schedule_info import main, schedule_fact

    y = tmp_path / "s.yaml"
    y.write_text("version: 1\npruners:\n  p1: {class: L1RankedStructureParameterPruner}\n"
                 "extensions:\n  target_true: {adabn: true, bn_recalib_batches: 8}\n")
    assert schedule_fact(str(y), "pruners") == 1 and schedule_fact(str(y), "bn_recalib") == 8
    y.write_text("version: 1\npruners: {}\nextensions:\n  target_true: {adabn: false, bn_recalib_batches: 8}\n")
    assert schedule_fact(str(y), "pruners") == 0 and schedule_fact(str(y), "bn_recalib") == 0
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing.yaml"), "pruners"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "missing.yaml" in err


def test_pair_bootstrap_resamples_images():
    """Pairs that share images are not independent: the image-level bound is wider than the pair-level one when
    the values carry image effects, and equals the plain one's floor when nothing changed."""
    from compression_tool.engine.target_true import bootstrap_mean_bound

    rng = np.random.default_rng(0)
    n = 30
    pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)])
    eff = rng.normal(0, 1, n)
    v = eff[pairs[:, 0]] + eff[pairs[:, 1]] + rng.normal(0, 0.2, len(pairs))
    plain = bootstrap_mean_bound(v, 0.95, True) - v.mean()
    images = bootstrap_mean_bound(v, 0.95, True, pairs=pairs) - v.mean()
    assert images > 3 * plain
    z = np.zeros(len(pairs))
    assert bootstrap_mean_bound(z, 0.95, True, adverse=100, pairs=pairs) == pytest.approx(
        bootstrap_mean_bound(z, 0.95, True, adverse=100), rel=0.2)
    with pytest.raises(UserError, match="pairs"):
        bootstrap_mean_bound(v, 0.95, True, pairs=pairs[:10])


def test_identity_bootstrap_adds_the_spread_between_people_and_keeps_the_balance():
    """Two-stage (people, then their images): wider than the image bound when outcomes carry identity effects,
    not narrower when they carry only image effects, and a same-identity pair weighs its person once, so the
    same/different balance (hence the median) is kept."""
    from compression_tool.engine.target_true import bootstrap_mean_bound

    rng = np.random.default_rng(1)
    n_id, per = 8, 6
    ident = np.repeat(np.arange(n_id), per)
    pairs = np.array([(i, j) for i in range(len(ident)) for j in range(i + 1, len(ident))])
    person, image = rng.normal(0, 1, n_id), rng.normal(0, 1, len(ident))
    for effect, wider in ((person[ident], True), (image, False)):
        v = effect[pairs[:, 0]] + effect[pairs[:, 1]] + rng.normal(0, 0.2, len(pairs))
        by_image = bootstrap_mean_bound(v, 0.95, True, pairs=pairs) - v.mean()
        by_identity = bootstrap_mean_bound(v, 0.95, True, pairs=pairs, groups=ident) - v.mean()
        assert by_identity > (1.5 if wider else 0.9) * by_image
    same = ident[pairs[:, 0]] == ident[pairs[:, 1]]
    mix = np.where(same, 100.0, 0.0)
    keep = np.flatnonzero(same | (rng.random(len(pairs)) < same.sum() / (~same).sum()))   # about balanced
    assert bootstrap_mean_bound(mix[keep], 0.5, True, pairs=pairs[keep], groups=ident, n_boot=4000) == \
        pytest.approx(mix[keep].mean(), abs=4)
    with pytest.raises(UserError, match="groups need"):
        bootstrap_mean_bound(mix, 0.95, True, groups=ident)


def test_thresholded_tpr_matches_the_metric_and_its_bound_carries_the_threshold():
    """TPR@FPR as the bound sees it: with unit weights it is accepted_at_fpr exactly; on each draw the threshold is
    re-set on the draw's different pairs, so the interval of a TPR (and of a drop between two models on the same
    pairs) is wider than at the split's fixed threshold, when the threshold rests on a few extreme scores."""
    from compression_tool.engine.target_true import Measurement, Thresholded, bootstrap_mean_bound, measurement_rows

    rng = np.random.default_rng(0)
    for n_neg, fpr in ((0, 0.1), (1, 0.5), (7, 0.1), (200, 0.01), (450, 0.3)):
        pos, neg = rng.normal(2, 1, 40), np.round(rng.normal(0, 1, n_neg), 1)       # ties on purpose
        t = Thresholded(pos, neg, np.zeros((n_neg, 2), dtype=int), fpr)
        want = accepted_at_fpr(np.r_[pos, neg], np.r_[np.ones(40, bool), np.zeros(n_neg, bool)], fpr)
        assert t.accepted().tolist() == want.tolist()
        assert (t.accepted(np.ones((3, n_neg))) == want).all()
    assert t.accepted(np.zeros((1, 450))).all()                      # a draw without different pairs rejects none

    # 20 people x 6 images: 300 same pairs, 300 different ones; FPR 1e-2 puts the threshold on 3 extreme scores
    people, per = 20, 6
    ident = np.repeat(np.arange(people), per)
    imgs = np.arange(people * per)
    same_pairs = np.array([(a, b) for a in imgs for b in imgs if a < b and ident[a] == ident[b]])
    cross = np.array([(a, b) for a in imgs for b in imgs if a < b and ident[a] != ident[b]])
    diff_pairs = cross[rng.choice(len(cross), 300, replace=False)]
    pos, neg = rng.normal(0.6, 0.12, len(same_pairs)), rng.normal(0.2, 0.1, len(diff_pairs))

    def measured(pos_scores, neg_scores) -> Measurement:
        t = Thresholded(pos_scores, neg_scores, diff_pairs, 0.01)
        return Measurement(float(t.accepted().mean()), t.accepted(), len(pos), same_pairs, "identity", ident, t)

    base = measured(pos, neg)
    pruned = measured(pos - 0.05 + rng.normal(0, 0.05, len(pos)), neg + rng.normal(0, 0.05, len(neg)))
    cases = {"TPR": (measurement_rows([pruned]), pruned.per_sample),
             "drop": (measurement_rows([pruned], base), base.per_sample - pruned.per_sample)}
    for name, (((row,), extra), fixed) in cases.items():
        assert extra is diff_pairs
        lo_f, hi_f = (bootstrap_mean_bound(fixed, 0.975, up, pairs=same_pairs, groups=ident) for up in (False, True))
        lo_r, hi_r = (bootstrap_mean_bound(row, 0.975, up, pairs=same_pairs, groups=ident, extra_pairs=extra)
                      for up in (False, True))
        assert lo_r <= fixed.mean() <= hi_r
        assert hi_r - lo_r > 1.25 * (hi_f - lo_f), (name, lo_f, hi_f, lo_r, hi_r)    # 1.0 at a fixed threshold
    with pytest.raises(UserError, match="another of the same pairs"):
        measurement_rows([pruned], Measurement(1.0, np.ones(len(pos)), len(pos), same_pairs))
    with pytest.raises(UserError, match="needs the weights of its 300 different-identity pairs"):
        bootstrap_mean_bound(row, 0.95, True, pairs=same_pairs)
    with pytest.raises(UserError, match="need the samples' pairs"):
        bootstrap_mean_bound(row, 0.95, True)


def test_fold_thresholds_match_kfold_accuracy_and_relearning_widens_a_close_drop():
    """lfw_acc as the bound sees it: with unit weights the outcomes are kfold_verification's exactly (ties and the
    smallest-threshold rule included); re-learning the folds' thresholds on every draw widens the drop between two
    close models, whose outcomes at their own learnt thresholds move together."""
    from compression_tool.engine.target_true import FoldThresholds, Measurement, bootstrap_mean_bound, measurement_rows
    from test_module.verification import fold_indices

    rng = np.random.default_rng(3)
    for n, folds in ((40, 2), (200, 10), (333, 5)):
        issame = rng.random(n) < 0.5
        dist = np.round(np.where(issame, rng.normal(0.8, 0.3, n), rng.normal(1.4, 0.3, n)), 2)    # ties
        tests = [t for _, t in fold_indices(n, folds)]
        ft = FoldThresholds(dist, issame, tests)
        assert ft.correct().tolist() == (100.0 * kfold_verification(dist, issame, folds)["correct"]).tolist()
        assert (ft.correct(np.ones((2, n))) == ft.correct()).all()

    people, per = 20, 6
    ident = np.repeat(np.arange(people), per)
    imgs = np.arange(people * per)
    same = np.array([(a, b) for a in imgs for b in imgs if a < b and ident[a] == ident[b]])
    cross = np.array([(a, b) for a in imgs for b in imgs if a < b and ident[a] != ident[b]])
    pairs = np.concatenate([same, cross[rng.choice(len(cross), len(same), replace=False)]])
    issame = np.arange(len(pairs)) < len(same)
    order = rng.permutation(len(pairs))
    pairs, issame = pairs[order], issame[order]
    dist = np.where(issame, rng.normal(0.8, 0.25, len(pairs)), rng.normal(1.4, 0.25, len(pairs)))
    tests = [t for _, t in fold_indices(len(pairs), 10)]

    def measured(d) -> Measurement:
        ft = FoldThresholds(d, issame, tests)
        return Measurement(float(ft.correct().mean()), ft.correct(), len(d), pairs, "identity", ident, ft)

    base, close = measured(dist), measured(dist + rng.normal(0.02, 0.03, len(dist)))
    (row,), extra = measurement_rows([close], base)
    assert extra is None
    fixed = base.per_sample - close.per_sample
    lo_f, hi_f = (bootstrap_mean_bound(fixed, 0.975, up, pairs=pairs, groups=ident) for up in (False, True))
    lo_r, hi_r = (bootstrap_mean_bound(row, 0.975, up, pairs=pairs, groups=ident) for up in (False, True))
    assert lo_r <= fixed.mean() <= hi_r
    assert hi_r - lo_r > 1.25 * (hi_f - lo_f), (lo_f, hi_f, lo_r, hi_r)           # 1.0 at fixed thresholds
    with pytest.raises(UserError, match="no other pairs"):
        FoldThresholds(dist, issame, [np.arange(len(dist))])


def test_image_identities_from_folders_and_the_fallback(caplog):
    from compression_tool.data.pairs import PairSet
    from test_module.per_sample import image_identities

    images = torch.zeros(4, 1, 2, 2)
    pairs, issame = torch.tensor([[0, 1], [0, 2], [2, 3]]), torch.tensor([True, False, True])
    ps = PairSet(images, pairs, issame, ["r/a/1.pgm", "r/a/2.pgm", "r/b/1.pgm", "r/b/2.pgm"])
    assert image_identities(ps).tolist() == [0, 0, 1, 1]
    assert image_identities(ps, "image") is None
    with caplog.at_level("WARNING"):
        assert image_identities(PairSet(images, pairs, issame)) is None
    assert "name no identities" in caplog.text
    with pytest.raises(UserError, match="--bootstrap_unit"):
        image_identities(ps, "pair")


def test_held_back_splits_classifier_images_and_face_identities(tmp_path, monkeypatch):
    """--confirm splits a classifier's check images, but a face check part by identity (identity folders) or by
    fold (pair lists): no face is on both sides."""
    from compression_tool.apps.target_true import held_back

    x, y = torch.arange(20.0).reshape(20, 1), torch.arange(20)
    (xs, ys), (xc, yc) = held_back((x, y), 0.25, seed=0)
    assert len(yc) == 5 and len(ys) == 15 and not set(ys.tolist()) & set(yc.tolist())
    assert torch.equal(xs[:, 0].long(), ys)
    with pytest.raises(UserError, match="--confirm"):
        held_back((x, y), 0.01, seed=0)
    root = faces(tmp_path / "f", ids=8, per=3)
    parts = split_pairsets(f"identity_folders:{root}", (1, 16, 16), parse_split("2,4,2"), confirm=0.5)
    assert set(parts) == {"sa", "check", "confirm", "report"}
    ids = {p: {path.split("/")[-2] for path in ps.paths} for p, ps in parts.items()}
    assert len(ids["check"]) == len(ids["confirm"]) == 2 and not ids["check"] & ids["confirm"]
    assert not (ids["check"] | ids["confirm"]) & (ids["sa"] | ids["report"])
    with pytest.raises(UserError, match="--confirm 0.2: a check split of 4 identities"):
        split_pairsets(f"identity_folders:{root}", (1, 16, 16), parse_split("2,4,2"), confirm=0.2)
    images = torch.arange(40.0).reshape(40, 1, 1, 1).expand(40, 1, 4, 4)     # each image tells its index
    ps = PairSet(images, torch.arange(40).reshape(20, 2), torch.arange(20) % 2 == 0)
    monkeypatch.setattr("compression_tool.data.face_splits.load_pairset", lambda *a, **k: ps)
    folds = split_pairsets("bin:x.bin", (1, 4, 4), parse_split("0.3,0.4,0.3"), confirm=0.5)
    assert len(folds["check"]) == len(folds["confirm"]) == 4      # 2 pairs per fold, two whole folds each
    seen = {p: set(v.images[:, 0, 0, 0].long().tolist()) for p, v in folds.items()}
    assert not seen["check"] & seen["confirm"] and not (seen["check"] | seen["confirm"]) & seen["sa"]


SHARED = shared_data_dir()
REAL = SHARED / "orl_faces", SHARED / "mobilefacenet_casia" / "068.ckpt"


@pytest.mark.skipif(not all(p.exists() for p in REAL), reason=f"ORL faces / 068.ckpt not found under {SHARED}")
def test_real_orl_split_and_mobilefacenet_per_pair_outcomes():
    """Real faces, the real CASIA MobileFaceNet: the benchmark's identity split (chosen on s31..s40, judged on
    s3..s30) is disjoint and balanced, and the per-pair outcomes the check bound bootstraps average to the 10-fold
    accuracy the evaluation reports, on the check identities."""
    from compression_tool.engine.checkpoint import load_model
    from test_module.per_sample import interval, pair_evaluator
    from test_module.setup import pair_setup

    parts = split_pairsets(f"orl:{REAL[0]}", (3, 112, 96), parse_split("s31..s35/s36..s40/s3..s30"))
    ids = {p: {path.split("/")[-2] for path in ps.paths} for p, ps in parts.items()}
    assert ids["sa"] == {f"s{i}" for i in range(31, 36)} and ids["check"] == {f"s{i}" for i in range(36, 41)}
    assert len(ids["report"]) == 28 and not ids["report"] & (ids["sa"] | ids["check"])
    assert {p: len(v) for p, v in parts.items()} == {"sa": 450, "check": 450, "report": 2520}
    assert all(int(v.issame.sum()) * 2 == len(v) for v in parts.values())
    model, _ = load_model(str(REAL[1]), "mobilefacenet", input_size=(3, 112, 96))
    m = pair_evaluator(parts["check"], "lfw_acc", reference=model)(model)
    reported = pair_setup(parts["check"], "lfw_acc").evaluate(model)["lfw_acc"]
    assert m.n == 450 and m.pairs.shape == (450, 2) and m.unit == "identity" and len(set(m.groups)) == 5
    assert m.value == pytest.approx(reported, abs=1e-6) and 90.0 < m.value <= 100.0
    assert m.relearned is None                               # lfw_acc takes its fold thresholds as learnt by default
    relearnt = pair_evaluator(parts["check"], "lfw_acc", relearn=True)(model)
    assert relearnt.relearned.correct().tolist() == m.per_sample.tolist()
    tpr = pair_evaluator(parts["check"], "tpr@fpr=1e-1")(model)
    assert tpr.value == pytest.approx(pair_setup(parts["check"], "tpr@fpr=1e-1").evaluate(model)["tpr@fpr=1e-1"])
    assert tpr.n == 225 and tpr.relearned.accepted().tolist() == tpr.per_sample.tolist()
    assert tpr.relearned.extra_pairs.shape == (225, 2)       # the different pairs the draws re-set the threshold on
    lo, hi = interval(tpr)
    assert 0.5 < lo < tpr.value < hi <= 1.0


@pytest.mark.skipif(not REAL[0].exists(), reason=f"ORL faces not found under {SHARED}")
def test_real_orl_confirm_holds_back_whole_identities():
    """--confirm on the real ORL faces: the check identities are split once more, so the confirm pairs share no
    face (and no identity) with the pairs the search decides on, and every part keeps balanced pairs."""
    split = parse_split("4,8,rest", seed=3)
    parts = split_pairsets(f"orl:{REAL[0]}", (1, 56, 48), split, subjects="s3..s40", confirm=0.5)
    plain = split_pairsets(f"orl:{REAL[0]}", (1, 56, 48), split, subjects="s3..s40")
    ids = {p: {path.split("/")[-2] for path in ps.paths} for p, ps in parts.items()}
    assert len(ids["check"]) == len(ids["confirm"]) == 4 and not ids["check"] & ids["confirm"]
    assert ids["check"] | ids["confirm"] == {path.split("/")[-2] for path in plain["check"].paths}
    assert ids["sa"] == {path.split("/")[-2] for path in plain["sa"].paths}
    assert not set(parts["check"].paths) & set(parts["confirm"].paths)
    assert all(int(v.issame.sum()) * 2 == len(v) for v in parts.values())
