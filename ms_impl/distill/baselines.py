"""Baseline distillation losses (DESIGN.md section 3), MindSpore side.

Twin of ``torch_ref.distill.baselines``: the same class names, constructor arguments, formulas,
cell tree and parameter names, up to LayerNorm's (``gamma``/``beta`` here, ``weight``/``bias``
in PyTorch), in ``FGDLoss``'s ``channel_add_conv_s.1`` and ``channel_add_conv_t.1``. Only
``mindspore.nn``, ``mindspore.ops`` and one initializer are used; every loss runs in
PYNATIVE_MODE and in GRAPH_MODE (inside ``mindspore.value_and_grad``).

Every stage loss is built as ``Cls(t_channels, params)`` and called
``loss(t, s, mask, noise) -> scalar`` (docs/contracts.md):

- ``t``: teacher feature (B, C, H, W), a constant target (``stop_gradient`` here);
- ``s``: student feature after its connector (B, C, H, W), the same shape;
- ``mask``: ground-truth mask at input resolution (B, 1, H_in, W_in), float in {0, 1}, with
  ``H_in`` and ``W_in`` integer multiples of ``H`` and ``W`` (``method.mask_to`` max-pools
  it down to the stage);
- ``noise``: uniform [0, 1) tensor (B, 1, H, W), used by ``MGDLoss`` only. No loss draws
  random numbers: the training loop draws them from (seed, step) and passes them in.

``params`` holds the user's overrides; they are merged over ``BASELINE_DEFAULTS[name]`` (a
fully merged dict is accepted too) and an unknown key raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal

from irkd.methods import BASELINE_DEFAULTS, resolve_params  # noqa: F401

from .method import mask_to

__all__ = [
    "BASELINE_DEFAULTS",
    "resolve_params",
    "FitNetLoss",
    "ATLoss",
    "CWDLoss",
    "PKDLoss",
    "MGDLoss",
    "FGDLoss",
    "LogitKDLoss",
]


# Ranges the hyperparameters must lie in: (low, high, low is allowed).

_AT_EPS = 1e-12  # F.normalize's guard of the attention map's L2 norm
_PKD_EPS = 1e-6  # mmrazor PKDLoss: (x - mean) / (std + 1e-6)


def _check_channels(t_channels: int) -> int:
    """Validate the teacher channel count (a positive integer)."""
    if isinstance(t_channels, bool) or not isinstance(t_channels, int) or t_channels < 1:
        raise ValueError(f"t_channels must be a positive integer, got {t_channels!r}")
    return t_channels


class FitNetLoss(nn.Cell):
    """FitNet hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    ``L = loss_weight * mean_{b,c,h,w} (s - t)^2`` (mean over all elements).

    Args:
        t_channels: Teacher channels ``C``.
        params: Overrides of ``BASELINE_DEFAULTS["fitnet"]`` (``loss_weight``).
    """

    def __init__(self, t_channels: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.t_channels = _check_channels(t_channels)
        cfg = resolve_params("fitnet", params)
        self.loss_weight = cfg["loss_weight"]

    def construct(self, t: ms.Tensor, s: ms.Tensor, mask: ms.Tensor, noise: ms.Tensor) -> ms.Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        t = ops.stop_gradient(t)
        d = s - t
        return self.loss_weight * ops.mean(d * d)


def _attention(x: ms.Tensor) -> ms.Tensor:
    """AT map: mean over channels of x^2, flattened per image and L2-normalised (B, H*W)."""
    a = ops.mean(x * x, 1).reshape(x.shape[0], -1)
    # sqrt(max(|a|^2, eps^2)) == max(|a|, eps), with a finite gradient at a == 0.
    norm = ops.sqrt(ops.maximum(ops.sum(a * a, 1, keepdim=True), _AT_EPS**2))
    return a / norm


class ATLoss(nn.Cell):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), activation-based, p = 2.

    ``a(x) = vec(mean_c x^2) / ||vec(mean_c x^2)||_2`` per image (B, H*W), and
    ``L = loss_weight * mean_{b,hw} (a(s) - a(t))^2``; the paper's beta = 1000 is the default
    ``loss_weight`` (its division by the map size and the batch size is the mean).
    The norm is guarded by 1e-12 (``F.normalize``'s eps).

    Args:
        t_channels: Teacher channels ``C``.
        params: Overrides of ``BASELINE_DEFAULTS["at"]`` (``loss_weight``).
    """

    def __init__(self, t_channels: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.t_channels = _check_channels(t_channels)
        cfg = resolve_params("at", params)
        self.loss_weight = cfg["loss_weight"]

    def construct(self, t: ms.Tensor, s: ms.Tensor, mask: ms.Tensor, noise: ms.Tensor) -> ms.Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        t = ops.stop_gradient(t)
        d = _attention(s) - _attention(t)
        return self.loss_weight * ops.mean(d * d)


class CWDLoss(nn.Cell):
    """Channel-wise distillation, CWD (Shu et al., ICCV 2021).

    "Channel-Wise Knowledge Distillation for Dense Prediction".

    Per image and channel, ``p = softmax_{hw}(x / tau)``;
    ``L = loss_weight * tau^2 * sum_{b,c} KL(p_t || p_s) / (B * C)``, with
    ``KL(p || q) = sum_hw p (log p - log q)``.

    Args:
        t_channels: Teacher channels ``C``.
        params: Overrides of ``BASELINE_DEFAULTS["cwd"]`` (``tau``, ``loss_weight``).
    """

    def __init__(self, t_channels: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.t_channels = _check_channels(t_channels)
        cfg = resolve_params("cwd", params)
        self.tau = cfg["tau"]
        self.loss_weight = cfg["loss_weight"]

    def construct(self, t: ms.Tensor, s: ms.Tensor, mask: ms.Tensor, noise: ms.Tensor) -> ms.Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        t = ops.stop_gradient(t)
        b = s.shape[0]
        c = s.shape[1]
        log_pt = ops.log_softmax(t.reshape(b, c, -1) / self.tau, -1)
        log_ps = ops.log_softmax(s.reshape(b, c, -1) / self.tau, -1)
        kl = ops.sum(ops.exp(log_pt) * (log_pt - log_ps))
        return self.loss_weight * (self.tau**2) * kl / (b * c)


def _standardize(x: ms.Tensor) -> ms.Tensor:
    """Per channel over (B, H, W): ``(x - mean) / (std + 1e-6)``, std with Bessel's correction.

    The variance is clamped at 1e-24 before the square root so that a constant channel has a
    finite gradient (its std is then 1e-12 instead of 0: the value is unchanged to float32
    precision, since ``x - mean`` is 0 there).
    """
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = ops.mean(x, (0, 2, 3), True)
    d = x - mean
    var = ops.sum(d * d, (0, 2, 3), keepdim=True) / max(n - 1, 1)
    std = ops.sqrt(ops.maximum(var, 1e-24))
    return d / (std + _PKD_EPS)


class PKDLoss(nn.Cell):
    """PKD, Pearson-correlation feature distillation (Cao et al., NeurIPS 2022).

    "PKD: General Distillation Framework for Object Detectors via Pearson Correlation
    Coefficient".

    Each feature is standardised per channel over (B, H, W) (zero mean, unit std: ``(x - mean)
    / (std + 1e-6)``, std unbiased, as mmrazor's PKDLoss), then
    ``L = loss_weight * mean_{b,c,h,w} (s_n - t_n)^2 / 2`` (equivalently 1 - Pearson r).

    Args:
        t_channels: Teacher channels ``C``.
        params: Overrides of ``BASELINE_DEFAULTS["pkd"]`` (``loss_weight``).
    """

    def __init__(self, t_channels: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.t_channels = _check_channels(t_channels)
        cfg = resolve_params("pkd", params)
        self.loss_weight = cfg["loss_weight"]

    def construct(self, t: ms.Tensor, s: ms.Tensor, mask: ms.Tensor, noise: ms.Tensor) -> ms.Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        t = ops.stop_gradient(t)
        d = _standardize(s) - _standardize(t)
        return self.loss_weight * ops.mean(d * d) / 2.0


def _conv(cin: int, cout: int, k: int, weight_init: Any = None, bias_init: Any = None) -> nn.Conv2d:
    """Convolution with PyTorch semantics: explicit ``k // 2`` zero padding, stride 1, bias."""
    kwargs = {}
    if weight_init is not None:
        kwargs["weight_init"] = weight_init
    if bias_init is not None:
        kwargs["bias_init"] = bias_init
    return nn.Conv2d(cin, cout, k, pad_mode="pad", padding=k // 2, has_bias=True, **kwargs)


class MGDLoss(nn.Cell):
    """Masked generative distillation (Yang et al., "Masked Generative Distillation", ECCV 2022).

    ``keep = [noise >= lambda_mgd]`` (B, 1, H, W) masks a random share ``lambda_mgd`` of the
    student's pixels; the generation block ``G`` (conv3x3 -> ReLU -> conv3x3, C -> C, with bias,
    trainable) rebuilds the teacher feature from the rest:
    ``L = alpha_mgd * sum_{b,c,h,w} (G(s * keep) - t)^2 / B``.

    Args:
        t_channels: Teacher channels ``C``.
        params: Overrides of ``BASELINE_DEFAULTS["mgd"]`` (``alpha_mgd``, ``lambda_mgd``).
    """

    def __init__(self, t_channels: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.t_channels = _check_channels(t_channels)
        cfg = resolve_params("mgd", params)
        self.alpha_mgd = cfg["alpha_mgd"]
        self.lambda_mgd = cfg["lambda_mgd"]
        c = t_channels
        self.generation = nn.SequentialCell(_conv(c, c, 3), nn.ReLU(), _conv(c, c, 3))

    def construct(self, t: ms.Tensor, s: ms.Tensor, mask: ms.Tensor, noise: ms.Tensor) -> ms.Tensor:
        """Scalar loss (``mask`` is unused; ``noise`` is uniform [0, 1), (B, 1, H, W))."""
        t = ops.stop_gradient(t)
        keep = ops.cast(noise >= self.lambda_mgd, s.dtype)
        d = self.generation(s * keep) - t
        return self.alpha_mgd * ops.sum(d * d) / s.shape[0]


def _fgd_attention(x: ms.Tensor, temp: float) -> tuple[ms.Tensor, ms.Tensor]:
    """FGD's spatial (B, 1, H, W) and channel (B, C, 1, 1) attention of a feature."""
    b, c, h, w = x.shape
    v = ops.abs(x)
    spatial = ops.mean(v, 1).reshape(b, h * w) / temp
    a_s = (h * w) * ops.softmax(spatial, 1).reshape(b, 1, h, w)
    channel = ops.mean(v, (2, 3)) / temp
    a_c = c * ops.softmax(channel, 1).reshape(b, c, 1, 1)
    return a_s, a_c


def _gc_modules(c: int) -> tuple[nn.Conv2d, nn.SequentialCell]:
    """``conv_mask`` and ``channel_add_conv`` of a GcBlock, with FGD's initialisation.

    ``conv_mask``: Kaiming normal (fan_in, ReLU gain), zero bias; the last convolution of
    ``channel_add_conv`` is zero (so the block starts as the identity); the rest keep their
    default initialisation.
    """
    hidden = max(1, c // 2)
    conv_mask = _conv(c, 1, 1, HeNormal(mode="fan_in", nonlinearity="relu"), "zeros")
    channel_add = nn.SequentialCell(
        _conv(c, hidden, 1),
        nn.LayerNorm((hidden, 1, 1), begin_norm_axis=1, begin_params_axis=1, epsilon=1e-5),
        nn.ReLU(),
        _conv(hidden, c, 1, "zeros", "zeros"),
    )
    return conv_mask, channel_add


def _gc_apply(x: ms.Tensor, conv_mask: nn.Conv2d, channel_add: nn.SequentialCell) -> ms.Tensor:
    """Global context block: ``x + channel_add(sum_hw softmax_hw(conv_mask(x)) * x)``."""
    b, c, h, w = x.shape
    weights = ops.softmax(conv_mask(x).reshape(b, 1, h * w), 2)
    context = ops.sum(x.reshape(b, c, h * w) * weights, 2).reshape(b, c, 1, 1)
    return x + channel_add(context)


class FGDLoss(nn.Cell):
    """FGD, focal and global distillation (Yang et al., CVPR 2022), the mask replacing boxes.

    "Focal and Global Knowledge Distillation for Detectors", adapted to segmentation masks.

    With ``R`` the mask max-pooled to the stage (B, 1, H, W), per image
    ``w_fg = R / N_fg`` and ``w_bg = (1 - R) / N_bg`` (``N`` the pixel counts; a term whose
    region is empty is 0, so an image without target has no foreground term). Attention, at
    temperature ``T = temp``: ``A_S(x) = H W softmax_hw(mean_c |x| / T)`` (B, 1, H, W),
    ``A_C(x) = C softmax_c(mean_hw |x| / T)`` (B, C, 1, 1). With ``D = A_S(t) A_C(t) (s - t)^2``:

    - focal feature loss ``alpha_fgd * sum(w_fg D) / B + beta_fgd * sum(w_bg D) / B``;
    - attention loss ``gamma_fgd * (sum |A_C(s) - A_C(t)| + sum |A_S(s) - A_S(t)|) / B``;
    - global loss ``lambda_fgd * sum (Gc_s(s) - Gc_t(t))^2 / B``, with a trainable global
      context block per path, ``Gc(x) = x + transform(sum_hw softmax_hw(conv_mask(x)) x)``:
      ``conv_mask_s``/``conv_mask_t`` are 1x1 convolutions C -> 1, and the transforms
      ``channel_add_conv_s``/``channel_add_conv_t`` are 1x1 C -> C/2, LayerNorm over
      [C/2, 1, 1], ReLU, 1x1 C/2 -> C (all with bias; ``C/2`` is ``max(1, C // 2)``).

    The teacher's attention weights the feature loss, as in the authors' code; ``L`` is the sum
    of the four terms.

    Args:
        t_channels: Teacher channels ``C``.
        params: Overrides of ``BASELINE_DEFAULTS["fgd"]`` (``temp``, ``alpha_fgd``,
            ``beta_fgd``, ``gamma_fgd``, ``lambda_fgd``).
    """

    def __init__(self, t_channels: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.t_channels = _check_channels(t_channels)
        cfg = resolve_params("fgd", params)
        self.temp = cfg["temp"]
        self.alpha_fgd = cfg["alpha_fgd"]
        self.beta_fgd = cfg["beta_fgd"]
        self.gamma_fgd = cfg["gamma_fgd"]
        self.lambda_fgd = cfg["lambda_fgd"]
        self.conv_mask_s, self.channel_add_conv_s = _gc_modules(t_channels)
        self.conv_mask_t, self.channel_add_conv_t = _gc_modules(t_channels)

    def construct(self, t: ms.Tensor, s: ms.Tensor, mask: ms.Tensor, noise: ms.Tensor) -> ms.Tensor:
        """Scalar loss (``noise`` is unused)."""
        t = ops.stop_gradient(t)
        b, _, h, w = s.shape
        region = ops.cast(mask_to(mask, h, w), s.dtype)
        back = 1.0 - region
        w_fg = region / ops.maximum(ops.sum(region, (2, 3), keepdim=True), 1.0)
        w_bg = back / ops.maximum(ops.sum(back, (2, 3), keepdim=True), 1.0)

        as_t, ac_t = _fgd_attention(t, self.temp)
        as_s, ac_s = _fgd_attention(s, self.temp)
        diff = s - t
        d = as_t * ac_t * diff * diff
        fg = ops.sum(w_fg * d) / b
        bg = ops.sum(w_bg * d) / b
        att = (ops.sum(ops.abs(ac_s - ac_t)) + ops.sum(ops.abs(as_s - as_t))) / b
        g = _gc_apply(s, self.conv_mask_s, self.channel_add_conv_s) - _gc_apply(
            t, self.conv_mask_t, self.channel_add_conv_t
        )
        glob = ops.sum(g * g) / b
        return (
            self.alpha_fgd * fg + self.beta_fgd * bg + self.gamma_fgd * att + self.lambda_fgd * glob
        )


class LogitKDLoss(nn.Cell):
    """Pixel-wise logit distillation (Liu et al., CVPR 2019), binary form for 1-channel logits.

    The pixel-wise term of "Structured Knowledge Distillation for Semantic Segmentation".

    With ``p = sigmoid(z_t / tau)`` and ``q = sigmoid(z_s / tau)`` per pixel, the Bernoulli
    ``KL(p || q) = p log(p / q) + (1 - p) log((1 - p) / (1 - q))``, computed stably as
    ``softplus(z_s') - softplus(z_t') - p (z_s' - z_t')`` with ``z' = z / tau``;
    ``L = loss_weight * tau^2 * mean_{b,h,w} KL``.

    Called ``loss(t_logits, s_logits, mask, noise)`` on (B, 1, H, W) logits.

    Args:
        t_channels: Channels of the logits (1).
        params: Overrides of ``BASELINE_DEFAULTS["logit_kd"]`` (``tau``, ``loss_weight``).
    """

    def __init__(self, t_channels: int = 1, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.t_channels = _check_channels(t_channels)
        cfg = resolve_params("logit_kd", params)
        self.tau = cfg["tau"]
        self.loss_weight = cfg["loss_weight"]

    def construct(self, t: ms.Tensor, s: ms.Tensor, mask: ms.Tensor, noise: ms.Tensor) -> ms.Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        zt = ops.stop_gradient(t) / self.tau
        zs = s / self.tau
        p = ops.sigmoid(zt)
        kl = ops.softplus(zs) - ops.softplus(zt) - p * (zs - zt)
        return self.loss_weight * (self.tau**2) * ops.mean(kl)
