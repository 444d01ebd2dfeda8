"""``irkd models`` and the model accounting (parameters, MACs) behind it."""

from __future__ import annotations

import json

import pytest
from torch import nn  # noqa: E402

import torch_ref.models as tmodels  # noqa: E402
from irkd.cli import main  # noqa: E402
from irkd.zoo import MODELS  # noqa: E402
from torch_ref.profile import (  # noqa: E402
    count_macs,
    count_ops_thop_convention,
    count_params,
    macs_by_layer,
)

# The exact Conv2d/Linear multiply-accumulates of the teacher at 1x1x256x256 (see
# test_dnanet_macs_reconcile_with_basicirstd for how this relates to the published 14.26 G).
DNANET_MACS = 13_905_986_944
DNANET_PARAMS = 4_696_517


#: The tests of a whole ``irkd models`` run (every network built in both frameworks) are slow.
SLOW_RUN = pytest.mark.slow


@pytest.fixture(scope="module")
def models_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "models.json"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["models", "--json", str(out)])
    return rc, buf.getvalue(), json.loads(out.read_text())


@SLOW_RUN
def test_models_lists_every_registered_network(models_run):
    rc, text, report = models_run
    assert rc == 0, text
    lines = text.splitlines()
    for name in MODELS:
        assert any(line.split()[:1] == [name] for line in lines), name
    assert [m["name"] for m in report["models"]] == list(MODELS)
    assert report["shape"] == [1, 1, 256, 256]
    assert report["params_agree"] is True
    assert "agree" in text and "WARNING" not in text
    for m in report["models"]:
        assert m["params"] == m["params_mindspore"] > 0
        assert m["macs"] > 0


@SLOW_RUN
def test_dnanet_row(models_run):
    _, text, report = models_run
    row = next(line for line in text.splitlines() if line.startswith("dnanet "))
    cells = row.split()
    assert cells[:5] == ["dnanet", "dnanet", "teacher", "4.70", "13.91"]
    assert "16-32-64-128-256" in row
    dn = next(m for m in report["models"] if m["name"] == "dnanet")
    assert dn["params"] == DNANET_PARAMS
    assert dn["macs"] == DNANET_MACS


@SLOW_RUN
def test_students_are_cheaper_than_their_teacher(models_run):
    _, _, report = models_run
    by_name = {m["name"]: m for m in report["models"]}
    for m in report["models"]:
        if m["role"] != "student":
            continue
        teacher = by_name[m["family"]]
        assert m["macs"] < teacher["macs"] and m["params"] < teacher["params"]
        assert m["macs_vs_teacher"] == pytest.approx(m["macs"] / teacher["macs"])


def test_dnanet_macs_reconcile_with_basicirstd(monkeypatch):
    """The published 14.26 G is thop's count: ours plus BN, bilinear resizes and avg pooling.

    thop counts Conv2d as out_elements * in_ch/groups * kh * kw (no bias, exactly as we do),
    BatchNorm2d as 4 ops per element (affine), bilinear nn.Upsample as 11 ops per output
    element and adaptive average pooling as (pool size + 1) per output element; ReLU, max
    pooling, sigmoid and concatenation count zero. BasicIRSTD builds DNANet with deep
    supervision (three extra 16 -> 1 heads).
    """
    net = tmodels.create_model("dnanet", deep_supervision=True).eval()
    ops = count_ops_thop_convention(net)
    print(f"dnanet thop-convention ops: {ops}")
    assert ops["resize"] > 0 and ops["bn"] > 0 and ops["avgpool"] > 0
    conv = count_macs(net)
    assert conv == 13_909_132_672  # + 3 side heads of 256*256*16 MACs each
    assert conv - DNANET_MACS == 3 * 256 * 256 * 16
    assert ops["conv"] == conv
    assert round(ops["total"] / 1e9, 2) == 14.26
    assert round(count_params(net) / 1e6, 2) == 4.70


def test_count_macs_tiny_network_exactly():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 1*8*10*12 outputs * 3*9 = 25_920
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4),  # 1*8*5*6 * 2*9 = 4_320
        nn.ConvTranspose2d(8, 4, 2, stride=2),  # 1*8*5*6 inputs * 4*4 = 3_840
        nn.Flatten(),
        nn.Linear(4 * 10 * 12, 5),  # 5 * 480 = 2_400
    )
    assert count_macs(net, (1, 3, 10, 12)) == 25_920 + 4_320 + 3_840 + 2_400
    assert count_macs(net, (2, 3, 10, 12)) == 2 * (25_920 + 4_320 + 3_840 + 2_400)
    assert macs_by_layer(net, (1, 3, 10, 12)) == {"0": 25_920, "2": 4_320, "3": 3_840, "5": 2_400}
    params = (3 * 8 * 9 + 8) + (2 * 8 * 9 + 8) + (8 * 4 * 4 + 4) + (480 * 5 + 5)
    assert count_params(net) == params
    net[0].weight.requires_grad_(False)
    assert count_params(net) == params - 3 * 8 * 9
    assert net.training  # the count leaves the network as it was
    assert net[0].weight.device.type == "cpu"


def test_count_macs_scales_with_pixels_and_batch():
    # U-Net: every convolution runs on a feature map proportional to the input.
    net = tmodels.create_model("unet_s")
    assert count_macs(net, (2, 1, 64, 64)) * 8 == count_macs(net)
    # DNANet: also the channel attention's 1x1 convolutions on pooled (1x1) maps, per image.
    net = tmodels.create_model("dnanet_xxs")
    by_layer = macs_by_layer(net, (2, 1, 64, 64))
    pooled = sum(v for k, v in by_layer.items() if ".ca." in k)
    assert pooled > 0
    full = macs_by_layer(net)
    assert (sum(by_layer.values()) - pooled) * 8 == sum(full.values()) - pooled // 2


@pytest.mark.slow  # every network built in both frameworks once more
def test_shape_option(capsys, tmp_path):
    out = tmp_path / "m.json"
    assert main(["models", "--shape", "2,1,64,96", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    unet = next(m for m in report["models"] if m["name"] == "unet")
    assert unet["macs"] * 256 * 256 == count_macs(tmodels.create_model("unet")) * 2 * 64 * 96
    assert "input 2x1x64x96" in capsys.readouterr().out


def test_shape_errors(capsys):
    assert main(["models", "--shape", "1,1,100,100"]) == 1
    assert "multiples of 16" in capsys.readouterr().err
    assert main(["models", "--shape", "1,1,256"]) == 1
    assert "B,C,H,W" in capsys.readouterr().err


@pytest.mark.slow  # every network built in both frameworks once more
def test_parameter_mismatch_prints_a_warning_row(monkeypatch, capsys):
    import ms_impl.profile

    real = ms_impl.profile.count_params
    monkeypatch.setattr(ms_impl.profile, "count_params", lambda net: real(net) + 1)
    assert main(["models"]) == 1
    text = capsys.readouterr().out
    assert text.count("WARNING") == len(MODELS)
    assert "WARNING dnanet: PyTorch has 4,696,517 parameters, MindSpore 4,696,518" in text
