"""Inference helpers for MindSpore networks: load weights, predict a split, MSA maps.

Twin of ``torch_ref.predict``:

- :func:`load_network` builds a registered network and loads neutral (``.safetensors``) or
  MindSpore (``.ckpt``) weights strictly. The network keyword arguments a training run stored
  in a neutral file's metadata (``deep_supervision`` for instance) are applied, so a
  ``best.safetensors`` loads with its name alone.
- :func:`forward_fn` turns a network into the numpy callable
  :func:`irkd.evaluate.predict_split` expects; :func:`predict_probs` yields ``(id, prob)`` for
  a split.
- :func:`teacher_msa_maps` computes the teacher's MSA attention maps for figures.

Execution mode (:func:`forward_fn`'s ``mode``): GRAPH_MODE compiles the network once per
input shape and then runs faster than PyNative (``docs/mindspore-notes.md``). That pays
off on a split of equal-sized images (NUDT-SIRST, the synthetic data), not on one of many
sizes (NUAA-SIRST). ``mode="auto"`` compiles the first few distinct shapes and runs any
further shape eagerly. The context mode is switched for the call and restored after; a
train step compiled before stays valid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from irkd.config import MethodConfig
from irkd.data import IRSTDDataset
from irkd.evaluate import predict_split
from irkd.weights import WeightsError, extra_metadata, load_neutral, wrong_network
from ms_impl.models import create_model
from ms_impl.runtime import context_mode
from ms_impl.weights import load_neutral_net, read_ckpt

__all__ = [
    "Mode",
    "forward_fn",
    "load_network",
    "load_weights",
    "predict_probs",
    "read_weights",
    "teacher_msa_maps",
]


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a neutral weights file as arrays plus its metadata.

    Args:
        path: ``.safetensors`` (neutral). A ``.ckpt`` needs the network to be read (its
            names are MindSpore's): use :func:`load_network`.

    Returns:
        ``(arrays, info)`` where ``info`` has ``network`` (or None) and the training run's
        ``extra`` metadata (``kwargs``, ``mean``, ``std``, ... where present).

    Raises:
        WeightsError: A missing, unreadable or unsupported file.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file {p} not found")
    if p.suffix.lower() != ".safetensors":
        raise WeightsError(
            f"weights file {p}: read_weights takes .safetensors; a .ckpt is read by "
            "load_network (it needs the network)"
        )
    arrays, meta = load_neutral(p)
    info = dict(extra_metadata(meta))
    info.setdefault("network", meta.get("network"))
    return arrays, info


def load_weights(
    net: nn.Cell, weights: str | os.PathLike[str], *, network: str | None = None
) -> dict[str, Any]:
    """Load a weights file into an existing network, strictly.

    Args:
        net: The network to fill.
        weights: Neutral ``.safetensors`` or MindSpore ``.ckpt`` (optimizer entries in a
            ``.ckpt`` are ignored).
        network: Name used in error messages.

    Returns:
        The neutral file's ``extra`` metadata plus ``network`` (empty for a ``.ckpt``).

    Raises:
        WeightsError: A missing/extra/mis-shaped tensor, or an unreadable or unsupported file.
    """
    p = Path(weights)
    label = f"{network or type(net).__name__} ({p.name})"
    suffix = p.suffix.lower()
    if suffix == ".ckpt":
        arrays, _ = read_ckpt(p, net, network=label)
        info: dict[str, Any] = {}
    elif suffix == ".safetensors":
        arrays, info = read_weights(p)
    else:
        raise WeightsError(
            f"weights file {p}: unsupported suffix {p.suffix!r} for MindSpore (use "
            ".safetensors or .ckpt; convert a PyTorch .pt with `irkd weights convert SRC "
            "DST.safetensors --network NAME`)"
        )
    load_neutral_net(net, arrays, network=label)
    return info


def load_network(
    name: str | None, weights: str | os.PathLike[str] | None = None, **kwargs: Any
) -> nn.Cell:
    """Build a registered network, load weights strictly, and put it in eval mode.

    Args:
        name: Registry name; None takes the name stored in a neutral file's metadata.
        weights: Weights file (neutral ``.safetensors`` or MindSpore ``.ckpt``; a ``.ckpt``
            may also hold optimizer entries, which are ignored), or None for fresh weights.
        **kwargs: Constructor overrides; they win over the kwargs stored in the file.

    Returns:
        The network (``set_train(False)``).

    Raises:
        WeightsError: A missing/extra/mis-shaped tensor, or an unreadable or unsupported file;
            a file whose metadata names another network that does not fit says so in one line.
        ValueError: No network name given or stored.
    """
    stored: dict[str, Any] = {}
    arrays: Mapping[str, np.ndarray] | None = None
    other = None  # the network stored in the file, when it is not ``name``
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise WeightsError(f"weights file {p} not found")
        if p.suffix.lower() == ".safetensors":
            arrays, info = read_weights(p)
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
    elif weights is not None:
        load_weights(net, weights, network=name)
    net.set_train(False)
    return net


Mode = Literal["graph", "pynative", "auto"]


def forward_fn(
    net: nn.Cell, *, mode: Mode | None = None, max_shapes: int = 4
) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy -> numpy logits callable (eval mode) for ``irkd.evaluate.predict_split``.

    Args:
        net: The network; it is put in eval mode at each call.
        mode: Execution mode of each call: ``graph`` (compiled once per input shape),
            ``pynative`` (eager), ``auto`` (compiled for the first ``max_shapes`` distinct
            shapes this callable sees, eager for any further shape: a split of equal-sized
            images runs compiled, one of many sizes does not pay a compilation per size), or
            None (the current context mode).
        max_shapes: Shapes compiled in ``auto`` mode.
    """
    if mode not in (None, "graph", "pynative", "auto"):
        raise ValueError(f"mode must be 'graph', 'pynative', 'auto' or None, got {mode!r}")
    compiled: set[tuple[int, ...]] = set()

    def forward(x: np.ndarray) -> np.ndarray:
        net.set_train(False)
        run_mode: Literal["graph", "pynative"] | None
        if mode == "auto":
            shape = tuple(int(d) for d in x.shape)
            if shape in compiled or len(compiled) < max_shapes:
                compiled.add(shape)
                run_mode = "graph"
            else:
                run_mode = "pynative"
        else:
            run_mode = mode
        with context_mode(run_mode):
            out = net(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        return out.asnumpy()

    return forward


def predict_probs(
    net: nn.Cell,
    dataset: IRSTDDataset,
    mean: float,
    std: float,
    multiple: int = 32,
    *,
    mode: Mode | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(id, probability float32 (H, W))`` for each image of a split.

    Images are normalised, padded to ``multiple`` (pad value 0 in normalised units), the
    sigmoid of the logits is cropped back to the native size. The network is put in eval
    mode.
    """
    net.set_train(False)
    for id_, prob, _ in predict_split(
        dataset, forward_fn(net, mode=mode), mean=mean, std=std, multiple=multiple
    ):
        yield id_, prob


def teacher_msa_maps(teacher: nn.Cell, method: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """The teacher's MSA attention maps of one image, upsampled to the image size.

    Runs eagerly (PYNATIVE_MODE for the call), like the PyTorch twin.

    Args:
        teacher: The teacher network.
        method: A :class:`~irkd.config.MethodConfig` (stages and MSA options), or a distiller
            with ``stages`` and ``attention_maps(t_feats)``.
        image: Normalised, padded input (1, 1, H, W) (numpy or tensor).

    Returns:
        Stage name -> float32 (H, W) map ``M`` (mean 1 at the stage's resolution, bilinear
        upsampled, ``align_corners=False``); stages that are not features (``logits``) are
        skipped.
    """
    from ms_impl.distill.method import msa_map

    x = image if isinstance(image, ms.Tensor) else ms.Tensor(np.ascontiguousarray(image))
    x = ops.cast(x, ms.float32)
    teacher.set_train(False)
    with context_mode("pynative"):
        _, feats = teacher.forward_features(x)
        if isinstance(method, MethodConfig):
            msa = method.msa
            maps = {
                s: msa_map(feats[s], tuple(msa.scales), msa.fusion, msa.tau, msa.eps)
                for s in method.stages
                if s in feats
            }
        else:
            maps = {s: m for s, m in method.attention_maps(feats).items() if s in feats}
        out = {}
        for stage, m in maps.items():
            up = ops.interpolate(
                m, size=(int(x.shape[-2]), int(x.shape[-1])), mode="bilinear", align_corners=False
            )
            out[stage] = up.asnumpy()[0, 0].astype(np.float32)
    return out
