"""Data-parallel training, the framework-free half: who runs, which images, which rank writes.

The frameworks' own launchers start the processes and their own libraries communicate:
``torchrun --nproc_per_node=N`` (``torch_ref.dist``: ``torch.distributed``, gloo on the CPU,
nccl on GPUs, ``DistributedDataParallel``) and ``msrun --worker_num=N --local_worker_num=N``
(``ms_impl.dist``: ``mindspore.communication.init()``, data-parallel mode,
``nn.DistributedGradReducer``; mccl on the CPU, HCCL on Ascend). This module only reads what
the launcher put in the environment and defines the contract both backends keep:

- **One config for any N.** ``data.batch_size`` is the *global* batch B; each of the N ranks
  trains on B/N images of it (B must be divisible by N). ``optim.lr``, ``seed`` and the
  schedule are those of the config, unchanged: N processes take the same steps as one
  process with batch B.
- **One data order.** Every rank builds the same global batch of epoch ``e`` from
  ``default_rng([seed, e])`` (:class:`irkd.data.TrainBatches`, as one process does) and
  trains on its slice, rank ``r`` on images ``[r*B/N, (r+1)*B/N)`` (:class:`ShardedBatches`):
  the union of the shards is the one-process batch, whatever N. MGD's noise is drawn for the
  global batch and sliced the same way.
- **Losses over the global batch.** Gradients are averaged over the ranks (mean all-reduce),
  so a loss that is a mean over images needs nothing more. SoftIoU is a ratio of sums over
  the whole batch: each rank all-reduces its three sums (a differentiable all-reduce), so
  every rank computes the global batch's loss. PKD standardises features over the batch and
  is refused (:func:`check_supported`).
- **BatchNorm: per-rank batch statistics.** In train mode each rank normalises with the
  statistics of its own B/N images (what ``DistributedDataParallel`` and MindSpore's data
  parallel do by default); neither framework's synchronised BatchNorm runs on a CPU
  (``torch.nn.SyncBatchNorm``: "SyncBatchNorm expected input tensor to be on GPU or XPU or
  privateuseone"; MindSpore 2.10 ``nn.SyncBatchNorm``: "Unsupported op [SyncBatchNorm] on
  CPU"). The running statistics saved are rank 0's (from its own shards). So N processes
  equal one process of batch B exactly (up to float summation order) when the networks'
  BatchNorm is frozen (``train.freeze_bn``) and approximately otherwise;
  ``tests/test_dist.py`` measures both.
- **Rank 0 writes.** Only rank 0 checks, locks and writes the run folder (config, log,
  checkpoints, best/last weights, test report) and validates; the other ranks train and
  read (the data rank 0 prepared, the checkpoint on ``--resume``). Logged losses are the
  mean over the ranks (the global batch's SoftIoU, the mean distillation term), so a NaN on
  any rank stops every rank with the same one-line message.
- **A failing rank stops the job.** A rank that raises exits with its message; the
  launcher (torchrun's agent, msrun) then stops the others, and a rank waiting in a
  collective for a peer that has gone fails instead of waiting forever.

API: :class:`World` (rank, size, barrier), :func:`launcher_env` (what torchrun / msrun /
ModelArts set), :func:`launch_command` (the launcher command line that starts ``irkd``
data-parallel: used by ``irkd study --nproc-per-run`` and the ModelArts boot file),
:func:`per_rank_batch`, :class:`ShardedBatches`, :func:`shard_noise`,
:func:`check_supported`.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from irkd.config import ConfigError, ExperimentConfig

__all__ = [
    "LaunchEnv",
    "ShardedBatches",
    "World",
    "check_supported",
    "free_port",
    "launch_command",
    "launch_env",
    "launcher_env",
    "per_rank_batch",
    "shard_noise",
]


def _no_barrier() -> None:
    """The barrier of a single process."""


@dataclass(frozen=True)
class World:
    """The processes of a run and this process's place among them.

    Attributes:
        rank: This process's rank (0 writes the run folder).
        size: Number of processes (1: a plain run).
        local_rank: Rank on this machine (picks the GPU / NPU).
        launcher: ``single``, ``torchrun``, ``msrun`` or ``rank_table`` (ModelArts).
        barrier: Wait until every rank reaches it (a framework collective).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = "single"
    barrier: Callable[[], None] = field(default=_no_barrier, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether more than one process trains."""
        return self.size > 1


@dataclass(frozen=True)
class LaunchEnv:
    """What a launcher put in the environment (:func:`launcher_env`)."""

    rank: int
    size: int
    local_rank: int
    launcher: str


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.lstrip("-").isdigit():
        raise ConfigError(f"environment variable {name}={value!r} is not an integer")
    return int(value)


def launcher_env(backend: str, env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Rank and world size as the backend's launcher set them.

    - ``pytorch``: ``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
    - ``mindspore``: ``msrun`` sets ``RANK_ID``, ``RANK_SIZE`` (and ``MS_ROLE``,
      ``MS_WORKER_NUM``, ``DEVICE_ID``); a ModelArts job started from a rank table sets
      ``RANK_TABLE_FILE``, ``RANK_ID``, ``RANK_SIZE`` and ``DEVICE_ID`` for one process per
      device.

    Args:
        backend: ``pytorch`` or ``mindspore``.
        env: The environment (default ``os.environ``).

    Returns:
        The launch facts; ``size`` 1 and launcher ``single`` when nothing was set.

    Raises:
        ConfigError: A variable that is not an integer, or a rank outside ``[0, size)``.
    """
    env = os.environ if env is None else env
    if backend == "pytorch":
        size = _int_env(env, "WORLD_SIZE")
        rank = _int_env(env, "RANK")
        local = _int_env(env, "LOCAL_RANK")
        launcher = "torchrun"
    else:
        size = _int_env(env, "RANK_SIZE") or _int_env(env, "MS_WORKER_NUM")
        rank = _int_env(env, "RANK_ID")
        if rank is None:
            rank = _int_env(env, "MS_NODE_ID")
        local = _int_env(env, "DEVICE_ID")
        launcher = "msrun" if env.get("MS_ROLE") else "rank_table"
    if size is None or size <= 1:
        return LaunchEnv(0, 1, 0, "single")
    if rank is None or not 0 <= rank < size:
        raise ConfigError(f"{launcher}: rank {rank} is not in [0, {size}) (launcher environment)")
    return LaunchEnv(rank, size, rank if local is None else local, launcher)


def per_rank_batch(batch_size: int, size: int) -> int:
    """Images per rank of a global batch: ``batch_size / size``.

    Raises:
        ConfigError: ``batch_size`` is not a multiple of ``size`` (one line).
    """
    if size < 1:
        raise ConfigError(f"data-parallel: {size} processes")
    if batch_size % size:
        raise ConfigError(
            f"data.batch_size {batch_size} is the global batch and must be divisible by the "
            f"{size} processes (each trains on batch_size / processes images)"
        )
    return batch_size // size


def check_supported(cfg: ExperimentConfig, size: int) -> None:
    """Refuse what a data-parallel run cannot compute as one process does.

    Raises:
        ConfigError: The batch is not divisible by ``size``, or ``method.name: pkd`` (it
            standardises features over the whole batch).
    """
    if size <= 1:
        return
    per_rank_batch(cfg.data.batch_size, size)
    if cfg.teacher is not None and cfg.method.name == "pkd":
        raise ConfigError(
            "method.name pkd standardises features over the whole batch, which a data-parallel "
            "run does not compute: train it in one process"
        )


class ShardedBatches:
    """This rank's slice of every global batch of :class:`irkd.data.TrainBatches`.

    The global batch of epoch ``e`` is built as one process builds it (same images, crops,
    flips; the augmentation of the whole batch is drawn so that the random stream does not
    depend on the rank); rank ``r`` keeps images ``[r*b, (r+1)*b)``, ``b = B / size``.

    Args:
        batches: The global batches (``batch_size`` = B).
        rank: This rank.
        size: Number of ranks (divides B).
    """

    def __init__(self, batches: object, rank: int, size: int) -> None:
        self.batches = batches
        self.rank = int(rank)
        self.size = int(size)
        self.global_batch = int(batches.batch_size)  # type: ignore[attr-defined]
        self.batch_size = per_rank_batch(self.global_batch, self.size)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def epoch(self, e: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield this rank's part of each batch of epoch ``e`` (contiguous float32 arrays)."""
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for images, masks in self.batches.epoch(e):  # type: ignore[attr-defined]
            yield np.ascontiguousarray(images[lo:hi]), np.ascontiguousarray(masks[lo:hi])


def shard_noise(
    draw: Callable[[int], tuple[np.ndarray, ...]], per_rank: int, rank: int, size: int
) -> tuple[np.ndarray, ...]:
    """This rank's slice of the noise drawn for the global batch.

    Args:
        draw: ``draw(batch)`` returns the per-stage noise of a batch of ``batch`` images
            (``noise_for(seed, step, noise_shapes(batch, h, w))``).
        per_rank: Images per rank.
        rank: This rank.
        size: Number of ranks.

    Returns:
        The arrays of ``draw(per_rank * size)`` sliced along the batch axis (0-d arrays,
        stages without noise, are kept as they are).
    """
    full = draw(per_rank * size)
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    return tuple(a if a.ndim == 0 else np.ascontiguousarray(a[lo:hi]) for a in full)


def free_port() -> int:
    """A TCP port free on this machine now (for a launcher's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a launcher: this interpreter's folder first on ``PATH``.

    ``msrun`` starts each worker as ``python SCRIPT``, looked up on ``PATH``; a virtual
    environment used by its full path (``.venv/bin/irkd``, CI) but not activated would give
    the workers the system Python, without MindSpore.

    Args:
        env: The environment to start from (default: this process's).

    Returns:
        A copy of ``env`` whose ``PATH`` starts with ``sys.executable``'s folder.
    """
    out = dict(os.environ if env is None else env)
    here = str(Path(sys.executable).parent)
    rest = [p for p in out.get("PATH", "").split(os.pathsep) if p and p != here]
    out["PATH"] = os.pathsep.join([here, *rest])
    return out


def launch_command(
    backend: str,
    nproc: int,
    cli_args: Sequence[str],
    *,
    log_dir: str | os.PathLike[str],
    port: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master: str = "127.0.0.1",
) -> list[str]:
    """The command that runs ``irkd CLI_ARGS`` in ``nproc`` processes on this node.

    Args:
        backend: ``pytorch`` (``torchrun``, as ``python -m torch.distributed.run``) or
            ``mindspore`` (``msrun``, which runs the ``irkd`` console script).
        nproc: Processes on this node (1: plain ``python -m irkd.cli``).
        cli_args: The ``irkd`` arguments (``train CONFIG ... --out RUN``).
        log_dir: msrun's folder of per-worker logs (``worker_<rank>.log``).
        port: The rendezvous port on ``master``.
        nnodes: Nodes of the job.
        node_rank: This node.
        master: Address of node 0.

    Returns:
        The argument list.
    """
    cli = list(cli_args)
    if nproc == 1 and nnodes == 1:
        return [sys.executable, "-m", "irkd.cli", *cli]
    if backend == "pytorch":
        return [
            sys.executable, "-m", "torch.distributed.run",
            f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--nproc_per_node={nproc}",
            f"--master_addr={master}", f"--master_port={port}",
            "-m", "irkd.cli", *cli,
        ]  # fmt: skip
    entry = str(Path(sys.executable).with_name("irkd"))
    if not Path(entry).is_file():
        entry = shutil.which("irkd") or entry
    msrun = str(Path(sys.executable).with_name("msrun"))
    if not Path(msrun).is_file():
        msrun = shutil.which("msrun") or "msrun"
    return [
        msrun, f"--worker_num={nproc * nnodes}", f"--local_worker_num={nproc}",
        f"--master_addr={master}", f"--master_port={port}", f"--node_rank={node_rank}",
        f"--log_dir={log_dir}", "--join=True",
        entry, *cli,
    ]  # fmt: skip
