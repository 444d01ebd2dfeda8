"""deploy_jetson: ONNX export and checks, TensorRT operator check, engine builder, latency.

TensorRT needs an NVIDIA GPU (JetPack on a Jetson): the build/run tests skip without it;
everything up to the TensorRT call (argument and shape checks, operator check, calibration
batches and cache, trtexec command) is tested here.
"""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from deploy_jetson import tensorrt_build as tb
from deploy_jetson.latency import ort_latency, torch_latency
from deploy_jetson.onnx_export import (
    DEFAULT_OPSET,
    check_onnx,
    export_onnx,
    ort_compare,
    verify_onnx,
)
from deploy_jetson.tensorrt_build import (
    CalibrationCache,
    CalibrationFeeder,
    TensorRTUnavailableError,
    build_engine,
    calibration_batches,
    resolve_shapes,
    run_engine,
    tensorrt_available,
    trtexec_command,
)
from deploy_jetson.trt_ops import (
    DEFAULT_TRT_VERSION,
    JETPACK_TRT_VERSION,
    TRT_SUPPORTED_OPS,
    check_trt_ops,
    unsupported_ops,
)
from irkd.bench import latency_summary
from irkd.zoo import MODELS
from torch_ref.models import create_model

TOL = 1e-4  # max |onnxruntime - eager| on logits of standard deviation ~1
NO_TRT = "tensorrt is not installed (needs an NVIDIA GPU / JetPack)"
needs_trt = pytest.mark.skipif(not tensorrt_available(), reason=NO_TRT)
without_trt = pytest.mark.skipif(tensorrt_available(), reason="tensorrt is installed here")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IRKD_TORCH_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(n)


def seeded_network(name: str, seed: int = 0) -> nn.Module:
    """A registered network with seeded random weights whose logits have std ~1.

    Fresh initialisation gives nearly constant logits (the head's prior bias dominates), which
    would make an absolute tolerance meaningless: BatchNorm statistics and biases are drawn
    at random, then the head is rescaled so that the logits of a probe input are standardised.
    """
    torch.manual_seed(seed)
    net = create_model(name).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        head = net.final if hasattr(net, "final") else net.head
        y = net(torch.randn(2, 1, 64, 64, generator=g))
        head.weight /= y.std()
        head.bias.copy_((head.bias - y.mean()) / y.std())
    return net


class _Exports(dict):
    """(network, dynamic) -> (seeded network, ONNX file), each exported on first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root
        self.nets = {}

    def __missing__(self, key):
        name, dynamic = key
        if name not in self.nets:
            self.nets[name] = seeded_network(name)
        net = self.nets[name]
        path = export_onnx(
            net, self.root / f"{name}_{'dyn' if dynamic else 'static'}.onnx", dynamic=dynamic
        )
        self[key] = (net, path)
        return self[key]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Teacher (slow tests only) and student, each exported static (1x1x256x256) and dynamic."""
    return _Exports(tmp_path_factory.mktemp("onnx"))


# --------------------------------------------------------------------------- ONNX export


@pytest.mark.parametrize("name", [pytest.param("dnanet", marks=pytest.mark.slow), "dnanet_xs"])
def test_static_export_round_trips(exported, name):
    net, path = exported[name, False]
    info = check_onnx(path)
    assert info["opset"] == DEFAULT_OPSET
    assert info["inputs"] == [{"name": "image", "shape": [1, 1, 256, 256], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "logits", "shape": [1, 1, 256, 256], "dtype": "float32"}]
    assert info["op_counts"]["Conv"] > 10 and info["nodes"] == sum(info["op_counts"].values())
    assert info["metadata"]["irkd.dynamic"] == "false"
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.stem)) == [
        path.name
    ]  # one self-contained file, no external data, no temporary left over
    x = np.random.default_rng(0).standard_normal((1, 1, 256, 256)).astype(np.float32)
    with torch.no_grad():
        assert net(torch.from_numpy(x)).std() > 0.3  # the comparison is not of a constant
    diff = ort_compare(path, net, x)
    assert diff <= TOL, f"{name} static: max |ort - eager| = {diff:.3g}"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        sess.run(None, {"image": np.zeros((1, 1, 128, 160), np.float32)})


@pytest.mark.parametrize("name", [pytest.param("dnanet", marks=pytest.mark.slow), "dnanet_xs"])
def test_dynamic_export_round_trips_at_two_shapes(exported, name):
    net, path = exported[name, True]
    info = check_onnx(path)
    dyn = ["batch", 1, "height", "width"]
    assert info["inputs"][0]["shape"] == dyn and info["outputs"][0]["shape"] == dyn
    diffs = verify_onnx(path, net, [(1, 1, 256, 256), (2, 1, 128, 160)])
    assert list(diffs) == ["1x1x256x256", "2x1x128x160"]
    assert max(diffs.values()) <= TOL, f"{name} dynamic: {diffs}"


def test_export_keeps_mode_and_checks_sizes(tmp_path):
    net = create_model("unet_s").train()
    export_onnx(net, tmp_path / "u.onnx", height=64, width=64)
    assert net.training  # eval during the export only
    with pytest.raises(ValueError, match="multiples of 16"):
        export_onnx(net, tmp_path / "bad.onnx", height=100, width=64)
    assert not (tmp_path / "bad.onnx").exists()


def test_failed_export_leaves_previous_file(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(Broken(), path, height=32, width=32)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def _tiny_model(
    op: str = "Relu",
    *,
    name: str = "n0",
    opset: int = 17,
    domain: str = "",
    out_shape: tuple[int, ...] = (1, 1, 4, 4),
    **attrs,
) -> onnx.ModelProto:
    """image (1, 1, 4, 4) -> op -> logits, a valid ONNX model."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_shape))
    node = helper.make_node(op, ["image"], ["logits"], name=name, domain=domain, **attrs)
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    graph = helper.make_graph([node], "tiny", [x], [y])
    return helper.make_model(graph, opset_imports=opsets)


def test_check_onnx_rejects_invalid_and_external_data(tmp_path):
    bad = _tiny_model("NoSuchOp")
    onnx.save(bad, tmp_path / "bad.onnx")
    with pytest.raises(onnx.checker.ValidationError):
        check_onnx(tmp_path / "bad.onnx")
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [1, 4], np.ones(4, np.float32).tobytes(), raw=True
    )
    graph = helper.make_graph(
        [helper.make_node("Add", ["image", "w"], ["logits"])], "g", [x], [y], [w]
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        size_threshold=0,
    )
    with pytest.raises(ValueError, match="external data"):
        check_onnx(tmp_path / "ext.onnx")
    with pytest.raises(FileNotFoundError):
        check_onnx(tmp_path / "missing.onnx")


# --------------------------------------------------------------------------- TensorRT operators


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize(
    "name",
    [  # the larger DNANets export the same operators as dnanet_xxs: slow
        pytest.param(n, marks=pytest.mark.slow) if n in ("dnanet", "dnanet_s", "dnanet_xs") else n
        for n in sorted(MODELS)
    ],
)
def test_every_network_passes_the_trt_op_check(tmp_path, name, dynamic):
    path = export_onnx(
        create_model(name), tmp_path / f"{name}.onnx", height=64, width=64, dynamic=dynamic
    )
    for version in TRT_SUPPORTED_OPS:
        assert unsupported_ops(path, version) == [], version
        check_trt_ops(path, version)


def test_trt_op_check_fails_on_unsupported_operator():
    model = _tiny_model("Det", name="bad_det", out_shape=(1, 1))
    onnx.checker.check_model(model, full_check=True)  # a valid graph, just not for TensorRT
    for version in TRT_SUPPORTED_OPS:
        assert unsupported_ops(model, version) == ["Det"]
        with pytest.raises(ValueError, match="Det") as err:
            check_trt_ops(model, version)
        assert "bad_det" in str(err.value) and f"TensorRT {version}" in str(err.value)


def test_trt_op_check_is_version_aware():
    hardmax = _tiny_model("Hardmax", name="hm")  # added in TensorRT 9.2
    assert unsupported_ops(hardmax, "8.6") == ["Hardmax"]
    assert unsupported_ops(hardmax, "10.3") == []
    with pytest.raises(ValueError, match="opset 18 outside TensorRT 8.6"):
        check_trt_ops(_tiny_model("Relu", opset=18), "8.6")
    check_trt_ops(_tiny_model("Relu", opset=18), "10.3")
    custom = _tiny_model("MyOp", name="plug", domain="com.example")
    with pytest.raises(ValueError, match="com.example::MyOp.*plug"):
        check_trt_ops(custom)
    with pytest.raises(ValueError, match="unknown TensorRT version"):
        unsupported_ops(hardmax, "7.0")


def test_trt_op_check_resize_modes():
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 8, 8])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    node = helper.make_node("Resize", ["image", "", "scales"], ["logits"], name="up", mode="cubic")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], [scales]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(ValueError, match=r"Resize \[mode=cubic\]: up"):
        check_trt_ops(model)


def test_trt_op_lists():
    assert DEFAULT_TRT_VERSION in TRT_SUPPORTED_OPS
    assert set(JETPACK_TRT_VERSION.values()) <= set(TRT_SUPPORTED_OPS)
    assert TRT_SUPPORTED_OPS["8.6"] < TRT_SUPPORTED_OPS["10.3"]
    assert all(isinstance(v, frozenset) for v in TRT_SUPPORTED_OPS.values())


# --------------------------------------------------------------------------- calibration


def test_calibration_batches():
    imgs = np.arange(10 * 8 * 8, dtype=np.float64).reshape(10, 8, 8)
    batches = list(calibration_batches(imgs, 4))
    assert len(batches) == 2  # the last partial batch (2 images) is dropped
    assert all(b.shape == (4, 1, 8, 8) and b.dtype == np.float32 for b in batches)
    assert all(b.flags.c_contiguous for b in batches)
    np.testing.assert_array_equal(batches[1][:, 0], imgs[4:8].astype(np.float32))
    assert len(list(calibration_batches(imgs[:, None], 5))) == 2
    for bad, match in [
        (np.zeros((3, 2, 8, 8)), "N, 1, H, W"),
        (np.zeros((8,)), "N, 1, H, W"),
        (np.full((4, 8, 8), np.nan), "NaN"),
        (np.zeros((3, 8, 8)), "fewer than one batch"),
    ]:
        with pytest.raises(ValueError, match=match):
            calibration_batches(bad, 4)
    with pytest.raises(ValueError, match="positive integer"):
        calibration_batches(imgs, 0)


def test_calibration_feeder_and_cache(tmp_path):
    copied = []

    def to_device(arr):
        copied.append(arr.copy())
        return 1000 + len(copied)

    cache_path = tmp_path / "sub" / "calib.cache"
    feeder = CalibrationFeeder(np.ones((5, 1, 8, 8)), 2, cache_path, to_device)
    assert feeder.get_batch_size() == 2
    assert feeder.read_calibration_cache() is None  # no cache yet: calibrate
    assert feeder.get_batch(["image"]) == [1001]
    assert feeder.get_batch(["image"]) == [1002]
    assert feeder.get_batch(["image"]) is None  # 5 images -> 2 full batches
    assert [a.shape for a in copied] == [(2, 1, 8, 8)] * 2 and feeder.served == 2
    feeder.write_calibration_cache(memoryview(b"TRT-cache\x00\x01"))
    assert cache_path.read_bytes() == b"TRT-cache\x00\x01"
    assert [p.name for p in cache_path.parent.iterdir()] == ["calib.cache"]
    # with a cache, no images are needed (TensorRT reads the cache and asks for no batch)
    cached = CalibrationFeeder(None, 2, cache_path, to_device)
    assert cached.read_calibration_cache() == b"TRT-cache\x00\x01"
    assert cached.get_batch(["image"]) is None
    with pytest.raises(ValueError, match="calibration images or an existing cache"):
        CalibrationFeeder(None, 2, tmp_path / "none.cache", to_device)
    empty = CalibrationCache(tmp_path / "empty.cache")
    (tmp_path / "empty.cache").write_bytes(b"")
    assert empty.read() is None
    assert CalibrationCache(None).read() is None
    CalibrationCache(None).write(b"x")  # no cache file: a no-op


# --------------------------------------------------------------------------- builder (no TensorRT)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    net = create_model("unet_s")
    return {
        "static": export_onnx(net, root / "static.onnx", height=64, width=64),
        "dynamic": export_onnx(net, root / "dynamic.onnx", height=64, width=64, dynamic=True),
    }


def test_trtexec_command():
    cmd = trtexec_command("m.onnx", "m.engine")
    assert cmd == "trtexec --onnx=m.onnx --saveEngine=m.engine --fp16"
    cmd = trtexec_command(
        "my dir/m.onnx", "m.engine", fp16=False, int8=True, calib_cache="c.cache", workspace_mb=2048
    )
    assert cmd == (
        "trtexec '--onnx=my dir/m.onnx' --saveEngine=m.engine --int8 --calib=c.cache "
        "--memPoolSize=workspace:2048"
    )
    shapes = ((1, 1, 128, 128), (1, 1, 256, 256), (4, 1, 512, 512))
    cmd = trtexec_command("m.onnx", "m.engine", shapes=shapes)
    assert cmd.endswith(
        "--fp16 --minShapes=image:1x1x128x128 --optShapes=image:1x1x256x256 "
        "--maxShapes=image:4x1x512x512"
    )
    assert trtexec_command("m.onnx", "e", shapes={"x": shapes}) == trtexec_command(
        "m.onnx", "e", shapes=shapes, input_name="x"
    )
    with pytest.raises(ValueError, match="int8"):
        trtexec_command("m.onnx", "m.engine", calib_cache="c.cache")


def test_resolve_shapes(small_onnx):
    assert resolve_shapes(small_onnx["static"]) == {}
    assert resolve_shapes(small_onnx["static"], (1, 1, 64, 64), None, (1, 1, 64, 64)) == {}
    with pytest.raises(ValueError, match="differs"):
        resolve_shapes(small_onnx["static"], max_shape=(2, 1, 64, 64))
    dyn = small_onnx["dynamic"]
    with pytest.raises(ValueError, match="pass min_shape and max_shape"):
        resolve_shapes(dyn)
    lo, opt, hi = (1, 1, 64, 64), (1, 1, 256, 256), (2, 1, 512, 512)
    assert resolve_shapes(dyn, lo, opt, hi) == {"image": (lo, opt, hi)}
    assert resolve_shapes(dyn, lo, None, hi) == {"image": (lo, hi, hi)}
    with pytest.raises(ValueError, match="min <= opt <= max"):
        resolve_shapes(dyn, hi, opt, lo)
    with pytest.raises(ValueError, match="axis 1 is fixed"):
        resolve_shapes(dyn, (1, 3, 64, 64), opt, hi)
    with pytest.raises(ValueError, match="rank"):
        resolve_shapes(dyn, (1, 64, 64), opt, hi)


@without_trt
def test_build_engine_without_tensorrt_says_so(small_onnx, tmp_path):
    with pytest.raises(TensorRTUnavailableError) as err:
        build_engine(
            small_onnx["dynamic"],
            tmp_path / "m.engine",
            min_shape=(1, 1, 64, 64),
            opt_shape=(1, 1, 256, 256),
            max_shape=(4, 1, 512, 512),
        )
    msg = str(err.value)
    assert not isinstance(err.value, ImportError)
    assert NO_TRT in msg and "trtexec --onnx=" in msg and "--maxShapes=image:4x1x512x512" in msg
    assert not (tmp_path / "m.engine").exists()
    with pytest.raises(TensorRTUnavailableError, match="not installed"):
        run_engine(tmp_path / "m.engine", np.zeros((1, 1, 64, 64), np.float32))
    with pytest.raises(TensorRTUnavailableError, match="not installed"):
        tb.EntropyCalibrator  # noqa: B018 - resolved lazily


def test_build_engine_checks_before_tensorrt(small_onnx, tmp_path):
    with pytest.raises(FileNotFoundError):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine")
    with pytest.raises(ValueError, match="calib_images"):
        build_engine(small_onnx["static"], tmp_path / "m.engine", int8=True)
    with pytest.raises(ValueError, match="only used with int8"):
        build_engine(small_onnx["static"], tmp_path / "m.engine", calib_cache=tmp_path / "c")
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_engine(
            small_onnx["static"],
            tmp_path / "m.engine",
            int8=True,
            calib_images=np.zeros((3, 64, 64)),
            calib_batch=8,
        )
    with pytest.raises(ValueError, match="must equal the static input"):
        build_engine(
            small_onnx["static"],
            tmp_path / "m.engine",
            int8=True,
            calib_images=np.zeros((8, 64, 64)),
            calib_batch=8,
        )
    with pytest.raises(ValueError, match="outside the profile"):
        build_engine(
            small_onnx["dynamic"],
            tmp_path / "m.engine",
            int8=True,
            calib_images=np.zeros((2, 1, 1024, 1024)),
            calib_batch=2,
            min_shape=(1, 1, 64, 64),
            max_shape=(2, 1, 512, 512),
        )
    with pytest.raises(ValueError, match="pass min_shape"):
        build_engine(small_onnx["dynamic"], tmp_path / "m.engine")
    onnx.save(_tiny_model("Det", name="bad_det", out_shape=(1, 1)), tmp_path / "det.onnx")
    with pytest.raises(ValueError, match="Det.*bad_det"):
        build_engine(tmp_path / "det.onnx", tmp_path / "m.engine")


# --------------------------------------------------------------------------- fake TensorRT


def _fake_trt_modules(log: list) -> dict[str, types.ModuleType]:
    """Stand-ins for ``tensorrt`` and ``cuda.bindings.runtime`` (an identity "engine").

    They follow the names and call shapes of the TensorRT 10 / cuda-python APIs closely
    enough to run every line of ``build_engine``, the calibrator and ``run_engine`` here;
    the real libraries are exercised by the GPU-only tests below.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    ns = types.SimpleNamespace
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = ns(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = ns(WORKSPACE="workspace")
    trt.BuilderFlag = ns(FP16="fp16", INT8="int8")
    trt.TensorIOMode = ns(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32

    class Calibrator2:
        def __init__(self):
            log.append("calibrator")

    trt.IInt8EntropyCalibrator2 = Calibrator2

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            log.append(("profile", name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        int8_calibrator = None

        def set_memory_pool_limit(self, pool, size):
            log.append((pool, size))

        def set_flag(self, flag):
            log.append(flag)

        def add_optimization_profile(self, p):
            log.append("add_profile")

        def set_calibration_profile(self, p):
            log.append("calibration_profile")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            log.append(("network_flags", flags))
            return "network"

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            cal = config.int8_calibrator
            if cal is not None and cal.read_calibration_cache() is None:
                n = cal.get_batch_size()
                while (ptrs := cal.get_batch(["image"])) is not None:
                    log.append(("batch", n, len(ptrs)))
                cal.write_calibration_cache(b"scales")
            return b"ENGINE"

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            return data.startswith(b"\x08")  # an ONNX ModelProto starts with ir_version

    class Context:
        def __init__(self):
            self.addr, self.shape = {}, None

        def set_input_shape(self, name, shape):
            self.shape = shape
            return True

        def get_tensor_shape(self, name):
            return self.shape

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            memory[self.addr["logits"]] = memory[self.addr["image"]]  # identity network
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["image", "logits"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "image" else "out"

        def get_tensor_dtype(self, name):
            return "float"

        def create_execution_context(self):
            return Context()

    trt.Builder, trt.OnnxParser = Builder, Parser
    trt.Runtime = lambda logger: ns(
        deserialize_cuda_engine=lambda b: Engine() if b == b"ENGINE" else None
    )

    memory: dict[int, bytes] = {}
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaMemcpyKind = ns(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def malloc(n):
        ptr = 4096 * (len(memory) + 1)
        memory[ptr] = bytes(n)
        return 0, ptr

    def memcpy(dst, src, n, kind):
        if kind == 1:
            memory[dst] = ctypes.string_at(src, n)
        else:
            ctypes.memmove(dst, memory[src], n)
        return (0,)

    rt.cudaMalloc, rt.cudaMemcpy = malloc, memcpy
    rt.cudaFree = lambda ptr: (0,)
    rt.cudaStreamCreate = lambda: (0, 7)
    rt.cudaStreamSynchronize = rt.cudaStreamDestroy = lambda s: (0,)
    return {
        "tensorrt": trt,
        "cuda": types.ModuleType("cuda"),
        "cuda.bindings": types.ModuleType("cuda.bindings"),
        "cuda.bindings.runtime": rt,
    }


@pytest.fixture
def fake_trt(monkeypatch):
    log: list = []
    for name, mod in _fake_trt_modules(log).items():
        monkeypatch.setitem(sys.modules, name, mod)
    tb.entropy_calibrator_class.cache_clear()
    yield log
    tb.entropy_calibrator_class.cache_clear()


def test_build_and_run_with_fake_tensorrt(fake_trt, small_onnx, tmp_path):
    assert tensorrt_available()
    engine = build_engine(
        small_onnx["dynamic"],
        tmp_path / "e" / "m.engine",
        workspace_mb=64,
        min_shape=(1, 1, 32, 32),
        max_shape=(2, 1, 128, 128),
    )
    assert engine.read_bytes() == b"ENGINE" and [p.name for p in engine.parent.iterdir()] == [
        "m.engine"
    ]
    lo, hi = (1, 1, 32, 32), (2, 1, 128, 128)
    assert ("profile", "image", lo, hi, hi) in fake_trt and "add_profile" in fake_trt
    assert ("workspace", 64 << 20) in fake_trt and "fp16" in fake_trt and "int8" not in fake_trt
    assert ("network_flags", 0) in fake_trt  # TensorRT 10: explicit batch is the only mode
    x = np.random.default_rng(0).standard_normal((2, 1, 64, 64)).astype(np.float32)
    outputs, latencies = run_engine(engine, x, warmup=2, runs=4)
    np.testing.assert_array_equal(outputs["logits"], x)  # the fake engine is the identity
    assert len(latencies) == 4 and all(t >= 0 for t in latencies)
    with pytest.raises(ValueError, match="engine inputs"):
        run_engine(engine, {"x": x})


def test_int8_calibration_with_fake_tensorrt(fake_trt, small_onnx, tmp_path):
    cache = tmp_path / "calib.cache"
    images = np.zeros((5, 64, 64), np.float32)
    build_engine(
        small_onnx["static"],
        tmp_path / "a.engine",
        int8=True,
        calib_images=images,
        calib_cache=cache,
        calib_batch=1,
    )
    assert cache.read_bytes() == b"scales"
    assert [e for e in fake_trt if e[0] == "batch"] == [("batch", 1, 1)] * 5
    assert "int8" in fake_trt and "calibration_profile" not in fake_trt  # static graph
    fake_trt.clear()
    build_engine(small_onnx["static"], tmp_path / "b.engine", int8=True, calib_cache=cache)
    assert not [e for e in fake_trt if e[0] == "batch"]  # the cache was used
    fake_trt.clear()
    build_engine(
        small_onnx["dynamic"],
        tmp_path / "c.engine",
        int8=True,
        calib_images=images,
        calib_batch=2,
        min_shape=(1, 1, 32, 32),
        max_shape=(2, 1, 64, 64),
    )
    assert "calibration_profile" in fake_trt
    assert ("profile", "image", (2, 1, 64, 64), (2, 1, 64, 64), (2, 1, 64, 64)) in fake_trt
    assert [e for e in fake_trt if e[0] == "batch"] == [("batch", 2, 1)] * 2
    assert issubclass(tb.EntropyCalibrator, sys.modules["tensorrt"].IInt8EntropyCalibrator2)


# --------------------------------------------------------------------------- TensorRT (GPU only)


@needs_trt
def test_tensorrt_fp16_engine_matches_eager(tmp_path):
    net = seeded_network("dnanet_xs")
    onnx_path = export_onnx(net, tmp_path / "xs.onnx", dynamic=True)
    engine = build_engine(
        onnx_path,
        tmp_path / "xs.engine",
        min_shape=(1, 1, 128, 128),
        opt_shape=(1, 1, 256, 256),
        max_shape=(2, 1, 256, 256),
    )
    x = np.random.default_rng(0).standard_normal((2, 1, 128, 160)).astype(np.float32)
    outputs, latencies = run_engine(engine, x, warmup=2, runs=5)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert outputs["logits"].shape == ref.shape and len(latencies) == 5
    assert np.abs(outputs["logits"].astype(np.float32) - ref).max() < 5e-2  # FP16 kernels


@needs_trt
def test_tensorrt_int8_engine_writes_calibration_cache(tmp_path):
    net = seeded_network("dnanet_xxs")
    onnx_path = export_onnx(net, tmp_path / "xxs.onnx", height=128, width=128)
    calib = np.random.default_rng(1).standard_normal((16, 1, 128, 128)).astype(np.float32)
    cache = tmp_path / "calib.cache"
    build_engine(
        onnx_path,
        tmp_path / "a.engine",
        int8=True,
        calib_images=calib,
        calib_cache=cache,
        calib_batch=1,
    )
    assert cache.stat().st_size > 0
    build_engine(onnx_path, tmp_path / "b.engine", int8=True, calib_cache=cache)  # cache only
    outputs, _ = run_engine(tmp_path / "b.engine", calib[:1], warmup=1, runs=2)
    assert np.isfinite(outputs["logits"]).all()


# --------------------------------------------------------------------------- latency


def test_latency_helpers(small_onnx):
    ort_stats = ort_latency(
        small_onnx["static"], (1, 1, 64, 64), warmup=1, runs=3, providers=["CPUExecutionProvider"]
    )
    assert ort_stats["provider"] == "CPUExecutionProvider" and ort_stats["runs"] == 3
    assert 0 < ort_stats["min_ms"] <= ort_stats["median_ms"] <= ort_stats["p90_ms"]
    assert ort_stats["threads"] == 1  # follows IRKD_TORCH_THREADS
    dyn = ort_latency(
        small_onnx["dynamic"], (2, 1, 32, 48), warmup=0, runs=1, providers=["CPUExecutionProvider"]
    )
    assert dyn["shape"] == [2, 1, 32, 48]
    net = create_model("unet_s").train()
    stats = torch_latency(net, (1, 1, 64, 64), warmup=1, runs=3)
    assert (
        stats["device"] == "cpu"
        and stats["mean_ms"] > 0
        and set(stats) >= {"median_ms", "p90_ms", "mean_ms"}
    )
    assert net.training  # mode restored
    with pytest.raises(ValueError, match="runs"):
        torch_latency(net, (1, 1, 64, 64), runs=0)
    with pytest.raises(ValueError, match="N, 1, H, W"):
        ort_latency(small_onnx["static"], (64, 64))
    assert latency_summary([1.0, 2.0, 3.0])["median_ms"] == 2.0
