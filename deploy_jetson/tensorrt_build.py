"""TensorRT engine builder (FP16, INT8 with an entropy calibrator) and runner.

Why this module is long: the builder and the runner share the lazily imported TensorRT and
CUDA bindings and the shape checks; everything up to the TensorRT calls is plain Python,
kept next to them so that it is tested here.

``tensorrt`` and a CUDA binding (``cuda-python``, else ``pycuda``) are imported only when an
engine is built or run: they exist on a Jetson (JetPack) or an NVIDIA GPU machine, not here.
Everything before that step is plain Python and numpy and is tested anywhere: argument and
shape checks, the operator check against the TensorRT of the JetPack
(:mod:`deploy_jetson.trt_ops`), the calibration batches and cache, and the equivalent
``trtexec`` command line.

The API calls are those common to TensorRT 8.6 (JetPack 6.0) and 10.x (JetPack 6.1/6.2):
``build_serialized_network``, memory-pool limits, named I/O tensors with
``set_input_shape``/``set_tensor_address``/``execute_async_v3``. INT8 through a calibrator is
"implicit quantization", deprecated since TensorRT 10.1 but still supported in 10.3.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deploy_jetson.onnx_export import INPUT_NAME
from deploy_jetson.trt_ops import DEFAULT_TRT_VERSION, check_trt_ops
from irkd.files import atomic_path

__all__ = [
    "CalibrationCache",
    "CalibrationFeeder",
    "ShapeRange",
    "TensorRTUnavailableError",
    "build_engine",
    "calibration_batches",
    "entropy_calibrator_class",
    "make_entropy_calibrator",
    "onnx_input_shapes",
    "resolve_shapes",
    "run_engine",
    "tensorrt_available",
    "trtexec_command",
]

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]
"""``(min, opt, max)`` shapes of one dynamic input."""

_MISSING = "tensorrt is not installed (needs an NVIDIA GPU / JetPack)"


class TensorRTUnavailableError(RuntimeError):
    """TensorRT (or a CUDA Python binding) is missing on this machine."""


def tensorrt_available() -> bool:
    """Whether ``import tensorrt`` works here."""
    try:
        importlib.import_module("tensorrt")
    except Exception:  # ImportError, or a broken install (missing libnvinfer, ...)
        return False
    return True


def _import_trt(hint: str = "") -> Any:
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:
        raise TensorRTUnavailableError(f"{_MISSING}: {exc}{hint}") from None


# --------------------------------------------------------------------------- shapes


def onnx_input_shapes(onnx_path: str | os.PathLike[str]) -> dict[str, tuple[int | str, ...]]:
    """Graph inputs of an ONNX file: name -> shape (ints, names for dynamic dims)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, tuple[int | str, ...]] = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        out[v.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
        )
    return out


def _as_shape(value: Sequence[int], what: str) -> Shape:
    shape = tuple(int(s) for s in value)
    if any(s < 1 for s in shape):
        raise ValueError(f"{what}: dimensions must be positive, got {shape}")
    return shape


def resolve_shapes(
    onnx_path: str | os.PathLike[str],
    min_shape: Sequence[int] | None = None,
    opt_shape: Sequence[int] | None = None,
    max_shape: Sequence[int] | None = None,
) -> dict[str, ShapeRange]:
    """The optimization-profile shapes of the dynamic input of an ONNX file.

    Args:
        onnx_path: The ``.onnx`` file (one graph input).
        min_shape: Smallest input shape the engine accepts.
        opt_shape: The shape TensorRT tunes for (defaults to ``max_shape``).
        max_shape: Largest input shape the engine accepts.

    Returns:
        ``{input_name: (min, opt, max)}``; empty for a static graph (shapes given for a static
        graph must equal its shape).

    Raises:
        ValueError: Shapes missing for a dynamic input, of the wrong rank, contradicting a
            fixed dimension, or not ordered min <= opt <= max.
    """
    inputs = onnx_input_shapes(onnx_path)
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path}: expected one graph input, got {list(inputs)}")
    ((name, dims),) = inputs.items()
    given = {"min": min_shape, "opt": opt_shape, "max": max_shape}
    dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int) or d < 1]
    if not dynamic:
        for key, s in given.items():
            if s is not None and tuple(int(v) for v in s) != dims:
                raise ValueError(
                    f"{onnx_path} is static with input {name} {dims}; "
                    f"{key}_shape {tuple(s)} differs"
                )
        return {}
    if min_shape is None or max_shape is None:
        labels = ", ".join(f"axis {i} ({dims[i]})" for i in dynamic)
        raise ValueError(
            f"{onnx_path}: input {name} {dims} has dynamic {labels}: pass min_shape and "
            "max_shape (and opt_shape) for the optimization profile"
        )
    lo = _as_shape(min_shape, "min_shape")
    hi = _as_shape(max_shape, "max_shape")
    opt = _as_shape(opt_shape, "opt_shape") if opt_shape is not None else hi
    for key, s in (("min", lo), ("opt", opt), ("max", hi)):
        if len(s) != len(dims):
            raise ValueError(f"{key}_shape {s} has rank {len(s)}, input {name} is {dims}")
        for i, d in enumerate(dims):
            if isinstance(d, int) and d > 0 and s[i] != d:
                raise ValueError(f"{key}_shape {s}: axis {i} is fixed to {d} in {name} {dims}")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise ValueError(f"shapes must satisfy min <= opt <= max, got {lo}, {opt}, {hi}")
    return {name: (lo, opt, hi)}


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


# --------------------------------------------------------------------------- trtexec


def trtexec_command(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    fp16: bool = True,
    int8: bool = False,
    calib_cache: str | os.PathLike[str] | None = None,
    shapes: Mapping[str, ShapeRange] | ShapeRange | None = None,
    workspace_mb: int | None = None,
    input_name: str = INPUT_NAME,
) -> str:
    """The ``trtexec`` command line that builds the same engine as :func:`build_engine`.

    Args:
        onnx_path: The ``.onnx`` file.
        engine_path: Where trtexec saves the engine.
        fp16: Allow FP16 kernels (``--fp16``).
        int8: Allow INT8 kernels (``--int8``). trtexec cannot calibrate from images: pass the
            cache :func:`build_engine` wrote (``--calib``); without one trtexec uses
            placeholder scales, fine for timing but not for accuracy.
        calib_cache: INT8 calibration cache (``--calib=``).
        shapes: For a dynamic input, ``(min, opt, max)`` shapes or ``{name: (min, opt, max)}``
            (``--minShapes/--optShapes/--maxShapes``); None for a static graph.
        workspace_mb: Workspace limit in MiB (``--memPoolSize=workspace:N``).
        input_name: Input tensor name when ``shapes`` is a bare triple.

    Returns:
        One shell-quoted command line.
    """
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if fp16:
        args.append("--fp16")
    if int8:
        args.append("--int8")
    if calib_cache is not None:
        if not int8:
            raise ValueError("calib_cache is only used with int8=True")
        args.append(f"--calib={calib_cache}")
    if shapes:
        table = dict(shapes) if isinstance(shapes, Mapping) else {input_name: tuple(shapes)}
        for flag, k in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            spec = ",".join(f"{n}:{_shape_text(r[k])}" for n, r in table.items())
            args.append(f"{flag}={spec}")
    if workspace_mb is not None:
        args.append(f"--memPoolSize=workspace:{int(workspace_mb)}")
    return " ".join(shlex.quote(str(a)) for a in args)


# --------------------------------------------------------------------------- calibration


def calibration_batches(images: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """Cut calibration images into full float32 batches of shape (batch, 1, H, W).

    The images must already be normalised exactly like the network's inputs (dataset
    mean/std). A last partial batch is dropped: TensorRT's calibrator feeds fixed-size
    batches.

    Args:
        images: (N, H, W) or (N, 1, H, W) array (any real dtype; cast to float32).
        batch: Images per batch.

    Returns:
        An iterator of C-contiguous float32 arrays (inputs are checked at call time).

    Raises:
        ValueError: Wrong rank or channels, non-finite values, ``batch < 1``, or fewer
            images than one batch.
    """
    if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] != 1:
        raise ValueError(f"calibration images must be (N, H, W) or (N, 1, H, W), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"calibration images must be real numbers, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("calibration images contain NaN or Inf")
    n = arr.shape[0] // int(batch)
    if n == 0:
        raise ValueError(f"{arr.shape[0]} calibration images are fewer than one batch of {batch}")

    def gen() -> Iterator[np.ndarray]:
        for i in range(n):
            yield np.ascontiguousarray(arr[i * batch : (i + 1) * batch], dtype=np.float32)

    return gen()


class CalibrationCache:
    """An INT8 calibration cache file (TensorRT's opaque bytes), read and written safely.

    Args:
        path: The cache file, or None for no cache (nothing is read or written).
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None

    def read(self) -> bytes | None:
        """The cached bytes, or None when there is no (or an empty) cache: calibrate then."""
        if self.path is None or not self.path.is_file():
            return None
        data = self.path.read_bytes()
        return data or None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Store the bytes TensorRT hands over (atomically: never a half-written cache)."""
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(bytes(data))


class CalibrationFeeder:
    """The framework-free logic of the entropy calibrator (testable without TensorRT).

    Hands TensorRT one device buffer per call: each batch is copied into the same device
    allocation by ``copy_to_device(array) -> int`` (a device pointer), and None ends the
    calibration. When a cache exists, TensorRT reads it instead of asking for batches.

    Args:
        images: Normalised calibration images (see :func:`calibration_batches`); None or
            empty to rely on the cache only.
        batch: Images per batch.
        cache: The calibration cache (a :class:`CalibrationCache` or a path).
        copy_to_device: Copies one batch to the device and returns its address.
    """

    def __init__(
        self,
        images: np.ndarray | None,
        batch: int,
        cache: CalibrationCache | str | os.PathLike[str] | None,
        copy_to_device: Callable[[np.ndarray], int],
    ) -> None:
        self.batch = int(batch)
        self.cache = cache if isinstance(cache, CalibrationCache) else CalibrationCache(cache)
        self._copy = copy_to_device
        if images is not None and len(images) == 0:
            images = None
        if images is None and self.cache.read() is None:
            raise ValueError("INT8 calibration needs calibration images or an existing cache")
        self._batches = calibration_batches(images, batch) if images is not None else iter(())
        self.served = 0

    def get_batch_size(self) -> int:
        """Images per batch."""
        return self.batch

    def get_batch(self, names: Sequence[str]) -> list[int] | None:
        """Device address of the next batch for each input name, or None at the end."""
        arr = next(self._batches, None)
        if arr is None:
            return None
        self.served += 1
        return [self._copy(arr)] * max(1, len(names))

    def read_calibration_cache(self) -> bytes | None:
        """The cache bytes, or None to calibrate from the images."""
        return self.cache.read()

    def write_calibration_cache(self, cache: bytes | bytearray | memoryview) -> None:
        """Store the cache TensorRT produced."""
        self.cache.write(cache)


@functools.cache
def entropy_calibrator_class() -> type:
    """The ``EntropyCalibrator`` class: a ``trt.IInt8EntropyCalibrator2`` subclass.

    Defined on first use, after importing tensorrt (absent on machines without a GPU).

    Raises:
        TensorRTUnavailableError: tensorrt (or a CUDA binding) is missing.
    """
    trt = _import_trt()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]
        """INT8 entropy calibrator fed by normalised training images, with a cache file.

        Args:
            images: (N, 1, H, W) or (N, H, W) normalised images (None: cache only).
            batch: Images per batch (the calibration profile's batch).
            cache_path: Calibration cache file (read if present, written after calibration).
        """

        def __init__(
            self,
            images: np.ndarray | None,
            batch: int,
            cache_path: str | os.PathLike[str] | None,
        ) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._cuda = _Cuda()
            self._device: int | None = None
            self._nbytes = 0
            self.feeder = CalibrationFeeder(images, batch, cache_path, self._to_device)

        def _to_device(self, arr: np.ndarray) -> int:
            if self._device is None or arr.nbytes > self._nbytes:
                if self._device is not None:
                    self._cuda.free(self._device)
                self._device, self._nbytes = self._cuda.malloc(arr.nbytes), arr.nbytes
            self._cuda.htod(self._device, arr)
            return self._device

        def get_batch_size(self) -> int:
            return self.feeder.get_batch_size()

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            return self.feeder.get_batch(names)

        def read_calibration_cache(self) -> bytes | None:
            return self.feeder.read_calibration_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            self.feeder.write_calibration_cache(cache)

        def __del__(self) -> None:
            with contextlib.suppress(Exception):
                if self._device is not None:
                    self._cuda.free(self._device)

    return EntropyCalibrator


def make_entropy_calibrator(
    images: np.ndarray | None, batch: int, cache_path: str | os.PathLike[str] | None
) -> Any:
    """An ``EntropyCalibrator`` instance (see :func:`entropy_calibrator_class`)."""
    return entropy_calibrator_class()(images, batch, cache_path)


def __getattr__(name: str) -> Any:
    """``EntropyCalibrator`` resolves lazily (it needs tensorrt)."""
    if name == "EntropyCalibrator":
        return entropy_calibrator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- CUDA


class _Cuda:
    """Minimal CUDA memory/stream calls over cuda-python (preferred) or pycuda."""

    def __init__(self) -> None:
        self.kind = ""
        for mod in ("cuda.bindings.runtime", "cuda.cudart"):
            try:
                self.rt = importlib.import_module(mod)
                self.kind = "cuda-python"
                break
            except Exception:
                continue
        if not self.kind:
            try:
                self.drv = importlib.import_module("pycuda.driver")
                importlib.import_module("pycuda.autoinit")  # creates a context
                self.kind = "pycuda"
                self._allocs: dict[int, Any] = {}
            except Exception as exc:
                raise TensorRTUnavailableError(
                    f"no CUDA Python binding: install cuda-python or pycuda ({exc})"
                ) from None

    def _ok(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA runtime error {err}")
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes: int) -> int:
        if self.kind == "pycuda":
            alloc = self.drv.mem_alloc(max(1, nbytes))
            self._allocs[int(alloc)] = alloc
            return int(alloc)
        return int(self._ok(self.rt.cudaMalloc(max(1, nbytes))))

    def free(self, ptr: int) -> None:
        if self.kind == "pycuda":
            alloc = self._allocs.pop(ptr, None)
            if alloc is not None:
                alloc.free()
            return
        self._ok(self.rt.cudaFree(ptr))

    def htod(self, ptr: int, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        if self.kind == "pycuda":
            self.drv.memcpy_htod(ptr, arr)
            return
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, kind))

    def dtoh(self, arr: np.ndarray, ptr: int) -> None:
        if self.kind == "pycuda":
            self.drv.memcpy_dtoh(arr, ptr)
            return
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpy(arr.ctypes.data, ptr, arr.nbytes, kind))

    def stream(self) -> tuple[Any, int]:
        """A new stream: ``(object, handle as int)``."""
        if self.kind == "pycuda":
            s = self.drv.Stream()
            return s, int(s.handle)
        s = self._ok(self.rt.cudaStreamCreate())
        return s, int(s)

    def sync(self, stream: Any) -> None:
        if self.kind == "pycuda":
            stream.synchronize()
            return
        self._ok(self.rt.cudaStreamSynchronize(stream))

    def destroy(self, stream: Any) -> None:
        if self.kind != "pycuda":
            self._ok(self.rt.cudaStreamDestroy(stream))


# --------------------------------------------------------------------------- build


def _check_calibration_shape(
    onnx_path: Path, shape: Shape, profiles: Mapping[str, ShapeRange]
) -> None:
    """Calibration batches must fit the network: its fixed shape, or the profile's range."""
    if not profiles:
        ((name, dims),) = onnx_input_shapes(onnx_path).items()
        if tuple(shape) != tuple(dims):
            raise ValueError(
                f"calibration batches {shape} (calib_batch, 1, H, W) must equal the static "
                f"input {name} {dims}: set calib_batch and the image size to match, or export "
                "with dynamic=True"
            )
        return
    for name, (lo, _, hi) in profiles.items():
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            raise ValueError(
                f"calibration batches {shape} fall outside the profile of {name}: {lo} to {hi}"
            )


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    fp16: bool = True,
    int8: bool = False,
    calib_images: np.ndarray | None = None,
    calib_cache: str | os.PathLike[str] | None = None,
    calib_batch: int = 8,
    workspace_mb: int = 1024,
    min_shape: Sequence[int] | None = None,
    opt_shape: Sequence[int] | None = None,
    max_shape: Sequence[int] | None = None,
    trt_version: str = DEFAULT_TRT_VERSION,
) -> Path:
    """Build and save a TensorRT engine from an ONNX file with the TensorRT Python API.

    Before importing tensorrt, checks the arguments, the profile shapes and the graph's
    operators against ``trt_version`` (:func:`deploy_jetson.trt_ops.check_trt_ops`). Then:
    ``trt.Builder`` + ``OnnxParser``, a ``BuilderConfig`` with the workspace limit and the FP16/
    INT8 flags, an optimization profile for a dynamic input, and for INT8 an
    ``EntropyCalibrator`` (with a calibration profile of ``calib_batch`` images of the
    calibration size) that reads/writes ``calib_cache``. The engine is written atomically.

    Args:
        onnx_path: The ``.onnx`` file (from :func:`deploy_jetson.onnx_export.export_onnx`).
        engine_path: Destination ``.engine`` file (device- and TensorRT-version-specific).
        fp16: Allow FP16 kernels.
        int8: Allow INT8 kernels (needs ``calib_images`` or an existing ``calib_cache``).
        calib_images: Normalised training images (N, 1, H, W) or (N, H, W) for calibration.
        calib_cache: Calibration cache file, read when present, written after calibrating.
        calib_batch: Images per calibration batch.
        workspace_mb: Builder workspace limit in MiB.
        min_shape: Smallest input shape (dynamic graphs only).
        opt_shape: Shape to tune for (dynamic graphs only; default ``max_shape``).
        max_shape: Largest input shape (dynamic graphs only).
        trt_version: Operator list of ``deploy_jetson.trt_ops`` to check against.

    Returns:
        The engine path.

    Raises:
        FileNotFoundError: No ONNX file.
        ValueError: Bad arguments or shapes, or operators TensorRT cannot parse.
        TensorRTUnavailableError: tensorrt is not installed (the message gives the trtexec
            command to run on the Jetson instead).
        RuntimeError: Parsing or building failed (the parser's errors are included).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} not found")
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb < 1:
        raise ValueError(f"workspace_mb must be a positive integer, got {workspace_mb!r}")
    cache = CalibrationCache(calib_cache)
    if int8 and calib_images is None and cache.read() is None:
        raise ValueError(
            "int8=True needs calib_images (normalised training images) or an existing "
            f"calib_cache{f' ({calib_cache} not found)' if calib_cache is not None else ''}"
        )
    if not int8 and (calib_images is not None or calib_cache is not None):
        raise ValueError("calib_images/calib_cache are only used with int8=True")
    profiles = resolve_shapes(onnx_path, min_shape, opt_shape, max_shape)
    if int8 and calib_images is not None:
        calibration_batches(calib_images, calib_batch)  # validate now, not mid-build
        _check_calibration_shape(
            onnx_path, (calib_batch, 1, *np.shape(calib_images)[-2:]), profiles
        )
    check_trt_ops(onnx_path, trt_version)
    command = trtexec_command(
        onnx_path,
        engine_path,
        fp16=fp16,
        int8=int8,
        calib_cache=calib_cache if int8 and calib_cache is not None else None,
        shapes=profiles or None,
        workspace_mb=workspace_mb,
    )
    trt = _import_trt(f"; build the engine on the Jetson instead: {command}")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n" + "\n".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    calibrator = None
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = make_entropy_calibrator(calib_images, calib_batch, calib_cache)
        config.int8_calibrator = calibrator
        if profiles:
            calib_profile = builder.create_optimization_profile()
            for name, (_, opt, _) in profiles.items():
                if calib_images is not None:
                    arr = np.asarray(calib_images)
                    shape = (calib_batch, 1, *arr.shape[-2:])
                else:
                    shape = opt
                calib_profile.set_shape(name, shape, shape, shape)
            config.set_calibration_profile(calib_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    dest = Path(engine_path)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(bytes(serialized))
    del calibrator
    return dest


# --------------------------------------------------------------------------- run


def run_engine(
    engine_path: str | os.PathLike[str],
    inputs: np.ndarray | Mapping[str, np.ndarray],
    *,
    warmup: int = 10,
    runs: int = 50,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run a serialized engine and time it.

    Inputs are copied to the device once; each timed run is ``execute_async_v3`` plus a
    stream synchronisation (GPU compute time as trtexec reports it, copies excluded). The
    outputs of the last run are copied back.

    Args:
        engine_path: The ``.engine`` file (built on this device and TensorRT version).
        inputs: The ``image`` array (N, 1, H, W) float32, or ``{input_name: array}``.
        warmup: Untimed runs first.
        runs: Timed runs (at least 1).

    Returns:
        ``(outputs, latencies_ms)``: ``{output_name: array}`` and one latency per timed run.

    Raises:
        TensorRTUnavailableError: tensorrt or a CUDA binding is missing.
        ValueError: Missing or unexpected input names, or ``runs < 1``.
        RuntimeError: The engine could not be loaded or run.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    feeds = dict(inputs) if isinstance(inputs, Mapping) else {INPUT_NAME: inputs}
    trt = _import_trt()
    cuda = _Cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise RuntimeError(f"could not deserialize {engine_path} (built for another device?)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    in_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    out_names = [n for n in names if n not in in_names]
    if set(feeds) != set(in_names):
        raise ValueError(f"engine inputs are {in_names}, got {sorted(feeds)}")
    context = engine.create_execution_context()
    stream, handle = cuda.stream()
    buffers: list[int] = []
    try:
        for name in in_names:
            arr = np.ascontiguousarray(feeds[name], dtype=trt.nptype(engine.get_tensor_dtype(name)))
            if not context.set_input_shape(name, tuple(arr.shape)):
                raise ValueError(
                    f"input {name} {arr.shape} is outside the engine's shapes "
                    f"{tuple(engine.get_tensor_shape(name))}"
                )
            ptr = cuda.malloc(arr.nbytes)
            buffers.append(ptr)
            cuda.htod(ptr, arr)
            context.set_tensor_address(name, ptr)
        host: dict[str, np.ndarray] = {}
        for name in out_names:
            shape = tuple(context.get_tensor_shape(name))
            host[name] = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            ptr = cuda.malloc(host[name].nbytes)
            buffers.append(ptr)
            context.set_tensor_address(name, ptr)
        latencies: list[float] = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            if not context.execute_async_v3(handle):
                raise RuntimeError(f"TensorRT execution failed ({engine_path})")
            cuda.sync(stream)
            if i >= warmup:
                latencies.append((time.perf_counter() - t0) * 1e3)
        for name, ptr in zip(out_names, buffers[len(in_names) :], strict=True):
            cuda.dtoh(host[name], ptr)
        return host, latencies
    finally:
        for ptr in buffers:
            with contextlib.suppress(Exception):
                cuda.free(ptr)
        with contextlib.suppress(Exception):
            cuda.destroy(stream)
