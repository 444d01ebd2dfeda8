"""The layers whose PyTorch defaults the MindSpore twin must match, each written once.

Twin of ``ms_impl.models.layers``: the same names build the same numbers.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["batch_norm", "conv2d", "resize_like", "resize_to"]


def conv2d(cin: int, cout: int, k: int, *, bias: bool) -> nn.Conv2d:
    """Convolution with ``k // 2`` zero padding, stride 1."""
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """``torch.nn.BatchNorm2d(channels)`` (eps 1e-5, momentum 0.1), as both sides use it."""
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize, ``align_corners=True``, to an explicit (H, W)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def resize_like(x: Tensor, ref: Tensor) -> Tensor:
    """:func:`resize_to` the H, W of ``ref``.

    The size stays ``ref.shape[-2:]`` (no ``int()``): an ONNX export traces it as a shape
    expression, so the exported graph keeps dynamic H, W.
    """
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)
