"""Framework-free parts of the distillation methods, shared by ``ms_impl`` and ``torch_ref``.

The published default hyperparameters of the baselines and their validation, the resolved
options of MSA-AWMSE, and the stage-name scheme (strides, channels). Both twins import these
instead of keeping two copies, so the two frameworks cannot drift apart on them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from irkd.config import MethodConfig, out_weight_problem

__all__ = [
    "BASELINE_DEFAULTS",
    "MSA_AWMSE_DEFAULTS",
    "check_msa_awmse_params",
    "msa_awmse_params",
    "out_params",
    "out_weight",
    "resolve_params",
    "stage_channel",
    "stage_params",
    "stage_stride",
]


BASELINE_DEFAULTS: dict[str, dict[str, float]] = {
    # FitNets (Romero et al., ICLR 2015): the hint loss 1/2 ||u_h - r(v_g)||^2 is trained in a
    # stage of its own, without a relative weight; here a mean squared error with weight 1.0
    # (mmrazor's MSE/L2 distillation losses also default to loss_weight=1.0).
    "fitnet": {"loss_weight": 1.0},
    # AT (Zagoruyko & Komodakis, ICLR 2017), Sec. 4.1: beta is set to 10^3 divided by the
    # number of elements of the attention map and the batch size; the authors' code
    # (szagoruyko/attention-transfer, cifar.py: at_loss = (at(x) - at(y)).pow(2).mean(), times
    # opt.beta) realises that division as the mean, so loss_weight = beta = 1000.
    "at": {"loss_weight": 1000.0},
    # CWD (Shu et al., ICCV 2021): the segmentation configs of the authors' code
    # (pppppM/mmsegmentation-distiller cwd_psp_r101-d8_distill_psp_r18_d8_512_1024_80k_
    # cityscapes.py: tau=1.0, weight=5.0) and of mmrazor (cwd_logits_pspnet_r101_d8_pspnet_
    # r18_d8_512x1024_cityscapes_80k.py: tau=1, loss_weight=5).
    "cwd": {"tau": 1.0, "loss_weight": 5.0},
    # PKD (Cao et al., NeurIPS 2022), mmrazor PKDLoss (mmrazor/models/losses/pkd_loss.py):
    # loss_weight defaults to 1.0 (its COCO detection configs raise it to 6 for Faster R-CNN
    # and 10 for RetinaNet, to balance several detection losses).
    "pkd": {"loss_weight": 1.0},
    # MGD (Yang et al., ECCV 2022), the authors' segmentation code (yzd-v/MGD seg/mmseg/
    # distillation/losses/mgd.py and seg/configs/distillers/mgd/*_city.py): alpha_mgd=2e-5,
    # lambda_mgd=0.75 (their detection configs use lambda_mgd=0.65, classification 0.5/0.15).
    "mgd": {"alpha_mgd": 2e-5, "lambda_mgd": 0.75},
    # FGD (Yang et al., CVPR 2022), the authors' FeatureLoss defaults (yzd-v/FGD mmdet/
    # distillation/losses/fgd.py, also mmrazor's FGDLoss): temp=0.5, alpha_fgd=0.001,
    # beta_fgd=0.0005, gamma_fgd=0.001, lambda_fgd=0.000005 (their RetinaNet configs use
    # gamma_fgd=0.0005, the two-stage ones smaller values).
    "fgd": {
        "temp": 0.5,
        "alpha_fgd": 0.001,
        "beta_fgd": 0.0005,
        "gamma_fgd": 0.001,
        "lambda_fgd": 0.000005,
    },
    # Pixel-wise KD of Liu et al., "Structured Knowledge Distillation for Semantic
    # Segmentation" (CVPR 2019; irfanICMLL/structure_knowledge_distillation,
    # utils/train_options.py --lambda-pi 10.0, no temperature, i.e. tau = 1), in its binary
    # (sigmoid) form. Their loss sums over the batch where this one averages.
    "logit_kd": {"tau": 1.0, "loss_weight": 10.0},
}
"""Published default hyperparameters of each baseline (method name -> params)."""

_RANGES: dict[str, tuple[float, float, bool]] = {
    "loss_weight": (0.0, math.inf, True),
    "tau": (0.0, math.inf, False),
    "temp": (0.0, math.inf, False),
    "alpha_mgd": (0.0, math.inf, True),
    "lambda_mgd": (0.0, 1.0, True),
    "alpha_fgd": (0.0, math.inf, True),
    "beta_fgd": (0.0, math.inf, True),
    "gamma_fgd": (0.0, math.inf, True),
    "lambda_fgd": (0.0, math.inf, True),
}


def resolve_params(name: str, params: Mapping[str, Any] | None) -> dict[str, float]:
    """Merge ``params`` over ``BASELINE_DEFAULTS[name]`` and validate them.

    Args:
        name: Baseline name (a key of ``BASELINE_DEFAULTS``).
        params: Overrides (or a fully merged dict); ``None`` means none.

    Returns:
        The merged hyperparameters, as floats.

    Raises:
        ValueError: Unknown baseline, unknown key (the message names it and lists the valid
            ones), a value that is not a number, or one out of range.
    """
    if name not in BASELINE_DEFAULTS:
        raise ValueError(
            f"unknown baseline {name!r}; valid baselines: {', '.join(sorted(BASELINE_DEFAULTS))}"
        )
    defaults = BASELINE_DEFAULTS[name]
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for baseline {name!r}; "
            f"valid parameters: {', '.join(sorted(defaults))}"
        )
    out: dict[str, float] = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}.{key} must be a number, got {value!r}")
        value = float(value)
        low, high, closed = _RANGES[key]
        if not math.isfinite(value) or value > high or value < low or (value == low and not closed):
            bound = "[" if closed else "("
            raise ValueError(f"{name}.{key} must lie in {bound}{low}, {high}], got {value!r}")
        out[key] = value
    return out


def msa_awmse_params(method: MethodConfig) -> dict[str, Any]:
    """The :class:`MSAAWMSELoss` parameters of a :class:`~irkd.config.MethodConfig`."""
    msa = method.msa
    return {
        "msa": bool(msa.enabled),
        "scales": [int(k) for k in msa.scales],
        "fusion": str(msa.fusion),
        "tau": float(msa.tau),
        "on_student": bool(msa.on_student),
        "msa_eps": float(msa.eps),
        "msa_border": int(msa.border),
        "normalize": str(method.normalize),
        "l2_eps": float(method.l2_eps),
        "awmse": bool(method.awmse),
        "alpha": float(method.alpha),
        "beta": float(method.beta),
        "use_mask": bool(method.use_mask),
        "awmse_eps": float(method.awmse_eps),
        "awmse_reduce": str(method.awmse_reduce),
    }


MSA_AWMSE_DEFAULTS: dict[str, Any] = msa_awmse_params(MethodConfig())
"""Defaults of :class:`MSAAWMSELoss` (those of ``MethodConfig``, DESIGN.md section 2)."""


def check_msa_awmse_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``params`` over the defaults and validate them (the same checks on both sides)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(MSA_AWMSE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"MSAAWMSELoss: unknown parameter(s) {unknown}; valid: {sorted(MSA_AWMSE_DEFAULTS)}"
        )
    p = {**MSA_AWMSE_DEFAULTS, **params}
    scales = tuple(int(k) for k in p["scales"])
    if not scales or any(k < 1 or k % 2 == 0 for k in scales):
        raise ValueError(f"MSAAWMSELoss: scales must be odd and >= 1, got {list(scales)}")
    if p["fusion"] not in ("mean", "max"):
        raise ValueError(f"MSAAWMSELoss: fusion must be 'mean' or 'max', got {p['fusion']!r}")
    if p["normalize"] not in ("l2", "l2_map", "none"):
        raise ValueError(
            f"MSAAWMSELoss: normalize must be 'l2', 'l2_map' or 'none', got {p['normalize']!r}"
        )
    if p["awmse_reduce"] not in ("image", "batch"):
        raise ValueError(
            f"MSAAWMSELoss: awmse_reduce must be 'image' or 'batch', got {p['awmse_reduce']!r}"
        )
    for key in ("tau", "msa_eps", "l2_eps", "awmse_eps"):
        if not float(p[key]) > 0:
            raise ValueError(f"MSAAWMSELoss: {key} must be > 0, got {p[key]!r}")
    if (
        isinstance(p["msa_border"], bool)
        or int(p["msa_border"]) != p["msa_border"]
        or int(p["msa_border"]) < 0
    ):
        raise ValueError(
            f"MSAAWMSELoss: msa_border must be an integer >= 0, got {p['msa_border']!r}"
        )
    p["msa_border"] = int(p["msa_border"])
    for key in ("alpha", "beta"):
        if not float(p[key]) >= 0:
            raise ValueError(f"MSAAWMSELoss: {key} must be >= 0, got {p[key]!r}")
    p["scales"] = scales
    return p


def out_weight(method: MethodConfig) -> float:
    """``method.out_weight``, the weight of the output-map term, checked.

    Raises:
        ValueError: A weight below 0 (or not finite), or one other than 0 for a method other
            than ``msa_awmse`` (the same message as the config's validation).
    """
    problem = out_weight_problem(method.name, method.out_weight)
    if problem is not None:
        raise ValueError(f"method.out_weight: {problem}")
    return float(method.out_weight)


def out_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`MSAAWMSELoss` parameters of the output-map term from the stages' ones.

    The same options with ``normalize: none`` (a per-pixel L2 norm of a one-channel map is
    its absolute value: the confidence the term exists to transfer would be lost).
    """
    return {**params, "normalize": "none"}


_STAGE_RE = re.compile(r"^(enc|dec)(\d+)$")


def stage_params(method: MethodConfig) -> dict[str, Any]:
    """The ``params`` every stage loss of ``method`` is built with.

    For ``msa_awmse`` they come from the method's own config fields (:func:`msa_awmse_params`)
    and ``method.params`` must be empty (one place per option). For a baseline they are
    ``method.params`` as given; each baseline fills in its own defaults
    (``baselines.BASELINE_DEFAULTS``).

    Raises:
        ValueError: ``params`` given for ``msa_awmse``.
    """
    if method.name == "msa_awmse":
        if method.params:
            raise ValueError(
                "method.params must be empty for msa_awmse (its options are the method's own "
                f"fields: normalize, msa.*, awmse, alpha, beta, ...); got {sorted(method.params)}"
            )
        return msa_awmse_params(method)
    return dict(method.params)


def stage_stride(name: str) -> int:
    """Stride of a stage feature named by ``irkd.zoo``'s scheme (``enc{i}``/``dec{i}``: 2**i).

    ``logits`` (logit KD) has stride 1.

    Raises:
        ValueError: A name outside that scheme.
    """
    if name == "logits":
        return 1
    match = _STAGE_RE.match(name)
    if match is None:
        raise ValueError(f"cannot tell the stride of stage {name!r} (expected enc<i> or dec<i>)")
    return 2 ** int(match.group(2))


def stage_channel(which: str, channels: Mapping[str, int], stage: str) -> int:
    """Channels of ``stage`` in a network's stage table (``which``: teacher or student).

    Raises:
        ValueError: The network has no such stage.
    """
    if stage not in channels:
        raise ValueError(
            f"stage {stage!r} is not a {which} stage; {which} stages: {', '.join(channels)}"
        )
    return int(channels[stage])
