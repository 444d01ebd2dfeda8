"""Parity cases of the method's components and of every loss (values 3 ways, gradients 2 ways).

Why this module is long: it is the table of every loss and method-component case, one small
builder per kind of case, all sharing the seeded inputs and the neutral weight files
described below.

Case names:

- ``method/msa/<input>``: the MSA map ``M`` (numpy oracle, MindSpore, PyTorch);
- ``method/l2/<input>``, ``method/l2_map/<input>``: L2 normalisation per pixel and per map,
  values and input gradient;
- ``method/awmse/<input>``: AWMSE on given features, map and region, values and gradient;
- ``method/connector/<train|eval>``: the connector's output and running statistics;
- ``method/ema/update``: the weight average of ``train.ema`` (``torch_ref.ema.ModelEma``,
  ``ms_impl.ema.ModelEma``) over every tensor of a :data:`EMA_NETWORK` state, weights and
  BatchNorm statistics, after :data:`EMA_STEPS`;
- ``loss/soft_iou/<input>``: SoftIoU with deep supervision (``task_loss``);
- ``loss/<method>/<input>[/graph]``: each distillation stage loss (``msa_awmse`` and the seven
  baselines) on the inputs below, in PyNative, and in GRAPH_MODE for a subset;
  ``loss/msa_awmse/<input>/<variant>[/graph]``: the method with ``l2_map``, ``l2-off``
  (``normalize``) and ``awmse-batch`` (``awmse_reduce: batch``).
- ``loss/msa_awmse_out/<input>[/<variant>][/graph]``: the output-map term of
  ``method.out_weight`` (``OutputMapLoss``) on its own, from teacher and student logits
  (``3 *`` the inputs' one-channel features), value and gradient of the student's logits;
- ``method/distiller/<input>/out[/graph]``: the msa_awmse distiller with one stage and
  ``out_weight`` :data:`OUT_WEIGHT` (``lam`` :data:`OUT_LAM`): the total and both terms
  against the oracle (connector, stage loss, output-map term), the gradients of the student's
  logits and of the connector's weights between the frameworks.

Inputs (seeded numpy): ``random`` (Gaussian features, a few small targets), ``hot-pixel`` (one
bright pixel in flat features, a one-pixel target), ``zeros`` (all-zero features: the eps
paths), ``tiny`` (features of norm ~3e-7, below the L2 eps, so the guard sets the value;
FGD's input gradient is not compared there, see ``_ILL_CONDITIONED_GRADS``; the output-map
term skips it, see ``_OUT_INPUTS``), ``nomask`` (no
target in any image; for ``msa_awmse`` the region from ``M > 1``), ``odd`` (7 x 9 spatial
size). Learnable loss weights (MGD's generation block, FGD's context
blocks) and the connector's weights come from one neutral safetensors file per module,
written once and loaded strictly into both frameworks; the oracle reads the same arrays.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from irkd.methods import BASELINE_DEFAULTS, MSA_AWMSE_DEFAULTS
from irkd.weights import load_neutral, save_neutral

from . import oracle
from .core import Case, Check, Context, compare

__all__ = [
    "EMA_DECAY",
    "EMA_NETWORK",
    "EMA_STEPS",
    "INPUTS",
    "LOSS_METHODS",
    "OUT_LAM",
    "OUT_WEIGHT",
    "loss_cases",
    "make_inputs",
]

LOSS_METHODS: tuple[str, ...] = ("msa_awmse", *BASELINE_DEFAULTS)
INPUTS: tuple[str, ...] = ("random", "hot-pixel", "zeros", "tiny", "nomask", "odd")
_GRAPH_INPUTS = ("random",)  # GRAPH_MODE compiles per shape: one input per method
_PAIR_MS_T = "mindspore~pytorch"
#: Network whose state ``method/ema/update`` averages (the cpu-bench student).
EMA_NETWORK = "dnanet_xxs"
#: Decay of ``method/ema/update``, and its steps: two of the warm-up, then one at the cap.
EMA_DECAY = 0.99
EMA_STEPS: tuple[int, ...] = (1, 2, 1000)
#: ``method.out_weight`` and ``method.lam`` of the ``method/distiller/*/out`` cases.
OUT_WEIGHT = 0.5
OUT_LAM = 0.7
# The output-map term's inputs: not "tiny", whose logits (~3e-7) make sigmoid maps flat at
# 0.5 to within float32 rounding, so that their MSA contrast (and M) is rounding noise.
_OUT_INPUTS = tuple(k for k in INPUTS if k != "tiny")
# The distiller's: not "zeros" either, where the connector's output is its BatchNorm shift,
# whose gradient through the L2 normalisation is 0 in exact arithmetic (rounding noise here).
_OUT_DISTILLER_INPUTS = tuple(k for k in _OUT_INPUTS if k != "zeros")
_OUT_VARIANTS: tuple[dict[str, Any], ...] = (
    {"on_student": True, "tag": "on-student"},
    {"msa": False, "tag": "msa-off"},
    {"awmse": False, "tag": "awmse-off"},
)

# Input gradients that float32 cannot define: FGD's attention term is sum |A(s) - A(t)| with
# A = H*W*softmax(...) ~ 1 + O(1e-7) on "tiny" features, so the sign of each difference (and the
# gradient) is float32 rounding noise in either framework. Values are still compared.
_ILL_CONDITIONED_GRADS: dict[tuple[str, str], str] = {
    ("fgd", "tiny"): "sign of |A_S(s) - A_S(t)| at the float32 rounding level",
}


def _seed(ctx: Context, *salt: str) -> np.random.Generator:
    return np.random.default_rng([ctx.seed, *(sum(map(ord, s)) for s in salt)])


def make_inputs(
    kind: str, rng: np.random.Generator, channels: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(t, s, mask, noise)`` float32 for an input kind (see the module docstring).

    ``mask`` has the features' spatial size (stage stride 1); ``noise`` is uniform [0, 1).
    """
    b = 2
    h, w = (7, 9) if kind == "odd" else (16, 16)
    shape = (b, channels, h, w)
    mask = np.zeros((b, 1, h, w), np.float32)
    if kind == "zeros":
        t = np.zeros(shape, np.float32)
        s = np.zeros(shape, np.float32)
        mask[0, 0, h // 2, w // 2] = 1.0
    elif kind == "hot-pixel":
        t = np.full(shape, 0.1, np.float32)
        s = (0.1 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
        y, x = int(rng.integers(1, h - 1)), int(rng.integers(1, w - 1))
        t[:, :, y, x] = 3.0
        mask[:, 0, y, x] = 1.0
    elif kind == "tiny":  # norms below the L2 eps (1e-6): the guard decides the value
        t = (1e-7 * rng.standard_normal(shape)).astype(np.float32)
        s = (1e-7 * rng.standard_normal(shape)).astype(np.float32)
        mask[0, 0, 2:4, 2:4] = 1.0
    else:
        t = rng.standard_normal(shape).astype(np.float32)
        s = rng.standard_normal(shape).astype(np.float32)
        if kind != "nomask":
            for i in range(b - 1):  # the last image has no target
                y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
                mask[i, 0, y : y + 2, x : x + 2] = 1.0
                t[i, :, y : y + 2, x : x + 2] += 2.0
    noise = rng.random((b, 1, h, w)).astype(np.float32)
    return t, s, mask, noise


# ----------------------------------------------------------------------------- framework glue


def _torch():
    import torch

    return torch


def _ms():
    import mindspore as ms

    import ms_impl  # noqa: F401  (oneDNN ISA before the first convolution)

    return ms


_Mode = Literal["graph", "pynative"]


def _set_mode(mode: _Mode) -> None:
    from ms_impl.runtime import set_mode

    set_mode(mode)


def _weights_file(ctx: Context, key: str, make: Callable[[], dict[str, np.ndarray]]) -> dict:
    """The arrays of one module, written once to a neutral file and read back (one source)."""
    cache = ctx.cache.setdefault("loss_weights", {})
    if key not in cache:
        folder = ctx.cache.get("tmp")
        if folder is None:
            folder = ctx.cache["tmp"] = tempfile.mkdtemp(prefix="irkd-parity-")
        arrays = make()
        if not arrays:  # a parameter-free loss
            cache[key] = {}
            return cache[key]
        path = Path(folder) / f"{len(cache):03d}.safetensors"
        save_neutral(path, arrays, source="parity")
        cache[key] = load_neutral(path)[0]
    return cache[key]


def _randomized_torch_state(module: Any, seed: int) -> dict[str, np.ndarray]:
    """Torch init under a seed, then BatchNorm/LayerNorm affine and stats moved off 1/0."""
    torch = _torch()
    from torch_ref.weights import net_to_neutral as state_to_neutral

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith(("running_var",)):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
            elif name.endswith(("running_mean", ".bias")) and buf.dim() == 1:
                buf.copy_(0.2 * torch.randn(buf.shape, generator=gen))
            elif buf.dim() == 1 and name.endswith(".weight"):
                buf.copy_(1.0 + 0.2 * torch.randn(buf.shape, generator=gen))
    return state_to_neutral(module)


def _build_pair(ctx: Context, method: str, t_channels: int, params: dict | None = None):
    """The torch and MindSpore stage losses of a method with the same weights, and the arrays."""
    torch = _torch()
    from ms_impl.distill.distiller import loss_class as ms_loss_class
    from ms_impl.weights import load_neutral_net as load_neutral_ms
    from torch_ref.distill.distiller import loss_class as t_loss_class
    from torch_ref.weights import load_neutral_net as load_neutral_torch

    torch.manual_seed(ctx.seed)
    tl = t_loss_class(method)(t_channels, params)
    key = f"{method}-c{t_channels}-{sorted((params or {}).items())}"
    arrays = _weights_file(ctx, key, lambda: _randomized_torch_state(tl, ctx.seed))
    ml = ms_loss_class(method)(t_channels, params)
    if arrays:
        load_neutral_torch(tl, arrays)
        load_neutral_ms(ml, arrays)
    return tl, ml, arrays


def _torch_value_grad(fn: Callable, inputs: list[np.ndarray], wrt: int, module: Any = None):
    torch = _torch()
    ts = [torch.tensor(a) for a in inputs]
    ts[wrt].requires_grad_(True)
    if module is not None:
        module.zero_grad(set_to_none=True)
    v = fn(*ts)
    v.backward()
    pgrads = {}
    if module is not None:
        pgrads = {
            n: p.grad.numpy().copy() for n, p in module.named_parameters() if p.grad is not None
        }
    return float(v.detach()), ts[wrt].grad.numpy().copy(), pgrads


def _ms_value_grad(
    fn: Any, inputs: list[np.ndarray], wrt: int, module: Any = None, mode: _Mode = "pynative"
):
    ms = _ms()
    args = [ms.Tensor(a) for a in inputs]
    params = module.trainable_params() if module is not None else None
    _set_mode(mode)
    try:
        if params:
            v, (g, pg) = ms.value_and_grad(fn, grad_position=wrt, weights=params)(*args)
            pgrads = {p.name: x.asnumpy() for p, x in zip(params, pg, strict=True)}
        else:
            v, g = ms.value_and_grad(fn, grad_position=wrt)(*args)
            pgrads = {}
    finally:
        _set_mode("pynative")
    return float(v.asnumpy()), g.asnumpy(), pgrads


def _three_way(case: str, what: str, ms_v: Any, t_v: Any, np_v: Any, family: str) -> list[Check]:
    return [
        compare(case, f"{what} pytorch~numpy", t_v, np_v, family),
        compare(case, f"{what} mindspore~numpy", ms_v, np_v, family),
        compare(case, f"{what} {_PAIR_MS_T}", ms_v, t_v, family),
    ]


# ----------------------------------------------------------------------------- method parts


def _msa_case(kind: str, variant: dict[str, Any]) -> Callable[[Context], list[Check]]:
    def run(ctx: Context) -> list[Check]:
        torch = _torch()
        ms = _ms()
        from ms_impl.distill import method as mm
        from torch_ref.distill import method as tm

        t, s, _, _ = make_inputs(kind, _seed(ctx, "msa", kind))
        kw = {k: variant[k] for k in ("scales", "fusion", "tau", "border") if k in variant}
        on_student = variant.get("on_student", False)
        want = oracle.msa_map(t, **kw, s=s if on_student else None)
        tt, ts = torch.tensor(t), torch.tensor(s)
        mt, msx = ms.Tensor(t), ms.Tensor(s)
        got_t = tm.msa_map(tt, **kw).numpy()
        got_m = mm.msa_map(mt, **kw).asnumpy()
        if on_student:
            got_t = np.maximum(got_t, tm.msa_map(ts, **kw).numpy())
            got_m = np.maximum(got_m, mm.msa_map(msx, **kw).asnumpy())
        name = f"method/msa/{kind}" + (f"/{variant['tag']}" if "tag" in variant else "")
        return _three_way(name, "M", got_m, got_t, want, "map")

    return run


def _l2_case(kind: str, fn: str = "l2_normalize") -> Callable[[Context], list[Check]]:
    tag = "l2" if fn == "l2_normalize" else "l2_map"

    def run(ctx: Context) -> list[Check]:
        from ms_impl.distill import method as mm
        from torch_ref.distill import method as tm

        name = f"method/{tag}/{kind}"
        x, _, _, _ = make_inputs(kind, _seed(ctx, tag, kind))
        w = _seed(ctx, f"{tag}w", kind).standard_normal(x.shape).astype(np.float32)
        t_fn, m_fn = getattr(tm, fn), getattr(mm, fn)
        want = getattr(oracle, fn)(x)
        tv = t_fn(_torch().tensor(x)).numpy()
        mv = m_fn(_ms().Tensor(x)).asnumpy()
        checks = _three_way(name, "x_hat", mv, tv, want, "map")
        _, gt, _ = _torch_value_grad(lambda a, b: (t_fn(a) * b).sum(), [x, w], 0)
        _, gm, _ = _ms_value_grad(lambda a, b: (m_fn(a) * b).sum(), [x, w], 0)
        checks.append(compare(name, f"grad x {_PAIR_MS_T}", gm, gt, "loss_grad"))
        return checks

    return run


def _awmse_case(kind: str) -> Callable[[Context], list[Check]]:
    def run(ctx: Context) -> list[Check]:
        from ms_impl.distill import method as mm
        from torch_ref.distill import method as tm

        name = f"method/awmse/{kind}"
        rng = _seed(ctx, "awmse", kind)
        t, s, mask, _ = make_inputs(kind, rng)
        t_hat, s_hat = oracle.l2_normalize(t), oracle.l2_normalize(s)
        t_hat, s_hat = t_hat.astype(np.float32), s_hat.astype(np.float32)
        m = oracle.msa_map(t).astype(np.float32)
        a, b = MSA_AWMSE_DEFAULTS["alpha"], MSA_AWMSE_DEFAULTS["beta"]
        want = oracle.awmse(t_hat, s_hat, m, mask, a, b)
        vt, gt, _ = _torch_value_grad(
            lambda x, y, z, r: tm.awmse(x, y, z, r, a, b), [t_hat, s_hat, m, mask], 1
        )
        vm, gm, _ = _ms_value_grad(
            lambda x, y, z, r: mm.awmse(x, y, z, r, a, b), [t_hat, s_hat, m, mask], 1
        )
        checks = _three_way(name, "value", vm, vt, want, "loss")
        checks.append(compare(name, f"grad s {_PAIR_MS_T}", gm, gt, "loss_grad"))
        return checks

    return run


def _connector_case(train: bool) -> Callable[[Context], list[Check]]:
    def run(ctx: Context) -> list[Check]:
        torch = _torch()
        ms = _ms()
        from ms_impl.distill.method import Connector as MSConnector
        from ms_impl.weights import load_neutral_net as load_neutral_ms
        from ms_impl.weights import net_to_neutral
        from torch_ref.distill.method import Connector as TConnector
        from torch_ref.weights import load_neutral_net as load_neutral_torch
        from torch_ref.weights import net_to_neutral as state_to_neutral

        name = f"method/connector/{'train' if train else 'eval'}"
        x = _seed(ctx, "conn").standard_normal((2, 4, 8, 8)).astype(np.float32)
        torch.manual_seed(ctx.seed)
        tc = TConnector(4, 8)
        arrays = _weights_file(ctx, "connector", lambda: _randomized_torch_state(tc, ctx.seed))
        mc = MSConnector(4, 8)
        load_neutral_torch(tc, arrays)
        load_neutral_ms(mc, arrays)
        tc.train(train)
        mc.set_train(train)
        with torch.no_grad():
            yt = tc(torch.tensor(x)).numpy()
        ym = mc(ms.Tensor(x)).asnumpy()
        y_np, stats = oracle.connector(x, arrays, train)
        checks = _three_way(name, "y", ym, yt, y_np, "forward")
        st, sm = state_to_neutral(tc), net_to_neutral(mc)
        for key in ("bn.running_mean", "bn.running_var"):
            checks += _three_way(name, key, sm[key], st[key], stats[key], "stats")
        return checks

    return run


def _ema_case(ctx: Context) -> list[Check]:
    """``method/ema/update``: the weight average after each of :data:`EMA_STEPS`.

    Both twins start from the same randomised state, then each step writes the same new
    weights (the previous ones plus seeded Gaussian noise, running variances kept positive)
    into both networks and updates both averages; the oracle applies the formula in float64.
    One check per step and pair, over every tensor of the state concatenated.
    """
    torch = _torch()
    _ms()
    from ms_impl.ema import ModelEma as MSModelEma
    from ms_impl.models import create_model as ms_create_model
    from ms_impl.weights import load_neutral_net as load_neutral_ms
    from torch_ref.ema import ModelEma
    from torch_ref.models import create_model
    from torch_ref.weights import load_neutral_net as load_neutral_torch

    name = "method/ema/update"
    torch.manual_seed(ctx.seed)
    tn = create_model(EMA_NETWORK)
    arrays = _weights_file(ctx, f"ema-{EMA_NETWORK}", lambda: _randomized_torch_state(tn, ctx.seed))
    mn = ms_create_model(EMA_NETWORK)
    load_neutral_torch(tn, arrays)
    load_neutral_ms(mn, arrays)
    te, me = ModelEma(tn, EMA_DECAY), MSModelEma(mn, EMA_DECAY)
    names = sorted(arrays)

    def flat(state: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.ravel(state[k]) for k in names])

    rng = _seed(ctx, "ema")
    weights, ref = dict(arrays), dict(arrays)
    checks: list[Check] = []
    for step in EMA_STEPS:
        weights = {
            k: (weights[k] + 0.05 * rng.standard_normal(weights[k].shape)).astype(np.float32)
            for k in names  # a fixed order of draws
        }
        weights = {k: np.abs(v) if k.endswith("running_var") else v for k, v in weights.items()}
        load_neutral_torch(tn, weights)
        load_neutral_ms(mn, weights)
        te.update(step)
        me.update(step)
        ref = oracle.ema_update(ref, weights, EMA_DECAY, step)
        checks += _three_way(
            name,
            f"average step {step}",
            flat(me.to_neutral()),
            flat(te.to_neutral()),
            flat(ref),
            "ema",
        )
    return checks


def _soft_iou_case(kind: str) -> Callable[[Context], list[Check]]:
    def run(ctx: Context) -> list[Check]:
        from ms_impl.losses import task_loss as ms_task
        from torch_ref.losses import task_loss as t_task

        name = f"loss/soft_iou/{kind}"
        rng = _seed(ctx, "iou", kind)
        _, _, mask, _ = make_inputs(kind, rng, channels=1)
        if kind == "zeros":
            logits = np.zeros(mask.shape, np.float32)
            aux = [np.zeros(mask.shape, np.float32)]
        else:
            logits = (2.0 * rng.standard_normal(mask.shape)).astype(np.float32)
            aux = [(2.0 * rng.standard_normal(mask.shape)).astype(np.float32) for _ in range(2)]
        want = oracle.task_loss(logits, aux, mask)
        n = len(aux)

        def t_fn(z, m, *a):
            return t_task(z, tuple(a), m)

        def m_fn(z, m, *a):
            return ms_task(z, tuple(a), m)

        vt, gt, _ = _torch_value_grad(t_fn, [logits, mask, *aux], 0)
        vm, gm, _ = _ms_value_grad(m_fn, [logits, mask, *aux], 0)
        checks = _three_way(name, f"task (logits + {n} aux)", vm, vt, want, "loss")
        checks.append(compare(name, f"grad logits {_PAIR_MS_T}", gm, gt, "loss_grad"))
        return checks

    return run


# ----------------------------------------------------------------------------- stage losses


def _stage_loss_case(
    method: str, kind: str, mode: _Mode, variant: Mapping[str, Any] | None = None
) -> Callable[[Context], list[Check]]:
    """One stage loss; ``variant``: extra loss parameters (``tag`` names the case)."""
    extra = {k: v for k, v in (variant or {}).items() if k != "tag"}
    tag = f"/{variant['tag']}" if variant else ""

    def run(ctx: Context) -> list[Check]:
        name = f"loss/{method}/{kind}{tag}" + ("/graph" if mode == "graph" else "")
        rng = _seed(ctx, "loss", method, kind)
        channels = 1 if method == "logit_kd" else 8
        t, s, mask, noise = make_inputs(kind, rng, channels)
        if method == "logit_kd":
            t, s = 3.0 * t, 3.0 * s  # logits, not features
        params: dict[str, Any] | None = dict(extra) if extra else None
        if method == "msa_awmse" and kind == "nomask":
            params = {**extra, "use_mask": False}  # R = [M > 1]
        tl, ml, arrays = _build_pair(ctx, method, channels, params)
        tl.train()
        ml.set_train(True)
        merged = (
            dict(MSA_AWMSE_DEFAULTS, **(params or {}))
            if method == "msa_awmse"
            else dict(BASELINE_DEFAULTS[method], **(params or {}))
        )
        want = oracle.ORACLE_LOSSES[method](t, s, mask, noise, merged, arrays or None)
        vt, gt, pt = _torch_value_grad(tl, [t, s, mask, noise], 1, module=tl)
        vm, gm, pm = _ms_value_grad(ml, [t, s, mask, noise], 1, module=ml, mode=mode)
        checks = _three_way(name, "value", vm, vt, want, "loss")
        if (method, kind) in _ILL_CONDITIONED_GRADS:
            return checks
        checks.append(compare(name, f"grad s {_PAIR_MS_T}", gm, gt, "loss_grad"))
        if pm:
            from ms_impl.weights import name_map

            nm = name_map(ml)
            for tname, g in sorted(pt.items()):
                checks.append(
                    compare(name, f"grad {tname} {_PAIR_MS_T}", pm[nm.to_ms(tname)], g, "loss_grad")
                )
        return checks

    return run


def _out_loss_case(
    kind: str, mode: _Mode, variant: Mapping[str, Any] | None = None
) -> Callable[[Context], list[Check]]:
    """The output-map term on its own; ``variant``: msa_awmse parameters (``tag`` names it)."""
    extra = {k: v for k, v in (variant or {}).items() if k != "tag"}
    tag = f"/{variant['tag']}" if variant else ""

    def run(ctx: Context) -> list[Check]:
        from ms_impl.distill.method import OutputMapLoss as MSOutputMapLoss
        from torch_ref.distill.method import OutputMapLoss as TOutputMapLoss

        name = f"loss/msa_awmse_out/{kind}{tag}" + ("/graph" if mode == "graph" else "")
        t, s, mask, _ = make_inputs(kind, _seed(ctx, "out", kind), channels=1)
        tz, sz = 3.0 * t, 3.0 * s  # logits
        params = dict(extra)
        if kind == "nomask":
            params["use_mask"] = False  # R = [M > 1]
        tl, ml = TOutputMapLoss(params), MSOutputMapLoss(params)
        want = oracle.out_map_loss(tz, sz, mask, params)
        vt, gt, _ = _torch_value_grad(tl, [tz, sz, mask], 1, module=tl)
        vm, gm, _ = _ms_value_grad(ml, [tz, sz, mask], 1, module=ml, mode=mode)
        checks = _three_way(name, "value", vm, vt, want, "loss")
        checks.append(compare(name, f"grad s_logits {_PAIR_MS_T}", gm, gt, "loss_grad"))
        return checks

    return run


def _out_distiller_case(kind: str, mode: _Mode) -> Callable[[Context], list[Check]]:
    """The msa_awmse distiller with ``out_weight``: total, terms and gradients."""

    def run(ctx: Context) -> list[Check]:
        torch = _torch()
        ms = _ms()
        from irkd.config import MethodConfig
        from irkd.methods import msa_awmse_params
        from ms_impl.distill.distiller import Distiller as MSDistiller
        from ms_impl.weights import load_neutral_net as load_neutral_ms
        from ms_impl.weights import name_map
        from torch_ref.distill.distiller import Distiller as TDistiller
        from torch_ref.weights import load_neutral_net as load_neutral_torch

        name = f"method/distiller/{kind}/out" + ("/graph" if mode == "graph" else "")
        t, s, mask, _ = make_inputs(kind, _seed(ctx, "distiller", kind))
        s = np.ascontiguousarray(s[:, :4])  # the student's stage has 4 channels
        tz = np.ascontiguousarray(3.0 * t[:, :1])  # logits: a bright target where t has one
        sz = np.ascontiguousarray(3.0 * s[:, :1])
        method = MethodConfig(
            stages=["dec0"], lam=OUT_LAM, out_weight=OUT_WEIGHT, use_mask=kind != "nomask"
        )
        t_ch, s_ch = {"dec0": 8}, {"dec0": 4}
        torch.manual_seed(ctx.seed)
        td = TDistiller(method, t_ch, s_ch)
        arrays = _weights_file(
            ctx, "distiller-dec0-c8-c4", lambda: _randomized_torch_state(td, ctx.seed)
        )
        md = MSDistiller(method, t_ch, s_ch)
        load_neutral_torch(td, arrays)
        load_neutral_ms(md, arrays)
        td.train()
        md.set_train(True)

        conn = {k[len("connectors.0.") :]: v for k, v in arrays.items()}
        y, _ = oracle.connector(s, conn, True)
        params = msa_awmse_params(method)
        want_stage = oracle.msa_awmse_loss(t, y, mask, params)
        want_out = oracle.out_map_loss(tz, sz, mask, params)
        want = oracle.msa_awmse_total([want_stage], [1.0], OUT_LAM, want_out, OUT_WEIGHT)

        tt = [torch.tensor(a) for a in (t, s, tz, sz, mask)]
        tt[3].requires_grad_(True)
        td.zero_grad(set_to_none=True)
        total_t, terms_t = td({"dec0": tt[0]}, {"dec0": tt[1]}, tt[2], tt[3], tt[4])
        total_t.backward()
        gt = tt[3].grad.numpy().copy()
        pt = {n: p.grad.numpy().copy() for n, p in td.named_parameters() if p.grad is not None}

        weights = md.trainable_params()

        def fwd(tf: Any, sf: Any, tl: Any, sl: Any, m: Any) -> tuple[Any, Any, Any]:
            total, terms = md({"dec0": tf}, {"dec0": sf}, tl, sl, m)
            return total, terms[0], terms[1]

        grad_fn = ms.value_and_grad(fwd, grad_position=3, weights=weights, has_aux=True)

        def step(tf: Any, sf: Any, tl: Any, sl: Any, m: Any) -> Any:
            return grad_fn(tf, sf, tl, sl, m)

        _set_mode(mode)
        try:
            call = ms.jit(step) if mode == "graph" else step
            out, (gm, pgm) = call(*[ms.Tensor(a) for a in (t, s, tz, sz, mask)])
        finally:
            _set_mode("pynative")
        total_m, stage_m, out_m = (float(v.asnumpy()) for v in out)
        checks = _three_way(name, "total", total_m, float(total_t.detach()), want, "loss")
        checks += _three_way(name, "dec0", stage_m, float(terms_t[0].detach()), want_stage, "loss")
        checks += _three_way(name, "out", out_m, float(terms_t[1].detach()), want_out, "loss")
        checks.append(compare(name, f"grad s_logits {_PAIR_MS_T}", gm.asnumpy(), gt, "loss_grad"))
        nm = name_map(md)
        pm = {p.name: g.asnumpy() for p, g in zip(weights, pgm, strict=True)}
        for tname, g in sorted(pt.items()):
            checks.append(
                compare(name, f"grad {tname} {_PAIR_MS_T}", pm[nm.to_ms(tname)], g, "loss_grad")
            )
        return checks

    return run


def loss_cases() -> list[Case]:
    """The method-component and loss rows of the case table, every one in the quick set."""
    cases: list[Case] = []
    msa_variants = [
        {},
        {"scales": (3,), "fusion": "max", "tau": 0.25, "tag": "k3-max-tau0.25"},
        {"on_student": True, "tag": "on-student"},
        {"border": 2, "tag": "border2"},
        {"border": 64, "tag": "border-all"},
    ]
    for kind in INPUTS:
        if kind == "nomask":
            continue
        for v in msa_variants:
            if "border" in v and kind == "hot-pixel":
                # The hot pixel may sit in the cleared band; the rest of the map is flat, so
                # its contrast is float32 rounding noise that the max normalisation blows up.
                continue
            tag = f"/{v['tag']}" if "tag" in v else ""
            cases.append(Case(f"method/msa/{kind}{tag}", "map", _msa_case(kind, v), True))
        cases.append(Case(f"method/l2/{kind}", "map", _l2_case(kind), True))
        cases.append(
            Case(
                f"method/l2_map/{kind}",
                "map",
                _l2_case(kind, "l2_map_normalize"),
                True,
            )
        )
        cases.append(Case(f"method/awmse/{kind}", "loss", _awmse_case(kind), True))
        cases.append(Case(f"loss/soft_iou/{kind}", "loss", _soft_iou_case(kind), True))
    for train in (True, False):
        cases.append(
            Case(
                f"method/connector/{'train' if train else 'eval'}",
                "forward",
                _connector_case(train),
                True,
            )
        )
    cases.append(Case("method/ema/update", "ema", _ema_case, True))
    # Each stage loss with its defaults, and the method with each normalisation option (the
    # L2-off ablation and the per-map L2): every input in PyNative, one in GRAPH_MODE.
    rows = [(m, None) for m in LOSS_METHODS] + [
        ("msa_awmse", {"normalize": "l2_map", "tag": "l2_map"}),
        ("msa_awmse", {"normalize": "none", "tag": "l2-off"}),
        ("msa_awmse", {"awmse_reduce": "batch", "tag": "awmse-batch"}),
    ]
    for method, variant in rows:
        tag = f"/{variant['tag']}" if variant else ""
        for kind in INPUTS:
            name = f"loss/{method}/{kind}{tag}"
            cases.append(
                Case(name, "loss", _stage_loss_case(method, kind, "pynative", variant), True)
            )
        for kind in _GRAPH_INPUTS:
            name = f"loss/{method}/{kind}{tag}/graph"
            cases.append(Case(name, "loss", _stage_loss_case(method, kind, "graph", variant), True))
    # The output-map term of method.out_weight: on its own (defaults on every input but
    # "tiny", the MSA and AWMSE options on one), and in the distiller with its total.
    out_rows: list[tuple[str, dict[str, Any] | None]] = [(k, None) for k in _OUT_INPUTS]
    out_rows += [("random", v) for v in _OUT_VARIANTS]
    for kind, variant in out_rows:
        tag = f"/{variant['tag']}" if variant else ""
        name = f"loss/msa_awmse_out/{kind}{tag}"
        cases.append(Case(name, "loss", _out_loss_case(kind, "pynative", variant), True))
    for kind in _GRAPH_INPUTS:
        name = f"loss/msa_awmse_out/{kind}/graph"
        cases.append(Case(name, "loss", _out_loss_case(kind, "graph"), True))
    for kind in _OUT_DISTILLER_INPUTS:
        name = f"method/distiller/{kind}/out"
        cases.append(Case(name, "loss", _out_distiller_case(kind, "pynative"), True))
    for kind in _GRAPH_INPUTS:
        name = f"method/distiller/{kind}/out/graph"
        cases.append(Case(name, "loss", _out_distiller_case(kind, "graph"), True))
    return cases
