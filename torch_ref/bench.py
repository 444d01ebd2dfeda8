"""Step timing of the PyTorch trainer (``irkd bench steps``); twin of ``ms_impl.bench``."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from irkd.config import ExperimentConfig
from torch_ref.models import create_model
from torch_ref.runtime import torch_threads
from torch_ref.train import TorchTrainer
from torch_ref.weights import save_neutral_net

__all__ = ["step_times", "write_random_weights"]


def write_random_weights(network: str, path: str | os.PathLike[str], seed: int = 0) -> None:
    """Seeded random weights of a registered network, as a neutral file."""
    torch.manual_seed(seed)
    save_neutral_net(create_model(network), path, name=network)


def step_times(
    cfg: ExperimentConfig, images: np.ndarray, masks: np.ndarray, steps: int
) -> list[float]:
    """Seconds of each of ``steps`` optimizer steps of the real trainer on one batch."""
    torch.set_num_threads(torch_threads())
    trainer = TorchTrainer(cfg)
    trainer.train_mode()
    out = []
    for i in range(steps):
        t0 = time.perf_counter()
        trainer.step(images, masks, i, cfg.optim.lr, where=f"bench step {i + 1}")
        out.append(time.perf_counter() - t0)
    return out
