"""Plain U-Net (MindSpore, the native twin of ``torch_ref.models.unet``).

Topology, for ``widths = (w0, .., w4)``:

* ``enc0`` = double conv ``in_channels -> w0`` on the input; ``enc{i}`` (i = 1..4) = 2x2 max
  pool of ``enc{i-1}``, then double conv ``w{i-1} -> w{i}``.
* ``dec3`` = double conv of ``concat(enc3, up(enc4))``, ``dec{i}`` (i = 2..0) = double conv of
  ``concat(enc{i}, up(dec{i+1}))`` down to ``w{i}`` channels; ``up`` is bilinear upsampling
  (``align_corners=True``) to the skip's exact size. The skip comes first in the concat.
* ``head`` = 1x1 convolution (with bias) ``w0 -> num_classes``: logits, no sigmoid.

A double conv is ``SequentialCell(conv3x3, BN, ReLU, conv3x3, BN, ReLU)``, the convolutions
with ``pad_mode='pad', padding=1`` and no bias. Parameter names equal the PyTorch twin's up to
BatchNorm's (gamma/beta/moving_mean/moving_variance <-> weight/bias/running_mean/running_var).
BatchNorm momentum 0.9 here equals 0.1 in PyTorch. Works in PYNATIVE and GRAPH_MODE.
Inputs need H and W divisible by 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import mindspore as ms
from mindspore import nn, ops

from irkd.zoo import HEAD_BIAS

from .layers import batch_norm, conv2d, resize_to

__all__ = ["UNet"]


def _double_conv(cin: int, cout: int) -> nn.SequentialCell:
    """Conv3x3 (no bias) + BN + ReLU, twice."""
    return nn.SequentialCell(
        conv2d(cin, cout, 3, bias=False),
        batch_norm(cout),
        nn.ReLU(),
        conv2d(cout, cout, 3, bias=False),
        batch_norm(cout),
        nn.ReLU(),
    )


class UNet(nn.Cell):
    """Plain five-level U-Net with explicit stage features.

    Args:
        widths: Channels of levels 0..4 (five values).
        in_channels: Input channels (1 for infrared images).
        num_classes: Output channels of the logits.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        in_channels: int = 1,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != 5:
            raise ValueError(f"widths must have 5 values, got {widths}")
        self.widths = tuple(widths)
        self.enc0 = _double_conv(in_channels, widths[0])
        self.enc1 = _double_conv(widths[0], widths[1])
        self.enc2 = _double_conv(widths[1], widths[2])
        self.enc3 = _double_conv(widths[2], widths[3])
        self.enc4 = _double_conv(widths[3], widths[4])
        self.dec3 = _double_conv(widths[3] + widths[4], widths[3])
        self.dec2 = _double_conv(widths[2] + widths[3], widths[2])
        self.dec1 = _double_conv(widths[1] + widths[2], widths[1])
        self.dec0 = _double_conv(widths[0] + widths[1], widths[0])
        self.head = conv2d(widths[0], num_classes, 1, bias=True)
        self.head.bias.set_data(
            ops.full(self.head.bias.shape, HEAD_BIAS, dtype=ms.float32)
        )  # prior
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def _up_cat(self, skip: ms.Tensor, deep: ms.Tensor) -> ms.Tensor:
        size = (skip.shape[2], skip.shape[3])
        up = resize_to(deep, size)  # ops.interpolate's primitive, dynamic-size safe
        return ops.cat((skip, up), axis=1)

    def forward_features(self, x: ms.Tensor) -> tuple[ms.Tensor, dict[str, ms.Tensor]]:
        """Logits and the stage features ``enc0..enc4``, ``dec0..dec3`` (see ``irkd.zoo``).

        Args:
            x: Input batch ``(B, in_channels, H, W)``, H and W multiples of 16.

        Returns:
            ``(logits, features)``: logits ``(B, num_classes, H, W)``; ``features[name]`` has
            ``widths[i]`` channels at stride ``2**i``.
        """
        e0 = self.enc0(x)
        e1 = self.enc1(self.pool(e0))
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        d3 = self.dec3(self._up_cat(e3, e4))
        d2 = self.dec2(self._up_cat(e2, d3))
        d1 = self.dec1(self._up_cat(e1, d2))
        d0 = self.dec0(self._up_cat(e0, d1))
        logits = self.head(d0)
        feats = {
            "enc0": e0,
            "enc1": e1,
            "enc2": e2,
            "enc3": e3,
            "enc4": e4,
            "dec0": d0,
            "dec1": d1,
            "dec2": d2,
            "dec3": d3,
        }
        return logits, feats

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        """Logits ``(B, num_classes, H, W)`` (no sigmoid)."""
        logits, _ = self.forward_features(x)
        return logits
