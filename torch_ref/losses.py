"""Task loss: SoftIoU on the output logits (and the deep-supervision heads).

PyTorch twin of ``ms_impl.losses`` (see docs/contracts.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Reduce", "soft_iou_loss", "task_loss"]

Reduce = Callable[[Tensor], Tensor]
"""A differentiable sum over the data-parallel ranks (``torch_ref.dist.global_sum``)."""


def soft_iou_loss(
    logits: Tensor, mask: Tensor, smooth: float = 1.0, reduce: Reduce | None = None
) -> Tensor:
    """SoftIoU loss over the whole batch, as DNANet's and BasicIRSTD's ``SoftIoULoss``.

    ``p = sigmoid(logits)``; ``1 - (sum p*g + smooth) / (sum p + sum g - sum p*g + smooth)``
    with the sums over batch, channels and pixels together (not a mean of per-image IoUs,
    which stops punishing false alarms on crops without a target: docs/study.md).

    Args:
        logits: Network output (B, 1, H, W), before the sigmoid.
        mask: Ground truth (B, 1, H, W) in {0, 1}, float.
        smooth: Additive smoothing of numerator and denominator (an empty mask and an empty
            prediction give a loss of 0).
        reduce: Data-parallel runs: sums the three batch sums (intersection, prediction,
            mask) over the ranks, so that each rank computes the loss of the global batch
            (None: this batch is the whole batch).

    Returns:
        Scalar loss in [0, 1).
    """
    p = torch.sigmoid(logits)
    g = mask.to(p.dtype)
    if reduce is None:
        inter = (p * g).sum()
        union = p.sum() + g.sum() - inter
    else:
        inter, p_sum, g_sum = reduce(torch.stack(((p * g).sum(), p.sum(), g.sum()))).unbind(0)
        union = p_sum + g_sum - inter
    return 1.0 - (inter + smooth) / (union + smooth)


def task_loss(
    logits: Tensor, aux: Sequence[Tensor], mask: Tensor, reduce: Reduce | None = None
) -> Tensor:
    """SoftIoU of the output, or its mean over ``(*aux, logits)`` with deep supervision.

    Args:
        logits: Output logits (B, 1, H, W).
        aux: Side logits of the deep-supervision heads (``aux1, aux2, aux3``), or ``()``.
        mask: Ground truth (B, 1, H, W).
        reduce: Sum over the data-parallel ranks (:func:`soft_iou_loss`), or None.
    """
    loss = soft_iou_loss(logits, mask, reduce=reduce)
    if len(aux) == 0:
        return loss
    for a in aux:
        loss = loss + soft_iou_loss(a, mask, reduce=reduce)
    return loss / float(len(aux) + 1)
