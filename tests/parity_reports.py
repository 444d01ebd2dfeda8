"""Test helper: parity reports that the release gate accepts, without running the suite.

``complete_report(files)`` builds the report ``irkd parity --weights FILES`` would write if
every check came out exact: one check per case of the full table (:func:`parity.gate.
required_cases`) plus the checks a case must have (:func:`parity.cases_train.
required_checks`), each under its family's current tolerance, error 0. Tests then edit it to
show what the gate refuses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parity.cases_net import MS_MODES
from parity.cases_train import required_checks
from parity.core import Check, Context, build_report, compare
from parity.suite import all_cases, resolve_weights


def complete_checks(networks: dict[str, str]) -> list[Check]:
    """One exact check per case of the full table for ``networks`` (network -> file)."""
    checks = []
    for case in all_cases(networks, MS_MODES):
        if case.name.startswith("train/"):
            what, family = "loss step 1 mindspore~pytorch", "loss_trajectory"
        else:
            what, family = "value mindspore~pytorch", case.family
        checks.append(compare(case.name, what, 1.0, 1.0, family))
        for w in required_checks(case.name):
            fam = "loss_trajectory" if w.split(" step")[0] in ("loss", "task", "kd") else "stats"
            checks.append(compare(case.name, w, 1.0, 1.0, fam))
    return checks


def complete_report(files: Sequence[str | Path], extra: Sequence[Check] = ()) -> dict[str, Any]:
    """The report of a passing full run on ``files`` (plus ``extra`` checks)."""
    info = resolve_weights(files)
    networks = {k: v["path"] for k, v in info.items()}
    checks = complete_checks(networks) + list(extra)
    return build_report(checks, {}, ctx=Context(), weights_info=info)


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write a report as JSON; returns the path."""
    p = Path(path)
    p.write_text(json.dumps(report))
    return p
