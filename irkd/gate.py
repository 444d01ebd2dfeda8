"""The release gate: no artifact from weights without a passing parity report for them.

Framework-free (json and sha256 only), so the export and release commands check the gate
before they import either framework. A report (``irkd parity --weights ... --out R.json``)
lists the weights it checked with their sha256; the gate accepts a weights file only when

- the report is an IRKD parity report that passed (no failed check), and
- the file's sha256 is one of the report's checked weights, and the report ran the network
  cases for it (``net/<network>/...`` checks exist for that network).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from irkd.weights import sha256_file

__all__ = ["GateError", "check_gate", "read_report"]

REPORT_KIND = "irkd-parity-report"


class GateError(ValueError):
    """The parity gate refuses: no report, a failed report, or weights it did not check."""


def read_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a parity report.

    Raises:
        GateError: Missing, unreadable, or not a parity report.
    """
    p = Path(path)
    if not p.is_file():
        raise GateError(
            f"parity report {p} not found: run `irkd parity --weights <file> --out {p}` first "
            "(the release gate needs a passing parity report for these exact weights)"
        )
    try:
        report = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GateError(f"parity report {p} is unreadable: {exc}") from None
    if not isinstance(report, dict) or report.get("kind") != REPORT_KIND:
        raise GateError(f"{p} is not an IRKD parity report (kind {REPORT_KIND!r} missing)")
    return report


def check_gate(
    report_path: str | os.PathLike[str], weights: Iterable[str | os.PathLike[str]]
) -> dict[str, Any]:
    """Pass the gate or raise; returns the report.

    Args:
        report_path: The parity report (JSON).
        weights: The weights files about to be exported.

    Raises:
        GateError: The report is missing or failed, or a file's sha256 is not among the
            weights the report checked with its network cases.
    """
    report = read_report(report_path)
    if not report.get("passed") or report.get("counts", {}).get("failed", 1) != 0:
        failed = report.get("failed_cases") or ["?"]
        raise GateError(
            f"parity report {report_path} FAILED ({len(failed)} case(s), first: {failed[0]}): "
            "no artifact is exported from weights whose parity check failed"
        )
    checked = {str(info.get("sha256")): net for net, info in (report.get("weights") or {}).items()}
    nets_with_cases = {
        c["case"].split("/")[1]
        for c in report.get("checks", [])
        if c.get("case", "").startswith("net/") and c["case"].count("/") >= 2
    }
    for w in weights:
        digest = sha256_file(w)
        if digest not in checked:
            raise GateError(
                f"{w} (sha256 {digest[:12]}...) is not covered by parity report {report_path}: "
                f"it checked {sorted(checked.values()) or 'random weights only'}; run "
                f"`irkd parity --weights {w}` for these exact weights"
            )
        if checked[digest] not in nets_with_cases:
            raise GateError(
                f"parity report {report_path} lists {w} but ran no network case for "
                f"{checked[digest]!r}"
            )
    return report
