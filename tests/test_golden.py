"""Behaviour unchanged: a tiny PyTorch train and distillation reproduce the committed golden
record (tests/golden.py; captured before issue 12's split of the engine and the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from golden import RECORD, record

# float32 round-off of six AdamW steps on another CPU kind; far below any behaviour change
RTOL, ATOL = 1e-4, 1e-6


def _close(a, b, where):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=where)
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def now(tmp_path_factory):
    return record(tmp_path_factory.mktemp("golden"))


def test_the_tiny_runs_reproduce_the_golden_record(now):
    gold = json.loads(RECORD.read_text())
    for name in ("teacher", "kd"):
        g, n = gold["runs"][name], now["runs"][name]
        _close(g["records"], n["records"], f"{name}.records")
        _close(g["metrics"], n["metrics"], f"{name}.metrics")
        for which in ("best", "last"):
            _close(g[which]["tensors"], n[which]["tensors"], f"{name}.{which}")
            if gold["cpu"] == now["cpu"] and gold["torch"] == now["torch"]:
                assert g[which]["sha256"] == n[which]["sha256"], f"{name}.{which} bytes"


def test_the_comparison_can_fail(now):
    """A deliberately moved copy of the record does not pass."""
    moved = json.loads(json.dumps(now))
    rec = next(r for r in moved["runs"]["kd"]["records"] if r.get("kind") == "train")
    rec["loss"] *= 1 + 10 * RTOL
    with pytest.raises(AssertionError):
        _close(now["runs"]["kd"]["records"], moved["runs"]["kd"]["records"], "kd")
