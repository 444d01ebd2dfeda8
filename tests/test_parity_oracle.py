"""The numpy oracle (parity/oracle.py) against both twins.

The oracle computes in float64 from the float32 inputs the frameworks receive; a framework's
float32 result passes when ``|fw - oracle| <= ATOL + RTOL * |oracle|`` (elementwise for maps).

Tolerances (one place): RTOL = 1e-5, ATOL = 1e-6.

- RTOL 1e-5 is about 80 float32 ulps (eps 1.19e-7): room for the rounding of the few hundred
  additions and the exp/log of a stage loss on these small maps (measured worst cases: 2.1e-6
  on a loss, MindSpore logit_kd; 3.3e-6 elementwise on M at tau = 0.2, where exp(c / tau)
  amplifies the error of c), yet tight enough that every deliberate error tried on the oracle
  (pooling over the padding, a biased running variance or PKD std, a swapped KL, ``norm + eps``
  for ``max(norm, eps)``, LayerNorm eps 1e-6 for 1e-5, ``>`` for ``>=`` in MGD) fails a test.
- ATOL 1e-6 only matters near zero (all-zero features, equal features, an empty region). The
  losses whose default weights make them small (FGD's 1e-3..5e-6, MGD's 2e-5) are also run
  with each term's weight at 1 (FGD one term at a time), so that no term hides under ATOL.
- CWD alone adds ``COND_ULPS * eps32 * cond``: its KL is a difference of a cross-entropy and
  an entropy (``sum p log p - sum p log q``), each about ``tau^2 log(HW)`` per channel, so
  float32 fixes it only to about one ulp of ``cond = loss_weight tau^2 mean_{b,c} sum_hw
  p_t (|log p_t| + |log p_s|)`` (1.6e-5 absolute at tau = 4, where the loss is about 1).
  Measured: at most 0.7 of that ulp (MindSpore, tau = 4); COND_ULPS = 4. Every other loss sums
  nonnegative terms, and RTOL alone bounds it.

Gradients w.r.t. the student feature are checked through the oracle's central difference along
a direction ``v``: ``|<g_fw, v> - D_v L| <= GRAD_RTOL * sum |g_fw * v|`` (the scale of the dot
product), GRAD_RTOL = 1e-5 (float32 gradient against a float64 central difference, h = 1e-6;
measured at most 1.1e-7).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import torch

import ms_impl  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before MindSpore's first conv)
from irkd.methods import resolve_params
from ms_impl import losses as ms_losses
from ms_impl.distill import method as ms_method
from ms_impl.distill.distiller import loss_class as ms_loss_class
from ms_impl.runtime import set_mode
from ms_impl.weights import name_map
from parity import oracle as o
from torch_ref import losses as t_losses
from torch_ref.distill import method as t_method
from torch_ref.distill.distiller import loss_class as t_loss_class

REPO = Path(__file__).resolve().parents[1]

RTOL, ATOL = 1e-5, 1e-6
COND_ULPS = 4  # CWD's conditioning term (see the module docstring)
EPS32 = float(np.finfo(np.float32).eps)
GRAD_RTOL = 1e-5

# Odd spatial sizes. C = 8 gives FGD's context blocks a LayerNorm over 4 values: over 2 it
# outputs about +-1 whatever its input, and its ReLU can then switch a whole path off.
B, C, H, W = 2, 8, 7, 9
STRIDE = 2  # the mask lives at input resolution (14 x 18)
METHODS = tuple(o.ORACLE_LOSSES)
BASELINES = tuple(n for n in METHODS if n != "msa_awmse")

# (method, id) -> params; every method with its defaults, plus variants that exercise each option.
VARIANTS: dict[tuple[str, str], dict] = {(n, "default"): {} for n in METHODS}
VARIANTS.update(
    {
        ("msa_awmse", "msa_off"): {"msa": False},
        ("msa_awmse", "l2_off"): {"normalize": "none"},
        ("msa_awmse", "l2_map"): {"normalize": "l2_map"},
        ("msa_awmse", "plain_mse_l2_map"): {"awmse": False, "normalize": "l2_map"},
        ("msa_awmse", "plain_mse"): {"awmse": False},
        ("msa_awmse", "awmse_batch"): {"awmse_reduce": "batch"},
        ("msa_awmse", "awmse_batch_no_mask"): {"awmse_reduce": "batch", "use_mask": False},
        ("msa_awmse", "plain_mse_l2_off"): {"awmse": False, "normalize": "none"},
        ("msa_awmse", "scale_3"): {"scales": [3]},
        ("msa_awmse", "scales_5_9"): {"scales": [5, 9]},
        ("msa_awmse", "fusion_max"): {"fusion": "max"},
        ("msa_awmse", "tau_0.2"): {"tau": 0.2},
        ("msa_awmse", "alpha_beta"): {"alpha": 2.0, "beta": 0.1},
        ("msa_awmse", "no_mask"): {"use_mask": False},
        ("msa_awmse", "on_student"): {"on_student": True},
        ("msa_awmse", "eps"): {"msa_eps": 1e-3, "l2_eps": 1e-2, "awmse_eps": 1e-3},
        ("fitnet", "w"): {"loss_weight": 2.5},
        ("at", "w"): {"loss_weight": 1.0},
        ("cwd", "tau"): {"tau": 4.0, "loss_weight": 1.0},
        ("pkd", "w"): {"loss_weight": 3.0},
        ("mgd", "unit"): {"alpha_mgd": 1.0, "lambda_mgd": 0.5},
        ("mgd", "keep_all"): {"alpha_mgd": 1.0, "lambda_mgd": 0.0},
        ("logit_kd", "tau"): {"tau": 2.0, "loss_weight": 1.0},
    }
)
_FGD_TERMS = ("alpha_fgd", "beta_fgd", "gamma_fgd", "lambda_fgd")
for _term in _FGD_TERMS:
    VARIANTS[("fgd", _term)] = {k: (1.0 if k == _term else 0.0) for k in _FGD_TERMS}
VARIANTS[("fgd", "unit_temp2")] = {"temp": 2.0, **{k: 1.0 for k in _FGD_TERMS}}

FEATURES = ("random", "hot", "zeros")
MASKS = ("target", "empty", "none")


# ---------------------------------------------------------------- inputs


def _channels(name: str) -> int:
    return 1 if name == "logit_kd" else C


def _features(name: str, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(t, s) float32 (B, C, H, W), or (B, 1, H, W) logits for logit_kd.

    ``random``: standard normal. ``hot``: zero but for one pixel per image (image 0 inside,
    image 1 in the top-right corner, where the pooling windows are clipped) holding different
    vectors in t and s (large logits, +-20, for logit_kd). ``zeros``: both zero.
    """
    ch = _channels(name)
    rng = np.random.default_rng(seed)
    shape = (B, ch, H, W)
    if kind == "random":
        return (
            rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal(shape).astype(np.float32),
        )
    t = np.zeros(shape, np.float32)
    s = np.zeros(shape, np.float32)
    if kind == "hot":
        for img, (y, x) in enumerate(((3, 4), (0, W - 1))):
            if name == "logit_kd":
                t[img, 0, y, x] = 20.0 if img == 0 else -3.0
                s[img, 0, y, x] = -4.0 if img == 0 else 20.0
            else:
                t[img, :, y, x] = 3.0 * rng.standard_normal(ch)
                s[img, :, y, x] = 3.0 * rng.standard_normal(ch)
    elif kind != "zeros":  # pragma: no cover
        raise ValueError(kind)
    return t, s


def _mask(name: str, kind: str) -> np.ndarray | None:
    """GT mask at input resolution (the stage's for logit_kd): ``target``, ``empty``, ``none``.

    ``target``: a blob straddling pooling cells in image 0, one pixel in image 1 (at the corner
    where the ``hot`` feature has its pixel), so image 1 is mostly background.
    """
    if kind == "none":
        return None
    s = 1 if name == "logit_kd" else STRIDE
    m = np.zeros((B, 1, H * s, W * s), np.float32)
    if kind == "target":
        m[0, 0, 3 * s - 1 : 4 * s + 1, 4 * s : 5 * s + 1] = 1.0
        m[1, 0, 0, W * s - 1] = 1.0
    return m


def _noise(seed: int = 7) -> np.ndarray:
    """MGD's uniform noise.

    It keeps the ``hot`` pixel of image 0 and drops that of image 1, and holds the values 0.75
    and 0.5 (the default and the ``unit`` lambda_mgd) exactly: ``noise >= lambda`` keeps them.
    """
    noise = np.random.default_rng(seed).random((B, 1, H, W)).astype(np.float32)
    noise[0, 0, 3, 4] = 0.9
    noise[1, 0, 0, W - 1] = 0.1
    noise[0, 0, 5, 5] = 0.75
    noise[1, 0, 2, 2] = 0.5
    return noise


# ---------------------------------------------------------------- framework losses


def _torch_loss(name: str, params: dict, seed: int = 3) -> tuple[torch.nn.Module, dict]:
    """The torch stage loss with randomised learnable weights, and those weights as numpy."""
    loss = t_loss_class(name)(_channels(name), params)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loss.parameters():  # FGD's zero-initialised last convs become non-trivial
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    weights = {k: v.detach().numpy().copy() for k, v in loss.state_dict().items()}
    return loss, weights


def _t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _cwd_condition(t: np.ndarray, s: np.ndarray, params: dict) -> float:
    """``loss_weight tau^2 mean_{b,c} sum_hw p_t (|log p_t| + |log p_s|)`` (float64)."""
    p = resolve_params("cwd", params)
    b, c = t.shape[:2]

    def log_softmax(x):
        z = x.reshape(b, c, -1).astype(np.float64) / p["tau"]
        z = z - z.max(axis=2, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=2, keepdims=True))

    lt, ls = log_softmax(t), log_softmax(s)
    terms = np.exp(lt) * (np.abs(lt) + np.abs(ls))
    return float(p["loss_weight"] * p["tau"] ** 2 * terms.sum() / (b * c))


def _close(fw: float, ref: float, what: str, extra: float = 0.0, atol: float = ATOL) -> float:
    """Assert ``|fw - ref| <= atol + RTOL |ref| + extra``; return ``|fw - ref|``."""
    err = abs(fw - ref)
    assert np.isfinite(fw) and np.isfinite(ref), what
    tol = atol + RTOL * abs(ref) + extra
    assert err <= tol, f"{what}: framework {fw!r}, oracle {ref!r}, |d| {err:.3g} > {tol:.3g}"
    return err


def _close_loss(name, fw, ref, t, s, params, what, atol: float = ATOL) -> float:
    """:func:`_close` with the conditioning term of CWD."""
    extra = COND_ULPS * EPS32 * _cwd_condition(t, s, params) if name == "cwd" else 0.0
    return _close(fw, ref, what, extra, atol)


def _oracle(name, t, s, mask, noise, params, weights) -> float:
    return o.ORACLE_LOSSES[name](t, s, mask, noise, params, weights)


# ---------------------------------------------------------------- the oracle stands alone


def test_oracle_imports_no_framework():
    code = (
        "import sys, parity.oracle; "
        "bad = [m for m in ('torch', 'mindspore', 'ms_impl', 'torch_ref') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True)
    assert res.returncode == 0, res.stderr.decode() + res.stdout.decode()


def test_avg_pool_excludes_padding_by_hand():
    a = np.arange(20, dtype=np.float64).reshape(1, 1, 4, 5)
    p = o.avg_pool_exclude_pad(a, 3)
    assert p[0, 0, 0, 0] == pytest.approx(np.mean([0, 1, 5, 6]))
    assert p[0, 0, 1, 1] == pytest.approx(a[0, 0, 0:3, 0:3].mean())
    assert p[0, 0, 3, 4] == pytest.approx(np.mean([13, 14, 18, 19]))


def test_msa_map_properties():
    t, _ = _features("msa_awmse", "hot")
    m = o.msa_map(t)
    np.testing.assert_allclose(m.mean(axis=(2, 3)), 1.0, rtol=1e-12)
    # A single hot pixel: its contrast normalises to ~1, every other pixel's is exactly 0.
    ratio = m[0, 0, 3, 4] / m[0, 0, 0, 0]
    assert ratio == pytest.approx(np.exp(2.0), rel=1e-5)
    assert np.all(np.delete(m[0, 0].ravel(), 3 * W + 4) == m[0, 0, 0, 0])
    assert np.all(o.msa_map(np.zeros((1, 3, 4, 6))) == 1.0)  # flat: exactly 1, so [M > 1] empty


def test_awmse_region_weights_sum_to_alpha_beta():
    rng = np.random.default_rng(0)
    m = rng.random((2, 1, 4, 5)) + 0.1
    r = np.zeros((2, 1, 4, 5))
    r[0, 0, 1, 2] = 1.0  # image 1 has no target: background term only
    t = np.zeros((2, 3, 4, 5))
    s = np.ones((2, 3, 4, 5)) / np.sqrt(3.0)  # d = 1 everywhere: the loss is the weight total
    val = o.awmse(t, s, m, r, alpha=2.0, beta=0.5, eps=1e-12)
    assert val == pytest.approx(((2.0 + 0.5) + 0.5) / 2, rel=1e-9)
    # batch: the weights sum to alpha (beta) over the whole batch, not per image
    val = o.awmse(t, s, m, r, alpha=2.0, beta=0.5, eps=1e-12, reduce="batch")
    assert val == pytest.approx(2.0 + 0.5, rel=1e-9)


def test_awmse_batch_weighs_every_target_pixel_alike():
    """Per image, a one-pixel target's pixel weighs as much as a 4-pixel target's four
    together; over the batch every target pixel weighs the same (uniform M)."""
    m = np.ones((2, 1, 4, 4))
    r = np.zeros((2, 1, 4, 4))
    r[0, 0, 0, 0] = 1.0  # image 0: one target pixel
    r[1, 0, :2, :2] = 1.0  # image 1: four
    t = np.zeros((2, 1, 4, 4))
    s = np.zeros((2, 1, 4, 4))
    s[0, 0, 0, 0] = 1.0  # error on image 0's target pixel only: d = 1 there
    per_image = o.awmse(t, s, m, r, alpha=1.0, beta=0.0, eps=1e-12)
    batch = o.awmse(t, s, m, r, alpha=1.0, beta=0.0, eps=1e-12, reduce="batch")
    assert per_image == pytest.approx(0.5, rel=1e-9)  # (1 + 0) / 2 images
    assert batch == pytest.approx(1.0 / 5.0, rel=1e-9)  # 1 of 5 target pixels
    # identical images: the two reductions agree
    m2, r2 = np.repeat(m[:1], 2, 0), np.repeat(r[1:], 2, 0)
    t2, s2 = np.zeros((2, 1, 4, 4)), np.full((2, 1, 4, 4), 0.3)
    assert o.awmse(t2, s2, m2, r2, reduce="batch") == pytest.approx(o.awmse(t2, s2, m2, r2))


def test_out_map_loss_by_hand():
    """The output-map term on flat logit maps: ``d = (sigmoid(a) - sigmoid(b))^2`` at every
    pixel and a uniform ``M``, so the term is the region weights' total times ``d``; the
    normalisation asked for is ignored, and ``lam``/``out_weight`` weigh it in the total."""
    mask = np.zeros((2, 1, 4, 6))
    mask[0, 0, 1, 2] = 1.0  # image 1 has no target: background term only
    t, s = np.full((2, 1, 4, 6), 2.0), np.full((2, 1, 4, 6), -1.0)
    d = (1 / (1 + np.exp(-2.0)) - 1 / (1 + np.exp(1.0))) ** 2
    p = {"alpha": 2.0, "beta": 0.5, "awmse_eps": 1e-12}
    for normalize in ("l2", "l2_map", "none"):
        val = o.out_map_loss(t, s, mask, {**p, "normalize": normalize})
        assert val == pytest.approx(((2.0 + 0.5) + 0.5) / 2 * d, rel=1e-9)
    assert o.out_map_loss(t, t, mask) == 0.0
    assert o.msa_awmse_total([1.0, 2.0], [1.0, 0.5], 0.5, 4.0, 0.25) == 0.5 * (2.0 + 1.0)
    assert o.msa_awmse_total([1.0], [1.0], 2.0, 4.0, 0.0) == 2.0  # out_weight 0: no term
    with pytest.raises(ValueError, match="needs out_term"):
        o.msa_awmse_total([1.0], [1.0], 1.0, None, 0.5)


@pytest.mark.parametrize("seed", [3, 21])  # the seeds of the torch and MindSpore comparisons
@pytest.mark.parametrize("feat", ["random", "hot"])
@pytest.mark.parametrize("name", ["mgd", "fgd"])
def test_learnable_weights_all_matter(name, feat, seed):
    """Every learnable array changes the value, so the comparisons exercise all of them.

    FGD's ``conv_mask_*.bias`` is the exception: a softmax does not see a shift of its logits.
    """
    params = VARIANTS[("fgd", "lambda_fgd") if name == "fgd" else ("mgd", "unit")]
    _, weights = _torch_loss(name, params, seed=seed)
    t, s = _features(name, feat)
    mask, noise = _mask(name, "target"), _noise()
    base = _oracle(name, t, s, mask, noise, params, weights)
    rng = np.random.default_rng(0)
    for key in weights:
        w2 = dict(weights)
        w2[key] = weights[key] + 0.25 * rng.standard_normal(weights[key].shape)
        changed = abs(_oracle(name, t, s, mask, noise, params, w2) - base) > 1e-6 * abs(base)
        assert changed == (not key.startswith("conv_mask_") or key.endswith("weight")), key


def test_weights_and_params_are_checked():
    name = "fgd"
    _, weights = _torch_loss(name, {})
    t, s = _features(name, "random")
    mask, noise = _mask(name, "target"), _noise()
    with pytest.raises(ValueError, match="missing"):
        _oracle(name, t, s, mask, noise, {}, {k: v for k, v in weights.items() if "3" not in k})
    with pytest.raises(ValueError, match="unexpected"):
        _oracle("fitnet", t, s, mask, noise, {}, {"x": np.zeros(1)})
    with pytest.raises(ValueError, match="mask"):
        _oracle(name, t, s, None, noise, {}, weights)
    with pytest.raises(ValueError, match="unknown parameter"):
        _oracle("cwd", t, s, mask, noise, {"temp": 1.0}, None)


# ---------------------------------------------------------------- stage losses vs torch


@pytest.mark.parametrize("ch", [C, 5])
@pytest.mark.parametrize("name", METHODS)
def test_weight_names_match_torch_and_mindspore(name, ch):
    ch = _channels(name) if name == "logit_kd" else ch
    expected = o.loss_weight_shapes(name, ch)
    tl = t_loss_class(name)(ch, {})
    assert {k: tuple(v.shape) for k, v in tl.state_dict().items()} == expected
    ml = ms_loss_class(name)(ch, {})
    got = {p.name: tuple(p.shape) for p in ml.get_parameters()}
    assert got == {name_map(ml).to_ms(k): v for k, v in expected.items()}


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("feat", FEATURES)
@pytest.mark.parametrize("variant", sorted(VARIANTS), ids=lambda v: f"{v[0]}-{v[1]}")
def test_loss_value_vs_torch(variant, feat, mask_kind):
    name, _ = variant
    params = VARIANTS[variant]
    t, s = _features(name, feat)
    mask, noise = _mask(name, mask_kind), _noise()
    tl, weights = _torch_loss(name, params)
    if name == "fgd" and mask is None:
        with pytest.raises(ValueError, match="mask"):
            _oracle(name, t, s, mask, noise, params, weights)
        return
    ref = _oracle(name, t, s, mask, noise, params, weights)
    with torch.no_grad():
        fw = float(tl(_t(t), _t(s), _t(mask), _t(noise)))
    _close_loss(name, fw, ref, t, s, params, f"{variant} {feat} {mask_kind}")
    if variant == ("fgd", "alpha_fgd") and mask_kind == "empty":
        assert ref == 0.0  # the foreground term alone, and no foreground
    elif feat == "random":
        assert abs(ref) > 1e-3, "a random case must give a loss well above ATOL"


@pytest.mark.parametrize("name", METHODS)
def test_loss_grad_vs_torch(name):
    """Torch's gradient w.r.t. s against the oracle's directional derivatives (M constant)."""
    params = VARIANTS[(name, "unit" if name == "mgd" else "default")]
    t, s = _features(name, "random", seed=11)
    mask, noise = _mask(name, "target"), _noise()
    tl, weights = _torch_loss(name, params)
    st = _t(s).clone().requires_grad_(True)
    tl(_t(t), st, _t(mask), _t(noise)).backward()
    g = st.grad.numpy().astype(np.float64)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    v_rand = np.random.default_rng(5).standard_normal(s.shape)
    for v in (g / np.abs(g).max(), v_rand):

        def fn(x, v=v):
            return _oracle(name, t, x, mask, noise, params, weights)

        dd = o.directional_derivative(fn, s, v)
        fw = float((g * v).sum())
        scale = float(np.abs(g * v).sum())
        assert abs(fw - dd) <= GRAD_RTOL * scale, f"{name}: <g, v> {fw!r}, oracle {dd!r}"


@pytest.mark.parametrize(
    "variant",
    [(n, "default") for n in METHODS if n != "logit_kd"] + [("msa_awmse", "eps")],
    ids=lambda v: f"{v[0]}-{v[1]}",
)
def test_tiny_features_vs_torch(variant):
    """Features of order 1e-5, where the guards (eps) are close to or inside the values.

    Relative comparison only (no ATOL): the quadratic losses are of order 1e-10 here.
    Not logit_kd: it has no guard, and its float32 form ``softplus(z_s) - softplus(z_t) -
    p (z_s - z_t)`` cancels to noise (about 1e-7 per pixel) when the logits are this close.
    """
    name, _ = variant
    params = VARIANTS[variant]
    t, s = _features(name, "random", seed=13)
    t, s = (1e-5 * t).astype(np.float32), (1e-5 * s).astype(np.float32)
    mask, noise = _mask(name, "target"), _noise()
    tl, weights = _torch_loss(name, params)
    ref = _oracle(name, t, s, mask, noise, params, weights)
    with torch.no_grad():
        fw = float(tl(_t(t), _t(s), _t(mask), _t(noise)))
    assert ref != 0.0
    _close_loss(name, fw, ref, t, s, params, f"{variant} tiny", atol=0.0)


# ---------------------------------------------------------------- pieces vs torch


@pytest.mark.parametrize("feat", FEATURES)
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"scales": (3,)},
        {"scales": (5, 9), "fusion": "max"},
        {"tau": 0.2, "eps": 1e-3},
    ],
    ids=["default", "k3", "k59max", "tau_eps"],
)
def test_msa_map_vs_torch(feat, opts):
    t, s = _features("msa_awmse", feat)
    ref = o.msa_map(t, **opts)
    fw = t_method.msa_map(_t(t), **opts).numpy()
    np.testing.assert_allclose(fw, ref, rtol=RTOL, atol=ATOL)
    # Student fusion, as MSAAWMSELoss.attention does it (elementwise max of the two maps).
    kw = {"scales": list(opts.get("scales", (3, 5, 7))), "fusion": opts.get("fusion", "mean")}
    loss = t_method.MSAAWMSELoss(C, {**kw, "on_student": True})
    fused = loss.attention(_t(t), _t(s)).numpy()
    ref_f = o.msa_map(t, scales=kw["scales"], fusion=kw["fusion"], s=s)
    np.testing.assert_allclose(fused, ref_f, rtol=RTOL, atol=ATOL)


def test_mask_to_vs_torch():
    mask = _mask("fgd", "target")
    for h, w in ((H, W), (H * STRIDE, W * STRIDE), (1, 1)):
        ref = o.mask_to(mask, h, w)
        np.testing.assert_array_equal(t_method.mask_to(_t(mask), h, w).numpy(), ref)
    assert o.mask_to(mask, H, W)[1, 0, 0, W - 1] == 1.0  # one pixel marks its whole cell
    with pytest.raises(ValueError):
        o.mask_to(mask, 4, W)


def test_l2_normalize_vs_torch():
    x = np.random.default_rng(2).standard_normal((B, C, H, W)).astype(np.float32)
    x[0, :, 1, 2] = 0.0  # a zero vector stays zero
    x[1, :, 3, 3] = 1e-8  # below eps: divided by eps, not by its norm
    for eps in (1e-6, 1e-2):
        ref = o.l2_normalize(x, eps)
        np.testing.assert_allclose(t_method.l2_normalize(_t(x), eps).numpy(), ref, RTOL, ATOL)
    ref = o.l2_normalize(x)
    assert np.all(ref[0, :, 1, 2] == 0.0)
    np.testing.assert_allclose(ref[1, :, 3, 3], 1e-2)
    np.testing.assert_allclose(np.sqrt((ref**2).sum(axis=1))[0, 0, 0], 1.0, rtol=1e-12)


def test_l2_map_normalize_vs_torch():
    x = np.random.default_rng(3).standard_normal((B, C, H, W)).astype(np.float32)
    x[1] *= 40.0  # the scale of one image does not leak into the other
    x[1, :, 2, 2] *= 5.0  # a strong pixel stays 5x its neighbours' scale (l2 would erase it)
    for eps in (1e-6, 1e-2):
        ref = o.l2_map_normalize(x, eps)
        np.testing.assert_allclose(t_method.l2_map_normalize(_t(x), eps).numpy(), ref, RTOL, ATOL)
    ref = o.l2_map_normalize(x)
    rms = np.sqrt((ref**2).sum(axis=1).mean(axis=(1, 2)))
    np.testing.assert_allclose(rms, [1.0, 1.0], rtol=1e-12)
    norms = np.sqrt((ref**2).sum(axis=1))
    np.testing.assert_allclose(
        norms[1, 2, 2] / norms[1, 2, 3],
        np.sqrt((x[1, :, 2, 2] ** 2).sum()) / np.sqrt((x[1, :, 2, 3] ** 2).sum()),
        rtol=1e-6,
    )
    assert np.all(o.l2_map_normalize(np.zeros((1, C, H, W))) == 0.0)  # a zero map stays zero


def test_soft_iou_and_task_loss_vs_torch():
    rng = np.random.default_rng(4)
    logits = (4.0 * rng.standard_normal((B, 1, 14, 18))).astype(np.float32)
    aux = [(4.0 * rng.standard_normal((B, 1, 14, 18))).astype(np.float32) for _ in range(3)]
    for kind in ("target", "empty"):
        mask = _mask("fgd", kind)
        for smooth in (1.0, 0.1):
            ref = o.soft_iou_loss(logits, mask, smooth)
            _close(float(t_losses.soft_iou_loss(_t(logits), _t(mask), smooth)), ref, "soft_iou")
        for heads in ([], aux):
            ref = o.task_loss(logits, heads, mask)
            fw = float(t_losses.task_loss(_t(logits), tuple(_t(a) for a in heads), _t(mask)))
            _close(fw, ref, f"task_loss {len(heads)} aux")
    # An empty mask and a confidently empty prediction: iou ~ 1, loss ~ 0.
    assert o.soft_iou_loss(np.full((1, 1, 4, 4), -50.0), np.zeros((1, 1, 4, 4))) < 1e-12


def _connector_weights(seed: int, s_ch: int = 3, t_ch: int = C) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = np.float32
    return {
        "conv.weight": rng.standard_normal((t_ch, s_ch, 1, 1)).astype(f),
        "bn.weight": (1.0 + 0.5 * rng.standard_normal(t_ch)).astype(f),
        "bn.bias": (0.5 * rng.standard_normal(t_ch)).astype(f),
        "bn.running_mean": rng.standard_normal(t_ch).astype(f),
        "bn.running_var": (0.5 + rng.random(t_ch)).astype(f),
    }


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_connector_vs_torch(train):
    weights = _connector_weights(8)
    x = (2.0 * np.random.default_rng(9).standard_normal((B, 3, H, W)) + 1.0).astype(np.float32)
    net = t_method.Connector(3, C)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    net.train(train)
    with torch.no_grad():
        fw = net(_t(x)).numpy()
    ref, stats = o.connector(x, weights, train)
    np.testing.assert_allclose(fw, ref, rtol=RTOL, atol=ATOL)
    for key in ("running_mean", "running_var"):
        got = getattr(net.bn, key).numpy()
        np.testing.assert_allclose(got, stats[f"bn.{key}"], rtol=RTOL, atol=ATOL)
        moved = not np.allclose(stats[f"bn.{key}"], weights[f"bn.{key}"], rtol=1e-3)
        assert moved == train, key  # train mode moves the running statistics, eval does not
    if train:  # batch statistics: each channel is standardised before the affine map
        z = (ref - weights["bn.bias"].reshape(1, -1, 1, 1)) / weights["bn.weight"].reshape(
            1, -1, 1, 1
        )
        np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0.0, atol=1e-9)


def test_conv2d_and_layer_norm_vs_torch():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((B, 4, H, W)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    for pad in (0, 1, 2):
        ref = o.conv2d(x, w, b, padding=pad)
        fw = torch.nn.functional.conv2d(_t(x), _t(w), _t(b), padding=pad).numpy()
        np.testing.assert_allclose(fw, ref, rtol=RTOL, atol=ATOL)
    y = rng.standard_normal((B, 3, 1, 1)).astype(np.float32)
    lw = rng.standard_normal((3, 1, 1)).astype(np.float32)
    lb = rng.standard_normal((3, 1, 1)).astype(np.float32)
    fw = torch.nn.functional.layer_norm(_t(y), [3, 1, 1], _t(lw), _t(lb), eps=1e-5).numpy()
    np.testing.assert_allclose(fw, o.layer_norm(y, lw, lb), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- MindSpore twin


@pytest.fixture(scope="module")
def _pynative():
    set_mode("pynative")
    yield


def _ms_loss(name: str, params: dict, weights: dict):
    """The MindSpore stage loss holding ``weights`` (PyTorch names mapped by the NameMap)."""
    ml = ms_loss_class(name)(_channels(name), params)
    arrays = name_map(ml).dict_to_ms(weights)
    params_ms = {p.name: p for p in ml.get_parameters()}
    assert set(arrays) == set(params_ms), set(arrays) ^ set(params_ms)
    for key, value in arrays.items():
        params_ms[key].set_data(ms.Tensor(value))
    return ml


def _m(a: np.ndarray | None):
    return None if a is None else ms.Tensor(a)


# The mask matters to msa_awmse (R = [M > 1] without one) and to FGD (an empty one: no
# foreground term); the other losses ignore it.
MS_CASES = [
    (variant, feat, mask_kind)
    for variant in sorted(VARIANTS)
    for feat in FEATURES
    for mask_kind in (("target", "none") if variant[0] in ("msa_awmse", "fgd") else ("target",))
]


@pytest.mark.usefixtures("_pynative")
@pytest.mark.parametrize(
    ("variant", "feat", "mask_kind"),
    MS_CASES,
    ids=lambda c: "-".join(c) if isinstance(c, tuple) else c,
)
def test_loss_value_vs_mindspore(variant, feat, mask_kind):
    name, _ = variant
    params = VARIANTS[variant]
    t, s = _features(name, feat)
    if name == "fgd" and mask_kind == "none":
        mask_kind = "empty"  # FGD needs a mask; zeros stand for "no target"
    mask, noise = _mask(name, mask_kind), _noise()
    _, weights = _torch_loss(name, params, seed=21)
    ml = _ms_loss(name, params, weights)
    ref = _oracle(name, t, s, mask, noise, params, weights)
    fw = float(ml(_m(t), _m(s), _m(mask), _m(noise)).asnumpy())
    _close_loss(name, fw, ref, t, s, params, f"mindspore {variant} {feat} {mask_kind}")


@pytest.mark.usefixtures("_pynative")
def test_msa_awmse_without_mask_vs_mindspore():
    t, s = _features("msa_awmse", "random", seed=4)
    ml = ms_loss_class("msa_awmse")(C, {})
    ref = o.msa_awmse_loss(t, s, None, {})
    assert ref != o.msa_awmse_loss(t, s, _mask("msa_awmse", "target"), {})
    _close(float(ml(_m(t), _m(s), None, None).asnumpy()), ref, "mindspore msa_awmse, R=[M>1]")


@pytest.mark.usefixtures("_pynative")
def test_pieces_vs_mindspore():
    t, s = _features("msa_awmse", "hot")
    np.testing.assert_allclose(ms_method.msa_map(_m(t)).asnumpy(), o.msa_map(t), RTOL, ATOL)
    t, s = _features("msa_awmse", "random")
    np.testing.assert_allclose(ms_method.msa_map(_m(t)).asnumpy(), o.msa_map(t), RTOL, ATOL)
    np.testing.assert_allclose(
        ms_method.l2_normalize(_m(t)).asnumpy(), o.l2_normalize(t), RTOL, ATOL
    )
    np.testing.assert_allclose(
        ms_method.l2_map_normalize(_m(t)).asnumpy(), o.l2_map_normalize(t), RTOL, ATOL
    )
    logits, mask = t[:, :1], _mask("msa_awmse", "target")[:, :, ::STRIDE, ::STRIDE].copy()
    fw = float(ms_losses.task_loss(_m(logits), (_m(s[:, :1]),), _m(mask)).asnumpy())
    _close(fw, o.task_loss(logits, [s[:, :1]], mask), "mindspore task_loss")


@pytest.mark.usefixtures("_pynative")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_connector_vs_mindspore(train):
    weights = _connector_weights(8)
    x = (2.0 * np.random.default_rng(9).standard_normal((B, 3, H, W)) + 1.0).astype(np.float32)
    net = ms_method.Connector(3, C)
    arrays = name_map(net).dict_to_ms(weights)
    params = {p.name: p for p in net.get_parameters()}
    assert set(arrays) == set(params), set(arrays) ^ set(params)
    for key, value in arrays.items():
        params[key].set_data(ms.Tensor(value))
    net.set_train(train)
    fw = net(_m(x)).asnumpy()
    ref, stats = o.connector(x, weights, train)
    np.testing.assert_allclose(fw, ref, rtol=RTOL, atol=ATOL)
    for key, ms_key in (("running_mean", "moving_mean"), ("running_var", "moving_variance")):
        got = params[f"bn.{ms_key}"].asnumpy()
        np.testing.assert_allclose(got, stats[f"bn.{key}"], rtol=RTOL, atol=ATOL, err_msg=key)
