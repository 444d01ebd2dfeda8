"""Expand a study into runs: resolved configs, ids, shared duplicates, tuning winners.

A run is dataset x row x seed (plus each dataset's teacher and each tuning combination).
Its config is the dataset's student config, the dataset overrides, the row overrides (for a
tuned row: then the winning grid overrides), ``seed`` and ``name``; a distilling run also
gets ``teacher.checkpoint`` (the teacher run's ``best.safetensors``), a run of
``method.name=none`` gets ``teacher: null``. A run folder is named
``<readable name>-<hash>``, the hash taken over the resolved config without ``name`` and
with the teacher's checkpoint replaced by the teacher's run id: runs whose configs are the
same (the winning tuning run and the main run of the tuning seed) share one folder.

:func:`build_plan` is pure: it takes the best validation IoU of the runs that are done and
returns what can be run now; rows that wait on a tuning grid stay unresolved until every
combination of that grid is done.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irkd.config import (
    ConfigError,
    ExperimentConfig,
    NetConfig,
    apply_overrides,
    config_to_dict,
    is_distill,
)
from irkd.study.spec import Row, Study, StudyError, grid_value
from irkd.zoo import STAGES, get_spec

__all__ = ["Plan", "RunSpec", "TuningEntry", "build_plan", "config_hash", "validate_study"]

CellKey = tuple[str, str, str, int]
"""(dataset, table, row, seed); table is ``methods`` or ``ablations``."""


@dataclass
class RunSpec:
    """One training run of a study.

    Attributes:
        id: Folder name, ``<label>-<hash>``.
        label: Readable name (also the config's ``name``).
        dataset: Dataset key.
        mode: ``train`` or ``distill`` (the ``irkd`` subcommand).
        cfg: The resolved config.
        teacher: Run id of the teacher of a distillation run; else None.
        roles: What the run stands for (``teacher``, ``methods/<row>/s<seed>``,
            ``tuning/<row>/<combination>``...), several when shared.
        init: Run id of the step before, for a run of a teacher or student trained in steps
            (it starts from that run's best weights); else None.
    """

    id: str
    label: str
    dataset: str
    mode: str
    cfg: ExperimentConfig
    teacher: str | None = None
    roles: list[str] = field(default_factory=list)
    init: str | None = None

    @property
    def needs(self) -> tuple[str, ...]:
        """Run ids whose best weights it needs before it starts (teacher, step before)."""
        return tuple(r for r in (self.init, self.teacher) if r is not None)


@dataclass
class TuningEntry:
    """The grid of one row on one dataset.

    Attributes:
        dataset: Dataset key.
        row: ``methods`` row.
        combos: Override lists, one per combination (grid order).
        runs: Run id of each combination.
        winner: Index of the winning combination (highest best-on-validation IoU, the first
            on ties), None until every combination is done.
        val: Best validation IoU of each combination (None: not done or no score).
        done: Whether each combination's run is done.
    """

    dataset: str
    row: str
    combos: list[tuple[str, ...]]
    runs: list[str]
    winner: int | None = None
    val: list[float | None] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)


@dataclass
class Plan:
    """Every run known now, in scheduling order.

    Attributes:
        runs: Run id -> spec, in the order runs should start.
        teachers: Dataset -> teacher run id.
        cells: Table cell -> run id, or None while it waits on a tuning grid.
        tuning: (dataset, row) -> its grid.
    """

    runs: dict[str, RunSpec] = field(default_factory=dict)
    teachers: dict[str, str] = field(default_factory=dict)
    cells: dict[CellKey, str | None] = field(default_factory=dict)
    tuning: dict[tuple[str, str], TuningEntry] = field(default_factory=dict)

    def waiting(self) -> list[CellKey]:
        """Cells still waiting on a tuning grid."""
        return [k for k, v in self.cells.items() if v is None]


# ----------------------------------------------------------------------------- configs

_METHODS = ("none", "msa_awmse")


def _known_methods() -> tuple[str, ...]:
    from irkd.methods import BASELINE_DEFAULTS

    return (*_METHODS, *BASELINE_DEFAULTS)


def check_run_config(cfg: ExperimentConfig, teacher: ExperimentConfig | None) -> None:
    """Checks a config type cannot express: networks, method, teacher agreement.

    Raises:
        ConfigError: One line naming the config key.
    """
    from irkd.methods import resolve_params, stage_params

    nets = [("model.name", cfg.model.name)]
    if cfg.teacher is not None:
        nets.append(("teacher.name", cfg.teacher.name))
    for key, net in nets:
        try:
            get_spec(net)
        except KeyError as exc:
            raise ConfigError(f"{key}: {exc.args[0]}") from None
    name = cfg.method.name
    if name not in _known_methods():
        raise ConfigError(
            f"method.name: unknown method {name!r}; known: {', '.join(_known_methods())}"
        )
    if name == "none":
        return
    try:
        if name == "msa_awmse":
            stage_params(cfg.method)
        else:
            resolve_params(name, cfg.method.params)
    except ValueError as exc:
        raise ConfigError(f"method: {exc}") from None
    for stage in cfg.method.stages:
        if stage not in STAGES and stage != "logits":
            raise ConfigError(
                f"method.stages: unknown stage {stage!r}; stages: {', '.join(STAGES)}"
            )
    if cfg.teacher is None:
        raise ConfigError(f"method.name={name} distills but the student config has no teacher")
    if teacher is None:
        raise ConfigError(f"method.name={name} distills but the dataset has no teacher config")
    if cfg.teacher.name != teacher.model.name or cfg.teacher.kwargs != teacher.model.kwargs:
        raise ConfigError(
            f"teacher.name: the student config's teacher is {cfg.teacher.name} "
            f"{cfg.teacher.kwargs or ''}, the teacher config trains {teacher.model.name} "
            f"{teacher.model.kwargs or ''}"
        )


_SAME = object()


def _changes(value: Any, default: Any) -> Any:
    """The parts of ``value`` that differ from ``default`` (``_SAME`` when none)."""
    if isinstance(value, dict) and isinstance(default, dict):
        out = {}
        for k, v in value.items():
            d = _changes(v, default[k]) if k in default else v
            if d is not _SAME:
                out[k] = d
        gone = [k for k in default if k not in value]
        out.update({k: None for k in gone})
        return out or _SAME
    return _SAME if value == default else value


def config_hash(cfg: ExperimentConfig, teacher_id: str | None, init_id: str | None = None) -> str:
    """Eight hex digits identifying a resolved config.

    The hash covers the values that differ from :mod:`irkd.config`'s defaults (so adding a
    config field with a default keeps every run id), without ``name``, and with the
    teacher's checkpoint replaced by the teacher's run id, and a later step's starting
    weights (``model.checkpoint``) by the previous step's run id ``init_id`` (ids do not
    depend on where the runs live).
    """
    data = config_to_dict(cfg)
    data.pop("name", None)
    defaults = config_to_dict(ExperimentConfig())
    if data.get("teacher") is not None:
        defaults["teacher"] = config_to_dict(NetConfig())
        if teacher_id is not None:
            data["teacher"]["checkpoint"] = f"run:{teacher_id}"
    if init_id is not None:
        data["model"]["checkpoint"] = f"run:{init_id}"
    changes = _changes(data, defaults)
    text = json.dumps({} if changes is _SAME else changes, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def combo_label(grid: tuple[tuple[str, tuple], ...], values: tuple) -> str:
    """Readable part of a tuning run's name, e.g. ``lam0.3-stages_enc1``."""
    parts = []
    for (key, _), value in zip(grid, values, strict=True):
        text = _slug(grid_value(value))
        sep = "" if text[:1].isdigit() else "_"
        parts.append(f"{key.split('.')[-1]}{sep}{text}")
    return "-".join(parts)[:48]


def combos(grid: tuple[tuple[str, tuple], ...]) -> list[tuple[tuple[str, ...], str]]:
    """Every combination of a grid: (override items, readable label), in grid order."""
    out = []
    for values in itertools.product(*(vals for _, vals in grid)):
        items = tuple(f"{k}={grid_value(v)}" for (k, _), v in zip(grid, values, strict=True))
        out.append((items, combo_label(grid, values)))
    return out


def _resolve(
    study: Study,
    ds: str,
    items: tuple[str, ...],
    seed: int,
    label: str,
    key: str,
    step: int = 1,
) -> ExperimentConfig:
    """A student run's config: step ``step`` (1: the base config) with the row's items.

    A later step applies its own overrides after the row's.
    """
    base = study.students[ds]
    if step > 1:
        base = study.student_steps[ds][step - 2]
        items = (*items, *study.student_step_overrides[ds][step - 2])
    try:
        cfg = apply_overrides(base, list(items))
        cfg = copy.deepcopy(cfg)
        cfg.seed = int(seed)
        cfg.name = label
        if cfg.method.name == "none":
            cfg.teacher = None
        check_run_config(cfg, study.teachers[ds])
    except ConfigError as exc:
        where = f"dataset {ds}" if step == 1 else f"dataset {ds}, student step {step}"
        raise study.fail(f"{key} ({where})", str(exc)) from None
    return cfg


def _check_steps(study: Study, ds: str, items: tuple[str, ...], key: str) -> None:
    """Resolve a row's items on every student step of ``ds`` (raises on the first bad one)."""
    for step in range(1, 2 + len(study.student_steps.get(ds, []))):
        _resolve(study, ds, items, 0, "x", key, step)


def _row_items(row: Row, winner: tuple[str, ...] | None) -> tuple[str, ...]:
    if row.table == "ablations":
        return (*(winner or ()), *row.overrides)
    return (*row.overrides, *(winner or ()))


def validate_study(study: Study, runs_root: Path) -> Plan:
    """Resolve every run the study can ever have (all grid combinations) and check it.

    Args:
        study: The loaded study.
        runs_root: Where its run folders go.

    Returns:
        The plan before any run is done.

    Raises:
        StudyError: One line naming the study key.
    """
    grids = study.tuning.grids if study.tuning else {}
    for ds in study.datasets:
        for row in study.rows():
            if not row.on(ds):
                continue
            key = f"{row.table}.{row.name}.overrides"
            tuned = row.name if row.table == "methods" else row.tuned
            if tuned not in grids:
                _check_steps(study, ds, _row_items(row, None), key)
                continue
            try:  # a bad grid is named as such when the row alone is fine
                _check_steps(study, ds, _row_items(row, None), key)
                if row.table == "methods":
                    key = f"tuning.{tuned}.grid"
            except StudyError:
                pass
            for items, _ in combos(grids[tuned]):
                _check_steps(study, ds, _row_items(row, items), key)
    return build_plan(study, runs_root, {})


# ----------------------------------------------------------------------------- the plan


def build_plan(study: Study, runs_root: Path, done_val: Mapping[str, float | None]) -> Plan:
    """The runs of a study given which are done.

    Args:
        study: The loaded study.
        runs_root: Folder of the run folders (teacher checkpoints are found there).
        done_val: Run id -> best validation IoU (None: no score) of every done run.

    Returns:
        The plan: teachers, tuning runs, then seed by seed the rows of each dataset.

    Raises:
        StudyError: A row or grid whose config is invalid.
    """
    plan = Plan()
    by_hash: dict[str, str] = {}

    def add(
        ds: str, cfg: ExperimentConfig, teacher: str | None, role: str, init: str | None = None
    ) -> str:
        h = config_hash(cfg, teacher, init)
        if h in by_hash:
            run_id = by_hash[h]
            plan.runs[run_id].roles.append(role)
            return run_id
        run_id = f"{cfg.name}-{h}"
        mode = "distill" if is_distill(cfg) else "train"
        plan.runs[run_id] = RunSpec(
            run_id, cfg.name, ds, mode, cfg, teacher=teacher, roles=[role], init=init
        )
        by_hash[h] = run_id
        return run_id

    tchains: dict[str, list[str]] = {}

    def student(ds: str, items: tuple[str, ...], seed: int, label: str, key: str, role: str) -> str:
        """Add a student run (each of its steps); return the last step's run id."""
        n = 1 + len(study.student_steps.get(ds, []))
        init: str | None = None
        for step in range(1, n + 1):
            name = label if step == 1 else f"{label}-step{step}"
            cfg = _resolve(study, ds, items, seed, name, key, step)
            teacher = None
            if cfg.teacher is not None:
                chain = tchains.get(ds)
                if not chain:
                    raise study.fail(key, f"distills but dataset {ds} has no teacher")
                # the last steps of both line up: with as many steps, step k learns from
                # teacher step k; a student in one step learns from the final teacher
                teacher = chain[max(0, len(chain) - n + step - 1)]
                cfg.teacher.checkpoint = str(runs_root / teacher / "best.safetensors")
            if init is not None:
                cfg.model.checkpoint = str(runs_root / init / "best.safetensors")
            init = add(ds, cfg, teacher, role if step == n else f"{role}/step{step}", init)
        assert init is not None
        return init

    for ds in study.datasets:
        tcfg = study.teachers[ds]
        if tcfg is None:
            continue
        # a teacher in steps: <ds>-teacher (the first step), <ds>-teacher2, ... each from the
        # previous step's best weights; a one-step teacher keeps its name and id
        init: str | None = None
        chain = [*study.teacher_steps.get(ds, []), tcfg]
        for k, step_cfg in enumerate(chain):
            step_cfg = copy.deepcopy(step_cfg)
            step_cfg.name = f"{ds}-teacher" if k == 0 else f"{ds}-teacher{k + 1}"
            if init is not None:
                step_cfg.model.checkpoint = str(runs_root / init / "best.safetensors")
            role = "teacher" if k == len(chain) - 1 else f"teacher/step{k + 1}"
            init = add(ds, step_cfg, None, role, init)
            plan.teachers[ds] = init
            tchains.setdefault(ds, []).append(init)

    grids = study.tuning.grids if study.tuning else {}
    winners: dict[tuple[str, str], tuple[str, ...] | None] = {}
    for ds in study.datasets:
        for row_name, grid in grids.items():
            row = study.methods[row_name]
            if not row.on(ds):
                continue
            entry = TuningEntry(ds, row_name, [], [])
            seed = study.tuning.seed if study.tuning else 0
            for i, (items, label) in enumerate(combos(grid)):
                key = f"tuning.{row_name}.grid"
                name = f"{ds}-tune-{row_name}-{label}-s{seed}"
                run_id = student(
                    ds, (*row.overrides, *items), seed, name, key, f"tuning/{row_name}/{i}"
                )
                entry.combos.append(items)
                entry.runs.append(run_id)
            entry.val = [done_val.get(r) for r in entry.runs]
            entry.done = [r in done_val for r in entry.runs]
            if all(entry.done):
                scores = [-1.0 if v is None else float(v) for v in entry.val]
                entry.winner = max(range(len(scores)), key=lambda k: (scores[k], -k))
                winners[(ds, row_name)] = entry.combos[entry.winner]
            else:
                winners[(ds, row_name)] = None
            plan.tuning[(ds, row_name)] = entry

    for seed in study.seeds:
        for ds in study.datasets:
            for row in study.rows():
                if not row.on(ds):
                    continue
                cell = (ds, row.table, row.name, seed)
                tuned = row.name if row.table == "methods" else row.tuned
                winner = None
                if tuned in grids and row.on(ds):
                    if (ds, tuned) not in winners or winners[(ds, tuned)] is None:
                        plan.cells[cell] = None
                        continue
                    winner = winners[(ds, tuned)]
                items = _row_items(row, winner)
                key = f"{row.table}.{row.name}.overrides"
                plan.cells[cell] = student(
                    ds,
                    items,
                    seed,
                    f"{ds}-{row.name}-s{seed}",
                    key,
                    f"{row.table}/{row.name}/s{seed}",
                )
    return plan
