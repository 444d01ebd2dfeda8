"""Inference helpers for PyTorch networks: load weights, predict a split, MSA maps.

- :func:`load_network` builds a registered network and loads neutral (``.safetensors``) or
  PyTorch (``.pt``/``.pth``) weights strictly. The network keyword arguments a training run
  stored in a neutral file's metadata (``deep_supervision`` for instance) are applied, so a
  ``best.safetensors`` loads with its name alone.
- :func:`forward_fn` turns a network into the numpy callable :func:`irkd.evaluate.predict_split`
  expects; :func:`predict_probs` yields ``(id, prob)`` for a split.
- :func:`teacher_msa_maps` computes the teacher's MSA attention maps for figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from irkd.config import MethodConfig
from irkd.data import IRSTDDataset
from irkd.evaluate import predict_split
from irkd.weights import WeightsError, extra_metadata, load_neutral, wrong_network
from torch_ref.models import Network, create_model
from torch_ref.weights import load_neutral_net, read_pt

__all__ = [
    "forward_fn",
    "load_network",
    "predict_probs",
    "read_weights",
    "teacher_msa_maps",
]


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a weights file as neutral arrays plus its metadata.

    Args:
        path: ``.safetensors`` (neutral) or ``.pt``/``.pth`` (a PyTorch state dict).

    Returns:
        ``(arrays, info)`` where ``info`` has ``network`` (or None) and the training run's
        ``extra`` metadata (``kwargs``, ``mean``, ``std``, ... where present).

    Raises:
        WeightsError: A missing, unreadable or unsupported file (``.ckpt`` files are
            MindSpore's: convert them with ``irkd weights convert`` first).
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file {p} not found")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        arrays, meta = load_neutral(p)
        info = dict(extra_metadata(meta))
        info.setdefault("network", meta.get("network"))
        return arrays, info
    if suffix in (".pt", ".pth"):
        arrays, _ = read_pt(p)
        return arrays, {"network": None}
    raise WeightsError(
        f"weights file {p}: unsupported suffix {p.suffix!r} for PyTorch (use .safetensors or "
        ".pt; convert a MindSpore .ckpt with `irkd weights convert SRC DST.safetensors "
        "--network NAME`)"
    )


def load_network(
    name: str | None, weights: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Network:
    """Build a registered network, load weights strictly, and put it in eval mode.

    Args:
        name: Registry name; None takes the name stored in a neutral file's metadata.
        weights: Weights file (neutral or ``.pt``), or None for fresh weights.
        **kwargs: Constructor overrides; they win over the kwargs stored in the file.

    Returns:
        The network (eval mode, CPU).

    Raises:
        WeightsError: A missing/extra/mis-shaped tensor, or an unreadable file; a file whose
            metadata names another network that does not fit says so in one line.
        ValueError: No network name given or stored.
    """
    arrays: Mapping[str, np.ndarray] | None = None
    stored: dict[str, Any] = {}
    other = None  # the network stored in the file, when it is not ``name``
    if weights is not None:
        arrays, info = read_weights(weights)
        if name is None:
            name = info.get("network")
        if info.get("network") in (None, name):
            stored = dict(info.get("kwargs") or {})
        else:  # its stored kwargs describe that other network
            other = str(info["network"])
    if name is None:
        raise ValueError(f"no network name given and none stored in {weights}: pass --network")
    net = create_model(name, **{**stored, **kwargs})
    if arrays is not None and weights is not None:  # arrays are read from weights
        try:
            load_neutral_net(net, arrays, network=f"{name} ({Path(weights).name})")
        except WeightsError:
            if other is None:
                raise
            raise wrong_network(weights, other, name) from None
    net.eval()
    return net


def forward_fn(net: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy -> numpy logits callable (eval mode, no gradient) for ``predict_split``."""
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = net(torch.from_numpy(np.ascontiguousarray(x)).to(device))
        return y.float().cpu().numpy()

    return forward


def predict_probs(
    net: nn.Module, dataset: IRSTDDataset, mean: float, std: float, multiple: int = 32
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(id, probability float32 (H, W))`` for each image of a split.

    Images are normalised, padded to ``multiple`` (pad value 0 in normalised units), the
    sigmoid of the logits is cropped back to the native size. The network is put in eval
    mode.
    """
    net.eval()
    for id_, prob, _ in predict_split(
        dataset, forward_fn(net), mean=mean, std=std, multiple=multiple
    ):
        yield id_, prob


def teacher_msa_maps(
    teacher: Network, method: Any, image: np.ndarray | torch.Tensor
) -> dict[str, np.ndarray]:
    """The teacher's MSA attention maps of one image, upsampled to the image size.

    Args:
        teacher: The teacher network.
        method: A :class:`~irkd.config.MethodConfig` (stages and MSA options), or a distiller
            with ``stages`` and ``attention_maps(t_feats)``.
        image: Normalised, padded input (1, 1, H, W) (numpy or tensor).

    Returns:
        Stage name -> float32 (H, W) map ``M`` (mean 1 at the stage's resolution, bilinear
        upsampled); stages that are not features (``logits``) are skipped.
    """
    from torch_ref.distill.method import msa_map

    x = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    param = next(teacher.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    teacher.eval()
    with torch.no_grad():
        _, feats = teacher.forward_features(x)
        if isinstance(method, MethodConfig):
            msa = method.msa
            maps = {
                s: msa_map(feats[s], msa.scales, msa.fusion, msa.tau, msa.eps)
                for s in method.stages
                if s in feats
            }
        else:
            maps = {s: m for s, m in method.attention_maps(feats).items() if s in feats}
        out = {}
        for stage, m in maps.items():
            up = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)
            out[stage] = up[0, 0].float().cpu().numpy()
    return out
