"""Baseline distillation losses, both frameworks (torch_ref and ms_impl ``distill.baselines``).

Checked for every baseline: the value against the float64 numpy oracle of the parity suite
(``parity.oracle.ORACLE_LOSSES``, one oracle for the tests and the suite); values and
gradients (w.r.t. ``s``, and w.r.t. the trainable weights of MGD and
FGD, copied by name from PyTorch to MindSpore) across frameworks, with MindSpore in GRAPH_MODE
inside ``mindspore.value_and_grad``, on random, one-hot-pixel and all-zero features and with
a mask holding targets or none; zero loss (and gradient) at ``s == t`` where the definition
implies it; a few SGD steps on ``s`` lower the loss on both sides, along the same path; MGD's
use of the noise; parameter validation.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn as msnn

import ms_impl  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before MindSpore's first conv)
from ms_impl.distill import baselines as mb
from ms_impl.runtime import set_mode
from parity.cases_loss import LOSS_METHODS
from parity.oracle import ORACLE_LOSSES
from torch_ref.distill import baselines as tb

# The baselines of the parity case table (its loss rows), each checked here against the oracle.
NAMES = tuple(m for m in LOSS_METHODS if m != "msa_awmse")
CLASSES = {
    "fitnet": "FitNetLoss",
    "at": "ATLoss",
    "cwd": "CWDLoss",
    "pkd": "PKDLoss",
    "mgd": "MGDLoss",
    "fgd": "FGDLoss",
    "logit_kd": "LogitKDLoss",
}
TRAINABLE = ("mgd", "fgd")
# Where s == t gives a zero loss (MGD regenerates t from a masked s through a random block).
ZERO_AT_MATCH = ("fitnet", "at", "cwd", "pkd", "fgd", "logit_kd")

B, C, H, W = 2, 6, 8, 8
H_IN = W_IN = 32  # mask resolution: stage stride 4
LN_RENAME = {"weight": "gamma", "bias": "beta"}  # LayerNorm leaves, PyTorch -> MindSpore

# Tolerances (float32 both sides).
VALUE_RTOL, VALUE_ATOL = 1e-5, 1e-7  # cross-framework value
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-8  # cross-framework gradient: max |diff| <= rtol max |g| + atol
ORACLE_RTOL, ORACLE_ATOL = 1e-4, 1e-6  # float32 implementation vs float64 numpy oracle


@pytest.fixture(autouse=True, scope="module")
def _graph_mode():
    set_mode("graph")
    yield
    set_mode("pynative")


# ---------------------------------------------------------------- inputs


def _shape(name: str) -> tuple[int, int, int, int]:
    return (B, 1, H_IN, W_IN) if name == "logit_kd" else (B, C, H, W)


def _features(name: str, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(t, s) float32 of the baseline's shape: ``random``, ``onehot`` or ``zeros``."""
    shape = _shape(name)
    rng = np.random.default_rng(seed)
    t = rng.standard_normal(shape).astype(np.float32)
    if kind == "random":
        s = rng.standard_normal(shape).astype(np.float32)
    elif kind == "onehot":
        s = np.zeros(shape, np.float32)
        s[0, shape[1] // 2, 3, 4] = 3.0
    elif kind == "zeros":
        t = np.zeros(shape, np.float32)
        s = np.zeros(shape, np.float32)
    else:  # pragma: no cover
        raise ValueError(kind)
    return t, s


def _mask(kind: str) -> np.ndarray:
    """GT mask (B, 1, H_IN, W_IN): ``target`` (a blob in image 0, one pixel in image 1,
    straddling pooling cells) or ``empty``."""
    m = np.zeros((B, 1, H_IN, W_IN), np.float32)
    if kind == "target":
        m[0, 0, 10:15, 5:9] = 1.0
        m[1, 0, 21, 30] = 1.0
    return m


def _noise(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((B, 1, H, W)).astype(np.float32)


def _randomize(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial trainable weights (FGD's zero-initialised last convs included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


def _ms_name(name: str) -> str:
    module, _, leaf = name.rpartition(".")
    if module.startswith("channel_add_conv_") and module.endswith(".1"):
        return f"{module}.{LN_RENAME[leaf]}"
    return name


def _copy_torch_to_ms(tnet: torch.nn.Module, mnet: msnn.Cell) -> None:
    params = {p.name: p for p in mnet.get_parameters()}
    state = tnet.state_dict()
    names = {k: _ms_name(k) for k in state}
    assert set(names.values()) == set(params), set(names.values()) ^ set(params)
    for tname, mname in names.items():
        assert tuple(params[mname].shape) == tuple(state[tname].shape), tname
        params[mname].set_data(ms.Tensor(state[tname].detach().numpy().copy()))


def _pair(name: str, params: dict | None = None, seed: int | None = 0):
    """A (torch, MindSpore) pair of losses with the same weights (randomised when seeded)."""
    ch = 1 if name == "logit_kd" else C
    tl = getattr(tb, CLASSES[name])(ch, params or {})
    ml = getattr(mb, CLASSES[name])(ch, params or {})
    if name in TRAINABLE:
        if seed is not None:
            _randomize(tl, seed)
        _copy_torch_to_ms(tl, ml)
    return tl, ml


_CACHE: dict[str, tuple] = {}


def _cached(name: str):
    """One pair and one compiled MindSpore ``value_and_grad`` per baseline (compile once)."""
    if name not in _CACHE:
        tl, ml = _pair(name)
        weights = ml.trainable_params() if name in TRAINABLE else None
        fn = ms.value_and_grad(ml, grad_position=(0, 1), weights=weights)
        _CACHE[name] = (tl, ml, fn)
    return _CACHE[name]


def _run_torch(tl, t, s, mask, noise):
    tt = torch.tensor(t, requires_grad=True)
    st = torch.tensor(s, requires_grad=True)
    tl.zero_grad()
    v = tl(tt, st, torch.tensor(mask), torch.tensor(noise))
    v.backward()
    wgrads = {n: p.grad.numpy().copy() for n, p in tl.named_parameters()}
    gt = None if tt.grad is None else tt.grad.numpy()
    return float(v.detach()), gt, st.grad.numpy(), wgrads


def _run_ms(name, t, s, mask, noise):
    _, ml, fn = _cached(name)
    args = [ms.Tensor(a) for a in (t, s, mask, noise)]
    if name in TRAINABLE:
        v, ((gt, gs), wg) = fn(*args)
        wgrads = {p.name: g.asnumpy() for p, g in zip(ml.trainable_params(), wg, strict=True)}
    else:
        v, (gt, gs) = fn(*args)
        wgrads = {}
    return float(v.asnumpy()), gt.asnumpy(), gs.asnumpy(), wgrads


def _close_grad(a: np.ndarray, b: np.ndarray, what: str) -> float:
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)), what
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    assert diff <= GRAD_RTOL * scale + GRAD_ATOL, f"{what}: max diff {diff:.3g}, scale {scale:.3g}"
    return diff


# ---------------------------------------------------------------- tests


def test_defaults_identical_and_complete():
    assert tb.BASELINE_DEFAULTS == mb.BASELINE_DEFAULTS
    assert set(tb.BASELINE_DEFAULTS) == set(NAMES) == set(CLASSES)
    assert set(ORACLE_LOSSES) == {"msa_awmse", *NAMES}  # every baseline has its oracle
    for name, params in tb.BASELINE_DEFAULTS.items():
        assert params, name
        assert all(isinstance(v, float) for v in params.values()), name
        assert tb.resolve_params(name, {}) == params


@pytest.mark.parametrize("side", [tb, mb], ids=["torch", "ms"])
@pytest.mark.parametrize("name", NAMES)
def test_unknown_and_bad_params_raise(side, name):
    cls = getattr(side, CLASSES[name])
    valid = sorted(side.BASELINE_DEFAULTS[name])
    with pytest.raises(ValueError, match="bogus") as err:
        cls(4, {"bogus": 1.0})
    for key in valid:
        assert key in str(err.value)
    key = valid[0]
    with pytest.raises(ValueError, match=key):
        cls(4, {key: "big"})
    with pytest.raises(ValueError, match=key):
        cls(4, {key: -1.0})
    with pytest.raises(ValueError, match="t_channels"):
        cls(0, {})
    # overrides and fully merged dicts are both accepted
    cls(4, {key: 0.5})
    cls(4, dict(side.BASELINE_DEFAULTS[name]))


@pytest.mark.parametrize("side", [tb, mb], ids=["torch", "ms"])
def test_range_checks(side):
    with pytest.raises(ValueError, match="lambda_mgd"):
        side.MGDLoss(4, {"lambda_mgd": 1.5})
    with pytest.raises(ValueError, match="tau"):
        side.CWDLoss(4, {"tau": 0.0})
    with pytest.raises(ValueError, match="temp"):
        side.FGDLoss(4, {"temp": 0})
    with pytest.raises(ValueError, match="unknown baseline"):
        side.resolve_params("nope", {})
    assert side.CWDLoss(4, {"tau": 2}).tau == 2.0


def test_trainable_names_match():
    for name in TRAINABLE:
        tl, ml = _pair(name, seed=None)
        ms_names = {p.name for p in ml.trainable_params()}
        assert {_ms_name(k) for k, _ in tl.named_parameters()} == ms_names
    tl, _ = _pair("mgd", seed=None)
    assert isinstance(tl.generation, torch.nn.Sequential)
    _, ml = _pair("mgd", seed=None)
    assert isinstance(ml.generation, msnn.SequentialCell)


@pytest.mark.parametrize("mask_kind", ["target", "empty"])
@pytest.mark.parametrize("feat", ["random", "onehot", "zeros"])
@pytest.mark.parametrize("name", NAMES)
def test_parity_value_and_grad(name, feat, mask_kind):
    """Same inputs (and weights): same value, same gradients, both match the numpy oracle."""
    tl, _, _ = _cached(name)
    t, s = _features(name, feat)
    mask, noise = _mask(mask_kind), _noise()
    vt, gt_t, gs_t, wg_t = _run_torch(tl, t, s, mask, noise)
    vm, gt_m, gs_m, wg_m = _run_ms(name, t, s, mask, noise)

    assert np.isfinite(vt) and np.isfinite(vm)
    assert vt >= -1e-6  # every baseline is a divergence or a sum of squares
    assert abs(vt - vm) <= VALUE_RTOL * abs(vt) + VALUE_ATOL, (vt, vm)
    weights = {k: v.detach().numpy().astype(np.float64) for k, v in tl.state_dict().items()}
    ref = ORACLE_LOSSES[name](t, s, mask, noise, tb.BASELINE_DEFAULTS[name], weights or None)
    assert abs(vt - ref) <= ORACLE_RTOL * abs(ref) + ORACLE_ATOL, (vt, ref)

    _close_grad(gs_m, gs_t, f"{name} d/ds")
    assert gt_t is None  # the teacher is a constant target
    assert not np.any(gt_m)
    assert set(wg_m) == {_ms_name(k) for k in wg_t}
    for k, g in wg_t.items():
        _close_grad(wg_m[_ms_name(k)], g, f"{name} d/d{k}")
    if feat == "random":
        assert np.abs(gs_t).max() > 0


@pytest.mark.parametrize("name", ZERO_AT_MATCH)
def test_zero_when_student_matches(name):
    """s == t: zero loss and zero gradient (FGD with its published initialisation)."""
    t, _ = _features(name, "random")
    mask, noise = _mask("target"), _noise()
    tl, ml = _pair(name, seed=None)  # FGD: last GcBlock convs zero, both paths the identity
    vt, _, gs_t, _ = _run_torch(tl, t, t.copy(), mask, noise)
    fn = ms.value_and_grad(ml, grad_position=1)
    vm, gs_m = fn(*(ms.Tensor(a) for a in (t, t.copy(), mask, noise)))
    assert abs(vt) <= 1e-6 and abs(float(vm.asnumpy())) <= 1e-6, (vt, vm)
    assert np.abs(gs_t).max() <= 1e-6 and np.abs(gs_m.asnumpy()).max() <= 1e-6


def _lr(name: str, tl, t, s0, mask, noise) -> float:
    """A step size of 0.2 L / |grad L|^2 at the start (a fifth of Polyak's step)."""
    v, _, g, _ = _run_torch(tl, t, s0, mask, noise)
    return 0.2 * v / float((g.astype(np.float64) ** 2).sum())


class _Holder(msnn.Cell):
    """The student feature as a Parameter, fed to a loss."""

    def __init__(self, loss: msnn.Cell, s0: np.ndarray) -> None:
        super().__init__()
        self.loss = loss
        self.s = ms.Parameter(ms.Tensor(s0), name="s")

    def construct(self, t, mask, noise):
        return self.loss(t, self.s, mask, noise)


# Fast: FitNet (the plainest) and MGD (learnable weights, noise); the others are slow (each
# PyNative step costs), their values and gradients on both sides being
# test_parity_value_and_grad's.
SGD_FAST = ("fitnet", "mgd")


@pytest.mark.parametrize(
    "name", [n if n in SGD_FAST else pytest.param(n, marks=pytest.mark.slow) for n in NAMES]
)
def test_sgd_on_student_lowers_loss(name):
    """Five SGD steps on s (a Parameter) toward a fixed t lower the loss on both sides, and
    both frameworks follow the same path."""
    steps = 5
    t, s0 = _features(name, "random", seed=3)
    mask, noise = _mask("target"), _noise()
    tl, ml = _pair(name, seed=4)
    lr = _lr(name, tl, t, s0, mask, noise)

    s_t = torch.nn.Parameter(torch.tensor(s0))
    opt_t = torch.optim.SGD([s_t], lr=lr)
    args_t = [torch.tensor(a) for a in (t, mask, noise)]
    hist_t = []
    for _ in range(steps + 1):
        opt_t.zero_grad()
        v = tl(args_t[0], s_t, args_t[1], args_t[2])
        hist_t.append(float(v.detach()))
        v.backward()
        opt_t.step()

    holder = _Holder(ml, s0)
    opt_m = msnn.SGD([holder.s], learning_rate=lr)
    fn = ms.value_and_grad(holder, None, weights=[holder.s])
    args_m = [ms.Tensor(a) for a in (t, mask, noise)]
    hist_m = []
    for _ in range(steps + 1):
        v, grads = fn(*args_m)
        hist_m.append(float(v.asnumpy()))
        opt_m(grads)

    assert all(b < a for a, b in zip(hist_t, hist_t[1:], strict=False)), hist_t
    assert all(b < a for a, b in zip(hist_m, hist_m[1:], strict=False)), hist_m
    np.testing.assert_allclose(hist_m, hist_t, rtol=1e-4, atol=1e-8)


def test_mgd_uses_the_noise():
    name = "mgd"
    tl, _, _ = _cached(name)
    t, s = _features(name, "random")
    mask = _mask("target")
    n1, n2 = _noise(1), _noise(2)
    v1t, *_ = _run_torch(tl, t, s, mask, n1)
    v1m, *_ = _run_ms(name, t, s, mask, n1)
    v2t, *_ = _run_torch(tl, t, s, mask, n2)
    v2m, *_ = _run_ms(name, t, s, mask, n2)
    assert abs(v1t - v2t) > 1e-3 * abs(v1t)
    assert abs(v1m - v2m) > 1e-3 * abs(v1m)
    assert abs(v1t - v1m) <= VALUE_RTOL * abs(v1t) and abs(v2t - v2m) <= VALUE_RTOL * abs(v2t)
    again, *_ = _run_ms(name, t, s, mask, n1)
    assert again == v1m  # same noise, same value
    # noise below lambda everywhere masks every pixel: G(0) no longer depends on s
    _, _, gs_t, _ = _run_torch(tl, t, s, mask, np.zeros_like(n1))
    _, _, gs_m, _ = _run_ms(name, t, s, mask, np.zeros_like(n1))
    assert not np.any(gs_t) and not np.any(gs_m)


@pytest.mark.parametrize("side", [tb, mb], ids=["torch", "ms"])
def test_fgd_empty_image_has_no_foreground_term(side):
    """An image without target contributes nothing to the foreground term."""
    t, s = _features("fgd", "random")
    mask = _mask("target")
    mask[1] = 0.0
    only_fg = {"alpha_fgd": 1.0, "beta_fgd": 0.0, "gamma_fgd": 0.0, "lambda_fgd": 0.0}
    loss = side.FGDLoss(C, only_fg)
    if side is tb:

        def run(tt, ss, mm):
            return float(loss(*(torch.tensor(a) for a in (tt, ss, mm, _noise()))).detach())
    else:
        set_mode("pynative")

        def run(tt, ss, mm):
            return float(loss(*(ms.Tensor(a) for a in (tt, ss, mm, _noise()))).asnumpy())

    try:
        both = run(t, s, mask)
        s2 = s.copy()
        s2[1] = t[1]  # image 1 (no target) now matches: the foreground sum is unchanged
        assert run(t, s2, mask) == pytest.approx(both, rel=1e-6)
        assert run(t, s, np.zeros_like(mask)) == 0.0
    finally:
        set_mode("graph")


@pytest.mark.parametrize("name", NAMES)
def test_pynative_matches_torch(name):
    t, s = _features(name, "random", seed=5)
    mask, noise = _mask("target"), _noise()
    tl, ml = _pair(name, seed=6)
    vt = float(tl(*(torch.tensor(a) for a in (t, s, mask, noise))).detach())
    set_mode("pynative")
    try:
        vm = float(ml(*(ms.Tensor(a) for a in (t, s, mask, noise))).asnumpy())
    finally:
        set_mode("graph")
    assert abs(vt - vm) <= VALUE_RTOL * abs(vt) + VALUE_ATOL, (vt, vm)
