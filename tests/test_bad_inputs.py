"""Bad input to every command line: one line on stderr starting 'error:', a non-zero exit, no traceback, and every
file that existed before byte-identical afterwards (nothing half-written either).

Most cases call ``main(argv)`` in-process; the untrusted-checkpoint proof runs each CLI as a subprocess.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import ROOT

# ---------------------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


PROGRESS = re.compile(r"^[^:]+:\s+\d+%\|")   # a tqdm bar a terminal overwrites (carriage returns)


def one_line_error(err: str) -> str:
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.strip() and not PROGRESS.match(ln)]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def final_error(err: str) -> str:
    """A subprocess's stderr also holds its log lines: the error is one line, the last, and there is no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error:") and sum(ln.startswith("error:") for ln in lines) == 1, err
    return lines[-1]


def refused(main, argv, capsys, sandbox: Path) -> str:
    """Run ``main(argv)``; it must exit non-zero with one 'error:' line and leave the sandbox as it was."""
    before = snapshot(sandbox)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code not in (0, None)
    line = one_line_error(capsys.readouterr().err)
    assert snapshot(sandbox) == before, "files were created or modified"
    return line


def digits_net(seed: int = 0) -> torch.nn.Module:
    import model_define as md
    torch.manual_seed(seed)
    return md.get_model("digits_net")


class Payload:
    """Unpickling this creates ``marker``: what an attacker's checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Read-only inputs shared by the cases: a checkpoint, a finished sensitivity CSV (+ sidecar), a schedule."""
    import pruning
    d = tmp_path_factory.mktemp("assets")
    m = digits_net()
    torch.save({"state_dict": m.state_dict()}, d / "digits_net.pth")
    torch.save({"state_dict": digits_net(1).state_dict()}, d / "other.pth")
    pruning.main(["--mode", "sa", "--model", "digits_net", "--best_model_path", str(d / "digits_net.pth"),
                  "--output", str(d / "sa.csv"), "--sparsities", "0,0.5", "--eval_batches", "1",
                  "--batch_size", "16"])
    return d


@pytest.fixture
def sb(tmp_path, assets, monkeypatch):
    """A sandbox (the working directory) holding copies of the assets and a few bad files."""
    for f in assets.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "notes.txt").write_text("my notes\nsecond line without newline")
    (tmp_path / "latin1.csv").write_bytes("parameter,sparsity,top1\nfc1.weight,0,9\xe9\n".encode("latin-1"))
    (tmp_path / "latin1.yaml").write_bytes("version: 1\n# caf\xe9\n".encode("latin-1"))
    (tmp_path / "garbage.pth").write_bytes(b"\x00\x01 not a checkpoint")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "out_dir").mkdir()
    (tmp_path / "out_dir" / "keep").write_text("keep")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def readonly(tmp_path_factory):
    """A folder this process cannot write into (root ignores permissions: then /sys, which refuses everyone)."""
    if os.geteuid() == 0:
        yield Path("/sys")
        return
    d = tmp_path_factory.mktemp("ro")
    d.chmod(0o555)
    yield d
    d.chmod(0o755)


def write_schedule(path: Path, weights=("block.conv1.weight",), level=0.5, arch="digits_net", input_size=(1, 16, 16)):
    doc = {"version": 1,
           "pruners": {"p1": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                              "desired_sparsity": level, "weights": list(weights)}},
           "extensions": {"net_thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                                          "arch": arch, "dataset": "digits", "input_size": list(input_size)}},
           "policies": [{"pruner": {"instance_name": "p1"}, "epochs": [0]}]}
    path.write_text(yaml.safe_dump(doc))
    return path


def nan_checkpoint(path: Path) -> Path:
    sd = digits_net().state_dict()
    sd["block.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"state_dict": sd}, path)
    return path


def image_folder(root: Path, classes: int, size=16) -> Path:
    from PIL import Image
    rng = np.random.RandomState(0)
    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True)
        Image.fromarray(rng.randint(0, 255, (size, size), dtype=np.uint8)).save(root / f"c{c:02d}" / "0.png")
    return root


def ckpt_args(path="digits_net.pth"):
    return ["--model", "digits_net", "--best_model_path", path]


SA_FAST = ["--sparsities", "0,0.5", "--eval_batches", "1", "--batch_size", "16"]

# ---------------------------------------------------------------------------------------- pruning.py --mode sa


def _pruning():
    import pruning
    return pruning.main


def _sa_tool():
    from compression_tool.cli.sensitivity_analysis import main
    return main


SA_CASES = {
    "zero_step_range": ["--sparsities", "0:1:0"],
    "level_above_one": ["--sparsities", "0,1.5"],
    "level_nan": ["--sparsities", "0,nan"],
    "missing_checkpoint": ["--best_model_path", "nope.pth"],
    "garbage_checkpoint": ["--best_model_path", "garbage.pth"],
    "text_checkpoint": ["--best_model_path", "notes.txt"],
    "unknown_model": ["--model", "no_such_net"],
    "wrong_model": ["--model", "lenet5"],
    "unknown_method": ["--method", "bogus"],
    "fpgm_and_hrank": ["--fpgm", "--hrank"],
    "unknown_data_kind": ["--data", "tape:/x"],
    "missing_image_folder": ["--data", "image_folder:nope"],
    "eval_batches_zero": ["--eval_batches", "0"],
    "batch_size_negative": ["--batch_size", "-1"],
    "bad_input_size": ["--input_size", "a,b"],
    "unknown_flag": ["--no_such_flag"],
    "threads_zero": ["--threads", "0"],
    "output_is_directory": ["--output", "out_dir"],
    "output_under_a_file": ["--output", "a_file/sa.csv"],
    "output_is_foreign_text": ["--output", "notes.txt"],
    "output_is_latin1": ["--output", "latin1.csv"],
    "output_is_foreign_text_even_with_force": ["--output", "notes.txt", "--force"],
    "workers_zero": ["--workers", "0"],
    "workers_not_a_number": ["--workers", "two"],
    "unknown_pool": ["--workers", "2", "--pool", "spark"],
}


@pytest.mark.parametrize("case", sorted(SA_CASES))
def test_sa_refuses(case, sb, capsys):
    argv = ["--mode", "sa", *ckpt_args(), *SA_FAST, "--output", "new.csv"]
    refused(_pruning(), argv + SA_CASES[case], capsys, sb)


def test_sa_unknown_mode(sb, capsys):
    refused(_pruning(), ["--mode", "bogus"], capsys, sb)


def test_sa_nan_weights(sb, capsys):
    nan_checkpoint(sb / "nan.pth")
    line = refused(_pruning(), ["--mode", "sa", *ckpt_args("nan.pth"), *SA_FAST, "--output", "new.csv"], capsys, sb)
    assert "block.conv1.weight" in line


def test_sa_image_folder_with_more_classes_than_the_model(sb, capsys):
    image_folder(sb / "imgs12", 12)
    line = refused(_pruning(), ["--mode", "sa", *ckpt_args(), *SA_FAST, "--output", "new.csv",
                                "--data", "image_folder:imgs12"], capsys, sb)
    assert "12" in line and "10" in line


def test_sa_readonly_output(sb, capsys, readonly):
    refused(_pruning(), ["--mode", "sa", *ckpt_args(), *SA_FAST, "--output", readonly / "x" / "sa.csv"], capsys, sb)


RESUME_MISMATCH = {  # flag change -> the sidecar field named in the refusal
    "seed": (["--seed", "3"], "seed"),
    "checkpoint": (["--best_model_path", "other.pth"], "checkpoint"),
    "criterion": (["--method", "l2"], "criterion"),
    "eval_subset": (["--eval_batches", "2"], "eval_batches"),
    "batch_size": (["--batch_size", "8"], "batch_size"),
    "grid": (["--sparsities", "0,0.25,0.5"], "sparsities"),
    "data": (["--data", "image_folder:imgs"], "data"),
}


@pytest.mark.parametrize("case", sorted(RESUME_MISMATCH))
def test_sa_resume_mismatch_refused(case, sb, capsys):
    extra, field = RESUME_MISMATCH[case]
    if case == "data":
        image_folder(sb / "imgs", 10)
    line = refused(_pruning(), ["--mode", "sa", *ckpt_args(), *SA_FAST, "--output", "sa.csv", *extra], capsys, sb)
    assert field in line and "--force" in line


def test_sa_csv_without_sidecar_refused(sb, capsys):
    (sb / "sa.csv.meta.json").unlink()
    line = refused(_pruning(), ["--mode", "sa", *ckpt_args(), *SA_FAST, "--output", "sa.csv"], capsys, sb)
    assert "meta.json" in line


def test_sa_second_run_on_a_locked_csv(sb, capsys):
    with open(sb / "sa.csv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = refused(_pruning(), ["--mode", "sa", *ckpt_args(), *SA_FAST, "--output", "sa.csv"], capsys, sb)
    assert "another" in line


def test_sensitivity_analysis_tool_refuses(sb, capsys):
    refused(_sa_tool(), [*ckpt_args(), "--sparsities", "0:1:0"], capsys, sb)
    refused(_sa_tool(), [*ckpt_args(), *SA_FAST, "--output", "out_dir"], capsys, sb)


def test_sa_torn_resume_is_byte_identical(sb):
    """An interrupted run (last row torn) resumed gives the very bytes of an uninterrupted run."""
    full = (sb / "sa.csv").read_bytes()
    assert b"\r\n" in full  # csv.writer's line ending
    lines = full.split(b"\r\n")
    (sb / "sa.csv").write_bytes(b"\r\n".join(lines[:-3]) + b"\r\n" + lines[-3][:5])
    _pruning()(["--mode", "sa", *ckpt_args(), *SA_FAST, "--output", "sa.csv"])
    assert (sb / "sa.csv").read_bytes() == full


def test_sa_force_starts_afresh_and_sidecar_records_the_run(sb):
    _pruning()(["--mode", "sa", *ckpt_args(), *SA_FAST, "--output", "sa.csv", "--seed", "3", "--force"])
    meta = json.loads((sb / "sa.csv.meta.json").read_text())
    assert meta["seed"] == 3 and meta["threads"] == 1 and meta["sparsities"] == [0.0, 0.5]
    assert meta["checkpoint_sha256"] == hashlib.sha256((sb / "digits_net.pth").read_bytes()).hexdigest()
    rows = list(csv.reader(open(sb / "sa.csv", newline="")))
    assert rows[0] == ["parameter", "sparsity", "top1", "top5", "loss"] and len(rows) == 1 + 4 * 2

# ---------------------------------------------------------------------------------------- pruning.py, other modes


@pytest.fixture
def sched(sb):
    return write_schedule(sb / "s.yaml")


PRUNE_CASES = {
    "missing_yaml": ["--yaml", "nope.yaml"],
    "latin1_yaml": ["--yaml", "latin1.yaml"],
    "not_yaml": ["--yaml", "garbage.pth"],
    "output_exists": ["--save_model_pt", "--output", "notes.txt"],
    "output_is_directory": ["--save_model_pt", "--output", "out_dir", "--force"],
    "output_under_a_file": ["--save_model_pt", "--output", "a_file/p.pth"],
    "garbage_checkpoint": ["--best_model_path", "garbage.pth"],
}


@pytest.mark.parametrize("case", sorted(PRUNE_CASES))
def test_prune_refuses(case, sb, sched, capsys):
    refused(_pruning(), ["--mode", "prune", *ckpt_args(), "--yaml", "s.yaml", "--eval_batches", "1",
                         *PRUNE_CASES[case]], capsys, sb)


@pytest.mark.parametrize("what", ["arch", "input_size", "level"])
def test_prune_schedule_disagrees_with_model(what, sb, capsys):
    kw = {"arch": dict(arch="resnet20"), "input_size": dict(input_size=(3, 32, 32)), "level": dict(level=1.5)}[what]
    write_schedule(sb / "bad.yaml", **kw)
    line = refused(_pruning(), ["--mode", "prune", *ckpt_args(), "--yaml", "bad.yaml", "--eval_batches", "1"],
                   capsys, sb)
    if what != "level":
        assert "--force" in line


def test_prune_schedule_mismatch_accepted_with_force(sb, capsys):
    write_schedule(sb / "bad.yaml", arch="resnet20")
    _pruning()(["--mode", "prune", *ckpt_args(), "--yaml", "bad.yaml", "--eval_batches", "1", "--force",
                "--save_model_pt", "--output", "p.pth"])
    assert torch.load(sb / "p.pth", weights_only=True)["meta"]["threads"] == 1   # recorded with the numbers


def test_prune_nan_weights(sb, sched, capsys):
    nan_checkpoint(sb / "nan.pth")
    refused(_pruning(), ["--mode", "prune", *ckpt_args("nan.pth"), "--yaml", "s.yaml", "--eval_batches", "1"],
            capsys, sb)


def test_prune_readonly_output(sb, sched, capsys, readonly):
    refused(_pruning(), ["--mode", "prune", *ckpt_args(), "--yaml", "s.yaml", "--save_model_pt", "--output",
                         readonly / "p.pth"], capsys, sb)


SEARCH_CASES = {
    "flops_nan": ["--flops", "nan"],
    "flops_negative": ["--flops", "-5"],
    "flops_above_one": ["--flops", "1.5"],
    "no_budget": [],
    "two_budgets": ["--flops", "0.5", "--params", "0.5"],
    "population_zero": ["--flops", "0.5", "--population", "0"],
    "max_ratio_nan": ["--flops", "0.5", "--max_ratio", "nan"],
    "output_exists": ["--flops", "0.5", "--output", "notes.txt"],
    "workers_zero": ["--flops", "0.5", "--workers", "0"],
    "workers_negative": ["--flops", "0.5", "--workers", "-2"],
    "unknown_pool": ["--flops", "0.5", "--workers", "2", "--pool", "spark"],
}


@pytest.mark.parametrize("case", sorted(SEARCH_CASES))
def test_search_refuses(case, sb, capsys):
    refused(_pruning(), ["--mode", "search", *ckpt_args(), "--iterations", "1", *SEARCH_CASES[case]], capsys, sb)


def _finetune():
    from compression_tool.cli.finetune import main
    return main


FINETUNE_CASES = {
    "epochs_negative": ["--epochs", "-1"],
    "batch_size_zero": ["--batch_size", "0"],
    "lr_nan": ["--lr", "nan"],
    "missing_teacher": ["--teacher_path", "nope.pth", "--distill", "cosine"],
    "distill_without_teacher": ["--distill", "cosine"],
    "kd_without_teacher": ["--distill", "kd"],
    "kd_temperature_zero": ["--teacher_path", "digits_net.pth", "--distill", "kd", "--temperature", "0"],
    "missing_resume": ["--resume", "nope.pth"],
    "unknown_data": ["--data", "tape:x"],
    "bad_head": ["--head", "bogus"],
    "save_dir_is_a_file": ["--save_dir", "a_file"],
    "threads_zero": ["--threads", "0"],
    "sync_bn_unknown": ["--sync_bn", "maybe"],
    "unlabeled_not_a_folder": ["--unlabeled", "digits", "image_folder:out_dir", "--teacher_path", "digits_net.pth",
                               "--distill", "cosine"],
    "unlabeled_missing_folder": ["--unlabeled", "image_folder:nope", "--teacher_path", "digits_net.pth",
                                 "--distill", "cosine"],
}


@pytest.mark.parametrize("case", sorted(FINETUNE_CASES))
def test_finetune_refuses(case, sb, capsys):
    refused(_finetune(), [*ckpt_args(), "--max_iters", "1", *FINETUNE_CASES[case]], capsys, sb)


@pytest.mark.parametrize("case, names", [("unlabeled_not_a_folder", "--unlabeled digits"),
                                         ("unlabeled_missing_folder", "nope")])
def test_finetune_unlabeled_error_names_the_spec(case, names, sb, capsys):
    assert names in refused(_finetune(), [*ckpt_args(), "--max_iters", "1", *FINETUNE_CASES[case]], capsys, sb)


def test_pruning_finetune_mode_refuses(sb, capsys):
    refused(_pruning(), ["--mode", "finetune", *ckpt_args(), "--epochs", "-1"], capsys, sb)


def test_pruning_finetune_mode_refuses_kd_without_teacher(sb, capsys):
    assert "teacher" in refused(_pruning(), ["--mode", "finetune", *ckpt_args(), "--max_iters", "1",
                                             "--distill", "kd"], capsys, sb)

# ---------------------------------------------------------------------------------------- auto_make_yaml / plot


def _amy():
    from compression_tool.cli.auto_make_yaml import main
    return main


def nan_baseline_csv(path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["parameter", "sparsity", "top1", "top5", "loss"], ["fc1.weight", "0", "nan", "nan", "nan"],
                     ["fc1.weight", "0.5", "50", "90", "1"]])
    return path


AMY_CASES = {
    "target_nan": ["sa.csv", "nan", "digits_net", "1,16,16"],
    "target_negative": ["sa.csv", "-5", "digits_net", "1,16,16"],
    "target_text": ["sa.csv", "high", "digits_net", "1,16,16"],
    "unknown_model": ["sa.csv", "5", "no_such_net", "1,16,16"],
    "bad_input_size": ["sa.csv", "5", "digits_net", "1,x"],
    "missing_csv": ["nope.csv", "5", "digits_net", "1,16,16"],
    "latin1_csv": ["latin1.csv", "5", "digits_net", "1,16,16"],
    "not_a_csv": ["notes.txt", "5", "digits_net", "1,16,16"],
    "nan_baseline": ["nanbase.csv", "5", "digits_net", "1,16,16"],
    "unknown_metric": ["sa.csv", "5", "digits_net", "1,16,16", "--metric", "top9"],
    "output_exists": ["sa.csv", "5", "digits_net", "1,16,16", "--output", "notes.txt"],
    "output_is_directory": ["sa.csv", "5", "digits_net", "1,16,16", "--output", "out_dir", "--force"],
    "output_under_a_file": ["sa.csv", "5", "digits_net", "1,16,16", "--output", "a_file/s.yaml"],
    "too_many_positionals": ["sa.csv", "5", "digits_net", "1,16,16", "extra"],
    "flops_negative": ["sa.csv", "--flops", "-5", "--model", "digits_net", "--best_model_path", "digits_net.pth"],
    "flops_nan": ["sa.csv", "--flops", "nan", "--model", "digits_net", "--best_model_path", "digits_net.pth"],
    "flops_unknown_model": ["sa.csv", "--flops", "0.5", "--model", "nonet", "--best_model_path", "digits_net.pth"],
    "tt_subject_split_on_classifier_data": ["sa.csv", "--drop", "3", "--model", "digits_net", "--best_model_path",
                                            "digits_net.pth", "--data", "digits", "--split", "s1..s2/s3..s4/s5..s6"],
    "tt_overlapping_subject_split": ["sa.csv", "--drop", "3", "--model", "digits_net", "--best_model_path",
                                     "digits_net.pth", "--data", "orl:faces", "--split", "s1..s3/s3..s4/s5..s6"],
    "tt_face_metric_not_per_sample": ["sa.csv", "--drop", "3", "--model", "digits_net", "--best_model_path",
                                      "digits_net.pth", "--data", "identity_folders:faces", "--split", "2,2,2",
                                      "--metric", "auc"],
    "tt_classifier_metric_on_faces_csv": ["sa.csv", "--drop", "3", "--model", "digits_net", "--best_model_path",
                                          "digits_net.pth", "--data", "digits", "--metric", "lfw_acc"],
    "tt_confirm_out_of_range": ["sa.csv", "--drop", "3", "--model", "digits_net", "--best_model_path",
                                "digits_net.pth", "--data", "digits", "--confirm", "1.5"],
    "tt_search_confidence_without_confirm": ["sa.csv", "--drop", "3", "--model", "digits_net", "--best_model_path",
                                             "digits_net.pth", "--data", "digits", "--search_confidence", "0.5"],
    "tt_search_confidence_out_of_range": ["sa.csv", "--drop", "3", "--model", "digits_net", "--best_model_path",
                                          "digits_net.pth", "--data", "digits", "--confirm", "0.5",
                                          "--search_confidence", "0.2"],
    "tt_bonferroni_and_posthoc": ["sa.csv", "--drop", "3", "--model", "digits_net", "--best_model_path",
                                  "digits_net.pth", "--data", "digits", "--bonferroni", "--multiple_testing",
                                  "posthoc"],
}
AMY_SAYS = {"tt_confirm_out_of_range": "--confirm", "tt_bonferroni_and_posthoc": "contradicts",
            "tt_search_confidence_without_confirm": "only with --confirm",
            "tt_search_confidence_out_of_range": "--search_confidence: expected a level",
            "tt_subject_split_on_classifier_data": "identity-folder",
            "tt_overlapping_subject_split": "in both",
            "tt_face_metric_not_per_sample": "lfw_acc, tpr@fpr", "tt_classifier_metric_on_faces_csv": "measure top1"}


@pytest.mark.parametrize("case", sorted(AMY_CASES))
def test_auto_make_yaml_refuses(case, sb, capsys):
    nan_baseline_csv(sb / "nanbase.csv")
    from PIL import Image

    for i in range(6):                      # identity folders: 6 identities of 3 tiny images
        (sb / "faces" / f"s{i + 1}").mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((16, 16), 40 * i + 10 * k, dtype=np.uint8)).save(sb / "faces" / f"s{i + 1}" /
                                                                                   f"{k}.png")
    line = refused(_amy(), AMY_CASES[case], capsys, sb)
    assert AMY_SAYS.get(case, "") in line


def test_auto_make_yaml_readonly_output(sb, capsys, readonly):
    refused(_amy(), ["sa.csv", "5", "digits_net", "1,16,16", "--output", readonly / "s.yaml"], capsys, sb)


def _plot():
    from compression_tool.cli.plot_csv import main
    return main


PLOT_CASES = {
    "output_exists": ["sa.csv", "--output", "notes.txt"],
    "default_output_exists": ["sa.csv"],
    "output_is_directory": ["sa.csv", "--output", "out_dir", "--force"],
    "output_under_a_file": ["sa.csv", "--output", "a_file/p.png"],
    "missing_csv": ["nope.csv"],
    "latin1_csv": ["latin1.csv", "--output", "p.png"],
    "unknown_metric": ["sa.csv", "--metric", "top9", "--output", "p.png"],
}


@pytest.mark.parametrize("case", sorted(PLOT_CASES))
def test_plot_csv_refuses(case, sb, capsys):
    (sb / "sa.png").write_bytes(b"an earlier plot")
    refused(_plot(), PLOT_CASES[case], capsys, sb)


def test_full_disk_during_an_atomic_write_keeps_the_old_file(sb, capsys):
    """ENOSPC in the middle of a write: one line, the old file intact, no temp file left behind."""
    import errno

    from compression_tool.io.errors import cli_main
    from compression_tool.io.files import atomic_save_with

    def full(tmp):
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    refused(cli_main(lambda argv: atomic_save_with(argv[0], full, force=True)), ["notes.txt"], capsys, sb)


def test_atomic_files_get_the_umask_mode(sb):
    from compression_tool.io.files import atomic_write_text
    old = os.umask(0o022)
    try:
        atomic_write_text(sb / "m.txt", "x")
    finally:
        os.umask(old)
    assert (sb / "m.txt").stat().st_mode & 0o777 == 0o644

# ---------------------------------------------------------------------------------------- quantization / run.py


def _quant():
    from compression_tool.cli.quantization import main
    return main


QUANT_CASES = {
    "threads_zero": ["--mode", "fold", "--threads", "0"],
    "both_checkpoints": ["--mode", "fold", "--best_model_path", "digits_net.pth", "--pruned_model", "x.pth"],
    "missing_checkpoint": ["--mode", "fold", "--best_model_path", "nope.pth", "--model", "digits_net"],
    "garbage_checkpoint": ["--mode", "fold", "--best_model_path", "garbage.pth", "--model", "digits_net"],
    "bad_bits": ["--mode", "lsq", "--min_bw", "1"],
    "unknown_mode": ["--mode", "int3"],
    "out_dir_is_a_file": ["--mode", "hist", "--out_dir", "a_file", "--calib_batches", "1"],
    "epochs_negative": ["--mode", "lsq", "--epochs", "-1"],
}


@pytest.mark.parametrize("case", sorted(QUANT_CASES))
def test_quantization_refuses(case, sb, capsys):
    refused(_quant(), QUANT_CASES[case], capsys, sb)


def _run():
    from compression_tool.cli.run import main
    return main


RUN_CASES = {
    "unknown_prune_method": ["--prune_method", "bogus"],
    "bn_on_a_model_without_bn": ["--model", "lenet5", "--data_type", "digits", "--prune_method", "bn"],
    "epochs_negative": ["--epochs", "-1"],
    "percent_nan": ["--percent", "nan"],
    "percent_above_one": ["--percent", "1.5"],
    "bad_step": ["--step", "4"],
    "unknown_model": ["--model", "no_such_net"],
    "missing_data": ["--data_type", "json", "--data_path", "nope"],
    "work_space_is_a_file": ["--work_space", "a_file"],
    "step2_without_step1": ["--step", "2"],
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_run_refuses(case, sb, capsys):
    refused(_run(), ["--epochs", "1", "--refine_epochs", "1", "--no_progress", *RUN_CASES[case]], capsys, sb)

# ---------------------------------------------------------------------------------------- evaluate / sparse / face


def _evaluate():
    from compression_tool.cli.evaluate import main
    return main


def latin1_json(root: Path) -> Path:
    root.mkdir()
    (root / "test.json").write_bytes('{"data": [], "label": [], "shape": [1, 8, 8], "x": "\xe9"}'.encode("latin-1"))
    return root


EVAL_CASES = {
    "missing_checkpoint": ["--best_model_path", "nope.pth", "--data", "digits"],
    "garbage_checkpoint": ["--best_model_path", "garbage.pth", "--data", "digits"],
    "roc_exists": ["--best_model_path", "digits_net.pth", "--data", "digits", "--roc", "notes.txt"],
    "latin1_json": ["--best_model_path", "digits_net.pth", "--data", "json:j"],
    "unknown_metric": ["--best_model_path", "digits_net.pth", "--data", "digits", "--metric", "foo"],
    "no_data": ["--best_model_path", "digits_net.pth"],
    "threads_zero": ["--best_model_path", "digits_net.pth", "--data", "digits", "--threads", "0"],
}


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_evaluate_refuses(case, sb, capsys):
    latin1_json(sb / "j")
    refused(_evaluate(), ["--model", "digits_net", *EVAL_CASES[case]], capsys, sb)


def _sparse():
    from compression_tool.cli.train_sparse import main
    return main


SPARSE_CASES = {
    "missing_pretrained": ["--eval_only", "--pretrained_model", "nope.pth"],
    "garbage_pretrained": ["--eval_only", "--pretrained_model", "garbage.pth"],
    "eval_only_without_model": ["--eval_only"],
    "ratio_above_one": ["--pretrained_model", "digits_net.pth", "--ratio", "1.5"],
    "epochs_negative": ["--pretrained_model", "digits_net.pth", "--num_epochs", "-1"],
    "model_path_is_a_file": ["--pretrained_model", "digits_net.pth", "--model_path", "a_file"],
    "threads_zero": ["--eval_only", "--pretrained_model", "digits_net.pth", "--threads", "0"],
}


@pytest.mark.parametrize("case", sorted(SPARSE_CASES))
def test_train_sparse_refuses(case, sb, capsys):
    refused(_sparse(), ["--no_progress", *SPARSE_CASES[case]], capsys, sb)


def _face():
    from compression_tool.cli.face_chain import main
    return main


FACE_CASES = {
    "missing_checkpoint": ["report", "a=nope.pth", "--data", "orl:faces"],
    "bad_label": ["report", "nolabel", "--data", "orl:faces"],
    "json_exists": ["report", "a=digits_net.pth", "--data", "orl:faces", "--json", "notes.txt"],
    "json_under_a_file": ["report", "a=digits_net.pth", "--data", "orl:faces", "--json", "a_file/r.json"],
    "init_output_exists": ["init", "--output", "notes.txt"],
    "init_unknown_model": ["init", "--output", "new.pth", "--model", "nonet"],
    "no_command": [],
}


def test_default_model_refuses(sb, capsys):
    from compression_tool.cli.default_model import main
    refused(main, ["--epochs", "-1", "--output", "d.pth"], capsys, sb)
    refused(main, ["--output", "notes.txt"], capsys, sb)


@pytest.mark.parametrize("case", sorted(FACE_CASES))
def test_face_chain_refuses(case, sb, capsys):
    refused(_face(), FACE_CASES[case], capsys, sb)

# ---------------------------------------------------------------------------------------- untrusted checkpoints


def test_untrusted_checkpoints_never_run_code(tmp_path):
    """Every CLI path that loads a checkpoint, as a subprocess, on a file whose unpickling would create a marker."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": digits_net().state_dict(), "x": Payload(str(marker))}, evil)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": digits_net().state_dict()}, good)
    write_schedule(tmp_path / "s.yaml")
    with open(tmp_path / "sa.csv", "w", newline="") as f:
        csv.writer(f).writerows([["parameter", "sparsity", "top1", "top5", "loss"], ["fc1.weight", "0", "9", "9", "1"],
                                 ["fc1.weight", "0.5", "9", "9", "1"]])
    base = tmp_path / "ws/output/digits_net/digits/model_base/model.pth"
    base.parent.mkdir(parents=True)
    shutil.copy(evil, base)
    py = sys.executable
    ck = ["--model", "digits_net", "--best_model_path", str(evil)]
    commands = {
        "sa": [py, "pruning.py", "--mode", "sa", *ck, "--output", str(tmp_path / "o.csv")],
        "sensitivity_analysis": [py, "sensitivity_analysis.py", *ck, "--output", str(tmp_path / "o2.csv")],
        "prune": [py, "pruning.py", "--mode", "prune", *ck, "--yaml", str(tmp_path / "s.yaml")],
        "search": [py, "pruning.py", "--mode", "search", *ck, "--flops", "0.5"],
        "finetune": [py, "pruning.py", "--mode", "finetune", *ck, "--max_iters", "1"],
        "finetune_teacher": [py, "pruning.py", "--mode", "finetune", "--model", "digits_net", "--best_model_path",
                             str(good), "--teacher_path", str(evil), "--distill", "mse", "--max_iters", "1"],
        "quant_fold": [py, "quantization.py", "--mode", "fold", *ck],
        "train_module_resume": [py, "-m", "train_module", "--model", "digits_net", "--best_model_path", str(good),
                                "--resume", str(evil), "--max_iters", "1", "--save_dir", str(tmp_path / "ft")],
        "evaluate": [py, "-m", "test_module.evaluate", *ck, "--data", "digits"],
        "run_step2": [py, "run.py", "--step", "2", "--work_space", str(tmp_path / "ws"), "--no_progress"],
        "auto_make_yaml": [py, "pruning_analysis_tools/auto_make_yaml.py", str(tmp_path / "sa.csv"), "--flops", "0.5",
                           *ck, "--output", str(tmp_path / "b.yaml")],
        "train_sparse": [py, "train_module/train_sparse.py", "--pretrained_model", str(evil), "--eval_only"],
        "face_chain_report": [py, "-m", "compression_tool.cli.face_chain", "report", f"x={evil}", "--data",
                              f"orl:{tmp_path}", "--model", "digits_net"],
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {k: subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    results = {}
    for name, p in procs.items():
        _, err = p.communicate(timeout=600)
        results[name] = (p.returncode, err)
    for name, (code, err) in results.items():
        assert code != 0, name
        line = final_error(err)
        assert "--trust_checkpoint" in line and (str(evil) in line or str(base) in line), (name, line)
    assert not marker.exists()
    # the opt-in really is the switch: with it the payload runs (so the test above proves something)
    torch.load(evil, weights_only=False)
    assert marker.exists()



def test_every_checkpoint_loading_cli_has_the_opt_in():
    from compression_tool.cli import (
        auto_make_yaml,
        evaluate,
        face_chain,
        finetune,
        pruning,
        quantization,
        run,
        train_sparse,
    )
    helps = {"sa": pruning.sa_parser().format_help(), "prune": pruning.prune_parser().format_help(),
             "search": pruning.search_parser().format_help(), "finetune": finetune.build_parser().format_help(),
             "quantization": quantization.build_parser().format_help(), "run": run.build_parser().format_help(),
             "evaluate": evaluate.build_parser().format_help(), "amy": auto_make_yaml.build_parser().format_help(),
             "train_sparse": train_sparse.build_parser().format_help(),
             "face_chain report": face_chain.build_parser()._subparsers._group_actions[0].choices["report"]
             .format_help()}
    assert [k for k, h in helps.items() if "--trust_checkpoint" not in h] == []


def test_clis_default_to_passive_openmp_waiting():
    code = "import os, compression_tool.cli, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PASSIVE"
