"""Data-parallel training (irkd.dist, torch_ref.dist, ms_impl.dist): 2 processes launched by
torchrun and msrun against 1 process with the same global batch, resume, a failing rank.

Tiny data (64x64 synthetic, 32-pixel crops, global batch 4 = 2 x 2). Every multi-process
run is a subprocess started by the framework's own launcher, as a user starts it.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from irkd.cli import main
from irkd.config import ConfigError, config_from_dict, load_config, save_config
from irkd.data import IRSTDDataset, TrainBatches, synthesize
from irkd.dist import (
    ShardedBatches,
    check_supported,
    launch_env,
    launcher_env,
    per_rank_batch,
    shard_noise,
)
from irkd.schedule import noise_for
from irkd.weights import load_neutral

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEACHER, STUDENT = "dnanet_xs", "dnanet_xxs"

# Tolerances of the equivalence (float32 sums in another order: measured 1.2e-7 on weights
# of magnitude up to 4.6 after 4 AdamW steps, both backends; losses equal to 7 digits).
WEIGHT_ATOL = 2e-6
LOSS_ATOL = 2e-6


# ----------------------------------------------------------------------------- helpers


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(backend: str) -> dict[str, str]:
    # as in CI: the virtual environment is used by its path, not activated (msrun's workers
    # run ``python SCRIPT`` from PATH; irkd.dist.launch_env puts this interpreter first)
    here = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != here]
    env = launch_env({**os.environ, "PATH": os.pathsep.join(path)})
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "RANK_SIZE", "RANK_ID", "MS_ROLE"):
        env.pop(var, None)
    env["IRKD_TORCH_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO)
    if backend == "mindspore":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"  # MindSpore's CPU kernels: 40x faster here
    return env


def _cli(args: list[str], backend: str, nproc: int, log_dir: Path, timeout: int = 900):
    """Run ``irkd ARGS`` in ``nproc`` processes with the backend's launcher (1: plainly)."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "irkd.cli", *args]
    elif backend == "pytorch":
        cmd = [
            str(BIN / "torchrun"),
            f"--nproc_per_node={nproc}",
            f"--master_port={_port()}",
            "-m",
            "irkd.cli",
            *args,
        ]
    else:
        cmd = [
            str(BIN / "msrun"),
            f"--worker_num={nproc}",
            f"--local_worker_num={nproc}",
            f"--master_port={_port()}",
            f"--log_dir={log_dir}",
            "--join=True",
            str(BIN / "irkd"),
            *args,
        ]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=REPO, env=_env(backend), capture_output=True, text=True, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    if log_dir.is_dir():  # msrun: each worker's output is in its log
        for f in sorted(log_dir.glob("worker_*.log")):
            out += f"\n=== {f.name}\n" + f.read_text(errors="replace")
    return proc.returncode, out, time.monotonic() - t0


def test_launch_env_puts_this_interpreter_first():
    here = str(Path(sys.executable).parent)
    env = launch_env({"PATH": os.pathsep.join(["/usr/bin", here, "/bin"]), "X": "1"})
    assert env["PATH"].split(os.pathsep) == [here, "/usr/bin", "/bin"]
    assert env["X"] == "1"
    assert launch_env({})["PATH"] == here


def _run_ok(args, backend, nproc, log_dir):
    rc, out, _ = _cli(args, backend, nproc, log_dir)
    assert rc == 0, out[-4000:]
    return out


def _student(run: Path) -> dict[str, np.ndarray]:
    return load_neutral(run / "checkpoints" / "last" / "student.safetensors")[0]


def _losses(run: Path) -> list[tuple[int, float]]:
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if r.get("kind") == "train"]


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
    assert a.keys() == b.keys()
    diffs = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].size > 0}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def _assert_equivalent(one: Path, two: Path) -> None:
    d, name = _max_diff(_student(one), _student(two))
    print(f"\n1 vs 2 processes: max |w1 - w2| = {d:.3g} ({name})")
    assert d <= WEIGHT_ATOL, f"{name}: {d}"
    l1, l2 = _losses(one), _losses(two)
    assert [s for s, _ in l1] == [s for s, _ in l2] and l1
    assert max(abs(a - b) for (_, a), (_, b) in zip(l1, l2, strict=True)) <= LOSS_ATOL
    # the weights moved: the comparison is not between two untouched initialisations
    init = _student(one)
    assert any(np.any(init[k] != 0) for k in init)


def _assert_cut_and_resumed_equals(cfg: Path, backend: str, straight: Path, tmp: Path) -> None:
    """Run ``cfg`` for 1 epoch on 2 processes, resume it to 2 epochs, and check that it equals
    the straight 2-epoch, 2-process run ``straight`` bit for bit (weights, every loss)."""
    cut = tmp / "cut"
    first = ["train", str(cfg), "schedule.epochs=1", "--out", str(cut)]
    _run_ok(first, backend, 2, tmp / "l-cut")
    assert json.loads((cut / "checkpoints/last/state.json").read_text())["epoch"] == 1
    resume = ["train", "--resume", "--out", str(cut), "schedule.epochs=2"]
    _run_ok(resume, backend, 2, tmp / "l-resume")
    a, b = _student(straight), _student(cut)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _losses(straight) == _losses(cut)
    assert json.loads((cut / "metrics.json").read_text())["last_epoch"] == 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("dp") / "S", 16, seed=0, size=64, test_fraction=0.25)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    import torch

    from torch_ref.models import create_model
    from torch_ref.weights import save_neutral_net

    torch.manual_seed(123)
    net = create_model(TEACHER)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(2, 1, 32, 32))
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_neutral_net(net, path, name=TEACHER)
    return path


def _config(tmp: Path, root: Path, backend: str, name: str = "dp", **over) -> Path:
    d = {
        "name": name,
        "seed": 0,
        "backend": backend,
        "data": {"root": str(root), "crop": 32, "batch_size": 4, "val_fraction": 0.25},
        "model": {"name": STUDENT},
        "method": {"name": "none"},
        "optim": {"lr": 5e-3},
        "schedule": {"epochs": 2, "steps_per_epoch": 2, "warmup_epochs": 1},
        "train": {"log_every": 1, "freeze_bn": True},
    }
    for key, value in over.items():
        sec, _, field = key.partition("__")
        if field:
            d.setdefault(sec, {})[field] = value
        else:
            d[sec] = value
    path = tmp / f"{name}-{backend}.yaml"
    save_config(config_from_dict(d), path)
    return path


# ----------------------------------------------------------------------------- framework-free


def test_launcher_env_reads_torchrun_msrun_and_rank_tables():
    assert launcher_env("pytorch", {}).size == 1
    e = launcher_env("pytorch", {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (e.rank, e.size, e.local_rank, e.launcher) == (2, 4, 0, "torchrun")
    msrun = {"RANK_SIZE": "2", "RANK_ID": "1", "DEVICE_ID": "1", "MS_ROLE": "MS_WORKER"}
    e = launcher_env("mindspore", msrun)
    assert (e.rank, e.size, e.local_rank, e.launcher) == (1, 2, 1, "msrun")
    table = {"RANK_TABLE_FILE": "/user/config/jobstart_hccl.json", "RANK_SIZE": "8"}
    e = launcher_env("mindspore", {**table, "RANK_ID": "5", "DEVICE_ID": "5"})
    assert (e.rank, e.size, e.launcher) == (5, 8, "rank_table")
    assert launcher_env("pytorch", {"WORLD_SIZE": "1", "RANK": "0"}).launcher == "single"
    with pytest.raises(ConfigError, match=r"rank 3 is not in \[0, 2\)"):
        launcher_env("pytorch", {"WORLD_SIZE": "2", "RANK": "3"})
    with pytest.raises(ConfigError, match="not an integer"):
        launcher_env("pytorch", {"WORLD_SIZE": "two"})


def test_global_batch_must_split_evenly(root, tmp_path):
    assert per_rank_batch(8, 4) == 2
    with pytest.raises(ConfigError, match="batch_size 6 is the global batch.*4 processes"):
        per_rank_batch(6, 4)
    cfg = load_config(_config(tmp_path, root, "pytorch"), ["method.name=pkd"])
    check_supported(cfg, 1)
    cfg = config_from_dict(
        {
            "data": {"root": str(root), "batch_size": 4},
            "teacher": {"name": TEACHER, "checkpoint": "t.safetensors"},
            "method": {"name": "pkd"},
        }
    )
    with pytest.raises(ConfigError, match="pkd standardises features over the whole batch"):
        check_supported(cfg, 2)


def test_shards_partition_every_global_batch(root):
    ds = IRSTDDataset(root, "train")
    batches = TrainBatches(ds, ds.ids, batch_size=4, crop=32, mean=100.0, std=30.0, seed=3)
    shards = [ShardedBatches(batches, r, 2) for r in range(2)]
    assert [len(s) for s in shards] == [len(batches)] * 2 and shards[0].batch_size == 2
    for e in (0, 1):
        whole = list(batches.epoch(e))
        parts = [list(s.epoch(e)) for s in shards]
        assert len(whole) == len(parts[0]) == len(parts[1]) > 0
        for (x, m), (x0, m0), (x1, m1) in zip(whole, *parts, strict=True):
            np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
            np.testing.assert_array_equal(np.concatenate([m0, m1]), m)
    with pytest.raises(ConfigError, match="divisible"):
        ShardedBatches(batches, 0, 3)


def test_noise_shards_are_slices_of_the_global_draw():
    shapes = lambda n: ((n, 1, 4, 4), (), (n, 1, 2, 2))  # noqa: E731
    draw = lambda n: noise_for(7, 5, shapes(n))  # noqa: E731
    full = draw(4)
    parts = [shard_noise(draw, 2, r, 2) for r in range(2)]
    for i in (0, 2):
        np.testing.assert_array_equal(np.concatenate([parts[0][i], parts[1][i]]), full[i])
    assert parts[1][1].shape == () and parts[1][0].shape == (2, 1, 4, 4)


def test_data_parallel_cli_needs_out(root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", str(_config(tmp_path, root, "pytorch"))]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "data-parallel run (2 processes) needs --out" in err[-1]
    # torchrun's variables around a MindSpore config: refused, not N one-process runs
    cfg = str(_config(tmp_path, root, "mindspore"))
    assert main(["train", cfg, "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "irkd: error: backend mindspore was started by torchrun: launch mindspore runs with "
        "msrun, or set backend=pytorch"
    )
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- PyTorch


@pytest.mark.slow  # test_torchrun_rank_1_failing_mid_run_stops_rank_0 keeps torchrun fast
@pytest.mark.parametrize("mode", ["train", "distill"])
def test_torchrun_two_processes_equal_one(root, teacher_ckpt, tmp_path, mode):
    """2 processes x batch 2 = 1 process x batch 4 (BatchNorm frozen: exact up to order)."""
    over = {}
    if mode == "distill":  # MGD: random masks drawn for the global batch, sliced per rank
        over = {
            "teacher": {"name": TEACHER, "checkpoint": str(teacher_ckpt)},
            "method": {"name": "mgd", "stages": ["enc1"]},
        }
    cfg = _config(tmp_path, root, "pytorch", **over)
    _run_ok([mode, str(cfg), "--out", str(tmp_path / "one")], "pytorch", 1, tmp_path / "l1")
    out = _run_ok([mode, str(cfg), "--out", str(tmp_path / "two")], "pytorch", 2, tmp_path / "l2")
    _assert_equivalent(tmp_path / "one", tmp_path / "two")
    assert out.count(f"irkd {mode}: dp on pytorch (2 processes, torchrun)") == 1
    two = tmp_path / "two"
    recs = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "start" for r in recs) == 1  # rank 0 alone wrote the log
    assert (two / "metrics.json").is_file() and (two / "best.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_per_rank_batchnorm_is_the_sharded_step(root, tmp_path):
    """Without train.freeze_bn each rank normalises with its own 2 images' statistics: the
    2-process run equals one process that runs the two halves of each batch separately
    through the network (SoftIoU over all four), averages nothing else and keeps rank 0's
    running statistics; and differs from the plain 4-image step."""
    import torch

    from irkd.data.prepare import prepare_data
    from irkd.schedule import lr_at
    from torch_ref.losses import task_loss
    from torch_ref.train import TorchTrainer

    # SGD: under AdamW the conv biases in front of a BatchNorm (gradient 0 in exact
    # arithmetic, rounding noise in float32) move by +-lr whatever the noise's size.
    optim = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    train = {"log_every": 1, "freeze_bn": False}
    path = _config(tmp_path, root, "pytorch", train=train, optim=optim)
    _run_ok(["train", str(path), "--out", str(tmp_path / "two")], "pytorch", 2, tmp_path / "l")
    cfg = load_config(path)
    torch.set_num_threads(1)
    tr = TorchTrainer(cfg, device="cpu")
    data = prepare_data(cfg, tmp_path / "cache")
    step = 0
    for e in range(cfg.schedule.epochs):
        tr.train_mode()
        for i, (x, m) in enumerate(data.batches.epoch(e)):
            if i >= cfg.schedule.steps_per_epoch:
                break
            for g in tr.optimizer.param_groups:
                g["lr"] = lr_at(step, 2, cfg.optim, cfg.schedule)
            xs, ms = torch.from_numpy(x), torch.from_numpy(m)
            logits0 = tr.student(xs[:2])  # rank 0: its statistics are the ones kept
            kept = {k: v.clone() for k, v in tr.student.named_buffers()}
            logits1 = tr.student(xs[2:])
            with torch.no_grad():
                for k, v in tr.student.named_buffers():
                    v.data.copy_(kept[k])  # not seen by autograd: the graph holds v
            loss = task_loss(torch.cat([logits0, logits1]), (), ms)
            tr.optimizer.zero_grad()
            loss.backward()
            tr.optimizer.step()
            step += 1
    sharded = {k: v.detach().numpy() for k, v in tr.student.state_dict().items()}
    two = _student(tmp_path / "two")
    sharded = {k: sharded[k] for k in two}
    d, name = _max_diff(two, sharded)
    print(f"\nper-rank BatchNorm: 2 processes vs the sharded step: {d:.3g} ({name})")
    assert d <= WEIGHT_ATOL, name
    _run_ok(["train", str(path), "--out", str(tmp_path / "one")], "pytorch", 1, tmp_path / "l1")
    d1, name1 = _max_diff(two, _student(tmp_path / "one"))
    print(f"per-rank BatchNorm: 2 processes vs 1 process of 4 images: {d1:.3g} ({name1})")
    assert d1 > 100 * WEIGHT_ATOL  # the statistics of 2 images are not those of 4


@pytest.mark.slow
def test_torchrun_two_processes_resume_exactly(root, tmp_path):
    over = {"schedule": {"epochs": 2, "steps_per_epoch": 2, "scheduler": "constant"}}
    cfg = _config(tmp_path, root, "pytorch", train={"log_every": 1, "freeze_bn": False}, **over)
    straight = tmp_path / "straight"
    _run_ok(["train", str(cfg), "--out", str(straight)], "pytorch", 2, tmp_path / "l")
    _assert_cut_and_resumed_equals(cfg, "pytorch", straight, tmp_path)


@pytest.mark.slow  # test_torchrun_rank_1_failing_mid_run_stops_rank_0 stays fast
def test_torchrun_failing_rank_stops_the_job(root, tmp_path):
    """Rank 0 refuses the run folder; rank 1, waiting for it, does not hang."""
    cfg = _config(tmp_path, root, "pytorch")
    busy = tmp_path / "someone-elses"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n")
    rc, out, wall = _cli(["train", str(cfg), "--out", str(busy)], "pytorch", 2, tmp_path / "l")
    assert rc != 0 and wall < 300
    assert "is not an irkd run folder" in out
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


FAIL_RANK_1 = """
import os, sys
sys.path.insert(0, {repo!r})
import {module} as train
if os.environ.get({rank_var!r}) == "1":  # rank 1 fails at its third step
    real = train.{trainer}.step
    def step(self, images, masks, step, *args, **kwargs):
        if step == 2:
            raise ValueError("injected failure on rank 1 at step 3")
        return real(self, images, masks, step, *args, **kwargs)
    train.{trainer}.step = step
from irkd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _fail_script(tmp: Path, backend: str) -> Path:
    path = tmp / f"fail_rank1_{backend}.py"
    if backend == "pytorch":
        fmt = {"module": "torch_ref.train", "trainer": "TorchTrainer", "rank_var": "RANK"}
    else:
        fmt = {"module": "ms_impl.train", "trainer": "MSTrainer", "rank_var": "RANK_ID"}
    path.write_text(FAIL_RANK_1.format(repo=str(REPO), **fmt))
    return path


def test_torchrun_rank_1_failing_mid_run_stops_rank_0(root, tmp_path):
    """Rank 1 raises in epoch 2 while rank 0 waits for its gradients: the job ends with rank
    1's message, rank 0 does not hang, and epoch 1's checkpoint is the last one written."""
    cfg = _config(tmp_path, root, "pytorch")
    run = tmp_path / "run"
    cmd = [
        str(BIN / "torchrun"),
        "--nproc_per_node=2",
        f"--master_port={_port()}",
        str(_fail_script(tmp_path, "pytorch")),
        "train",
        str(cfg),
        "--out",
        str(run),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=REPO, env=_env("pytorch"), capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and time.monotonic() - t0 < 300, out[-3000:]
    assert "irkd: error: injected failure on rank 1 at step 3" in out
    state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and not (run / "metrics.json").exists()


@pytest.mark.slow
def test_study_runs_each_run_on_two_processes(tmp_path):
    """irkd study --nproc-per-run 2: each run is started by torchrun, rank 0 writes it."""
    import yaml

    tiny = {
        "seed": 0,
        "backend": "pytorch",
        "data": {"root": None, "synth_n": 12, "crop": 32, "batch_size": 2, "val_fraction": 0.2},
        "model": {"name": STUDENT},
        "optim": {"lr": 0.05},
        "schedule": {"epochs": 1, "steps_per_epoch": 2},
        "train": {"log_every": 1},
    }
    teacher = {**tiny, "name": "teacher", "method": {"name": "none"}}
    student = {**tiny, "name": "student", "teacher": {"name": STUDENT}, "method": {"name": "none"}}
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student))
    study = {
        "name": "dp",
        "threads": 1,
        "datasets": {"syn": {"student": "student.yaml", "teacher": "teacher.yaml"}},
        "seeds": [0],
        "reference": "student",
        "methods": {"student": {"overrides": ["method.name=none"]}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    cmd = [sys.executable, "-m", "irkd.cli", "study", str(tmp_path / "study.yaml")]
    cmd += ["--runs-dir", str(tmp_path / "W"), "--results-dir", str(tmp_path / "R")]
    cmd += ["--cache", str(tmp_path / "cache"), "--nproc-per-run", "2"]
    res = subprocess.run(
        cmd, cwd=tmp_path, env=_env("pytorch"), capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    # the student alone has the teacher's config here: one shared run
    runs = [p for p in (tmp_path / "W" / "dp").iterdir() if p.name.startswith("syn-")]
    assert len(runs) == 1
    launch = json.loads((runs[0] / "study-run.json").read_text())["launches"][-1]
    assert launch["processes"] == 2 and "torch.distributed.run" in launch["command"]
    log = (runs[0] / "study.log").read_text()
    assert "on pytorch (2 processes, torchrun)" in log
    assert (runs[0] / "metrics.json").is_file()
    assert (tmp_path / "R" / "dp" / "table.json").is_file()


# ----------------------------------------------------------------------------- MindSpore


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 3 MindSpore compilations on a shared 2-core machine
def test_msrun_two_processes_equal_one_distill(root, teacher_ckpt, tmp_path):
    """msrun 2 workers x batch 2 = 1 process x batch 4, MSA-AWMSE in GRAPH_MODE."""
    over = {
        "teacher": {"name": TEACHER, "checkpoint": str(teacher_ckpt)},
        "method": {"name": "msa_awmse", "stages": ["enc1"]},
        "schedule": {"epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0},
    }
    cfg = _config(tmp_path, root, "mindspore", **over)
    _run_ok(["distill", str(cfg), "--out", str(tmp_path / "one")], "mindspore", 1, tmp_path / "l1")
    two = tmp_path / "two"
    out = _run_ok(["distill", str(cfg), "--out", str(two)], "mindspore", 2, tmp_path / "l2")
    _assert_equivalent(tmp_path / "one", two)
    workers = [(tmp_path / "l2" / f"worker_{r}.log").read_text() for r in (0, 1)]
    assert "dp on mindspore (2 processes, msrun)" in workers[0]  # rank 0 alone says it
    assert "dp on mindspore" not in workers[1]
    assert (two / "metrics.json").is_file() and out


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_msrun_two_processes_equal_one_and_resume_exactly(root, tmp_path):
    """Training: msrun 2 workers x batch 2 = 1 process x batch 4 (BatchNorm frozen, equal up
    to the order of the sums), and the 2-worker run cut after epoch 1 and resumed equals the
    straight one bit for bit (weights and every logged loss). One test, so that the straight
    2-worker run serves both comparisons (each msrun launch is a graph compile per worker)."""
    over = {"schedule": {"epochs": 2, "steps_per_epoch": 2, "scheduler": "constant"}}
    cfg = _config(tmp_path, root, "mindspore", **over)
    one, straight = tmp_path / "one", tmp_path / "straight"
    _run_ok(["train", str(cfg), "--out", str(one)], "mindspore", 1, tmp_path / "l0")
    out = _run_ok(["train", str(cfg), "--out", str(straight)], "mindspore", 2, tmp_path / "l1")
    _assert_equivalent(one, straight)
    workers = [(tmp_path / "l1" / f"worker_{r}.log").read_text() for r in (0, 1)]
    assert "dp on mindspore (2 processes, msrun)" in workers[0] and out
    assert "dp on mindspore" not in workers[1]
    _assert_cut_and_resumed_equals(cfg, "mindspore", straight, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_msrun_failing_rank_stops_the_job(root, tmp_path):
    """msrun stops worker 1 once worker 0 has failed (about 50 s here: its polling)."""
    cfg = _config(tmp_path, root, "mindspore")
    busy = tmp_path / "someone-elses"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n")
    rc, out, wall = _cli(["train", str(cfg), "--out", str(busy)], "mindspore", 2, tmp_path / "l")
    assert rc != 0 and wall < 300
    assert "is not an irkd run folder" in out


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_msrun_rank_1_failing_mid_run_stops_rank_0(root, tmp_path):
    cfg = _config(tmp_path, root, "mindspore")
    run, logs = tmp_path / "run", tmp_path / "logs"
    cmd = [
        str(BIN / "msrun"),
        "--worker_num=2",
        "--local_worker_num=2",
        f"--master_port={_port()}",
        f"--log_dir={logs}",
        "--join=True",
        str(_fail_script(tmp_path, "mindspore")),
        "train",
        str(cfg),
        "--out",
        str(run),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=REPO, env=_env("mindspore"), capture_output=True, text=True, timeout=900
    )
    wall = time.monotonic() - t0
    worker1 = (logs / "worker_1.log").read_text(errors="replace")
    print(f"\nmsrun: rank 1 failed, job ended after {wall:.0f} s (rc {proc.returncode})")
    assert proc.returncode != 0 and wall < 600
    assert "irkd: error: injected failure on rank 1 at step 3" in worker1
    state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and not (run / "metrics.json").exists()
