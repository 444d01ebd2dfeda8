"""Parity cases of the networks: eval forward, train-mode BatchNorm, parameter gradients.

Why this module is long: its three kinds of case (eval, train-mode BatchNorm, gradients)
share the loading of both twins from one neutral file, the MindSpore mode handling and the
compiled-object keep-alive workaround described below.

For every registered network (:data:`irkd.zoo.MODELS`), or only the networks of a
``weights`` map (network name -> neutral ``.safetensors`` file, e.g. a run's
``best.safetensors``), both twins are loaded **strictly from one neutral file**
(:func:`torch_ref.predict.load_network`, :func:`ms_impl.predict.load_network`; the network
keyword arguments a run stored in the file's metadata are applied on both sides). Without a
file, :func:`random_neutral_weights` writes one: PyTorch's initialisation under
``torch.manual_seed(seed)``, BatchNorm affine parameters drawn at random, running statistics
calibrated on a seeded batch and then perturbed, so that eval mode is neither the identity
nor the batch statistics. It is written once per run into a temporary folder held in
``ctx.cache`` and shared by every case (and by :mod:`parity.cases_train`).

Cases (PyTorch is the reference of every comparison, ``mindspore~pytorch``):

``net/<network>/eval/<mode>``
    Eval mode, MindSpore in ``graph`` or ``pynative`` mode: the logits and every stage
    feature of ``forward_features`` (``logits``, ``enc0..enc4``, ``dec0..dec3``, and the side
    logits ``aux1..aux3`` of a deep-supervision network). Family ``forward``. In GRAPH_MODE
    the features leave the compiled graph as a tuple (DNANet's ``forward_features_tuple``).
``net/<network>/train-bn``
    One train-mode forward (batch statistics) from the loaded weights, in every MindSpore
    mode of ``ctx.ms_modes``: the logits (and, in PyNative, every stage feature), family
    ``forward``; then the running mean and variance of every BatchNorm, family ``stats``.
    In GRAPH_MODE the compiled graph outputs the logits only: a train-mode graph that
    outputs DNANet's feature dict hangs MindSpore 2.10's graph scheduler.
``net/<network>/grad``
    The loss value (family ``loss``) and the gradient of every parameter (family
    ``param_grad``, MindSpore names mapped to PyTorch's by :func:`ms_impl.weights.name_map`)
    of one training step with BatchNorm in eval mode: loss = the task loss
    (``task_loss(logits, aux, mask)``, SoftIoU) against a seeded random mask. MindSpore
    differentiates with ``ms.value_and_grad`` in every mode of ``ctx.ms_modes`` (``ms.jit``
    in GRAPH_MODE); the eval-mode gradient keeps a conv bias that feeds a BatchNorm a real
    (non-zero) gradient, so every element is comparable.

MindSpore is never left in another mode than it was found in
(:func:`ms_impl.runtime.context_mode`), and every
object a case hands to MindSpore's compiler is held for the life of the process
(:func:`keep_alive`, a workaround for MindSpore's ``id()``-keyed caches).

Inputs come from ``numpy.random.default_rng([ctx.seed, crc32(case name)])``: ``(2, 1, 32,
32)`` in the quick set (``ctx.quick``), ``(2, 1, 64, 64)`` otherwise. The quick set
(:data:`QUICK_NETWORKS`) is the smallest DNANet and the smaller U-Net.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from irkd.weights import extra_metadata, load_neutral
from irkd.zoo import MODELS

from .core import Case, Check, Context, compare

__all__ = [
    "AUX_NAMES",
    "FULL_SHAPE",
    "MS_MODES",
    "QUICK_NETWORKS",
    "QUICK_SHAPE",
    "case_rng",
    "describe_weights",
    "input_shape",
    "keep_alive",
    "network_cases",
    "neutral_weights",
    "random_mask",
    "random_neutral_weights",
    "scratch_dir",
    "stored_kwargs",
]

#: MindSpore execution modes a case may cover.
MS_MODES: tuple[str, ...] = ("graph", "pynative")
#: Networks whose cases are in the quick set (the smallest of each family).
QUICK_NETWORKS: tuple[str, ...] = ("dnanet_xxs", "unet_s")
#: Input shape (B, C, H, W) of the quick set and of the full set.
QUICK_SHAPE: tuple[int, int, int, int] = (2, 1, 32, 32)
FULL_SHAPE: tuple[int, int, int, int] = (2, 1, 64, 64)
#: Deep-supervision side logits in a feature dict.
AUX_NAMES: tuple[str, ...] = ("aux1", "aux2", "aux3")

_PAIR = "mindspore~pytorch"
_CACHE_DIR = "parity.scratch"
_CACHE_WEIGHTS = "parity.weights"


# --------------------------------------------------------------------------- shared helpers


def case_rng(ctx: Context, name: str) -> np.random.Generator:
    """The seeded generator of a case: ``default_rng([ctx.seed, crc32(name)])``."""
    return np.random.default_rng([int(ctx.seed), zlib.crc32(name.encode())])


def input_shape(ctx: Context) -> tuple[int, int, int, int]:
    """:data:`QUICK_SHAPE` when the quick set runs, else :data:`FULL_SHAPE`."""
    return QUICK_SHAPE if ctx.quick else FULL_SHAPE


def random_mask(rng: np.random.Generator, shape: Sequence[int], p: float = 0.03) -> np.ndarray:
    """A float32 {0, 1} mask with about ``p`` of the pixels set, at least one per image."""
    m = (rng.random(tuple(shape)) < p).astype(np.float32)
    for b in range(m.shape[0]):
        if not m[b].any():
            flat = m[b].reshape(-1)
            flat[rng.integers(flat.size)] = 1.0
    return m


def scratch_dir(ctx: Context) -> Path:
    """A temporary folder for the run's files, created once and kept in ``ctx.cache``.

    It is removed when the cache entry is dropped (the :class:`tempfile.TemporaryDirectory`
    object is finalised).
    """
    tmp = ctx.cache.get(_CACHE_DIR)
    if tmp is None:
        tmp = tempfile.TemporaryDirectory(prefix="irkd-parity-")
        ctx.cache[_CACHE_DIR] = tmp
    return Path(tmp.name)


def random_neutral_weights(
    network: str,
    path: str | Path,
    *,
    seed: int = 0,
    calib_shape: Sequence[int] = QUICK_SHAPE,
) -> Path:
    """Write seeded random weights of a registered network as a neutral file.

    PyTorch's default initialisation under ``torch.manual_seed(seed)``; then every
    BatchNorm's ``weight`` ~ U(0.5, 1.5) and ``bias`` ~ N(0, 0.2); its running statistics are
    set to the batch statistics of one train-mode forward of a seeded N(0, 1) batch of
    ``calib_shape`` (so that activations keep a sane scale through the network in eval mode)
    and then perturbed: ``mean += N(0, 0.2) * sqrt(var)``, ``var *= U(0.5, 2)``. Eval mode
    therefore differs from both the identity and the batch statistics.

    Args:
        network: Registry name.
        path: Destination ``.safetensors``.
        seed: Seed of the initialisation and of every draw.
        calib_shape: Shape of the calibration batch (H, W multiples of 16).

    Returns:
        The written path.
    """
    import torch
    from torch import nn

    from torch_ref.models import create_model
    from torch_ref.weights import save_neutral_net as save_neutral_torch

    torch.manual_seed(seed)
    model = create_model(network)
    rng = np.random.default_rng([int(seed), zlib.crc32(network.encode()), 1])
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def draw(fn: Callable[..., np.ndarray], like: torch.Tensor, *args: float) -> torch.Tensor:
        return torch.from_numpy(fn(*args, size=tuple(like.shape)).astype(np.float32))

    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(draw(rng.uniform, bn.weight, 0.5, 1.5))
            bn.bias.copy_(draw(rng.normal, bn.bias, 0.0, 0.2))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: after one batch, the batch statistics
        model.train()
        x = rng.standard_normal(tuple(calib_shape)).astype(np.float32)
        model(torch.from_numpy(x))
        for bn in bns:
            bn.momentum = 0.1
            assert bn.running_mean is not None and bn.running_var is not None
            std = bn.running_var.sqrt()
            bn.running_mean.add_(draw(rng.normal, bn.running_mean, 0.0, 0.2) * std)
            bn.running_var.mul_(draw(rng.uniform, bn.running_var, 0.5, 2.0))
    model.eval()
    meta = {"kwargs": {}, "parity": {"random": True, "seed": int(seed)}}
    return save_neutral_torch(model, Path(path), name=network, metadata=meta)


def neutral_weights(ctx: Context, network: str, path: str | Path | None = None) -> Path:
    """The neutral weights file of a network for this run.

    ``path``, else ``ctx.weights[network]``, else seeded random weights
    (:func:`random_neutral_weights` with ``ctx.seed``), written once into
    :func:`scratch_dir` and remembered in ``ctx.cache``.
    """
    if path is None and ctx.weights:
        path = ctx.weights.get(network)
    if path is not None:
        return Path(path)
    files: dict[str, Path] = ctx.cache.setdefault(_CACHE_WEIGHTS, {})
    if network not in files:
        dst = scratch_dir(ctx) / f"{network}-seed{ctx.seed}.safetensors"
        files[network] = random_neutral_weights(network, dst, seed=ctx.seed)
    return files[network]


def stored_kwargs(path: str | Path) -> dict[str, Any]:
    """The network keyword arguments a neutral file's metadata holds (``{}`` when none)."""
    _, meta = load_neutral(path)
    return dict(extra_metadata(meta).get("kwargs") or {})


def _ms_mode(mode: str) -> contextlib.AbstractContextManager[None]:
    """``ms_impl.runtime.context_mode`` (imported late: this module loads without MindSpore)."""
    from ms_impl.runtime import context_mode

    if mode not in MS_MODES:
        raise ValueError(f"MindSpore mode must be one of {MS_MODES}, got {mode!r}")
    return context_mode(mode)  # type: ignore[arg-type]


def _pair(mode: str | None = None) -> str:
    return f"mindspore[{mode}]~pytorch" if mode else _PAIR


# --------------------------------------------------------------------------- the twins


def _torch_net(network: str, path: Path) -> Any:
    from torch_ref.predict import load_network

    return load_network(network, path)


def _ms_net(network: str, path: Path) -> Any:
    from ms_impl.predict import load_network

    return load_network(network, path)


def _torch_features(net: Any, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import torch

    with torch.no_grad():
        logits, feats = net.forward_features(torch.from_numpy(x))
    return logits.numpy(), {k: v.numpy() for k, v in feats.items()}


@functools.cache
def _cells() -> SimpleNamespace:
    """The MindSpore cell classes of the cases, created once per process.

    Created lazily (importing this module does not import MindSpore) but only once: a class
    created per call could be freed and its ``id`` reused, see :func:`keep_alive`.
    """
    from mindspore import nn

    class FeatureOutputs(nn.Cell):
        """Compiles ``(logits, *feats[names])`` of a network (or its logits alone)."""

        def __init__(self, net: Any, names: tuple[str, ...], logits_only: bool) -> None:
            super().__init__(auto_prefix=False)
            self.net = net
            self.names = names
            self.logits_only = logits_only
            self.tuple_api = hasattr(net, "forward_features_tuple")

        def construct(self, x: Any) -> Any:
            if self.logits_only:
                return self.net(x)
            if self.tuple_api:
                return self.net.forward_features_tuple(x)
            logits, feats = self.net.forward_features(x)
            out = (logits,)
            for k in self.names:
                # graph-mode construct: the tuple grows in a loop, without annotations
                out = out + (feats[k],)  # type: ignore[assignment]
            return out

    class TaskLoss(nn.Cell):
        """``task_loss(logits, aux, mask)`` of a network (aux: deep-supervision heads)."""

        def __init__(self, net: Any, loss: Callable[..., Any]) -> None:
            super().__init__(auto_prefix=False)
            self.net = net
            self.loss = loss
            self.aux_keys = AUX_NAMES if getattr(net, "deep_supervision", False) else ()

        def construct(self, x: Any, mask: Any) -> Any:
            logits, feats = self.net.forward_features(x)
            aux = ()
            for k in self.aux_keys:
                # graph-mode construct: the tuple grows in a loop, without annotations
                aux = aux + (feats[k],)  # type: ignore[assignment]
            return self.loss(logits, aux, mask)

    return SimpleNamespace(FeatureOutputs=FeatureOutputs, TaskLoss=TaskLoss)


_KEEP: list[Any] = []


def keep_alive(*objs: Any) -> None:
    """Hold objects handed to MindSpore's compiler for the life of the process.

    A full run once failed with ``RuntimeError: Unsupported statement 'Import'`` while
    compiling a later case's gradient graph (GRAPH_MODE), and every later graph-mode
    gradient case of that process failed the same way; the same cases passed alone and in
    other runs. MindSpore 2.10 keys parts of its parse and compile caches on ``id()``
    (``mindspore/graph/_parse/parser.py`` ``get_obj_id``, the jit executor's key ids), so an
    object freed after one case and a new object given its address by the next can meet a
    stale entry. Holding every network, cell and function a case hands to the compiler keeps
    the ids unique (no recurrence since, over five full and quick runs). The cost is the
    memory of the networks of one run (the full set: about 30 networks, the largest
    ``dnanet`` and ``unet``, a few MB to 20 MB each).
    """
    _KEEP.extend(objs)


def _ms_features(
    net: Any, x: np.ndarray, mode: str, names: tuple[str, ...], *, logits_only: bool = False
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """MindSpore logits and features of ``x`` in ``mode`` (the network's train flag as set).

    Args:
        net: The MindSpore network (``set_train`` already chosen).
        x: Input batch.
        mode: ``graph`` (one compiled call) or ``pynative``.
        names: Feature names expected (the PyTorch side's, in order).
        logits_only: Return the logits alone (a train-mode GRAPH_MODE call).
    """
    import mindspore as ms

    xt = ms.Tensor(np.ascontiguousarray(x, dtype=np.float32))
    with _ms_mode(mode):
        if mode == "pynative":
            logits, feats = net.forward_features(xt)
            if logits_only:
                return logits.asnumpy(), {}
            return logits.asnumpy(), {k: v.asnumpy() for k, v in feats.items()}
        cell = _cells().FeatureOutputs(net, names, logits_only)
        cell.set_train(net.training)
        keep_alive(net, cell)
        out = cell(xt)
    if logits_only:
        return out.asnumpy(), {}
    if hasattr(net, "feature_names"):
        names = tuple(net.feature_names)
    return out[0].asnumpy(), {k: v.asnumpy() for k, v in zip(names, out[1:], strict=True)}


def _feature_checks(
    case: str,
    mode: str | None,
    ms_out: tuple[np.ndarray, dict[str, np.ndarray]],
    th_out: tuple[np.ndarray, dict[str, np.ndarray]],
    family: str = "forward",
) -> list[Check]:
    pair = _pair(mode)
    checks = [compare(case, f"logits {pair}", ms_out[0], th_out[0], family)]
    ms_feats, th_feats = ms_out[1], th_out[1]
    if not ms_feats:
        return checks
    if set(ms_feats) != set(th_feats):
        checks.append(
            Check(
                case,
                f"feature names {pair}",
                family,
                0.0,
                0.0,
                np.inf,
                np.inf,
                np.inf,
                False,
                error=f"MindSpore {sorted(ms_feats)} vs PyTorch {sorted(th_feats)}",
            )  # fmt: skip
        )
    for name, ref in th_feats.items():
        if name in ms_feats:
            checks.append(compare(case, f"{name} {pair}", ms_feats[name], ref, family))
    return checks


def _bn_stats_ms(net: Any) -> dict[str, np.ndarray]:
    from ms_impl.weights import net_to_neutral

    return {
        k: v for k, v in net_to_neutral(net).items() if k.endswith(("running_mean", "running_var"))
    }


def _bn_stats_torch(net: Any) -> dict[str, np.ndarray]:
    from torch_ref.weights import net_to_neutral as state_to_neutral

    return {
        k: v
        for k, v in state_to_neutral(net).items()
        if k.endswith(("running_mean", "running_var"))
    }


def _dict_checks(
    case: str,
    what: str,
    actual: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    family: str,
) -> list[Check]:
    """One check per name (``<name> <what>``); a name on one side only is a failed check."""
    checks = []
    for name in sorted(set(actual) | set(reference)):
        if name not in actual or name not in reference:
            side = "MindSpore" if name in actual else "PyTorch"
            checks.append(
                Check(
                    case,
                    f"{name} {what}",
                    family,
                    0.0,
                    0.0,
                    np.inf,
                    np.inf,
                    np.inf,
                    False,
                    error=f"only on the {side} side",
                )  # fmt: skip
            )
            continue
        checks.append(compare(case, f"{name} {what}", actual[name], reference[name], family))
    return checks


def _modes(ctx: Context, only: str | None = None) -> tuple[str, ...]:
    modes = tuple(m for m in ctx.ms_modes if m in MS_MODES)
    bad = [m for m in ctx.ms_modes if m not in MS_MODES]
    if bad:
        raise ValueError(f"unknown MindSpore modes {bad}; valid: {MS_MODES}")
    if only is not None:
        return (only,) if only in modes else ()
    if not modes:
        raise ValueError("ctx.ms_modes names no MindSpore mode")
    return modes


# --------------------------------------------------------------------------- the cases


def _eval_case(network: str, mode: str, path: str | None, ctx: Context) -> list[Check]:
    """``net/<network>/eval/<mode>``: eval-mode logits and stage features."""
    case = f"net/{network}/eval/{mode}"
    if not _modes(ctx, mode):
        raise ValueError(f"{case}: mode {mode!r} is not in ctx.ms_modes {ctx.ms_modes}")
    file = neutral_weights(ctx, network, path)
    x = case_rng(ctx, case).standard_normal(input_shape(ctx)).astype(np.float32)
    th_out = _torch_features(_torch_net(network, file), x)
    net = _ms_net(network, file)
    net.set_train(False)
    ms_out = _ms_features(net, x, mode, tuple(th_out[1]))
    return _feature_checks(case, None, ms_out, th_out)


def _train_bn_case(network: str, path: str | None, ctx: Context) -> list[Check]:
    """``net/<network>/train-bn``: one train-mode forward, then the BatchNorm statistics."""
    import torch

    case = f"net/{network}/train-bn"
    file = neutral_weights(ctx, network, path)
    x = case_rng(ctx, case).standard_normal(input_shape(ctx)).astype(np.float32)
    th = _torch_net(network, file)
    th.train()
    with torch.no_grad():
        logits, feats = th.forward_features(torch.from_numpy(x))
    th_out = (logits.numpy(), {k: v.numpy() for k, v in feats.items()})
    th_stats = _bn_stats_torch(th)
    checks: list[Check] = []
    for mode in _modes(ctx):
        net = _ms_net(network, file)
        net.set_train(True)
        graph = mode == "graph"
        ms_out = _ms_features(net, x, mode, tuple(th_out[1]), logits_only=graph)
        checks += _feature_checks(case, mode, ms_out, th_out)
        checks += _dict_checks(case, _pair(mode), _bn_stats_ms(net), th_stats, "stats")
    return checks


def _grad_case(network: str, path: str | None, ctx: Context) -> list[Check]:
    """``net/<network>/grad``: task-loss parameter gradients, BatchNorm in eval mode."""
    import mindspore as ms
    import torch

    from ms_impl.losses import task_loss as ms_task_loss
    from ms_impl.weights import name_map
    from torch_ref.losses import task_loss as th_task_loss

    case = f"net/{network}/grad"
    file = neutral_weights(ctx, network, path)
    rng = case_rng(ctx, case)
    shape = input_shape(ctx)
    x = rng.standard_normal(shape).astype(np.float32)
    m = random_mask(rng, (shape[0], 1, shape[2], shape[3]))

    th = _torch_net(network, file)
    th.eval()
    logits, feats = th.forward_features(torch.from_numpy(x))
    aux = tuple(feats[k] for k in AUX_NAMES if k in feats)
    loss = th_task_loss(logits, aux, torch.from_numpy(m))
    th.zero_grad(set_to_none=True)
    loss.backward()
    th_loss = float(loss.detach())
    th_grads = {
        n: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape), np.float32))
        for n, p in th.named_parameters()
    }

    checks: list[Check] = []
    for mode in _modes(ctx):
        net = _ms_net(network, file)
        net.set_train(False)
        params = net.trainable_params()
        loss_cell = _cells().TaskLoss(net, ms_task_loss)
        grad_fn = ms.value_and_grad(loss_cell, None, params)
        with _ms_mode(mode):
            fn = ms.jit(grad_fn) if mode == "graph" else grad_fn
            keep_alive(net, loss_cell, grad_fn, fn)
            value, grads = fn(ms.Tensor(x), ms.Tensor(m))
        nm = name_map(net)
        ms_grads = {nm.to_torch(p.name): g.asnumpy() for p, g in zip(params, grads, strict=True)}
        pair = _pair(mode)
        checks.append(compare(case, f"loss {pair}", float(value.asnumpy()), th_loss, "loss"))
        checks += _dict_checks(case, f"grad {pair}", ms_grads, th_grads, "param_grad")
    return checks


def network_cases(
    weights: Mapping[str, str] | None = None,
    *,
    ms_modes: Sequence[str] = MS_MODES,
) -> list[Case]:
    """The network cases of every registered network, or of the networks in ``weights``.

    Args:
        weights: Network name -> neutral weights file (e.g. a run's ``best.safetensors``);
            None: every registered network, with seeded random weights (or those of
            ``ctx.weights`` at run time).
        ms_modes: MindSpore modes that get an ``eval/<mode>`` case (pass ``ctx.ms_modes``;
            ``train-bn`` and ``grad`` cover the modes of ``ctx.ms_modes`` at run time).

    Returns:
        ``net/<n>/eval/<mode>`` (family ``forward``), ``net/<n>/train-bn`` (``stats``) and
        ``net/<n>/grad`` (``param_grad``) per network; the cases of
        :data:`QUICK_NETWORKS` are in the quick set.

    Raises:
        KeyError: A network of ``weights`` that is not registered.
        ValueError: An unknown MindSpore mode.
    """
    bad = [m for m in ms_modes if m not in MS_MODES]
    if bad:
        raise ValueError(f"unknown MindSpore modes {bad}; valid: {MS_MODES}")
    if weights is None:
        nets: dict[str, str | None] = dict.fromkeys(MODELS)
    else:
        unknown = sorted(set(weights) - set(MODELS))
        if unknown:
            raise KeyError(f"unregistered networks {unknown}; registered: {sorted(MODELS)}")
        nets = {n: str(p) for n, p in weights.items()}
    cases: list[Case] = []
    for n, path in nets.items():
        quick = n in QUICK_NETWORKS or weights is not None  # given weights: always checked
        for mode in ms_modes:
            cases.append(
                Case(f"net/{n}/eval/{mode}", "forward", partial(_eval_case, n, mode, path),
                     quick, (n,))
            )  # fmt: skip
        cases.append(
            Case(f"net/{n}/train-bn", "stats", partial(_train_bn_case, n, path), quick, (n,))
        )
        cases.append(Case(f"net/{n}/grad", "param_grad", partial(_grad_case, n, path), quick, (n,)))
    return cases


def describe_weights(ctx: Context, networks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{network: {"path", "sha256", "random"}}`` of the weights the cases used (report)."""
    from irkd.weights import sha256_file

    out: dict[str, dict[str, Any]] = {}
    for n in networks:
        p = neutral_weights(ctx, n)
        _, meta = load_neutral(p)
        extra = extra_metadata(meta)
        out[n] = {
            "path": str(p),
            "sha256": sha256_file(p),
            "random": bool((extra.get("parity") or {}).get("random", False)),
            "kwargs": json.loads(json.dumps(extra.get("kwargs") or {})),
        }
    return out
