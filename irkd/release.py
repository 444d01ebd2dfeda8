"""Release builds (``irkd release``): parity gate, both backends' artifacts, a manifest.

Why this module is long: ``build_release`` is one transaction (gate, build, evaluate, time,
manifest, move into place), and ``check_out``, which decides what ``--overwrite`` may
replace, guards it; both need the rules written below.

Framework-free orchestration. The CLI passes in one :class:`ReleaseBackend` per target
(``deploy_ascend.release`` for Ascend, ``deploy_jetson.release`` for Jetson) and an
``evaluate`` callable; this module

1. refuses weights without a passing parity report for those exact files
   (:func:`irkd.gate.check_gate`, sha256);
2. builds the release in a temporary sibling folder (:func:`irkd.files.atomic_dir`): a copy of
   each weights file, then each backend's artifacts for teacher and student, each re-checked
   against its eager network by the backend (an error aborts the release);
3. evaluates the student's metrics on the test split of its dataset;
4. measures teacher and student latency on each backend's runtimes (same process, so the
   speedup ratio compares like with like);
5. writes ``manifest.json`` (every file with its sha256 and size, the input spec and
   normalisation, metrics, the parity summary, latency, tool versions, converter and trtexec
   commands) and only then moves the folder into place. A failed step leaves no partial
   release behind.

What ``--overwrite`` may replace
================================

Every export and release folder holds a marker, :data:`MARKER` (``.irkd-artifact.json``:
the kind, ``irkd-export`` or ``irkd-release``, and the files written). ``overwrite=True``
replaces an existing ``out`` only when it is recognisably an earlier output of the same
command (:func:`check_out`):

- it is a folder holding the marker, of the same kind, and no file that the marker does not
  list (nothing the user added would be lost);
- it is neither the current folder nor one of its parents;
- it holds none of the inputs (the weights files, the parity report) and is not inside one
  of them.

Anything else is refused with one line, before the gate or any framework runs; a folder
that does not exist yet is always fine. ``out`` is resolved first, so ``--out .`` names
the folder itself (the swap never renames ``.``, and no temporary folder is left behind).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irkd.files import atomic_dir, file_mode, write_json_atomic
from irkd.gate import check_gate
from irkd.weights import extra_metadata, load_neutral, sha256_file

__all__ = [
    "MARKER",
    "ModelInfo",
    "ReleaseBackend",
    "ReleaseError",
    "build_release",
    "check_out",
    "export_model",
    "input_spec",
    "model_info",
    "speedups",
]

ROLES = ("teacher", "student")
#: The file that makes a folder recognisable as an export or release of this tool.
MARKER = ".irkd-artifact.json"
_KINDS = {"irkd-export": "export", "irkd-release": "release"}
_SUMMARIES = ("manifest.json", "export.json")


class ReleaseError(RuntimeError):
    """A release step failed (an artifact that does not match its eager network, ...)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the release needs to know about one weights file.

    Attributes:
        role: ``teacher`` or ``student``.
        path: The neutral weights file.
        network: Registered network name (from the file's metadata).
        kwargs: Constructor kwargs stored with the weights.
        mean: Input normalisation mean (grey levels).
        std: Input normalisation std.
        multiple: Padding multiple at evaluation.
        data_root: Dataset the network was trained on (metadata), if known.
        sha256: Of the weights file.
    """

    role: str
    path: Path
    network: str
    kwargs: dict[str, Any]
    mean: float
    std: float
    multiple: int
    data_root: str | None
    sha256: str


def model_info(role: str, path: str | os.PathLike[str]) -> ModelInfo:
    """Read a run's ``best.safetensors`` metadata.

    Raises:
        ReleaseError: No network name or normalisation stored (not a run's weights file).
    """
    p = Path(path)
    _, meta = load_neutral(p)
    extra = extra_metadata(meta)
    network = meta.get("network")
    if not network:
        raise ReleaseError(f"{p}: no network name in its metadata (use a run's best.safetensors)")
    if extra.get("mean") is None or extra.get("std") is None:
        raise ReleaseError(
            f"{p}: no input normalisation (mean/std) in its metadata: a release needs the "
            "weights a training run wrote (best.safetensors)"
        )
    return ModelInfo(
        role=role,
        path=p.resolve(),
        network=str(network),
        kwargs=dict(extra.get("kwargs") or {}),
        mean=float(extra["mean"]),
        std=float(extra["std"]),
        multiple=int(extra.get("eval_multiple") or 32),
        data_root=extra.get("data_root"),
        sha256=sha256_file(p),
    )


def input_spec(info: ModelInfo, height: int = 256, width: int = 256) -> dict[str, Any]:
    """The artifacts' input contract."""
    return {
        "name": "image",
        "names": {"onnx": "image", "mindir": "x"},
        "shape": [1, 1, height, width],
        "dtype": "float32",
        "layout": "NCHW",
        "normalization": {
            "mean": info.mean,
            "std": info.std,
            "formula": "x = (grey - mean) / std, grey the 8-bit grayscale value (0..255)",
        },
        "padding": f"pad H and W to a multiple of {info.multiple} with x = 0 (dynamic models)",
        "output": {
            "name": "logits",
            "shape": [1, 1, height, width],
            "meaning": "target where sigmoid(logits) > 0.5",
        },
    }


@dataclass
class ReleaseBackend:
    """One deployment target, as the CLI wires it.

    Attributes:
        name: Folder and manifest key (``ascend``, ``jetson``).
        export: ``export(info, out_dir, spec) -> dict``: writes the artifacts of one model
            into ``out_dir``, re-checks each against the eager network and returns
            ``{"artifacts": {...}, "checks": {...}, "commands": {...}}``; raises on a
            failed check.
        latency: ``latency(infos, out_dirs) -> dict``: runtime -> role -> figures (ms), for
            teacher and student measured in one process.
        versions: Tool versions of the target.
    """

    name: str
    export: Callable[[ModelInfo, Path, dict[str, Any]], dict[str, Any]]
    latency: Callable[[Mapping[str, ModelInfo], Mapping[str, Path]], dict[str, Any]] | None = None
    versions: Callable[[], dict[str, str]] = field(default=lambda: {})


def speedups(latency: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Runtime -> teacher median / student median (how many times faster the student is)."""
    out: dict[str, float] = {}
    for runtime, roles in latency.items():
        t = (roles.get("teacher") or {}).get("median_ms")
        s = (roles.get("student") or {}).get("median_ms")
        if t and s:
            out[runtime] = float(t) / float(s)
    return out


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


def check_out(
    out: str | os.PathLike[str],
    kind: str,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    overwrite: bool,
) -> Path:
    """Refuse an output folder that ``--overwrite`` must not replace; return it resolved.

    See the module docstring ("What ``--overwrite`` may replace").

    Args:
        out: The export or release folder.
        kind: ``irkd-export`` or ``irkd-release``.
        inputs: The files the command reads (weights, parity report).
        overwrite: Whether replacing an existing folder was asked for.

    Raises:
        FileExistsError: ``out`` exists and may not (or was not asked to) be replaced; the
            message says why.
    """
    what = _KINDS[kind]
    given = Path(out)
    target = given.resolve()
    for f in inputs:
        src = Path(f).resolve()
        if _inside(src, target):
            raise FileExistsError(
                f"--out {given} holds the input {f}: the {what} would replace the file it is "
                f"made from; choose another --out"
            )
        if _inside(target, src):
            raise FileExistsError(f"--out {given} lies inside the input {f}: choose another --out")
    if not target.exists() and not target.is_symlink():
        return target
    if not overwrite:
        raise FileExistsError(f"{given} exists: choose another --out or pass --overwrite")
    if _inside(Path.cwd().resolve(), target):
        raise FileExistsError(
            f"--out {given} is the current folder or one of its parents: --overwrite never "
            "replaces it; choose another --out"
        )
    if not target.is_dir():
        raise FileExistsError(
            f"--out {given} is a file, not an earlier {what} folder: --overwrite only replaces "
            f"a folder written by `irkd {what}`"
        )
    marker = _read_marker(target)
    if marker is None:
        raise FileExistsError(
            f"--out {given} is not an earlier {what} (no {MARKER} in it): --overwrite only "
            f"replaces a folder written by `irkd {what}`; choose another --out"
        )
    if marker.get("kind") != kind:
        raise FileExistsError(
            f"--out {given} holds an {_KINDS.get(str(marker.get('kind')), 'unknown')} output, "
            f"not an {what}: --overwrite only replaces an earlier {what}"
        )
    listed = set(marker.get("files") or []) | {MARKER, *_SUMMARIES}
    extra = sorted(
        p.relative_to(target).as_posix()
        for p in target.rglob("*")
        if not p.is_dir() and p.relative_to(target).as_posix() not in listed
    )
    if extra:
        shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        raise FileExistsError(
            f"--out {given} holds {len(extra)} file(s) that the earlier {what} did not write "
            f"({shown}): --overwrite would delete them; move them out or choose another --out"
        )
    return target


def _read_marker(folder: Path) -> dict[str, Any] | None:
    p = folder / MARKER
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _finish(tmp: Path, kind: str) -> None:
    """Write the marker (listing every file) and give the folder the umask's mode."""
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir())
    write_json_atomic(tmp / MARKER, {"kind": kind, "version": 1, "files": files})
    # atomic_dir's temporary folder comes from mkdtemp (0o700): like any new folder instead.
    os.chmod(tmp, file_mode(0o777))


def _files(root: Path) -> list[dict[str, Any]]:
    rows = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in (*_SUMMARIES, MARKER):
            rows.append(
                {
                    "path": p.relative_to(root).as_posix(),
                    "bytes": p.stat().st_size,
                    "sha256": sha256_file(p),
                }
            )
    return rows


def build_release(
    teacher: str | os.PathLike[str],
    student: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    report: str | os.PathLike[str],
    backends: Sequence[ReleaseBackend],
    evaluate: Callable[[ModelInfo, Path], dict[str, Any]] | None = None,
    overwrite: bool = False,
    recheck: Callable[[Sequence[Path]], Mapping[str, Any]] | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Build a gated release; returns the manifest.

    Args:
        teacher: Teacher weights (neutral safetensors from a run).
        student: Student weights.
        out: Release folder (must not exist unless ``overwrite``).
        report: Parity report covering both weights files (``irkd parity --weights``).
        backends: Targets to build.
        evaluate: ``evaluate(student_info, release_dir) -> metrics`` on the test split (None:
            no metrics).
        overwrite: Replace an existing release folder (only once the new one is complete, and
            only an earlier release: see :func:`check_out`).
        recheck: ``recheck([teacher, student])`` re-runs the network parity cases on the
            weights themselves (``parity.suite.recheck_networks``; the CLI's default) and
            raises unless they pass; what it returns goes to the manifest under
            ``parity.recheck``. None: skipped, and the manifest says so.
        say: Progress messages.

    Raises:
        irkd.gate.GateError: No passing parity report for these exact weights, or the
            re-run of the network cases failed.
        ReleaseError: A step failed; nothing is left at ``out``.
        FileExistsError: ``out`` exists and ``overwrite`` is false, or ``out`` is not a
            folder ``overwrite`` may replace (:func:`check_out`).
    """
    out = check_out(out, "irkd-release", [teacher, student, report], overwrite=overwrite)
    parity = check_gate(report, [teacher, student])
    infos = {"teacher": model_info("teacher", teacher), "student": model_info("student", student)}
    say(
        f"parity gate passed ({report}): teacher {infos['teacher'].network}, "
        f"student {infos['student'].network}"
    )
    if recheck is not None:
        say("re-running the network parity cases on these weights (--no-recheck skips it)")
        rechecked: dict[str, Any] = dict(recheck([Path(teacher), Path(student)]))
        say(
            f"network parity re-run passed: {rechecked.get('checks')} checks, worst err/tol "
            f"{float(rechecked.get('worst_ratio', 0.0)):.3g}"
        )
    else:
        rechecked = {"ran": False, "why": "skipped (--no-recheck): the report file alone decided"}
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        artifacts: dict[str, dict[str, Any]] = {}
        dirs: dict[str, dict[str, Path]] = {}
        (tmp / "weights").mkdir()
        for role, info in infos.items():
            shutil.copy2(info.path, tmp / "weights" / f"{role}.safetensors")
        for backend in backends:
            artifacts[backend.name] = {}
            dirs[backend.name] = {}
            for role, info in infos.items():
                sub = tmp / backend.name / role
                sub.mkdir(parents=True)
                say(f"[{backend.name}] exporting the {role} ({info.network})")
                try:
                    result = backend.export(info, sub, input_spec(info))
                except ReleaseError:
                    raise
                except Exception as exc:
                    raise ReleaseError(
                        f"[{backend.name}] {role} ({info.network}): {type(exc).__name__}: {exc}"
                    ) from exc
                artifacts[backend.name][role] = _relative(result, tmp)
                dirs[backend.name][role] = sub
        metrics = None
        if evaluate is not None:
            say("evaluating the student on its test split")
            metrics = evaluate(infos["student"], tmp)
        latency: dict[str, Any] = {}
        for backend in backends:
            if backend.latency is None:
                continue
            say(f"[{backend.name}] measuring latency (teacher and student, batch 1)")
            latency.update(backend.latency(infos, dirs[backend.name]))
        versions = {"python": platform.python_version()}
        for backend in backends:
            versions.update(backend.versions())
        manifest = {
            "kind": "irkd-release",
            "version": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "models": {
                role: {
                    "network": info.network,
                    "kwargs": info.kwargs,
                    "weights": f"weights/{role}.safetensors",
                    "weights_sha256": info.sha256,
                    "source": str(info.path),
                    "data_root": info.data_root,
                }
                for role, info in infos.items()
            },
            "input": input_spec(infos["student"]),
            "artifacts": artifacts,
            "metrics": {"student": metrics},
            "parity": {
                "report": str(Path(report).resolve()),
                "report_sha256": sha256_file(report),
                "passed": parity["gate"]["passed"],
                "gate": parity["gate"],
                "quick": parity.get("quick"),
                "counts": parity.get("counts"),
                "summary": parity.get("summary"),
                "recheck": rechecked,
            },
            "latency": latency,
            "speedup_teacher_over_student": speedups(latency),
            "versions": versions,
            "machine": {"platform": platform.platform(), "processor": platform.machine()},
            "build_seconds": None,
            "files": [],
        }
        manifest["files"] = _files(tmp)
        manifest["build_seconds"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(tmp / "manifest.json", manifest)
        _finish(tmp, "irkd-release")
    say(f"release written: {out}")
    return manifest


def export_model(
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    report: str | os.PathLike[str],
    backends: Sequence[ReleaseBackend],
    role: str = "model",
    overwrite: bool = False,
    say: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Export one model's artifacts (``irkd export``), gated like a release.

    Writes ``out/<backend>/`` and ``out/export.json`` (artifacts, checks, commands, sha256 of
    every file) atomically.

    Raises:
        irkd.gate.GateError: No passing parity report for these exact weights.
        ReleaseError: An export step failed; nothing is left at ``out``.
        FileExistsError: ``out`` exists and may not be replaced (:func:`check_out`).
    """
    out = check_out(out, "irkd-export", [weights, report], overwrite=overwrite)
    parity = check_gate(report, [weights])
    info = model_info(role, weights)
    with atomic_dir(out) as tmp:
        results: dict[str, Any] = {}
        for backend in backends:
            sub = tmp / backend.name
            sub.mkdir()
            say(f"[{backend.name}] exporting {info.network}")
            try:
                results[backend.name] = _relative(backend.export(info, sub, input_spec(info)), tmp)
            except Exception as exc:
                raise ReleaseError(
                    f"[{backend.name}] {info.network}: {type(exc).__name__}: {exc}"
                ) from exc
        summary = {
            "kind": "irkd-export",
            "network": info.network,
            "weights_sha256": info.sha256,
            "parity_report": str(Path(report).resolve()),
            "parity_gate": parity["gate"],
            "input": input_spec(info),
            "artifacts": results,
            "files": _files(tmp),
        }
        write_json_atomic(tmp / "export.json", summary)
        _finish(tmp, "irkd-export")
    return summary


def _relative(obj: Any, root: Path) -> Any:
    """Paths inside ``root`` as relative POSIX strings (recursively)."""
    if isinstance(obj, Path):
        try:
            return obj.relative_to(root).as_posix()
        except ValueError:
            return str(obj)
    if isinstance(obj, Mapping):
        return {k: _relative(v, root) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_relative(v, root) for v in obj]
    return obj
