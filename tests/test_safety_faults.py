"""Issue 11, fault injection: training, distillation and a release killed at chosen points
(every file-system step counts, checkpoint writes included) and started again.

Each later start either finishes with the result of an uninterrupted run or refuses with
one line, and no file outside the run or release folder changes. A kill is
``os._exit(137)`` at the k-th ``os.replace/rename/fsync/unlink`` or ``shutil.rmtree``
(tests/faults.py): exactly what SIGKILL leaves, at a reproducible point.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from irkd.data import synthesize

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
    "IRKD_TORCH_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}

_TRAIN = """
import sys
import faults
faults.arm(int(sys.argv[1]), sys.argv[2])
from irkd.config import load_config
from irkd.engine import run_training
cfg = load_config(sys.argv[3])
out = sys.argv[4]
if sys.argv[5] == "numpy":
    from test_engine import NumpyTrainer
    make = lambda: NumpyTrainer(cfg)
    def go(resume):
        return run_training(cfg, out, make, quiet=True, resume=resume, cache_dir=sys.argv[6])
else:
    from torch_ref.train import run as torch_run
    def go(resume):
        return torch_run(cfg, out, resume=resume, cache_dir=sys.argv[6], quiet=True)
try:
    try:
        go(resume=True)
    except FileNotFoundError as exc:  # no checkpoint yet: a user's next step is a fresh run
        if "no checkpoint to resume from" not in str(exc):
            raise
        go(resume=False)
except (ValueError, OSError) as exc:  # what the CLI prints as one line
    print(f"irkd: error: {exc}", file=sys.stderr)
    raise SystemExit(1)
"""

_RELEASE = """
import sys
import faults
faults.arm(int(sys.argv[1]), sys.argv[2])
from test_safety_release import _backend
from irkd.release import build_release
t, s, report, out = sys.argv[3:7]
try:
    build_release(t, s, out, report=report, backends=[_backend()], overwrite=True)
except (FileExistsError, ValueError) as exc:
    print(f"refused: {exc}")
    raise SystemExit(1)
"""


def _child(script: str, k: int, counter: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, str(k), str(counter), *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=600,
    )


def _digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.parts and rel.parts[0].startswith(skip):
            continue
        out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _result(run: Path) -> dict:
    """What an uninterrupted run produces: weights bytes and test figures."""
    m = json.loads((run / "metrics.json").read_text())
    return {
        "best": hashlib.sha256((run / "best.safetensors").read_bytes()).hexdigest(),
        "last": hashlib.sha256((run / "last.safetensors").read_bytes()).hexdigest(),
        "metrics": m["metrics"],
        "best_epoch": m["best_epoch"],
        "last_metrics": m["last"],
        "roc": m["roc"],
    }


def _points(total: int, n: int) -> list[int]:
    """``n`` kill points spread over ``1..total`` (all of them when ``n >= total``)."""
    if n >= total:
        return list(range(1, total + 1))
    return sorted({1 + round(i * (total - 1) / (n - 1)) for i in range(n)})


def _training_faults(tmp_path: Path, backend: str, yaml_text: str, n_points: int) -> None:
    data = synthesize(tmp_path / "data", 16, seed=0, size=64)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text.format(root=data))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file\n")
    cache = tmp_path / "cache"
    counter = tmp_path / "count"
    ref = _child(_TRAIN, 0, counter, cfg, tmp_path / "ref", backend, cache)
    assert ref.returncode == 0, ref.stderr
    total = int(counter.read_text())
    expected = _result(tmp_path / "ref")
    outside = _digest(tmp_path, skip=("run", ".run", "count"))
    for k in _points(total, n_points):
        run = tmp_path / "run"
        killed = _child(_TRAIN, k, counter, cfg, run, backend, cache)
        assert killed.returncode == 137, (k, killed.stderr[-2000:])
        again = _child(_TRAIN, 0, counter, cfg, run, backend, cache)
        if again.returncode == 0:
            assert _result(run) == expected, f"kill at step {k} of {total}"
        else:  # a refusal must be one line, never a traceback
            lines = again.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in again.stderr, (k, again.stderr)
        assert _digest(tmp_path, skip=("run", ".run", "count")) == outside, k
        shutil.rmtree(run)


_NUMPY_CFG = """
name: np
data: {{root: {root}, crop: 32, batch_size: 2, val_fraction: 0.25}}
schedule: {{epochs: 3, steps_per_epoch: 2, warmup_epochs: 0}}
train: {{log_every: 1, keep_last: 2}}
"""

_DISTILL_CFG = """
name: kd
seed: 1
data: {{root: {root}, crop: 32, batch_size: 2, val_fraction: 0.25}}
model: {{name: dnanet_xxs}}
teacher: {{name: unet_s, checkpoint: null}}
method: {{name: msa_awmse, stages: [dec0]}}
schedule: {{epochs: 2, steps_per_epoch: 2, warmup_epochs: 0}}
train: {{log_every: 1, keep_last: 2, ema: 0.5}}
"""


def test_training_killed_anywhere_resumes_to_the_same_result(tmp_path):
    """Five kill points spread over a whole run (the slow test below takes every one)."""
    _training_faults(tmp_path, "numpy", _NUMPY_CFG, 5)


@pytest.mark.slow
def test_training_killed_at_every_step_resumes_to_the_same_result(tmp_path):
    _training_faults(tmp_path, "numpy", _NUMPY_CFG, 10_000)


@pytest.mark.slow
def test_distillation_killed_anywhere_resumes_to_the_same_result(tmp_path):
    """The PyTorch backend, a real teacher and MSA-AWMSE with a weight average."""
    import torch

    from torch_ref.models import create_model
    from torch_ref.weights import save_neutral_net

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_neutral_net(create_model("unet_s"), teacher, name="unet_s", metadata={})
    text = _DISTILL_CFG.replace("checkpoint: null", f"checkpoint: {teacher}")
    _training_faults(tmp_path, "torch", text, 6)


@pytest.mark.parametrize("n_points", [5, pytest.param(10_000, marks=pytest.mark.slow)])
def test_a_release_killed_anywhere_keeps_a_whole_release(tmp_path, n_points):
    """A re-release with --overwrite killed at any step leaves the old release or the new
    one, whole; the next start completes it; the inputs never change."""
    from parity_reports import complete_report, write_report
    from test_safety_release import _weights

    inputs = tmp_path / "in"
    t = _weights(inputs / "t.safetensors", "dnanet", 1.0)
    s = _weights(inputs / "s.safetensors", "dnanet_xs", 2.0)
    report = write_report(inputs / "parity.json", complete_report([t, s]))
    counter = tmp_path / "count"
    out = tmp_path / "rel"
    ref = _child(_RELEASE, 0, counter, t, s, report, out)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    total = int(counter.read_text())
    complete = _digest(out, skip=("manifest.json",))
    before = _digest(inputs)
    for k in _points(total, n_points):
        killed = _child(_RELEASE, k, counter, t, s, report, out)
        assert killed.returncode == 137, (k, killed.stdout, killed.stderr[-2000:])
        # what a kill leaves: the old release whole, or the new one whole; never a mix
        assert (out / "manifest.json").is_file(), k
        assert _digest(out, skip=("manifest.json",)) == complete, k
        again = _child(_RELEASE, 0, counter, t, s, report, out)
        assert again.returncode == 0, (k, again.stdout, again.stderr[-2000:])
        assert _digest(out, skip=("manifest.json",)) == complete, k
        assert _digest(inputs) == before, k
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".rel")]
        assert not leftovers, (k, leftovers)
