"""Issue 14: --device (cpu | cuda | cuda:N | auto) through the stages that run the model; DDP fine-tuning."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compression_tool.engine.device import model_device, resolve_device, to_model_device
from compression_tool.io.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks the error seen on a machine without CUDA")
SA_FAST = ["--sparsities", "0,0.5", "--eval_batches", "2", "--batch_size", "16"]


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory) -> Path:
    from model_define import get_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "digits_net.pth"
    torch.save(get_model("digits_net").state_dict(), path)
    return path


def test_resolve_device():
    assert resolve_device("cpu") == resolve_device(None) == resolve_device("CPU") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(UserError, match="expected cpu | cuda | cuda:N | auto"):
        resolve_device("tpu")
    with pytest.raises(UserError, match="expected"):
        resolve_device("cuda:x")
    model = torch.nn.Linear(2, 2)
    x = torch.ones(1, 2)
    assert model_device(model) == torch.device("cpu") and to_model_device(model, x) is x   # cpu: the same tensor


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_one_line(spec):
    with pytest.raises(UserError) as exc:
        resolve_device(spec)
    assert "CUDA is not available" in str(exc.value) and "\n" not in str(exc.value)


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@no_cuda
@pytest.mark.parametrize("which", ["sa", "prune", "search", "evaluate", "finetune"])
def test_cli_device_cuda_without_a_gpu(which, digits_ckpt, tmp_path, capsys):
    """--device cuda on a machine without CUDA: one line, exit code 2, nothing written."""
    from compression_tool.cli import evaluate, finetune, pruning

    src = ["--model", "digits_net", "--best_model_path", str(digits_ckpt)]
    main, argv = {
        "sa": (pruning.main, ["--mode", "sa", *src, *SA_FAST, "--output", str(tmp_path / "sa.csv")]),
        "prune": (pruning.main, ["--mode", "prune", *src, "--yaml", str(tmp_path / "none.yaml")]),
        "search": (pruning.main, ["--mode", "search", *src, "--flops", "0.5", "--output", str(tmp_path / "s.yaml")]),
        "evaluate": (evaluate.main, [*src, "--data", "digits"]),
        "finetune": (finetune.main, [*src, "--max_iters", "1", "--save_dir", str(tmp_path / "ft")]),
    }[which]
    if which == "prune":
        (tmp_path / "none.yaml").write_text("version: 1\npruners: {}\npolicies: []\n")
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in _one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "none.yaml") == []


def _sa(ckpt: Path, out: Path, *extra: str) -> bytes:
    from compression_tool.cli import pruning

    pruning.main(["--mode", "sa", "--model", "digits_net", "--best_model_path", str(ckpt), *SA_FAST,
                  "--output", str(out), *extra])
    return out.read_bytes()


def test_device_cpu_is_the_default_path(digits_ckpt, tmp_path):
    """--device cpu writes the very bytes (CSV and sidecar) the default run writes."""
    a = _sa(digits_ckpt, tmp_path / "a.csv")
    b = _sa(digits_ckpt, tmp_path / "b.csv", "--device", "cpu")
    assert a == b
    assert (tmp_path / "a.csv.meta.json").read_bytes() == (tmp_path / "b.csv.meta.json").read_bytes()


@needs_cuda
@pytest.mark.parametrize("method", ["l1", "apoz", "taylor", "hrank"])
def test_sensitivity_on_cuda_matches_cpu(digits_ckpt, tmp_path, method):
    from compression_tool.engine.sensitivity import load_csv

    _sa(digits_ckpt, tmp_path / "cpu.csv", "--method", method, "--work_space", str(tmp_path))
    _sa(digits_ckpt, tmp_path / "gpu.csv", "--method", method, "--work_space", str(tmp_path), "--device", "cuda")
    names, cpu = load_csv(str(tmp_path / "cpu.csv"))
    _, gpu = load_csv(str(tmp_path / "gpu.csv"))
    assert cpu.keys() == gpu.keys()
    for layer in cpu:
        for (s1, m1), (s2, m2) in zip(cpu[layer], gpu[layer]):
            assert s1 == s2 and abs(m1["top1"] - m2["top1"]) <= 1.0, (layer, s1, m1, m2)


@needs_cuda
def test_evaluate_prune_and_finetune_on_cuda(digits_ckpt, tmp_path, capsys):
    from compression_tool.cli import evaluate, finetune

    src = ["--model", "digits_net", "--best_model_path", str(digits_ckpt)]
    evaluate.main([*src, "--data", "digits"])
    cpu = capsys.readouterr().out
    evaluate.main([*src, "--data", "digits", "--device", "cuda"])
    gpu = capsys.readouterr().out
    top1 = [float(next(ln for ln in o.splitlines() if ln.startswith("top1")).split()[1]) for o in (cpu, gpu)]
    assert abs(top1[0] - top1[1]) <= 0.5
    finetune.main([*src, "--max_iters", "2", "--eval_every", "2", "--save_dir", str(tmp_path / "ft"),
                   "--device", "cuda"])
    assert list((tmp_path / "ft").glob("best_top1=*_step=2.pth"))


@pytest.mark.parametrize("which", ["sa", "evaluate", "finetune"])
def test_amp_on_the_cpu_is_refused_in_one_line(which, digits_ckpt, tmp_path, capsys):
    """--amp is CUDA's: on the CPU (the exact path) it is one line, exit code 2, nothing written."""
    from compression_tool.cli import evaluate, finetune, pruning

    src = ["--model", "digits_net", "--best_model_path", str(digits_ckpt)]
    main, argv = {
        "sa": (pruning.main, ["--mode", "sa", *src, *SA_FAST, "--output", str(tmp_path / "sa.csv")]),
        "evaluate": (evaluate.main, [*src, "--data", "digits"]),
        "finetune": (finetune.main, [*src, "--max_iters", "1", "--save_dir", str(tmp_path / "ft")]),
    }[which]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--amp"])
    assert exc.value.code == 2
    assert "--amp" in _one_line_error(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_amp_helpers_change_nothing_when_off():
    from compression_tool.engine.device import amp_context, with_amp

    f = lambda x: x * 2
    assert with_amp(f, torch.device("cpu"), False) is f
    with amp_context(torch.device("cpu"), False):
        assert torch.ones(2).dtype == torch.float32
    with pytest.raises(UserError, match="CUDA only"):
        amp_context(torch.device("cpu"), True)


@needs_cuda
def test_amp_evaluate_and_finetune_on_cuda(digits_ckpt, tmp_path, capsys):
    from compression_tool.cli import evaluate, finetune

    src = ["--model", "digits_net", "--best_model_path", str(digits_ckpt), "--device", "cuda"]
    evaluate.main([*src, "--data", "digits"])
    fp32 = capsys.readouterr().out
    evaluate.main([*src, "--data", "digits", "--amp"])
    fp16 = capsys.readouterr().out
    top1 = [float(next(ln for ln in o.splitlines() if ln.startswith("top1")).split()[1]) for o in (fp32, fp16)]
    assert abs(top1[0] - top1[1]) <= 0.5
    finetune.main([*src, "--max_iters", "2", "--eval_every", "2", "--save_dir", str(tmp_path / "ft"), "--amp"])
    assert list((tmp_path / "ft").glob("best_top1=*_step=2.pth"))


# ------------------------------------------------------------------ data-parallel fine-tuning under torchrun

def _train(ckpt: Path, cwd: Path, save_dir: str, nproc: int, *extra: str) -> str:
    """``python -m train_module`` (nproc 1) or ``python -m torch.distributed.run --nproc_per_node N -m
    train_module``; returns stderr+stdout."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    cmd = [sys.executable, *launcher, "-m", "train_module", "--model", "digits_net", "--best_model_path", str(ckpt),
           "--data", "digits", "--lr", "0.01", "--batch_size", "32", "--threads", "1", "--save_dir", save_dir,
           *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr + run.stdout


def _evals(log: str) -> dict:
    """{step: top1} from the 'step N: top1=…' lines (the first rank's line of each step)."""
    out: dict = {}
    for step, top1 in re.findall(r"step (\d+): top1=([0-9.]+)", log):   # after a progress bar's \r too
        out.setdefault(int(step), float(top1))
    return out


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory) -> Path:
    from compression_tool.apps.default_model import train_default

    return train_default(tmp_path_factory.mktemp("trained") / "digits_net.pth")


@pytest.mark.parametrize("freeze_bn,batch", [(True, 32), (False, 32), (False, 31)])
def test_torchrun_two_cpu_processes_match_one(trained_digits, tmp_path, freeze_bn, batch):
    """Two gloo processes, each on its share of every batch, are the single process's computation (the gradient of
    the whole batch's mean loss): metrics within 0.1 point. With BN in training mode that holds because the BN
    layers normalise over the whole batch (GlooSyncBatchNorm, --sync_bn on by default), also when the batch does
    not split evenly (31 = 15 + 16: statistics weighted by the counts)."""
    extra = ["--max_iters", "20", "--eval_every", "10", "--batch_size", str(batch),
             *(["--freeze_bn"] if freeze_bn else [])]
    one = _evals(_train(trained_digits, tmp_path, "one", 1, *extra))
    two_log = _train(trained_digits, tmp_path, "two", 2, *extra)
    two = _evals(two_log)
    assert one.keys() == two.keys() == {10, 20}
    for step in one:
        assert abs(one[step] - two[step]) <= 0.1, (step, one, two)
    assert len(list((tmp_path / "two").iterdir())) == 1                # rank 0 alone wrote (one best checkpoint)
    assert two_log.count("checkpoint: ") == 1                           # and rank 0 alone reported


def test_torchrun_resume_continues_like_a_straight_run(trained_digits, tmp_path):
    extra = ["--eval_every", "4", "--freeze_bn", "--eval_at_start"]
    straight = _evals(_train(trained_digits, tmp_path, "a", 2, "--max_iters", "8", *extra))
    _train(trained_digits, tmp_path, "b", 2, "--max_iters", "4", *extra)
    ckpt = sorted((tmp_path / "b").glob("best_*.pth"))
    assert len(ckpt) == 1
    resumed = _evals(_train(trained_digits, tmp_path, "b", 2, "--max_iters", "8", "--resume", str(ckpt[0]),
                            *extra))
    assert 8 in resumed and abs(resumed[8] - straight[8]) <= 1e-9, (straight, resumed)


# ------------------------------------------------------------------ sensitivity analysis on N local processes

def test_sa_workers_write_the_serial_csv_and_resume(trained_digits, tmp_path):
    serial = _sa(trained_digits, tmp_path / "serial.csv", "--sparsities", "0,0.3,0.6,0.9", "--method", "l1")
    two = _sa(trained_digits, tmp_path / "two.csv", "--sparsities", "0,0.3,0.6,0.9", "--method", "l1",
              "--workers", "2")
    assert two == serial
    assert (tmp_path / "two.csv.meta.json").read_bytes() == (tmp_path / "serial.csv.meta.json").read_bytes()
    # an interrupted run: 5 rows and a torn line; --workers 2 resumes it to the serial bytes
    lines = serial.decode().splitlines(keepends=True)
    (tmp_path / "cut.csv").write_text("".join(lines[:6]) + lines[6][:7])
    (tmp_path / "cut.csv.meta.json").write_bytes((tmp_path / "serial.csv.meta.json").read_bytes())
    assert _sa(trained_digits, tmp_path / "cut.csv", "--sparsities", "0,0.3,0.6,0.9", "--method", "l1",
               "--workers", "2") == serial


def test_rows_are_written_in_group_order_whatever_the_finishing_order(tmp_path):
    """A pool that finishes the groups last-first still gives the serial CSV."""
    from compression_tool.engine.checkpoint import example_input
    from compression_tool.engine.criteria import make_criterion
    from compression_tool.engine.groups import GroupIndex
    from compression_tool.engine.sensitivity import GroupMeasurer, sweep
    from model_define import get_model

    torch.manual_seed(0)
    model = get_model("digits_net").eval()
    index = GroupIndex(model, example_input((1, 8, 8)))
    crit = make_criterion("l1")
    x = torch.randn(32, 1, 8, 8)

    def evaluate(m):
        with torch.no_grad():
            out = m(x)
        return {"top1": float(out.argmax(1).float().mean()), "loss": float(out.pow(2).mean())}

    levels = [0.0, 0.25, 0.5]
    sweep(model, index, crit, evaluate, tmp_path / "serial.csv", levels, ["top1", "loss"])

    def reversed_pool(tasks):
        measurer = GroupMeasurer(model, index, crit, evaluate, ["top1", "loss"])
        groups = {g.name: g for g in index.groups}
        done = [(i, list(measurer.measure(groups[name], lv))) for i, (name, lv) in enumerate(tasks)]
        yield from reversed(done)

    sweep(model, index, crit, evaluate, tmp_path / "pool.csv", levels, ["top1", "loss"], pool=reversed_pool)
    assert (tmp_path / "pool.csv").read_bytes() == (tmp_path / "serial.csv").read_bytes()
    assert len(index.groups) > 1


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


@pytest.mark.skipif(not _has_ray(), reason="ray is not installed (pip install -e .[dev] brings it)")
def test_sa_on_ray_actors_writes_the_serial_csv(trained_digits, tmp_path):
    serial = _sa(trained_digits, tmp_path / "serial.csv", "--sparsities", "0,0.5,0.9")
    cmd = [sys.executable, str(ROOT / "pruning.py"), "--mode", "sa", "--model", "digits_net", "--best_model_path",
           str(trained_digits), *SA_FAST, "--sparsities", "0,0.5,0.9", "--output", str(tmp_path / "ray.csv"),
           "--workers", "2", "--pool", "ray"]
    run = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "ray.csv").read_bytes() == serial


def test_the_readme_install_brings_ray():
    """``pip install -e ".[dev]"`` (the README's first command) installs Ray; ``.[ray]`` stays an alias."""
    tomllib = pytest.importorskip("tomllib")                             # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("ray") for r in extras["dev"]) and any(r.startswith("ray") for r in extras["ray"])


def test_the_default_run_never_imports_ray(digits_ckpt, tmp_path):
    code = ("import sys; from compression_tool.cli import pruning; "
            f"pruning.main(['--mode', 'sa', '--model', 'digits_net', '--best_model_path', {str(digits_ckpt)!r}, "
            f"'--sparsities', '0,0.5', '--eval_batches', '1', '--output', {str(tmp_path / 'a.csv')!r}]); "
            "print('RAY' if 'ray' in sys.modules else 'NO_RAY')")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("NO_RAY")


# ------------------------------------------------------------------ a worker killed mid-run

def _square(v: int) -> int:
    return v * v


def _always_dies(v: int) -> int:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return v


def test_a_killed_process_worker_has_its_task_rerun_once(tmp_path, monkeypatch):
    """SIGKILL breaks a ProcessPoolExecutor entirely; the pool is rebuilt and only the unfinished tasks rerun."""
    from compression_tool.apps.worker_pool import KILL_HOOK, WorkerPool

    monkeypatch.setenv(KILL_HOOK, f"3:{tmp_path / 'killed'}")
    with WorkerPool(os.getpid, (), 2) as pool:
        got = list(pool.run(_square, [(v,) for v in range(8)]))
        assert pool.restarts == 1
    assert (tmp_path / "killed").exists()
    assert sorted(got) == [(i, i * i) for i in range(8)]            # each task once: nothing lost or duplicated


def test_a_worker_that_keeps_dying_is_one_line(monkeypatch):
    from compression_tool.apps.worker_pool import WorkerPool

    with WorkerPool(os.getpid, (), 1, retries=1) as pool:
        with pytest.raises(UserError, match=r"died \(or failed to start\) 2 times") as exc:
            list(pool.run(_always_dies, [(1,)]))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("backend", ["process", pytest.param("ray", marks=pytest.mark.skipif(
    not _has_ray(), reason="ray is not installed"))])
def test_sa_with_a_worker_killed_mid_run_writes_the_serial_csv(trained_digits, tmp_path, backend):
    """The worker measuring the second group SIGKILLs itself once (a marker file makes the retry run normally): the
    CSV is still the serial run's, byte for byte: no row lost, none twice."""
    from compression_tool.apps.worker_pool import KILL_HOOK

    levels = ["--sparsities", "0,0.3,0.6,0.9", "--method", "l1"]
    serial = _sa(trained_digits, tmp_path / "serial.csv", *levels)
    cmd = [sys.executable, str(ROOT / "pruning.py"), "--mode", "sa", "--model", "digits_net", "--best_model_path",
           str(trained_digits), *SA_FAST, *levels, "--output", str(tmp_path / "two.csv"), "--workers", "2",
           "--pool", backend]
    env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_HOOK: f"1:{tmp_path / 'killed'}"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "killed").exists()                              # the worker did die
    assert (tmp_path / "two.csv").read_bytes() == serial


# ------------------------------------------------------------------ the search's populations on the pool

@pytest.mark.parametrize("algo", ["ga", "pso", "aco", "abc"])
def test_search_on_two_workers_is_the_serial_search(trained_digits, tmp_path, monkeypatch, capsys, algo):
    """The same seed gives the same schedule and the same printed candidates with --workers 2 (1 thread each) as in
    one process (1 thread); a worker is killed once on the way (its candidates re-run), which also proves the
    workers did evaluate."""
    from compression_tool.apps.worker_pool import KILL_HOOK
    from compression_tool.cli import pruning

    def search(out: Path, *extra: str) -> str:
        pruning.main(["--mode", "search", "--model", "digits_net", "--best_model_path", str(trained_digits),
                      "--algo", algo, "--flops", "0.5", "--population", "4", "--iterations", "2", "--eval_batches",
                      "1", "--search_batches", "1", "--output", str(out), *extra])
        return capsys.readouterr().out.replace(str(out), "OUT")

    serial = search(tmp_path / "serial.yaml", "--threads", "1")
    monkeypatch.setenv(KILL_HOOK, f"1:{tmp_path / 'killed'}")
    pooled = search(tmp_path / "pooled.yaml", "--threads", "2", "--workers", "2")
    assert (tmp_path / "killed").exists()
    assert pooled == serial and "best_candidates_prune=[" in serial
    assert (tmp_path / "pooled.yaml").read_bytes() == (tmp_path / "serial.yaml").read_bytes()


# ------------------------------------------------------------------ workers start from the decoded subset

def _image_folder(root: Path, classes: int = 4, per_class: int = 10) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / f"c{c}" / f"{k}.png")
    return root


def test_only_the_eval_subset_is_decoded_and_workers_reuse_it(tmp_path, monkeypatch):
    """--eval_batches 2 x 8 of a 40-image folder: 16 images read (not 40), the very subset a full read then cut
    gives; the workers' config carries those tensors in shared memory and builds its evaluation without the folder."""
    from compression_tool.apps.workflow import shared_eval
    from compression_tool.data import imagefolder
    from compression_tool.data.spec import classifier_tensors
    from test_module.setup import EvalConfig, build_setup

    folder = _image_folder(tmp_path / "imgs")
    reads = []
    real = imagefolder.read_image
    monkeypatch.setattr(imagefolder, "read_image", lambda p, *a, **k: reads.append(p) or real(p, *a, **k))
    cfg = EvalConfig(data=f"image_folder:{folder}", eval_batches=2, batch_size=8, seed=3)
    setup = build_setup(cfg, "classifier", (1, 8, 8))
    assert len(reads) == 16
    x, y = classifier_tensors(cfg.data, (1, 8, 8))                     # the whole folder, then cut
    pick = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:16].sort().values
    assert torch.equal(setup.decoded.y, y[pick]) and torch.equal(setup.decoded.x, x[pick])
    assert setup.num_classes == 4

    shared = shared_eval(cfg, setup)
    assert shared.preloaded.x.is_shared() and shared.preloaded.y.is_shared()
    import shutil

    shutil.rmtree(folder)
    reads.clear()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    again = build_setup(shared, "classifier", (1, 8, 8))
    assert reads == [] and again.num_classes == 4 and again.evaluate(model) == setup.evaluate(model)


def test_ray_address_reaches_the_ray_pool(monkeypatch):
    """--ray_address is handed to ray.init (joining that cluster instead of starting a local Ray)."""
    from compression_tool.apps import worker_pool

    seen = {}

    class Fake:
        def __init__(self, init, init_args, workers, retries, address=None):
            seen["address"] = address

        def run(self, fn, tasks):
            return iter([(i, None) for i in range(len(tasks))])

        def close(self):
            pass

    monkeypatch.setattr(worker_pool, "_RayActors", Fake)
    with worker_pool.WorkerPool(lambda: None, (), 2, "ray", address="HOST:6379") as pool:
        assert [i for i, _ in pool.run(len, [("a",), ("b",)])] == [0, 1]
    assert seen["address"] == "HOST:6379"
