"""Latency against test IoU (``irkd bench pareto``): the teacher and each student of a study.

Framework-free. The test IoU of each model comes from the study's results (``table.json``,
best-on-validation weights, mean over the seeds that finished), never recomputed; only the
variants a deployment adds (BatchNorm folded, INT8) are evaluated, because their numbers
differ from the trained network's. Latencies come from the backends' parts
(``deploy_jetson.optimize.pareto_part``, ``deploy_ascend.fold.pareto_part``), each timed
*interleaved* (:func:`interleaved_latency`): one call of every (runtime, network) per round,
so that a load that changes during the run weighs on every entry alike, and the machine's
load average is recorded with the figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from irkd.bench import latency_summary

__all__ = [
    "GOAL_IOU_POINTS",
    "GOAL_SPEEDUP",
    "StudyModel",
    "format_pareto",
    "interleaved_latency",
    "pareto_rows",
    "plot_pareto",
    "study_models",
]

GOAL_SPEEDUP = 3.0
"""Issue 13's goal: a student this many times faster than its teacher..."""
GOAL_IOU_POINTS = 1.0
"""...at most this many test-IoU points below it."""

BASE_RUNTIMES = ("pytorch-cpu", "onnxruntime-cpu", "mindir-graphcell")
"""Runtimes that run the trained network as it is (the study's IoU applies)."""


@dataclass(frozen=True)
class StudyModel:
    """One point of the plot: the teacher or one row of the study.

    Attributes:
        label: ``teacher`` or the row's name (``student``, ``msa_awmse``, ...).
        network: Registered network.
        iou: Mean test IoU (fraction) of the best-on-validation weights over ``n`` seeds.
        iou_last: The same for the last-epoch weights.
        n: Seeds finished.
        run_id: The first finished run (its weights are used for the measured variants).
        weights: ``<runs_dir>/<run_id>/best.safetensors`` where that file exists, else None.
    """

    label: str
    network: str
    iou: float
    iou_last: float | None
    n: int
    run_id: str
    weights: str | None


def _network(results: Path, run_id: str) -> str:
    cfg = yaml.safe_load((results / "runs" / run_id / "config.yaml").read_text(encoding="utf-8"))
    return str(cfg["model"]["name"])


def study_models(
    results: str | os.PathLike[str], dataset: str, runs_dir: str | os.PathLike[str] | None = None
) -> list[StudyModel]:
    """The teacher and every row with at least one finished seed, teacher first.

    Args:
        results: A study's results folder (``results/cpu``: ``table.json``, ``runs/``).
        dataset: Dataset key of the study (``nudt``).
        runs_dir: Folder of the study's run folders (weights); None: no weights.

    Raises:
        ValueError: No ``table.json``, or no such dataset / no finished teacher.
    """
    res = Path(results)
    table_path = res / "table.json"
    if not table_path.is_file():
        raise ValueError(f"{table_path} not found: run `irkd study STUDY.yaml --report` first")
    import json

    table = json.loads(table_path.read_text(encoding="utf-8"))
    ds = table.get("datasets", {}).get(dataset)
    if ds is None:
        raise ValueError(f"dataset {dataset!r} not in {table_path}: {sorted(table['datasets'])}")
    t = ds.get("teacher") or {}
    if not t.get("done"):
        raise ValueError(f"{table_path}: the {dataset} teacher has not finished")

    def weights(run_id: str) -> str | None:
        if runs_dir is None:
            return None
        p = Path(runs_dir) / run_id / "best.safetensors"
        return str(p) if p.is_file() else None

    out = [
        StudyModel(
            "teacher",
            _network(res, t["run_id"]),
            float(t["best"]["iou"]),
            float(t["last"]["iou"]) if t.get("last") else None,
            1,
            t["run_id"],
            weights(t["run_id"]),
        )
    ]
    for row in [*ds.get("methods", []), *ds.get("ablations", [])]:
        if not row.get("n"):
            continue
        run_id = row["run_ids"][0]
        last = (row.get("last") or {}).get("iou") or {}
        out.append(
            StudyModel(
                row["row"],
                _network(res, run_id),
                float(row["best"]["iou"]["mean"]),
                None if last.get("mean") is None else float(last["mean"]),
                int(row["n"]),
                run_id,
                weights(run_id),
            )
        )
    return out


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (``os.getloadavg``)."""
    return [round(v, 2) for v in os.getloadavg()]


def interleaved_latency(
    calls: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 3,
    rounds: int = 20,
    say: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Time every call once per round, ``rounds`` times, after ``warmup`` untimed rounds.

    Args:
        calls: Key -> a callable doing one synchronous inference (its result read back).
        warmup: Untimed rounds (compilation, allocator warm-up).
        rounds: Timed rounds.
        say: Progress messages.

    Returns:
        ``{"latency": {key: latency_summary}, "load_before", "load_after", "rounds",
        "warmup"}``.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    before = loadavg()
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        for key, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t0) * 1e3)
        if (r + 1) % 5 == 0:
            say(f"round {r + 1}/{rounds}")
    return {
        "latency": {k: latency_summary(v) for k, v in times.items()},
        "load_before": before,
        "load_after": loadavg(),
        "rounds": rounds,
        "warmup": warmup,
    }


def _base(runtime: str) -> str:
    for b in BASE_RUNTIMES:
        if runtime.startswith(b):
            return b
    return runtime


def pareto_rows(
    models: Sequence[StudyModel],
    latency: Mapping[str, Mapping[str, Mapping[str, float]]],
    accuracy: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """One row per (runtime, model) with a latency and an IoU.

    Args:
        models: :func:`study_models` (teacher first).
        latency: Runtime -> network -> latency summary (``median_ms``, ``min_ms``).
        accuracy: Runtime -> model label -> measured metrics (``iou``...) of a variant runtime
            (BatchNorm folded, INT8); base runtimes take the study's IoU.

    Each row: ``runtime``, ``model``, ``network``, ``median_ms``, ``min_ms``, ``speedup``
    (the teacher's median on the row's base runtime, float32 as trained, over the row's
    median), ``speedup_min`` (the same on minima: less sensitive to load), ``iou``,
    ``iou_source`` (``study`` or ``measured``), ``gap_points`` (IoU minus the teacher's study
    IoU, in points) and ``goal`` (speedup >= 3 and gap >= -1 point).
    """
    teacher = models[0]
    rows: list[dict[str, Any]] = []
    for runtime, nets in latency.items():
        base = latency.get(_base(runtime), {}).get(teacher.network)
        shown: set[str] = set()
        measured_nets = {m.network for m in models if m.label in accuracy.get(runtime, {})}
        for m in models:
            lat = nets.get(m.network)
            if lat is None:
                continue
            if runtime in BASE_RUNTIMES:
                iou, source = m.iou, "study"
            else:
                measured = accuracy.get(runtime, {}).get(m.label)
                if measured is None:
                    # a variant's IoU is not the study's: show its latency once per network
                    if m.label != "teacher" and (m.network in measured_nets | shown):
                        continue
                    iou, source = None, "not measured"
                else:
                    iou, source = float(measured["iou"]), "measured"
            shown.add(m.network)
            speed = base["median_ms"] / lat["median_ms"] if base else None
            speed_min = base["min_ms"] / lat["min_ms"] if base else None
            gap = None if iou is None else 100.0 * (iou - teacher.iou)
            rows.append(
                {
                    "runtime": runtime,
                    "model": m.label,
                    "network": m.network,
                    "median_ms": lat["median_ms"],
                    "min_ms": lat["min_ms"],
                    "speedup": speed,
                    "speedup_min": speed_min,
                    "iou": iou,
                    "iou_source": source,
                    "gap_points": gap,
                    "goal": bool(
                        m.label != "teacher"
                        and speed is not None
                        and gap is not None
                        and speed >= GOAL_SPEEDUP
                        and gap >= -GOAL_IOU_POINTS
                    ),
                }
            )
    return rows


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_pareto(result: Mapping[str, Any]) -> str:
    """A markdown table of the rows, the goal's verdict per runtime and the sweep."""
    lines = [
        "| runtime | model | network | median ms | min ms | speedup (median) | speedup (min) "
        "| test IoU % | IoU from | gap to teacher (points) | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['runtime']} | {r['model']} | {r['network']} | {r['median_ms']:.1f} "
            f"| {r['min_ms']:.1f} | {_f(r['speedup'], '.2f')}x | {_f(r['speedup_min'], '.2f')}x "
            f"| {_f(None if r['iou'] is None else 100 * r['iou'], '.2f')} | {r['iou_source']} "
            f"| {_f(r['gap_points'], '+.2f')} | {'yes' if r['goal'] else 'no'} |"
        )
    lines.append("")
    lines.append(
        f"Goal: a student >= {GOAL_SPEEDUP:g}x faster than the teacher (median, same runtime, "
        f"teacher float32) at <= {GOAL_IOU_POINTS:g} test-IoU point below it."
    )
    for runtime, v in result.get("verdict", {}).items():
        lines.append(f"- {runtime}: {v}")
    sweep = result.get("sweep")
    if sweep:
        lines += [
            "",
            "onnxruntime graph optimisation level x intra-op threads (median ms, interleaved):",
            "",
            "| network | " + " | ".join(sweep["columns"]) + " |",
            "|---|" + "---|" * len(sweep["columns"]),
        ]
        for net, vals in sweep["rows"].items():
            lines.append(f"| {net} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def verdicts(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Per runtime: the best student against the goal, in one sentence."""
    out: dict[str, str] = {}
    for runtime in dict.fromkeys(r["runtime"] for r in rows):
        rs = [r for r in rows if r["runtime"] == runtime and r["model"] != "teacher"]
        rs = [r for r in rs if r["iou"] is not None and r["speedup"] is not None]
        if not rs:
            continue
        met = [r for r in rs if r["goal"]]
        if met:
            b = max(met, key=lambda r: r["iou"])
            out[runtime] = (
                f"met by {b['model']} ({b['network']}): {b['speedup']:.2f}x, "
                f"{b['gap_points']:+.2f} points"
            )
            continue
        b = max(rs, key=lambda r: r["iou"])
        short = []
        if b["speedup"] < GOAL_SPEEDUP:
            short.append(f"speed {b['speedup']:.2f}x (needs {GOAL_SPEEDUP:g}x)")
        if b["gap_points"] < -GOAL_IOU_POINTS:
            short.append(
                f"IoU {b['gap_points']:+.2f} points ({-GOAL_IOU_POINTS - b['gap_points']:.2f} "
                "points short)"
            )
        out[runtime] = (
            f"not met; best student {b['model']} ({b['network']}) at {b['speedup']:.2f}x and "
            f"{b['gap_points']:+.2f} points: " + ", ".join(short)
        )
    return out


PLOT_FLOOR_POINTS = 15.0
"""How far below the teacher the plot's IoU axis reaches; rows under it sit on the floor."""


def _load_text(load: Mapping[str, Any]) -> str:
    """``part 1-min load before -> after`` for the title, from ``{part: [before, after]}``."""
    parts = []
    for part, pair in load.items():
        try:
            parts.append(f"{part} {float(pair[0][0]):.1f} -> {float(pair[1][0]):.1f}")
        except (TypeError, IndexError, ValueError):
            continue
    return ", ".join(parts)


def plot_pareto(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Test IoU against median latency, one colour per runtime, teacher drawn as a star.

    The IoU axis spans the teacher's figure minus :data:`PLOT_FLOOR_POINTS` to the best row;
    a row below that (a failed ablation) is drawn on the floor as a triangle labelled with its
    IoU, so that it does not squeeze the rows that matter into a band.
    """
    from irkd.study.plots import _figure, _save

    fig = _figure((8.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    runtimes = list(dict.fromkeys(r["runtime"] for r in result["rows"]))
    colours = {rt: f"C{i % 10}" for i, rt in enumerate(runtimes)}
    teacher_iou = next((100 * m["iou"] for m in result["models"] if m["label"] == "teacher"), None)
    shown = [100 * r["iou"] for r in result["rows"] if r["iou"] is not None]
    floor = None if teacher_iou is None else teacher_iou - PLOT_FLOOR_POINTS
    for r in result["rows"]:
        if r["iou"] is None:
            continue
        iou = 100 * r["iou"]
        below = floor is not None and iou < floor
        ax.scatter(
            r["median_ms"],
            floor if below else iou,
            color=colours[r["runtime"]],
            marker="*" if r["model"] == "teacher" else ("v" if below else "o"),
            s=120 if r["model"] == "teacher" else 40,
        )
        label = f"{r['model']} ({iou:.1f}%)" if below else r["model"]
        ax.annotate(label, (r["median_ms"], floor if below else iou), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    for rt in runtimes:
        ax.scatter([], [], color=colours[rt], label=rt)
    if teacher_iou is not None and floor is not None:
        ax.axhline(teacher_iou - GOAL_IOU_POINTS, color="grey", ls=":", lw=1,
                   label=f"teacher - {GOAL_IOU_POINTS:g} point")  # fmt: skip
        top = max([teacher_iou, *shown])
        ax.set_ylim(floor - 1.0, top + 2.0)
    ax.set_xscale("log")
    ax.set_xlabel("latency, batch 1, 1x1x256x256 (median ms, log scale)")
    ax.set_ylabel("test IoU (%)")
    load = _load_text(result.get("load") or {})
    title = f"{result.get('dataset', '')}: latency vs test IoU"
    ax.set_title(f"{title} (1-min load {load})" if load else title, fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def model_dicts(models: Sequence[StudyModel]) -> list[dict[str, Any]]:
    """The models as plain dicts (for the JSON file)."""
    return [asdict(m) for m in models]
