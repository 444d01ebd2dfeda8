"""Baseline distillation losses (DESIGN.md section 3), PyTorch side.

Twin of ``ms_impl.distill.baselines``: the same class names, constructor arguments, formulas,
module tree and parameter names. The one rename the weight name map needs is LayerNorm's
(``weight``/``bias`` here, ``gamma``/``beta`` in MindSpore), in ``FGDLoss``'s
``channel_add_conv_s.1`` and ``channel_add_conv_t.1``.

Every stage loss is built as ``Cls(t_channels, params)`` and called
``loss(t, s, mask, noise) -> scalar`` (docs/contracts.md):

- ``t``: teacher feature (B, C, H, W), a constant target (detached here);
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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class FitNetLoss(nn.Module):
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

    def forward(self, t: Tensor, s: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        t = t.detach()
        return self.loss_weight * ((s - t) ** 2).mean()


def _attention(x: Tensor) -> Tensor:
    """AT map: mean over channels of x^2, flattened per image and L2-normalised (B, H*W)."""
    a = (x * x).mean(dim=1).reshape(x.shape[0], -1)
    # sqrt(max(|a|^2, eps^2)) == max(|a|, eps), with a finite gradient at a == 0.
    norm = torch.sqrt(torch.clamp((a * a).sum(dim=1, keepdim=True), min=_AT_EPS**2))
    return a / norm


class ATLoss(nn.Module):
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

    def forward(self, t: Tensor, s: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        t = t.detach()
        return self.loss_weight * ((_attention(s) - _attention(t)) ** 2).mean()


class CWDLoss(nn.Module):
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

    def forward(self, t: Tensor, s: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        t = t.detach()
        b, c = s.shape[0], s.shape[1]
        log_pt = F.log_softmax(t.reshape(b, c, -1) / self.tau, dim=-1)
        log_ps = F.log_softmax(s.reshape(b, c, -1) / self.tau, dim=-1)
        kl = (torch.exp(log_pt) * (log_pt - log_ps)).sum()
        return self.loss_weight * (self.tau**2) * kl / (b * c)


def _standardize(x: Tensor) -> Tensor:
    """Per channel over (B, H, W): ``(x - mean) / (std + 1e-6)``, std with Bessel's correction.

    The variance is clamped at 1e-24 before the square root so that a constant channel has a
    finite gradient (its std is then 1e-12 instead of 0: the value is unchanged to float32
    precision, since ``x - mean`` is 0 there).
    """
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    d = x - mean
    var = (d * d).sum(dim=(0, 2, 3), keepdim=True) / max(n - 1, 1)
    std = torch.sqrt(torch.clamp(var, min=1e-24))
    return d / (std + _PKD_EPS)


class PKDLoss(nn.Module):
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

    def forward(self, t: Tensor, s: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        t = t.detach()
        d = _standardize(s) - _standardize(t)
        return self.loss_weight * (d * d).mean() / 2.0


class MGDLoss(nn.Module):
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
        self.generation = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=True),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=True),
        )

    def forward(self, t: Tensor, s: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
        """Scalar loss (``mask`` is unused; ``noise`` is uniform [0, 1), (B, 1, H, W))."""
        t = t.detach()
        keep = (noise >= self.lambda_mgd).to(s.dtype)
        d = self.generation(s * keep) - t
        return self.alpha_mgd * (d * d).sum() / s.shape[0]


def _fgd_attention(x: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    """FGD's spatial (B, 1, H, W) and channel (B, C, 1, 1) attention of a feature."""
    b, c, h, w = x.shape
    v = x.abs()
    spatial = v.mean(dim=1).reshape(b, h * w) / temp
    a_s = (h * w) * F.softmax(spatial, dim=1).reshape(b, 1, h, w)
    channel = v.mean(dim=(2, 3)) / temp
    a_c = c * F.softmax(channel, dim=1).reshape(b, c, 1, 1)
    return a_s, a_c


def _gc_modules(c: int) -> tuple[nn.Conv2d, nn.Sequential]:
    """``conv_mask`` and ``channel_add_conv`` of a GcBlock, with FGD's initialisation.

    ``conv_mask``: Kaiming normal (fan_in, ReLU gain), zero bias; the last convolution of
    ``channel_add_conv`` is zero (so the block starts as the identity); the rest keep their
    default initialisation.
    """
    hidden = max(1, c // 2)
    conv_mask = nn.Conv2d(c, 1, 1, bias=True)
    nn.init.kaiming_normal_(conv_mask.weight, mode="fan_in", nonlinearity="relu")
    assert conv_mask.bias is not None  # built with bias=True
    nn.init.zeros_(conv_mask.bias)
    channel_add = nn.Sequential(
        nn.Conv2d(c, hidden, 1, bias=True),
        nn.LayerNorm([hidden, 1, 1], eps=1e-5),
        nn.ReLU(),
        nn.Conv2d(hidden, c, 1, bias=True),
    )
    last = channel_add[3]
    assert isinstance(last, nn.Conv2d) and last.bias is not None
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return conv_mask, channel_add


def _gc_apply(x: Tensor, conv_mask: nn.Conv2d, channel_add: nn.Sequential) -> Tensor:
    """Global context block: ``x + channel_add(sum_hw softmax_hw(conv_mask(x)) * x)``."""
    b, c, h, w = x.shape
    weights = F.softmax(conv_mask(x).reshape(b, 1, h * w), dim=2)
    context = (x.reshape(b, c, h * w) * weights).sum(dim=2).reshape(b, c, 1, 1)
    return x + channel_add(context)


class FGDLoss(nn.Module):
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

    def forward(self, t: Tensor, s: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
        """Scalar loss (``noise`` is unused)."""
        t = t.detach()
        b, _, h, w = s.shape
        region = mask_to(mask, h, w).to(s.dtype)
        back = 1.0 - region
        w_fg = region / torch.clamp(region.sum(dim=(2, 3), keepdim=True), min=1.0)
        w_bg = back / torch.clamp(back.sum(dim=(2, 3), keepdim=True), min=1.0)

        as_t, ac_t = _fgd_attention(t, self.temp)
        as_s, ac_s = _fgd_attention(s, self.temp)
        d = as_t * ac_t * (s - t) ** 2
        fg = (w_fg * d).sum() / b
        bg = (w_bg * d).sum() / b
        att = ((ac_s - ac_t).abs().sum() + (as_s - as_t).abs().sum()) / b
        g = _gc_apply(s, self.conv_mask_s, self.channel_add_conv_s) - _gc_apply(
            t, self.conv_mask_t, self.channel_add_conv_t
        )
        glob = (g * g).sum() / b
        return (
            self.alpha_fgd * fg + self.beta_fgd * bg + self.gamma_fgd * att + self.lambda_fgd * glob
        )


class LogitKDLoss(nn.Module):
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

    def forward(self, t: Tensor, s: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
        """Scalar loss (``mask`` and ``noise`` are unused)."""
        zt = t.detach() / self.tau
        zs = s / self.tau
        p = torch.sigmoid(zt)
        kl = F.softplus(zs) - F.softplus(zt) - p * (zs - zt)
        return self.loss_weight * (self.tau**2) * kl.mean()
