"""DNANet twins (torch_ref and ms_impl): build, shapes, gradients, names, counts, parity.

The cross-framework checks copy torch's state_dict into the MindSpore net with a local name map
(BatchNorm renames only); they do not depend on the weight-interchange module.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn as msnn

import ms_impl  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before MindSpore's first conv)
from irkd.zoo import MODELS, STAGES, stage_channels
from ms_impl.models import create_model as ms_create
from ms_impl.models import dnanet as ms_dnanet
from ms_impl.runtime import set_mode
from torch_ref.models import create_model as torch_create
from torch_ref.models import dnanet as torch_dnanet

VARIANTS = sorted(n for n, s in MODELS.items() if s.family == "dnanet")
#: The fast test set runs the forward and gradient checks on the smallest variant; the
#: others (the same code at other widths and depths) run with ``-m slow``.
FAST_VARIANT = "dnanet_xxs"
SLOW = pytest.mark.slow


AUX = ("aux1", "aux2", "aux3")
STRIDES = {**{f"enc{i}": 2**i for i in range(5)}, **{f"dec{i}": 2**i for i in range(4)}}
BN_RENAME = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
TOL = 1e-4  # eval / train-mode forward agreement (abs)
LIVE = 1e-5  # a "non-zero" gradient: above this fraction of the largest one


def _variants() -> list:
    """VARIANTS as parameters, all but :data:`FAST_VARIANT` marked slow."""
    return [n if n == FAST_VARIANT else pytest.param(n, marks=SLOW) for n in VARIANTS]


@pytest.fixture(autouse=True)
def _pynative():
    set_mode("pynative")
    yield
    set_mode("pynative")


# ---------------------------------------------------------------- helpers


def _bn_modules(net: torch.nn.Module) -> set[str]:
    return {n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def _ms_name(torch_name: str, bn: set[str]) -> str:
    module, leaf = torch_name.rsplit(".", 1)
    return f"{module}.{BN_RENAME[leaf]}" if module in bn else torch_name


def _torch_to_ms_names(net: torch.nn.Module) -> dict[str, str]:
    """torch state_dict name -> MindSpore parameter name (num_batches_tracked left out)."""
    bn = _bn_modules(net)
    return {k: _ms_name(k, bn) for k in net.state_dict() if not k.endswith("num_batches_tracked")}


def _copy_torch_to_ms(tnet: torch.nn.Module, mnet: msnn.Cell) -> None:
    params = {p.name: p for p in mnet.get_parameters()}
    names = _torch_to_ms_names(tnet)
    assert set(names.values()) == set(params), set(names.values()) ^ set(params)
    state = tnet.state_dict()
    for tname, mname in names.items():
        params[mname].set_data(ms.Tensor(state[tname].detach().numpy().copy()))


def _randomize_bn(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, of realistic scale.

    The running statistics are the batch statistics of one random batch, then perturbed, so
    that eval-mode activations neither vanish nor equal the train-mode ones.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            m.momentum = None  # cumulative average: one batch sets the statistics
            m.reset_running_stats()
        was_training = net.training
        net.train()
        net(torch.randn(2, net.in_channels, 64, 64, generator=g))
        net.train(was_training)
        for m in bns:
            c = m.num_features
            m.momentum = 0.1
            std = m.running_var.sqrt()
            m.running_mean.add_(torch.randn(c, generator=g) * 0.2 * std)
            m.running_var.mul_(torch.rand(c, generator=g) * 0.6 + 0.7)


def _activate_channel_attention(net: torch.nn.Module) -> None:
    """Make every channel-attention hidden unit active (positive fc1 weights).

    Narrow nets have one hidden unit per channel attention (``max(1, C // 16)``); with random
    weights its ReLU is often dead on a small batch and fc1/fc2 get an exactly zero gradient,
    which is the architecture, not a wiring bug. The max-pooled input after BN is positive, so
    positive fc1 weights keep the unit active.
    """
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch_dnanet.ChannelAttention):
                m.fc1.weight.abs_()


def _pair(name: str, deep_supervision: bool = True, seed: int = 0):
    """Torch and MindSpore nets of a variant holding the same weights and BN statistics."""
    torch.manual_seed(seed)
    tnet = torch_create(name, deep_supervision=deep_supervision)
    _randomize_bn(tnet, seed + 1)
    mnet = ms_create(name, deep_supervision=deep_supervision)
    _copy_torch_to_ms(tnet, mnet)
    return tnet, mnet


def _input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _n_trainable_torch(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _n_trainable_ms(net: msnn.Cell) -> int:
    return sum(int(np.prod(p.shape)) for p in net.trainable_params())


def _check_features(logits, feats, shape, name, ds, to_np) -> None:
    b, _, h, w = shape
    names = STAGES + (AUX if ds else ())
    assert tuple(feats) == names
    assert tuple(logits.shape) == (b, 1, h, w)
    assert np.isfinite(to_np(logits)).all()
    chans = stage_channels(name)
    for k in STAGES:
        s = STRIDES[k]
        assert tuple(feats[k].shape) == (b, chans[k], h // s, w // s), k
        assert np.isfinite(to_np(feats[k])).all(), k
    for k in AUX if ds else ():
        assert tuple(feats[k].shape) == (b, 1, h, w), k


class _Features(msnn.Cell):
    """Graph-mode wrapper returning ``forward_features`` (the dict) as the graph output."""

    def __init__(self, net: msnn.Cell) -> None:
        super().__init__()
        self.net = net

    def construct(self, x):
        return self.net.forward_features(x)


class _FeaturesTuple(msnn.Cell):
    """Graph-mode wrapper returning ``forward_features_tuple``."""

    def __init__(self, net: msnn.Cell) -> None:
        super().__init__()
        self.net = net

    def construct(self, x):
        return self.net.forward_features_tuple(x)


class _DictLoss(msnn.Cell):
    """A loss that consumes the feature dict inside the compiled graph (the training use)."""

    def __init__(self, net: msnn.Cell) -> None:
        super().__init__()
        self.net = net

    def construct(self, x, w):
        y, f = self.net.forward_features(x)
        loss = (y * w).mean()
        for k in f:
            loss = loss + (f[k] * f[k]).mean() * 0.01
        return loss


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("name", VARIANTS)
def test_variants_build_and_describe_stages(name):
    for create in (torch_create, ms_create):
        net = create(name)
        assert net.stage_channels == stage_channels(name)
        assert net.stage_strides == STRIDES
        assert net.feature_names == STAGES
        assert create(name, deep_supervision=True).feature_names == STAGES + AUX


@pytest.mark.parametrize("cls", [torch_dnanet.DNANet, ms_dnanet.DNANet], ids=["torch", "ms"])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nb_filter": (8, 16, 32, 64)}, "nb_filter must have 5"),
        ({"nb_filter": (8, 16, 0, 64, 128)}, "nb_filter entries"),
        ({"nb_filter": "abcde"}, "nb_filter must be a sequence"),
        ({"num_blocks": (1, 1, 1)}, "num_blocks must have 4"),
        ({"num_blocks": (1, -1, 1, 1)}, "num_blocks entries"),
        ({"num_blocks": (1, 1.5, 1, 1)}, "num_blocks entries"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"deep_supervision": 1}, "deep_supervision"),
    ],
)
def test_invalid_arguments(cls, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls(**kwargs)


def test_input_size_must_be_multiple_of_16():
    tnet = torch_create("dnanet_xxs")
    with pytest.raises(ValueError, match="multiples of 16"):
        tnet(torch.zeros(1, 1, 40, 48))
    mnet = ms_create("dnanet_xxs")
    with pytest.raises(ValueError, match="multiples of 16"):
        mnet(ms.Tensor(np.zeros((1, 1, 40, 48), np.float32)))


# ---------------------------------------------------------------- names and counts


@pytest.mark.parametrize(
    ("name", "ds"),
    [
        # fast: the smallest variant, and the teacher with deep supervision (its count is known)
        pytest.param(n, ds, id=f"{n}-{'ds' if ds else 'plain'}", marks=() if fast else SLOW)
        for n in VARIANTS
        for ds in (False, True)
        for fast in [n == FAST_VARIANT or (n == "dnanet" and ds)]
    ],
)
def test_parameter_names_and_counts_match(name, ds):
    tnet = torch_create(name, deep_supervision=ds)
    mnet = ms_create(name, deep_supervision=ds)
    names = _torch_to_ms_names(tnet)
    assert sorted(names.values()) == sorted(p.name for p in mnet.get_parameters())
    trainable = sorted(names[n] for n, _ in tnet.named_parameters())
    assert trainable == sorted(p.name for p in mnet.trainable_params())
    for tname, t in tnet.state_dict().items():
        if tname in names:
            (p,) = [p for p in mnet.get_parameters() if p.name == names[tname]]
            assert tuple(p.shape) == tuple(t.shape), tname
    n_torch, n_ms = _n_trainable_torch(tnet), _n_trainable_ms(mnet)
    print(f"{name} ds={ds}: {n_torch} params (torch), {n_ms} (MindSpore)")
    assert n_torch == n_ms
    if name == "dnanet" and ds:
        assert round(n_torch / 1e6, 2) == 4.70


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize(
    "shape",
    [pytest.param((1, 1, 256, 256), marks=SLOW), (1, 1, 96, 160)],
    ids=["256", "96x160"],
)
@pytest.mark.parametrize("name", _variants())
def test_forward_shapes_both_frameworks(name, shape):
    x = _input(shape)
    for ds in (False, True):
        tnet = torch_create(name, deep_supervision=ds).eval()
        with torch.no_grad():
            logits, feats = tnet.forward_features(torch.from_numpy(x))
            assert torch.equal(tnet(torch.from_numpy(x)), logits)
        _check_features(logits, feats, shape, name, ds, lambda t: t.numpy())

        mnet = ms_create(name, deep_supervision=ds)
        mnet.set_train(False)
        logits, feats = mnet.forward_features(ms.Tensor(x))
        _check_features(logits, feats, shape, name, ds, lambda t: t.asnumpy())
        assert np.array_equal(mnet(ms.Tensor(x)).asnumpy(), logits.asnumpy())


def test_features_tuple_matches_dict():
    x = _input((1, 1, 32, 32))
    tnet, mnet = _pair("dnanet_xxs")
    tnet.eval()
    mnet.set_train(False)
    with torch.no_grad():
        out = tnet.forward_features_tuple(torch.from_numpy(x))
        logits, feats = tnet.forward_features(torch.from_numpy(x))
    assert len(out) == 1 + len(tnet.feature_names)
    t2 = torch_dnanet.features_to_dict(out, tnet.feature_names)
    assert torch.equal(t2[0], logits)
    assert all(torch.equal(t2[1][k], feats[k]) for k in feats)
    mout = mnet.forward_features_tuple(ms.Tensor(x))
    m_logits, m_feats = ms_dnanet.features_to_dict(mout, mnet.feature_names)
    assert tuple(m_feats) == tuple(feats)
    with pytest.raises(ValueError):
        ms_dnanet.features_to_dict(mout[:-1], mnet.feature_names)


# ---------------------------------------------------------------- gradients


def _gradients(tnet, mnet, train: bool, ds: bool):
    """Torch and MindSpore gradients (by torch name) of the same loss on 2x1x32x32."""
    x = _input((2, 1, 32, 32), 1)
    w = _input((2, 1, 32, 32), 2)
    aux = AUX if ds else ()

    tnet.train(train)
    tnet.zero_grad()
    logits, feats = tnet.forward_features(torch.from_numpy(x))
    wt = torch.from_numpy(w)
    loss = (logits * wt).mean() + sum((feats[k] * wt).mean() for k in aux)
    loss.backward()
    t_grads = {n: p.grad.numpy().copy() for n, p in tnet.named_parameters()}

    mnet.set_train(train)
    wm = ms.Tensor(w)

    def loss_fn(xm):
        y, f = mnet.forward_features(xm)
        total = (y * wm).mean()
        for k in aux:
            total = total + (f[k] * wm).mean()
        return total

    params = mnet.trainable_params()
    m_loss, m_grads = ms.value_and_grad(loss_fn, None, params)(ms.Tensor(x))
    by_ms_name = {p.name: g.asnumpy() for p, g in zip(params, m_grads, strict=True)}
    names = _torch_to_ms_names(tnet)
    m_grads = {n: by_ms_name[names[n]] for n in t_grads}
    return float(loss.detach()), float(m_loss), t_grads, m_grads


@pytest.mark.parametrize("ds", [pytest.param(False, marks=SLOW), True], ids=["plain", "ds"])
@pytest.mark.parametrize("name", _variants())
def test_every_parameter_gets_a_gradient_and_they_agree(name, ds):
    """Every parameter gets a gradient; torch and MindSpore agree, in eval and train mode.

    A parameter must get a gradient above ``LIVE`` x the largest one in eval or in train mode:
    in train mode the bias of a convolution followed by BatchNorm has an exactly zero gradient
    in exact arithmetic (batch statistics cancel it; what remains is rounding noise), and in
    eval mode a one-unit channel attention may see only negative inputs after BN.
    """
    torch.manual_seed(0)
    tnet = torch_create(name, deep_supervision=ds)
    _randomize_bn(tnet, 1)
    _activate_channel_attention(tnet)
    mnet = ms_create(name, deep_supervision=ds)
    _copy_torch_to_ms(tnet, mnet)

    live: dict[str, set[str]] = {"torch": set(), "MindSpore": set()}
    worst: dict[str, float] = {}
    for train in (False, True):
        t_loss, m_loss, t_grads, m_grads = _gradients(tnet, mnet, train=train, ds=ds)
        assert abs(t_loss - m_loss) < 1e-5
        scale = max(float(np.abs(g).max()) for g in t_grads.values())
        for side, grads in (("torch", t_grads), ("MindSpore", m_grads)):
            live[side] |= {n for n, g in grads.items() if np.abs(g).max() > LIVE * scale}
        worst["train" if train else "eval"] = (
            max(float(np.abs(g - m_grads[n]).max()) for n, g in t_grads.items()) / scale
        )
    print(f"{name} ds={ds}: max abs gradient diff / largest gradient {worst}")
    for side, names in live.items():
        dead = sorted(set(t_grads) - names)
        assert not dead, f"{side}: no gradient for {dead[:10]}"
    assert max(worst.values()) < 1e-4


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("name", _variants())
def test_eval_parity_256(name):
    """Eval mode, 1x1x256x256: logits within TOL (abs), features within TOL x max(1, |ref|).

    Features after ~40 layers reach magnitudes of ~10-40 here; float32 convolutions of the two
    frameworks differ by ~1e-6 relative per layer (each is that far from a float64
    reference), so an absolute 1e-4 bound on such features would sit at the float32 limit.
    """
    tnet, mnet = _pair(name, deep_supervision=True)
    tnet.eval()
    mnet.set_train(False)
    x = _input((1, 1, 256, 256), 3)
    with torch.no_grad():
        t_logits, t_feats = tnet.forward_features(torch.from_numpy(x))
    m_logits, m_feats = mnet.forward_features(ms.Tensor(x))
    refs = {"logits": t_logits.numpy(), **{k: v.numpy() for k, v in t_feats.items()}}
    outs = {"logits": m_logits.asnumpy(), **{k: v.asnumpy() for k, v in m_feats.items()}}
    diffs = {k: float(np.abs(refs[k] - outs[k]).max()) for k in refs}
    scales = {k: float(np.abs(refs[k]).max()) for k in refs}
    print(
        f"{name} eval max abs diff (max |value|): "
        + ", ".join(f"{k} {diffs[k]:.1e} ({scales[k]:.1f})" for k in refs)
    )
    assert diffs["logits"] < TOL, diffs
    bad = {k: diffs[k] for k in refs if diffs[k] > TOL * max(1.0, scales[k])}
    assert not bad, bad


@pytest.mark.parametrize("name", _variants())
def test_train_mode_parity_and_running_stats(name):
    """Batch statistics: same logits, and the same running statistics after one forward."""
    tnet, mnet = _pair(name, deep_supervision=True)
    tnet.train()
    mnet.set_train(True)
    x = _input((2, 1, 64, 64), 4)
    with torch.no_grad():
        t_logits = tnet(torch.from_numpy(x))
    m_logits = mnet(ms.Tensor(x))
    diff = float(np.abs(t_logits.numpy() - m_logits.asnumpy()).max())
    params = {p.name: p.asnumpy() for p in mnet.get_parameters()}
    names = _torch_to_ms_names(tnet)
    stats = 0.0
    for tname, t in tnet.state_dict().items():
        if tname.endswith(("running_mean", "running_var")):
            stats = max(stats, float(np.abs(t.numpy() - params[names[tname]]).max()))
    print(f"{name} train max abs diff: logits {diff:.2e}, running stats {stats:.2e}")
    assert diff < TOL
    assert stats < 1e-5
    # the statistics moved (momentum 0.1 in torch == 0.9 in MindSpore), identically
    fresh, _ = _pair(name, deep_supervision=True)
    moved = max(
        float((t - fresh.state_dict()[k]).abs().max())
        for k, t in tnet.state_dict().items()
        if k.endswith("running_mean")
    )
    assert moved > 1e-3


# ---------------------------------------------------------------- graph mode


@pytest.mark.slow  # four graph compiles; the fast set compiles DNANet in tests/test_parity_net.py
def test_graph_mode_features():
    """GRAPH_MODE: dict output in eval; tuple output and an in-graph dict loss in train."""
    name = "dnanet_xxs"
    tnet, mnet = _pair(name, deep_supervision=True)
    x = _input((2, 1, 32, 32), 5)
    w = _input((2, 1, 32, 32), 6)
    xm = ms.Tensor(x)

    # PYNATIVE references: train mode first (it updates the running statistics, which the
    # train-mode outputs do not read), then eval mode with the statistics as they are now
    mnet.set_train(True)
    ref_train = mnet.forward_features(xm)
    loss_cell = _DictLoss(mnet)
    loss_cell.set_train(True)
    ref_loss, ref_grads = ms.value_and_grad(loss_cell, None, mnet.trainable_params())(
        xm, ms.Tensor(w)
    )
    mnet.set_train(False)
    ref_eval = mnet.forward_features(xm)

    set_mode("graph")
    try:
        feats_cell = _Features(mnet)
        feats_cell.set_train(False)
        logits, feats = feats_cell(xm)
        assert isinstance(feats, dict)
        assert tuple(feats) == STAGES + AUX
        assert np.abs(logits.asnumpy() - ref_eval[0].asnumpy()).max() < 1e-5
        for k in feats:
            assert np.abs(feats[k].asnumpy() - ref_eval[1][k].asnumpy()).max() < 1e-5, k

        tuple_cell = _FeaturesTuple(mnet)
        tuple_cell.set_train(True)
        logits, feats = ms_dnanet.features_to_dict(tuple_cell(xm), mnet.feature_names)
        assert np.abs(logits.asnumpy() - ref_train[0].asnumpy()).max() < 1e-5
        for k in feats:
            assert np.abs(feats[k].asnumpy() - ref_train[1][k].asnumpy()).max() < 1e-5, k

        mnet.set_train(True)
        logits = mnet(xm)  # construct, train mode
        assert np.abs(logits.asnumpy() - ref_train[0].asnumpy()).max() < 1e-5

        loss_cell = _DictLoss(mnet)
        loss_cell.set_train(True)
        loss, grads = ms.value_and_grad(loss_cell, None, mnet.trainable_params())(xm, ms.Tensor(w))
        assert abs(float(loss) - float(ref_loss)) < 1e-5
        scale = max(float(np.abs(r.asnumpy()).max()) for r in ref_grads)
        worst = max(
            float(np.abs(g.asnumpy() - r.asnumpy()).max())
            for g, r in zip(grads, ref_grads, strict=True)
        )
        assert worst / scale < 1e-4
    finally:
        set_mode("pynative")
