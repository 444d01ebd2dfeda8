"""Framework-neutral weights: format, name map, strict loading, bit-exact round trips."""

from __future__ import annotations

import os
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn as mnn
from torch import nn as tnn

import ms_impl  # noqa: F401  (sets the oneDNN ISA before the first convolution)
from irkd import zoo
from irkd.weights import (
    FORMAT,
    FORMAT_VERSION,
    NameMap,
    Spec,
    WeightsError,
    check_strict,
    extra_metadata,
    load_neutral,
    save_neutral,
    sha256_file,
)
from ms_impl import weights as msw
from parity import weights as pw
from torch_ref import weights as tw

# --------------------------------------------------------------------------- tiny twins


class TinyTorch(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(1, 4, 3, padding=1, bias=True)
        self.bn = tnn.BatchNorm2d(4)
        self.body = tnn.Sequential(
            tnn.Conv2d(4, 6, 3, padding=1, bias=False), tnn.BatchNorm2d(6), tnn.ReLU()
        )
        self.head = tnn.Conv2d(6, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.relu(self.bn(self.conv1(x)))))


class TinyMS(mnn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = mnn.Conv2d(1, 4, 3, pad_mode="pad", padding=1, has_bias=True)
        self.bn = mnn.BatchNorm2d(4, momentum=0.9)
        self.body = mnn.SequentialCell(
            [
                mnn.Conv2d(4, 6, 3, pad_mode="pad", padding=1, has_bias=False),
                mnn.BatchNorm2d(6, momentum=0.9),
                mnn.ReLU(),
            ]
        )
        self.head = mnn.Conv2d(6, 1, 1, pad_mode="pad", has_bias=True)
        self.relu = mnn.ReLU()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.head(self.body(self.relu(self.bn(self.conv1(x)))))


def randomize_torch(model: tnn.Module, seed: int = 0) -> tnn.Module:
    """Random values in every float tensor, BN running stats included (variance > 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=g, dtype=t.dtype)
            t.copy_(r.abs() + 0.5 if name.endswith("running_var") else r)
    return model


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k


TORCH_NAMES = {
    "conv1.weight": (4, 1, 3, 3),
    "conv1.bias": (4,),
    "bn.weight": (4,),
    "bn.bias": (4,),
    "bn.running_mean": (4,),
    "bn.running_var": (4,),
    "body.0.weight": (6, 4, 3, 3),
    "body.1.weight": (6,),
    "body.1.bias": (6,),
    "body.1.running_mean": (6,),
    "body.1.running_var": (6,),
    "head.weight": (1, 6, 1, 1),
    "head.bias": (1,),
}


@pytest.fixture
def tmodel() -> TinyTorch:
    return randomize_torch(TinyTorch())


# --------------------------------------------------------------------------- name map


def test_name_map_renames_bn_leaves_only():
    nm = NameMap({"bn", "body.1"})
    assert nm.to_ms("bn.weight") == "bn.gamma"
    assert nm.to_ms("bn.bias") == "bn.beta"
    assert nm.to_ms("body.1.running_mean") == "body.1.moving_mean"
    assert nm.to_ms("body.1.running_var") == "body.1.moving_variance"
    assert nm.to_ms("conv1.weight") == "conv1.weight"
    assert nm.to_ms("body.0.weight") == "body.0.weight"
    assert nm.to_ms("body.1x.weight") == "body.1x.weight"
    for name in TORCH_NAMES:
        assert nm.to_torch(nm.to_ms(name)) == name
    assert NameMap({""}).to_ms("weight") == "gamma"
    assert NameMap({""}).to_torch("moving_variance") == "running_var"


def test_bn_prefixes_and_names_match_twin():
    net = TinyMS()
    assert msw.bn_prefixes(net) == {"bn", "body.1"}
    assert set(msw.expected_specs(net)) == set(TORCH_NAMES)
    assert {k: v.shape for k, v in msw.expected_specs(net).items()} == TORCH_NAMES
    assert {k: v.shape for k, v in tw.expected_specs(TinyTorch()).items()} == TORCH_NAMES
    # a wrapper adds a cell-path prefix but not a parameter-name prefix
    assert msw.bn_prefixes(mnn.WithLossCell(net, mnn.MSELoss())) == {"bn", "body.1"}


# --------------------------------------------------------------------------- round trips


def test_torch_neutral_ms_neutral_torch_bit_identical(tmp_path, tmodel):
    ref = tw.net_to_neutral(tmodel)
    assert "bn.num_batches_tracked" not in ref and set(ref) == set(TORCH_NAMES)
    f1 = tw.save_neutral_net(tmodel, tmp_path / "a.safetensors", name="tiny")
    net = TinyMS()
    meta = msw.load_neutral_net(net, f1)
    assert meta["network"] == "tiny" and meta["source"] == "torch"
    assert np.array_equal(net.bn.moving_variance.asnumpy(), ref["bn.running_var"])
    assert np.array_equal(net.body[1].gamma.asnumpy(), ref["body.1.weight"])
    f2 = msw.save_neutral_net(net, tmp_path / "b.safetensors", name="tiny")
    assert load_neutral(f2)[1]["source"] == "mindspore"
    back = TinyTorch()
    tw.load_neutral_net(back, f2)
    assert_same(tw.net_to_neutral(back), ref)
    assert_same(load_neutral(f1)[0], load_neutral(f2)[0])


def test_in_memory_converters_and_outputs(tmodel):
    net = TinyMS()
    pw.torch_to_ms(tmodel, net)
    assert_same(msw.net_to_neutral(net), tw.net_to_neutral(tmodel))
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    tmodel.eval()
    net.set_train(False)
    with torch.no_grad():
        y_t = tmodel(torch.from_numpy(x)).numpy()
    y_m = net(ms.Tensor(x)).asnumpy()
    assert np.abs(y_t - y_m).max() < 1e-4
    other = TinyTorch()
    pw.ms_to_torch(net, other)
    assert_same(tw.net_to_neutral(other), tw.net_to_neutral(tmodel))


def test_num_batches_tracked_kept_on_load(tmp_path, tmodel):
    target = TinyTorch()
    target.bn.num_batches_tracked.fill_(7)
    tw.load_neutral_net(target, tw.net_to_neutral(tmodel))
    assert int(target.bn.num_batches_tracked) == 7


def test_ckpt_neutral_pt_bit_identical(tmp_path, tmodel):
    ref = tw.net_to_neutral(tmodel)
    net = TinyMS()
    pw.torch_to_ms(tmodel, net)
    # a training checkpoint: network + optimizer state + counters
    ckpt = tmp_path / "train.ckpt"
    extra = [
        {"name": "global_step", "data": ms.Tensor(np.array([12], np.int32))},
        {"name": "learning_rate", "data": ms.Tensor(np.array(1e-3, np.float32))},
        {"name": "moment1.conv1.weight", "data": ms.Tensor(np.zeros((4, 1, 3, 3), np.float32))},
    ]
    entries = [{"name": n, "data": p} for n, p in net.parameters_dict().items()] + extra
    ms.save_checkpoint(entries, str(ckpt))
    rep = msw.ckpt_to_neutral(ckpt, tmp_path / "n.safetensors", TinyMS(), name="tiny")
    assert set(rep.dropped) == {"global_step", "learning_rate", "moment1.conv1.weight"}
    assert rep.tensors == len(TORCH_NAMES) and rep.sha256 == sha256_file(rep.dst)
    assert "dropped 3" in str(rep)
    assert_same(load_neutral(rep.dst)[0], ref)

    rep2 = tw.neutral_to_pt(rep.dst, tmp_path / "m.pt", model=TinyTorch())
    sd = torch.load(rep2.dst, weights_only=True)
    assert "bn.num_batches_tracked" in sd
    fresh = TinyTorch()
    fresh.load_state_dict(sd, strict=True)
    assert_same(tw.net_to_neutral(fresh), ref)
    tw.neutral_to_pt(rep.dst, tmp_path / "plain.pt")  # no model: no counters, still loads
    fresh2 = TinyTorch()
    fresh2.load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True), strict=True)
    assert_same(tw.net_to_neutral(fresh2), ref)

    rep3 = tw.pt_to_neutral(rep2.dst, tmp_path / "p.safetensors", model=TinyTorch(), name="tiny")
    assert rep3.dropped == ("bn.num_batches_tracked", "body.1.num_batches_tracked")
    rep4 = msw.neutral_to_ckpt(rep3.dst, tmp_path / "back.ckpt", TinyMS())
    back = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(rep4.dst)).items()}
    assert_same(msw.name_map(TinyMS()).dict_to_torch(back), ref)


def test_pt_wrapped_state_dicts(tmp_path, tmodel):
    ref = tw.net_to_neutral(tmodel)
    for i, obj in enumerate(
        [
            {"state_dict": tmodel.state_dict(), "epoch": 3},
            {"model": tmodel.state_dict()},
            {f"module.{k}": v for k, v in tmodel.state_dict().items()},
        ]
    ):
        torch.save(obj, tmp_path / f"{i}.pth")
        arrays, _ = tw.read_pt(tmp_path / f"{i}.pth")
        assert_same(arrays, ref)
    torch.save({"epoch": 3}, tmp_path / "none.pt")
    with pytest.raises(WeightsError, match="none.pt holds no state dict"):
        tw.read_pt(tmp_path / "none.pt")


def test_convert_files_all_pairs(tmp_path, tmodel):
    ref = tw.net_to_neutral(tmodel)
    start = tw.save_neutral_net(tmodel, tmp_path / "start.safetensors", name="tiny")
    kw = {"model": TinyTorch(), "net": TinyMS(), "network": "tiny"}
    chain = ["a.pt", "b.ckpt", "c.safetensors", "d.ckpt", "e.pth", "f.safetensors"]
    src = start
    for name in chain:
        rep = pw.convert_files(src, tmp_path / name, **kw)
        assert rep.tensors == len(TORCH_NAMES)
        src = rep.dst
    arrays, meta = load_neutral(src)
    assert_same(arrays, ref)
    assert meta["network"] == "tiny"
    with pytest.raises(WeightsError, match="unknown weights format '.npz'"):
        pw.convert_files(start, tmp_path / "x.npz", **kw)
    with pytest.raises(WeightsError, match="MindSpore network is needed"):
        pw.convert_files(start, tmp_path / "x.ckpt", model=TinyTorch())


# --------------------------------------------------------------------------- strictness


def test_check_strict_lists_everything():
    expected = {
        "a.weight": Spec((16, 1, 3, 3), "float32"),
        "b.weight": Spec((4,), "float32"),
        "c.weight": (2,),
        "d.weight": Spec((3,), "float32"),
    }
    arrays = {
        "a.weight": np.zeros((8, 1, 3, 3), np.float32),
        "c.weight": np.zeros((2,), np.float64),  # bare shape: dtype not checked
        "d.weight": np.zeros((3,), np.float64),
        "z.extra": np.zeros(1, np.float32),
    }
    with pytest.raises(WeightsError) as exc:
        check_strict(expected, arrays, what="weights file x.safetensors does not fit net")
    msg = str(exc.value)
    assert msg.startswith("weights file x.safetensors does not fit net: ")
    assert "missing 1 (b.weight)" in msg
    assert "unexpected 1 (z.extra)" in msg
    assert "wrong shape 1 (a.weight: file (8,1,3,3) vs network (16,1,3,3))" in msg
    assert "wrong dtype 1 (d.weight: file float64 vs network float32)" in msg
    fitting = {
        "a.weight": np.zeros((16, 1, 3, 3), np.float32),
        "b.weight": np.zeros(4, np.float32),
        "c.weight": np.zeros(2, np.float64),
        "d.weight": np.zeros(3, np.float32),
    }
    check_strict(expected, fitting, what="x")  # no error


@pytest.mark.parametrize("side", ["torch", "ms"])
@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda a: a.pop("body.1.running_var"), r"missing 1 \(body\.1\.running_var\)"),
        (lambda a: a.update(extra=np.zeros(2, np.float32)), r"unexpected 1 \(extra\)"),
        (
            lambda a: a.update({"conv1.weight": np.zeros((8, 1, 3, 3), np.float32)}),
            r"wrong shape 1 \(conv1\.weight: file \(8,1,3,3\) vs network \(4,1,3,3\)\)",
        ),
        (
            lambda a: a.update({"bn.weight": a["bn.weight"].astype(np.float64)}),
            r"wrong dtype 1 \(bn\.weight: file float64 vs network float32\)",
        ),
    ],
    ids=["missing", "unexpected", "shape", "dtype"],
)
def test_strict_load_errors_name_the_tensor(tmp_path, tmodel, side, edit, pattern):
    arrays = tw.net_to_neutral(tmodel)
    edit(arrays)
    path = save_neutral(tmp_path / "w.safetensors", arrays, network="tiny")
    target = TinyTorch() if side == "torch" else TinyMS()
    before = tw.net_to_neutral(target) if side == "torch" else msw.net_to_neutral(target)
    with pytest.raises(WeightsError, match=r"weights file w\.safetensors does not fit tiny: "):
        (tw.load_neutral_net if side == "torch" else msw.load_neutral_net)(target, path)
    with pytest.raises(WeightsError, match=pattern):
        (tw.load_neutral_net if side == "torch" else msw.load_neutral_net)(target, path)
    after = tw.net_to_neutral(target) if side == "torch" else msw.net_to_neutral(target)
    assert_same(before, after)  # untouched on failure


def test_ckpt_missing_parameter_is_an_error(tmp_path):
    net = TinyMS()
    entries = [{"name": n, "data": p} for n, p in net.parameters_dict().items() if n != "bn.gamma"]
    ms.save_checkpoint(entries, str(tmp_path / "c.ckpt"))
    with pytest.raises(WeightsError, match=r"c\.ckpt does not fit TinyMS: missing 1 \(bn\.gamma\)"):
        msw.read_ckpt(tmp_path / "c.ckpt", net)


# --------------------------------------------------------------------------- files


def test_missing_and_corrupt_files_are_named(tmp_path, tmodel):
    with pytest.raises(WeightsError, match="nope.safetensors not found"):
        load_neutral(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsError, match="is a folder"):
        load_neutral(tmp_path)
    good = tw.save_neutral_net(tmodel, tmp_path / "good.safetensors")
    data = good.read_bytes()
    for name, blob in {
        "empty": b"",
        "short": b"abc",
        "garbage": os.urandom(256),
        "truncated": data[: len(data) - 40],
        "badjson": data[:8]
        + b"{" * (int.from_bytes(data[:8], "little"))
        + data[8 + int.from_bytes(data[:8], "little") :],
    }.items():
        f = tmp_path / f"{name}.safetensors"
        f.write_bytes(blob)
        with pytest.raises(WeightsError, match=str(f).replace(".", r"\.")):
            load_neutral(f)
    with pytest.raises(WeightsError, match=r"gone\.pt not found"):
        tw.read_pt(tmp_path / "gone.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match=r"bad\.pt"):
        tw.read_pt(tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"gone\.ckpt not found"):
        msw.read_ckpt(tmp_path / "gone.ckpt", TinyMS())
    (tmp_path / "bad.ckpt").write_bytes(b"garbage" * 10)
    with pytest.raises(WeightsError, match=r"bad\.ckpt"):
        msw.read_ckpt(tmp_path / "bad.ckpt", TinyMS())


def test_newer_or_foreign_format_refused(tmp_path):
    from safetensors.numpy import save_file

    a = {"w": np.ones(2, np.float32)}
    save_file(a, tmp_path / "new.safetensors", metadata={"format": FORMAT, "format_version": "99"})
    with pytest.raises(WeightsError, match="format version '99'"):
        load_neutral(tmp_path / "new.safetensors")
    save_file(a, tmp_path / "other.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="has format 'pt'"):
        load_neutral(tmp_path / "other.safetensors")
    save_file(a, tmp_path / "plain.safetensors")  # another tool's file, no metadata: accepted
    arrays, meta = load_neutral(tmp_path / "plain.safetensors")
    assert meta == {} and np.array_equal(arrays["w"], a["w"])


def test_atomic_save_leaves_no_temp_file(tmp_path, tmodel):
    out = tmp_path / "w.safetensors"
    tw.save_neutral_net(tmodel, out)
    tw.save_neutral_net(tmodel, out)  # overwrite
    tw.write_pt(tw.net_to_neutral(tmodel), tmp_path / "w.pt")
    msw.write_ckpt(tw.net_to_neutral(tmodel), tmp_path / "w.ckpt", TinyMS())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.ckpt", "w.pt", "w.safetensors"]
    old = out.read_bytes()
    with pytest.raises(WeightsError, match="not JSON-serialisable"):
        save_neutral(out, {"x": np.ones(1, np.float32)}, metadata={"bad": object()})

    # a failure during the write leaves the old file and no temp file
    class Boom(Exception):
        pass

    import irkd.weights as iw

    orig = Path.write_bytes

    def boom(self: Path, data: bytes) -> int:
        orig(self, data[:10])
        raise Boom

    Path.write_bytes = boom  # type: ignore[method-assign]
    try:
        with pytest.raises(Boom):
            iw.save_neutral(out, {"x": np.ones(1, np.float32)})
    finally:
        Path.write_bytes = orig  # type: ignore[method-assign]
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.ckpt", "w.pt", "w.safetensors"]


def test_metadata_round_trips(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3).T}  # non-contiguous view
    extra = {"epoch": 12, "metrics": {"iou": 0.75}, "note": "über"}
    path = save_neutral(
        tmp_path / "m.safetensors", arrays, network="dnanet_s", source="torch", metadata=extra
    )
    got, meta = load_neutral(path)
    assert np.array_equal(got["w"], arrays["w"])  # saved in logical order, not buffer order
    assert got["w"].flags.writeable
    assert meta["format"] == FORMAT and meta["format_version"] == FORMAT_VERSION
    assert meta["network"] == "dnanet_s" and meta["source"] == "torch"
    assert extra_metadata(meta) == extra
    assert extra_metadata({}) == {}
    assert len(sha256_file(path)) == 64


def test_save_neutral_rejects_bad_input(tmp_path):
    with pytest.raises(WeightsError, match="not part of the neutral format"):
        save_neutral(tmp_path / "x.safetensors", {"bn.num_batches_tracked": np.zeros(())})
    with pytest.raises(WeightsError, match="expected a numpy array"):
        save_neutral(tmp_path / "x.safetensors", {"w": [1.0]})  # type: ignore[dict-item]
    with pytest.raises(WeightsError, match="no tensors"):
        save_neutral(tmp_path / "x.safetensors", {})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- registered networks


def _logits(out):
    """The output map of a forward that may return (logits, features) or a list of logits."""
    while isinstance(out, list | tuple):
        out = out[-1] if isinstance(out, list) else out[0]
    return out


def randomize_torch_bn(model: tnn.Module, seed: int = 0) -> tnn.Module:
    """Keep the random init but give every BatchNorm random affine and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


@pytest.mark.parametrize(
    "name",
    [
        # the larger DNANets (the same code as dnanet_xxs at other widths) are slow
        pytest.param(n, marks=pytest.mark.slow) if n in ("dnanet", "dnanet_s", "dnanet_xs") else n
        for n in sorted(zoo.MODELS)
    ],
)
def test_registered_network_round_trip_and_logits(tmp_path, name):
    from ms_impl.models import create_model as create_ms
    from torch_ref.models import create_model as create_torch

    torch.manual_seed(0)
    model = randomize_torch_bn(create_torch(name))
    ref = tw.net_to_neutral(model)
    f1 = tw.save_neutral_net(model, tmp_path / "t.safetensors", name=name)
    net = create_ms(name)
    msw.load_neutral_net(net, f1)
    f2 = msw.save_neutral_net(net, tmp_path / "m.safetensors", name=name)
    assert_same(load_neutral(f2)[0], ref)
    back = create_torch(name)
    tw.load_neutral_net(back, f2)
    assert_same(tw.net_to_neutral(back), ref)

    x = np.random.default_rng(0).standard_normal((1, 1, 256, 256)).astype(np.float32)
    model.eval()
    net.set_train(False)
    with torch.no_grad():
        y_t = _logits(model(torch.from_numpy(x))).numpy()
    y_m = _logits(net(ms.Tensor(x))).asnumpy()
    diff = float(np.abs(y_t - y_m).max())
    scale = float(np.abs(y_t).max())
    print(f"{name}: max |torch - mindspore| logits = {diff:.3g} (max |logit| {scale:.3g})")
    assert y_t.shape == y_m.shape == (1, 1, 256, 256)
    assert diff < 1e-4
    assert float(y_t.std()) > 1e-3  # a non-trivial output map


def test_convert_registered_network_by_suffix(tmp_path):
    from torch_ref.models import create_model as create_torch

    model = randomize_torch_bn(create_torch("dnanet_xxs"), seed=3)
    ref = tw.net_to_neutral(model)
    torch.save({"state_dict": model.state_dict(), "epoch": 5}, tmp_path / "a.pth")
    r1 = pw.convert(tmp_path / "a.pth", tmp_path / "b.ckpt", network="dnanet_xxs")
    assert r1.dropped == tuple(sorted(k for k in model.state_dict() if "num_batches" in k))
    r2 = pw.convert(r1.dst, tmp_path / "c.safetensors", network="dnanet_xxs")
    arrays, meta = load_neutral(r2.dst)
    assert_same(arrays, ref)
    assert meta["network"] == "dnanet_xxs" and meta["source"] == "mindspore"
    with (
        pytest.warns(UserWarning, match="saved for 'dnanet_xxs', converting as 'dnanet_xs'"),
        pytest.raises(WeightsError, match=r"c\.safetensors does not fit dnanet_xs: .*wrong shape"),
    ):
        pw.convert(r2.dst, tmp_path / "d.pt", network="dnanet_xs")
    with pytest.raises(KeyError, match="unknown network"):
        pw.convert(r2.dst, tmp_path / "d.pt", network="nope")


def test_cli_convert_pt_to_ckpt_to_neutral(tmp_path, capsys):
    import torch

    import torch_ref.models as tmodels
    from irkd.cli import main
    from irkd.weights import load_neutral

    model = tmodels.create_model("dnanet_xxs")
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "w.pt")
    assert (
        main(
            [
                "weights",
                "convert",
                str(tmp_path / "w.pt"),
                str(tmp_path / "w.ckpt"),
                "--network",
                "dnanet_xxs",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "weights",
                "convert",
                str(tmp_path / "w.ckpt"),
                str(tmp_path / "w.safetensors"),
                "--network",
                "dnanet_xxs",
            ]
        )
        == 0
    )
    arrays, _ = load_neutral(tmp_path / "w.safetensors")
    assert set(arrays) == set(sd)
    for k, v in sd.items():
        assert np.array_equal(arrays[k], v.numpy()), k
    # Wrong network: one clear line, exit 1.
    assert (
        main(
            [
                "weights",
                "convert",
                str(tmp_path / "w.pt"),
                str(tmp_path / "x.ckpt"),
                "--network",
                "dnanet_s",
            ]
        )
        == 1
    )
    assert "does not fit" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["msa_awmse", "mgd", "fgd"])
def test_distiller_weights_cross_frameworks_bit_identical(method):
    """Connectors, MGD generation blocks and FGD context blocks (LayerNorm) map strictly."""
    from irkd.config import MethodConfig
    from ms_impl.distill import build_distiller as ms_build
    from torch_ref.distill import build_distiller as torch_build

    cfg = MethodConfig(name=method, stages=["enc1", "dec0"])
    t_ch, s_ch = zoo.stage_channels("dnanet_s"), zoo.stage_channels("dnanet_xxs")
    tdist = randomize_torch(torch_build(cfg, t_ch, s_ch), seed=3)
    arrays = tw.net_to_neutral(tdist)
    if method == "fgd":
        assert any(".channel_add_conv_s.1.weight" in k for k in arrays)  # the LayerNorm
    mdist = ms_build(cfg, t_ch, s_ch)
    msw.load_neutral_net(mdist, arrays)
    assert_same(arrays, msw.net_to_neutral(mdist))
