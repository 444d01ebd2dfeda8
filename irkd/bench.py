"""Training step times (``irkd bench steps``): teacher alone, student alone, distillation.

Framework-free orchestration: each backend provides ``step_times(cfg, images, masks, steps)``
(``torch_ref.bench`` / ``ms_impl.bench``) that builds the backend's real trainer and times its
``step`` calls; the first step (which includes MindSpore's graph compilation) is reported
apart from the median and p90 of the others. The teacher's weights are seeded random ones
(written once to a neutral file): speed does not depend on their values.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irkd.config import ExperimentConfig, config_from_dict

__all__ = [
    "StepTimer",
    "latency_summary",
    "release_latency",
    "bench_latency",
    "bench_steps",
    "format_contention",
    "format_latency",
    "format_steps",
    "step_configs",
]

StepTimer = Callable[[ExperimentConfig, np.ndarray, np.ndarray, int], list[float]]


def step_configs(
    teacher: str,
    student: str,
    teacher_weights: str | os.PathLike[str],
    *,
    method: str = "msa_awmse",
    stages: Sequence[str] = ("enc1",),
    optim: str = "adamw",
    graph_mode: bool = True,
) -> list[tuple[str, ExperimentConfig]]:
    """The three timed configurations: ``(label, config)``."""

    def cfg(model: str, distill: bool) -> ExperimentConfig:
        data: dict[str, Any] = {
            "model": {"name": model},
            "method": {"name": method if distill else "none", "stages": list(stages)},
            "optim": {"name": optim},
            "train": {"graph_mode": graph_mode},
        }
        if distill:
            data["teacher"] = {"name": teacher, "checkpoint": str(teacher_weights)}
        return config_from_dict(data)

    return [
        (f"teacher {teacher}", cfg(teacher, False)),
        (f"student {student}", cfg(student, False)),
        (f"distill {teacher}->{student} {method} {list(stages)}", cfg(student, True)),
    ]


def bench_steps(
    timers: dict[str, StepTimer],
    write_teacher: dict[str, Callable[[str, Path], None]],
    *,
    teacher: str = "dnanet",
    student: str = "dnanet_xs",
    batch: int = 4,
    size: int = 256,
    steps: int = 6,
    seed: int = 0,
    only: int | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Time ``steps`` training steps of each configuration on each backend.

    Args:
        timers: Backend name -> its ``step_times``.
        write_teacher: Backend name -> ``fn(network, path)`` writing seeded random neutral
            weights of the teacher (the first backend's writer is used).
        teacher: Teacher network.
        student: Student network.
        batch: Batch size.
        size: Square crop side.
        steps: Steps timed per configuration (>= 2: the first is reported apart).
        seed: Seed of the batch.
        only: Time only this configuration (0 teacher, 1 student, 2 distillation): the CLI
            runs each in a process of its own, so that memory one framework keeps (MindSpore's
            compiled graphs and pools) does not add up and no run slows the next.
        **kwargs: Passed to :func:`step_configs` (method, stages, optim, graph_mode).

    Returns:
        One row per (backend, configuration): ``first_s``, ``median_s``, ``p90_s``,
        ``images_per_s`` (from the median), ``steps``, ``batch``, ``size``, ``load`` (the
        1/5/15-minute load averages before and after: this figure's machine load) and
        ``omp_wait_policy``.
    """
    if steps < 2:
        raise ValueError("steps must be >= 2 (the first step is reported apart)")
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 1, size, size)).astype(np.float32)
    masks = (rng.random((batch, 1, size, size)) > 0.995).astype(np.float32)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="irkd-bench-") as tmp:
        path = Path(tmp) / "teacher.safetensors"
        next(iter(write_teacher.values()))(teacher, path)
        for backend, timer in timers.items():
            for i, (label, cfg) in enumerate(step_configs(teacher, student, path, **kwargs)):
                if only is not None and i != only:
                    continue
                load_before = [round(v, 2) for v in os.getloadavg()]
                times = timer(cfg, images, masks, steps)
                rest = sorted(times[1:])
                med = statistics.median(rest)
                p90 = rest[min(len(rest) - 1, int(round(0.9 * (len(rest) - 1))))]
                rows.append(
                    {
                        "backend": backend,
                        "run": label,
                        "first_s": times[0],
                        "median_s": med,
                        "p90_s": p90,
                        "images_per_s": batch / med,
                        "steps": steps,
                        "batch": batch,
                        "size": size,
                        "load": [load_before, [round(v, 2) for v in os.getloadavg()]],
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    }
                )
    return rows


def format_steps(rows: Sequence[dict[str, Any]]) -> str:
    """A table of the rows of :func:`bench_steps`."""
    head = f"{'backend':<10} {'run':<44} {'first s':>8} {'median s':>9} {'p90 s':>7} {'img/s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['backend']:<10} {r['run']:<44} {r['first_s']:>8.2f} {r['median_s']:>9.3f} "
            f"{r['p90_s']:>7.3f} {r['images_per_s']:>7.1f}"
        )
    return "\n".join(lines)


def format_contention(rows: Sequence[dict[str, Any]]) -> str:
    """Quiet against busy step times per (backend, run): the slowdown one busy process adds."""
    head = (
        f"{'backend':<10} {'run':<44} {'quiet s':>8} {'busy s':>8} {'busy/quiet':>10} "
        f"{'load quiet':>10} {'load busy':>10}"
    )
    lines = [head, "-" * len(head)]
    keyed: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        keyed.setdefault((r["backend"], r["run"]), {})[r.get("condition", "quiet")] = r
    for (backend, run), c in keyed.items():
        q, b = c.get("quiet"), c.get("busy")
        if not q or not b:
            continue
        lines.append(
            f"{backend:<10} {run:<44} {q['median_s']:>8.3f} {b['median_s']:>8.3f} "
            f"{b['median_s'] / q['median_s']:>9.2f}x {q['load'][0][0]:>10.2f} "
            f"{b['load'][0][0]:>10.2f}"
        )
    return "\n".join(lines)


LatencyFn = Callable[[str, "str | None", Path], dict[str, Any]]


def bench_latency(
    runtimes: dict[str, LatencyFn],
    *,
    teacher: str,
    students: Sequence[str],
    weights: dict[str, str] | None = None,
    workdir: Path,
    say: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Latency of the teacher and each student on every runtime, in one process.

    Args:
        runtimes: Runtime name -> ``fn(network, weights_or_None, workdir) -> {"median_ms",
            "p90_ms", ...}`` (``deploy_jetson.release.latency_runtimes`` and
            ``deploy_ascend.release.latency_runtimes``).
        teacher: Teacher network.
        students: Student networks.
        weights: Network -> weights file (others get seeded random weights).
        workdir: Scratch folder for exported files.
        say: Progress messages.

    Returns:
        ``{"shape", "runtimes": {runtime: {network: figures}}, "speedup": {runtime:
        {student: teacher_median / student_median}}}``.
    """
    weights = weights or {}
    networks = [teacher, *[s for s in students if s != teacher]]
    table: dict[str, dict[str, Any]] = {}
    speedup: dict[str, dict[str, float]] = {}
    for runtime, fn in runtimes.items():
        table[runtime] = {}
        for net in networks:
            say(f"[{runtime}] {net}")
            sub = workdir / runtime
            sub.mkdir(parents=True, exist_ok=True)
            table[runtime][net] = fn(net, weights.get(net), sub)
        t = table[runtime][teacher]["median_ms"]
        speedup[runtime] = {s: t / table[runtime][s]["median_ms"] for s in networks[1:]}
    return {
        "kind": "irkd-bench-latency",
        "shape": [1, 1, 256, 256],
        "teacher": teacher,
        "students": list(networks[1:]),
        "weights": weights,
        "runtimes": table,
        "speedup": speedup,
    }


def format_latency(result: dict[str, Any]) -> str:
    """A table: runtime, network, median and p90 latency (ms), speedup over the teacher."""
    head = f"{'runtime':<20} {'network':<12} {'median ms':>10} {'p90 ms':>9} {'speedup':>8}"
    lines = [f"latency at batch 1, input {result['shape']}", head, "-" * len(head)]
    for runtime, nets in result["runtimes"].items():
        for net, fig in nets.items():
            sp = result["speedup"][runtime].get(net)
            sp_s = "teacher" if net == result["teacher"] else f"{sp:.2f}x"
            lines.append(
                f"{runtime:<20} {net:<12} {fig['median_ms']:>10.2f} "
                f"{fig.get('p90_ms', float('nan')):>9.2f} {sp_s:>8}"
            )
    return "\n".join(lines)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """``median_ms``, ``p90_ms``, ``mean_ms``, ``min_ms`` and ``max_ms`` of some timings.

    Raises:
        ValueError: No timings.
    """
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no timings to summarise")
    return {
        "median_ms": float(np.median(values)),
        "p90_ms": float(np.percentile(values, 90)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
    }


def release_latency(
    runtimes: dict[str, LatencyFn], infos: Any, dirs: Any
) -> dict[str, dict[str, Any]]:
    """Runtime -> role -> latency of a release's models, each runtime in turn.

    Args:
        runtimes: As for :func:`bench_latency` (a backend's ``latency_runtimes()``).
        infos: Role -> ``irkd.release.ModelInfo``.
        dirs: Role -> the folder holding that model's artifacts (reused, not re-exported).
    """
    return {
        runtime: {
            role: fn(info.network, str(info.path), dirs[role]) for role, info in infos.items()
        }
        for runtime, fn in runtimes.items()
    }
