"""Model accounting on the PyTorch twin: trainable parameters and multiply-accumulates.

MACs are measured by running one forward pass with temporary forward hooks on every
``Conv2d``, ``ConvTranspose2d`` and ``Linear`` (hooks are removed afterwards; they are a
measurement tool, not a distillation mechanism). Counted, per call of a layer:

* ``Conv2d``: ``out_elements * in_channels / groups * kh * kw``;
* ``ConvTranspose2d``: ``in_elements * out_channels / groups * kh * kw``;
* ``Linear``: ``out_elements * in_features``.

Biases, BatchNorm, activations, pooling, upsampling and element-wise operations are not
counted (they are a fraction of a percent of a convolutional network's cost). The count covers
the whole batch of ``shape``; with the default batch of 1 it is the per-image figure.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["count_params", "count_macs", "macs_by_layer", "count_ops_thop_convention"]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inp.numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def _run_counting(net: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """One eval-mode forward of ``net`` on ``x`` with temporary counting hooks."""
    counts: dict[str, int] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            counts[name] = counts.get(name, 0) + int(_layer_macs(module, args[0], out))

        return hook

    handles = [
        m.register_forward_hook(make_hook(name))
        for name, m in net.named_modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
    ]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return counts


def macs_by_layer(model: nn.Module, shape: Sequence[int] = (1, 1, 256, 256)) -> dict[str, int]:
    """MACs of every counted layer for one forward pass on an input of ``shape``.

    Args:
        model: The network, left untouched: a copy of it runs once in eval mode on the
            ``meta`` device (shapes only, no arithmetic, so any input size is cheap). If the
            network cannot run on ``meta``, ``model`` itself runs on zeros (its training flag
            is restored afterwards).
        shape: Input shape ``(B, C, H, W)``.

    Returns:
        ``{module name: MACs}`` (summed over calls if a layer runs more than once), in
        execution order.
    """
    shape = tuple(int(s) for s in shape)
    try:
        return _run_counting(copy.deepcopy(model).to("meta"), torch.zeros(shape, device="meta"))
    except (RuntimeError, NotImplementedError):
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        return _run_counting(model, torch.zeros(shape, device=device))


def count_macs(model: nn.Module, shape: Sequence[int] = (1, 1, 256, 256)) -> int:
    """Multiply-accumulates of convolutions and linear layers for one forward pass.

    Args:
        model: The network (see :func:`macs_by_layer`).
        shape: Input shape ``(B, C, H, W)``; the count covers the whole batch.

    Returns:
        Total MACs (integer).
    """
    return int(sum(macs_by_layer(model, shape).values()))


class _InterpolateCounter(torch.overrides.TorchFunctionMode):
    """Counts output elements of bilinear ``F.interpolate`` calls (functional, so no hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        out = func(*args, **(kwargs or {}))
        if func is torch.nn.functional.interpolate and isinstance(out, torch.Tensor):
            self.elements += out.numel()
        return out


def count_ops_thop_convention(
    model: nn.Module, shape: Sequence[int] = (1, 1, 256, 256)
) -> dict[str, int]:
    """Operation count under thop's convention, the one BasicIRSTD's published figures use.

    thop counts ``Conv2d`` as we do (no bias), ``BatchNorm2d`` as 4 operations per element,
    a bilinear resize as 11 per output element and global average pooling (the channel
    attention's) as ``pool size + 1`` per output; ReLU, max pooling, sigmoid and concatenation
    count zero. This reconciles :func:`count_macs` with the published DNANet figure
    (14.26 G at 1x1x256x256).

    Returns:
        ``{"conv": ..., "bn": ..., "resize": ..., "avgpool": ..., "total": ...}``.
    """
    shape = tuple(int(s) for s in shape)
    counts = {"bn": 0, "avgpool": 0}

    def bn_hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        counts["bn"] += 4 * args[0].numel()

    def pool_hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        x = args[0]
        counts["avgpool"] += (x.shape[2] * x.shape[3] + 1) * x.shape[0] * x.shape[1]

    net = copy.deepcopy(model).eval()
    handles = []
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_hook(bn_hook))
        if getattr(m, "has_global_avg_pool", False):
            handles.append(m.register_forward_hook(pool_hook))
    resize = _InterpolateCounter()
    try:
        with torch.no_grad(), resize:
            net(torch.zeros(shape))
    finally:
        for h in handles:
            h.remove()
    conv = count_macs(model, shape)
    out = {"conv": conv, "bn": counts["bn"], "resize": 11 * resize.elements}
    out["avgpool"] = counts["avgpool"]
    out["total"] = sum(out.values())
    return out
