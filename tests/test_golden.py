"""Behaviour unchanged: a tiny PyTorch train and distillation reproduce the committed golden
record (tests/golden.py; captured before issue 12's split of the engine and the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from golden import RECORD, record_clean

# Another CPU kind: other kernels and summation orders, amplified by AdamW (an element whose
# gradient is round-off moves by up to lr either way); far below any behaviour change, such
# as a wrong learning rate, loss weight or layer (percent-level and up).
RTOL, ATOL = 2e-2, 1e-4


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
    return record_clean(tmp_path_factory.mktemp("golden"))


def test_the_tiny_runs_reproduce_the_golden_record(now):
    gold = json.loads(RECORD.read_text())
    same_cpu = gold["cpu"] == now["cpu"] and gold["torch"] == now["torch"]
    for name in ("teacher", "kd"):
        g, n = gold["runs"][name], now["runs"][name]
        if same_cpu:  # bit-reproducible here: the exact check
            assert g == n, f"{name}: not bit-identical on the same CPU kind"
            continue
        _close(g["records"], n["records"], f"{name}.records")
        _close(g["metrics"], n["metrics"], f"{name}.metrics")
        for which in ("best", "last"):
            _close(g[which]["tensors"], n[which]["tensors"], f"{name}.{which}")


def test_the_comparison_can_fail(now):
    """A deliberately moved copy of the record does not pass."""
    moved = json.loads(json.dumps(now))
    rec = next(r for r in moved["runs"]["kd"]["records"] if r.get("kind") == "train")
    rec["loss"] *= 1 + 3 * RTOL
    with pytest.raises(AssertionError):
        _close(now["runs"]["kd"]["records"], moved["runs"]["kd"]["records"], "kd")
