"""Step timing of the MindSpore trainer (``irkd bench steps``); twin of ``torch_ref.bench``.

The first step includes the graph compilation (GRAPH_MODE, the training default).
"""

from __future__ import annotations

import os
import time

import mindspore as ms
import numpy as np

from irkd.config import ExperimentConfig
from ms_impl.models import create_model
from ms_impl.train import MSTrainer
from ms_impl.weights import save_neutral_net

__all__ = ["step_times", "write_random_weights"]


def write_random_weights(network: str, path: str | os.PathLike[str], seed: int = 0) -> None:
    """Seeded random weights of a registered network, as a neutral file."""
    ms.set_seed(seed)
    save_neutral_net(create_model(network), path, name=network)


def step_times(
    cfg: ExperimentConfig, images: np.ndarray, masks: np.ndarray, steps: int
) -> list[float]:
    """Seconds of each of ``steps`` optimizer steps of the real trainer on one batch."""
    trainer = MSTrainer(cfg)
    trainer.train_mode()
    out = []
    for i in range(steps):
        t0 = time.perf_counter()
        trainer.step(images, masks, i, cfg.optim.lr, where=f"bench step {i + 1}")
        out.append(time.perf_counter() - t0)
    return out
