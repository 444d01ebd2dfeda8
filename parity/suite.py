"""The whole parity suite: the case table, a run, and the report file (``irkd parity``).

The table is the concatenation of three families (each module returns ``list[Case]``):

- ``loss/...``, ``method/...`` (:mod:`parity.cases_loss`): MSA, L2 normalisation, AWMSE, the
  connector, SoftIoU and every baseline loss, three ways (numpy oracle, MindSpore, PyTorch)
  for values and two ways for input gradients;
- ``net/...`` (:mod:`parity.cases_net`): every registered network (or the networks of the
  given weights), eval and train mode, parameter gradients, both MindSpore modes;
- ``train/...`` (:mod:`parity.cases_train`): N distillation steps with SGD and AdamW.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from irkd.files import write_json_atomic
from irkd.weights import WeightsError, load_neutral, sha256_file
from irkd.zoo import MODELS, stage_channels

from .core import Case, Check, Context, build_report, failed_checks, run_cases, select_cases

__all__ = [
    "NETWORK_CASES",
    "all_cases",
    "recheck_networks",
    "resolve_weights",
    "run_parity",
    "train_pair",
]


def resolve_weights(files: Iterable[str | os.PathLike[str]]) -> dict[str, dict[str, Any]]:
    """Network -> ``{"path", "sha256", "network"}`` for neutral weights files.

    The network is read from the file's metadata (a run's ``best.safetensors`` has it).

    Raises:
        WeightsError: A missing or non-neutral file, no network in its metadata, an
            unregistered network, or two files for the same network.
    """
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        p = Path(f)
        if p.suffix.lower() != ".safetensors":
            raise WeightsError(
                f"{p}: parity checks neutral .safetensors weights (convert with "
                "`irkd weights convert SRC DST.safetensors --network NAME`)"
            )
        if not p.is_file():
            raise WeightsError(f"weights file {p} not found")
        _, meta = load_neutral(p)
        net = meta.get("network")
        if not net:
            raise WeightsError(f"{p}: no network name in its metadata")
        if net not in MODELS:
            raise WeightsError(f"{p}: network {net!r} is not registered")
        if net in out:
            raise WeightsError(
                f"two weights files for {net!r} ({out[net]['path']} and {p}): one report "
                "checks one file per network; run irkd parity once per file"
            )
        out[net] = {"path": str(p.resolve()), "sha256": sha256_file(p), "network": net}
    return out


def train_pair(weights: dict[str, str] | None) -> dict[str, str]:
    """Teacher and student of the training cases: the two given networks (the wider one
    teaches), else the cpu-bench pair (``parity.cases_train`` defaults).
    """  # noqa: D205
    if not weights or len(weights) != 2:
        return {}
    a, b = sorted(weights, key=lambda n: (stage_channels(n)["enc4"], n), reverse=True)
    return {"teacher": a, "student": b}


def all_cases(
    weights: dict[str, str] | None = None, ms_modes: Sequence[str] = ("graph", "pynative")
) -> list[Case]:
    """The full case table (quick cases are flagged ``quick=True``).

    Args:
        weights: Network -> neutral weights file; None checks seeded random weights.
        ms_modes: MindSpore modes to cover.
    """
    from .cases_loss import loss_cases
    from .cases_net import network_cases
    from .cases_train import train_cases

    return [
        *loss_cases(),
        *network_cases(weights, ms_modes=tuple(ms_modes)),
        *train_cases(ms_modes=tuple(ms_modes), **train_pair(weights)),
    ]


def run_parity(
    *,
    weights: Sequence[str | os.PathLike[str]] = (),
    quick: bool = False,
    select: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    ms_modes: Sequence[str] = ("graph", "pynative"),
    quiet: bool = False,
    cases: Sequence[Case] | None = None,
) -> dict[str, Any]:
    """Run the parity suite and write its JSON report.

    Args:
        weights: Neutral weights files to check (trained networks); empty: seeded random
            weights for every registered network.
        quick: The quick set only (CI).
        select: Case-name prefixes to run (all when empty).
        out: Report path (None: not written).
        seed: Seed of inputs and random weights.
        ms_modes: MindSpore modes to cover.
        quiet: No progress output.
        cases: A case table to run instead of :func:`all_cases` (tests).

    Returns:
        The report (see :func:`parity.core.build_report`).
    """
    info = resolve_weights(weights)
    wmap = {k: v["path"] for k, v in info.items()} or None
    table = list(cases) if cases is not None else all_cases(wmap, ms_modes)
    chosen = select_cases(table, quick=quick, patterns=select)
    ctx = Context(weights=wmap, seed=seed, ms_modes=tuple(ms_modes), quick=quick)
    progress = None if quiet else _progress(len(chosen))
    checks, seconds = run_cases(chosen, ctx, progress)
    report = build_report(checks, seconds, ctx=ctx, weights_info=info)
    if out is not None:
        write_json_atomic(Path(out), report)
    return report


def _progress(total: int) -> Callable[[Case, list[Check]], None]:
    done = [0]

    def show(case: Case, checks: list[Check]) -> None:
        done[0] += 1
        bad = failed_checks(checks)
        worst = max((c.ratio for c in checks if c.gating), default=0.0)
        state = "FAIL" if bad else "ok"
        adv = sum(1 for c in checks if not c.gating and not c.passed)
        note = f"; {adv} advisory outside" if adv else ""
        print(
            f"[{done[0]:>3}/{total}] {state:<4} {case.name}  (err/tol {worst:.3g}{note})",
            file=sys.stderr,
            flush=True,
        )

    return show


NETWORK_CASES = "net/"
"""Name prefix of the network cases (forward in both MindSpore modes, BatchNorm statistics,
gradients) that ``irkd release`` re-runs on the weights it ships."""


def recheck_networks(
    weights: Sequence[str | os.PathLike[str]], *, out: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Re-run the network cases on ``weights`` and recompute their verdict (the release).

    A parity report is a file: whoever can write it can make it say PASS. ``irkd release``
    therefore checks the networks itself, on the exact files it ships, and decides on the
    current tolerance table (``parity.gate.verify_checks`` over the ``net/`` cases).

    Args:
        weights: The neutral weights files about to be released.
        out: Where to keep the re-run's report (None: not written).

    Returns:
        ``{"ran": True, "cases", "checks", "gating", "seconds", "worst_ratio"}``.

    Raises:
        irkd.gate.GateError: A network case fails or crashed (one line).
    """
    from .gate import verify_checks

    report = run_parity(weights=weights, select=[NETWORK_CASES], out=out, quiet=True)
    verdict = verify_checks(report, Path("(the release's own re-run)"), prefixes=[NETWORK_CASES])
    worst = max((float(c["ratio"]) for c in report["checks"] if c.get("gating")), default=0.0)
    return {
        "ran": True,
        "cases": verdict["cases"],
        "checks": verdict["checks"],
        "gating": verdict["gating"],
        "seconds": round(sum(report["seconds"].values()), 1),
        "worst_ratio": worst,
    }
