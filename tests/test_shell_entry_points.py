"""prune.sh as users call it: the positional TARGET survives extra flags (a fake interpreter records each call)."""
import os
import stat
import subprocess

import pytest

from tests.conftest import ROOT

FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$CALLS"
case "$1" in -c) echo 1,16,16 ;; esac
"""


def run_prune_sh(tmp_path, *args):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.log"
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(calls), "FINETUNE_EPOCHS": "0"}
    r = subprocess.run(["sh", str(ROOT / "prune.sh"), *args], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return calls.read_text().splitlines()


def schedule_call(lines):
    return next(line.split() for line in lines if "auto_make_yaml.py" in line)


@pytest.mark.parametrize("extra", [[], ["--from_data_parallel", "--eval_batches", "8"]])
def test_positional_target_survives_extra_flags(tmp_path, extra):
    lines = run_prune_sh(tmp_path, "resnet20", "ckpt.th", "image_folder:imgs", "79", "fpgm", *extra)
    call = schedule_call(lines)
    assert call[call.index("pruning_analysis_tools/auto_make_yaml.py") + 2] == "79"
    sa = next(line for line in lines if "--mode sa" in line)
    assert all(flag in sa for flag in extra) and "--method fpgm" in sa
