"""The method: multi-scale spatial attention (MSA), L2 normalisation and AWMSE (DESIGN.md 2).

MindSpore twin of ``torch_ref.distill.method``: the same names, signatures, defaults and order of
floating-point operations. Notation: teacher feature ``T`` (B, Ct, H, W), student feature
``S`` after its :class:`Connector` (B, Ct, H, W), GT mask ``G`` (B, 1, H_in, W_in) in {0, 1}.

- :func:`msa_map`: ``a = mean_c |T|``; ``c_k = relu(a - avgpool_k(a))`` (stride 1, padding
  ``k // 2``, padded cells excluded from the average); ``c = mean_k c_k`` (or max);
  ``c = c / (max_hw c + eps)`` per image; ``M = H*W * softmax_hw(c / tau)``; no gradient.
- :func:`l2_normalize`: ``x / max(||x||_2 over channels, eps)`` per pixel.
- :func:`l2_map_normalize`: ``x / max(sqrt(mean_hw sum_c x^2), eps)`` per image (the whole
  map's L2 norm, scaled to one per pixel: relative magnitudes between pixels survive).
- :func:`awmse`: ``d = sum_c (T_hat - S_hat)^2``; per image ``w_fg = M*R / (sum M*R + eps)``,
  ``w_bg = M*(1-R) / (sum M*(1-R) + eps)``; ``L = mean_b(alpha sum w_fg d + beta sum w_bg d)``.
- :class:`MSAAWMSELoss`: the stage loss that puts them together, every option a config field.
- :class:`OutputMapLoss`: the output-map term of ``method.out_weight``, the stage loss on
  ``sigmoid(teacher logits)`` and ``sigmoid(student logits)``, not normalised.

Decisions (the same on both sides):

- The softmax is written out as ``e = exp(z - max z)``, ``M = e * (H*W) / sum e``. A uniform
  map is then exactly 1 everywhere (not ``1 +- ulp``), so ``R = [M > 1]`` is empty for a flat
  feature in both frameworks rather than decided by rounding.
- The L2 norm is computed as ``sqrt(max(sum_c x^2, eps^2))``, which equals
  ``max(||x||, eps)`` but has a finite (zero) gradient at a zero vector, where the literal form
  gives ``0 * inf = nan`` here.
- Teacher features and the attention map carry no gradient (``stop_gradient``): only the
  student (through its connector) learns from the loss.
- The local average is ``ops.avg_pool2d(..., count_include_pad=False)``, bit-identical to
  PyTorch's on CPU. Everything runs in PYNATIVE_MODE and GRAPH_MODE (only ``mindspore.ops`` and
  ``mindspore.nn``; shapes and options are compile-time constants).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mindspore import Tensor, nn, ops

from irkd.methods import MSA_AWMSE_DEFAULTS, msa_awmse_params  # noqa: F401
from irkd.methods import check_msa_awmse_params as _check_params
from irkd.methods import out_params as _out_params

__all__ = [
    "mask_to",
    "msa_map",
    "l2_normalize",
    "l2_map_normalize",
    "awmse",
    "plain_mse",
    "Connector",
    "MSAAWMSELoss",
    "OutputMapLoss",
    "MSA_AWMSE_DEFAULTS",
    "msa_awmse_params",
]


def mask_to(mask: Tensor, h: int, w: int) -> Tensor:
    """Max-pool a GT mask (B, 1, H_in, W_in) down to (B, 1, h, w).

    The kernel and the stride are ``H_in / h`` and ``W_in / w``, so a target pixel anywhere in a
    cell marks the whole cell (a tiny target survives down-sampling).

    Args:
        mask: Mask in {0, 1}, float.
        h: Target height; must divide ``H_in``.
        w: Target width; must divide ``W_in``.

    Raises:
        ValueError: ``(h, w)`` does not divide the mask's size.
    """
    b, c, hin, win = mask.shape
    if h < 1 or w < 1 or hin % h != 0 or win % w != 0:
        raise ValueError(f"mask_to: mask size {hin}x{win} is not a multiple of {h}x{w}")
    if hin == h and win == w:
        return mask
    kh = hin // h
    kw = win // w
    return ops.amax(mask.reshape(b, c, h, kh, w, kw), (3, 5), False)


def _contrast(a: Tensor, k: int) -> Tensor:
    """Local contrast ``relu(a - avgpool_k(a))`` (padded cells excluded from the average)."""
    return ops.relu(a - ops.avg_pool2d(a, k, 1, k // 2, count_include_pad=False))


def msa_map(
    t: Tensor,
    scales: Sequence[int] = (3, 5, 7),
    fusion: str = "mean",
    tau: float = 0.5,
    eps: float = 1e-6,
    border: int = 0,
) -> Tensor:
    """Multi-scale spatial attention map ``M`` (B, 1, H, W) of a feature (no gradient).

    Args:
        t: Feature (B, C, H, W), usually the teacher's.
        scales: Local-contrast window sizes (odd).
        fusion: ``mean`` or ``max`` over the scales.
        tau: Softmax temperature.
        eps: Guard of the per-image max normalisation (an all-zero feature gives ``c = 0`` and
            a uniform ``M = 1``).
        border: Cells at each edge whose contrast is set to 0 before the normalisation (the
            whole map when ``2 * border`` reaches its height or width).

    Returns:
        ``M`` with mean 1 over (H, W) for each image; a pixel whose normalised contrast is 1
        weighs ``e^(1/tau)`` times a pixel whose contrast is 0.
    """
    if fusion not in ("mean", "max"):
        raise ValueError(f"msa_map: fusion must be 'mean' or 'max', got {fusion!r}")
    scales = tuple(scales)
    if not scales:
        raise ValueError("msa_map: needs at least one scale")
    t = ops.stop_gradient(t)
    b, _, h, w = t.shape
    a = ops.mean(ops.abs(t), 1, True)
    c = _contrast(a, scales[0])
    for k in scales[1:]:
        if fusion == "max":
            c = ops.maximum(c, _contrast(a, k))
        else:
            c = c + _contrast(a, k)
    if fusion == "mean":
        c = c / float(len(scales))
    if border > 0:
        if 2 * border < h and 2 * border < w:
            c = ops.pad(
                c[:, :, border : h - border, border : w - border], (border, border, border, border)
            )
        else:
            c = ops.zeros_like(c)
    c = c / (ops.amax(c, (2, 3), True) + eps)
    z = (c / tau).reshape(b, 1, h * w)
    e = ops.exp(z - ops.amax(z, 2, True))
    m = e * float(h * w) / ops.sum(e, 2, True)
    return ops.stop_gradient(m.reshape(b, 1, h, w))


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-pixel L2 normalisation along channels: ``x / max(||x||_2, eps)``.

    Computed as ``x / sqrt(max(sum_c x^2, eps^2))`` (the same value, and a zero gradient
    instead of ``nan`` at a zero vector). A zero vector stays zero.
    """
    sq = ops.sum(x * x, 1, True)
    return x / ops.sqrt(ops.clamp(sq, min=eps * eps))


def l2_map_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-image L2 normalisation of the whole map: ``x / max(sqrt(mean_hw sum_c x^2), eps)``.

    The map's L2 norm divided by ``sqrt(H*W)``, so that the mean squared per-pixel norm becomes
    one; unlike :func:`l2_normalize`, a pixel's magnitude relative to the others is kept.
    Computed as ``x / sqrt(max(mean, eps^2))`` (a zero map stays zero, zero gradient).
    """
    sq = ops.mean(ops.sum(x * x, 1, True), (2, 3), True)
    return x / ops.sqrt(ops.clamp(sq, min=eps * eps))


def awmse(
    t_hat: Tensor,
    s_hat: Tensor,
    m: Tensor,
    region: Tensor,
    alpha: float = 1.0,
    beta: float = 0.5,
    eps: float = 1e-6,
    reduce: str = "image",
) -> Tensor:
    """Adaptive weighted MSE between two (normalised) features.

    Args:
        t_hat: Teacher feature (B, C, H, W).
        s_hat: Student feature (B, C, H, W).
        m: Attention map (B, 1, H, W), a constant.
        region: Target region (B, 1, H, W) in {0, 1}, a constant.
        alpha: Weight of the target region (its weights sum to ``alpha`` per image).
        beta: Weight of the background (its weights sum to ``beta`` per image).
        eps: Guard of the region sums (an image without target contributes its background
            term only).
        reduce: ``image`` (above) or ``batch``: the region sums run over the whole batch and
            the loss is ``alpha * sum_bhw w_fg * d + beta * sum_bhw w_bg * d``.

    Returns:
        Scalar ``mean_b(alpha * sum_hw w_fg * d + beta * sum_hw w_bg * d)`` (``image``).
    """
    diff = t_hat - s_hat
    d = ops.sum(diff * diff, 1, True)
    m_fg = m * region
    m_bg = m * (1.0 - region)
    if reduce == "batch":
        w_fg = m_fg / (ops.sum(m_fg) + eps)
        w_bg = m_bg / (ops.sum(m_bg) + eps)
        return alpha * ops.sum(w_fg * d) + beta * ops.sum(w_bg * d)
    w_fg = m_fg / (ops.sum(m_fg, (2, 3), True) + eps)
    w_bg = m_bg / (ops.sum(m_bg, (2, 3), True) + eps)
    per_image = alpha * ops.sum(w_fg * d, (1, 2, 3)) + beta * ops.sum(w_bg * d, (1, 2, 3))
    return ops.mean(per_image)


def plain_mse(t_hat: Tensor, s_hat: Tensor) -> Tensor:
    """The ablation of AWMSE: ``mean over (b, h, w) of sum_c (T_hat - S_hat)^2``."""
    diff = t_hat - s_hat
    return ops.mean(ops.sum(diff * diff, 1))


class Connector(nn.Cell):
    """Student-side adapter ``phi_s``: 1x1 convolution (Cs -> Ct, no bias) + BatchNorm.

    It lives in the distiller (never in the student), so it is trained with the student and
    dropped from its exported weights. BatchNorm: eps 1e-5, momentum 0.9 (PyTorch 0.1).

    Args:
        s_ch: Student channels ``Cs``.
        t_ch: Teacher channels ``Ct``.
    """

    def __init__(self, s_ch: int, t_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(s_ch, t_ch, 1, pad_mode="pad", padding=0, has_bias=False)
        self.bn = nn.BatchNorm2d(t_ch, eps=1e-5, momentum=0.9)

    def construct(self, x: Tensor) -> Tensor:
        """Connected student feature (B, Ct, H, W)."""
        return self.bn(self.conv(x))


class MSAAWMSELoss(nn.Cell):
    """The method's stage loss: MSA-weighted AWMSE between L2-normalised features.

    Called as ``loss(t, s, mask, noise)`` like every stage loss (``s`` after its connector,
    ``noise`` ignored). Steps:

    1. ``M = msa_map(t)`` (``msa: False``: ``M = 1``); with ``on_student`` also
       ``msa_map(s)``, fused by elementwise max. ``M`` carries no gradient.
    2. ``t_hat, s_hat = l2_normalize(t), l2_normalize(s)`` (``normalize: l2_map``:
       :func:`l2_map_normalize`; ``none``: unchanged).
    3. ``R = mask_to(mask, H, W)`` when ``use_mask`` and a mask is given, else ``R = [M > 1]``
       (for a uniform ``M`` that region is empty: everything is background).
    4. ``awmse(t_hat, s_hat, M, R, alpha, beta)``; with ``awmse: False`` (ablation) the plain
       MSE ``mean_{b,h,w} sum_c (t_hat - s_hat)^2`` instead, which ignores ``M``, ``R``,
       ``alpha`` and ``beta``.

    Args:
        t_channels: Teacher channels of the stage (kept for the common stage-loss signature;
            the loss has no parameters).
        params: Overrides of :data:`MSA_AWMSE_DEFAULTS` (``msa``, ``scales``, ``fusion``,
            ``tau``, ``on_student``, ``msa_eps``, ``msa_border``, ``normalize``, ``l2_eps``,
            ``awmse``, ``alpha``, ``beta``, ``use_mask``, ``awmse_eps``, ``awmse_reduce``);
            build them from a config with :func:`msa_awmse_params`.

    Raises:
        ValueError: An unknown parameter or an invalid value.
    """

    def __init__(self, t_channels: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        p = _check_params(params)
        self.t_channels = int(t_channels)
        self.msa = bool(p["msa"])
        self.scales = p["scales"]
        self.fusion = str(p["fusion"])
        self.tau = float(p["tau"])
        self.on_student = bool(p["on_student"])
        self.msa_eps = float(p["msa_eps"])
        self.msa_border = int(p["msa_border"])
        self.normalize = str(p["normalize"])
        self.l2_eps = float(p["l2_eps"])
        self.awmse = bool(p["awmse"])
        self.alpha = float(p["alpha"])
        self.beta = float(p["beta"])
        self.use_mask = bool(p["use_mask"])
        self.awmse_eps = float(p["awmse_eps"])
        self.awmse_reduce = str(p["awmse_reduce"])

    def attention(self, t: Tensor, s: Tensor | None = None) -> Tensor:
        """The attention map ``M`` (B, 1, H, W) this loss uses (no gradient)."""
        if not self.msa:
            return ops.stop_gradient(ops.ones_like(t[:, :1]))
        m = msa_map(t, self.scales, self.fusion, self.tau, self.msa_eps, self.msa_border)
        if self.on_student and s is not None:
            m = ops.maximum(
                m, msa_map(s, self.scales, self.fusion, self.tau, self.msa_eps, self.msa_border)
            )
        return m

    def construct(
        self, t: Tensor, s: Tensor, mask: Tensor | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """Scalar loss of one stage (``noise`` is ignored)."""
        t = ops.stop_gradient(t)
        if self.normalize == "l2":
            t_hat = l2_normalize(t, self.l2_eps)
            s_hat = l2_normalize(s, self.l2_eps)
        elif self.normalize == "l2_map":
            t_hat = l2_map_normalize(t, self.l2_eps)
            s_hat = l2_map_normalize(s, self.l2_eps)
        else:
            t_hat = t
            s_hat = s
        if not self.awmse:
            return plain_mse(t_hat, s_hat)
        m = self.attention(t, s)
        if self.use_mask and mask is not None:
            region = mask_to(ops.stop_gradient(mask), t.shape[2], t.shape[3])
        else:
            region = ops.cast(m > 1.0, m.dtype)
        return awmse(
            t_hat, s_hat, m, region, self.alpha, self.beta, self.awmse_eps, self.awmse_reduce
        )


class OutputMapLoss(nn.Cell):
    """The output-map term of ``method.out_weight``: :class:`MSAAWMSELoss` on probability maps.

    ``P_t = sigmoid(t_logits)`` (a constant: ``stop_gradient``) and ``P_s = sigmoid(s_logits)``,
    both (B, 1, H, W) at input resolution, go through the method's stage loss with the same
    options except ``normalize``, forced to ``none``: ``M`` is the MSA map of ``P_t`` (with
    ``on_student`` also of ``P_s``, fused by max; uniform when MSA is off), ``R`` the GT mask
    (``use_mask``), and ``alpha``, ``beta``, ``awmse``, ``awmse_eps`` as for the stages. No
    connector: both maps have one channel.

    Args:
        params: The stages' :class:`MSAAWMSELoss` parameters (``normalize`` is overridden).

    Raises:
        ValueError: An unknown parameter or an invalid value.
    """

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.map_loss = MSAAWMSELoss(1, _out_params(_check_params(params)))

    def construct(self, t_logits: Tensor, s_logits: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scalar term from the teacher's and the student's logits (B, 1, H, W)."""
        p_t = ops.sigmoid(ops.stop_gradient(t_logits))
        p_s = ops.sigmoid(s_logits)
        return self.map_loss(p_t, p_s, mask, None)
