"""The release gate: no artifact from weights without a passing parity report for them.

A report (``irkd parity --weights ... --out R.json``) lists the weights it checked with their
sha256 and every check with its measured error next to its tolerance. The gate does not
trust the report's own verdict (``passed``, ``counts``, ``failed_cases``): it accepts a
weights file only when

- the report is an IRKD parity report of the current format (``version``), every field it
  reads has the right type (else one line naming the field), and it was made with the
  MindSpore and PyTorch versions installed here;
- the file's sha256 is one of the report's checked weights, under the network the file's
  metadata names;
- the report ran the **complete** case table for its weights: not the quick set, both
  MindSpore modes, every ``loss/``, ``method/``, ``net/<network>/`` and ``train/`` case that
  ``irkd parity --weights ...`` runs today (a report of selected cases is refused);
- every gating check passes when its verdict is **recomputed** from its error and tolerance
  against the current tolerance table and bound derivations (:mod:`parity.gate`): a check
  made under a looser tolerance than today's is re-scaled to today's, an error message or a
  non-finite error fails it, and the advisory checks (AdamW steps after the first,
  :func:`parity.cases_train.advisory`) are decided by today's rule, not by the file.

What no file can prove is that its numbers were measured at all: a hand-written report with
plausible errors passes these checks. ``irkd release`` is meant to re-run the network cases
on the weights itself (see README, "What the release gate verifies").

The structural part (JSON, types, versions, sha256) is framework-free; the recomputation
lives in :mod:`parity.gate`, which reads the parity case table and tolerances without
importing either framework (the one import from irkd into parity that the boundary contract
allows, see ``pyproject.toml``), so the export and release commands still check the gate
before they import MindSpore or PyTorch.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from irkd.weights import WeightsError, load_neutral, sha256_file

__all__ = ["REPORT_VERSION", "GateError", "check_gate", "installed_versions", "read_report"]

REPORT_KIND = "irkd-parity-report"
#: The report format the gate reads (``parity.core.build_report`` writes it).
REPORT_VERSION = 1
#: Frameworks whose installed version must be the report's.
FRAMEWORKS = ("mindspore", "torch")


class GateError(ValueError):
    """The parity gate refuses: no report, a failed report, or weights it did not check."""


def read_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a parity report and check the type of every field the gate reads.

    Raises:
        GateError: Missing, unreadable, not a parity report, of another format version, or
            a field of the wrong type (one line naming the field).
    """
    p = Path(path)
    if not p.is_file():
        raise GateError(
            f"parity report {p} not found: run `irkd parity --weights <file> --out {p}` first "
            "(the release gate needs a passing parity report for these exact weights)"
        )
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GateError(f"parity report {p} is unreadable: {exc}") from None
    if not isinstance(report, dict) or report.get("kind") != REPORT_KIND:
        raise GateError(f"{p} is not an IRKD parity report (kind {REPORT_KIND!r} missing)")
    _check_types(report, p)
    if report["version"] != REPORT_VERSION:
        raise GateError(
            f"parity report {p} has format version {report['version']}; this irkd reads "
            f"version {REPORT_VERSION}: re-run `irkd parity`"
        )
    return report


# ----------------------------------------------------------------------------- types


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: Any, *, text_ok: bool = False) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return text_ok and isinstance(value, str) and value in ("inf", "-inf", "nan")


def _check_types(report: Mapping[str, Any], p: Path) -> None:
    """One :class:`GateError` naming the first field of the wrong type."""

    def bad(field: str, value: Any, expected: str) -> GateError:
        return GateError(
            f"parity report {p} is malformed: field {field} is {_kind(value)} "
            f"({str(value)[:40]!r}), expected {expected}; re-run `irkd parity`"
        )

    def need(field: str, ok: bool, value: Any, expected: str) -> None:
        if not ok:
            raise bad(field, value, expected)

    for key, tp, name in (
        ("version", int, "an integer"),
        ("quick", bool, "true or false"),
        ("ms_modes", list, "a list"),
        ("weights", dict, "a mapping"),
        ("versions", dict, "a mapping"),
        ("checks", list, "a list"),
    ):
        value = report.get(key)
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        need(key, ok, value, name)
    for i, mode in enumerate(report["ms_modes"]):
        need(f"ms_modes[{i}]", isinstance(mode, str), mode, "a string")
    for net, info in report["weights"].items():
        need(f"weights.{net}", isinstance(info, dict), info, "a mapping")
        sha = info.get("sha256")
        ok = isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)
        need(f"weights.{net}.sha256", ok, sha, "a sha256 (64 hex digits)")
    for name, version in report["versions"].items():
        need(f"versions.{name}", isinstance(version, str), version, "a string")
    for i, c in enumerate(report["checks"]):
        where = f"checks[{i}]"
        need(where, isinstance(c, dict), c, "a mapping")
        for key in ("case", "what", "family"):
            need(f"{where}.{key}", isinstance(c.get(key), str), c.get(key), "a string")
        for key in ("atol", "rtol", "stol"):
            value = c.get(key, 0.0) if key == "stol" else c.get(key)
            ok = _is_number(value) and math.isfinite(value) and value >= 0
            need(f"{where}.{key}", ok, value, "a finite number >= 0")
        for key in ("max_abs", "max_rel", "ratio"):
            value = c.get(key)
            need(f"{where}.{key}", _is_number(value, text_ok=True), value, "a number")
        err = c.get("error")
        need(f"{where}.error", err is None or isinstance(err, str), err, "a string or null")


# ----------------------------------------------------------------------------- versions


def installed_versions() -> dict[str, str]:
    """Installed distribution versions of :data:`FRAMEWORKS` (absent ones left out).

    Read from the package metadata: nothing is imported.
    """
    out: dict[str, str] = {}
    for name in FRAMEWORKS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _check_versions(report: Mapping[str, Any], p: Path) -> None:
    stated = report["versions"]
    for name, here in installed_versions().items():
        there = stated.get(name)
        if there != here:
            raise GateError(
                f"parity report {p} was made with {name} {there or '(none)'}, this environment "
                f"has {name} {here}: the artifacts would come from code the report did not "
                "check; re-run `irkd parity` here"
            )


# ----------------------------------------------------------------------------- the gate


def check_gate(
    report_path: str | os.PathLike[str], weights: Iterable[str | os.PathLike[str]]
) -> dict[str, Any]:
    """Pass the gate or raise; returns the report with the gate's own findings.

    Args:
        report_path: The parity report (JSON).
        weights: The weights files about to be exported.

    Returns:
        The report, plus ``"gate"``: the recomputed counts (``checks``, ``gating``,
        ``advisory``, ``advisory_outside``, ``cases``) and ``passed: True``.

    Raises:
        GateError: One line: a missing, malformed, incomplete or failing report (the
            verdict recomputed against the current tolerances), other framework versions,
            or a file whose sha256 is not among the weights the report checked.
    """
    p = Path(report_path)
    report = read_report(p)
    _check_versions(report, p)
    checked = {str(info["sha256"]): net for net, info in report["weights"].items()}
    for w in weights:
        try:
            digest = sha256_file(w)
            _, meta = load_neutral(w)
        except WeightsError as exc:
            raise GateError(str(exc)) from None
        if digest not in checked:
            raise GateError(
                f"{w} (sha256 {digest[:12]}...) is not covered by parity report {p}: "
                f"it checked {sorted(checked.values()) or 'random weights only'}; run "
                f"`irkd parity --weights {w}` for these exact weights"
            )
        stored = meta.get("network")
        if stored != checked[digest]:
            raise GateError(
                f"parity report {p} lists {w} (sha256 {digest[:12]}...) as "
                f"{checked[digest]!r}, but the file holds {stored or 'no network name'!r}"
            )
    from parity.gate import verify_checks  # framework-free (see the module docstring)

    report["gate"] = verify_checks(report, p)
    return report
