"""The parity half of the release gate: a report's verdict, recomputed from its numbers.

:func:`irkd.gate.check_gate` reads a report, checks its types, versions and sha256, then
calls :func:`verify_checks`, which decides from the current case table
(:func:`parity.suite.all_cases`) and the current tolerances (:mod:`parity.tolerances`, the
derived bounds of :func:`parity.cases_train.expected_tolerance`), never from the report's
``passed``:

1. **Complete.** Not the quick set; both MindSpore modes; every case the full table has for
   the report's weights (``loss/``, ``method/``, ``net/<network>/``, ``train/``) has checks,
   the AdamW cases their well-conditioned checks
   (:func:`parity.cases_train.required_checks`), and no check belongs to a case the table
   does not have.
2. **Recomputed.** Each check's ``ratio`` is its largest ``|a - r| / (atol + rtol |r| +
   stol max|r|)`` under the tolerance it was made with. Against today's tolerance
   ``(atol', rtol', stol')`` the same errors give at most ``ratio * max_k(t_k / t'_k)`` over
   the three terms (a term that today's tolerance drops to 0 while the report's used it
   cannot be re-scaled: the check fails). A check passes when that bound is <= 1, its error
   is finite and it carries no error message. Internal consistency is checked where the
   numbers determine each other (``ratio == 0`` exactly when ``max_abs == 0``; an
   absolute-only tolerance gives ``ratio == max_abs / atol``).
3. **Gating.** Advisory checks (:func:`parity.cases_train.advisory`, today's rule) are
   reported back but do not decide.

This module imports no framework (the case table is built without running a case).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from irkd.gate import GateError
from irkd.zoo import MODELS

from .cases_net import MS_MODES
from .cases_train import advisory, expected_tolerance, required_checks
from .tolerances import TOLERANCES, Tolerance

__all__ = ["recompute_ratio", "required_cases", "verify_checks"]

_SHOWN = 3


def required_cases(networks: Mapping[str, str]) -> list[str]:
    """Names of the full case table for weights of ``networks`` (network -> file)."""
    from .suite import all_cases

    return [c.name for c in all_cases(dict(networks), MS_MODES)]


def _num(value: Any) -> float:
    return float(value)  # "inf"/"nan" strings included (types checked by irkd.gate)


def recompute_ratio(check: Mapping[str, Any], tol: Tolerance) -> float:
    """The largest possible err/tol of a report's check under ``tol`` (inf: cannot pass)."""
    ratio = _num(check["ratio"])
    if not math.isfinite(ratio) or ratio < 0:
        return math.inf
    factor = 0.0
    pairs = (
        (float(check["atol"]), tol.atol),
        (float(check["rtol"]), tol.rtol),
        (float(check.get("stol", 0.0)), tol.stol),
    )
    for used, now in pairs:
        if used == 0.0:
            continue
        if now == 0.0:
            return math.inf if ratio > 0 else 0.0
        factor = max(factor, used / now)
    if factor == 0.0:  # made with a zero tolerance: only an exact match passed
        return 0.0 if ratio == 0.0 else math.inf
    return ratio * factor


def _inconsistent(check: Mapping[str, Any]) -> str | None:
    """Why a check's numbers cannot come from one comparison (None: they can)."""
    max_abs, ratio = _num(check["max_abs"]), _num(check["ratio"])
    if not (math.isfinite(max_abs) and math.isfinite(ratio)):
        return None  # a non-finite error fails anyway
    if (max_abs == 0.0) != (ratio == 0.0):
        return f"max abs {max_abs:g} with err/tol {ratio:g}"
    atol, rtol, stol = float(check["atol"]), float(check["rtol"]), float(check.get("stol", 0))
    if (
        atol > 0
        and rtol == 0
        and stol == 0
        and not math.isclose(ratio, max_abs / atol, rel_tol=1e-6)
    ):
        return f"err/tol {ratio:g} but max abs / atol = {max_abs / atol:g}"
    return None


def verify_checks(
    report: Mapping[str, Any], path: Path, *, prefixes: Sequence[str] = ()
) -> dict[str, Any]:
    """Recompute a report's verdict; raise :class:`irkd.gate.GateError` unless it passes.

    Args:
        report: A report whose field types :func:`irkd.gate.read_report` checked.
        path: Its file (messages).
        prefixes: Require only the cases whose names start with one of these (the release's
            own re-run of the network cases); empty: the full case table.

    Returns:
        ``{"passed": True, "cases", "checks", "gating", "advisory", "advisory_outside"}``.
    """
    rerun = "re-run `irkd parity --weights ...` (the full set: no --quick, no --select)"
    if report["quick"]:
        raise GateError(f"parity report {path} ran the quick set only: {rerun}")
    modes = set(report["ms_modes"])
    if not set(MS_MODES) <= modes:
        raise GateError(
            f"parity report {path} covers MindSpore modes {sorted(modes)}, the gate needs "
            f"{list(MS_MODES)}: {rerun}"
        )
    networks = {net: str(info.get("path", "")) for net, info in report["weights"].items()}
    unknown = sorted(set(networks) - set(MODELS))
    if unknown:
        raise GateError(f"parity report {path} checked unregistered networks {unknown}")
    required = required_cases(networks)
    if prefixes:
        required = [n for n in required if n.startswith(tuple(prefixes))]
    present = {c["case"] for c in report["checks"]}
    missing = [n for n in required if n not in present]
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
        raise GateError(
            f"parity report {path} is incomplete: {len(missing)} of the {len(required)} cases "
            f"for {sorted(networks) or 'random weights'} are missing ({shown}): {rerun}"
        )
    whats: dict[str, set[str]] = {}
    for c in report["checks"]:
        whats.setdefault(c["case"], set()).add(c["what"])
    for case in required:
        if "run" in whats.get(case, ()):
            continue  # the case crashed: it fails below
        lacking = [w for w in required_checks(case) if w not in whats.get(case, ())]
        if lacking:
            raise GateError(
                f"parity report {path} is incomplete: case {case} lacks {len(lacking)} "
                f"check(s) the current suite makes (first: {lacking[0]}): {rerun}"
            )
    stray = sorted(present - set(required))
    if stray:
        raise GateError(
            f"parity report {path} has checks of case {stray[0]!r}, which the current case "
            f"table does not have for these weights: {rerun}"
        )
    failed: list[tuple[Mapping[str, Any], str]] = []
    n_gating = n_advisory = n_outside = 0
    for c in report["checks"]:
        case, what, family = c["case"], c["what"], c["family"]
        if c.get("error") is not None and not advisory(case, what):
            n_gating += 1  # a check that could not be made (a crashed case, a shape mismatch)
            failed.append((c, c["error"]))
            continue
        if case.startswith("train/"):
            tol = expected_tolerance(case, what, family)
        else:
            tol = TOLERANCES.get(family)
        if tol is None:
            raise GateError(
                f"parity report {path}: check {case} [{what}] of family {family!r} is not one "
                f"the current parity suite makes: {rerun}"
            )
        why = _inconsistent(c)
        if why is not None:
            raise GateError(
                f"parity report {path}: check {case} [{what}] is inconsistent ({why}): the "
                "report was edited or corrupted; re-run `irkd parity`"
            )
        ratio = recompute_ratio(c, tol)
        ok = c.get("error") is None and ratio <= 1.0
        if advisory(case, what):
            n_advisory += 1
            n_outside += not ok
            continue
        n_gating += 1
        if not ok:
            failed.append((c, c.get("error") or f"err/tol {ratio:.3g} under today's tolerance"))
    if failed:
        c, why = failed[0]
        claim = " (the report itself claims PASS)" if report.get("passed") is True else ""
        raise GateError(
            f"parity report {path} FAILED{claim}: {len(failed)} check(s) outside the current "
            f"tolerances, first: {c['case']} [{c['what']}]: {why}; no artifact is exported "
            "from weights whose parity check failed"
        )
    return {
        "passed": True,
        "cases": len(present),
        "checks": len(report["checks"]),
        "gating": n_gating,
        "advisory": n_advisory,
        "advisory_outside": n_outside,
    }
