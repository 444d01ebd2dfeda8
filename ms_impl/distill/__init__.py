"""Distillation (MindSpore side): the method (MSA + L2 + AWMSE), the baselines, the distiller.

Twin of ``torch_ref.distill``. The baselines (``.baselines``) are imported on first use by
``loss_class``, so importing this package does not depend on them.
"""

from .distiller import METHODS, Distiller, build_distiller, loss_class, stage_params, stage_stride
from .method import (
    MSA_AWMSE_DEFAULTS,
    Connector,
    MSAAWMSELoss,
    awmse,
    l2_map_normalize,
    l2_normalize,
    mask_to,
    msa_awmse_params,
    msa_map,
    plain_mse,
)

__all__ = [
    "METHODS",
    "MSA_AWMSE_DEFAULTS",
    "Connector",
    "Distiller",
    "MSAAWMSELoss",
    "awmse",
    "build_distiller",
    "l2_map_normalize",
    "l2_normalize",
    "loss_class",
    "mask_to",
    "msa_awmse_params",
    "msa_map",
    "plain_mse",
    "stage_params",
    "stage_stride",
]
