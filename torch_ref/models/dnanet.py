"""DNANet (Li et al., "Dense Nested Attention Network for Infrared Small Target Detection").

PyTorch twin of ``ms_impl.models.dnanet``: the same class name, constructor keyword arguments,
module tree and parameter names (MindSpore's BatchNorm parameters are renamed
``gamma``/``beta``/``moving_mean``/``moving_variance``; torch's ``num_batches_tracked`` buffers
have no MindSpore counterpart).

Topology (``[...]`` is a channel concatenation in that order; ``up``/``down`` are bilinear
resizes with ``align_corners=True`` to the size of the node they join, ``pool`` a 2x2 max pool)::

    x0_0 = conv0_0(x)
    x{i}_0 = conv{i}_0(pool x{i-1}_0)                                     i = 1..4
    x{i}_{j} = conv{i}_{j}[x{i}_0, ..., x{i}_{j-1}, up x{i+1}_{j-1}, down x{i-1}_{j}]
                                            (no ``down`` term on level 0), i + j <= 4
    fused = conv0_4_final[up16 conv0_4_1x1 x4_0, up8 conv0_3_1x1 x3_1,
                          up4 conv0_2_1x1 x2_2, up2 conv0_1_1x1 x1_3, x0_4]
    logits = final(fused)            (deep supervision: final4(fused), aux{k} = final{k}(x0_k))

Every node ``conv{i}_{j}`` is an ``nn.Sequential`` of residual CBAM blocks: one block on level 0
(and for ``conv0_4_final``), ``num_blocks[i - 1]`` blocks on level ``i >= 1``. The network
returns logits (no sigmoid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from irkd.zoo import HEAD_BIAS

from .layers import batch_norm, conv2d, resize_like

__all__ = [
    "ChannelAttention",
    "SpatialAttention",
    "ResCBAMBlock",
    "DNANet",
    "FEATURE_NAMES",
    "AUX_NAMES",
    "features_to_dict",
    "node_specs",
]

FEATURE_NAMES = ("enc0", "enc1", "enc2", "enc3", "enc4", "dec0", "dec1", "dec2", "dec3")
"""Stage features returned by ``DNANet.forward_features``, in dict order."""

AUX_NAMES = ("aux1", "aux2", "aux3")
"""Side logits added to the feature dict when ``deep_supervision=True``."""

_STRIDE = 16  # input H and W must be multiples of this (four 2x2 poolings)


def _check_ints(name: str, value: Sequence[int], length: int) -> tuple[int, ...]:
    """Validate a sequence of ``length`` positive integers."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of {length} positive integers, got {value!r}")
    out = tuple(value)
    if len(out) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(out)}: {list(out)}")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} entries must be positive integers, got {list(out)}")
    return out


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``sigmoid(mlp(avgpool x) + mlp(maxpool x))``, shape (B, C, 1, 1).

    Args:
        channels: Input channels ``C``; the hidden width is ``max(1, C // 16)``.
    """

    #: Marks the global average pooling that thop counts (see ``torch_ref.profile``).
    has_global_avg_pool = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 16)
        self.fc1 = conv2d(channels, hidden, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Attention weights (B, C, 1, 1) in (0, 1)."""
        avg = self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        mx = self.fc2(self.relu(self.fc1(x.amax(dim=(2, 3), keepdim=True))))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``sigmoid(conv7x7[mean_c x, max_c x])``, shape (B, 1, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv2d(2, 1, 7, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Attention weights (B, 1, H, W) in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class ResCBAMBlock(nn.Module):
    """Residual block with CBAM: two 3x3 conv-BN, channel then spatial attention, shortcut.

    The shortcut is ``nn.Identity`` when ``in_ch == out_ch``, else ``nn.Sequential`` of a 1x1
    convolution (with bias) and BatchNorm (children ``0`` and ``1``).

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = conv2d(in_ch, out_ch, 3, bias=True)
        self.bn1 = batch_norm(out_ch)
        self.relu = nn.ReLU()
        self.conv2 = conv2d(out_ch, out_ch, 3, bias=True)
        self.bn2 = batch_norm(out_ch)
        self.ca = ChannelAttention(out_ch)
        self.sa = SpatialAttention()
        if in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                conv2d(in_ch, out_ch, 1, bias=True),
                batch_norm(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Block output (B, out_ch, H, W)."""
        residual = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.ca(out) * out
        out = self.sa(out) * out
        return self.relu(out + residual)


def _node(in_ch: int, out_ch: int, blocks: int) -> nn.Sequential:
    """A nested node: ``blocks`` residual CBAM blocks, the first one ``in_ch -> out_ch``."""
    return nn.Sequential(
        ResCBAMBlock(in_ch, out_ch), *[ResCBAMBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    )


def node_specs(
    nb_filter: Sequence[int], num_blocks: Sequence[int], in_channels: int
) -> list[tuple[str, int, int, int]]:
    """The nested nodes of DNANet as ``(name, in_ch, out_ch, blocks)``, in build order.

    A copy of ``ms_impl.models.dnanet.node_specs`` (neither side imports the other).
    """
    nb = list(nb_filter)
    specs: list[tuple[str, int, int, int]] = []
    for i in range(5):
        blocks = 1 if i == 0 else num_blocks[i - 1]
        for j in range(5 - i):
            if j == 0:
                in_ch = in_channels if i == 0 else nb[i - 1]
            else:
                in_ch = nb[i] * j + nb[i + 1] + (nb[i - 1] if i > 0 else 0)
            specs.append((f"conv{i}_{j}", in_ch, nb[i], blocks))
    return specs


class DNANet(nn.Module):
    """Dense Nested Attention Network; returns logits (B, num_classes, H, W).

    Args:
        nb_filter: Widths of levels 0..4 (5 positive integers).
        num_blocks: Residual CBAM blocks per node on levels 1..4 (4 positive integers); level 0
            nodes have one block.
        in_channels: Input channels.
        num_classes: Output channels (logits).
        deep_supervision: Build side heads ``final1..final4`` on ``x0_1, x0_2, x0_3`` and the
            fused feature (the output is ``final4``'s); otherwise a single ``final`` head.

    Raises:
        TypeError, ValueError: Invalid arguments (the message names the argument).

    Input H and W must be multiples of 16.
    """

    # The nested nodes, set by name in __init__ (see node_specs).
    conv0_0: nn.Sequential
    conv0_1: nn.Sequential
    conv0_2: nn.Sequential
    conv0_3: nn.Sequential
    conv0_4: nn.Sequential
    conv1_0: nn.Sequential
    conv1_1: nn.Sequential
    conv1_2: nn.Sequential
    conv1_3: nn.Sequential
    conv2_0: nn.Sequential
    conv2_1: nn.Sequential
    conv2_2: nn.Sequential
    conv3_0: nn.Sequential
    conv3_1: nn.Sequential
    conv4_0: nn.Sequential

    def __init__(
        self,
        nb_filter: Sequence[int] = (16, 32, 64, 128, 256),
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 1,
        num_classes: int = 1,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        nb = _check_ints("nb_filter", nb_filter, 5)
        blocks = _check_ints("num_blocks", num_blocks, 4)
        _check_positive("in_channels", in_channels)
        _check_positive("num_classes", num_classes)
        if not isinstance(deep_supervision, bool):
            raise TypeError(f"deep_supervision must be a bool, got {deep_supervision!r}")
        self.nb_filter = nb
        self.num_blocks = blocks
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision

        self.pool = nn.MaxPool2d(2, 2)
        for name, cin, cout, n in node_specs(nb, blocks, in_channels):
            setattr(self, name, _node(cin, cout, n))
        self.conv0_4_final = _node(nb[0] * 5, nb[0], 1)
        self.conv0_4_1x1 = conv2d(nb[4], nb[0], 1, bias=True)
        self.conv0_3_1x1 = conv2d(nb[3], nb[0], 1, bias=True)
        self.conv0_2_1x1 = conv2d(nb[2], nb[0], 1, bias=True)
        self.conv0_1_1x1 = conv2d(nb[1], nb[0], 1, bias=True)
        if deep_supervision:
            self.final1 = conv2d(nb[0], num_classes, 1, bias=True)
            self.final2 = conv2d(nb[0], num_classes, 1, bias=True)
            self.final3 = conv2d(nb[0], num_classes, 1, bias=True)
            self.final4 = conv2d(nb[0], num_classes, 1, bias=True)
        else:
            self.final = conv2d(nb[0], num_classes, 1, bias=True)
        for m in (
            (self.final1, self.final2, self.final3, self.final4)
            if deep_supervision
            else (self.final,)
        ):
            assert m.bias is not None  # built with bias=True
            nn.init.constant_(m.bias, HEAD_BIAS)  # target prior, see irkd.zoo.HEAD_PRIOR

    @property
    def stage_channels(self) -> dict[str, int]:
        """Channels of each stage feature (``enc0..enc4``, ``dec0..dec3``)."""
        out = {f"enc{i}": self.nb_filter[i] for i in range(5)}
        out.update({f"dec{i}": self.nb_filter[i] for i in range(4)})
        return out

    @property
    def stage_strides(self) -> dict[str, int]:
        """Stride (input size / feature size) of each stage feature."""
        out = {f"enc{i}": 2**i for i in range(5)}
        out.update({f"dec{i}": 2**i for i in range(4)})
        return out

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of ``forward_features_tuple``'s outputs after the logits, in order."""
        return FEATURE_NAMES + AUX_NAMES if self.deep_supervision else FEATURE_NAMES

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes, H, W)."""
        return self.forward_features_tuple(x)[0]

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the named stage features.

        Returns:
            ``(logits, feats)``: ``feats`` maps ``enc0..enc4`` to ``x0_0..x4_0``, ``dec0`` to
            the fused full-resolution feature, ``dec1..dec3`` to ``x1_3, x2_2, x3_1``, and with
            deep supervision ``aux1..aux3`` to the side logits of ``x0_1..x0_3``.

        Raises:
            ValueError: H or W is not a multiple of 16 (checked outside tracing/compiling).
        """
        return features_to_dict(self.forward_features_tuple(x), self.feature_names)

    def forward_features_tuple(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(logits, *features)`` with the features ordered as ``self.feature_names``.

        The twin of the MindSpore method of the same name (which exists because a dict graph
        output hangs MindSpore's graph mode in train mode); also handy for ONNX export.

        Raises:
            ValueError: H or W is not a multiple of 16 (checked outside tracing/compiling).
        """
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            if x.dim() != 4 or x.shape[-2] % _STRIDE or x.shape[-1] % _STRIDE:
                raise ValueError(
                    f"DNANet expects (B, C, H, W) input with H and W multiples of {_STRIDE}, "
                    f"got shape {tuple(x.shape)}"
                )

        def cat(*parts: Tensor) -> Tensor:
            return torch.cat(parts, dim=1)

        x0_0 = self.conv0_0(x)
        x1_0 = self.conv1_0(self.pool(x0_0))
        x0_1 = self.conv0_1(cat(x0_0, resize_like(x1_0, x0_0)))

        x2_0 = self.conv2_0(self.pool(x1_0))
        x1_1 = self.conv1_1(cat(x1_0, resize_like(x2_0, x1_0), resize_like(x0_1, x1_0)))
        x0_2 = self.conv0_2(cat(x0_0, x0_1, resize_like(x1_1, x0_0)))

        x3_0 = self.conv3_0(self.pool(x2_0))
        x2_1 = self.conv2_1(cat(x2_0, resize_like(x3_0, x2_0), resize_like(x1_1, x2_0)))
        x1_2 = self.conv1_2(cat(x1_0, x1_1, resize_like(x2_1, x1_0), resize_like(x0_2, x1_0)))
        x0_3 = self.conv0_3(cat(x0_0, x0_1, x0_2, resize_like(x1_2, x0_0)))

        x4_0 = self.conv4_0(self.pool(x3_0))
        x3_1 = self.conv3_1(cat(x3_0, resize_like(x4_0, x3_0), resize_like(x2_1, x3_0)))
        x2_2 = self.conv2_2(cat(x2_0, x2_1, resize_like(x3_1, x2_0), resize_like(x1_2, x2_0)))
        x1_3 = self.conv1_3(cat(x1_0, x1_1, x1_2, resize_like(x2_2, x1_0), resize_like(x0_3, x1_0)))
        x0_4 = self.conv0_4(cat(x0_0, x0_1, x0_2, x0_3, resize_like(x1_3, x0_0)))

        fused = self.conv0_4_final(
            cat(
                resize_like(self.conv0_4_1x1(x4_0), x0_0),
                resize_like(self.conv0_3_1x1(x3_1), x0_0),
                resize_like(self.conv0_2_1x1(x2_2), x0_0),
                resize_like(self.conv0_1_1x1(x1_3), x0_0),
                x0_4,
            )
        )
        feats = (x0_0, x1_0, x2_0, x3_0, x4_0, fused, x1_3, x2_2, x3_1)
        if self.deep_supervision:
            aux = (self.final1(x0_1), self.final2(x0_2), self.final3(x0_3))
            return (self.final4(fused), *feats, *aux)
        return (self.final(fused), *feats)


def features_to_dict(
    outputs: Sequence[Tensor], names: Sequence[str]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Turn ``forward_features_tuple``'s outputs into ``forward_features``'s ``(logits, feats)``.

    Args:
        outputs: ``(logits, *features)``.
        names: The feature names, e.g. ``net.feature_names``.

    Raises:
        ValueError: The lengths disagree.
    """
    if len(outputs) != len(names) + 1:
        raise ValueError(f"got {len(outputs)} outputs for logits + {len(names)} features")
    return outputs[0], dict(zip(names, outputs[1:], strict=True))
