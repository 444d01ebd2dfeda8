"""The numpy oracle: a float64 reference of the method's and the baselines' math.

Why this module is long: it is the one float64 reference of every loss the parity suite
checks (the method's pieces, the connector, the weight average, the task loss and the seven
baselines); each function is short and stands alone, and one module keeps the conventions
below in one place.

Written from the definitions (DESIGN.md sections 2 and 3, the formulas in the docstrings of
``torch_ref.distill.method``, ``torch_ref.distill.baselines`` and ``torch_ref.losses``), not
from either framework's code, so that it can arbitrate between the two twins. It imports numpy
and :mod:`irkd.methods` (framework-free) only; every array is converted to float64 on entry,
and every scalar result is a Python ``float``.

Conventions shared with the twins (docs/contracts.md):

- Arrays are NCHW. ``t`` is the teacher's stage feature (B, C, H, W), ``s`` the student's
  feature after its connector (same shape), ``mask`` the ground truth at input resolution
  (B, 1, H_in, W_in) in {0, 1} with ``H_in``, ``W_in`` multiples of ``H``, ``W``, and
  ``noise`` a uniform [0, 1) array (B, 1, H, W) that only MGD uses.
- ``params`` are the loss's hyperparameters, overrides or fully merged: they are merged over
  the defaults and validated by :func:`irkd.methods.resolve_params` (baselines) or
  :func:`irkd.methods.check_msa_awmse_params` (the method), the functions both twins use.
- ``weights`` are the learnable arrays of a loss (MGD's generation block, FGD's global context
  blocks) under the PyTorch ``state_dict`` names; :func:`loss_weight_shapes` lists them.

Every stage loss has the signature ``fn(t, s, mask, noise, params, weights=None) -> float``
and is listed in :data:`ORACLE_LOSSES` under its method name.

Decisions where the definitions leave a choice (each one the mathematically exact value):

- ``M = H*W * softmax(z)`` is evaluated as ``e * (H*W) / sum(e)``, ``e = exp(z - max z)``: a
  uniform map is then exactly 1, so ``R = [M > 1]`` is exactly empty for a flat feature instead
  of being decided by the rounding of ``H*W * (1 / (H*W))``.
- Guards are the documented ones: ``max(||x||, eps)`` for L2 (eps 1e-6) and AT (1e-12),
  ``std + 1e-6`` for PKD (std with Bessel's correction), ``sum + eps`` for AWMSE's region sums,
  ``max(N, 1)`` pixel counts for FGD (an empty region's term is 0), BatchNorm and LayerNorm
  eps 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from irkd.methods import check_msa_awmse_params, resolve_params

__all__ = [
    "AT_EPS",
    "BN_EPS",
    "BN_MOMENTUM",
    "LN_EPS",
    "ORACLE_LOSSES",
    "PKD_EPS",
    "at_loss",
    "avg_pool_exclude_pad",
    "awmse",
    "connector",
    "conv2d",
    "cwd_loss",
    "directional_derivative",
    "ema_update",
    "fgd_loss",
    "fitnet_loss",
    "l2_normalize",
    "l2_map_normalize",
    "layer_norm",
    "logit_kd_loss",
    "loss_weight_shapes",
    "mask_to",
    "mgd_loss",
    "msa_awmse_loss",
    "msa_awmse_stage_loss",
    "msa_awmse_total",
    "msa_map",
    "out_map_loss",
    "pkd_loss",
    "plain_mse",
    "soft_iou_loss",
    "task_loss",
]

AT_EPS = 1e-12
"""Guard of AT's attention-map norm (``F.normalize``'s eps)."""
PKD_EPS = 1e-6
"""PKD: ``(x - mean) / (std + PKD_EPS)`` (mmrazor's PKDLoss)."""
BN_EPS = 1e-5
"""BatchNorm eps of the connector."""
BN_MOMENTUM = 0.1
"""BatchNorm momentum of the connector, PyTorch convention (MindSpore 0.9)."""
LN_EPS = 1e-5
"""LayerNorm eps of FGD's context blocks."""

Array = np.ndarray


# ------------------------------------------------------------------ elementary operations


def _f64(x: Any) -> Array:
    """``x`` as a float64 array (a copy when it was not float64 already)."""
    return np.asarray(x, dtype=np.float64)


def _softmax(x: Array, axis: int) -> Array:
    """Softmax along ``axis``, shifted by the maximum."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x: Array, axis: int) -> Array:
    """Log-softmax along ``axis`` (log-sum-exp with the maximum factored out)."""
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _sigmoid(x: Array) -> Array:
    """Logistic function, without overflow for large ``|x|``."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x: Array) -> Array:
    """``log(1 + exp(x))`` without overflow."""
    return np.logaddexp(0.0, x)


def _relu(x: Array) -> Array:
    return np.maximum(x, 0.0)


def _windows_hw(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sliding windows of ``shape`` over axes 2 and 3 of (B, C, H, W): (B, C, H', W', kh, kw)."""
    # numpy 1.26's stubs type ``axis`` as one index; the function takes a tuple of axes.
    return sliding_window_view(a, shape, axis=(2, 3))  # type: ignore[call-overload]


def conv2d(x: Array, weight: Array, bias: Array | None = None, padding: int = 0) -> Array:
    """2-D cross-correlation with stride 1 and zero padding (PyTorch's ``Conv2d``).

    Args:
        x: Input (B, C_in, H, W).
        weight: Kernel (C_out, C_in, kh, kw).
        bias: Bias (C_out,), or ``None``.
        padding: Zero padding on each side of both spatial axes.

    Returns:
        Output (B, C_out, H + 2 padding - kh + 1, W + 2 padding - kw + 1), float64.
    """
    x = _f64(x)
    weight = _f64(weight)
    if x.ndim != 4 or weight.ndim != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"conv2d: input {x.shape} does not fit kernel {weight.shape}")
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = weight.shape[2], weight.shape[3]
    windows = _windows_hw(x, (kh, kw))  # (B, C_in, H', W', kh, kw)
    out = np.einsum("bchwij,ocij->bohw", windows, weight, optimize=True)
    if bias is not None:
        out = out + _f64(bias).reshape(1, -1, 1, 1)
    return out


def layer_norm(x: Array, weight: Array, bias: Array, eps: float = LN_EPS) -> Array:
    """LayerNorm over all axes but the first (biased variance), then the affine map.

    Args:
        x: Input (B, ...).
        weight: Scale of shape ``x.shape[1:]``.
        bias: Shift of shape ``x.shape[1:]``.
        eps: Added to the variance.
    """
    x = _f64(x)
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * _f64(weight) + _f64(bias)


def avg_pool_exclude_pad(a: Array, k: int) -> Array:
    """K x k average pooling, stride 1, padding ``k // 2``, padded cells excluded.

    Each output cell is the mean of the input cells of its window that lie inside the map.

    Args:
        a: Map (B, C, H, W).
        k: Odd window size.
    """
    a = _f64(a)
    p = k // 2
    pad = ((0, 0), (0, 0), (p, p), (p, p))
    sums = _windows_hw(np.pad(a, pad), (k, k)).sum(axis=(-2, -1))
    ones = np.ones((1, 1) + a.shape[2:])
    counts = _windows_hw(np.pad(ones, pad), (k, k)).sum(axis=(-2, -1))
    return sums / counts


def directional_derivative(
    fn: Callable[[Array], float], x: Array, v: Array, h: float = 1e-6
) -> float:
    """Central difference ``(fn(x + h v) - fn(x - h v)) / (2 h)`` in float64.

    Compared with ``sum(grad * v)`` of a framework, it checks a gradient at the cost of two
    oracle evaluations (truncation error O(h^2), rounding error O(1e-16 / h)).
    """
    x = _f64(x)
    v = _f64(v)
    return (fn(x + h * v) - fn(x - h * v)) / (2.0 * h)


# ------------------------------------------------------------------ the method (DESIGN.md 2)


def mask_to(mask: Array, h: int, w: int) -> Array:
    """Max-pool a GT mask (B, 1, H_in, W_in) down to (B, 1, h, w).

    Kernel and stride are ``H_in / h`` by ``W_in / w``: a cell is target if any of its pixels
    is.

    Raises:
        ValueError: ``(h, w)`` does not divide the mask's size.
    """
    mask = _f64(mask)
    b, c, hin, win = mask.shape
    if h < 1 or w < 1 or hin % h or win % w:
        raise ValueError(f"mask_to: mask size {hin}x{win} is not a multiple of {h}x{w}")
    cells = mask.reshape(b, c, h, hin // h, w, win // w)
    return cells.max(axis=(3, 5))


def _msa_single(
    t: Array, scales: Sequence[int], fusion: str, tau: float, eps: float, border: int = 0
) -> Array:
    """MSA map of one feature (DESIGN.md 2.2)."""
    b, _, h, w = t.shape
    a = np.abs(t).mean(axis=1, keepdims=True)
    contrasts = np.stack([_relu(a - avg_pool_exclude_pad(a, int(k))) for k in scales])
    c = contrasts.mean(axis=0) if fusion == "mean" else contrasts.max(axis=0)
    if border > 0:
        keep = np.zeros_like(c)
        if 2 * border < h and 2 * border < w:
            keep[:, :, border : h - border, border : w - border] = 1.0
        c = c * keep
    c = c / (c.max(axis=(2, 3), keepdims=True) + eps)
    z = (c / tau).reshape(b, h * w)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e * float(h * w) / e.sum(axis=1, keepdims=True)).reshape(b, 1, h, w)


def msa_map(
    t: Array,
    scales: Sequence[int] = (3, 5, 7),
    fusion: str = "mean",
    tau: float = 0.5,
    eps: float = 1e-6,
    s: Array | None = None,
    border: int = 0,
) -> Array:
    """Multi-scale spatial attention map ``M`` (B, 1, H, W).

    ``a = mean_c |T|``; ``c_k = relu(a - avgpool_k(a))`` per scale (padded cells excluded from
    the average); ``c = mean_k c_k`` (or ``max_k``); ``c = c / (max_hw c + eps)`` per image;
    ``M = H*W * softmax_hw(c / tau)``. With ``s`` given, the map of ``s`` is computed the same
    way and the two maps are fused by an elementwise max.

    Args:
        t: Feature (B, C, H, W), the teacher's.
        scales: Odd window sizes.
        fusion: ``mean`` or ``max`` over the scales.
        tau: Softmax temperature (> 0).
        eps: Guard of the per-image max normalisation.
        s: Optional second feature (the connected student's), fused by max.
        border: Cells at each edge whose contrast is set to 0 before the normalisation (the
            whole map when ``2 * border`` reaches its height or width).

    Raises:
        ValueError: Unknown fusion, no scale, or an even or non-positive scale.
    """
    if fusion not in ("mean", "max"):
        raise ValueError(f"msa_map: fusion must be 'mean' or 'max', got {fusion!r}")
    scales = tuple(int(k) for k in scales)
    if not scales or any(k < 1 or k % 2 == 0 for k in scales):
        raise ValueError(f"msa_map: scales must be odd and >= 1, got {list(scales)}")
    m = _msa_single(_f64(t), scales, fusion, float(tau), float(eps), int(border))
    if s is not None:
        m = np.maximum(m, _msa_single(_f64(s), scales, fusion, float(tau), float(eps), int(border)))
    return m


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
    """Per-pixel L2 normalisation along channels: ``x / max(||x||_2, eps)``."""
    x = _f64(x)
    norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / np.maximum(norm, eps)


def l2_map_normalize(x: Array, eps: float = 1e-6) -> Array:
    """Per-image L2 normalisation of the whole map: ``x / max(sqrt(mean_hw sum_c x^2), eps)``."""
    x = _f64(x)
    rms = np.sqrt((x * x).sum(axis=1, keepdims=True).mean(axis=(2, 3), keepdims=True))
    return x / np.maximum(rms, eps)


def awmse(
    t_hat: Array,
    s_hat: Array,
    m: Array,
    r: Array,
    alpha: float = 1.0,
    beta: float = 0.5,
    eps: float = 1e-6,
    reduce: str = "image",
) -> float:
    """Adaptive weighted MSE (DESIGN.md 2.4).

    ``d = sum_c (T_hat - S_hat)^2``; per image ``w_fg = M R / (sum_hw M R + eps)`` and
    ``w_bg = M (1 - R) / (sum_hw M (1 - R) + eps)``;
    ``L = mean_b (alpha sum_hw w_fg d + beta sum_hw w_bg d)``.

    Args:
        t_hat: Teacher feature (B, C, H, W).
        s_hat: Student feature (B, C, H, W).
        m: Attention map (B, 1, H, W).
        r: Target region (B, 1, H, W) in {0, 1}.
        alpha: Total weight of the target region per image.
        beta: Total weight of the background per image.
        eps: Guard of the region sums.
        reduce: ``image`` as above; ``batch``: the region sums run over the whole batch,
            ``w_fg = M R / (sum_bhw M R + eps)`` (likewise ``w_bg``), and
            ``L = alpha sum_bhw w_fg d + beta sum_bhw w_bg d``.
    """
    m = _f64(m)
    r = _f64(r)
    d = ((_f64(t_hat) - _f64(s_hat)) ** 2).sum(axis=1, keepdims=True)
    m_fg = m * r
    m_bg = m * (1.0 - r)
    if reduce == "batch":
        w_fg = m_fg / (m_fg.sum() + eps)
        w_bg = m_bg / (m_bg.sum() + eps)
        return float(alpha * (w_fg * d).sum() + beta * (w_bg * d).sum())
    w_fg = m_fg / (m_fg.sum(axis=(2, 3), keepdims=True) + eps)
    w_bg = m_bg / (m_bg.sum(axis=(2, 3), keepdims=True) + eps)
    per_image = alpha * (w_fg * d).sum(axis=(1, 2, 3)) + beta * (w_bg * d).sum(axis=(1, 2, 3))
    return float(per_image.mean())


def plain_mse(t_hat: Array, s_hat: Array) -> float:
    """AWMSE's ablation: ``mean_{b,h,w} sum_c (T_hat - S_hat)^2``."""
    return float(((_f64(t_hat) - _f64(s_hat)) ** 2).sum(axis=1).mean())


def msa_awmse_loss(
    t: Array, s: Array, mask: Array | None, params: Mapping[str, Any] | None = None
) -> float:
    """The method's stage loss ``L_s`` (DESIGN.md 2.2-2.4), every option of ``MethodConfig``.

    1. ``M``: :func:`msa_map` of ``t`` (and of ``s`` fused by max with ``on_student``);
       ``msa: False`` makes ``M = 1``.
    2. ``normalize: l2``: :func:`l2_normalize` of both features (eps ``l2_eps``); ``l2_map``:
       :func:`l2_map_normalize`; ``none``: unchanged.
    3. ``R``: :func:`mask_to` of the mask when ``use_mask`` and a mask is given, else
       ``[M > 1]``.
    4. ``awmse: True``: :func:`awmse` with ``alpha``, ``beta``, ``awmse_eps``, ``awmse_reduce``;
       ``False``:
       :func:`plain_mse` (``M``, ``R``, ``alpha``, ``beta`` unused).

    Args:
        t: Teacher feature (B, C, H, W).
        s: Student feature after its connector (B, C, H, W).
        mask: GT mask (B, 1, H_in, W_in), or ``None``.
        params: Overrides of ``irkd.methods.MSA_AWMSE_DEFAULTS`` (``msa``, ``scales``,
            ``fusion``, ``tau``, ``on_student``, ``msa_eps``, ``normalize``, ``l2_eps``,
            ``awmse``, ``alpha``, ``beta``, ``use_mask``, ``awmse_eps``).
    """
    p = check_msa_awmse_params(params)
    t = _f64(t)
    s = _f64(s)
    if t.shape != s.shape:
        raise ValueError(f"msa_awmse_loss: teacher {t.shape} and student {s.shape} differ")
    if p["normalize"] == "l2":
        t_hat, s_hat = l2_normalize(t, p["l2_eps"]), l2_normalize(s, p["l2_eps"])
    elif p["normalize"] == "l2_map":
        t_hat, s_hat = l2_map_normalize(t, p["l2_eps"]), l2_map_normalize(s, p["l2_eps"])
    else:
        t_hat, s_hat = t, s
    if not p["awmse"]:
        return plain_mse(t_hat, s_hat)
    b, _, h, w = t.shape
    if p["msa"]:
        m = msa_map(
            t,
            p["scales"],
            p["fusion"],
            p["tau"],
            p["msa_eps"],
            s=s if p["on_student"] else None,
            border=p["msa_border"],
        )
    else:
        m = np.ones((b, 1, h, w))
    r = mask_to(mask, h, w) if p["use_mask"] and mask is not None else (m > 1.0).astype(float)
    return awmse(t_hat, s_hat, m, r, p["alpha"], p["beta"], p["awmse_eps"], p["awmse_reduce"])


def out_map_loss(
    t_logits: Array, s_logits: Array, mask: Array | None, params: Mapping[str, Any] | None = None
) -> float:
    """The output-map term ``L_out`` of ``method.out_weight`` (msa_awmse only).

    :func:`msa_awmse_loss` of ``P_t = sigmoid(t_logits)`` and ``P_s = sigmoid(s_logits)``
    (B, 1, H, W) with the same options, ``normalize`` forced to ``none``.
    """
    p = {**check_msa_awmse_params(params), "normalize": "none"}
    return msa_awmse_loss(_sigmoid(_f64(t_logits)), _sigmoid(_f64(s_logits)), mask, p)


def msa_awmse_total(
    stage_terms: Sequence[float],
    stage_weights: Sequence[float],
    lam: float,
    out_term: float | None = None,
    out_weight: float = 0.0,
) -> float:
    """The distiller's total ``lam * (sum_s w_s * L_s + out_weight * L_out)``.

    ``out_term`` is ``L_out`` (:func:`out_map_loss`); it counts only when ``out_weight > 0``.
    """
    total = sum(float(w) * float(v) for w, v in zip(stage_weights, stage_terms, strict=True))
    if out_weight > 0:
        if out_term is None:
            raise ValueError("msa_awmse_total: out_weight > 0 needs out_term")
        total += float(out_weight) * float(out_term)
    return float(lam) * total


def msa_awmse_stage_loss(
    t: Array,
    s: Array,
    mask: Array | None,
    noise: Array | None,
    params: Mapping[str, Any] | None = None,
    weights: Mapping[str, Array] | None = None,
) -> float:
    """:func:`msa_awmse_loss` with the common stage-loss signature (``noise`` is unused)."""
    _check_weights("msa_awmse", weights, int(np.shape(t)[1]))
    return msa_awmse_loss(t, s, mask, params)


# ------------------------------------------------------------------ connector and task loss


def connector(
    x: Array,
    weights: Mapping[str, Array],
    train: bool,
    eps: float = BN_EPS,
    momentum: float = BN_MOMENTUM,
) -> tuple[Array, dict[str, Array]]:
    """The connector ``phi_s``: 1x1 convolution (no bias) then BatchNorm.

    Train mode normalises with the batch statistics (mean and biased variance over B, H, W)
    and updates the running statistics as PyTorch does:
    ``running = (1 - momentum) running + momentum batch`` with the unbiased batch variance.
    Eval mode normalises with the running statistics.

    Args:
        x: Student feature (B, Cs, H, W).
        weights: ``conv.weight`` (Ct, Cs, 1, 1), ``bn.weight``, ``bn.bias``,
            ``bn.running_mean``, ``bn.running_var`` (Ct,) (``bn.num_batches_tracked`` is
            ignored).
        train: Batch statistics (and updated running statistics) when true.
        eps: BatchNorm eps.
        momentum: BatchNorm momentum, PyTorch convention.

    Returns:
        ``(y, stats)``: the connected feature (B, Ct, H, W) and ``{"bn.running_mean": ...,
        "bn.running_var": ...}``, updated in train mode, unchanged in eval mode.
    """
    need = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
    missing = [k for k in need if k not in weights]
    if missing:
        raise ValueError(f"connector: missing weights {missing}")
    w = _f64(weights["conv.weight"])
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        raise ValueError(f"connector: conv.weight must be (Ct, Cs, 1, 1), got {w.shape}")
    y = np.einsum("oc,bchw->bohw", w[:, :, 0, 0], _f64(x))
    gamma = _f64(weights["bn.weight"]).reshape(1, -1, 1, 1)
    shift = _f64(weights["bn.bias"]).reshape(1, -1, 1, 1)
    run_mean = _f64(weights["bn.running_mean"])
    run_var = _f64(weights["bn.running_var"])
    if train:
        n = y.shape[0] * y.shape[2] * y.shape[3]
        mean = y.mean(axis=(0, 2, 3))
        var = ((y - mean.reshape(1, -1, 1, 1)) ** 2).mean(axis=(0, 2, 3))
        unbiased = var * n / (n - 1) if n > 1 else var
        stats = {
            "bn.running_mean": (1.0 - momentum) * run_mean + momentum * mean,
            "bn.running_var": (1.0 - momentum) * run_var + momentum * unbiased,
        }
    else:
        mean, var = run_mean, run_var
        stats = {"bn.running_mean": run_mean.copy(), "bn.running_var": run_var.copy()}
    out = (y - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + eps)
    return out * gamma + shift, stats


def ema_update(
    ema: Mapping[str, Array], weights: Mapping[str, Array], decay: float, step: int
) -> dict[str, Array]:
    """One update of the weight average (``train.ema``) after optimizer step ``step``.

    ``d = min(decay, (1 + step) / (10 + step))`` and ``e = d e + (1 - d) w`` for every tensor
    (float64 here; the twins compute in float32).

    Args:
        ema: The average before the update, by name.
        weights: The network's weights after optimizer step ``step`` (1-based), same names.
        decay: The configured decay, in [0, 1).
        step: Optimizer steps done (>= 1).

    Returns:
        The average after the update.
    """
    if set(ema) != set(weights):
        raise ValueError("ema_update: the average and the weights have different names")
    d = min(float(decay), (1.0 + step) / (10.0 + step))
    return {k: d * _f64(ema[k]) + (1.0 - d) * _f64(weights[k]) for k in ema}


def soft_iou_loss(logits: Array, mask: Array, smooth: float = 1.0) -> float:
    """SoftIoU loss over the whole batch (sums over batch, channels and pixels together).

    ``p = sigmoid(logits)``, ``1 - (sum p g + smooth) / (sum p + sum g - sum p g + smooth)``.
    """
    p = _sigmoid(_f64(logits))
    g = _f64(mask)
    inter = (p * g).sum()
    union = p.sum() + g.sum() - inter
    return float(1.0 - (inter + smooth) / (union + smooth))


def task_loss(logits: Array, aux: Sequence[Array], mask: Array) -> float:
    """SoftIoU of the output, or the mean SoftIoU over ``(*aux, logits)`` (deep supervision)."""
    heads = [*aux, logits]
    return float(np.mean([soft_iou_loss(z, mask) for z in heads]))


# ------------------------------------------------------------------ baselines (DESIGN.md 3)


def loss_weight_shapes(name: str, t_channels: int) -> dict[str, tuple[int, ...]]:
    """Names (PyTorch ``state_dict``) and shapes of a stage loss's learnable arrays.

    Args:
        name: Method name (a key of :data:`ORACLE_LOSSES`).
        t_channels: Teacher channels ``C`` of the stage.

    Returns:
        ``{}`` for losses without parameters; MGD's generation block (two 3x3 convolutions
        C -> C with bias, around a ReLU at index 1); FGD's two global context blocks (per path
        ``p`` in ``s``, ``t``: ``conv_mask_p`` 1x1 C -> 1, ``channel_add_conv_p`` = 1x1
        C -> C/2, LayerNorm [C/2, 1, 1], ReLU, 1x1 C/2 -> C, all with bias,
        ``C/2 = max(1, C // 2)``).
    """
    if name not in ORACLE_LOSSES:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(ORACLE_LOSSES)}")
    c = int(t_channels)
    if name == "mgd":
        return {
            "generation.0.weight": (c, c, 3, 3),
            "generation.0.bias": (c,),
            "generation.2.weight": (c, c, 3, 3),
            "generation.2.bias": (c,),
        }
    if name == "fgd":
        hid = max(1, c // 2)
        out: dict[str, tuple[int, ...]] = {}
        for p in ("s", "t"):
            out[f"conv_mask_{p}.weight"] = (1, c, 1, 1)
            out[f"conv_mask_{p}.bias"] = (1,)
            out[f"channel_add_conv_{p}.0.weight"] = (hid, c, 1, 1)
            out[f"channel_add_conv_{p}.0.bias"] = (hid,)
            out[f"channel_add_conv_{p}.1.weight"] = (hid, 1, 1)
            out[f"channel_add_conv_{p}.1.bias"] = (hid, 1, 1)
            out[f"channel_add_conv_{p}.3.weight"] = (c, hid, 1, 1)
            out[f"channel_add_conv_{p}.3.bias"] = (c,)
        return out
    return {}


def _check_weights(
    name: str, weights: Mapping[str, Array] | None, t_channels: int
) -> dict[str, Array]:
    """The float64 weights of a loss, checked strictly against :func:`loss_weight_shapes`."""
    expected = loss_weight_shapes(name, t_channels)
    given = dict(weights or {})
    if set(given) != set(expected):
        missing = sorted(set(expected) - set(given))
        unexpected = sorted(set(given) - set(expected))
        raise ValueError(f"{name}: weights missing {missing}, unexpected {unexpected}")
    out = {}
    for key, shape in expected.items():
        arr = _f64(given[key])
        if arr.shape != shape:
            raise ValueError(f"{name}: {key} has shape {arr.shape}, expected {shape}")
        out[key] = arr
    return out


def _pair(t: Array, s: Array) -> tuple[Array, Array]:
    t = _f64(t)
    s = _f64(s)
    if t.shape != s.shape or t.ndim != 4:
        raise ValueError(f"teacher {t.shape} and student {s.shape} must be equal NCHW shapes")
    return t, s


def fitnet_loss(
    t: Array,
    s: Array,
    mask: Array | None,
    noise: Array | None,
    params: Mapping[str, Any] | None = None,
    weights: Mapping[str, Array] | None = None,
) -> float:
    """FitNet: ``loss_weight * mean_{b,c,h,w} (s - t)^2``."""
    p = resolve_params("fitnet", params)
    t, s = _pair(t, s)
    _check_weights("fitnet", weights, t.shape[1])
    return float(p["loss_weight"] * ((s - t) ** 2).mean())


def _at_map(x: Array) -> Array:
    """AT's map: ``vec(mean_c x^2) / max(||vec(mean_c x^2)||_2, 1e-12)`` per image."""
    a = (x * x).mean(axis=1).reshape(x.shape[0], -1)
    return a / np.maximum(np.sqrt((a * a).sum(axis=1, keepdims=True)), AT_EPS)


def at_loss(
    t: Array,
    s: Array,
    mask: Array | None,
    noise: Array | None,
    params: Mapping[str, Any] | None = None,
    weights: Mapping[str, Array] | None = None,
) -> float:
    """Attention transfer (p = 2): ``loss_weight * mean_{b,hw} (a(s) - a(t))^2``."""
    p = resolve_params("at", params)
    t, s = _pair(t, s)
    _check_weights("at", weights, t.shape[1])
    return float(p["loss_weight"] * ((_at_map(s) - _at_map(t)) ** 2).mean())


def cwd_loss(
    t: Array,
    s: Array,
    mask: Array | None,
    noise: Array | None,
    params: Mapping[str, Any] | None = None,
    weights: Mapping[str, Array] | None = None,
) -> float:
    """Channel-wise distillation.

    Per image and channel ``p = softmax_hw(x / tau)``;
    ``L = loss_weight * tau^2 * sum_{b,c} KL(p_t || p_s) / (B C)``.
    """
    p = resolve_params("cwd", params)
    t, s = _pair(t, s)
    _check_weights("cwd", weights, t.shape[1])
    b, c = t.shape[:2]
    tau = p["tau"]
    log_pt = _log_softmax(t.reshape(b, c, -1) / tau, axis=2)
    log_ps = _log_softmax(s.reshape(b, c, -1) / tau, axis=2)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum()
    return float(p["loss_weight"] * tau**2 * kl / (b * c))


def _pkd_standardize(x: Array) -> Array:
    """Per channel over (B, H, W): ``(x - mean) / (std + 1e-6)``, std unbiased."""
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = np.sqrt(((x - mean) ** 2).sum(axis=(0, 2, 3), keepdims=True) / max(n - 1, 1))
    return (x - mean) / (std + PKD_EPS)


def pkd_loss(
    t: Array,
    s: Array,
    mask: Array | None,
    noise: Array | None,
    params: Mapping[str, Any] | None = None,
    weights: Mapping[str, Array] | None = None,
) -> float:
    """PKD: ``loss_weight * mean_{b,c,h,w} (std(s) - std(t))^2 / 2`` (per-channel standardised)."""
    p = resolve_params("pkd", params)
    t, s = _pair(t, s)
    _check_weights("pkd", weights, t.shape[1])
    d = _pkd_standardize(s) - _pkd_standardize(t)
    return float(p["loss_weight"] * (d * d).mean() / 2.0)


def mgd_loss(
    t: Array,
    s: Array,
    mask: Array | None,
    noise: Array | None,
    params: Mapping[str, Any] | None = None,
    weights: Mapping[str, Array] | None = None,
) -> float:
    """Masked generative distillation.

    ``keep = [noise >= lambda_mgd]`` (B, 1, H, W); ``G = conv3x3 -> ReLU -> conv3x3`` (C -> C,
    bias, padding 1); ``L = alpha_mgd * sum_{b,c,h,w} (G(s * keep) - t)^2 / B``.
    """
    p = resolve_params("mgd", params)
    t, s = _pair(t, s)
    wt = _check_weights("mgd", weights, t.shape[1])
    if noise is None:
        raise ValueError("mgd: needs the noise array (B, 1, H, W)")
    noise = _f64(noise)
    if noise.shape != (t.shape[0], 1) + t.shape[2:]:
        raise ValueError(f"mgd: noise {noise.shape} does not fit the feature {t.shape}")
    keep = (noise >= p["lambda_mgd"]).astype(np.float64)
    hidden = _relu(conv2d(s * keep, wt["generation.0.weight"], wt["generation.0.bias"], 1))
    gen = conv2d(hidden, wt["generation.2.weight"], wt["generation.2.bias"], 1)
    return float(p["alpha_mgd"] * ((gen - t) ** 2).sum() / t.shape[0])


def _fgd_attention(x: Array, temp: float) -> tuple[Array, Array]:
    """FGD's ``A_S = H W softmax_hw(mean_c |x| / T)`` and ``A_C = C softmax_c(mean_hw |x| / T)``."""
    b, c, h, w = x.shape
    v = np.abs(x)
    a_s = (h * w) * _softmax(v.mean(axis=1).reshape(b, h * w) / temp, axis=1)
    a_c = c * _softmax(v.mean(axis=(2, 3)) / temp, axis=1)
    return a_s.reshape(b, 1, h, w), a_c.reshape(b, c, 1, 1)


def _global_context(x: Array, wt: Mapping[str, Array], path: str) -> Array:
    """``Gc(x) = x + transform(sum_hw softmax_hw(conv_mask(x)) x)`` of one FGD path."""
    b, c, h, w = x.shape
    pre = f"channel_add_conv_{path}"
    logits = conv2d(x, wt[f"conv_mask_{path}.weight"], wt[f"conv_mask_{path}.bias"])
    attn = _softmax(logits.reshape(b, 1, h * w), axis=2)
    context = (x.reshape(b, c, h * w) * attn).sum(axis=2).reshape(b, c, 1, 1)
    y = conv2d(context, wt[f"{pre}.0.weight"], wt[f"{pre}.0.bias"])
    y = _relu(layer_norm(y, wt[f"{pre}.1.weight"], wt[f"{pre}.1.bias"]))
    y = conv2d(y, wt[f"{pre}.3.weight"], wt[f"{pre}.3.bias"])
    return x + y


def fgd_loss(
    t: Array,
    s: Array,
    mask: Array | None,
    noise: Array | None,
    params: Mapping[str, Any] | None = None,
    weights: Mapping[str, Array] | None = None,
) -> float:
    """FGD adapted to masks: focal fg/bg, attention and global terms.

    ``R`` = mask max-pooled to the stage; per image ``w_fg = R / N_fg``,
    ``w_bg = (1 - R) / N_bg`` (pixel counts; an empty region's term is 0). With
    ``D = A_S(t) A_C(t) (s - t)^2``:
    ``L = alpha_fgd sum(w_fg D) / B + beta_fgd sum(w_bg D) / B
    + gamma_fgd (sum |A_C(s) - A_C(t)| + sum |A_S(s) - A_S(t)|) / B
    + lambda_fgd sum (Gc_s(s) - Gc_t(t))^2 / B``.

    Raises:
        ValueError: No mask (FGD's focal terms need one; pass zeros for "no target").
    """
    p = resolve_params("fgd", params)
    t, s = _pair(t, s)
    wt = _check_weights("fgd", weights, t.shape[1])
    if mask is None:
        raise ValueError("fgd: needs a mask (all zeros for images without target)")
    b, _, h, w = t.shape
    r = mask_to(mask, h, w)
    n_fg = r.sum(axis=(2, 3), keepdims=True)
    n_bg = (1.0 - r).sum(axis=(2, 3), keepdims=True)
    w_fg = np.where(n_fg > 0, r / np.maximum(n_fg, 1.0), 0.0)
    w_bg = np.where(n_bg > 0, (1.0 - r) / np.maximum(n_bg, 1.0), 0.0)
    as_t, ac_t = _fgd_attention(t, p["temp"])
    as_s, ac_s = _fgd_attention(s, p["temp"])
    d = as_t * ac_t * (s - t) ** 2
    focal_fg = (w_fg * d).sum() / b
    focal_bg = (w_bg * d).sum() / b
    attention = (np.abs(ac_s - ac_t).sum() + np.abs(as_s - as_t).sum()) / b
    g = _global_context(s, wt, "s") - _global_context(t, wt, "t")
    glob = (g * g).sum() / b
    return float(
        p["alpha_fgd"] * focal_fg
        + p["beta_fgd"] * focal_bg
        + p["gamma_fgd"] * attention
        + p["lambda_fgd"] * glob
    )


def logit_kd_loss(
    t: Array,
    s: Array,
    mask: Array | None,
    noise: Array | None,
    params: Mapping[str, Any] | None = None,
    weights: Mapping[str, Array] | None = None,
) -> float:
    """Pixel-wise logit KD, binary form.

    With ``p = sigmoid(z_t / tau)``, ``q = sigmoid(z_s / tau)`` per pixel,
    ``KL = p log(p / q) + (1 - p) log((1 - p) / (1 - q))`` and
    ``L = loss_weight * tau^2 * mean_{b,h,w} KL``. The logarithms are taken as log-sigmoids
    (``log sigmoid(z) = -softplus(-z)``, ``log(1 - sigmoid(z)) = -softplus(z)``), which are exact
    and finite for any logit.
    """
    p = resolve_params("logit_kd", params)
    t, s = _pair(t, s)
    _check_weights("logit_kd", weights, t.shape[1])
    tau = p["tau"]
    zt, zs = t / tau, s / tau
    pt = _sigmoid(zt)
    kl = pt * (_softplus(-zs) - _softplus(-zt)) + (1.0 - pt) * (_softplus(zs) - _softplus(zt))
    return float(p["loss_weight"] * tau**2 * kl.mean())


StageLoss = Callable[..., float]

ORACLE_LOSSES: dict[str, StageLoss] = {
    "msa_awmse": msa_awmse_stage_loss,
    "fitnet": fitnet_loss,
    "at": at_loss,
    "cwd": cwd_loss,
    "pkd": pkd_loss,
    "mgd": mgd_loss,
    "fgd": fgd_loss,
    "logit_kd": logit_kd_loss,
}
"""Method name -> stage loss ``fn(t, s, mask, noise, params, weights=None) -> float``."""
