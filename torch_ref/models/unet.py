"""Plain U-Net (PyTorch twin of ``ms_impl.models.unet``).

Topology, for ``widths = (w0, .., w4)``:

* ``enc0`` = double conv ``in_channels -> w0`` on the input; ``enc{i}`` (i = 1..4) = 2x2 max
  pool of ``enc{i-1}``, then double conv ``w{i-1} -> w{i}``.
* ``dec3`` = double conv of ``concat(enc3, up(enc4))``, ``dec{i}`` (i = 2..0) = double conv of
  ``concat(enc{i}, up(dec{i+1}))`` down to ``w{i}`` channels; ``up`` is bilinear upsampling
  (``align_corners=True``) to the skip's exact size. The skip comes first in the concat.
* ``head`` = 1x1 convolution (with bias) ``w0 -> num_classes``: logits, no sigmoid.

A double conv is ``Sequential(conv3x3, BN, ReLU, conv3x3, BN, ReLU)``, the convolutions with
padding 1 and no bias (BN follows). Parameter names are therefore ``enc0.0.weight``,
``enc0.1.weight``, ``enc0.1.running_mean``, ..., ``head.weight``, ``head.bias``; the MindSpore
twin has the same names up to BatchNorm's (weight/bias/running_mean/running_var <->
gamma/beta/moving_mean/moving_variance). Inputs need H and W divisible by 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from irkd.zoo import HEAD_BIAS

from .layers import batch_norm, conv2d, resize_like

__all__ = ["UNet"]


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    """Conv3x3 (no bias) + BN + ReLU, twice."""
    return nn.Sequential(
        conv2d(cin, cout, 3, bias=False),
        batch_norm(cout),
        nn.ReLU(inplace=False),
        conv2d(cout, cout, 3, bias=False),
        batch_norm(cout),
        nn.ReLU(inplace=False),
    )


class UNet(nn.Module):
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
        assert self.head.bias is not None  # built with bias=True
        nn.init.constant_(self.head.bias, HEAD_BIAS)  # target prior, see irkd.zoo.HEAD_PRIOR

    @staticmethod
    def _up_cat(skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        up = resize_like(deep, skip)
        return torch.cat([skip, up], dim=1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the stage features ``enc0..enc4``, ``dec0..dec3`` (see ``irkd.zoo``).

        Args:
            x: Input batch ``(B, in_channels, H, W)``, H and W multiples of 16.

        Returns:
            ``(logits, features)``: logits ``(B, num_classes, H, W)``; ``features[name]`` has
            ``widths[i]`` channels at stride ``2**i``.
        """
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2, 2))
        e2 = self.enc2(F.max_pool2d(e1, 2, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2, 2))
        e4 = self.enc4(F.max_pool2d(e3, 2, 2))
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` (no sigmoid)."""
        return self.forward_features(x)[0]
