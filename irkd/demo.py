"""The main job: teacher, student alone and MSA-AWMSE student on the built-in synthetic data.

Three runs from one config (``configs/demo.yaml`` by default): the teacher trained alone,
the student trained alone, and the student distilled from the teacher's best checkpoint.
The test-split metrics of the three are printed side by side and written to
``<out>/summary.json``. Framework-free: the backend is reached through the ``runner``
callable the CLI passes in.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from irkd.config import ExperimentConfig, MethodConfig, NetConfig, apply_overrides, load_config
from irkd.files import write_json_atomic

__all__ = ["DEFAULT_CONFIG", "plan_demo", "run_demo", "format_summary"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

Runner = Callable[[ExperimentConfig, Path], dict[str, Any]]


def plan_demo(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """The three runs of the demo, in order: teacher, student alone, distilled student.

    The distilled run's teacher checkpoint is filled in by :func:`run_demo` once the teacher
    has trained.
    """
    if cfg.teacher is None:
        raise ValueError("the demo config needs a teacher section (teacher.name)")
    # The data, optim, schedule and train sections are shared by the three runs.
    teacher = dataclasses.replace(
        cfg,
        name=f"{cfg.name}-teacher",
        model=NetConfig(name=cfg.teacher.name, kwargs=dict(cfg.teacher.kwargs)),
        teacher=None,
        method=MethodConfig(name="none"),
    )
    alone = dataclasses.replace(
        cfg, name=f"{cfg.name}-student-alone", teacher=None, method=MethodConfig(name="none")
    )
    distilled = dataclasses.replace(
        cfg,
        name=f"{cfg.name}-student-{cfg.method.name}",
        teacher=NetConfig(cfg.teacher.name, dict(cfg.teacher.kwargs)),
    )
    return [
        ("teacher", teacher),
        ("student alone", alone),
        (f"student + {cfg.method.name}", distilled),
    ]


def run_demo(
    runner: Runner,
    out: str | Path,
    *,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the three demo runs with ``runner`` and return (and write) the summary.

    Args:
        runner: ``runner(cfg, run_dir) -> result`` trains one config on its backend and
            returns the backend's result dict: ``"metrics"`` holds the test-split metrics
            and ``run_dir/best.safetensors`` is the best student.
        out: Folder holding the three run folders and ``summary.json``.
        config: Demo config (default ``configs/demo.yaml``).
        overrides: ``key.sub=value`` overrides applied to the demo config.
    """
    cfg = load_config(config or DEFAULT_CONFIG, list(overrides))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    teacher_best: Path | None = None
    for label, run_cfg in plan_demo(cfg):
        if run_cfg.teacher is not None:
            assert teacher_best is not None
            run_cfg = apply_overrides(run_cfg, [f"teacher.checkpoint={teacher_best}"])
        run_dir = out / run_cfg.name
        print(f"\n=== {label}: {run_cfg.model.name} ({run_cfg.backend}) -> {run_dir}")
        t0 = time.perf_counter()
        result = runner(run_cfg, run_dir)
        seconds = time.perf_counter() - t0
        if result.get("metrics") is None:
            raise RuntimeError(f"demo run {run_dir} stopped before its last epoch")
        if label == "teacher":
            teacher_best = Path(result["run_dir"]) / "best.safetensors"
        rows.append(
            {
                "run": label,
                "network": run_cfg.model.name,
                "seconds": round(seconds, 1),
                "dir": str(run_dir),
                **{k: result["metrics"].get(k) for k in _KEYS},
            }
        )
    summary = {"backend": cfg.backend, "config": str(config or DEFAULT_CONFIG), "runs": rows}
    write_json_atomic(out / "summary.json", summary)
    print("\n" + format_summary(summary))
    return summary


_KEYS = ("iou", "niou", "pd", "fa_1e6")


def format_summary(summary: dict[str, Any]) -> str:
    """A table of the runs' test metrics (IoU, nIoU, Pd in %, Fa x 1e-6)."""
    head = (
        f"{'run':<24} {'network':<12} {'IoU %':>7} {'nIoU %':>7} {'Pd %':>7} {'Fa e-6':>8} "
        f"{'time s':>7}"
    )
    lines = [
        f"test split of the synthetic data, backend {summary['backend']}",
        head,
        "-" * len(head),
    ]
    for r in summary["runs"]:

        def pct(v: Any) -> str:
            return "nan" if v is None else f"{100 * v:.2f}"

        fa = "nan" if r["fa_1e6"] is None else f"{r['fa_1e6']:.1f}"
        lines.append(
            f"{r['run']:<24} {r['network']:<12} {pct(r['iou']):>7} {pct(r['niou']):>7} "
            f"{pct(r['pd']):>7} {fa:>8} {r['seconds']:>7.0f}"
        )
    return "\n".join(lines)
