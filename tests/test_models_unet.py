"""The plain U-Net twins: shapes, stage features, gradients and cross-framework parity."""

from __future__ import annotations

import mindspore as ms  # noqa: E402
import numpy as np
import pytest
import torch  # noqa: E402

import ms_impl  # noqa: F401  (before MindSpore's first convolution)
import ms_impl.models as mmodels  # noqa: E402
import torch_ref.models as tmodels  # noqa: E402
from irkd.zoo import MODELS, STAGES, stage_channels  # noqa: E402
from ms_impl.profile import count_params as ms_count  # noqa: E402
from ms_impl.runtime import set_mode  # noqa: E402
from torch_ref.profile import count_params as torch_count  # noqa: E402

UNETS = sorted(n for n, s in MODELS.items() if s.family == "unet")
SHAPES = [(1, 1, 256, 256), (1, 1, 96, 160)]
_BN_RENAME = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


def test_unet_variants_registered():
    assert UNETS == ["unet", "unet_s"]


@pytest.fixture
def graph_mode():
    set_mode("graph")
    yield
    set_mode("pynative")


def _bn_prefixes(tnet: torch.nn.Module) -> set[str]:
    return {n for n, m in tnet.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def ms_name(torch_name: str, bn_prefixes: set[str]) -> str | None:
    """MindSpore parameter name of a torch state_dict entry (None: no counterpart)."""
    prefix, _, leaf = torch_name.rpartition(".")
    if prefix in bn_prefixes:
        if leaf == "num_batches_tracked":
            return None
        return f"{prefix}.{_BN_RENAME[leaf]}"
    return torch_name


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _randomize_bn_stats(tnet: torch.nn.Module, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in tnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.5, c).astype(np.float32)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32)))
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
                m.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, c).astype(np.float32)))


def _copy_torch_to_ms(tnet: torch.nn.Module, mnet) -> None:
    bn = _bn_prefixes(tnet)
    mparams = mnet.parameters_dict()
    seen = set()
    for k, v in tnet.state_dict().items():
        name = ms_name(k, bn)
        if name is None:
            continue
        mparams[name].set_data(ms.Tensor(v.detach().numpy().copy()))
        seen.add(name)
    assert seen == set(mparams)


class _Features(ms.nn.Cell):
    """Graph-mode entry to forward_features (only construct is compiled)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return self.net.forward_features(x)


# --- PyTorch -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNETS)
def test_torch_forward_shapes_and_features(name):
    torch.manual_seed(0)
    net = tmodels.create_model(name).eval()
    chans = stage_channels(name)
    for shape in SHAPES:
        with torch.no_grad():
            logits, feats = net.forward_features(torch.from_numpy(_rand(shape)))
            plain = net(torch.from_numpy(_rand(shape)))
        assert tuple(logits.shape) == shape and tuple(plain.shape) == shape
        assert torch.isfinite(logits).all()
        assert list(feats) == list(STAGES)
        for k, f in feats.items():
            stride = 2 ** int(k[3:])
            assert tuple(f.shape) == (1, chans[k], shape[2] // stride, shape[3] // stride), k
        assert torch.equal(logits, plain)


@pytest.mark.parametrize("name", UNETS)
def test_torch_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    net = tmodels.create_model(name).train()
    x = torch.from_numpy(_rand((2, 1, 32, 48)))
    target = torch.from_numpy(_rand((2, 1, 32, 48), seed=3))
    loss = ((net(x) - target) ** 2).mean()
    loss.backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def test_torch_rejects_wrong_widths():
    with pytest.raises(ValueError, match="5 values"):
        tmodels.UNet(widths=(8, 16, 32))


# --- MindSpore -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNETS)
def test_ms_forward_shapes_and_features_pynative(name):
    net = mmodels.create_model(name)
    net.set_train(False)
    chans = stage_channels(name)
    for shape in SHAPES:
        x = ms.Tensor(_rand(shape))
        logits, feats = net.forward_features(x)
        assert tuple(net(x).shape) == shape
        assert tuple(logits.shape) == shape
        assert np.isfinite(logits.asnumpy()).all()
        assert list(feats) == list(STAGES)
        for k, f in feats.items():
            stride = 2 ** int(k[3:])
            assert tuple(f.shape) == (1, chans[k], shape[2] // stride, shape[3] // stride), k


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "unet" else n for n in UNETS]
)  # the full-width U-Net compiles the same graph as unet_s: slow
def test_ms_forward_graph_mode(name, graph_mode):
    net = mmodels.create_model(name)
    net.set_train(False)
    shape = (1, 1, 96, 160)
    x = ms.Tensor(_rand(shape))
    logits = net(x)
    assert tuple(logits.shape) == shape
    assert np.isfinite(logits.asnumpy()).all()
    out, feats = _Features(net)(x)
    assert sorted(feats) == sorted(STAGES)
    assert tuple(feats["enc4"].shape) == (1, stage_channels(name)["enc4"], 6, 10)
    np.testing.assert_allclose(out.asnumpy(), logits.asnumpy(), rtol=0, atol=1e-6)


class _LossGrad(ms.nn.Cell):
    """A compiled (graph-mode) loss-and-gradients step."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = net.trainable_params()
        self.grad_fn = ms.value_and_grad(self.loss, None, self.params)

    def loss(self, x, target):
        return ((self.net(x) - target) ** 2).mean()

    def construct(self, x, target):
        return self.grad_fn(x, target)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        pytest.param("unet", "pynative", marks=pytest.mark.slow),
        ("unet_s", "pynative"),
        pytest.param("unet_s", "graph", marks=pytest.mark.slow),  # net/unet_s/grad: fast
    ],
)
def test_ms_every_parameter_gets_a_gradient(name, mode):
    net = mmodels.create_model(name)
    net.set_train(True)
    x = ms.Tensor(_rand((2, 1, 32, 48)))
    target = ms.Tensor(_rand((2, 1, 32, 48), seed=3))
    params = net.trainable_params()
    set_mode(mode)
    try:
        loss, grads = _LossGrad(net)(x, target)
    finally:
        set_mode("pynative")
    assert np.isfinite(loss.asnumpy())
    assert len(grads) == len(params)
    for p, g in zip(params, grads, strict=True):
        g = g.asnumpy()
        assert np.isfinite(g).all() and np.abs(g).sum() > 0, p.name


# --- Both ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNETS)
def test_parameter_names_and_counts_match(name):
    tnet = tmodels.create_model(name)
    mnet = mmodels.create_model(name)
    bn = _bn_prefixes(tnet)
    mapped = {ms_name(k, bn) for k in tnet.state_dict()} - {None}
    assert mapped == set(mnet.parameters_dict())
    trainable = {ms_name(k, bn) for k, p in tnet.named_parameters()}
    assert trainable == {p.name for p in mnet.trainable_params()}
    assert torch_count(tnet) == ms_count(mnet) > 0
    for k, v in tnet.state_dict().items():
        if ms_name(k, bn) is not None:
            assert tuple(v.shape) == tuple(mnet.parameters_dict()[ms_name(k, bn)].shape), k


def test_param_counts_are_exact():
    # enc/dec double convs (no bias) + BN (2 per channel) + 1x1 head with bias
    def expected(w, cin=1, ncls=1):
        def dc(a, b):
            return 9 * a * b + 9 * b * b + 4 * b

        n = dc(cin, w[0]) + sum(dc(w[i - 1], w[i]) for i in range(1, 5))
        n += sum(dc(w[i] + w[i + 1], w[i]) for i in range(4))
        return n + w[0] * ncls + ncls

    for name in UNETS:
        w = MODELS[name].kwargs["widths"]
        assert torch_count(tmodels.create_model(name)) == expected(w)
    assert torch_count(tmodels.create_model("unet")) == 1_963_809


@pytest.mark.parametrize(
    "mode", ["pynative", pytest.param("graph", marks=pytest.mark.slow)]
)  # graph: tests/test_parity_net.py compares unet_s in GRAPH_MODE in the fast set
def test_cross_framework_eval_outputs_match(mode):
    torch.manual_seed(0)
    tnet = tmodels.create_model("unet")
    _randomize_bn_stats(tnet)
    tnet.eval()
    mnet = mmodels.create_model("unet")
    _copy_torch_to_ms(tnet, mnet)
    mnet.set_train(False)
    x = _rand((1, 1, 256, 256), seed=7)
    with torch.no_grad():
        t_logits, t_feats = tnet.forward_features(torch.from_numpy(x))
    set_mode(mode)
    try:
        m_logits, m_feats = _Features(mnet)(ms.Tensor(x))
    finally:
        set_mode("pynative")
    diffs = {"logits": float(np.abs(m_logits.asnumpy() - t_logits.numpy()).max())}
    for k in STAGES:
        diffs[k] = float(np.abs(m_feats[k].asnumpy() - t_feats[k].numpy()).max())
    print(f"unet {mode} max abs diff:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) < 1e-4, diffs
