"""ModelArts training-job entry: stage data in, run ``irkd train|distill|release``, stage out.

The boot file ``modelarts/start.py`` calls :func:`main`. A ModelArts training job runs the
boot file once per node (or, started from a rank table, once per device) with the job's
inputs and outputs as ``--data_url`` / ``--train_url`` (or the ``DATA_URL`` / ``TRAIN_URL``
environment variables) and its hyperparameters as ``--name=value``. This module:

1. reads the arguments: ``--task train|distill|release``, ``--config`` (a YAML file of the
   code directory), the config overrides (``key.sub=value`` items, or hyperparameters
   written ``--key.sub=value``), ``--teacher_url``, ``--student_url``, ``--resume``,
   ``--nproc_per_node`` (processes per node: NPUs / GPUs; default 1) and ``--cache_dir``;
2. copies remote inputs (``obs://`` or ``s3://``) into ``cache_dir`` with
   ``moxing.file.copy_parallel`` (ModelArts' own library; without it a remote URL is an error,
   local folders are used in place): the dataset folder, the teacher's weights, and on
   ``--resume`` the run folder; one process per node copies, the others wait for its
   ``.irkd-staged`` marker;
3. runs the CLI: in this process for one process per node (or when the platform started
   one process per device from ``RANK_TABLE_FILE``: ``RANK_ID``, ``RANK_SIZE``,
   ``DEVICE_ID``, MindSpore's ``init()`` reads the table), else through the backend's own
   launcher, ``msrun --worker_num=N*H --local_worker_num=N --node_rank=VC_TASK_INDEX`` or
   ``torchrun --nnodes=H --nproc_per_node=N --node_rank=VC_TASK_INDEX``, H from
   ``MA_NUM_HOSTS`` and the master from ``VC_WORKER_HOSTS``;
4. copies the run folder (``<train_url>/<name>``, ``name`` the config's) back to
   ``train_url`` from node 0, after a failure too (the log says why it stopped).

``--task release`` checks parity between ``--teacher_url`` and ``--student_url`` and builds
the release (``irkd parity`` then ``irkd release``) into ``<train_url>/release``.
docs/modelarts.md has the job settings.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irkd.config import ConfigError, load_config
from irkd.dist import launch_command as dist_launch_command
from irkd.dist import launch_env

__all__ = ["Job", "is_remote", "launch_command", "main", "node_facts", "parse_job"]

REMOTE = ("obs://", "s3://")
STAGED = ".irkd-staged"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = "/cache/irkd"
MASTER_PORT = {"pytorch": 29500, "mindspore": 8118}


class JobError(ValueError):
    """A ModelArts job that cannot start as asked (one line)."""


def is_remote(url: str) -> bool:
    """Whether ``url`` is an object-storage URL (``obs://``, ``s3://``) to copy with moxing."""
    return url.startswith(REMOTE)


@dataclass
class Job:
    """What the boot file was asked to do (:func:`parse_job`).

    Attributes:
        task: ``train``, ``distill`` or ``release``.
        data_url: The dataset folder (local or remote); None for ``release``.
        train_url: Where the outputs go (local or remote).
        config: The experiment YAML (relative to the code directory or absolute).
        overrides: ``key.sub=value`` items for the config.
        teacher_url: The teacher's weights (distill: ``teacher.checkpoint``; release).
        student_url: The student's weights (release).
        resume: Continue the run found under ``train_url``.
        nproc_per_node: Processes per node (devices).
        cache_dir: Local working folder (ModelArts: ``/cache``, the node's SSD).
        launcher: ``auto``, ``none`` (this process), ``msrun`` or ``torchrun``.
    """

    task: str
    data_url: str | None
    train_url: str
    config: str | None
    overrides: list[str] = field(default_factory=list)
    teacher_url: str | None = None
    student_url: str | None = None
    resume: bool = False
    nproc_per_node: int = 1
    cache_dir: str = DEFAULT_CACHE
    launcher: str = "auto"


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "y", "on"):
        return True
    if low in ("0", "false", "no", "n", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The boot file's arguments (ModelArts passes hyperparameters as ``--name=value``)."""
    p = argparse.ArgumentParser(
        prog="modelarts/start.py",
        description="IRKD as a ModelArts training job: train, distill or release.",
    )
    p.add_argument("--task", choices=["train", "distill", "release"], default="train")
    p.add_argument("--data_url", default=None, help="dataset folder (obs://... or local)")
    p.add_argument("--train_url", default=None, help="output folder (obs://... or local)")
    p.add_argument("--config", default=None, help="experiment YAML in the code directory")
    p.add_argument("--teacher_url", default=None, help="teacher weights (.safetensors)")
    p.add_argument("--student_url", default=None, help="student weights (release)")
    p.add_argument("--resume", type=_bool, default=False, help="continue the run in train_url")
    p.add_argument("--nproc_per_node", type=int, default=None, help="processes per node")
    p.add_argument("--cache_dir", default=None, help=f"local working folder ({DEFAULT_CACHE})")
    p.add_argument("--launcher", choices=["auto", "none", "msrun", "torchrun"], default="auto")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return p


def parse_job(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Job:
    """Read the boot file's arguments and environment.

    Unknown options written ``--key.sub=value`` or ``--key=value`` (ModelArts
    hyperparameters) become config overrides ``key.sub=value`` (the config refuses a key it
    does not have); ``--data_url``/``--train_url`` fall back to ``DATA_URL`` /
    ``TRAIN_URL``.

    Raises:
        JobError: A missing input or output, an unknown option, a bad value.
    """
    env = os.environ if env is None else env
    args, unknown = build_parser().parse_known_args(list(argv))
    overrides = list(args.overrides)
    for item in unknown:
        key, eq, value = item.removeprefix("--").partition("=")
        if not item.startswith("--") or not eq or not key:
            raise JobError(
                f"unknown argument {item!r}: config overrides are key.sub=value or --key.sub=value"
            )
        overrides.append(f"{key}={value}")
    data_url = args.data_url or env.get("DATA_URL") or None
    train_url = args.train_url or env.get("TRAIN_URL") or None
    if not train_url:
        raise JobError("--train_url (or TRAIN_URL) is needed: where the outputs go")
    if args.task != "release":
        if not args.config:
            raise JobError(f"--task {args.task} needs --config (an experiment YAML)")
        if not data_url:
            raise JobError(f"--task {args.task} needs --data_url (or DATA_URL): the dataset")
        if args.task == "distill" and not args.teacher_url:
            if not any(o.startswith("teacher.checkpoint=") for o in overrides):
                raise JobError("--task distill needs --teacher_url (the teacher's weights)")
    elif not (args.teacher_url and args.student_url):
        raise JobError("--task release needs --teacher_url and --student_url")
    nproc = args.nproc_per_node if args.nproc_per_node is not None else 1
    if nproc < 1:
        raise JobError(f"--nproc_per_node must be >= 1, got {nproc}")
    cache = args.cache_dir or env.get("IRKD_MA_CACHE") or DEFAULT_CACHE
    return Job(
        task=args.task,
        data_url=data_url,
        train_url=train_url,
        config=args.config,
        overrides=overrides,
        teacher_url=args.teacher_url,
        student_url=args.student_url,
        resume=args.resume,
        nproc_per_node=nproc,
        cache_dir=cache,
        launcher=args.launcher,
    )


@dataclass(frozen=True)
class Node:
    """This node's place in the job (ModelArts' environment).

    Attributes:
        hosts: Nodes of the job (``MA_NUM_HOSTS``).
        index: This node (``VC_TASK_INDEX``).
        master: Address of node 0 (first of ``VC_WORKER_HOSTS``; 127.0.0.1 alone).
        rank_table: ``RANK_TABLE_FILE`` when the platform started one process per device.
        rank: ``RANK_ID`` of that process (rank-table jobs).
        local_rank: ``DEVICE_ID`` of that process (rank-table jobs).
        rank_size: ``RANK_SIZE`` (rank-table jobs).
    """

    hosts: int = 1
    index: int = 0
    master: str = "127.0.0.1"
    rank_table: str | None = None
    rank: int = 0
    local_rank: int = 0
    rank_size: int = 1

    @property
    def per_device(self) -> bool:
        """Whether the platform started this process for one device (rank table)."""
        return bool(self.rank_table) and self.rank_size > 1

    @property
    def stages(self) -> bool:
        """Whether this process copies the node's inputs (one per node)."""
        return not self.per_device or self.local_rank == 0

    @property
    def uploads(self) -> bool:
        """Whether this process copies the outputs back (node 0, one process)."""
        return self.index == 0 and (not self.per_device or self.rank == 0)


def node_facts(env: Mapping[str, str] | None = None) -> Node:
    """This node's facts from ModelArts' variables (defaults: one node, one process)."""
    env = os.environ if env is None else env

    def num(name: str, default: int) -> int:
        value = env.get(name, "").strip()
        if not value:
            return default
        if not value.isdigit():
            raise JobError(f"environment variable {name}={value!r} is not a number")
        return int(value)

    hosts = [h for h in env.get("VC_WORKER_HOSTS", "").split(",") if h.strip()]
    return Node(
        hosts=num("MA_NUM_HOSTS", 1),
        index=num("VC_TASK_INDEX", 0),
        master=hosts[0].strip() if hosts else "127.0.0.1",
        rank_table=env.get("RANK_TABLE_FILE") or None,
        rank=num("RANK_ID", 0),
        local_rank=num("DEVICE_ID", 0),
        rank_size=num("RANK_SIZE", 1),
    )


# ----------------------------------------------------------------------------- staging


def _mox() -> Any:
    try:
        import moxing as mox  # ModelArts' object-storage library
    except ImportError:
        return None
    return mox


def copy_in(url: str, local: Path, *, is_file: bool = False) -> Path:
    """``url`` as a local path: a remote URL is copied to ``local`` with moxing.

    Raises:
        JobError: A remote URL without moxing, or a local path that does not exist.
    """
    if not is_remote(url):
        path = Path(url)
        if not path.exists():
            raise JobError(f"{url} not found")
        return path
    mox = _mox()
    if mox is None:
        raise JobError(f"{url}: copying from object storage needs moxing (ModelArts images)")
    local.parent.mkdir(parents=True, exist_ok=True)
    if is_file:
        mox.file.copy(url, str(local))
    else:
        mox.file.copy_parallel(url, str(local))
    return local


def copy_out(local: Path, url: str) -> None:
    """Copy the folder ``local`` to the remote ``url`` with moxing (no-op for a local url)."""
    if not is_remote(url) or not local.exists():
        return
    mox = _mox()
    if mox is None:
        raise JobError(f"{url}: copying to object storage needs moxing (ModelArts images)")
    mox.file.copy_parallel(str(local), url)


def _join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def _wait_staged(marker: Path, timeout_s: float = 3600.0) -> None:
    t0 = time.monotonic()
    while not marker.is_file():
        if time.monotonic() - t0 > timeout_s:
            raise JobError(f"inputs were not staged within {timeout_s:.0f} s ({marker})")
        time.sleep(1.0)


# ----------------------------------------------------------------------------- commands


def launch_command(
    backend: str, job: Job, node: Node, cli_args: Sequence[str], log_dir: Path
) -> list[str]:
    """The command that starts this node's processes.

    Returns:
        ``[python, -m, irkd.cli, ...]`` for one process per node or a rank-table job,
        else the backend's launcher (``msrun`` / ``torchrun``) around the CLI
        (:func:`irkd.dist.launch_command`).
    """
    launcher = job.launcher
    if launcher == "auto":
        one = node.per_device or (job.nproc_per_node == 1 and node.hosts == 1)
        launcher = "none" if one else ("msrun" if backend == "mindspore" else "torchrun")
    if launcher == "none":
        return [sys.executable, "-m", "irkd.cli", *cli_args]
    return dist_launch_command(
        "mindspore" if launcher == "msrun" else "pytorch",
        job.nproc_per_node,
        cli_args,
        log_dir=log_dir,
        port=MASTER_PORT.get(backend, 29500),
        nnodes=node.hosts,
        node_rank=node.index,
        master=node.master,
    )


def _run(cmd: Sequence[str], cwd: Path) -> int:
    print("irkd modelarts: " + shlex.join(cmd), flush=True)
    return subprocess.call(list(cmd), cwd=cwd, env=launch_env())


def _config_path(config: str) -> Path:
    path = Path(config)
    if not path.is_absolute() and not path.is_file():
        path = REPO / config
    if not path.is_file():
        raise JobError(f"--config {config} not found (relative to the code directory {REPO})")
    return path


def run_job(job: Job, node: Node) -> int:
    """Stage, run and copy back one job; returns the exit status of the run."""
    cache = Path(job.cache_dir)
    remote_out = is_remote(job.train_url)
    out_root = cache / "output" if remote_out else Path(job.train_url)
    marker = cache / STAGED
    if job.task == "release":
        return _run_release(job, node, cache, out_root)

    cfg_path = _config_path(job.config or "")
    overrides = list(job.overrides)
    try:
        cfg = load_config(cfg_path, overrides)
    except ConfigError as exc:
        raise JobError(f"--config {job.config}: {exc}") from None
    run_dir = out_root / cfg.name
    data_local = cache / "data"
    teacher_local = cache / "teacher" / "teacher.safetensors"
    if node.stages:
        marker.unlink(missing_ok=True)
        assert job.data_url is not None
        data_local = copy_in(job.data_url, data_local)
        if job.teacher_url:
            teacher_local = copy_in(job.teacher_url, teacher_local, is_file=True)
        if job.resume and remote_out:
            copy_in(_join(job.train_url, cfg.name), run_dir)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{data_local}\n{teacher_local}\n", encoding="utf-8")
    else:
        _wait_staged(marker)
        data_local, teacher_local = (Path(x) for x in marker.read_text().split("\n")[:2])
    overrides.append(f"data.root={data_local}")
    if job.teacher_url:
        overrides.append(f"teacher.checkpoint={teacher_local}")
    out_root.mkdir(parents=True, exist_ok=True)
    cli_args = [job.task, str(cfg_path), *overrides, "--out", str(run_dir)]
    cli_args += ["--cache", str(cache / "_data")]
    if job.resume:
        cli_args.append("--resume")
    cmd = launch_command(cfg.backend, job, node, cli_args, cache / "launcher-logs")
    status = 1
    try:
        status = _run(cmd, REPO)
    finally:
        if node.uploads and remote_out:
            copy_out(run_dir, _join(job.train_url, cfg.name))
    return status


def _run_release(job: Job, node: Node, cache: Path, out_root: Path) -> int:
    if not node.uploads:  # one process builds the release
        return 0
    assert job.teacher_url and job.student_url
    teacher = copy_in(job.teacher_url, cache / "release-in" / "teacher.safetensors", is_file=True)
    student = copy_in(job.student_url, cache / "release-in" / "student.safetensors", is_file=True)
    out_root.mkdir(parents=True, exist_ok=True)
    parity = out_root / "parity.json"
    irkd = [sys.executable, "-m", "irkd.cli"]
    weights = ["--weights", str(teacher), "--weights", str(student)]
    status = _run([*irkd, "parity", *weights, "--out", str(parity)], REPO)
    if status == 0:
        status = _run(
            [
                *irkd, "release", "--teacher", str(teacher), "--student", str(student),
                "--parity", str(parity), "--out", str(out_root / "release"),
            ],
            REPO,
        )  # fmt: skip
    if is_remote(job.train_url):
        copy_out(out_root, job.train_url)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Boot-file entry: parse, stage, run, copy back; one line on stderr for a bad job."""
    try:
        job = parse_job(sys.argv[1:] if argv is None else argv)
        return run_job(job, node_facts())
    except JobError as exc:
        print(f"irkd modelarts: error: {exc}", file=sys.stderr)
        return 2
