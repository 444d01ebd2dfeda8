"""Issue 11, findings 1, 3 and 5: nothing a user owns is lost around run folders.

1. ``--out`` accepts only a new or empty folder, or a run folder (``.irkd-run`` marker, a
   study's ``.irkd-study-run``, or an older run folder with ``config.yaml`` and
   ``checkpoints/last/state.json``) of the same config; anything else is refused with one
   line before anything is written or deleted.
3. One writer per run folder: ``run_training`` holds an exclusive ``flock`` for the whole
   run; a second process is refused with the folder and the holder's pid.
5. A fresh run after a run that died before its first checkpoint starts ``log.jsonl`` anew;
   ``irkd weights convert`` refuses an existing destination without ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_engine import NumpyTrainer

from irkd.config import config_from_dict, save_config
from irkd.data import synthesize
from irkd.engine import run_training
from irkd.rundir import LOCK_NAME, RUN_MARKER, RunDir, RunFolderError, run_folder_lock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("rundir") / "S", 16, seed=0, size=64)


def _cfg(root, **over):
    d = {
        "name": "np",
        "data": {"root": str(root), "crop": 32, "batch_size": 2, "val_fraction": 0.25},
        "schedule": {"epochs": 2, "steps_per_epoch": 2, "warmup_epochs": 0},
        "train": {"log_every": 1, "keep_last": 2},
    }
    d.update(over)
    return config_from_dict(d)


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _user_folder(tmp_path: Path) -> Path:
    """A folder of the user's own files with the names a run folder uses."""
    mine = tmp_path / "mine"
    (mine / "checkpoints" / "epoch_0001").mkdir(parents=True)
    (mine / "checkpoints" / "epoch_0001" / "weights.bin").write_bytes(b"precious")
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "metrics.json").write_text('{"iou": 0.99}\n')
    (mine / "log.jsonl").write_text('{"note": "my lab notes"}\n')
    (mine / "thesis.tex").write_text("\\chapter{Results}\n")
    return mine


# ----------------------------------------------------------------------------- finding 1


def test_out_refuses_a_folder_of_user_files_before_touching_it(small_root, tmp_path):
    cfg = _cfg(small_root)
    mine = _user_folder(tmp_path)
    before = _snapshot(mine)
    for resume in (False, True):
        with pytest.raises(RunFolderError, match="not an irkd run folder") as err:
            run_training(cfg, mine, lambda: NumpyTrainer(cfg), quiet=True, resume=resume)
        assert "\n" not in str(err.value) and str(mine) in str(err.value)
        assert _snapshot(mine) == before  # nothing written, nothing deleted
    # a file, not a folder
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(RunFolderError, match="not a folder"):
        run_training(cfg, f, lambda: NumpyTrainer(cfg), quiet=True)
    assert f.read_text() == "x"


def test_cli_refuses_a_user_folder_with_one_line(small_root, tmp_path, capsys):
    from irkd.cli import main

    cfg_path = tmp_path / "cfg.yaml"
    save_config(_cfg(small_root, backend="pytorch"), cfg_path)
    mine = _user_folder(tmp_path)
    before = _snapshot(mine)
    assert main(["train", str(cfg_path), "--out", str(mine)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("irkd: error:") and "\n" not in err and "not an irkd run folder" in err
    assert _snapshot(mine) == before


def test_out_accepts_new_empty_study_and_own_run_folders(small_root, tmp_path):
    cfg = _cfg(small_root)
    new = tmp_path / "a" / "b"
    run_training(cfg, new, lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    assert (new / RUN_MARKER).is_file()
    # its own run folder: resumes; a second fresh start is refused (FileExistsError)
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(cfg, new, lambda: NumpyTrainer(cfg), quiet=True)
    assert run_training(cfg, new, lambda: NumpyTrainer(cfg), quiet=True, resume=True)["metrics"]
    empty = tmp_path / "empty"
    empty.mkdir()
    run_training(cfg, empty, lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    assert (empty / RUN_MARKER).is_file()
    # a folder `irkd study` made: its marker and its own files, then `irkd train --out`
    study = tmp_path / "study-run"
    study.mkdir()
    (study / ".irkd-study-run").touch()
    (study / "study-run.json").write_text("{}\n")
    (study / "study.log").write_text("child output\n")
    run_training(cfg, study, lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    run_training(cfg, study, lambda: NumpyTrainer(cfg), quiet=True, resume=True)
    assert (study / "metrics.json").is_file()


def test_study_marker_name_matches_the_engine():
    from irkd.rundir import STUDY_MARKER
    from irkd.study.results import MARKER

    assert STUDY_MARKER == MARKER


def test_a_run_folder_of_an_older_version_still_resumes(small_root, tmp_path):
    cfg = _cfg(small_root)
    old = tmp_path / "old"
    run_training(cfg, old, lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    (old / RUN_MARKER).unlink()  # made before run folders had a marker
    (old / LOCK_NAME).unlink()
    res = run_training(cfg, old, lambda: NumpyTrainer(cfg), quiet=True, resume=True)
    assert res["state"]["epoch"] == 2 and (old / RUN_MARKER).is_file()


def test_a_run_folder_of_another_config_is_refused(small_root, tmp_path):
    cfg = _cfg(small_root)
    run = tmp_path / "r"

    class Dies(NumpyTrainer):
        def step(self, *a, **k):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # died before its first checkpoint
        run_training(cfg, run, lambda: Dies(cfg), quiet=True)
    other = _cfg(small_root, seed=7)
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match="another config.*seed"):
        run_training(other, run, lambda: NumpyTrainer(other), quiet=True)
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- finding 3

_HOLD = """
import sys
from irkd.rundir import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def _holder(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert p.stdout.readline().strip() == "locked"
    return p


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_one_writer_per_run_folder(small_root, tmp_path):
    cfg = _cfg(small_root)
    run = tmp_path / "r"
    run.mkdir()
    holder = _holder(run)
    try:
        with pytest.raises(RunFolderError, match=rf"in use.*pid {holder.pid}") as err:
            run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True)
        assert str(run) in str(err.value) and "\n" not in str(err.value)
        assert not (run / "log.jsonl").exists() and not (run / "config.yaml").exists()
    finally:
        holder.stdin.close()
        holder.wait(30)
    # released on exit: the run goes ahead
    run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    # a holder that dies (SIGKILL) leaves no stale lock behind
    holder = _holder(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True, resume=True)


def test_the_lock_is_held_for_the_whole_run(small_root, tmp_path):
    cfg = _cfg(small_root)
    run = tmp_path / "r"
    seen = []

    class Nested(NumpyTrainer):
        def step(self, images, masks, step, lr, **k):
            if step == 0:  # a second writer while the run is in progress
                with pytest.raises(RunFolderError, match=rf"pid {os.getpid()}"):
                    with run_folder_lock(run):
                        pass
                seen.append(step)
            return super().step(images, masks, step, lr, **k)

    run_training(cfg, run, lambda: Nested(cfg), quiet=True)
    assert seen == [0]
    with run_folder_lock(run):  # and released afterwards
        pass


# ----------------------------------------------------------------------------- finding 5


def test_a_fresh_run_after_one_that_died_early_starts_its_log_anew(small_root, tmp_path):
    cfg = _cfg(small_root)
    run = tmp_path / "r"

    class Dies(NumpyTrainer):
        def step(self, images, masks, step, lr, **k):
            if step == 1:
                raise KeyboardInterrupt
            return super().step(images, masks, step, lr, **k)

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, run, lambda: Dies(cfg), quiet=True)
    dead = RunDir(run).records()
    assert [r["kind"] for r in dead] == ["start", "train"] and not RunDir(run).has_checkpoint()
    run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True)
    kinds = [r["kind"] for r in RunDir(run).records()]
    assert kinds == ["start"] + ["train", "train", "epoch", "val"] * 2


def test_weights_convert_refuses_an_existing_destination(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    import torch_ref.models as tmodels
    from irkd.cli import main

    model = tmodels.create_model("dnanet_xxs")
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "w.pt")
    dst = tmp_path / "w.safetensors"
    dst.write_bytes(b"the user's own file")
    args = ["weights", "convert", str(tmp_path / "w.pt"), str(dst), "--network", "dnanet_xxs"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and str(dst) in err and "\n" not in err
    assert dst.read_bytes() == b"the user's own file"
    assert main([*args, "--overwrite"]) == 0
    from irkd.weights import load_neutral

    arrays, _ = load_neutral(dst)
    assert set(arrays) == set(sd)
    for k, v in sd.items():
        assert np.array_equal(arrays[k], v.numpy()), k
