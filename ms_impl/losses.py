"""Task loss: SoftIoU on the output logits (and the deep-supervision heads).

MindSpore twin of ``torch_ref.losses`` (see docs/contracts.md). Works in PYNATIVE_MODE and
GRAPH_MODE.
"""

from __future__ import annotations

from collections.abc import Sequence

from mindspore import Tensor, ops

__all__ = ["soft_iou_loss", "task_loss"]


def soft_iou_loss(logits: Tensor, mask: Tensor, smooth: float = 1.0) -> Tensor:
    """SoftIoU loss over the whole batch, as DNANet's and BasicIRSTD's ``SoftIoULoss``.

    ``p = sigmoid(logits)``; ``1 - (sum p*g + smooth) / (sum p + sum g - sum p*g + smooth)``
    with the sums over batch, channels and pixels together (not a mean of per-image IoUs,
    which stops punishing false alarms on crops without a target: docs/study.md).

    Args:
        logits: Network output (B, 1, H, W), before the sigmoid.
        mask: Ground truth (B, 1, H, W) in {0, 1}, float.
        smooth: Additive smoothing of numerator and denominator (an empty mask and an empty
            prediction give a loss of 0).

    Returns:
        Scalar loss in [0, 1).
    """
    p = ops.sigmoid(logits)
    g = ops.cast(mask, p.dtype)
    inter = ops.sum(p * g)
    union = ops.sum(p) + ops.sum(g) - inter
    return 1.0 - (inter + smooth) / (union + smooth)


def task_loss(logits: Tensor, aux: Sequence[Tensor], mask: Tensor) -> Tensor:
    """SoftIoU of the output, or its mean over ``(*aux, logits)`` with deep supervision.

    Args:
        logits: Output logits (B, 1, H, W).
        aux: Side logits of the deep-supervision heads (``aux1, aux2, aux3``), or ``()``.
        mask: Ground truth (B, 1, H, W).
    """
    loss = soft_iou_loss(logits, mask)
    if len(aux) == 0:
        return loss
    for a in aux:
        loss = loss + soft_iou_loss(a, mask)
    return loss / float(len(aux) + 1)
