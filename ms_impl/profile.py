"""Model accounting on the MindSpore side (MACs are counted on the PyTorch twin)."""

from __future__ import annotations

from mindspore import nn

__all__ = ["count_params"]


def count_params(net: nn.Cell) -> int:
    """Number of trainable parameters of ``net`` (BatchNorm moving statistics excluded)."""
    return int(sum(p.size for p in net.trainable_params()))
