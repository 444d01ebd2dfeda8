"""Ascend deployment: MindIR export and round trip, converter config/command, Lite runner."""

from __future__ import annotations

import configparser
import os
import shlex
import sys
import types
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import ms_impl  # noqa: F401  (sets the oneDNN ISA before the first convolution)
from deploy_ascend import latency, lite, mindir_export
from deploy_ascend.lite import (
    LiteUnavailableError,
    aipp_config,
    converter_command,
    converter_config,
    lite_available,
    run_lite,
    write_converter_config,
)
from deploy_ascend.mindir_export import (
    export_mindir,
    mindir_info,
    roundtrip_check,
)
from irkd.bench import latency_summary
from ms_impl.models import create_model

SHAPE = (1, 1, 256, 256)
TOL = 1e-4
LITE_REASON = (
    "mindspore_lite is not installed (no wheel for Python 3.11; needs an Ascend/Lite environment)"
)


def _net(name: str, seed: int = 0) -> nn.Cell:
    ms.set_seed(seed)
    net = create_model(name)
    net.set_train(False)
    return net


def _x(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


class Tiny(nn.Cell):
    """Convolutions only: exports and runs with a dynamic shape."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, pad_mode="pad", padding=1, has_bias=True)
        self.c2 = nn.Conv2d(4, 1, 1, pad_mode="pad", padding=0, has_bias=True)
        self.relu = nn.ReLU()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.c2(self.relu(self.c1(x)))


class _Exports(dict[str, tuple[nn.Cell, Path]]):
    """Networks with seeded random weights, each exported on first use (static 1x1x256x256)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def __missing__(self, name: str) -> tuple[nn.Cell, Path]:
        net = _net(name)
        self[name] = (net, export_mindir(net, self.folder / name))
        return self[name]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Cell, Path]]:
    """Teacher (``dnanet``, slow tests only) and student (``dnanet_xs``), exported once."""
    return _Exports(tmp_path_factory.mktemp("mindir"))


# --------------------------------------------------------------------------- MindIR


@pytest.mark.parametrize("name", [pytest.param("dnanet", marks=pytest.mark.slow), "dnanet_xs"])
def test_static_export_roundtrips(exported: dict[str, tuple[nn.Cell, Path]], name: str) -> None:
    net, path = exported[name]
    assert path.name == f"{name}.mindir" and path.is_file()
    assert _leftovers(path.parent) == []
    diff = roundtrip_check(path, net, [_x(seed=1), 3.0 * _x(seed=2)])
    assert diff <= TOL, f"{name}: MindIR vs eager max abs diff {diff}"


def test_mindir_info_reads_the_io_spec(exported: dict[str, tuple[nn.Cell, Path]]) -> None:
    info = mindir_info(exported["dnanet_xs"][1])
    assert [i["shape"] for i in info["inputs"]] == [list(SHAPE)]
    assert [o["shape"] for o in info["outputs"]] == [list(SHAPE)]
    assert info["inputs"][0]["short_name"] == "x"
    assert info["inputs"][0]["dtype"] == "float32"
    assert info["parameters"] > 0 and info["size_bytes"] > 1_000_000


def test_mindir_info_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mindir_info(tmp_path / "missing.mindir")
    bad = tmp_path / "bad.mindir"
    bad.write_bytes(b"\xff\x00 not a protobuf \x13\x37" * 10)
    with pytest.raises(ValueError, match="not a readable MindIR"):
        mindir_info(bad)


def test_export_is_atomic_and_restores_training_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = Tiny()
    net.set_train(True)
    path = export_mindir(net, tmp_path / "tiny", height=32, width=32)  # .mindir appended
    assert path == tmp_path / "tiny.mindir"
    assert net.training, "the training flag must be restored"
    before = path.read_bytes()
    assert export_mindir(net, path, height=32, width=32) == path  # overwrite in place

    def boom(*args: Any, **kwargs: Any) -> None:
        Path(kwargs["file_name"]).write_bytes(b"half")  # a partial file under the temp name
        raise RuntimeError("export died")

    monkeypatch.setattr(mindir_export.ms, "export", boom)
    with pytest.raises(RuntimeError, match="export died"):
        export_mindir(net, path, height=32, width=32)
    assert path.read_bytes() == before, "a failed export must leave the old file"
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="height"):
        export_mindir(net, tmp_path / "x", height=0)


def test_dynamic_export_works_where_the_network_allows_it(tmp_path: Path) -> None:
    net = Tiny()
    path = export_mindir(net, tmp_path / "tiny_dyn", dynamic=True, height=32, width=32)
    assert mindir_info(path)["inputs"][0]["shape"] == [-1, 1, -1, -1]
    diff = roundtrip_check(path, net, [_x((1, 1, 32, 32)), _x((3, 1, 48, 80), seed=1)])
    assert diff <= TOL


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) for n in ("dnanet_xs", "unet_s")]
)
def test_dynamic_export_of_registered_networks(tmp_path: Path, name: str) -> None:
    net = _net(name)
    path = export_mindir(net, tmp_path / name, dynamic=True)
    assert mindir_info(path)["inputs"][0]["shape"] == [-1, 1, -1, -1]
    shapes = [(1, 1, 256, 256), (2, 1, 128, 160), (1, 1, 96, 64)]
    diff = roundtrip_check(path, net, [_x(s, seed=i) for i, s in enumerate(shapes)])
    assert diff <= TOL


_CANNOT_WORK = """
import sys
from pathlib import Path
import mindspore as ms
from mindspore import nn, ops
import ms_impl  # noqa: F401
from deploy_ascend.mindir_export import DynamicShapeError, export_mindir

class ConstSizeResize(nn.Cell):
    # ops.interpolate with a size read from the input: MindSpore needs it constant
    def construct(self, x):
        y = ops.max_pool2d(x, 2, 2)
        return ops.interpolate(y, size=(x.shape[2], x.shape[3]), mode="bilinear",
                               align_corners=True)

out = Path(sys.argv[1])
try:
    export_mindir(ConstSizeResize(), out / "bad", dynamic=True, height=32, width=32)
except DynamicShapeError as exc:
    print("DynamicShapeError:", exc)
    sys.exit(0)
sys.exit(3)
"""


def test_dynamic_export_that_cannot_work_raises_clearly(tmp_path: Path) -> None:
    # In a process of its own: after a failed graph compile, MindSpore 2.10 compiles the next
    # graphs of the process wrongly (a later DNANet forward_features returned a tuple).
    import subprocess
    import sys

    script = tmp_path / "cannot_work.py"  # MindSpore parses graph code from a source file
    script.write_text(_CANNOT_WORK)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # a failed compile writes rank_0/om/analyze_fail.ir here
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "DynamicShapeError:" in res.stdout and "interpolate" in res.stdout
    assert "dynamic=False" in res.stdout
    assert not (tmp_path / "bad.mindir").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.slow  # times a MindIR and an eager network in both modes
def test_latency_runners(exported: dict[str, tuple[nn.Cell, Path]]) -> None:
    res = latency.mindir_latency(exported["dnanet_xs"][1], SHAPE, warmup=1, runs=3)
    assert res["runs"] == 3 and res["shape"] == list(SHAPE)
    assert 0 < res["min_ms"] <= res["median_ms"] <= res["p90_ms"] <= res["max_ms"]
    net = Tiny()
    mode = ms.get_context("mode")
    for m in ("pynative", "graph"):
        res = latency.eager_latency(net, (1, 1, 32, 32), mode=m, warmup=1, runs=3)
        assert res["mode"] == m and res["median_ms"] > 0 and res["mean_ms"] > 0
    assert ms.get_context("mode") == mode
    with pytest.raises(ValueError):
        latency.eager_latency(net, (1, 1, 32, 32), mode="fast")  # type: ignore[arg-type]
    assert latency_summary([1.0, 2.0, 3.0, 4.0])["median_ms"] == 2.5


# --------------------------------------------------------------------------- converter


def _ini(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp.read_string(text)
    return cp


def test_converter_config_sections_and_keys() -> None:
    text = converter_config()
    assert text.splitlines()[0] == "[ascend_context]"
    sec = _ini(text)["ascend_context"]
    assert sec["input_shape"] == "x:[1,1,256,256]"
    assert sec["precision_mode"] == "enforce_fp16"
    assert sec["input_format"] == "NCHW"
    assert sec["output_type"] == "FP32"
    assert "insert_op_config_file_path" not in sec
    sec = _ini(converter_config(input_shape=(4, 1, 512, 640), precision_mode="preferred_fp32"))[
        "ascend_context"
    ]
    assert sec["input_shape"] == "x:[4,1,512,640]"
    assert sec["precision_mode"] == "preferred_fp32"
    for mode in lite.PRECISION_MODES:
        assert f"precision_mode={mode}\n" in converter_config(precision_mode=mode)
    with pytest.raises(ValueError, match="precision_mode"):
        converter_config(precision_mode="fp16")
    with pytest.raises(ValueError, match="input_shape"):
        converter_config(input_shape=(1, 256, 256))


def test_aipp_config_normalises_like_the_training_pipeline() -> None:
    mean, std = 107.8, 33.25
    text = aipp_config({"mean": mean, "std": std}, height=256, width=320)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    body = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines) if v}
    assert text.count("aipp_op {") == 1 and text.rstrip().endswith("}")
    assert body["aipp_mode"] == "static"
    assert body["input_format"] == "YUV400_U8"
    assert body["csc_switch"] == "false"
    assert (body["src_image_size_w"], body["src_image_size_h"]) == ("320", "256")
    # (pixel - mean_chn_0 - min_chn_0) * var_reci_chn_0 must equal irkd's (pixel - mean) / std
    px = np.arange(256, dtype=np.float64)
    got = (px - float(body["mean_chn_0"]) - float(body["min_chn_0"])) * float(
        body["var_reci_chn_0"]
    )
    np.testing.assert_allclose(got, (px - mean) / std, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="std"):
        aipp_config({"mean": 100.0, "std": 0.0})
    with pytest.raises(ValueError, match="unknown"):
        aipp_config({"mean": 100.0, "std": 1.0, "scale": 2})


def test_write_converter_config_with_aipp(tmp_path: Path) -> None:
    cfg = write_converter_config(
        tmp_path / "ascend.cfg", precision_mode="preferred_fp32", aipp={"mean": 90, "std": 30}
    )
    sec = _ini(cfg.read_text())["ascend_context"]
    aipp_file = Path(sec["insert_op_config_file_path"])
    assert aipp_file.is_absolute() and aipp_file == (tmp_path / "ascend_aipp.cfg").resolve()
    assert "input_format : YUV400_U8" in aipp_file.read_text()
    assert sec["precision_mode"] == "preferred_fp32"
    assert _leftovers(tmp_path) == []
    plain = write_converter_config(tmp_path / "plain.cfg")
    assert plain.read_text() == converter_config()


def test_converter_command() -> None:
    cmd = converter_command("m/student.mindir", "cfg/ascend.cfg", "out/student_ascend")
    assert cmd == (
        "converter_lite --fmk=MINDIR --modelFile=m/student.mindir "
        "--outputFile=out/student_ascend --optimize=ascend_oriented "
        "--configFile=cfg/ascend.cfg"
    )
    cmd = converter_command(
        "/a b/s.mindir", "c.cfg", "/o/s.mindir", input_shape=SHAPE, converter="./converter_lite"
    )
    args = shlex.split(cmd)
    assert args[0] == "./converter_lite"
    assert "--modelFile=/a b/s.mindir" in args
    assert "--outputFile=/o/s" in args  # the converter appends .mindir itself
    assert args[-1] == "--inputShape=x:1,1,256,256"


# --------------------------------------------------------------------------- Lite runner


def test_run_lite_raises_a_clear_error_without_mindspore_lite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.mindir"
    model.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "mindspore_lite", None)  # import -> ImportError
    lite._lite_import_error.cache_clear()
    try:
        assert not lite_available()
        with pytest.raises(LiteUnavailableError, match="no wheel for Python 3.11") as err:
            run_lite(model, _x())
        assert not isinstance(err.value, ImportError)
        with pytest.raises(ValueError, match="device"):
            run_lite(model, _x(), device="npu")  # type: ignore[arg-type]
    finally:
        lite._lite_import_error.cache_clear()


def _fake_lite(calls: list[tuple[Any, ...]]) -> types.ModuleType:
    """A stand-in for mindspore_lite with the documented surface, recording calls."""

    class FakeTensor:
        def __init__(self, shape: list[int]) -> None:
            self.shape = shape
            self.data: np.ndarray | None = None

        def set_data_from_numpy(self, a: np.ndarray) -> None:
            calls.append(("set_data", a.shape))
            self.data = a

        def get_data_to_numpy(self) -> np.ndarray:
            assert self.data is not None
            return self.data

    class Model:
        def build_from_file(self, path: str, model_type: str, context: Any, *cfg: str) -> None:
            calls.append(("build", path, model_type, list(context.target), cfg))
            self.inputs = [FakeTensor([1, 1, 256, 256])]

        def get_inputs(self) -> list[FakeTensor]:
            return self.inputs

        def resize(self, inputs: list[FakeTensor], shapes: list[list[int]]) -> None:
            calls.append(("resize", shapes))
            self.inputs = [FakeTensor(s) for s in shapes]

        def predict(self, inputs: list[FakeTensor]) -> list[FakeTensor]:
            calls.append(("predict",))
            out = FakeTensor(inputs[0].shape)
            out.data = -inputs[0].data  # type: ignore[operator]
            return [out]

    class Context:
        def __init__(self) -> None:
            self.target: list[str] = []
            self.ascend = types.SimpleNamespace(device_id=None, provider=None)
            self.cpu = types.SimpleNamespace(thread_num=None)

    mod = types.ModuleType("mindspore_lite")
    mod.Context = Context  # type: ignore[attr-defined]
    mod.Model = Model  # type: ignore[attr-defined]
    mod.ModelType = types.SimpleNamespace(MINDIR="MINDIR")  # type: ignore[attr-defined]
    return mod


def test_run_lite_drives_the_documented_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.mindir"
    model.write_bytes(b"x")
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setitem(sys.modules, "mindspore_lite", _fake_lite(calls))
    lite._lite_import_error.cache_clear()
    try:
        x = _x((2, 1, 256, 256))
        outs, lat = run_lite(model, x, device="ascend", warmup=2, runs=3)
    finally:
        lite._lite_import_error.cache_clear()
    assert calls[0] == ("build", str(model), "MINDIR", ["ascend"], ())
    assert ("resize", [[2, 1, 256, 256]]) in calls  # batch 2 differs from the model's 1
    assert sum(c[0] == "predict" for c in calls) == 5
    assert len(lat) == 3 and all(t >= 0 for t in lat)
    np.testing.assert_array_equal(outs[0], -x)


@pytest.mark.skipif(not lite_available(), reason=LITE_REASON)
def test_run_lite_cpu_matches_the_eager_network(exported: dict[str, tuple[nn.Cell, Path]]) -> None:
    net, path = exported["dnanet_xs"]
    x = _x(seed=3)
    outs, lat = run_lite(path, x, device="cpu", warmup=1, runs=2)
    ref = net(ms.Tensor(x)).asnumpy()
    assert len(lat) == 2
    assert float(np.max(np.abs(outs[0] - ref))) <= TOL


def test_package_exports() -> None:
    import deploy_ascend

    for name in deploy_ascend.__all__:
        assert hasattr(deploy_ascend, name), name
    assert os.environ.get("ONEDNN_MAX_CPU_ISA")
