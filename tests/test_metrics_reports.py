"""irkd.reports: atomic JSON, ROC plot, one-line summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from irkd.files import write_json_atomic
from irkd.metrics import IRSTDMetrics
from irkd.reports import format_metrics, plot_roc, to_jsonable


def test_write_json_atomic_converts_values_and_leaves_no_temp(tmp_path: Path) -> None:
    obj = {
        "nan": float("nan"),
        "inf": -math.inf,
        "np_nan": np.float32("nan"),
        "f32": np.float32(0.25),
        "i64": np.int64(7),
        "bool": np.bool_(True),
        "arr": np.array([[1, 2], [3, 4]], dtype=np.uint8),
        "farr": np.array([0.5, np.nan]),
        "tuple": (1, np.float64(2.5)),
        "path": tmp_path / "x",
        3: "int key",
        "nested": [{"a": np.int32(1)}],
    }
    out = tmp_path / "sub" / "metrics.json"
    assert write_json_atomic(out, obj) == out
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["nan"] is None and data["inf"] is None and data["np_nan"] is None
    assert data["f32"] == 0.25 and data["i64"] == 7 and data["bool"] is True
    assert data["arr"] == [[1, 2], [3, 4]] and data["farr"] == [0.5, None]
    assert data["tuple"] == [1, 2.5] and data["path"] == str(tmp_path / "x")
    assert data["3"] == "int key" and data["nested"] == [{"a": 1}]
    # overwrite in place; only the final file remains in the folder
    write_json_atomic(out, {"v": 2})
    assert json.loads(out.read_text()) == {"v": 2}
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json"]


def test_write_json_atomic_failure_keeps_old_file(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    write_json_atomic(out, {"ok": 1})
    with pytest.raises(TypeError, match="no JSON form"):
        write_json_atomic(out, {"bad": object()})
    assert json.loads(out.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    with pytest.raises(TypeError):
        to_jsonable({1j})


def _roc() -> dict:
    rng = np.random.default_rng(0)
    gt = np.zeros((3, 32, 32), np.uint8)
    gt[:, 10:13, 10:13] = 1
    prob = np.clip(gt * 0.6 + rng.random(gt.shape) * 0.5, 0, 1)
    m = IRSTDMetrics()
    m.update(prob, gt)
    return m.roc()


@pytest.mark.parametrize("log_x", [False, True])
def test_plot_roc_writes_png(tmp_path: Path, log_x: bool) -> None:
    roc = _roc()
    other = {"pd": [0.0, 0.5, float("nan"), 1.0], "fa": [0.0, 1e-5, 2e-5, 1e-4]}  # fa only
    out = plot_roc(
        {"student": roc, "teacher": other}, tmp_path / "plots" / "roc.png", title="t", log_x=log_x
    )
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_roc_rejects_bad_curves(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs 'pd'"):
        plot_roc({"x": {"pd": [1.0]}}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="lengths differ"):
        plot_roc({"x": {"pd": [1.0], "fa_1e6": [1.0, 2.0]}}, tmp_path / "b.png")


def test_format_metrics() -> None:
    line = format_metrics(
        {"iou": 0.75123, "niou": 0.748, "pd": 0.9541, "fa_1e6": 12.345, "n_images": 214,
         "n_targets": 240}
    )  # fmt: skip
    assert line == "IoU 75.12% | nIoU 74.80% | Pd 95.41% | Fa 12.35e-6 | 214 images, 240 targets"
    line = format_metrics({"iou": float("nan"), "niou": None, "pd": 1.0, "fa": 2e-6})
    assert line == "IoU nan% | nIoU nan% | Pd 100.00% | Fa 2.00e-6"
