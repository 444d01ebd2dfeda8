"""The parity case table: cases, comparisons, the runner and the JSON report.

A :class:`Case` has a name (``family/subject/variant``, e.g.
``loss/msa_awmse/hot-pixel/mask``), a tolerance family (:mod:`parity.tolerances`), whether it
belongs to the quick set, and a function that computes the same numbers in the
implementations it compares and returns :class:`Check` rows, one per compared quantity
(``value mindspore~numpy``, ``grad mindspore~pytorch``, ``logits``, ``enc2``, ...).

:func:`run_cases` runs a table, turns an exception inside a case into a failed check that
carries the case's name and the error, and :func:`build_report` assembles the JSON report
(versions, machine, weights with sha256, every check with its measured error next to its
tolerance, a summary of the largest error per family, pass/fail).
"""

from __future__ import annotations

import platform
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .tolerances import Tolerance, tolerance

__all__ = [
    "Case",
    "Check",
    "Context",
    "advisory_outside",
    "build_report",
    "compare",
    "failed_checks",
    "format_report",
    "run_cases",
    "select_cases",
]


@dataclass
class Check:
    """One compared quantity of a case.

    Attributes:
        case: The case name.
        what: The quantity and the pair compared, e.g. ``value mindspore~numpy``.
        family: Tolerance family.
        atol: Absolute tolerance used.
        rtol: Relative tolerance used.
        stol: Tolerance relative to the tensor's largest reference magnitude.
        max_abs: Largest ``|actual - reference|``.
        max_rel: Largest ``|actual - reference| / |reference|`` over elements with
            ``|reference| > 0`` (0 when there are none).
        ratio: Largest ``|actual - reference| / (atol + rtol * |reference| + stol * max|ref|)``;
            passes at <= 1.
        passed: Whether every element is within tolerance (and the shapes and finite
            patterns match).
        shape: Shape of the compared arrays.
        error: A message when the check could not be made (exception, shape mismatch).
        stol: Tolerance relative to the tensor's largest reference magnitude.
        gating: Whether the check decides the verdict. Advisory checks (``False``) are
            reported with their error against the same tolerance but do not fail the
            report: quantities that float32 chaos, not the implementations, moves apart
            (:func:`parity.cases_train.advisory`). The release gate applies the current rule,
            whatever a report's file says.
    """

    case: str
    what: str
    family: str
    atol: float
    rtol: float
    max_abs: float
    max_rel: float
    ratio: float
    passed: bool
    shape: tuple[int, ...] = ()
    error: str | None = None
    stol: float = 0.0
    gating: bool = True

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (non-finite floats as strings)."""

        def num(v: float) -> float | str:
            return float(v) if np.isfinite(v) else str(v)

        return {
            "case": self.case,
            "what": self.what,
            "family": self.family,
            "atol": self.atol,
            "rtol": self.rtol,
            "stol": self.stol,
            "max_abs": num(self.max_abs),
            "max_rel": num(self.max_rel),
            "ratio": num(self.ratio),
            "passed": self.passed,
            "shape": list(self.shape),
            "error": self.error,
            "gating": self.gating,
        }


def compare(
    case: str,
    what: str,
    actual: Any,
    reference: Any,
    family: str,
    tol: Tolerance | None = None,
) -> Check:
    """Compare two arrays (or scalars) under a family's tolerance.

    Args:
        case: Case name.
        what: The quantity and pair, e.g. ``logits mindspore~pytorch``.
        actual: The implementation under test.
        reference: The reference (the oracle, or PyTorch for framework-vs-framework checks).
        family: Tolerance family (:data:`parity.tolerances.TOLERANCES`).
        tol: Explicit tolerance overriding the family's (for case-dependent bounds).
    """
    t = tol or tolerance(family)
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        return Check(
            case, what, family, t.atol, t.rtol, np.inf, np.inf, np.inf, False, a.shape,
            error=f"shape {a.shape} != reference shape {r.shape}",
        )  # fmt: skip
    fin_a, fin_r = np.isfinite(a), np.isfinite(r)
    if not np.array_equal(fin_a, fin_r) or not np.array_equal(a[~fin_a], r[~fin_r], equal_nan=True):
        n = int(np.count_nonzero(fin_a != fin_r))
        return Check(
            case, what, family, t.atol, t.rtol, np.inf, np.inf, np.inf, False, a.shape,
            error=f"non-finite values differ ({n} elements finite in one and not the other)",
        )  # fmt: skip
    if a.size == 0 or not fin_a.any():
        return Check(case, what, family, t.atol, t.rtol, 0.0, 0.0, 0.0, True, a.shape)
    diff = np.abs(a[fin_a] - r[fin_r])
    ref = np.abs(r[fin_r])
    max_abs = float(diff.max())
    nz = ref > 0
    max_rel = float((diff[nz] / ref[nz]).max()) if nz.any() else 0.0
    bound = t.atol + t.rtol * ref + t.stol * float(ref.max())
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(bound > 0, diff / np.where(bound > 0, bound, 1.0), np.inf * (diff > 0))
    ratio = float(np.nan_to_num(ratios, nan=0.0).max())
    return Check(
        case, what, family, t.atol, t.rtol, max_abs, max_rel, ratio, ratio <= 1.0, a.shape,
        stol=t.stol,
    )  # fmt: skip


@dataclass
class Context:
    """What cases may read: trained weights by network, seed, the MindSpore modes to cover.

    Attributes:
        weights: Network name -> neutral safetensors file to check (None: seeded random
            weights for every registered network).
        seed: Seed of every generated input and random weight.
        ms_modes: MindSpore execution modes to cover (``graph``, ``pynative``).
        quick: Whether the quick set is running (cases may shrink inputs).
        cache: Scratch space shared by the cases of one run (built networks, weights).
    """

    weights: dict[str, str] | None = None
    seed: int = 0
    ms_modes: tuple[str, ...] = ("graph", "pynative")
    quick: bool = False
    cache: dict[str, Any] = field(default_factory=dict)


CaseFn = Callable[[Context], list[Check]]


@dataclass(frozen=True)
class Case:
    """A row of the case table.

    Attributes:
        name: ``family/subject/variant`` (unique).
        family: Tolerance family of its main quantity (checks may use others).
        fn: Computes the checks.
        quick: Part of the quick set (CI).
        needs: Network names whose weights the case uses (for ``--weights`` selection).
    """

    name: str
    family: str
    fn: CaseFn
    quick: bool = False
    needs: tuple[str, ...] = ()


def select_cases(
    cases: Sequence[Case], *, quick: bool = False, patterns: Iterable[str] = ()
) -> list[Case]:
    """The quick subset (when ``quick``) of the cases whose name starts with any pattern.

    Raises:
        ValueError: Duplicate case names, or a pattern that selects nothing.
    """
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate parity case names: {dup}")
    out = [c for c in cases if c.quick or not quick]
    pats = [p for p in patterns if p]
    if pats:
        for p in pats:
            if not any(c.name.startswith(p) for c in out):
                raise ValueError(f"no parity case starts with {p!r} (see irkd parity --list)")
        out = [c for c in out if any(c.name.startswith(p) for p in pats)]
    return out


def run_cases(
    cases: Sequence[Case],
    ctx: Context,
    progress: Callable[[Case, list[Check]], None] | None = None,
) -> tuple[list[Check], dict[str, float]]:
    """Run cases in order; an exception becomes a failed check naming the case.

    Returns:
        ``(checks, seconds by case)``.
    """
    checks: list[Check] = []
    seconds: dict[str, float] = {}
    for case in cases:
        t0 = time.perf_counter()
        try:
            got = list(case.fn(ctx))
            if not got:
                raise RuntimeError("the case produced no checks")
        except Exception as exc:  # noqa: BLE001 - a broken case is a failed case
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            t = tolerance(case.family)
            got = [
                Check(
                    case.name,
                    "run",
                    case.family,
                    t.atol,
                    t.rtol,
                    np.inf,
                    np.inf,
                    np.inf,
                    False,
                    error=tb,
                )  # fmt: skip
            ]
        seconds[case.name] = time.perf_counter() - t0
        checks.extend(got)
        if progress is not None:
            progress(case, got)
    return checks, seconds


def failed_checks(checks: Iterable[Check]) -> list[Check]:
    """The gating checks that did not pass (advisory checks never fail a run)."""
    return [c for c in checks if not c.passed and c.gating]


def advisory_outside(checks: Iterable[Check]) -> list[Check]:
    """The advisory (non-gating) checks outside their tolerance."""
    return [c for c in checks if not c.passed and not c.gating]


def _versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("mindspore", "torch"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001  pragma: no cover - both are dependencies
            out[mod] = "absent"
    return out


def build_report(
    checks: Sequence[Check],
    seconds: Mapping[str, float],
    *,
    ctx: Context,
    weights_info: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON report of a run.

    Args:
        checks: Every check.
        seconds: Seconds by case.
        ctx: The context the cases ran in.
        weights_info: Network -> ``{"path", "sha256", ...}`` of the weights checked (the
            release gate matches these sha256).
    """
    by_family: dict[str, dict[str, Any]] = {}
    for c in checks:
        fam = c.case.split("/")[0]
        row = by_family.setdefault(
            fam, {"checks": 0, "failed": 0, "max_abs": 0.0, "max_ratio": -1.0, "worst": None}
        )
        row["checks"] += 1
        if not c.gating:
            row["advisory"] = row.get("advisory", 0) + 1
            if not c.passed:
                row["advisory_outside"] = row.get("advisory_outside", 0) + 1
            continue
        row["failed"] += 0 if c.passed else 1
        if np.isfinite(c.max_abs):
            row["max_abs"] = max(row["max_abs"], c.max_abs)
        if c.ratio > row["max_ratio"] or row["worst"] is None:
            row["max_ratio"] = c.ratio
            row["worst"] = f"{c.case} [{c.what}]"
    for row in by_family.values():
        row["max_ratio"] = row["max_ratio"] if np.isfinite(row["max_ratio"]) else "inf"
    failed = failed_checks(checks)
    outside = advisory_outside(checks)
    cases = sorted({c.case for c in checks})
    return {
        "kind": "irkd-parity-report",
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "passed": not failed,
        "quick": ctx.quick,
        "seed": ctx.seed,
        "ms_modes": list(ctx.ms_modes),
        "weights": {k: dict(v) for k, v in (weights_info or {}).items()},
        "versions": _versions(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": _cpu_count(),
        },
        "counts": {
            "cases": len(cases),
            "checks": len(checks),
            "failed": len(failed),
            "advisory": sum(1 for c in checks if not c.gating),
            "advisory_outside": len(outside),
        },
        "failed_cases": sorted({c.case for c in failed}),
        "summary": by_family,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "checks": [c.to_json() for c in checks],
    }


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_ADVISORY = (
    "advisory (outside their tolerance, not gating: downstream of an AdamW step, see "
    "parity.cases_train.advisory):"
)


def format_report(report: Mapping[str, Any], *, all_checks: bool = False) -> str:
    """A text summary: per family the largest error against its tolerance, then failures."""
    lines = [
        f"parity: {report['counts']['cases']} cases, {report['counts']['checks']} checks, "
        f"{report['counts']['failed']} failed"
        + (
            f", {report['counts']['advisory_outside']} advisory outside their tolerance"
            if report["counts"].get("advisory_outside")
            else ""
        )
        + f" ({'quick set' if report['quick'] else 'full set'})",
        f"{'family':<10} {'checks':>6} {'failed':>6} {'max abs err':>12} "
        f"{'max err/tol':>11}  worst",
    ]
    for fam, row in sorted(report["summary"].items()):
        ratio = row["max_ratio"]
        ratio_s = ratio if isinstance(ratio, str) else f"{ratio:.3g}" if ratio >= 0 else "-"
        lines.append(
            f"{fam:<10} {row['checks']:>6} {row['failed']:>6} {row['max_abs']:>12.3g} "
            f"{ratio_s:>11}  {row['worst']}"
        )

    def gates(c: Mapping[str, Any]) -> bool:
        return bool(c.get("gating", True))

    rows = (
        report["checks"]
        if all_checks
        else [c for c in report["checks"] if not c["passed"] and gates(c)]
    )
    advisory = [c for c in report["checks"] if not c["passed"] and not gates(c)]
    for title, group in (("checks:" if all_checks else "FAILED:", rows), (_ADVISORY, advisory)):
        if not group or (all_checks and title == _ADVISORY):
            continue
        lines.append("")
        lines.append(title)
        for c in group:
            msg = c["error"] or (
                f"max abs {c['max_abs']}, max rel {c['max_rel']}, err/tol {c['ratio']} "
                f"(atol {c['atol']:g}, rtol {c['rtol']:g}, stol {c.get('stol', 0.0):g})"
            )
            state = ("ok  " if c["passed"] else "FAIL") if gates(c) else "adv "
            lines.append(f"  {state} {c['case']} [{c['what']}]: {msg}")
    lines.append("result: " + ("PASS" if report["passed"] else "FAIL"))
    return "\n".join(lines)
