"""Optimizers and the per-step learning rate: the PyTorch twin of ``ms_impl.optim``.

``cfg.optim.name`` -> ``torch.optim.AdamW`` (decoupled decay), ``torch.optim.Adam`` (L2 decay
on the gradient) or ``torch.optim.SGD`` (momentum, L2 decay); ``ms_impl.optim`` documents
which MindSpore optimizer matches each one and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "build_optimizer", "get_lr", "set_lr"]

OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "sgd")
"""Valid ``cfg.optim.name`` values."""


def build_optimizer(params: Iterable[nn.Parameter], optim_cfg: Any) -> torch.optim.Optimizer:
    """The PyTorch optimizer of ``cfg.optim`` (one parameter group).

    Args:
        params: The trainable parameters (student and distiller; never the teacher's).
        optim_cfg: An :class:`irkd.config.OptimConfig` (``name``, ``lr``, ``weight_decay``,
            ``momentum``, ``betas``, ``eps``).

    Raises:
        ValueError: An unknown optimizer name or an empty parameter list.
    """
    params = list(params)
    if not params:
        raise ValueError("build_optimizer: no trainable parameters")
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(
            params,
            lr=optim_cfg.lr,
            betas=tuple(optim_cfg.betas),
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
        )
    if optim_cfg.name == "adam":
        return torch.optim.Adam(
            params,
            lr=optim_cfg.lr,
            betas=tuple(optim_cfg.betas),
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
        )
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim_cfg.lr,
            momentum=optim_cfg.momentum,
            weight_decay=optim_cfg.weight_decay,
        )
    raise ValueError(
        f"optim.name: unknown optimizer {optim_cfg.name!r}; valid: {', '.join(OPTIMIZERS)}"
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate (read by the next ``step()``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def get_lr(optimizer: torch.optim.Optimizer) -> list[float]:
    """The learning rate of each group."""
    return [float(group["lr"]) for group in optimizer.param_groups]
