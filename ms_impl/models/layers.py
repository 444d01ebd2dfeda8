"""The layers whose MindSpore defaults differ from PyTorch's, each trap written once.

Twin of ``torch_ref.models.layers``: the same names build the same numbers.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn
from mindspore.ops import operations as P

__all__ = ["batch_norm", "conv2d", "resize_like", "resize_to"]


def conv2d(cin: int, cout: int, k: int, *, bias: bool) -> nn.Conv2d:
    """Convolution with PyTorch's semantics: explicit ``k // 2`` zero padding, stride 1.

    MindSpore's default ``pad_mode="same"`` pads asymmetrically for even sizes and ignores
    ``padding``; ``pad_mode="pad"`` is PyTorch's.
    """
    return nn.Conv2d(cin, cout, k, pad_mode="pad", padding=k // 2, has_bias=bias)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm matching ``torch.nn.BatchNorm2d(channels)``.

    MindSpore's ``momentum`` weighs the old running statistic (0.9), PyTorch's the new
    batch statistic (0.1): the same update.
    """
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9)


def resize_to(x: ms.Tensor, size: tuple) -> ms.Tensor:
    """Bilinear resize, ``align_corners=True``, to an explicit (H, W).

    The primitive that ``ops.interpolate`` calls for this mode (the same numbers), used
    directly because ``ops.interpolate`` demands a constant size and so blocks a MindIR with
    dynamic H, W (see ``deploy_ascend.mindir_export``).
    """
    return P.ResizeBilinearV2(align_corners=True, half_pixel_centers=False)(x, size)


def resize_like(x: ms.Tensor, ref: ms.Tensor) -> ms.Tensor:
    """:func:`resize_to` the H, W of ``ref``."""
    return resize_to(x, (ref.shape[2], ref.shape[3]))
