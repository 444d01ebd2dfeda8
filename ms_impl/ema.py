"""Exponential moving average of the student's weights (``train.ema``), MindSpore side.

:class:`ModelEma` mirrors ``torch_ref.ema.ModelEma`` (same name, same methods, same float32
operations). After optimizer step ``t`` (1-based) the trainer calls ``ema.update(t)``: with
``d = irkd.schedule.ema_decay(decay, t)``, every floating-point parameter of the student
(weights and BatchNorm ``moving_mean``/``moving_variance``) gives
``e = e * float32(d) + w * float32(1 - d)`` (three float32 roundings: the two products, then
the sum); any other dtype is copied. The average starts equal to the student and never feeds
back into training.

The update runs outside the compiled train step, in numpy, on a float32 copy of the average
(the "master" values): it reads each student parameter once (``asnumpy``) and computes in
place. The averaged network (:attr:`ModelEma.module`, a deep copy of the student used for
evaluation) receives the values in place (``ops.assign``, so that its compiled eval graph
sees them) only when it is asked for, once per validation, not once per step.

Why numpy: on a CPU it is faster than a compiled graph of ``assign(e, e * d + w * c)`` over
the same parameters (one CPU kernel launch per operation), and far faster than the same run
eagerly (figures in ``docs/mindspore-notes.md``). On an accelerator the per-parameter
device-to-host reads would dominate instead; for a large student there, a compiled
device-side update (the graph above) is the better choice.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from irkd.schedule import ema_decay
from irkd.weights import check_strict, load_neutral, save_neutral
from ms_impl.weights import SOURCE, expected_specs, name_map

__all__ = ["ModelEma"]


class ModelEma:
    """A frozen, eval-mode copy of a network that follows its weights' moving average.

    Args:
        model: The student (its current weights start the average).
        decay: ``train.ema``, in (0, 1).

    Attributes:
        decay: The configured decay.
        module: The averaged network (eval mode, no gradient), brought up to date on access.
    """

    def __init__(self, model: nn.Cell, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ModelEma: decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self._module = copy.deepcopy(model)
        self._module.set_train(False)
        for p in self._module.get_parameters():
            p.requires_grad = False
        src = model.parameters_dict()
        dst = self._module.parameters_dict()
        if list(src) != list(dst):  # pragma: no cover - a MindSpore regression
            raise RuntimeError("ModelEma: the copied network's parameters differ from the model's")
        self._names = list(src)
        self._src = [src[n] for n in self._names]
        self._dst = [dst[n] for n in self._names]
        self._values = [np.array(p.asnumpy(), order="C", copy=True) for p in self._src]
        self._floats = [np.issubdtype(v.dtype, np.floating) for v in self._values]
        self._nm = name_map(model)
        self._synced = True

    def update(self, step: int) -> float:
        """Average in the student's current weights after optimizer step ``step`` (1-based).

        Returns:
            The decay used (:func:`irkd.schedule.ema_decay`).
        """
        d = ema_decay(self.decay, step)
        for i, p in enumerate(self._src):
            w = p.asnumpy()
            e = self._values[i]
            if self._floats[i]:
                c, k = e.dtype.type(d), e.dtype.type(1.0 - d)
                np.multiply(e, c, out=e)
                np.add(e, np.multiply(w, k), out=e)
            else:
                e[...] = w
        self._synced = False
        return d

    @property
    def module(self) -> nn.Cell:
        """The averaged network, its parameters written in place first when out of date."""
        if not self._synced:
            for p, v in zip(self._dst, self._values, strict=True):
                ops.assign(p, ms.Tensor(v.copy()))
            self._synced = True
        return self._module

    def to_neutral(self) -> dict[str, np.ndarray]:
        """The average as neutral arrays (PyTorch names, like the student's own files)."""
        return self._nm.dict_to_torch(
            {n: v.copy() for n, v in zip(self._names, self._values, strict=True)}
        )

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the average as a neutral weights file (loads like any network's weights)."""
        return save_neutral(path, self.to_neutral(), network=name, source=SOURCE, metadata=metadata)

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
        if isinstance(src, Mapping):
            arrays, what = dict(src), "weights"
        else:
            arrays, _ = load_neutral(src)
            what = f"weights file {Path(src).name}"
        check_strict(
            expected_specs(self._module),
            arrays,
            what=f"{what} does not fit {network or type(self._module).__name__}",
        )
        ms_arrays = self._nm.dict_to_ms(arrays)
        self._values = [np.array(ms_arrays[n], order="C", copy=True) for n in self._names]
        self._synced = False
