"""The golden record of a tiny PyTorch run (issue 12: behaviour unchanged across refactors).

A one-thread train of ``dnanet_xs`` and an MSA-AWMSE distillation of ``dnanet_xxs`` from it,
on 16 synthetic 64x64 images, 2 epochs of 3 steps, with a weight average. The record holds
the log records (timings dropped), the test metrics of best and last, and per tensor of
the saved weights its sum, absolute sum and the sha256 of its tensors' bytes.

    python tests/golden.py --write     # capture (only when a change is meant to move it)

``tests/test_golden.py`` runs the same (in a fresh process, :func:`record_clean`) and
compares: the weights' sha256 exactly when the record was captured on a CPU of the same kind
(same model and ISA flags: the runs are then bit-reproducible), else every figure within a
tolerance that covers another CPU's kernels and float32 summation order.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RECORD = HERE / "golden" / "tiny_torch_run.json"
TIMING = {"images_per_s", "train_s", "threads", "wall_s", "device"}


def _cpu() -> str:
    """What decides float32 round-off here: machine, processor model and ISA flags."""
    info = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        info = (
            model.split(":", 1)[-1].strip()
            + " flags "
            + hashlib.sha256(flags.encode()).hexdigest()[:12]
        )
    except OSError:
        pass
    return f"{platform.machine()} {info}".strip()


def _records(run: Path) -> list[dict[str, Any]]:
    from irkd.runlog import read_jsonl

    out = []
    for r in read_jsonl(run / "log.jsonl"):
        r = {k: v for k, v in r.items() if k not in TIMING}
        if r.get("kind") == "start":
            r["data"] = {k: v for k, v in r["data"].items() if k != "root"}
        out.append(r)
    return out


def _weights(path: Path) -> dict[str, Any]:
    from irkd.weights import load_neutral

    tensors = load_neutral(path)[0]
    digest = hashlib.sha256()
    for k, v in sorted(tensors.items()):  # the tensors' bytes: the metadata names tmp paths
        digest.update(k.encode() + np.ascontiguousarray(v).tobytes())
    return {
        "sha256": digest.hexdigest(),
        "tensors": {
            k: [float(np.sum(v, dtype=np.float64)), float(np.sum(np.abs(v), dtype=np.float64))]
            for k, v in sorted(tensors.items())
        },
    }


def _metrics(run: Path) -> dict[str, Any]:
    m = json.loads((run / "metrics.json").read_text())
    keep = ("iou", "niou", "pd", "fa", "n_images", "n_targets")
    return {
        "best_epoch": m["best_epoch"],
        "best": {k: m[k] for k in keep},
        "last": {k: m["last"][k] for k in keep},
        "roc": m["roc"],  # threshold-free: moves even while IoU at 0.5 is still 0
    }


def record(work: Path) -> dict[str, Any]:
    """Run the two tiny runs in ``work`` and return their record."""
    import torch

    from irkd.config import config_from_dict
    from irkd.data import synthesize
    from torch_ref.train import run

    os.environ["IRKD_TORCH_THREADS"] = "1"
    torch.set_num_threads(1)
    root = synthesize(work / "S", 16, seed=0, size=64, test_fraction=0.25)
    base = {
        "seed": 0,
        "data": {"root": str(root), "crop": 32, "batch_size": 2, "val_fraction": 0.25},
        "optim": {"name": "adamw", "lr": 2e-3},
        "schedule": {"epochs": 2, "steps_per_epoch": 3, "warmup_epochs": 1},
        "train": {"log_every": 1, "ema": 0.5},
    }
    teacher_cfg = config_from_dict(
        {**base, "name": "golden-teacher", "model": {"name": "dnanet_xs"}}
    )
    run(teacher_cfg, work / "teacher", quiet=True, cache_dir=work / "cache")
    kd_cfg = config_from_dict(
        {
            **base,
            "name": "golden-kd",
            "model": {"name": "dnanet_xxs"},
            "teacher": {
                "name": "dnanet_xs",
                "checkpoint": str(work / "teacher" / "best.safetensors"),
            },
            "method": {"name": "msa_awmse", "stages": ["dec0"], "msa": {"border": 3}},
        }
    )
    run(kd_cfg, work / "kd", quiet=True, cache_dir=work / "cache")
    out: dict[str, Any] = {"cpu": _cpu(), "torch": torch.__version__, "runs": {}}
    for name in ("teacher", "kd"):
        folder = work / name
        out["runs"][name] = {
            "records": _records(folder),
            "metrics": _metrics(folder),
            "best": _weights(folder / "best.safetensors"),
            "last": _weights(folder / "last.safetensors"),
        }
    return out


def record_clean(work: Path) -> dict[str, Any]:
    """:func:`record` in a fresh process with a fixed environment.

    Float results depend on the process: the oneDNN ISA that MindSpore's import pins
    (``ONEDNN_MAX_CPU_ISA``) also changes PyTorch's kernels, and thread counts change sums.
    A test process has imported whatever earlier tests imported; a fresh one has not.
    """
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONEDNN_", "OMP_", "MKL"))}
    env.update(IRKD_TORCH_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    out = work / "record.json"
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--record", str(work), str(out)],
        check=True,
        env=env,
        cwd=HERE.parent,
        capture_output=True,
        timeout=900,
    )
    return json.loads(out.read_text())


if __name__ == "__main__":  # pragma: no cover
    import tempfile

    sys.path.insert(0, str(HERE.parent))
    if sys.argv[1:2] == ["--record"]:
        Path(sys.argv[3]).write_text(json.dumps(record(Path(sys.argv[2]))))
    elif sys.argv[1:] == ["--write"]:
        with tempfile.TemporaryDirectory() as tmp:
            rec = record_clean(Path(tmp))
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"wrote {RECORD}")
    else:
        raise SystemExit("usage: python tests/golden.py --write")
