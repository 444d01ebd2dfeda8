"""Issue 11, finding 12: result files follow the umask, like any file the user creates.

``tempfile.mkstemp`` creates 0o600 files (and MindSpore's checkpoint writer 0o400 ones);
every atomic writer (JSON/text results such as metrics.json, best.json and state.json, neutral
weights such as best.safetensors, PyTorch and MindSpore checkpoints) now gives the file
``0o666 & ~umask`` before moving it into place.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

import numpy as np
import pytest

from irkd.files import atomic_path, current_umask, file_mode, write_json_atomic, write_text_atomic
from irkd.weights import save_neutral


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_results_and_weights_follow_the_umask(tmp_path, mask):
    with umask(mask):
        assert current_umask() == mask and file_mode() == 0o666 & ~mask
        files = [
            write_json_atomic(tmp_path / "metrics.json", {"iou": 0.5}),
            write_json_atomic(tmp_path / "state.json", {"epoch": 1}),
            write_text_atomic(tmp_path / "table.md", "x\n"),
            save_neutral(tmp_path / "best.safetensors", {"a": np.zeros(2, np.float32)}),
        ]
        with atomic_path(tmp_path / "blob.bin") as tmp:
            tmp.write_bytes(b"x")
        files.append(tmp_path / "blob.bin")
        plain = tmp_path / "plain.txt"
        plain.write_text("a file created the ordinary way\n")
    for f in files:
        assert _mode(f) == _mode(plain) == 0o666 & ~mask, f


def test_an_explicit_mode_still_wins(tmp_path):
    with umask(0o022):
        p = write_text_atomic(tmp_path / "x.txt", "x", mode=0o600)
    assert _mode(p) == 0o600


def test_torch_and_mindspore_checkpoints_follow_the_umask(tmp_path):
    import mindspore as ms
    import torch

    import ms_impl  # noqa: F401
    from ms_impl.models import create_model as create_ms
    from ms_impl.optim import save_optimizer
    from ms_impl.weights import write_ckpt
    from torch_ref.models import create_model as create_torch
    from torch_ref.weights import net_to_neutral, write_pt

    arrays = net_to_neutral(create_torch("dnanet_xxs"))
    net = create_ms("dnanet_xxs")
    opt = ms.experimental.optim.AdamW(net.trainable_params(), lr=1e-3)
    with umask(0o022):
        write_pt(arrays, tmp_path / "w.pt")
        write_ckpt(arrays, tmp_path / "w.ckpt", net)
        save_optimizer(opt, tmp_path / "optimizer.ckpt")
    for name in ("w.pt", "w.ckpt", "optimizer.ckpt"):
        assert _mode(tmp_path / name) == 0o644, name
    assert torch.load(tmp_path / "w.pt", weights_only=True)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_folders_follow_the_umask_and_dot_leaves_nothing_behind(tmp_path, mask):
    from irkd.files import atomic_dir

    with umask(mask):
        with atomic_dir(tmp_path / "ckpt") as tmp:
            (tmp / "a.txt").write_text("x")
    assert _mode(tmp_path / "ckpt") == 0o777 & ~mask
    # "." resolves to a real folder name: the temporary sibling goes next to it, then away
    cwd = os.getcwd()
    (tmp_path / "here").mkdir()
    os.chdir(tmp_path / "here")
    try:
        with atomic_dir(".") as tmp:
            (tmp / "b.txt").write_text("y")
    finally:
        os.chdir(cwd)
    assert (tmp_path / "here" / "b.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "here"]
