"""Run a study: schedule its runs as subprocesses, resume what was interrupted, report.

Why this module is long: ``StudyRunner`` is one scheduler whose methods share its state (the
running children, the signals, what is done and what resumes).

Each run is ``python -m irkd.cli train|distill <run>/study-config.yaml --out <run>
[--resume]`` in its own process (``IRKD_TORCH_THREADS``, ``OMP_NUM_THREADS`` = the study's
threads, ``OMP_WAIT_POLICY=PASSIVE``; ``ONEDNN_MAX_CPU_ISA=AVX2`` for MindSpore), with its
output in ``<run>/study.log``. A child gets ``SIGKILL`` when the study process dies
(``PR_SET_PDEATHSIG``) and ``SIGTERM`` when the study is interrupted, so a restarted study
never races an orphan. Restarting the study skips finished runs, resumes runs from their
last checkpoint and restarts (after clearing) runs that died before their first one.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import fnmatch
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irkd.config import ConfigError, load_config, save_config
from irkd.data.prepare import resolve_dataset
from irkd.dist import free_port, launch_command, launch_env
from irkd.files import write_json_atomic, write_text_atomic
from irkd.rundir import run_signature
from irkd.study.plan import Plan, RunSpec, build_plan, validate_study
from irkd.study.proc import Child, log_tail, spawn, stop_all, wait_any
from irkd.study.report import aggregate, format_table, format_tuning, tuning_report
from irkd.study.results import (
    LAUNCHES,
    MARKER,
    RunStatus,
    done_metrics,
    git_facts,
    launch_facts,
    read_json,
    reproduce_command,
    run_status,
    sync_run,
)
from irkd.study.spec import Study, StudyError

__all__ = ["Options", "StudyRunner"]

REPO = Path(__file__).resolve().parents[2]
CONFIG_NAME = "study-config.yaml"
LOG_NAME = "study.log"


@dataclass
class Options:
    """How to run a study.

    Attributes:
        workers: Runs side by side.
        nproc_per_run: Processes of each run: above 1, every run is data-parallel through
            its backend's launcher (``torchrun`` / ``msrun``, :func:`irkd.dist.launch_command`;
            the config's ``data.batch_size`` is the global batch, split over them).
        only: fnmatch patterns on run ids (empty: every run).
        runs_dir: Parent of ``<study name>/<run id>/`` (weights, checkpoints).
        results_dir: Parent of ``<study name>/`` (the committed results).
        cache: Synthetic data cache (``irkd train --cache``).
        share: Link a finished run of another study in ``runs_dir`` that trained exactly
            this run's config (:func:`irkd.rundir.run_signature`) instead of
            training it again.
        say: Where progress lines go.
    """

    workers: int = 1
    nproc_per_run: int = 1
    only: list[str] = field(default_factory=list)
    runs_dir: Path = Path("runs/study")
    results_dir: Path = Path("results")
    cache: Path = Path("runs/_data")
    share: bool = True
    say: Callable[[str], None] = print


class _Stop(Exception):
    """SIGTERM or SIGINT received."""


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class StudyRunner:
    """Plan, run and report one study.

    Args:
        study: The loaded study (:func:`irkd.study.spec.load_study`).
        opts: Options.

    Raises:
        StudyError: An invalid run config (every run is resolved before anything starts).
    """

    def __init__(self, study: Study, opts: Options) -> None:
        self.study = study
        self.opts = opts
        self.root = Path(opts.runs_dir) / study.name
        self.results = Path(opts.results_dir) / study.name
        self.plan = validate_study(study, self.root)

    # ------------------------------------------------------------------ state

    def run_dir(self, run_id: str) -> Path:
        """The run folder of ``run_id``."""
        return self.root / run_id

    def done_val(self) -> dict[str, float | None]:
        """Best validation IoU of every finished run (run folders, then committed copies)."""
        out: dict[str, float | None] = {}
        for base in (self.results / "runs", self.root):
            if not base.is_dir():
                continue
            for folder in sorted(base.iterdir()):
                m = done_metrics(folder)
                if m is not None:
                    val = m.get("best_val")
                    out[folder.name] = None if val is None else float(val)
        return out

    def replan(self) -> Plan:
        """The plan given the runs finished so far."""
        self.plan = build_plan(self.study, self.root, self.done_val())
        return self.plan

    def finished_elsewhere(self) -> dict[str, Path]:
        """The finished runs of the other studies in ``runs_dir``: signature -> folder.

        A folder counts when it is done and has its ``best.safetensors``; the signature is
        :func:`irkd.rundir.run_signature` of its ``config.yaml``. The first folder in name
        order wins.
        """
        out: dict[str, Path] = {}
        parent = Path(self.opts.runs_dir)
        if not self.opts.share or not parent.is_dir():
            return out
        for other in sorted(parent.iterdir()):
            if not other.is_dir() or other.resolve() == self.root.resolve():
                continue
            for folder in sorted(other.iterdir()):
                if (
                    folder.name.startswith(".")
                    or not folder.is_dir()
                    or run_status(folder).state != "done"
                    or not (folder / "best.safetensors").is_file()
                ):
                    continue
                try:
                    sig = run_signature(load_config(folder / "config.yaml"))
                except (OSError, ConfigError):
                    continue
                out.setdefault(sig, folder.resolve())
        return out

    def shared_source(
        self,
        run: RunSpec,
        finished: Mapping[str, Path],
        linked: Mapping[str, Path] | None = None,
    ) -> Path | None:
        """A finished run folder of another study that trained exactly this run.

        Only for a run without a folder of its own, with ``share`` on: the folder of
        ``finished`` (:meth:`finished_elsewhere`) whose config has this run's signature
        (every field but the name; the weights it starts from and its teacher's as the files
        they lead to). Found whatever the folder is named: a tuning run, or a step after
        one, is the same run as a row's. ``linked``: run id -> the folder it would be linked
        to (a dry run, which links nothing: the runs after a shared teacher or step are
        found shared too).
        """
        if not self.opts.share or os.path.lexists(self.run_dir(run.id)):
            return None
        cfg = run.cfg
        if linked and any(r in linked for r in run.needs):
            cfg = copy.deepcopy(cfg)
            init, teacher = linked.get(run.init or ""), linked.get(run.teacher or "")
            if init is not None:
                cfg.model.checkpoint = str(init / "best.safetensors")
            if teacher is not None and cfg.teacher is not None:
                cfg.teacher.checkpoint = str(teacher / "best.safetensors")
        return finished.get(run_signature(cfg))

    def _share_finished(self, plan: Plan) -> Plan:
        """Link every run another study has finished; return the plan after it.

        In plan order: a teacher or an earlier step first, so that the runs after it find
        their weights' paths leading to the same files.
        """
        finished = self.finished_elsewhere()
        if not finished:
            return plan
        while True:
            linked = 0
            for run in plan.runs.values():
                source = self.shared_source(run, finished)
                if source is None:
                    continue
                self.root.mkdir(parents=True, exist_ok=True)
                self.run_dir(run.id).symlink_to(source, target_is_directory=True)
                self.opts.say(f"[{_clock()}] shared {run.id}: done in {source}")
                linked += 1
            if not linked:
                return plan
            plan = self.replan()

    def selected(self, run_id: str) -> bool:
        """Whether ``--only`` lets ``run_id`` run."""
        return not self.opts.only or any(fnmatch.fnmatch(run_id, p) for p in self.opts.only)

    def status(self, run_id: str) -> RunStatus:
        """Status of a run: its folder, else its committed copy under ``results/``.

        A run whose folder is gone (a fresh machine) but whose results are committed is done:
        the report needs only the committed files. A teacher in that state is trained again
        when a pending run needs its weights (:meth:`needs_weights`).
        """
        st = run_status(self.run_dir(run_id))
        if st.state == "pending" and not self.run_dir(run_id).is_dir():
            committed = run_status(self.results / "runs" / run_id)
            if committed.state == "done":
                return committed
        return st

    def needs_weights(self, run_id: str, plan: Plan) -> bool:
        """Whether ``run_id``'s weights are missing but still needed (a teacher, a step).

        Needed by a selected run that will train: one not done, or one done whose own weights
        are needed in turn (on a fresh machine, the step 1 of a pending step 2 is trained
        again, and so is the teacher it distils from).
        """
        if (self.run_dir(run_id) / "best.safetensors").is_file():
            return False
        return any(
            run_id in r.needs
            and self.selected(r.id)
            and (
                (
                    run_status(self.run_dir(r.id)).state != "done"
                    and self.status(r.id).state != "done"
                )
                or self.needs_weights(r.id, plan)
            )
            for r in plan.runs.values()
        )

    def _missing(self, run: RunSpec) -> list[str]:
        """The runs ``run`` needs whose best weights are not there yet."""
        return [
            r
            for r in run.needs
            if not (
                run_status(self.run_dir(r)).state == "done"
                and (self.run_dir(r) / "best.safetensors").is_file()
            )
        ]

    def _ready(self, run: RunSpec) -> bool:
        return not self._missing(run)

    def _counts(self, plan: Plan) -> tuple[int, int]:
        ids = [r for r in plan.runs if self.selected(r)]
        done = sum(1 for r in ids if self.status(r).state == "done")
        total = len(ids)
        if not self.opts.only:
            seed = self.study.tuning.seed if self.study.tuning else None
            # a tuned main row's run on the tuning seed is the winning tuning run (shared)
            total += sum(1 for c in plan.waiting() if c[1] != "methods" or c[3] != seed)
        return done, total

    # ------------------------------------------------------------------ dry run

    def describe(self) -> list[str]:
        """One line per run: id, mode, status (``--dry-run``)."""
        plan = self.replan()
        lines = []
        width = max([len(r) for r in plan.runs] + [40])
        linked: dict[str, Path] = {}
        finished = self.finished_elsewhere()
        for run_id, run in plan.runs.items():
            st = self.status(run_id)
            source = self.shared_source(run, finished, linked) if st.state == "pending" else None
            if source is not None:
                linked[run_id] = source
            if not self.selected(run_id):
                continue
            if source is not None:
                text = f"done in {source} (linked when the study runs)"
            elif st.state == "done" and self.needs_weights(run_id, plan):
                text = "done; trained again (its weights are gone and a run needs them)"
            elif st.state == "done":
                text = "done"
            elif st.state == "partial":
                text = f"partial epoch {st.epoch}/{run.cfg.schedule.epochs}"
            elif missing := self._missing(run):
                text = f"waiting on {_waits(run, missing[0])}"
            else:
                text = "pending"
            lines.append(f"{run_id:<{width}}  {run.mode:<7}  {text}   [{', '.join(run.roles)}]")
        if not self.opts.only:
            for ds, table, row, seed in plan.waiting():
                tuned = row if table == "methods" else self.study.ablations[row].tuned
                entry = plan.tuning[(ds, str(tuned))]
                k = sum(entry.done)
                name = f"{ds}-{row}-s{seed}-?"
                text = f"waiting on tuning of {tuned} ({k}/{len(entry.runs)} tuning runs done)"
                lines.append(f"{name:<{width}}  {'':<7}  {text}")
        done, total = self._counts(plan)
        lines.append(f"{done}/{total} runs done")
        return lines

    # ------------------------------------------------------------------ results

    def _info(self, run: RunSpec) -> dict[str, Any]:
        return {
            "id": run.id,
            "label": run.label,
            "dataset": run.dataset,
            "mode": run.mode,
            "backend": run.cfg.backend,
            "seed": run.cfg.seed,
            "roles": run.roles,
        }

    def sync(self, run: RunSpec) -> bool:
        """Copy a finished run's committed files into ``results/<study>/runs/<id>``."""
        dest = self.results / "runs" / run.id
        # Named from the folder that holds RESULTS_DIR (the repository root by default), so
        # the command reads the same wherever the study ran from.
        shown = dest.relative_to(Path(self.opts.results_dir).parent) / "config.yaml"
        cmd = reproduce_command(
            run.mode,
            shown,
            self.run_dir(run.id),
            self.study.threads,
            run.cfg.backend,
        )
        return sync_run(self.run_dir(run.id), dest, info=self._info(run), command=cmd)

    def write_report(self, plan: Plan | None = None) -> Path:
        """Sync finished runs, then write ``table.json/md``, ``tuning.json/md`` and the plots."""
        from irkd.study.plots import write_plots

        plan = plan or self.replan()
        for run in plan.runs.values():
            if run_status(self.run_dir(run.id)).state == "done":
                self.sync(run)
        table = aggregate(self.study, plan, self.results, str(self.results))
        write_json_atomic(self.results / "table.json", table)
        write_text_atomic(self.results / "table.md", format_table(table))
        if self.study.tuning is not None:
            tuning = tuning_report(self.study, plan)
            write_json_atomic(self.results / "tuning.json", tuning)
            write_text_atomic(self.results / "tuning.md", format_tuning(tuning))
        write_plots(table, self.results)
        return self.results / "table.json"

    # ------------------------------------------------------------------ running

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StudyError(
                    f"another irkd study is running on {self.root} (lock {self.root / '.lock'})"
                ) from None
            yield

    def _clean_temporaries(self) -> None:
        """Remove what a killed study left half-written (only while holding the lock)."""
        if self.results.is_dir():
            for p in self.results.rglob(".*.tmp"):
                p.unlink(missing_ok=True)
        for pattern in (".trash-*", ".new-*"):
            for p in self.root.glob(pattern):
                shutil.rmtree(p, ignore_errors=True)

    def _prepare_data(self) -> None:
        """Generate the synthetic datasets once, before runs start side by side."""
        seen = set()
        cfgs = [r.cfg for r in self.plan.runs.values() if self.selected(r.id)]
        for cfg in cfgs:
            if cfg.data.root is None and cfg.data.synth_n not in seen:
                seen.add(cfg.data.synth_n)
                resolve_dataset(cfg.data, self.opts.cache)

    def _env(self, run: RunSpec) -> dict[str, str]:
        t = str(self.study.threads)
        env = launch_env()  # msrun's workers find this interpreter
        env.update(
            IRKD_TORCH_THREADS=t, OMP_NUM_THREADS=t, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1"
        )
        if run.cfg.backend == "mindspore":
            env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        return env

    def _launch(self, run: RunSpec) -> Child:
        folder = self.run_dir(run.id)
        st = self.status(run.id)
        if folder.exists() and not (folder / MARKER).is_file():
            raise RuntimeError(f"{folder} exists and was not created by irkd study: remove it")
        if st.state == "pending" and folder.exists():
            # died before its first checkpoint: start afresh (renamed first, so that a study
            # killed while deleting never leaves a half-deleted folder without its marker)
            trash = self.root / f".trash-{run.id}"
            shutil.rmtree(trash, ignore_errors=True)
            folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        if not folder.exists():  # created with its marker in one rename
            new = self.root / f".new-{run.id}"
            shutil.rmtree(new, ignore_errors=True)
            new.mkdir(parents=True)
            (new / MARKER).touch()
            new.rename(folder)
        resume = st.state == "partial"
        cfg_file = folder / CONFIG_NAME
        save_config(run.cfg, cfg_file)
        cmd = [sys.executable, "-m", "irkd.cli", run.mode, str(cfg_file), "--out", str(folder)]
        cmd += ["--cache", str(self.opts.cache)] + (["--resume"] if resume else [])
        nproc = max(1, self.opts.nproc_per_run)
        if nproc > 1:  # data parallel: the backend's launcher starts the run's processes
            cmd = launch_command(
                run.cfg.backend, nproc, cmd[3:], log_dir=folder / "launcher", port=free_port()
            )
        launches = (read_json(folder / LAUNCHES) or {}).get("launches") or []
        facts = launch_facts(run.cfg.backend, self.study.threads, git_facts(REPO, self.results))
        launches.append(
            {
                **facts,
                "processes": nproc,
                "resume": resume,
                "from_epoch": st.epoch,
                "command": cmd,
                "rc": None,
            }
        )
        write_json_atomic(folder / LAUNCHES, {"id": run.id, "launches": launches})
        child = spawn(run.id, cmd, self._env(run), folder / LOG_NAME)
        how = f"resume after epoch {st.epoch}" if resume else "start"
        self.opts.say(f"[{_clock()}] start {run.id} ({run.mode}, {how})")
        return child

    def _finish(self, child: Child, rc: int) -> str | None:
        """Close a child; returns None on success, else the failure message."""
        child.log.close()
        folder = self.run_dir(child.key)
        seconds = time.monotonic() - child.started
        data = read_json(folder / LAUNCHES) or {"id": child.key, "launches": [{}]}
        data["launches"][-1].update(rc=rc, seconds=seconds)
        write_json_atomic(folder / LAUNCHES, data)
        m = done_metrics(folder)
        if rc == 0 and m is not None:
            return None
        tail = log_tail(child)
        why = f"exit {rc}" if rc != 0 else "exit 0 without metrics.json"
        return f"{why}; {folder / LOG_NAME}:\n" + "\n".join(f"    {line}" for line in tail)

    def _order(self, plan: Plan) -> list[tuple[str, RunSpec]]:
        """The runs in plan order, interrupted ones first (their work is half done)."""
        items = list(plan.runs.items())
        return sorted(items, key=lambda kv: self.status(kv[0]).state != "partial")

    def run(self) -> int:
        """Run every selected run not done yet, ``workers`` at a time; then report.

        Interrupted runs resume before new runs start; the rest go in plan order.

        Returns:
            0 when every selected run is done, 1 when some failed or could not start,
            130 when interrupted.
        """
        say = self.opts.say
        with self._lock():
            self._clean_temporaries()
            self._prepare_data()
            plan = self._share_finished(self.replan())
            for run in plan.runs.values():  # finished before an interruption: copy them now
                if run_status(self.run_dir(run.id)).state == "done":
                    self.sync(run)
            failed: dict[str, str] = {}
            running: dict[str, Child] = {}
            report_due = False

            def on_signal(signum: int, frame: object) -> None:
                raise _Stop(signal.Signals(signum).name)

            old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                while True:
                    for run_id, run in self._order(plan):
                        if len(running) >= max(1, self.opts.workers):
                            break
                        if (
                            run_id in running
                            or run_id in failed
                            or not self.selected(run_id)
                            or (
                                self.status(run_id).state == "done"
                                and not self.needs_weights(run_id, plan)
                            )
                            or not self._ready(run)
                        ):
                            continue
                        try:
                            running[run_id] = self._launch(run)
                        except (OSError, RuntimeError) as exc:
                            failed[run_id] = str(exc)
                            say(f"[{_clock()}] FAILED {run_id}: {exc}")
                    if report_due:  # after starting the next runs, not before
                        self.write_report(plan)
                        report_due = False
                    if not running:
                        break
                    ended = wait_any(running)
                    for run_id, rc in ended:
                        child = running.pop(run_id)
                        msg = self._finish(child, rc)
                        plan = self._share_finished(self.replan())
                        done, total = self._counts(plan)
                        if msg is None:
                            m = done_metrics(self.run_dir(run_id)) or {}
                            report_due = True
                            say(
                                f"[{_clock()}] done {run_id}: test IoU {_pct(m.get('iou'))} "
                                f"(last epoch {_pct((m.get('last') or {}).get('iou'))}), "
                                f"wall {_duration(m.get('wall_s'))} [{done}/{total} runs done]"
                            )
                        else:
                            failed[run_id] = msg
                            say(f"[{_clock()}] FAILED {run_id} ({msg}) [{done}/{total} runs done]")
            except _Stop as exc:
                say(f"[{_clock()}] {exc.args[0]}: stopping {len(running)} run(s)")
                stop_all(running)
                say("interrupted: run the same command again to resume")
                return 130
            finally:
                stop_all(running)
                for s, handler in old.items():
                    signal.signal(s, handler)
            plan = self.replan()
            self.write_report(plan)  # always: also refreshes a study that had nothing left
        return self._summary(plan, failed)

    def _summary(self, plan: Plan, failed: dict[str, str]) -> int:
        say = self.opts.say
        done, total = self._counts(plan)
        left = [
            r
            for r in plan.runs.values()
            if self.selected(r.id) and r.id not in failed and self.status(r.id).state != "done"
        ]
        for run in left:
            missing = self._missing(run)
            why = f"{_waits(run, missing[0])} not done" if missing else "not run"
            say(f"not run: {run.id} ({why})")
        waiting = plan.waiting() if not self.opts.only else []
        if waiting:
            say(f"not run: {len(waiting)} run(s) waiting on a tuning grid that did not finish")
        say(
            f"study {self.study.name}: {done}/{total} runs done, {len(failed)} failed; "
            f"results in {self.results}"
        )
        blocked = bool(waiting) or any(
            not r.needs or any(self.selected(n) for n in r.needs) for r in left
        )
        return 1 if failed or blocked else 0


def _waits(run: RunSpec, needed: str) -> str:
    """``teacher <id>`` or ``step <id>``: what ``run`` waits on."""
    return f"teacher {needed}" if needed == run.teacher else f"step {needed}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f}%"
