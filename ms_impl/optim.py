"""Optimizers that agree with PyTorch, a per-step learning rate, and optimizer state files.

Which optimizer (``cfg.optim.name``), MindSpore side against the PyTorch twin
(``torch_ref.optim.build_optimizer``):

=========  ===========================================  =================================
name       MindSpore                                    PyTorch
=========  ===========================================  =================================
``adamw``  :class:`FlatAdamW` (the experimental         ``torch.optim.AdamW``
           ``AdamW``'s formula on one flat buffer)
``adam``   :class:`FlatAdamW` without decoupled decay,  ``torch.optim.Adam``
           L2 on the gradient
``sgd``    ``mindspore.experimental.optim.SGD``         ``torch.optim.SGD``
=========  ===========================================  =================================

The experimental ``AdamW`` and ``SGD`` follow PyTorch's formulas: AdamW's decoupled decay
(``p *= 1 - lr * wd``, then the bias-corrected step with ``denom = sqrt(v) / sqrt(1 - beta2^t)
+ eps``), SGD's L2 decay added to the gradient and first momentum buffer equal to the
gradient. ``mindspore.nn.Adam`` / ``nn.AdamWeightDecay`` do not (other decay and epsilon
placement), and neither does ``mindspore.experimental.optim.Adam``: it runs ``ops.Adam``,
which adds epsilon *before* the bias correction, i.e. an effective epsilon of
``eps / sqrt(1 - beta2^t)`` (31x larger at the first step). Parameters whose gradients are
around 1e-7 then move up to ``lr`` less per step than in PyTorch (figures in
``docs/mindspore-notes.md``). ``adam`` therefore runs AdamW with no decoupled decay (its
``p *= 1 - lr * 0`` is exact) after adding ``wd * p`` to the gradient, which is PyTorch's Adam
operation for operation (:class:`AdamL2` on the experimental AdamW, :class:`FlatAdamW` with
``l2``). ``tests/test_train.py`` checks it (and prints the drift): three steps of a
``dnanet_xxs`` alone from the same weights on the same batch give bit-identical losses with
SGD, AdamW and Adam; SGD's parameters agree within float32 rounding; Adam(W)'s within a small
fraction of ``lr``. Adam normalises each gradient element by its own size, so an element
whose gradient is rounding noise in both frameworks moves by up to ``lr`` per step either
way: the biases of convolutions that feed a BatchNorm (their exact gradient is zero) are the
extreme case and are compared against that bound.

**Why flat.** The experimental AdamW maps its update over the parameters one by one: about
20 kernel launches per parameter tensor (``Mul``, ``Assign``, ``TensorMove``...), 5000 for a
``dnanet_xs`` student, each with a fixed cost in MindSpore's CPU runtime. :class:`FlatAdamW`
runs the same elementwise formula, operation for operation, once on the concatenated
parameters and gradients with two flat moment buffers, then slices and assigns the result
back: about 3 launches per parameter. The values are the experimental AdamW's bit for bit
(``tests/test_train.py``); the update alone is about 3x faster, a student's train step about
10% (``docs/speed.md``, section 2). Its state file holds the two flat buffers
(``flat.exp_avg``, ``flat.exp_avg_sq``); :func:`load_optimizer` still reads a per-parameter
AdamW state (``exp_avg.<name>``...) of an earlier run, packing it.

Learning rate per step (:func:`set_lr`)
=======================================

The experimental optimizers keep each group's learning rate in a scalar ``Parameter``
(``optimizer.param_groups[i]["lr"]``, the same object as ``optimizer.lrs[i]``) that the
optimizer reads at run time, so a new value needs no recompilation. It must be written
**in place** with ``ops.assign``:

- ``Parameter.set_data(Tensor(lr))`` swaps the parameter's storage; a train step compiled
  before (GRAPH_MODE, ``ms.jit``, and also PyNative, where the optimizers' inner
  ``implementation`` is ``@jit``-compiled) keeps reading the old storage, so the new rate is
  silently ignored;
- assigning a Python float to ``group["lr"]`` bakes the value into the next compiled graph
  as a constant (one recompilation per value).

``ops.assign(group["lr"], Tensor(lr, float32))`` is seen by the already compiled step in
GRAPH_MODE, under ``ms.jit`` and in PyNative (halving the rate halves the update).
The same rule holds for any parameter a compiled step reads (weights, optimizer moments):
load them before the first step, or write them with ``ops.assign``.

Optimizer state files
=====================

:func:`optimizer_state` is every parameter the optimizer owns apart from the model's (the
moments ``exp_avg.*``, ``exp_avg_sq.*``, ``max_exp_avg_sq.*`` and the step counter
``state_step`` of Adam/AdamW; ``accum.*`` and ``stat.*`` of SGD) plus the learning rates
(``learning_rate_group_<i>``). :func:`save_optimizer` writes them as a MindSpore ``.ckpt``;
:func:`load_optimizer` reads them back strictly (same names, shapes and dtypes) and writes
them in place, so a resumed run continues with the exact optimizer state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, ops
from mindspore.experimental import optim

from irkd.files import file_mode
from irkd.weights import Spec, WeightsError, check_strict

__all__ = [
    "AdamL2",
    "FlatAdamW",
    "OPTIMIZERS",
    "build_optimizer",
    "get_lr",
    "load_optimizer",
    "optimizer_state",
    "save_optimizer",
    "set_lr",
]

OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "sgd")
"""Valid ``cfg.optim.name`` values."""


class AdamL2(optim.AdamW):
    """PyTorch's ``Adam`` (L2 weight decay on the gradient) on top of the experimental AdamW.

    The per-parameter form of :class:`FlatAdamW` with ``l2``, which :func:`build_optimizer`
    gives for ``adam``; kept as its reference (``tests/test_train.py``).

    Args:
        params: Parameters to optimize.
        lr: Learning rate.
        betas: ``(beta1, beta2)``.
        eps: Added to the bias-corrected ``sqrt(v)`` (PyTorch's placement).
        weight_decay: L2 coefficient, added to the gradient as ``grad + wd * p``.

    Attributes:
        l2: The L2 coefficient (the parameter groups' ``weight_decay`` is 0: no decoupled
            decay).
    """

    def __init__(
        self,
        params: Sequence[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        self.l2 = float(weight_decay)

    def construct(self, gradients: tuple[Tensor, ...]) -> bool:
        """One step: ``g += l2 * p``, then AdamW with zero decoupled decay."""
        if self.l2 != 0.0:
            gradients = self._decay_weight(self.l2, self.parameters, gradients)
        return super().construct(gradients)


class FlatAdamW(optim.Optimizer):
    """The experimental ``AdamW``'s update run once over all parameters, flattened.

    Same values as ``mindspore.experimental.optim.AdamW`` (``l2=0``) and as :class:`AdamL2`
    (``weight_decay=0``, ``l2`` its decay), element for element; about 3 kernel launches per
    parameter instead of about 20 (module docstring, "Why flat").

    Args:
        params: Parameters to optimize (one group).
        lr: Learning rate (kept in ``param_groups[0]["lr"]``, a ``Parameter``: :func:`set_lr`).
        betas: ``(beta1, beta2)``.
        eps: Added to the bias-corrected ``sqrt(v)`` (PyTorch's placement).
        weight_decay: Decoupled decay, ``p *= 1 - lr * weight_decay`` (AdamW).
        l2: L2 decay added to the gradient, ``g + l2 * p`` (Adam).

    Attributes:
        exp_avg: First moments of every parameter, concatenated (``flat.exp_avg``).
        exp_avg_sq: Second moments (``flat.exp_avg_sq``).
        state_step: Step counter (int32), as the experimental optimizers'.
        offsets: Where each parameter starts in the flat buffers (and the total at the end).
    """

    def __init__(
        self,
        params: Sequence[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        for what, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay), ("l2", l2)):
            if value < 0.0:
                raise ValueError(f"FlatAdamW: invalid {what} value: {value}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"FlatAdamW: invalid betas: {betas}")
        defaults = {
            "lr": float(lr),
            "betas": tuple(betas),
            "eps": float(eps),
            "weight_decay": float(weight_decay),
        }
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("FlatAdamW: one parameter group only")
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.l2 = float(l2)
        self.shapes = tuple(tuple(int(d) for d in p.shape) for p in self.parameters)
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        self.offsets = tuple(int(o) for o in np.cumsum([0, *sizes]))
        self.exp_avg = Parameter(
            Tensor(np.zeros(self.offsets[-1], np.float32)), name="flat.exp_avg"
        )
        self.exp_avg_sq = Parameter(
            Tensor(np.zeros(self.offsets[-1], np.float32)), name="flat.exp_avg_sq"
        )
        self.state_step = Parameter(Tensor(0, ms.int32), "state_step")
        self.increase_tensor = Tensor(1, ms.int32)
        self.assignadd = ops.AssignAdd()
        self.pow = ops.Pow()

    def construct(self, gradients: tuple[Tensor, ...]) -> bool:
        """One step over every parameter; the operations of the experimental ``AdamW``."""
        self.assignadd(self.state_step, self.increase_tensor)
        return self.implementation(self.lrs[0], gradients)

    @ms.jit
    def implementation(self, lr: Parameter, gradients: tuple[Tensor, ...]) -> bool:
        """The update, compiled in PyNative too.

        As the experimental ``AdamW``'s: compiled values differ from op-by-op ones in the
        last bit.
        """
        params = self.parameters
        grad = ops.cat([ops.reshape(g, (-1,)) for g in gradients])
        param = ops.cat([ops.reshape(p, (-1,)) for p in params])
        if self.l2 != 0.0:  # as the experimental optimizers' _decay_weight: p * l2 + g
            grad = param * Tensor(self.l2, ms.float32) + grad
        # the experimental AdamW's prepare_func
        weight_decay_new = 1 - lr * self.weight_decay
        bias_correction1 = 1 - self.pow(self.beta1, self.state_step)
        bias_correction2 = 1 - self.pow(self.beta2, self.state_step)
        step_size = lr / bias_correction1
        bias_correction2_sqrt = ops.sqrt(bias_correction2)
        # and its per-parameter update, on the flat buffers
        next_param = param * weight_decay_new
        exp_avg = self.exp_avg * self.beta1 + grad * (1 - self.beta1)
        exp_avg_sq = ops.addcmul(self.exp_avg_sq * self.beta2, grad, grad, 1 - self.beta2)
        ops.assign(self.exp_avg, exp_avg)
        ops.assign(self.exp_avg_sq, exp_avg_sq)
        denom = ops.sqrt(exp_avg_sq) / bias_correction2_sqrt + self.eps
        new = next_param - (exp_avg / denom) * step_size
        for i in range(len(self.shapes)):
            piece = new[self.offsets[i] : self.offsets[i + 1]]
            ops.assign(params[i], ops.reshape(piece, self.shapes[i]))
        return True


def build_optimizer(params: Sequence[Parameter], optim_cfg: Any) -> optim.Optimizer:
    """The experimental MindSpore optimizer matching ``cfg.optim`` (and PyTorch's twin).

    Args:
        params: The trainable parameters (student and distiller; never the teacher's).
        optim_cfg: An :class:`irkd.config.OptimConfig` (``name``, ``lr``, ``weight_decay``,
            ``momentum``, ``betas``, ``eps``).

    Returns:
        :class:`FlatAdamW` (``adamw``: decoupled decay; ``adam``: L2 decay) or ``SGD``
        (momentum, L2 decay), one parameter group.

    Raises:
        ValueError: An unknown optimizer name or an empty parameter list.
    """
    params = list(params)
    if not params:
        raise ValueError("build_optimizer: no trainable parameters")
    lr = float(optim_cfg.lr)
    wd = float(optim_cfg.weight_decay)
    betas = (float(optim_cfg.betas[0]), float(optim_cfg.betas[1]))
    if optim_cfg.name == "adamw":
        return FlatAdamW(params, lr=lr, betas=betas, eps=float(optim_cfg.eps), weight_decay=wd)
    if optim_cfg.name == "adam":
        return FlatAdamW(params, lr=lr, betas=betas, eps=float(optim_cfg.eps), l2=wd)
    if optim_cfg.name == "sgd":
        return optim.SGD(params, lr=lr, momentum=float(optim_cfg.momentum), weight_decay=wd)
    raise ValueError(
        f"optim.name: unknown optimizer {optim_cfg.name!r}; valid: {', '.join(OPTIMIZERS)}"
    )


def set_lr(optimizer: optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate in place (seen by an already compiled step).

    Raises:
        TypeError: A group whose ``lr`` is not a ``Parameter`` (set by hand to a number).
    """
    value = Tensor(np.float32(lr), ms.float32)
    for i, group in enumerate(optimizer.param_groups):
        p = group["lr"]
        if not isinstance(p, Parameter):
            raise TypeError(
                f"param_groups[{i}]['lr'] is a {type(p).__name__}, not a Parameter: set it "
                "with set_lr only"
            )
        ops.assign(p, value)


def get_lr(optimizer: optim.Optimizer) -> list[float]:
    """The learning rate of each group, as the optimizer reads it."""
    return [float(group["lr"].asnumpy()) for group in optimizer.param_groups]


def optimizer_state(optimizer: optim.Optimizer) -> dict[str, Parameter]:
    """Name -> parameter of the optimizer's own state (moments, step, learning rates).

    The model parameters it updates are left out (compared by identity).

    Raises:
        WeightsError: Two state parameters share a name (a name collision between the
            trained cells; give them distinct prefixes).
    """
    model = {id(p) for p in optimizer.parameters}
    out: dict[str, Parameter] = {}
    for _, p in optimizer.parameters_and_names():
        if id(p) in model:
            continue
        if p.name in out and out[p.name] is not p:
            raise WeightsError(f"optimizer state: two parameters are named {p.name!r}")
        out[p.name] = p
    for group in optimizer.param_groups:
        lr = group["lr"]
        if isinstance(lr, Parameter):
            out[lr.name] = lr
    return out


def _specs(params: dict[str, Parameter]) -> dict[str, Spec]:
    return {
        name: Spec(tuple(int(d) for d in p.shape), np.dtype(str(p.dtype).lower()).name)
        for name, p in params.items()
    }


def save_optimizer(optimizer: optim.Optimizer, path: str | os.PathLike[str]) -> Path:
    """Write :func:`optimizer_state` to a MindSpore checkpoint (``.ckpt``).

    Not atomic by itself: write into a folder that is put in place atomically
    (``irkd.files.atomic_dir`` / ``RunDir.write_checkpoint``).
    """
    path = Path(path)
    state = optimizer_state(optimizer)
    entries = [{"name": n, "data": Tensor(p.asnumpy().copy())} for n, p in state.items()]
    ms.save_checkpoint(entries, str(path))
    # MindSpore leaves its checkpoints owner-read-only: give the file the umask's mode.
    os.chmod(path, file_mode())
    return path


def load_optimizer(optimizer: optim.Optimizer, path: str | os.PathLike[str]) -> None:
    """Restore what :func:`save_optimizer` wrote, strictly, writing each value in place.

    Raises:
        WeightsError: A missing/corrupt file, or names, shapes or dtypes that differ from the
            optimizer's (another optimizer kind, or other trained networks).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"optimizer state {path} not found")
    try:
        saved = ms.load_checkpoint(str(path))
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError for bad files
        raise WeightsError(f"cannot read optimizer state {path}: {exc}") from None
    state = optimizer_state(optimizer)
    arrays = {name: t.asnumpy() for name, t in saved.items()}
    if isinstance(optimizer, FlatAdamW):
        arrays = _packed(optimizer, arrays)
    check_strict(_specs(state), arrays, what=f"optimizer state {path.name} does not fit")
    for name, p in state.items():
        # np.array, not np.ascontiguousarray: the latter turns a 0-d array (state_step, the
        # learning rates) into shape (1,).
        ops.assign(p, Tensor(np.array(arrays[name], order="C", copy=True)))


_PER_PARAMETER = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
"""The moment prefixes of the experimental AdamW's per-parameter state."""


def _packed(optimizer: FlatAdamW, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A per-parameter AdamW state (``exp_avg.<name>``...) in :class:`FlatAdamW`'s layout.

    The state an earlier irkd wrote (``mindspore.experimental.optim.AdamW``, or
    :class:`AdamL2`), so that its runs resume. Anything else is returned as it is, for the
    strict check to name what does not fit; ``max_exp_avg_sq.*`` (AMSGrad, unused) is dropped.
    """
    if "flat.exp_avg" in arrays:
        return arrays
    names = [p.name for p in optimizer.parameters]
    sizes = np.diff(optimizer.offsets)
    used = {f"{key}.{name}" for key in _PER_PARAMETER for name in names}
    out = {k: v for k, v in arrays.items() if k not in used}  # the rest: checked strictly
    for key in ("exp_avg", "exp_avg_sq"):
        parts = [arrays.get(f"{key}.{name}") for name in names]
        if any(a is None or a.size != n for a, n in zip(parts, sizes, strict=True)):
            return arrays
        flat = np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in parts])
        out[f"flat.{key}"] = flat
    return out
