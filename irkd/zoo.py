"""The registered networks, framework-free: one table both backends build from.

``ms_impl.models`` and ``torch_ref.models`` register exactly these names with exactly these
keyword arguments, so a config or a weight file names the same network on both sides.

Stage features (returned by ``forward_features``) use one naming scheme for every family:

=======  ======================================  ========  =======
name     what                                    channels  stride
=======  ======================================  ========  =======
enc{i}   encoder stage i (i = 0..4)              widths[i] 2**i
dec{i}   decoder output at level i (i = 0..3)    widths[i] 2**i
=======  ======================================  ========  =======

For DNANet, ``enc{i}`` is node ``x{i}_0`` and ``dec0`` the fused full-resolution feature
(the input of the final head), ``dec1..dec3`` the last nested node of levels 1..3
(``x1_3``, ``x2_2``, ``x3_1``). With deep supervision the side logits of the nested
full-resolution nodes come as ``aux1..aux3`` in the same dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ModelSpec",
    "MODELS",
    "STAGES",
    "HEAD_PRIOR",
    "HEAD_BIAS",
    "stage_channels",
    "get_spec",
    "check_network",
    "FAMILY_KWARGS",
    "UnknownNetworkError",
]

#: Initial target probability of every output head: the heads' biases start at
#: ``log(p / (1 - p))`` (a RetinaNet-style prior). Targets cover well under 1% of an IRSTD
#: image; starting at p = 0.5 leaves SoftIoU with tiny gradients for hundreds of steps
#: (measured on the synthetic data: test IoU 1.8% -> 20% after 96 steps with the prior).
HEAD_PRIOR = 0.01
HEAD_BIAS = math.log(HEAD_PRIOR / (1.0 - HEAD_PRIOR))


@dataclass(frozen=True)
class ModelSpec:
    """One registered network.

    Attributes:
        name: Registry name.
        family: ``dnanet`` or ``unet`` (one model file per family on each side).
        kwargs: Constructor keyword arguments (the same on both sides).
        role: ``teacher`` or ``student`` (a hint for configs and reports).
        summary: One line for ``irkd models``.
    """

    name: str
    family: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    role: str = "student"
    summary: str = ""


STAGES = ("enc0", "enc1", "enc2", "enc3", "enc4", "dec0", "dec1", "dec2", "dec3")

_W16 = [16, 32, 64, 128, 256]
_W8 = [8, 16, 32, 64, 128]
_W4 = [4, 8, 16, 32, 64]

MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "dnanet",
            "dnanet",
            {"nb_filter": _W16, "num_blocks": [2, 2, 2, 2]},
            "teacher",
            "DNANet as published (BasicIRSTD figures: 4.70 M params, 14.26 G MACs)",
        ),
        ModelSpec(
            "dnanet_s",
            "dnanet",
            {"nb_filter": _W8, "num_blocks": [2, 2, 2, 2]},
            "student",
            "DNANet, half width",
        ),
        ModelSpec(
            "dnanet_xs",
            "dnanet",
            {"nb_filter": _W8, "num_blocks": [1, 1, 1, 1]},
            "student",
            "DNANet, half width, one block per level",
        ),
        ModelSpec(
            "dnanet_xxs",
            "dnanet",
            {"nb_filter": _W4, "num_blocks": [1, 1, 1, 1]},
            "student",
            "DNANet, quarter width, one block per level",
        ),
        ModelSpec(
            "unet",
            "unet",
            {"widths": _W16},
            "teacher",
            "plain U-Net (double 3x3 conv + BN)",
        ),
        ModelSpec(
            "unet_s",
            "unet",
            {"widths": _W8},
            "student",
            "plain U-Net, half width",
        ),
    ]
}


FAMILY_KWARGS: dict[str, tuple[str, ...]] = {
    "dnanet": ("nb_filter", "num_blocks", "in_channels", "num_classes", "deep_supervision"),
    "unet": ("widths", "in_channels", "num_classes"),
}
"""The constructor keyword arguments of each family, the same on both sides (a test compares
them with the PyTorch and MindSpore signatures)."""


class UnknownNetworkError(KeyError, ValueError):
    """An unregistered network name or a keyword argument its constructor does not take.

    A ``KeyError`` for lookups, a ``ValueError`` so that the CLI prints it as one line.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get_spec(name: str) -> ModelSpec:
    """Look up a registered network; the error lists the valid names.

    Raises:
        UnknownNetworkError: ``name`` is not registered.
    """
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise UnknownNetworkError(
            f"unknown network {name!r}; registered: {', '.join(sorted(MODELS))}"
        ) from None


def check_network(name: str, kwargs: dict[str, Any] | None = None, *, key: str = "") -> None:
    """Refuse an unregistered ``name`` or a keyword argument its constructor does not take.

    Args:
        name: Registry name.
        kwargs: Extra constructor keyword arguments.
        key: Config key named in the message (``model``, ``teacher``).

    Raises:
        UnknownNetworkError: Naming ``key``, the bad value and the valid choices.
    """
    where = (key if key.startswith("-") else f"{key}.name") + ": " if key else ""
    try:
        spec = get_spec(name)
    except UnknownNetworkError as exc:
        raise UnknownNetworkError(f"{where}{exc}") from None
    allowed = FAMILY_KWARGS[spec.family]
    bad = sorted(set(kwargs or {}) - set(allowed))
    if bad:
        where = f"{key}.kwargs.{bad[0]}: " if key else ""
        raise UnknownNetworkError(
            f"{where}{name} ({spec.family}) takes no keyword argument {bad[0]!r}; "
            f"it takes {', '.join(allowed)}"
        )


def stage_channels(name: str, **overrides: Any) -> dict[str, int]:
    """Channels of each stage feature of a registered network."""
    kw = {**get_spec(name).kwargs, **overrides}
    widths = kw["nb_filter"] if "nb_filter" in kw else kw["widths"]
    out = {f"enc{i}": int(widths[i]) for i in range(5)}
    out.update({f"dec{i}": int(widths[i]) for i in range(4)})
    return out
