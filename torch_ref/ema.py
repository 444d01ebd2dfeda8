"""Exponential moving average of the student's weights (``train.ema``), PyTorch side.

:class:`ModelEma` is mirrored by ``ms_impl.ema.ModelEma`` (same name, same methods, same
float32 operations). After optimizer step ``t`` (1-based) the trainer calls
``ema.update(t)``: with ``d = irkd.schedule.ema_decay(decay, t)``, every floating-point tensor
of the student's ``state_dict`` (parameters and BatchNorm ``running_mean``/``running_var``)
becomes ``e = e * float32(d) + w * float32(1 - d)`` (three float32 roundings: the two
products, then the sum); integer buffers (``num_batches_tracked``) are copied. The average
starts equal to the student and never feeds back into training.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from irkd.schedule import ema_decay
from torch_ref.weights import load_neutral_net, net_to_neutral, save_neutral_net

__all__ = ["ModelEma"]


class ModelEma:
    """A frozen, eval-mode copy of a network that follows its weights' moving average.

    Args:
        model: The student (its current weights start the average).
        decay: ``train.ema``, in (0, 1).

    Attributes:
        decay: The configured decay.
        module: The averaged network (eval mode, no gradient), on the student's device.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ModelEma: decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        src, dst = model.state_dict(), self.module.state_dict()
        # state_dict() tensors share storage with the modules' parameters and buffers, and
        # loading a checkpoint (load_state_dict) copies into that storage: these stay valid.
        self._floats = [(dst[k], src[k]) for k in dst if dst[k].is_floating_point()]
        self._others = [(dst[k], src[k]) for k in dst if not dst[k].is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> float:
        """Average in the student's current weights after optimizer step ``step`` (1-based).

        Returns:
            The decay used (:func:`irkd.schedule.ema_decay`).
        """
        d = ema_decay(self.decay, step)
        if self._floats:
            ema = [e for e, _ in self._floats]
            # Python scalars are rounded to the tensors' float32 by the kernels.
            torch._foreach_mul_(ema, d)
            torch._foreach_add_(ema, torch._foreach_mul([w for _, w in self._floats], 1.0 - d))
        for e, w in self._others:
            e.copy_(w)
        return d

    def to_neutral(self) -> dict[str, np.ndarray]:
        """The average as neutral arrays (the student's names, ``num_batches_tracked`` aside)."""
        return net_to_neutral(self.module)

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the average as a neutral weights file (loads like any network's weights)."""
        return save_neutral_net(self.module, path, name=name, metadata=metadata)

    def load(
        self,
        src: str | os.PathLike[str] | Mapping[str, np.ndarray],
        *,
        network: str | None = None,
    ) -> None:
        """Restore the average from a neutral file or arrays, strictly and bit-exactly.

        Raises:
            WeightsError: A missing/extra/mis-shaped tensor, or an unreadable file.
        """
        load_neutral_net(self.module, src, network=network)
