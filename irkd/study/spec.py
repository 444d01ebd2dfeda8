"""The study file: parse, validate and load its configs (see ``docs/study.md``).

:func:`load_study` reads a study YAML, checks every key, loads each dataset's student and
teacher configs through :mod:`irkd.config` and returns a :class:`Study`. Every problem is one
:class:`StudyError` line that names the study key. The expansion into runs (every row,
seed and tuning combination, resolved and validated) is :mod:`irkd.study.plan`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from irkd.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    is_distill,
    load_config,
    yaml_load,
)

__all__ = [
    "DatasetSpec",
    "Row",
    "StudentStep",
    "Study",
    "StudyError",
    "Tuning",
    "grid_value",
    "load_study",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""Study, dataset and row names (they become folder and file names)."""

_TOP_KEYS = ("name", "threads", "datasets", "seeds", "reference", "methods", "ablations", "tuning")
_DATASET_KEYS = ("student", "teacher", "overrides")
_STEP_KEYS = ("config", "overrides")
_ROW_KEYS = {"methods": ("overrides", "datasets"), "ablations": ("overrides", "datasets", "tuned")}


class StudyError(ValueError):
    """An invalid study file; the message is one line naming the study key."""


@dataclass(frozen=True)
class StudentStep:
    """A later step of the students (``student: [a.yaml, {config: b.yaml, overrides: [...]}]``).

    Attributes:
        config: The step's base config.
        overrides: ``key=value`` items applied after the row's (e.g. ``method.name=none``:
            a distilled student trained further alone).
    """

    config: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a study.

    Attributes:
        name: Dataset key (used in run ids and plot names).
        student: Base config of every student run (its first step).
        teacher: The teacher's config (trained once), or None when no row distills.
        overrides: ``key=value`` items applied to every student run of this dataset.
        teacher_steps: Configs trained before ``teacher``, in order (``teacher: [a, b, c]``
            in the study file: ``a`` from its own start, ``b`` from ``a``'s best weights,
            ``teacher`` = ``c`` from ``b``'s); empty for a teacher trained in one run.
        student_steps: Steps trained after ``student``, in order (``student: [a, b]``:
            ``student`` = ``a``, each later step from the previous step's best weights, with
            the same row, dataset and seed overrides, then the step's own); empty for
            students trained in one run.
    """

    name: str
    student: Path
    teacher: Path | None
    overrides: tuple[str, ...] = ()
    teacher_steps: tuple[Path, ...] = ()
    student_steps: tuple[StudentStep, ...] = ()


@dataclass(frozen=True)
class Row:
    """A row of the main table (``methods``) or of the ablation table (``ablations``).

    Attributes:
        name: Row key.
        table: ``methods`` or ``ablations``.
        overrides: ``key=value`` items of the row.
        datasets: Datasets the row runs on (None: all).
        tuned: Ablations only: a ``methods`` row whose winning tuning overrides are applied
            before this row's own overrides.
    """

    name: str
    table: str
    overrides: tuple[str, ...] = ()
    datasets: tuple[str, ...] | None = None
    tuned: str | None = None

    def on(self, dataset: str) -> bool:
        """Whether the row runs on ``dataset``."""
        return self.datasets is None or dataset in self.datasets


@dataclass(frozen=True)
class Tuning:
    """The tuning section: per ``methods`` row, a grid run on one seed.

    Attributes:
        seed: The tuning seed.
        grids: Row name -> ordered ``(key, values)`` pairs; every combination is run.
    """

    seed: int
    grids: dict[str, tuple[tuple[str, tuple[Any, ...]], ...]] = field(default_factory=dict)


@dataclass
class Study:
    """A validated study file with its base configs loaded.

    Attributes:
        path: The study file.
        name: Study name (``results/<name>``, ``runs/study/<name>``).
        threads: Threads per run.
        datasets: Dataset key -> spec, in file order.
        seeds: Seeds of every row.
        reference: The ``methods`` row paired differences are taken against.
        methods: Main-table rows, in file order.
        ablations: Ablation-table rows, in file order.
        tuning: The tuning section, or None.
        students: Dataset -> student base config (dataset overrides applied).
        teachers: Dataset -> teacher config (None when the dataset has none).
        teacher_steps: Dataset -> the configs of the teacher's earlier steps (see
            :class:`DatasetSpec`), in order.
        student_steps: Dataset -> the configs of the students' later steps (dataset
            overrides applied), in order.
        student_step_overrides: Dataset -> each later step's own overrides (applied after a
            row's), in order.
    """

    path: Path
    name: str
    threads: int
    datasets: dict[str, DatasetSpec]
    seeds: tuple[int, ...]
    reference: str
    methods: dict[str, Row]
    ablations: dict[str, Row]
    tuning: Tuning | None
    students: dict[str, ExperimentConfig] = field(default_factory=dict)
    teachers: dict[str, ExperimentConfig | None] = field(default_factory=dict)
    teacher_steps: dict[str, list[ExperimentConfig]] = field(default_factory=dict)
    student_steps: dict[str, list[ExperimentConfig]] = field(default_factory=dict)
    student_step_overrides: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)

    def rows(self) -> list[Row]:
        """Every row, main table first."""
        return [*self.methods.values(), *self.ablations.values()]

    def fail(self, key: str, msg: str) -> StudyError:
        """A :class:`StudyError` naming this study file and ``key``."""
        return StudyError(f"{self.path}: {key}: {msg}")


def grid_value(value: Any) -> str:
    """The override text of a grid value (a string as is, anything else as flow YAML)."""
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("...\n").strip()


# ----------------------------------------------------------------------------- parsing


def _err(path: Path, key: str, msg: str) -> StudyError:
    return StudyError(f"{path}: {key}: {msg}")


def _mapping(path: Path, key: str, value: Any, allowed: tuple[str, ...] | None) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _err(path, key, f"expected a mapping, got {value!r}")
    if allowed is not None:
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise _err(
                path, f"{key}.{unknown[0]}", f"unknown key; valid keys: {', '.join(allowed)}"
            )
    return value


def _name(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise _err(path, key, f"{value!r} is not a valid name (letters, digits, _ . -)")
    return value


def _str_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _err(path, key, f"expected a list of strings, got {value!r}")
    for i, item in enumerate(value):
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise _err(path, f"{key}[{i}]", f"{item!r} must look like key.sub=value")
    return tuple(value)


def _int(path: Path, key: str, value: Any, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(path, key, f"expected an integer, got {value!r}")
    if low is not None and value < low:
        raise _err(path, key, f"must be >= {low}, got {value}")
    return value


def _file(path: Path, key: str, value: Any) -> Path:
    """A config path: as given (relative to the current folder), else next to the study."""
    if not isinstance(value, str) or not value:
        raise _err(path, key, f"expected a config file path, got {value!r}")
    p = Path(value)
    if p.is_file():
        return p
    beside = path.parent / p
    if not p.is_absolute() and beside.is_file():
        return beside
    raise _err(path, key, f"config file {value} not found")


def _datasets(path: Path, raw: Any) -> dict[str, DatasetSpec]:
    raw = _mapping(path, "datasets", raw, None)
    if not raw:
        raise _err(path, "datasets", "needs at least one dataset")
    out = {}
    for ds, body in raw.items():
        key = f"datasets.{ds}"
        _name(path, key, ds)
        body = _mapping(path, key, body, _DATASET_KEYS)
        if "student" not in body:
            raise _err(path, f"{key}.student", "missing (the base config of every student run)")
        student = body["student"]
        if isinstance(student, list):  # students trained in steps, each from the last one
            if not student:
                raise _err(path, f"{key}.student", "expected a config path or a non-empty list")
            first = _file(path, f"{key}.student[0]", student[0])
            later = [_step(path, f"{key}.student[{i}]", s) for i, s in enumerate(student) if i]
        else:
            first, later = _file(path, f"{key}.student", student), []
        teacher = body.get("teacher")
        if isinstance(teacher, list):  # a teacher trained in steps, each from the last one
            if not teacher:
                raise _err(path, f"{key}.teacher", "expected a config path or a non-empty list")
            steps = [_file(path, f"{key}.teacher[{i}]", t) for i, t in enumerate(teacher)]
        else:
            steps = [] if teacher is None else [_file(path, f"{key}.teacher", teacher)]
        out[ds] = DatasetSpec(
            name=ds,
            student=first,
            teacher=steps[-1] if steps else None,
            overrides=_str_list(path, f"{key}.overrides", body.get("overrides")),
            teacher_steps=tuple(steps[:-1]),
            student_steps=tuple(later),
        )
    return out


def _step(path: Path, key: str, value: Any) -> StudentStep:
    """A later student step: a config path, or ``{config: path, overrides: [...]}``."""
    if not isinstance(value, dict):
        return StudentStep(_file(path, key, value))
    body = _mapping(path, key, value, _STEP_KEYS)
    if "config" not in body:
        raise _err(path, f"{key}.config", "missing (the step's base config)")
    return StudentStep(
        _file(path, f"{key}.config", body["config"]),
        _str_list(path, f"{key}.overrides", body.get("overrides")),
    )


def _rows(path: Path, table: str, raw: Any, datasets: dict[str, DatasetSpec]) -> dict[str, Row]:
    raw = _mapping(path, table, raw, None)
    out = {}
    for name, body in raw.items():
        key = f"{table}.{name}"
        _name(path, key, name)
        if name == "teacher":
            raise _err(path, key, "'teacher' is reserved for the teacher's line of the tables")
        body = _mapping(path, key, body, _ROW_KEYS[table])
        only = body.get("datasets")
        if only is not None:
            if not isinstance(only, list) or not only:
                raise _err(path, f"{key}.datasets", f"expected a list of datasets, got {only!r}")
            for d in only:
                if d not in datasets:
                    known = ", ".join(datasets)
                    raise _err(path, f"{key}.datasets", f"unknown dataset {d!r}; known: {known}")
        tuned = body.get("tuned")
        if tuned is not None and not isinstance(tuned, str):
            raise _err(path, f"{key}.tuned", f"expected a methods row name, got {tuned!r}")
        out[name] = Row(
            name=name,
            table=table,
            overrides=_str_list(path, f"{key}.overrides", body.get("overrides")),
            datasets=None if only is None else tuple(only),
            tuned=tuned,
        )
    return out


def _tuning(path: Path, raw: Any, seeds: tuple[int, ...], methods: dict[str, Row]) -> Tuning | None:
    if raw is None:
        return None
    raw = _mapping(path, "tuning", raw, None)
    seed = _int(path, "tuning.seed", raw.get("seed", seeds[0]))
    grids = {}
    for row, body in raw.items():
        if row == "seed":
            continue
        key = f"tuning.{row}"
        if row not in methods:
            raise _err(path, key, f"no such row in methods (rows: {', '.join(methods)})")
        body = _mapping(path, key, body, ("grid",))
        grid = _mapping(path, f"{key}.grid", body.get("grid"), None)
        if not grid:
            raise _err(path, f"{key}.grid", "needs at least one key with a list of values")
        pairs = []
        for gkey, values in grid.items():
            if not isinstance(gkey, str) or not gkey:
                raise _err(path, f"{key}.grid", f"bad key {gkey!r}")
            if not isinstance(values, list) or not values:
                raise _err(path, f"{key}.grid.{gkey}", f"expected a non-empty list, got {values!r}")
            pairs.append((gkey, tuple(values)))
        grids[row] = tuple(pairs)
    return Tuning(seed=seed, grids=grids)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        one_line = " ".join(str(exc).split())
        raise StudyError(f"{path}: not valid YAML: {one_line}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study file is a mapping at the top level")
    unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
    if unknown:
        raise _err(path, unknown[0], f"unknown key; valid keys: {', '.join(_TOP_KEYS)}")
    for key in ("name", "datasets", "seeds", "methods"):
        if key not in data:
            raise _err(path, key, "missing")
    return data


def _net(net: Any) -> tuple[str, dict] | None:
    """A network config as (name, kwargs); None for no network."""
    return None if net is None else (net.name, net.kwargs)


def _check_later_step(
    study: Study, key: str, cfg: ExperimentConfig, before: ExperimentConfig, who: str, what: str
) -> None:
    """Check a later step of a teacher or student: ``before``'s network, no weights of its own.

    ``who``: ``teacher`` or ``student``; ``what``: how the message names ``before``.
    """
    if _net(cfg.model) != _net(before.model):
        m, b = cfg.model, before.model
        raise study.fail(
            key,
            f"trains {m.name} {m.kwargs or ''}, {what} {b.name} {b.kwargs or ''}: each step "
            "starts from the previous one's weights, so every step trains the same network",
        )
    if cfg.model.checkpoint is not None:
        raise study.fail(
            key,
            f"sets model.checkpoint ({cfg.model.checkpoint}); a later {who} step starts from "
            "the previous step's best weights: remove it",
        )


def _load_students(study: Study, ds: str, spec: DatasetSpec) -> None:
    """Load a dataset's student config and its later steps, dataset overrides applied."""
    key = f"datasets.{ds}"
    loaded: list[ExperimentConfig] = []
    for i, step in enumerate((StudentStep(spec.student), *spec.student_steps)):
        skey = f"{key}.student[{i}]" if spec.student_steps else f"{key}.student"
        try:
            base = load_config(step.config)
        except ConfigError as exc:
            raise study.fail(skey, str(exc)) from None
        try:
            cfg = apply_overrides(base, list(spec.overrides))
        except ConfigError as exc:
            raise study.fail(f"{key}.overrides", str(exc)) from None
        try:
            apply_overrides(cfg, list(step.overrides))
        except ConfigError as exc:
            raise study.fail(f"{skey}.overrides", str(exc)) from None
        if loaded:
            _check_later_step(study, skey, cfg, loaded[0], "student", "the first step")
            if _net(cfg.teacher) != _net(loaded[0].teacher):
                raise study.fail(skey, "names another teacher network than the first step")
        loaded.append(cfg)
    study.students[ds] = loaded[0]
    study.student_steps[ds] = loaded[1:]
    study.student_step_overrides[ds] = [step.overrides for step in spec.student_steps]


def _load_configs(study: Study) -> None:
    """Load each dataset's student configs (with its overrides) and teacher configs."""
    for ds, spec in study.datasets.items():
        key = f"datasets.{ds}"
        _load_students(study, ds, spec)
        chain = [*spec.teacher_steps, *([spec.teacher] if spec.teacher else [])]
        loaded: list[ExperimentConfig] = []
        for i, path in enumerate(chain):
            tkey = f"{key}.teacher[{i}]" if spec.teacher_steps else f"{key}.teacher"
            try:
                teacher = load_config(path)
            except ConfigError as exc:
                raise study.fail(tkey, str(exc)) from None
            if is_distill(teacher):
                raise study.fail(
                    tkey,
                    f"{path} distills ({teacher.method.name}); a teacher trains alone: "
                    "set method.name: none or teacher: null in it",
                )
            if loaded:
                _check_later_step(study, tkey, teacher, loaded[-1], "teacher", "the step before it")
            loaded.append(teacher)
        study.teachers[ds] = loaded[-1] if loaded else None
        study.teacher_steps[ds] = loaded[:-1]


def load_study(path: str | Path) -> Study:
    """Read and validate a study file and load its base configs.

    The runs themselves (every override of every row, the tuning grids, the teacher
    checks) are validated by :func:`irkd.study.plan.validate_study`.

    Args:
        path: The study YAML.

    Returns:
        The study.

    Raises:
        StudyError: One line naming the study key (bad field, unknown key, missing file).
    """
    p = Path(path)
    data = _read_yaml(p)
    name = _name(p, "name", data["name"])
    threads = _int(p, "threads", data.get("threads", 1), 1)
    datasets = _datasets(p, data["datasets"])
    raw_seeds = data["seeds"]
    if not isinstance(raw_seeds, list) or not raw_seeds:
        raise _err(p, "seeds", f"expected a non-empty list of integers, got {raw_seeds!r}")
    seeds = tuple(_int(p, f"seeds[{i}]", s, 0) for i, s in enumerate(raw_seeds))
    if len(set(seeds)) != len(seeds):
        raise _err(p, "seeds", f"repeated seed in {list(seeds)}")
    methods = _rows(p, "methods", data["methods"], datasets)
    if not methods:
        raise _err(p, "methods", "needs at least one row")
    ablations = _rows(p, "ablations", data.get("ablations"), datasets)
    for name_ in ablations:
        if name_ in methods:
            raise _err(p, f"ablations.{name_}", "a methods row has the same name")
    for row in ablations.values():
        if row.tuned is None:
            continue
        if row.tuned not in methods:
            raise _err(p, f"ablations.{row.name}.tuned", f"no such methods row {row.tuned!r}")
        off = [d for d in datasets if row.on(d) and not methods[row.tuned].on(d)]
        if off:
            raise _err(p, f"ablations.{row.name}.tuned", f"{row.tuned} does not run on {off[0]}")
    reference = data.get("reference", next(iter(methods)))
    if reference not in methods:
        raise _err(p, "reference", f"{reference!r} is not a methods row ({', '.join(methods)})")
    ref_row = methods[reference]
    for row in [*methods.values(), *ablations.values()]:
        missing = [d for d in datasets if row.on(d) and not ref_row.on(d)]
        if missing:
            raise _err(
                p, "reference", f"{reference} does not run on {missing[0]}, where {row.name} does"
            )
    tuning = _tuning(p, data.get("tuning"), seeds, methods)
    if tuning is not None:
        for row in ablations.values():
            if row.tuned is not None and row.tuned not in tuning.grids:
                raise _err(p, f"ablations.{row.name}.tuned", f"{row.tuned} has no tuning grid")
    elif any(r.tuned for r in ablations.values()):
        bad = next(r for r in ablations.values() if r.tuned)
        raise _err(p, f"ablations.{bad.name}.tuned", "the study has no tuning section")
    study = Study(
        path=p,
        name=name,
        threads=threads,
        datasets=datasets,
        seeds=seeds,
        reference=reference,
        methods=methods,
        ablations=ablations,
        tuning=tuning,
    )
    _load_configs(study)
    return study
