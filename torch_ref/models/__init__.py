"""Network registry: the names and keyword arguments of ``irkd.zoo``, one file per family."""

from __future__ import annotations

from typing import Any

from irkd.zoo import MODELS, get_spec

from .dnanet import DNANet
from .unet import UNet

__all__ = ["DNANet", "UNet", "create_model", "list_models"]

_FAMILIES = {"dnanet": DNANet, "unet": UNet}


def create_model(name: str, **kwargs: Any) -> Any:
    """Build a registered network; ``kwargs`` override the registered keyword arguments."""
    spec = get_spec(name)
    return _FAMILIES[spec.family](**{**spec.kwargs, **kwargs})


def list_models() -> list[str]:
    """Registered network names, sorted."""
    return sorted(MODELS)
