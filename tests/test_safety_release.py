"""Issue 11, finding 2 (and 12 for the folders): ``--overwrite`` replaces only an earlier
export/release of this tool, never a user's folder, never a folder holding the inputs, and
``--out .`` leaves nothing behind.

Fake backends (as in tests/test_release_core.py): the test is about the files, not the
frameworks.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from parity_reports import complete_report, write_report

from irkd.release import MARKER, ReleaseBackend, build_release, export_model
from irkd.weights import save_neutral, sha256_file


def _weights(path, network, value):
    meta = {"mean": 100.0, "std": 20.0, "eval_multiple": 32, "kwargs": {}, "data_root": "d"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_neutral(path, {"a": np.full((3,), value, np.float32)}, network=network, metadata=meta)
    return path


def _backend():
    def export(info, out_dir, spec):
        f = out_dir / f"{info.network}.bin"
        f.write_bytes(b"x" * 64)
        return {"artifacts": {"model": f}, "checks": {}, "commands": {}}

    return ReleaseBackend("fake", export, None, lambda: {})


@pytest.fixture
def run(tmp_path):
    """A training run folder of the user's, holding the weights being exported."""
    root = tmp_path / "runs" / "student"
    w = _weights(root / "best.safetensors", "dnanet_xxs", 1.0)
    (root / "config.yaml").write_text("name: mine\n")
    (root / "metrics.json").write_text("{}\n")
    report = write_report(tmp_path / "parity.json", complete_report([w]))
    return root, w, report


def _export(w, out, report, **kw):
    return export_model(w, out, report=report, backends=[_backend()], overwrite=True, **kw)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_refuses_a_run_folder_holding_the_weights(tmp_path, run):
    root, w, report = run
    before = _snapshot(root)
    with pytest.raises(FileExistsError, match="holds the input"):
        _export(w, root, report)
    with pytest.raises(FileExistsError, match="holds the input"):
        _export(w, root.parent, report)  # a parent of the weights
    assert _snapshot(root) == before and sha256_file(w) == sha256_file(root / "best.safetensors")


def test_overwrite_refuses_a_folder_that_is_not_an_earlier_export(tmp_path, run):
    _, w, report = run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    with pytest.raises(FileExistsError, match=f"not an earlier export \\(no {MARKER}"):
        _export(w, mine, report)
    assert (mine / "notes.txt").read_text() == "my notes\n"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        _export(w, afile, report)
    with pytest.raises(FileExistsError, match="holds the input"):
        _export(w, tmp_path, report)  # holds the parity report


def test_overwrite_replaces_an_earlier_export_and_only_that(tmp_path, run):
    _, w, report = run
    out = tmp_path / "exp"
    _export(w, out, report)
    marker = (out / MARKER).read_text()
    assert '"irkd-export"' in marker and "fake/dnanet_xxs.bin" in marker
    _export(w, out, report)  # an earlier export: replaced
    (out / "mine.txt").write_text("added by the user\n")
    with pytest.raises(FileExistsError, match="did not write \\(mine.txt\\)"):
        _export(w, out, report)
    assert (out / "mine.txt").is_file()
    with pytest.raises(FileExistsError, match="not an release|holds an export output"):
        build_release(w, w, out, report=report, backends=[_backend()], overwrite=True)


def test_release_overwrite_follows_the_same_rules(tmp_path):
    t = _weights(tmp_path / "in" / "t.safetensors", "dnanet", 1.0)
    s = _weights(tmp_path / "in" / "s.safetensors", "dnanet_xs", 2.0)
    report = write_report(tmp_path / "in" / "parity.json", complete_report([t, s]))
    out = tmp_path / "rel"

    def release(target):
        return build_release(t, s, target, report=report, backends=[_backend()], overwrite=True)

    release(out)
    release(out)
    assert (out / MARKER).is_file() and (out / "weights" / "student.safetensors").is_file()
    with pytest.raises(FileExistsError, match="holds the input"):
        release(tmp_path / "in")
    with pytest.raises(FileExistsError, match="holds the input"):
        release(tmp_path / "in" / "sub" / "..")  # the inputs' folder, spelled oddly
    # a release made from its own copy of the weights cannot replace itself
    copy = out / "weights" / "student.safetensors"
    with pytest.raises(FileExistsError, match="holds the input"):
        build_release(t, copy, out, report=report, backends=[_backend()], overwrite=True)


def test_out_dot_is_refused_and_leaves_no_temporary_folder(tmp_path, run, monkeypatch):
    _, w, report = run
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(FileExistsError, match="current folder"):
        _export(w, ".", report)
    # even an earlier export is never replaced while it is the current folder
    out = tmp_path / "exp"
    _export(w, out, report)
    monkeypatch.chdir(out)
    with pytest.raises(FileExistsError, match="current folder"):
        _export(w, ".", report)
    leftovers = [p.name for p in (*here.iterdir(), *out.iterdir(), *tmp_path.iterdir())]
    assert not [n for n in leftovers if ".tmp-" in n or ".old-" in n], leftovers


def test_export_folders_and_files_follow_the_umask(tmp_path, run):
    _, w, report = run
    old = os.umask(0o022)
    try:
        out = tmp_path / "exp"
        _export(w, out, report)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for p in out.rglob("*"):
        want = 0o755 if p.is_dir() else 0o644
        assert stat.S_IMODE(p.stat().st_mode) == want, p
