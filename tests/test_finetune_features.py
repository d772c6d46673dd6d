"""--feature_distill: the student matches the teacher's intermediate feature maps (kept channels or attention maps)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from compression_tool.apps.finetune import feature_channel_map
from compression_tool.cli.finetune import main as finetune_main
from compression_tool.engine.checkpoint import example_input, load_model, save_pruned
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.thinning import teacher_channels, thin
from compression_tool.io.errors import UserError
from model_define import model_spec
from train_module.features import FeatureDistill, expand_layers, feature_loss, output_leaf, parse_layers
from train_module.finetune import FinetuneConfig, finetune_classifier, finetune_embedder

SIZE = (1, 16, 16)


def digits(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return model_spec("digits_net").build_for(list(SIZE)).eval()


def thinned(teacher: nn.Module, pruned: dict) -> tuple:
    """A copy of ``teacher`` with ``pruned`` (group -> channels) removed, and its keep-arrays."""
    student = copy.deepcopy(teacher)
    keep = thin(GroupIndex(student, example_input(SIZE), prune_outputs=True), pruned)
    return student.eval(), keep


def maps_loss(student, teacher, layers, kind="mse", channels=None, x=None) -> float:
    x = torch.randn(6, *SIZE, generator=torch.Generator().manual_seed(1)) if x is None else x
    with FeatureDistill(student, teacher, layers, kind, channels) as fd:
        with fd.recording(), torch.no_grad():
            student(x)
            teacher(x)
        return fd.loss().item()


@pytest.mark.parametrize("kind", ["mse", "at"])
def test_feature_loss_is_zero_for_teacher_equal_to_student_and_positive_otherwise(kind):
    teacher = digits()
    layers = ["stem", "block", "down.1"]
    assert maps_loss(teacher, copy.deepcopy(teacher), layers, kind) == pytest.approx(0.0, abs=1e-10)
    assert maps_loss(digits(seed=1), teacher, layers, kind) > 1e-3


def test_kept_channels_make_a_freshly_thinned_layer_match_exactly():
    """Thinning keeps the surviving channels' weights, so on the kept teacher channels the maps are identical;
    a wrong channel map (or none) is not."""
    teacher = digits()
    student, keep = thinned(teacher, {"block.conv1.weight": [0, 3, 4, 9, 15]})
    assert student.block.prelu.num_parameters == 11
    channels = feature_channel_map({"keep": [keep]}, student, teacher, ["block.prelu", "block.bn1", "stem"])
    assert channels == {"block.prelu": keep["block.conv1.weight"]["kept"],
                        "block.bn1": keep["block.conv1.weight"]["kept"]}          # stem keeps its width
    assert maps_loss(student, teacher, ["block.prelu", "block.bn1", "stem"], channels=channels) < 1e-10
    wrong = {"block.prelu": list(range(11))}
    assert maps_loss(student, teacher, ["block.prelu"], channels=wrong) > 1e-3
    with pytest.raises(UserError, match="cannot be mapped"):
        maps_loss(student, teacher, ["block.prelu"])
    # attention transfer needs no channel map at all
    assert maps_loss(student, teacher, ["block.prelu"], kind="at") >= 0.0


def test_a_container_layer_maps_through_its_last_leaf_and_rounds_compose():
    teacher = digits()
    once, keep1 = thinned(teacher, {"stem.0.weight": [1, 2]})                     # the residual block's width
    twice, keep2 = thinned(once, {"stem.0.weight": [0, 5]})                       # indices of the 14 left
    assert output_leaf(twice, "block") == "block.bn2"
    expect = [c for c in range(16) if c not in (1, 2)]
    expect = [c for i, c in enumerate(expect) if i not in (0, 5)]
    assert teacher_channels([keep1, keep2], "block.bn2") == expect
    channels = feature_channel_map({"keep": [keep1, keep2]}, twice, teacher, ["block", "stem"])
    assert channels == {"block": expect, "stem": expect}
    # the stem's kept channels are the teacher's exactly (the block's are not: its conv1 lost input channels)
    assert maps_loss(twice, teacher, ["stem", "stem.1"], channels={**channels, "stem.1": expect}) < 1e-10
    assert maps_loss(twice, teacher, ["block"], channels=channels) > 1e-4


def test_training_with_feature_maps_lowers_the_feature_loss():
    """A thinned student whose kept layers were disturbed learns the teacher's maps back on unlabeled images."""
    teacher = digits()
    student, keep = thinned(teacher, {"block.conv1.weight": list(range(0, 16, 2))})
    torch.manual_seed(3)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p) * p.abs().mean())
    layers = ("block.prelu", "block", "down")
    channels = feature_channel_map({"keep": [keep]}, student, teacher, layers)
    x_train = torch.randn(64, *SIZE, generator=torch.Generator().manual_seed(5))
    x_test = torch.randn(32, *SIZE, generator=torch.Generator().manual_seed(6))
    before = maps_loss(student, teacher, layers, channels=channels, x=x_test)
    cfg = FinetuneConfig(max_iters=60, lr=0.05, weight_decay=0.0, distill="mse", alpha=0.0, feature_layers=layers,
                         feature_weight=1.0, freeze_bn=True, progress=False)
    result = finetune_embedder(student, DataLoader(TensorDataset(x_train), batch_size=16, shuffle=True), cfg,
                               teacher=teacher, feature_channels=channels)
    after = maps_loss(student.eval(), teacher, layers, channels=channels, x=x_test)
    assert after < 0.5 * before, (before, after)
    assert result.losses[-1][1] < result.losses[0][1]
    # the hooks are gone once training ends: a forward pass records nothing anywhere
    assert not any(m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))


def test_bad_feature_setups_are_one_line_user_errors():
    teacher = digits()
    with pytest.raises(UserError, match=r"no layer 'blok\.prelu'.*did you mean block\.prelu"):
        FeatureDistill(digits(1), teacher, ["blok.prelu"])
    with pytest.raises(UserError, match="unknown --feature_loss"):
        FeatureDistill(digits(1), teacher, ["stem"], kind="l1")
    loader = DataLoader(TensorDataset(torch.randn(8, *SIZE)), batch_size=4)
    labelled = DataLoader(TensorDataset(torch.randn(8, *SIZE), torch.zeros(8, dtype=torch.long)), batch_size=4)
    with pytest.raises(UserError, match="feature maps: give --teacher_path and --distill"):
        finetune_classifier(digits(1), labelled, FinetuneConfig(feature_layers=("stem",), progress=False))
    with pytest.raises(UserError, match="--feature_weight must be a non-negative"):
        finetune_embedder(digits(1), loader, FinetuneConfig(feature_layers=("stem",), feature_weight=-1,
                                                               distill="mse", progress=False), teacher=teacher)
    with pytest.raises(UserError, match="same spatial size"):
        feature_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8), "at", layer="x")
    assert parse_layers(["a,b", " c ", "a"]) == ("a", "b", "c") and parse_layers(None) == ()
    assert expand_layers(teacher, ["block.*n?", "stem"]) == ("block.bn1", "block.bn2", "stem")
    with pytest.raises(UserError, match="no layer of the model matches 'nope.*'"):
        expand_layers(teacher, ["nope.*"])


def test_cli_feature_distill_on_a_thinned_checkpoint_and_a_bad_layer(tmp_path, capsys):
    teacher = digits()
    student, keep = thinned(teacher, {"block.conv1.weight": [1, 2, 3]})
    pruned = save_pruned(tmp_path / "pruned.pth", student, {"model": "digits_net", "input_size": list(SIZE),
                                                             "keep": [keep]})
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    args = ["--best_model_path", str(pruned), "--teacher_path", str(tmp_path / "teacher.pth"), "--distill", "kd",
            "--max_iters", "2", "--batch_size", "32", "--threads", "1", "--eval_data", "digits",
            "--save_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        finetune_main(args + ["--feature_distill", "block.prelu,nope"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("\n") == 0 and "no layer 'nope'" in err
    finetune_main(args + ["--feature_distill", "block.p*,block", "--feature_weight", "2"])
    out = capsys.readouterr().out
    assert "checkpoint:" in out
    saved = next((tmp_path / "out").glob("*.pth"))
    model, meta = load_model(saved)
    assert meta["finetune"]["feature_layers"] == ["block.p*", "block"] and meta["finetune"]["feature_weight"] == 2
    assert model.block.prelu.num_parameters == 13
