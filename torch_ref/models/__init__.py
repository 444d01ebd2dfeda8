"""Network registry: the names and keyword arguments of ``irkd.zoo``, one file per family."""

from __future__ import annotations

from typing import Any

from irkd.zoo import MODELS, get_spec

from .dnanet import DNANet
from .unet import UNet

__all__ = ["DNANet", "Network", "UNet", "create_model", "list_models"]

Network = DNANet | UNet
"""A registered network: what :func:`create_model` builds."""

_FAMILIES: dict[str, type[Network]] = {"dnanet": DNANet, "unet": UNet}


def create_model(name: str, **kwargs: Any) -> Network:
    """Build a registered network; ``kwargs`` override the registered keyword arguments."""
    spec = get_spec(name)
    return _FAMILIES[spec.family](**{**spec.kwargs, **kwargs})


def list_models() -> list[str]:
    """Registered network names, sorted."""
    return sorted(MODELS)
