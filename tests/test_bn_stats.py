"""Paired BN correction after thinning (engine.bn_stats): identity where nothing changed, moment matching where
thinning changed a BN's input, and one-line errors."""
import copy

import pytest
import torch
import torch.nn as nn

from compression_tool.engine.bn_stats import paired_bn_correct, reestimate_bn
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.target_true import TargetTrueConfig
from compression_tool.engine.thinning import teacher_channels, thin
from compression_tool.io.errors import UserError
from tests.zoo_util import build_randomised

BN = nn.modules.batchnorm._BatchNorm


def bn_output_moments(model, x):
    """Per-channel mean and std of every BN's output on ``x`` (eval mode)."""
    out = {}
    hooks = [m.register_forward_hook(lambda mod, inp, o, n=n: out.__setitem__(
        n, (o.transpose(0, 1).reshape(o.shape[1], -1).mean(1), o.transpose(0, 1).reshape(o.shape[1], -1).std(1))))
        for n, m in model.named_modules() if isinstance(m, BN)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return out


def thinned_resnet(fraction=0.25, name="resnet20"):
    model, size = build_randomised(name)
    x = torch.randn(2, *size)
    clone = copy.deepcopy(model)
    index = GroupIndex(clone, x)
    crit = make_criterion("l1")
    plan = {g.name: sorted(crit.order(index, g)[:max(1, int(fraction * g.channels))]) for g in index.groups[1:4]}
    keep = thin(index, plan)
    return model, clone, keep, size


def test_nothing_thinned_leaves_every_statistic_as_it_was():
    model, size = build_randomised("resnet20")
    clone = copy.deepcopy(model)
    calib = [torch.randn(16, *size) for _ in range(2)]
    assert paired_bn_correct(model, clone, {}, calib) == 32
    for (n, a), b in zip(model.named_modules(), clone.modules()):
        if isinstance(a, BN):
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-5), n
            assert torch.allclose(a.running_var, b.running_var, rtol=1e-4), n


@pytest.mark.parametrize("name", ["resnet20", "mobilefacenet", "resnet_ir18", "vgg16_bn"])
def test_thinned_bn_outputs_get_the_reference_moments_back(name):
    model, clone, keep, size = thinned_resnet(name=name)
    torch.manual_seed(1)
    calib = [torch.randn(24, *size)]
    before = copy.deepcopy(clone)
    paired_bn_correct(model, clone, keep, calib)
    ref, fixed, raw = (bn_output_moments(m, calib[0]) for m in (model, clone, before))
    worse = 0
    for n, (mu_r, sd_r) in ref.items():
        idx = teacher_channels([keep], n)
        idx = slice(None) if idx is None else torch.tensor(idx)
        mu_f, sd_f = fixed[n]
        assert torch.allclose(mu_f, mu_r[idx], atol=1e-3), n           # on the calibration images: exact
        assert torch.allclose(sd_f, sd_r[idx], rtol=1e-3, atol=1e-4), n
        worse += int((raw[n][0] - mu_r[idx]).abs().max() > 1e-3)
    assert worse > 0                                                    # thinning had moved some BN input


def test_the_reference_is_not_changed_and_errors_are_one_line():
    model, clone, keep, size = thinned_resnet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    paired_bn_correct(model, clone, keep, [torch.randn(8, *size)])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="no batches"):
        paired_bn_correct(model, clone, keep, [])
    with pytest.raises(UserError, match="unknown method 'median'"):
        reestimate_bn("median", model, clone, keep, [torch.randn(8, *size)])
    with pytest.raises(UserError, match="reference"):
        reestimate_bn("paired", None, clone, keep, [torch.randn(8, *size)])
    with pytest.raises(UserError, match="bn_method"):
        TargetTrueConfig(drop=1.0, bn_method="median").validate()


from tests.test_workflow import ckpt  # noqa: E402,F401  (a briefly trained digits_net checkpoint)


def test_cli_paired_schedule_is_thinned_the_way_it_was_checked(ckpt, tmp_path):  # noqa: F811
    """auto_make_yaml --bn_method paired records it in the schedule; pruning.py --mode prune follows it by default
    and rebuilds the model that was checked (the same report-split top-1); --bn_method overrides it."""
    import json

    import yaml

    import pruning
    from compression_tool.cli import auto_make_yaml, schedule_info
    from compression_tool.engine.checkpoint import load_model
    from tests.zoo_util import DIGITS_SPLIT as split
    from tests.zoo_util import digits_sa_csv

    csv = digits_sa_csv(ckpt, tmp_path)
    out = tmp_path / "tt.yaml"
    auto_make_yaml.main([str(csv), "--drop", "8", "--model", "digits_net", "--best_model_path", str(ckpt),
                         "--data", "digits", "--output", str(out), "--bn_recalib", "2", "--bn_method", "paired",
                         "--max_evals", "12", *split])
    assert yaml.safe_load(out.read_text())["extensions"]["target_true"]["bn_method"] == "paired"
    rep = json.loads(out.with_suffix(".report.json").read_text())
    n_bn = schedule_info.schedule_fact(str(out), "bn_recalib")
    if not rep["sparsities"] or not any(rep["sparsities"].values()):
        pytest.skip("nothing pruned on this tiny checkpoint")
    assert n_bn > 0, "the search kept the as-is model: this test needs a schedule checked with BN re-estimated"

    def thinned_top1(name, *flags):
        pruning.main(["--mode", "prune", "--model", "digits_net", "--best_model_path", str(ckpt), "--yaml", str(out),
                      "--output", str(tmp_path / name), "--save_model_pt", "--work_space", str(tmp_path),
                      "--bn_recalib", str(n_bn), *flags, *split])
        return load_model(str(tmp_path / name))[1]["metrics"]["after"]["top1"]

    assert thinned_top1("p.pth") == pytest.approx(rep["report"], abs=1e-6)
    assert thinned_top1("a.pth", "--bn_method", "adabn") != pytest.approx(rep["report"], abs=1e-6)
    with pytest.raises(SystemExit) as e:
        auto_make_yaml.main([str(csv), "--drop", "8", "--model", "digits_net", "--best_model_path", str(ckpt),
                             "--data", "digits", "--output", str(tmp_path / "b.yaml"), "--bn_method", "median",
                             *split])
    assert e.value.code == 2


@pytest.mark.parametrize("bn_mode,variants", [("auto", 2), ("never", 1)])
def test_the_guards_family_holds_every_bn_variant_measured(bn_mode, variants):
    """Under bn_mode auto a candidate is the better of two BN variants on check: both count in the family the
    winner's-curse guard accounts for (ComposedChecker.family)."""
    from compression_tool.engine.target_true import ComposedChecker, classifier_evaluator

    model, size = build_randomised("resnet20")
    torch.manual_seed(0)
    x, y = torch.randn(48, *size), torch.randint(0, 10, (48,))
    cfg = TargetTrueConfig(drop=1.0, bn_recalib_batches=1, bn_mode=bn_mode)
    chk = ComposedChecker(model, x[:1], make_criterion("l1"), classifier_evaluator(x, y), [x[:16]], cfg)
    first = chk.index.groups[1].name
    chk.measure({first: 0.5})
    chk.measure({first: 0.5})                    # cached: no new measurement
    assert chk.evals == 1 and len(chk.family()) == variants
    assert 0.95 <= chk.family_level(chk.base) <= 1 - 0.05 / variants + 1e-12
