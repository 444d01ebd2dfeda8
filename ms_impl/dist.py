"""MindSpore data parallel: ``msrun --worker_num=N --local_worker_num=N irkd train|distill``.

The native implementation; ``torch_ref.dist`` is its PyTorch twin, and the contract
(global batch, data order, BatchNorm statistics, rank 0 writes) is :mod:`irkd.dist`.
Everything that communicates is MindSpore's:

- :func:`init`: ``mindspore.communication.init()`` (HCCL on Ascend, NCCL on GPUs, MCCL on
  the CPU; msrun's or the ModelArts rank table's environment), data-parallel mode
  (``set_auto_parallel_context(parallel_mode=DATA_PARALLEL, gradients_mean=True)``), and the
  :class:`irkd.dist.World` whose barrier is an all-reduce every rank waits on.
- :func:`grad_reducer`: ``nn.DistributedGradReducer`` (mean over the ranks), applied inside
  the compiled train step between ``value_and_grad`` and the optimizer.
- :func:`global_sum`: ``ops.AllReduce`` (sum) of SoftIoU's batch sums, inside the step; its
  gradient is the all-reduce of the incoming gradient, which with the reducer's mean gives
  the gradient of the global batch's loss.
- :func:`mean_values`: the logged loss terms averaged over the ranks.

On CPU (MindSpore 2.10, msrun, 2 workers, as tried): ``init()`` joins an MCCL group;
``AllReduce`` runs in PyNative and GRAPH_MODE and differentiates; ``DistributedGradReducer``
works; ``nn.SyncBatchNorm`` does not ("Unsupported op [SyncBatchNorm] on CPU"), hence per-rank
BatchNorm statistics (:mod:`irkd.dist`).
"""

from __future__ import annotations

from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from irkd.dist import World, launcher_env

__all__ = ["global_sum", "grad_reducer", "init", "mean_values", "shutdown", "sum_op"]

_SUM: dict[str, Any] = {}


def sum_op() -> Any:
    """The ``ops.AllReduce`` (sum, world group) of this process, made after :func:`init`.

    A primitive, so a compiled step can take it as the losses' ``reduce``.
    """
    if "op" not in _SUM:
        _SUM["op"] = ops.AllReduce()
    return _SUM["op"]


def _barrier() -> None:
    """Wait for every rank: an all-reduce of one number, read back."""
    sum_op()(Tensor(np.ones(1, np.float32))).asnumpy()


def init() -> World:
    """Join the group msrun (or a ModelArts rank table) started, or a one-process world.

    Returns:
        The world: rank, size, local rank and ``barrier``.
    """
    env = launcher_env("mindspore")
    if env.size == 1:
        return World()
    from mindspore.communication import get_group_size, get_rank
    from mindspore.communication import init as comm_init

    comm_init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return World(
        rank=get_rank(),
        size=get_group_size(),
        local_rank=env.local_rank,
        launcher=env.launcher,
        barrier=_barrier,
    )


def shutdown() -> None:
    """Nothing to release: MindSpore's communication ends with the process."""


def grad_reducer(params: Any, world: World) -> nn.Cell | None:
    """``nn.DistributedGradReducer`` (mean over ``world``) of ``params``, None in one process."""
    if not world.parallel:
        return None
    return nn.DistributedGradReducer(params, mean=True, degree=world.size)


def global_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over the ranks, differentiable (the gradient sums the gradients)."""
    return sum_op()(x)


def mean_values(values: dict[str, float], world: World) -> dict[str, float]:
    """The mean of each logged value over the ranks (unchanged in one process)."""
    if not world.parallel:
        return values
    summed = sum_op()(Tensor(np.array(list(values.values()), np.float32))).asnumpy()
    return {k: float(v) / world.size for k, v in zip(values, summed.tolist(), strict=True)}
