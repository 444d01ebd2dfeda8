"""What each global step gets, on both backends alike: learning rate, EMA decay and noise.

- :func:`steps_per_epoch`: ``len(batches)`` capped by ``schedule.steps_per_epoch``.
- :func:`lr_at`: learning rate of a global step (0-based): linear warm-up, then cosine to
  ``min_lr`` / step decay / constant.
- :func:`ema_decay`: decay of the student's weight average after an optimizer step
  (``train.ema``; ``torch_ref.ema.ModelEma`` and ``ms_impl.ema.ModelEma`` apply it).
- :func:`noise_for`: the per-stage uniform [0, 1) float32 noise of a global step (MGD), drawn
  from ``np.random.default_rng([seed, step, NOISE_SALT])``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from irkd.config import OptimConfig, ScheduleConfig

if TYPE_CHECKING:
    from irkd.data import TrainBatches

__all__ = ["NOISE_SALT", "ema_decay", "lr_at", "noise_for", "steps_per_epoch"]

NOISE_SALT = 7
"""Third word of the noise RNG seed, ``default_rng([seed, step, NOISE_SALT])``."""


def steps_per_epoch(batches: TrainBatches | int, schedule_cfg: ScheduleConfig) -> int:
    """Number of steps of each epoch: the batches, capped by ``schedule.steps_per_epoch``."""
    n = batches if isinstance(batches, int) else len(batches)
    cap = schedule_cfg.steps_per_epoch
    return int(n if cap is None else min(n, cap))


def lr_at(
    step: int, steps_per_epoch: int, optim_cfg: OptimConfig, schedule_cfg: ScheduleConfig
) -> float:
    """Learning rate of global step ``step`` (0-based), updated every step.

    - Warm-up (``warmup_epochs`` > 0): ``lr * (step + 1) / warmup_steps`` for the first
      ``warmup_steps = warmup_epochs * steps_per_epoch`` steps.
    - ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with
      ``t = (step - warmup_steps) / (total_steps - warmup_steps)``, so the first step after
      warm-up runs at ``lr`` and the curve ends just above ``min_lr``.
    - ``step``: ``lr * gamma ** (epoch // step_epochs)``, ``epoch = step // steps_per_epoch``.
    - ``constant``: ``lr``.

    Args:
        step: Global step index (0-based).
        steps_per_epoch: Steps of one epoch (>= 1).
        optim_cfg: Peak ``lr``.
        schedule_cfg: Scheduler, ``epochs``, ``warmup_epochs``, ``min_lr``, ``step_epochs``,
            ``gamma``.

    Returns:
        The learning rate (a Python float).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"lr_at: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    base = float(optim_cfg.lr)
    warm = int(schedule_cfg.warmup_epochs) * steps_per_epoch
    if step < warm:
        return base * (step + 1) / warm
    kind = schedule_cfg.scheduler
    if kind == "constant":
        return base
    if kind == "step":
        epoch = step // steps_per_epoch
        return base * float(schedule_cfg.gamma) ** (epoch // max(1, schedule_cfg.step_epochs))
    total = int(schedule_cfg.epochs) * steps_per_epoch
    span = max(1, total - warm)
    t = min(1.0, (step - warm) / span)
    lo = float(schedule_cfg.min_lr)
    return lo + (base - lo) * 0.5 * (1.0 + math.cos(math.pi * t))


def ema_decay(ema: float, step: int) -> float:
    """Decay of the student's weight average (``train.ema``) after optimizer step ``step``.

    ``min(ema, (1 + step) / (10 + step))``: the warm-up of TensorFlow's
    ``ExponentialMovingAverage(decay, num_updates)``, so that the early average is not
    dominated by the initial weights (0.18 after step 1, 0.5 after step 8, 0.9 after step
    80, 0.99 after step 890). Both backends then update every floating-point tensor of the
    student in float32, in this order::

        e = e * float32(d) + w * float32(1 - d)     # three roundings: mul, mul, add

    with ``1 - d`` computed in float64 before its rounding to float32.

    Args:
        ema: The configured decay, in [0, 1).
        step: Optimizer steps done, counting the one just made (>= 1: the global step
            after the update).

    Returns:
        The decay ``d`` (a Python float).
    """
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema_decay: ema must be in [0, 1), got {ema!r}")
    if step < 1:
        raise ValueError(f"ema_decay: step must be >= 1 (steps done), got {step}")
    return min(float(ema), (1.0 + step) / (10.0 + step))


def noise_for(seed: int, step: int, shapes: Iterable[tuple[int, ...]]) -> tuple[np.ndarray, ...]:
    """Uniform [0, 1) float32 noise for one global step, the same on both backends.

    Drawn from ``np.random.default_rng([seed, step, NOISE_SALT])`` in the order of
    ``shapes``. An empty shape ``()`` (a stage that needs no noise) yields a float32 0-d
    zero without drawing, so the stages that do draw see the same numbers whatever the
    others need.

    Args:
        seed: Experiment seed.
        step: Global step (0-based index of the step about to run).
        shapes: One shape per distilled stage (``Distiller.noise_shapes``).

    Returns:
        A tuple of float32 arrays, one per shape.
    """
    rng = np.random.default_rng([int(seed), int(step), NOISE_SALT])
    out = []
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        if shape == ():
            out.append(np.zeros((), np.float32))
        else:
            out.append(rng.random(shape, dtype=np.float32))
    return tuple(out)
