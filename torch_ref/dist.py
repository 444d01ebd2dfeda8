"""PyTorch data parallel: ``torchrun --nproc_per_node=N irkd train|distill ...``.

Twin of ``ms_impl.dist``; the contract (global batch, data order, BatchNorm statistics,
rank 0 writes) is :mod:`irkd.dist`. Everything that communicates is ``torch.distributed``:

- :func:`init`: ``init_process_group`` (gloo on the CPU, nccl with CUDA; rank and size from
  torchrun's environment), the GPU of the local rank, and the :class:`irkd.dist.World`
  whose barrier is ``torch.distributed.barrier``.
- :func:`wrap`: ``DistributedDataParallel`` around the module that computes the loss
  (student and distiller): parameters broadcast from rank 0 at construction, gradients
  averaged over the ranks in the backward pass. ``broadcast_buffers=False``: each rank
  keeps its own BatchNorm running statistics, as in MindSpore; rank 0's are saved.
- :func:`global_sum`: the differentiable all-reduce (sum) of SoftIoU's batch sums; its
  backward all-reduces the incoming gradient, which with DDP's mean gives the gradient of
  the global batch's loss.
- :func:`mean_values`: the logged loss terms averaged over the ranks.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Callable

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from irkd.dist import World, launcher_env

__all__ = ["global_sum", "init", "mean_values", "shutdown", "sum_op", "wrap"]

TIMEOUT_S = 3600
"""How long a collective waits for a slow rank (rank 0 validating, writing a checkpoint)
before it fails (``IRKD_DIST_TIMEOUT_S`` overrides it)."""


def _timeout() -> datetime.timedelta:
    value = os.environ.get("IRKD_DIST_TIMEOUT_S", "").strip()
    return datetime.timedelta(seconds=int(value) if value.isdigit() else TIMEOUT_S)


def init() -> World:
    """Join the process group torchrun started, or return a one-process world.

    Returns:
        The world: rank, size, local rank and ``barrier`` (``torch.distributed.barrier``).
    """
    env = launcher_env("pytorch")
    if env.size == 1:
        return World()
    if not tdist.is_initialized():
        cuda = torch.cuda.is_available() and os.environ.get("IRKD_DEVICE", "") != "cpu"
        if cuda:
            torch.cuda.set_device(env.local_rank)
        tdist.init_process_group(backend="nccl" if cuda else "gloo", timeout=_timeout())
    return World(
        rank=tdist.get_rank(),
        size=tdist.get_world_size(),
        local_rank=env.local_rank,
        launcher=env.launcher,
        barrier=tdist.barrier,
    )


def shutdown() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if tdist.is_initialized():
        tdist.destroy_process_group()


def wrap(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` for a data-parallel world, else ``module``."""
    if not world.parallel:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return _ddp(module, ids)


def _ddp(module: nn.Module, ids: list[int] | None) -> nn.Module:
    with warnings.catch_warnings():
        # torch 2.13 deprecates broadcast_buffers but says to keep broadcast_buffers=False for
        # rank-local buffers until its replacement can skip the sync at construction.
        warnings.simplefilter("ignore", FutureWarning)
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def global_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over the ranks, differentiable (the backward sums the gradients)."""
    import torch.distributed.nn.functional as dfn

    with warnings.catch_warnings():
        # Deprecated in favour of _functional_collectives.all_reduce, which has no autograd
        # and aborted a 2-process gloo run here; this one is exact (tests/test_dist.py).
        warnings.simplefilter("ignore", FutureWarning)
        return dfn.all_reduce(x)


def sum_op() -> Callable[[Tensor], Tensor]:
    """The losses' ``reduce`` of a data-parallel run: :func:`global_sum`."""
    return global_sum


def mean_values(values: dict[str, float], world: World) -> dict[str, float]:
    """The mean of each logged value over the ranks (unchanged in one process)."""
    if not world.parallel:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    tdist.all_reduce(t)
    return {k: float(v) / world.size for k, v in zip(values, t.tolist(), strict=True)}
