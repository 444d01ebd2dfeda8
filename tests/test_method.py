"""The method (MSA, L2, AWMSE), the distiller and the task loss, MindSpore against PyTorch.

Every check feeds the same numpy inputs to both frameworks (connector and loss weights copied by
name) and, for the formulas of DESIGN.md section 2, to THE float64 numpy oracle
(``parity/oracle.py``, values only), the one the parity suite uses: no formula is written
again here. What the oracle cannot say is checked by hand: small values derived on paper
(a single hot pixel weighs ``e^(1/tau)``, fixed region weights, a uniform map), invariances,
gradients that must not flow (through ``M``, into the teacher), option and config handling.
The hand-derived checks also hold the oracle to the same values: they are what makes it
trustworthy, with tests/test_parity_oracle.py.

Tolerances (float32 on both sides):

- ``RTOL``/``ATOL``: MindSpore against PyTorch, values (``assert_allclose``).
- ``GRAD_TOL``: MindSpore against PyTorch, gradients: max abs difference / max abs value.
- ``ORACLE_RTOL``/``ORACLE_ATOL``: float32 framework against the float64 numpy formulas.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn as msnn

import ms_impl  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before MindSpore's first conv)
from irkd.config import MethodConfig, MSAConfig
from irkd.zoo import stage_channels
from ms_impl import losses as ms_losses
from ms_impl.distill import distiller as ms_dist
from ms_impl.distill import method as ms_method
from ms_impl.runtime import set_mode
from parity import oracle as o
from parity.cases_loss import LOSS_METHODS
from torch_ref import losses as t_losses
from torch_ref.distill import distiller as t_dist
from torch_ref.distill import method as t_method

RTOL = 1e-5
ATOL = 1e-6
GRAD_TOL = 1e-4
ORACLE_RTOL = 1e-4
ORACLE_ATOL = 1e-5

MS_TO_TORCH_LEAF = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
# The feature baselines of the parity case table (logit_kd has its own test below).
BASELINES = tuple(m for m in LOSS_METHODS if m not in ("msa_awmse", "logit_kd"))
SIDES = pytest.mark.parametrize(
    ("mod", "tensor"),
    [(ms_method, ms.Tensor), (t_method, torch.tensor)],
    ids=["ms", "torch"],
)


@pytest.fixture(autouse=True)
def _pynative():
    set_mode("pynative")
    yield
    set_mode("pynative")


# ---------------------------------------------------------------- helpers


def _rand(shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _mask(shape, seed=0, frac=0.03, empty=()) -> np.ndarray:
    m = (np.random.default_rng(seed).random(shape) < frac).astype(np.float32)
    for i in empty:
        m[i] = 0.0
    return m


def _both(fn_ms, fn_t, *arrays, **kwargs):
    """Run a MindSpore and a PyTorch function on the same numpy arrays; numpy results."""
    a = fn_ms(*[ms.Tensor(x) for x in arrays], **kwargs)
    b = fn_t(*[torch.tensor(x) for x in arrays], **kwargs)
    return a.asnumpy(), b.detach().numpy()


def _close(a, b, rtol=RTOL, atol=ATOL) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _grad_close(g_ms: np.ndarray, g_t: np.ndarray) -> float:
    scale = max(float(np.abs(g_t).max()), 1e-12)
    rel = float(np.abs(g_ms - g_t).max()) / scale
    assert rel < GRAD_TOL, rel
    return rel


def _torch_name(ms_name: str) -> str:
    module, leaf = ms_name.rsplit(".", 1)
    return f"{module}.{MS_TO_TORCH_LEAF.get(leaf, leaf)}"


def _copy_weights(tnet: torch.nn.Module, mnet: msnn.Cell) -> None:
    """Copy torch's state into the MindSpore twin by name (strict both ways)."""
    state = {k: v for k, v in tnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    params = {p.name: p for p in mnet.get_parameters()}
    assert {_torch_name(n) for n in params} == set(state)
    for name, p in params.items():
        p.set_data(ms.Tensor(state[_torch_name(name)].numpy().copy()))


def _loss_pair(params=None, t_channels=8):
    return (
        ms_method.MSAAWMSELoss(t_channels, params),
        t_method.MSAAWMSELoss(t_channels, params),
    )


def _loss_values(params, t, s, mask):
    """Value of MSAAWMSELoss on both sides (``mask`` may be None)."""
    m_loss, t_loss = _loss_pair(params, t.shape[1])
    mm = None if mask is None else ms.Tensor(mask)
    tm = None if mask is None else torch.tensor(mask)
    a = float(m_loss(ms.Tensor(t), ms.Tensor(s), mm, None).asnumpy())
    b = float(t_loss(torch.tensor(t), torch.tensor(s), tm, None))
    return a, b


# ---------------------------------------------------------------- mask_to


def _one_pixel_mask() -> np.ndarray:
    mask = np.zeros((2, 1, 16, 24), np.float32)
    mask[0, 0, 5, 7] = 1.0  # one pixel survives at every scale
    return mask


@pytest.mark.parametrize(("h", "w"), [(16, 24), (8, 12), (4, 6), (2, 3)])
def test_mask_to_maxpools(h, w):
    mask = _one_pixel_mask()
    a, b = _both(ms_method.mask_to, t_method.mask_to, mask, h=h, w=w)
    ref = o.mask_to(mask, h, w)
    assert a.shape == b.shape == ref.shape == (2, 1, h, w)
    np.testing.assert_array_equal(a, ref)
    np.testing.assert_array_equal(b, ref)
    for m in (a, ref):  # by hand (the oracle too): the pixel survives, image 1 stays empty
        assert m[0].sum() == 1.0 and m[1].sum() == 0.0


@SIDES
def test_mask_to_checks_sizes(mod, tensor):
    with pytest.raises(ValueError, match="not a multiple"):
        mod.mask_to(tensor(_one_pixel_mask()), 5, 6)


# ---------------------------------------------------------------- MSA


@pytest.mark.parametrize("scales", [(3, 5, 7), (3,)])
@pytest.mark.parametrize("fusion", ["mean", "max"])
@pytest.mark.parametrize("tau", [0.5, 0.1, 2.0])
def test_msa_map_parity_and_oracle(scales, fusion, tau):
    t = _rand((2, 8, 17, 23), seed=1)
    t[1] *= 40.0  # tau must not depend on the feature's scale
    kw = {"scales": scales, "fusion": fusion, "tau": tau, "eps": 1e-6}
    a, b = _both(ms_method.msa_map, t_method.msa_map, t, **kw)
    ref = o.msa_map(t, **kw)
    assert a.shape == b.shape == (2, 1, 17, 23)
    _close(a, b)
    _close(a, ref, ORACLE_RTOL, ORACLE_ATOL)
    _close(b, ref, ORACLE_RTOL, ORACLE_ATOL)
    for m in (a, b):
        np.testing.assert_allclose(m.mean(axis=(1, 2, 3)), 1.0, rtol=1e-5)
        assert (m > 0).all()


@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (2, 4, 2, 2), (2, 3, 2, 5), (1, 2, 3, 1)])
def test_msa_map_tiny_features(shape):
    """Windows larger than the feature (enc4 of a small crop): padding only, still exact."""
    t = _rand(shape, seed=8)
    a, b = _both(ms_method.msa_map, t_method.msa_map, t)
    _close(a, b)
    _close(a, o.msa_map(t), ORACLE_RTOL, ORACLE_ATOL)
    np.testing.assert_allclose(a.mean(axis=(1, 2, 3)), 1.0, rtol=1e-5)


def _msa_kw() -> dict:
    return {"scales": (3, 5, 7), "fusion": "mean", "tau": 0.5, "eps": 1e-6}


@pytest.mark.parametrize(
    "kw",
    [{"scales": (3,)}, {"fusion": "max"}, {"tau": 0.2}, {"eps": 10.0}],
    ids=["scales", "fusion", "tau", "eps"],
)
def test_msa_map_options_change_the_map(kw):
    t = _rand((2, 8, 17, 23), seed=2)
    base = o.msa_map(t, **_msa_kw())
    a, b = _both(ms_method.msa_map, t_method.msa_map, t, **{**_msa_kw(), **kw})
    _close(a, b)
    assert np.abs(a - base).max() > 1e-3, kw


@pytest.mark.parametrize("tau", [0.5, 0.25, 1.0])
@pytest.mark.parametrize("scales", [(3, 5, 7), (3,)])
def test_msa_single_hot_pixel_weighs_e_to_one_over_tau(tau, scales):
    t = np.zeros((1, 4, 17, 23), np.float32)
    t[0, :, 8, 11] = 3.0  # c is 1 at the peak after normalisation, 0 elsewhere
    a, b = _both(ms_method.msa_map, t_method.msa_map, t, scales=scales, tau=tau)
    _close(a, b)
    # a value derived by hand, so it holds the oracle to it too
    for m in (a, b, o.msa_map(t, scales, "mean", tau)):
        peak = m[0, 0, 8, 11]
        flat = np.delete(m.ravel(), 8 * 23 + 11)
        np.testing.assert_allclose(flat, flat[0], rtol=1e-6)
        np.testing.assert_allclose(peak / flat[0], math.exp(1.0 / tau), rtol=1e-5)
        np.testing.assert_allclose(m.mean(), 1.0, rtol=1e-6)


def test_msa_all_zero_feature_is_uniform():
    t = np.zeros((2, 4, 9, 13), np.float32)
    a, b = _both(ms_method.msa_map, t_method.msa_map, t)
    for m in (a, b, o.msa_map(t)):  # by hand, the oracle too
        assert np.isfinite(m).all()
        np.testing.assert_array_equal(m, np.ones_like(m))  # exactly 1: R = [M > 1] is empty


def test_msa_map_has_no_gradient():
    t = _rand((1, 4, 8, 8), seed=3)
    tt = torch.tensor(t, requires_grad=True)
    assert not t_method.msa_map(tt).requires_grad
    g = ms.grad(lambda x: ms_method.msa_map(x).sum() + (x * 0.0).sum())(ms.Tensor(t))
    np.testing.assert_array_equal(g.asnumpy(), np.zeros_like(t))


# ---------------------------------------------------------------- L2 normalisation


def test_l2_normalize_parity_zero_vectors_and_gradient():
    x = _rand((2, 6, 5, 7), seed=4)
    x[0, :, 1, 2] = 0.0  # a zero vector
    x[1, :, 3, 3] = 1e-8  # below eps
    a, b = _both(ms_method.l2_normalize, t_method.l2_normalize, x, eps=1e-6)
    _close(a, b)
    _close(a, o.l2_normalize(x), ORACLE_RTOL, ORACLE_ATOL)
    np.testing.assert_array_equal(a[0, :, 1, 2], 0.0)
    norms = np.sqrt((a * a).sum(1))
    norms[0, 1, 2] = norms[1, 3, 3] = 1.0
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    w = _rand(x.shape, seed=5)
    g_ms = ms.grad(lambda v: (ms_method.l2_normalize(v) * ms.Tensor(w)).sum())(ms.Tensor(x))
    xt = torch.tensor(x, requires_grad=True)
    (t_method.l2_normalize(xt) * torch.tensor(w)).sum().backward()
    for g in (g_ms.asnumpy(), xt.grad.numpy()):
        assert np.isfinite(g).all()
    _grad_close(g_ms.asnumpy(), xt.grad.numpy())


# ---------------------------------------------------------------- AWMSE


def _awmse_inputs(seed=6, empty=(1,)):
    t = o.l2_normalize(_rand((3, 8, 16, 16), seed=seed)).astype(np.float32)
    s = o.l2_normalize(_rand((3, 8, 16, 16), seed=seed + 1)).astype(np.float32)
    m = o.msa_map(t).astype(np.float32)
    region = _mask((3, 1, 16, 16), seed=seed + 2, frac=0.05, empty=empty)
    return t, s, m, region


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.5), (2.0, 0.0), (0.0, 3.0)])
def test_awmse_parity_and_oracle(alpha, beta):
    t, s, m, region = _awmse_inputs()
    assert region[1].sum() == 0 and region[0].sum() > 0  # image 1 has no target
    kw = {"alpha": alpha, "beta": beta, "eps": 1e-6}
    a, b = _both(ms_method.awmse, t_method.awmse, t, s, m, region, **kw)
    _close(a, b)
    _close(a, o.awmse(t, s, m, region, **kw), ORACLE_RTOL, ORACLE_ATOL)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.5), (3.0, 0.25)])
def test_awmse_region_weights_are_fixed(alpha, beta):
    """d = 1 everywhere: each image scores alpha + beta (beta only without a target).

    Values derived by hand: the oracle is held to them as well."""
    b_, c, h, w = 3, 4, 12, 12
    t = np.zeros((b_, c, h, w), np.float32)
    s = np.zeros_like(t)
    s[:, 0] = 1.0
    m = o.msa_map(_rand((b_, c, h, w), seed=7)).astype(np.float32)
    region = np.zeros((b_, 1, h, w), np.float32)
    region[0, 0, 3, 4] = 1.0  # a one-pixel target
    region[1, 0, 2:10, 1:11] = 1.0  # a large one; image 2 has none
    want = ((alpha + beta) * 2 + beta) / 3
    a, bt = _both(ms_method.awmse, t_method.awmse, t, s, m, region, alpha=alpha, beta=beta)
    _close(a, want, rtol=1e-5)
    _close(bt, want, rtol=1e-5)
    _close(o.awmse(t, s, m, region, alpha, beta), want, rtol=1e-5)
    # the target term does not depend on the target's size
    d_fg = np.zeros_like(t)
    d_fg[:, 0] = region[:, 0]  # d = 1 on the target only
    one = t_method.awmse(torch.tensor(t), torch.tensor(d_fg), torch.tensor(m), torch.tensor(region))
    _close(one.numpy(), (1.0 + 1.0) / 3, rtol=1e-5)  # alpha for images 0 and 1, 0 for image 2


def test_awmse_plain_mse_ablation():
    t, s, _, _ = _awmse_inputs()
    a, b = _both(ms_method.plain_mse, t_method.plain_mse, t, s)
    _close(a, b)
    _close(a, o.plain_mse(t, s), ORACLE_RTOL, ORACLE_ATOL)


# ---------------------------------------------------------------- MSAAWMSELoss


def _loss_inputs(seed=10, shape=(3, 8, 16, 16), with_target=(0, 2)):
    t = _rand(shape, seed=seed, scale=2.0)
    # bright small blobs on the teacher, so that MSA has something to find
    for i in range(shape[0]):
        t[i, :, 3 + 4 * i, 5 + 3 * i] += 8.0
    # a student close to the teacher in some pixels and far in others, so that d varies
    # across the image and every weighting option shows in the loss
    amp = np.random.default_rng(seed + 2).random((shape[0], 1, *shape[2:])) ** 3 * 4.0
    s = (t + amp * _rand(shape, seed=seed + 1)).astype(np.float32)
    mask = np.zeros((shape[0], 1, shape[2] * 2, shape[3] * 2), np.float32)
    for i in with_target:
        mask[i, 0, 2 * (3 + 4 * i), 2 * (5 + 3 * i)] = 1.0
    return t, s, mask


VARIANTS = {
    "default": {},
    "scales": {"scales": [3]},
    "fusion": {"fusion": "max"},
    "tau": {"tau": 0.2},
    "msa_eps": {"msa_eps": 0.5},
    "msa_border": {"msa_border": 2},
    "on_student": {"on_student": True},
    "msa_off": {"msa": False},
    "normalize_none": {"normalize": "none"},
    "normalize_l2_map": {"normalize": "l2_map"},
    "l2_eps": {"l2_eps": 5.0},
    "awmse_off": {"awmse": False},
    "alpha": {"alpha": 2.0},
    "beta": {"beta": 2.0},
    "use_mask_off": {"use_mask": False},
    "awmse_eps": {"awmse_eps": 5.0},
    "awmse_reduce": {"awmse_reduce": "batch"},
}


def test_every_option_changes_the_oracle_loss():
    """On these inputs every option moves the oracle's loss, and no two variants coincide.

    With test_every_option_changes_the_loss (both twins equal the oracle, variant by
    variant, and differ from their own default), no option is silently ignored or aliased."""
    t, s, mask = _loss_inputs()
    base = o.msa_awmse_loss(t, s, mask)
    vals = {name: o.msa_awmse_loss(t, s, mask, kw) for name, kw in VARIANTS.items()}
    for name, ref in vals.items():
        if name != "default":
            # 100x the cross-framework tolerance (scales/fusion move it ~1e-3 on random
            # features; see test_scales_and_fusion_reweight_a_blob for a large effect)
            assert abs(ref - base) > 1e-4 * abs(base), (name, ref, base)
    assert min(np.diff(sorted(vals.values()))) > 1e-6, vals
    assert set(ms_method.MSA_AWMSE_DEFAULTS) == {k for kw in VARIANTS.values() for k in kw}


@functools.cache
def _default_loss_values() -> tuple[float, float]:
    t, s, mask = _loss_inputs()
    return _loss_values({}, t, s, mask)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_option_changes_the_loss(variant):
    t, s, mask = _loss_inputs()
    a, b = _loss_values(VARIANTS[variant], t, s, mask)
    _close(a, b)
    _close(a, o.msa_awmse_loss(t, s, mask, VARIANTS[variant]), ORACLE_RTOL, ORACLE_ATOL)
    if variant != "default":
        a0, b0 = _default_loss_values()
        assert abs(a - a0) > 1e-6 and abs(b - b0) > 1e-6, (variant, a, a0, b, b0)


def test_scales_and_fusion_reweight_a_blob():
    """A 5x5 plateau and a hot pixel: the plateau's centre stands out at scale 7 only."""
    t = np.full((1, 4, 24, 24), 0.1, np.float32)
    t[0, :, 4:9, 4:9] = 1.0  # plateau centred on (6, 6)
    t[0, :, 17, 17] = 1.0  # hot pixel: the per-image max of c at every scale
    s = t.copy()
    s[0, 0, 6, 6] += 1.0  # the student errs at the plateau centre only
    no_target = np.zeros((1, 1, 24, 24), np.float32)  # L = beta * (M-weighted mean of d)
    vals = {}
    for name, kw in {
        "default": {},
        "scales": {"scales": [3]},
        "fusion": {"fusion": "max"},
        "tau": {"tau": 0.2},
    }.items():
        a, b = _loss_values({"normalize": "none", **kw}, t, s, no_target)
        _close(a, b)
        p = {"normalize": "none", **kw}
        _close(a, o.msa_awmse_loss(t, s, no_target, p), ORACLE_RTOL, ORACLE_ATOL)
        vals[name] = a
    assert vals["scales"] < 0.8 * vals["default"]  # scale 3 sees no contrast inside the plateau
    assert vals["fusion"] > 1.2 * vals["default"]  # max keeps the scale-7 contrast whole
    assert vals["tau"] > 1.03 * vals["default"]  # a sharper softmax favours the contrast


def test_loss_without_mask_uses_attention_region():
    t, s, mask = _loss_inputs()
    with_mask_none = _loss_values({}, t, s, None)
    use_mask_off = _loss_values({"use_mask": False}, t, s, mask)
    _close(with_mask_none[0], with_mask_none[1])
    _close(with_mask_none[0], use_mask_off[0])
    ref = o.msa_awmse_loss(t, s, None)
    _close(with_mask_none[0], ref, ORACLE_RTOL, ORACLE_ATOL)


def test_msa_disabled_gives_uniform_map_and_plain_weights():
    t, s, _ = _loss_inputs()
    m_loss, t_loss = _loss_pair({"msa": False})
    a = m_loss.attention(ms.Tensor(t)).asnumpy()
    b = t_loss.attention(torch.tensor(t)).numpy()
    np.testing.assert_array_equal(a, np.ones((3, 1, 16, 16), np.float32))
    np.testing.assert_array_equal(b, a)
    # uniform M without a mask: no target region, L = beta * mean_hw d (by hand; the oracle
    # is held to it too)
    p = {"msa": False, "use_mask": False}
    a, b = _loss_values(p, t, s, None)
    d = ((o.l2_normalize(t) - o.l2_normalize(s)) ** 2).sum(1)
    want = 0.5 * d.mean() * (16 * 16) / (16 * 16 + 1e-6)
    _close(a, b)
    _close(a, want, ORACLE_RTOL, ORACLE_ATOL)
    _close(o.msa_awmse_loss(t, s, None, p), want, 1e-12)


@pytest.mark.parametrize("variant", ["default", "on_student", "normalize_none", "awmse_off"])
def test_loss_gradient_wrt_student(variant):
    t, s, mask = _loss_inputs(seed=20)
    m_loss, t_loss = _loss_pair(VARIANTS[variant])

    def fn(tv, sv, mv):
        return m_loss(tv, sv, mv, None)

    g_ms = ms.grad(fn, grad_position=(0, 1))(ms.Tensor(t), ms.Tensor(s), ms.Tensor(mask))
    tt = torch.tensor(t, requires_grad=True)
    st = torch.tensor(s, requires_grad=True)
    t_loss(tt, st, torch.tensor(mask), None).backward()
    assert tt.grad is None or not tt.grad.any()  # the teacher is a constant
    np.testing.assert_array_equal(g_ms[0].asnumpy(), 0.0)
    assert np.abs(st.grad.numpy()).max() > 0
    _grad_close(g_ms[1].asnumpy(), st.grad.numpy())


@SIDES
def test_loss_rejects_bad_params(mod, tensor):
    with pytest.raises(ValueError, match="unknown parameter"):
        mod.MSAAWMSELoss(8, {"temperature": 1.0})
    with pytest.raises(ValueError, match="fusion"):
        mod.MSAAWMSELoss(8, {"fusion": "sum"})
    with pytest.raises(ValueError, match="scales"):
        mod.MSAAWMSELoss(8, {"scales": [4]})
    with pytest.raises(ValueError, match="tau"):
        mod.MSAAWMSELoss(8, {"tau": 0.0})
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="msa_border"):
            mod.MSAAWMSELoss(8, {"msa_border": bad})


def _np(x) -> np.ndarray:
    return x.asnumpy() if isinstance(x, ms.Tensor) else x.detach().numpy()


@SIDES
def test_msa_border_clears_the_edge_contrast(mod, tensor):
    # A bright cell on the border wins the map without the option and loses it with it;
    # a border wider than half the map leaves a uniform map.
    t = np.full((1, 2, 12, 12), 0.1, np.float32)
    t[0, :, 0, 5] = 3.0  # on the top edge
    t[0, :, 6, 6] = 1.0  # inside
    plain = _np(mod.msa_map(tensor(t)))[0, 0]
    clear = _np(mod.msa_map(tensor(t), border=3))[0, 0]
    assert np.unravel_index(plain.argmax(), plain.shape) == (0, 5)
    assert np.unravel_index(clear.argmax(), clear.shape) == (6, 6)
    np.testing.assert_allclose(clear[:3].ravel(), clear[0, 0], rtol=1e-6)
    np.testing.assert_allclose(clear, o.msa_map(t, border=3)[0, 0], rtol=1e-4, atol=1e-5)
    flat = _np(mod.msa_map(tensor(t), border=6))
    np.testing.assert_allclose(flat, 1.0, rtol=1e-6)


def test_params_follow_the_config():
    cfg = MethodConfig(
        normalize="none",
        msa=MSAConfig(enabled=False, scales=[3, 5], fusion="max", tau=0.3, on_student=True),
        awmse=False,
        alpha=2.0,
        beta=0.1,
        use_mask=False,
    )
    p = ms_method.msa_awmse_params(cfg)
    assert p == t_method.msa_awmse_params(cfg)
    assert p["scales"] == [3, 5] and p["fusion"] == "max" and p["tau"] == 0.3
    assert p["msa"] is False and p["on_student"] is True and p["normalize"] == "none"
    assert p["awmse"] is False and p["use_mask"] is False and (p["alpha"], p["beta"]) == (2.0, 0.1)
    assert p["msa_border"] == 0
    assert ms_method.msa_awmse_params(MethodConfig(msa=MSAConfig(border=3)))["msa_border"] == 3
    assert ms_method.MSA_AWMSE_DEFAULTS == t_method.MSA_AWMSE_DEFAULTS


# ---------------------------------------------------------------- Connector


def test_connector_names_and_parity():
    mc, tc = ms_method.Connector(4, 16), t_method.Connector(4, 16)
    assert [n for n, _ in tc.named_parameters()] == ["conv.weight", "bn.weight", "bn.bias"]
    assert tc.conv.bias is None and tc.bn.momentum == 0.1
    _copy_weights(tc, mc)
    x = _rand((2, 4, 8, 8), seed=30)
    want, stats = o.connector(x, {k: v.numpy() for k, v in tc.state_dict().items()}, train=True)
    mc.set_train(True)
    tc.train()
    y = mc(ms.Tensor(x)).asnumpy()
    _close(y, tc(torch.tensor(x)).detach().numpy(), 1e-4, 1e-5)
    _close(y, want, 1e-4, 1e-5)
    _close(mc.bn.moving_mean.asnumpy(), tc.bn.running_mean.numpy())
    _close(mc.bn.moving_variance.asnumpy(), tc.bn.running_var.numpy())
    _close(tc.bn.running_var.numpy(), stats["bn.running_var"], ORACLE_RTOL, ORACLE_ATOL)


# ---------------------------------------------------------------- Distiller

TEACHER = "dnanet"
STUDENT = "dnanet_xxs"
STAGES = ["enc0", "enc1", "enc2", "dec0", "dec1"]


def _feats(names, channels, hw=32, batch=2, seed=0):
    out = {}
    for i, n in enumerate(names):
        stride = t_dist.stage_stride(n)
        out[n] = _rand((batch, channels[n], hw // stride, hw // stride), seed=seed + i)
    return out


def _distiller_pair(method: MethodConfig, seed=0):
    tc, sc = stage_channels(TEACHER), stage_channels(STUDENT)
    torch.manual_seed(seed)
    tdist = t_dist.build_distiller(method, tc, sc)
    mdist = ms_dist.build_distiller(method, tc, sc)
    with torch.no_grad():  # non-trivial BN affine parameters
        for m in tdist.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    _copy_weights(tdist, mdist)
    return tdist, mdist


def _distiller_inputs(names, seed=40, batch=2, hw=32):
    tf = _feats(names, stage_channels(TEACHER), hw, batch, seed)
    sf = _feats(names, stage_channels(STUDENT), hw, batch, seed + 100)
    mask = _mask((batch, 1, hw, hw), seed=seed + 200, frac=0.02, empty=(batch - 1,))
    return tf, sf, mask


def _run_ms(mdist, tf, sf, mask, t_logits=None, s_logits=None, noise=()):
    def tens(x):
        return None if x is None else ms.Tensor(x)

    total, terms = mdist(
        {k: ms.Tensor(v) for k, v in tf.items()},
        {k: ms.Tensor(v) for k, v in sf.items()},
        tens(t_logits),
        tens(s_logits),
        ms.Tensor(mask),
        tuple(ms.Tensor(n) for n in noise),
    )
    return float(total.asnumpy()), [float(x.asnumpy()) for x in terms]


def _run_t(tdist, tf, sf, mask, t_logits=None, s_logits=None, noise=()):
    def tens(x):
        return None if x is None else torch.tensor(x)

    total, terms = tdist(
        {k: torch.tensor(v) for k, v in tf.items()},
        {k: torch.tensor(v) for k, v in sf.items()},
        tens(t_logits),
        tens(s_logits),
        torch.tensor(mask),
        tuple(torch.tensor(n) for n in noise),
    )
    return float(total.detach()), [float(x.detach()) for x in terms]


def test_distiller_structure_and_names():
    method = MethodConfig(stages=STAGES)
    tdist, mdist = _distiller_pair(method)
    assert tdist.stages == mdist.stages == tuple(STAGES)
    assert len(tdist.connectors) == len(mdist.connectors) == len(STAGES)
    assert len(tdist.losses) == len(mdist.losses) == len(STAGES)
    tsc, ssc = stage_channels(TEACHER), stage_channels(STUDENT)
    for i, st in enumerate(STAGES):
        assert tuple(tdist.connectors[i].conv.weight.shape) == (tsc[st], ssc[st], 1, 1)
    t_names = [n for n in tdist.state_dict() if not n.endswith("num_batches_tracked")]
    m_names = [p.name for p in mdist.get_parameters()]
    assert sorted(_torch_name(n) for n in m_names) == sorted(t_names)
    assert "connectors.0.conv.weight" in m_names and "connectors.0.bn.moving_mean" in m_names
    assert "connectors.0.bn.running_mean" in t_names
    assert tdist.noise_shapes(2, 32, 32) == mdist.noise_shapes(2, 32, 32) == ((),) * 5
    assert t_dist.build_distiller(MethodConfig(name="none"), tsc, ssc) is None
    assert ms_dist.build_distiller(MethodConfig(name="none"), tsc, ssc) is None


@pytest.mark.parametrize("mod", [ms_dist, t_dist], ids=["ms", "torch"])
def test_distiller_errors(mod):
    tsc, ssc = stage_channels(TEACHER), stage_channels(STUDENT)
    with pytest.raises(ValueError, match="none"):
        mod.Distiller(MethodConfig(name="none"), tsc, ssc)
    with pytest.raises(ValueError, match="unknown distillation method"):
        mod.Distiller(MethodConfig(name="kd2"), tsc, ssc)
    with pytest.raises(ValueError, match="not a teacher stage"):
        mod.Distiller(MethodConfig(stages=["enc9"]), tsc, ssc)
    with pytest.raises(ValueError, match="params must be empty"):
        mod.Distiller(MethodConfig(params={"tau": 1.0}), tsc, ssc)
    with pytest.raises(ValueError, match="stride"):
        mod.stage_stride("bottleneck")
    assert mod.stage_stride("dec3") == 8 and mod.stage_stride("logits") == 1


@pytest.mark.parametrize("backend", ["ms", "torch"])
def test_logit_kd_without_logits_is_one_clear_error(backend):
    tdist, mdist = _distiller_pair(MethodConfig(name="logit_kd"))
    tf, sf, mask = _distiller_inputs(["enc0"])
    logits = _rand((2, 1, 32, 32), seed=7)
    run = _run_ms if backend == "ms" else _run_t
    dist = mdist if backend == "ms" else tdist
    total, _ = run(dist, tf, sf, mask, t_logits=logits, s_logits=logits * 0.5)
    assert total > 0.0  # the logits path itself works
    with pytest.raises(ValueError, match="distils the logits"):
        run(dist, tf, sf, mask, t_logits=logits, s_logits=None)
    with pytest.raises(ValueError, match="distils the logits"):
        run(dist, tf, sf, mask)


# Slow: lam (also in test_distiller_graph_mode_and_jit[weights_lam]) and the MSA and ablation
# options (each checked on the stage loss, test_every_option_changes_the_loss, and mapped from
# the config in test_params_follow_the_config).
@pytest.mark.parametrize(
    "change",
    [
        pytest.param({}, id="default"),
        pytest.param({"stage_weights": [1.0, 0.5, 3.0, 0.0, 1.5]}, id="stage_weights"),
        pytest.param({"lam": 2.5}, id="lam", marks=pytest.mark.slow),
        pytest.param(
            {"msa": MSAConfig(on_student=True, fusion="max")}, id="msa", marks=pytest.mark.slow
        ),
        pytest.param(
            {"normalize": "none", "use_mask": False}, id="ablation", marks=pytest.mark.slow
        ),
    ],
)
def test_distiller_total_terms_and_gradients(change):
    method = dataclasses.replace(MethodConfig(stages=STAGES), **change)
    tdist, mdist = _distiller_pair(method)
    tdist.train()
    mdist.set_train(True)
    tf, sf, mask = _distiller_inputs(STAGES)

    # values
    a_total, a_terms = _run_ms(mdist, tf, sf, mask)
    tt = {k: torch.tensor(v, requires_grad=True) for k, v in tf.items()}
    st = {k: torch.tensor(v, requires_grad=True) for k, v in sf.items()}
    total, terms = tdist(tt, st, None, None, torch.tensor(mask), ())
    b_terms = [float(x.detach()) for x in terms]
    _close(a_terms, b_terms, 1e-5, 1e-6)
    weights = method.stage_weights or [1.0] * len(STAGES)
    want = method.lam * sum(w * x for w, x in zip(weights, b_terms, strict=True))
    _close(float(total.detach()), want, 1e-5)
    if "stage_weights" in change or "lam" in change:  # the option changes the total
        assert abs(want - sum(b_terms)) > 1e-2 * sum(b_terms)
    _close(a_total, float(total.detach()), 1e-5)
    for i in range(len(STAGES)):  # BN statistics moved the same way (momentum)
        _close(
            mdist.connectors[i].bn.moving_mean.asnumpy(),
            tdist.connectors[i].bn.running_mean.numpy(),
        )

    # gradients w.r.t. the student features and the connector parameters
    total.backward()
    assert all(v.grad is None or not v.grad.any() for v in tt.values())
    params = mdist.trainable_params()

    def fn(*s_vals):
        out, _ = mdist(
            {k: ms.Tensor(v) for k, v in tf.items()},
            dict(zip(STAGES, s_vals, strict=True)),
            None,
            None,
            ms.Tensor(mask),
            (),
        )
        return out

    g_in, g_par = ms.grad(fn, tuple(range(len(STAGES))), params)(
        *[ms.Tensor(sf[k]) for k in STAGES]
    )
    for k, g in zip(STAGES, g_in, strict=True):
        if weights[STAGES.index(k)] == 0.0:
            assert not st[k].grad.any()
        _grad_close(g.asnumpy(), st[k].grad.numpy())
    t_params = dict(tdist.named_parameters())
    for p, g in zip(params, g_par, strict=True):
        _grad_close(g.asnumpy(), t_params[_torch_name(p.name)].grad.numpy())


def test_distiller_attention_maps():
    method = MethodConfig(stages=STAGES, msa=MSAConfig(scales=[3, 5], tau=0.7))
    tdist, mdist = _distiller_pair(method)
    tf, _, _ = _distiller_inputs(STAGES)
    a = mdist.attention_maps({k: ms.Tensor(v) for k, v in tf.items()})
    b = tdist.attention_maps({k: torch.tensor(v) for k, v in tf.items()})
    assert list(a) == list(b) == STAGES
    for k in STAGES:
        _close(a[k].asnumpy(), b[k].numpy())
        _close(b[k].numpy(), o.msa_map(tf[k], (3, 5), "mean", 0.7), ORACLE_RTOL, ORACLE_ATOL)
    tdist, mdist = _distiller_pair(dataclasses.replace(method, msa=MSAConfig(enabled=False)))
    a = mdist.attention_maps({"enc1": ms.Tensor(tf["enc1"])})
    b = tdist.attention_maps({"enc1": torch.tensor(tf["enc1"])})
    assert list(a) == list(b) == ["enc1"]
    np.testing.assert_array_equal(a["enc1"].asnumpy(), np.ones((2, 1, 16, 16), np.float32))
    np.testing.assert_array_equal(b["enc1"].numpy(), np.ones((2, 1, 16, 16), np.float32))


class _DistLoss(msnn.Cell):
    """Student-side training use: features (dict built in the graph) -> distillation total."""

    def __init__(self, dist: msnn.Cell) -> None:
        super().__init__()
        self.dist = dist

    def construct(self, t0, t1, t2, s0, s1, s2, mask, noise):
        t_feats = {"enc0": t0, "enc1": t1, "dec0": t2}
        s_feats = {"enc0": s0, "enc1": s1, "dec0": s2}
        total, terms = self.dist(t_feats, s_feats, None, None, mask, noise)
        return total + terms[0] * 0.0


GRAPH_CASES = {
    "weights_lam": {"stage_weights": [1.0, 0.5, 2.0], "lam": 1.5},
    "ablation": {
        "msa": MSAConfig(on_student=True, scales=[3, 5], fusion="max"),
        "use_mask": False,
        "normalize": "none",
    },
    "mgd": {"name": "mgd"},
}


@pytest.mark.parametrize(
    "case",
    [c if c == "weights_lam" else pytest.param(c, marks=pytest.mark.slow) for c in GRAPH_CASES],
)
def test_distiller_graph_mode_and_jit(case):
    """Slow: ``ablation`` and ``mgd`` (a GRAPH_MODE compile each; the options are checked on
    the stage loss, test_every_option_changes_the_loss, and MGD's loss in GRAPH_MODE by
    tests/test_baselines.py)."""
    names = ["enc0", "enc1", "dec0"]
    method = dataclasses.replace(MethodConfig(stages=names), **GRAPH_CASES[case])
    tdist, mdist = _distiller_pair(method)
    tf, sf, mask = _distiller_inputs(names)
    # the training loop's noise: 0-d zeros for stages that need none (irkd.schedule.noise_for)
    rng = np.random.default_rng(1)
    noise = [
        rng.random(sh).astype(np.float32) if sh else np.zeros((), np.float32)
        for sh in tdist.noise_shapes(2, 32, 32)
    ]
    args = [ms.Tensor(tf[k]) for k in names] + [ms.Tensor(sf[k]) for k in names]
    args += [ms.Tensor(mask), tuple(ms.Tensor(n) for n in noise)]

    # train mode: BN uses batch statistics, so the outputs do not depend on how often the
    # running statistics were updated by the runs below
    mdist.set_train(True)
    tdist.train()
    want, _ = _run_t(tdist, tf, sf, mask, noise=noise)
    cell = _DistLoss(mdist)
    params = mdist.trainable_params()
    ref_val, (ref_gin, ref_gpar) = ms.value_and_grad(cell, (3, 4, 5), params)(*args)
    _close(float(ref_val.asnumpy()), want, 1e-5)

    @ms.jit
    def jitted(*xs):
        return cell(*xs)

    _close(float(jitted(*args).asnumpy()), want, 1e-5)

    set_mode("graph")
    try:
        gcell = _DistLoss(mdist)
        gcell.set_train(True)
        val, (g_in, g_par) = ms.value_and_grad(gcell, (3, 4, 5), params)(*args)
    finally:
        set_mode("pynative")
    _close(float(val.asnumpy()), want, 1e-5)
    for g, r in zip(g_in + g_par, ref_gin + ref_gpar, strict=True):
        _grad_close(g.asnumpy(), r.asnumpy())


# ---------------------------------------------------------------- baselines in the distiller


@pytest.mark.parametrize("name", BASELINES)
def test_distiller_runs_each_baseline(name):
    names = ["enc0", "dec1"]
    method = MethodConfig(name=name, stages=names)
    tdist, mdist = _distiller_pair(method)
    assert type(tdist.losses[0]).__name__ == type(mdist.losses[0]).__name__
    assert type(tdist.losses[0]) is t_dist.loss_class(name)
    tdist.train()
    mdist.set_train(True)
    tf, sf, mask = _distiller_inputs(names)
    shapes = tdist.noise_shapes(2, 32, 32)
    assert shapes == mdist.noise_shapes(2, 32, 32)
    if name == "mgd":
        assert shapes == ((2, 1, 32, 32), (2, 1, 16, 16))
    else:
        assert shapes == ((), ())
    rng = np.random.default_rng(0)
    noise = tuple(
        rng.random(sh).astype(np.float32) if sh else np.zeros((), np.float32) for sh in shapes
    )
    a_total, a_terms = _run_ms(mdist, tf, sf, mask, noise=noise)
    b_total, b_terms = _run_t(tdist, tf, sf, mask, noise=noise)
    assert np.isfinite(a_total)
    _close(a_terms, b_terms, 1e-4, 1e-5)
    _close(a_total, b_total, 1e-4, 1e-5)


def test_distiller_logit_kd():
    method = MethodConfig(name="logit_kd", lam=0.5)
    tdist, mdist = _distiller_pair(method)
    assert tdist.stages == mdist.stages == ("logits",)
    assert len(tdist.connectors) == len(mdist.connectors) == 0
    assert tdist.noise_shapes(2, 32, 32) == ((),)
    t_logits, s_logits = _rand((2, 1, 32, 32), 50), _rand((2, 1, 32, 32), 51)
    mask = _mask((2, 1, 32, 32), seed=52)
    a_total, a_terms = _run_ms(mdist, {}, {}, mask, t_logits, s_logits)
    b_total, b_terms = _run_t(tdist, {}, {}, mask, t_logits, s_logits)
    _close(a_terms, b_terms, 1e-5)
    _close(a_total, 0.5 * b_terms[0], 1e-5)
    _close(b_total, 0.5 * b_terms[0], 1e-5)


# ---------------------------------------------------------------- task loss


def test_soft_iou_values_and_gradients():
    logits = _rand((3, 1, 16, 16), seed=60, scale=3.0)
    mask = _mask((3, 1, 16, 16), seed=61, frac=0.1, empty=(2,))
    a, b = _both(ms_losses.soft_iou_loss, t_losses.soft_iou_loss, logits, mask)
    _close(a, b)
    _close(a, o.soft_iou_loss(logits, mask), ORACLE_RTOL, ORACLE_ATOL)
    a2, _ = _both(ms_losses.soft_iou_loss, t_losses.soft_iou_loss, logits, mask, smooth=0.1)
    assert abs(float(a2) - float(a)) > 1e-4
    _close(a2, o.soft_iou_loss(logits, mask, 0.1), ORACLE_RTOL, ORACLE_ATOL)
    g_ms = ms.grad(ms_losses.soft_iou_loss)(ms.Tensor(logits), ms.Tensor(mask))
    lt = torch.tensor(logits, requires_grad=True)
    t_losses.soft_iou_loss(lt, torch.tensor(mask)).backward()
    _grad_close(g_ms.asnumpy(), lt.grad.numpy())
    # a perfect prediction scores ~0, the empty image with an empty prediction exactly 0
    perfect = np.where(mask > 0, 30.0, -30.0).astype(np.float32)
    assert float(t_losses.soft_iou_loss(torch.tensor(perfect), torch.tensor(mask))) < 1e-6


def test_task_loss_deep_supervision_mean():
    mask = _mask((2, 1, 16, 16), seed=70, frac=0.1)
    outs = [_rand((2, 1, 16, 16), seed=71 + i) for i in range(4)]
    single = _both(
        lambda z, m: ms_losses.task_loss(z, (), m),
        lambda z, m: t_losses.task_loss(z, (), m),
        outs[3],
        mask,
    )
    _close(*single)
    _close(single[0], o.task_loss(outs[3], (), mask), ORACLE_RTOL, ORACLE_ATOL)
    ds = _both(
        lambda a1, a2, a3, z, m: ms_losses.task_loss(z, (a1, a2, a3), m),
        lambda a1, a2, a3, z, m: t_losses.task_loss(z, (a1, a2, a3), m),
        *outs,
        mask,
    )
    _close(*ds)
    _close(ds[0], o.task_loss(outs[3], outs[:3], mask), ORACLE_RTOL, ORACLE_ATOL)
    g_ms = ms.grad(lambda z, a: ms_losses.task_loss(z, (a,), ms.Tensor(mask)), (0, 1))(
        ms.Tensor(outs[0]), ms.Tensor(outs[1])
    )
    z, a = (torch.tensor(x, requires_grad=True) for x in outs[:2])
    t_losses.task_loss(z, (a,), torch.tensor(mask)).backward()
    _grad_close(g_ms[0].asnumpy(), z.grad.numpy())
    _grad_close(g_ms[1].asnumpy(), a.grad.numpy())


# ---------------------------------------------------------------- the output-map term


def _out_values(params, t_logits, s_logits, mask):
    """``OutputMapLoss`` on both sides (``mask`` may be None)."""
    mm = None if mask is None else ms.Tensor(mask)
    tm = None if mask is None else torch.tensor(mask)
    a = ms_method.OutputMapLoss(params)(ms.Tensor(t_logits), ms.Tensor(s_logits), mm)
    b = t_method.OutputMapLoss(params)(torch.tensor(t_logits), torch.tensor(s_logits), tm)
    return float(a.asnumpy()), float(b)


def _out_logits(seed=80):
    """Teacher logits with two bright targets on the mask, student logits, the mask."""
    mask = np.zeros((2, 1, 32, 32), np.float32)
    mask[0, 0, 5:7, 9:11] = 1.0
    mask[1, 0, 20:23, 3:5] = 1.0
    t = _rand((2, 1, 32, 32), seed, 1.5) - 3.0 + 8.0 * mask
    s = _rand((2, 1, 32, 32), seed + 1, 1.5) - 2.0
    return t.astype(np.float32), s.astype(np.float32), mask


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(None, id="default"),
        pytest.param({"msa": False, "on_student": True}, id="msa-off"),
        pytest.param({"on_student": True, "fusion": "max"}, id="on-student"),
        pytest.param({"awmse": False}, id="awmse-off"),
        pytest.param({"use_mask": False}, id="no-mask"),
    ],
)
def test_out_term_is_the_stage_loss_on_probability_maps(params):
    t, s, mask = _out_logits()
    a, b = _out_values(params, t, s, mask)
    _close(a, b)
    want = o.out_map_loss(t, s, mask, params)
    _close(a, want, ORACLE_RTOL, ORACLE_ATOL)
    assert want > 1e-3
    # exactly the method's stage loss on sigmoid maps, normalisation off whatever is asked
    pt, ps = (1.0 / (1.0 + np.exp(-x.astype(np.float64))) for x in (t, s))
    for normalize in ("l2", "l2_map", "none"):
        p = {**(params or {}), "normalize": normalize}
        want_p = o.msa_awmse_loss(pt, ps, mask, {**p, "normalize": "none"})
        assert o.out_map_loss(t, s, mask, p) == pytest.approx(want_p, rel=1e-12)
    # P_s == P_t: the term vanishes (exactly), on both sides
    a0, b0 = _out_values(params, t, t.copy(), mask)
    assert a0 == 0.0 and b0 == 0.0


@pytest.mark.parametrize("backend", ["ms", "torch"])
def test_out_term_gradient_reaches_the_student_logits_only(backend):
    t, s, mask = _out_logits(seed=84)
    if backend == "torch":
        tl = torch.tensor(t, requires_grad=True)
        sl = torch.tensor(s, requires_grad=True)
        t_method.OutputMapLoss()(tl, sl, torch.tensor(mask)).backward()
        g_t, g_s = tl.grad, sl.grad.numpy()
        assert g_t is None or not g_t.any()
    else:
        fn = ms_method.OutputMapLoss()
        g_t, g_s = ms.grad(fn, (0, 1))(ms.Tensor(t), ms.Tensor(s), ms.Tensor(mask))
        assert not g_t.asnumpy().any()
        g_s = g_s.asnumpy()
    assert np.abs(g_s).max() > 0


def _out_distiller(out_weight, lam=0.7, **over):
    method = MethodConfig(stages=["enc0", "dec0"], lam=lam, out_weight=out_weight, **over)
    return method, *_distiller_pair(method)


def test_out_weight_zero_changes_nothing():
    """``out_weight`` 0: no term, no module, the same names and bit-identical numbers (the
    stage terms and total of a distiller with the term are those of one without it)."""
    names = ["enc0", "dec0"]
    tf, sf, mask = _distiller_inputs(names)
    t, s, _ = _out_logits(seed=86)
    _, t0, m0 = _out_distiller(0.0)
    _, t1, m1 = _out_distiller(0.25)
    for d in (t0, m0):
        assert d.out_weight == 0.0 and d.out_loss is None and d.term_names == tuple(names)
    assert t1.term_names == m1.term_names == (*names, "out")
    assert sorted(t0.state_dict()) == sorted(t1.state_dict())
    assert sorted(p.name for p in m0.get_parameters()) == sorted(
        p.name for p in m1.get_parameters()
    )
    for dist0, dist1, run in ((t0, t1, _run_t), (m0, m1, _run_ms)):
        total0, terms0 = run(dist0, tf, sf, mask, t, s)
        total1, terms1 = run(dist1, tf, sf, mask, t, s)
        assert len(terms0) == 2 and len(terms1) == 3
        assert terms0 == terms1[:2]  # bit for bit
        assert total0 == pytest.approx(0.7 * (terms0[0] + terms0[1]), rel=1e-6)


def test_out_weight_scales_the_out_term_in_the_total():
    names = ["enc0", "dec0"]
    tf, sf, mask = _distiller_inputs(names)
    t, s, _ = _out_logits(seed=88)
    totals = {}
    for ow in (0.5, 2.0):
        _, tdist, mdist = _out_distiller(ow)
        tdist.train()
        mdist.set_train(True)
        a_total, a_terms = _run_ms(mdist, tf, sf, mask, t, s)
        b_total, b_terms = _run_t(tdist, tf, sf, mask, t, s)
        _close(a_terms, b_terms, 1e-5, 1e-6)
        _close(a_total, b_total, 1e-5, 1e-6)
        want = 0.7 * (b_terms[0] + b_terms[1] + ow * b_terms[2])
        _close(b_total, want, 1e-6)
        _close(b_terms[2], o.out_map_loss(t, s, mask), ORACLE_RTOL, ORACLE_ATOL)
        totals[ow] = (b_total, b_terms)
    (t_a, terms_a), (t_b, terms_b) = totals[0.5], totals[2.0]
    _close(terms_a, terms_b, 1e-6)  # the terms are unweighted
    _close(t_b - t_a, 0.7 * 1.5 * terms_a[2], 1e-5)
    assert t_b - t_a > 1e-3


@pytest.mark.parametrize("mod", [ms_dist, t_dist], ids=["ms", "torch"])
def test_out_weight_errors(mod):
    tsc, ssc = stage_channels(TEACHER), stage_channels(STUDENT)
    for name in ("fitnet", "logit_kd", "mgd"):
        with pytest.raises(ValueError, match=r"method\.out_weight: .*msa_awmse only"):
            mod.Distiller(MethodConfig(name=name, out_weight=1.0), tsc, ssc)
    mod.Distiller(MethodConfig(name="fitnet", out_weight=0.0), tsc, ssc)
    for bad in (-0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"method\.out_weight: must be a number >= 0"):
            mod.Distiller(MethodConfig(out_weight=bad), tsc, ssc)
    dist = mod.Distiller(MethodConfig(stages=["enc0"], out_weight=1.0), tsc, ssc)
    run = _run_ms if mod is ms_dist else _run_t
    tf, sf, mask = _distiller_inputs(["enc0"])
    logits = _rand((2, 1, 32, 32), seed=9)
    with pytest.raises(ValueError, match="distils the output maps"):
        run(dist, tf, sf, mask, t_logits=logits, s_logits=None)
    with pytest.raises(ValueError, match="distils the output maps"):
        run(dist, tf, sf, mask)


def test_out_weight_in_the_config():
    from irkd.config import ConfigError, load_config

    assert MethodConfig().out_weight == 0.0
    assert load_config(None, ["method.out_weight=1"]).method.out_weight == 1.0
    with pytest.raises(ConfigError, match=r"method\.out_weight: must be a number >= 0"):
        load_config(None, ["method.out_weight=-1"])
    with pytest.raises(ConfigError, match=r"method\.out_weight: .*msa_awmse only"):
        load_config(None, ["method.name=fitnet", "method.out_weight=0.5"])
    assert load_config(None, ["method.name=fitnet"]).method.out_weight == 0.0


class _OutDistLoss(msnn.Cell):
    """The distiller with the output-map term inside a graph: features and logits -> total."""

    def __init__(self, dist: msnn.Cell) -> None:
        super().__init__()
        self.dist = dist

    def construct(self, t0, s0, t_logits, s_logits, mask):
        total, terms = self.dist({"enc0": t0}, {"enc0": s0}, t_logits, s_logits, mask, ())
        return total + terms[1] * 0.0


def test_out_term_in_graph_mode():
    """The static ``out_weight`` branch compiles; values and gradients as in PyNative."""
    tdist, mdist = _distiller_pair(MethodConfig(stages=["enc0"], lam=0.7, out_weight=0.5))
    tf, sf, mask = _distiller_inputs(["enc0"])
    t, s, _ = _out_logits(seed=90)
    tdist.train()
    mdist.set_train(True)
    want, want_terms = _run_t(tdist, tf, sf, mask, t, s)
    args = [ms.Tensor(x) for x in (tf["enc0"], sf["enc0"], t, s, mask)]
    params = mdist.trainable_params()
    ref_val, (ref_g, ref_gp) = ms.value_and_grad(_OutDistLoss(mdist), (1, 3), params)(*args)
    _close(float(ref_val.asnumpy()), want, 1e-5)
    set_mode("graph")
    try:
        cell = _OutDistLoss(mdist)
        cell.set_train(True)
        val, (g, gp) = ms.value_and_grad(cell, (1, 3), params)(*args)
    finally:
        set_mode("pynative")
    _close(float(val.asnumpy()), want, 1e-5)
    for x, r in zip(g + gp, ref_g + ref_gp, strict=True):
        _grad_close(x.asnumpy(), r.asnumpy())
    assert np.abs(g[1].asnumpy()).max() > 0  # the student's logits get a gradient
