"""Shared pytest fixtures: the real datasets and a small synthetic one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from irkd.data import synthesize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder holding NUDT-SIRST and NUAA-SIRST ($IRKD_DATA, else <repo>/../shared/data)."""
    env = os.environ.get("IRKD_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(
            f"dataset folder {path} not found: set IRKD_DATA to the folder holding "
            "NUDT-SIRST/ and NUAA-SIRST/ (default <repo>/../shared/data)",
            pytrace=False,
        )
    return path


def _dataset(shared_data: Path, name: str) -> Path:
    root = shared_data / name
    if not (root / "images").is_dir():
        pytest.fail(f"dataset {root} not found (expected {root}/images)", pytrace=False)
    return root


@pytest.fixture(scope="session")
def nudt_root(shared_data: Path) -> Path:
    """NUDT-SIRST root (read-only)."""
    return _dataset(shared_data, "NUDT-SIRST")


@pytest.fixture(scope="session")
def nuaa_root(shared_data: Path) -> Path:
    """NUAA-SIRST root (read-only)."""
    return _dataset(shared_data, "NUAA-SIRST")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-image synthetic dataset (seed 0); do not modify it, copy it (see copy_dataset)."""
    return synthesize(tmp_path_factory.mktemp("synth") / "SYNTH", 24, seed=0)


@pytest.fixture
def copy_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Copy some ids of a dataset (irkd layout) into a fresh writable folder.

    Call as ``copy_dataset(src, train_ids, test_ids, name="DS")``; returns the new root.
    """

    def copy(src: Path, train: Iterable[str], test: Iterable[str], name: str = "DS") -> Path:
        dst = tmp_path / name
        train, test = list(train), list(test)
        for sub in ("images", "masks"):
            (dst / sub).mkdir(parents=True)
            for id_ in train + test:
                shutil.copy2(src / sub / f"{id_}.png", dst / sub / f"{id_}.png")
        (dst / "train.txt").write_text("".join(f"{i}\n" for i in train))
        (dst / "test.txt").write_text("".join(f"{i}\n" for i in test))
        return dst

    return copy
