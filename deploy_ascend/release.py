"""The Ascend side of ``irkd release`` and ``irkd bench latency`` (MindSpore, MindIR, Lite).

:func:`export_for_release` writes a model's static MindIR (1x1x256x256), re-checks it with
``mindspore.load`` + ``nn.GraphCell`` against the eager network, tries the dynamic export
(dynamic batch, H and W; a failed dynamic export stops the release: MindSpore compiles
later graphs wrongly after a failed compile), and
writes the converter_lite configurations (plain, and with AIPP doing the normalisation) and
the command. :func:`latency_runtimes` lists the runtimes present here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np

from deploy_ascend.latency import eager_latency, mindir_latency
from deploy_ascend.lite import converter_command, lite_available, run_lite, write_converter_config
from deploy_ascend.mindir_export import DynamicShapeError, export_mindir, roundtrip_check
from irkd.bench import latency_summary
from ms_impl.models import create_model
from ms_impl.predict import load_network

__all__ = [
    "ROUNDTRIP_ATOL",
    "ROUNDTRIP_RTOL",
    "export_for_release",
    "latency_runtimes",
    "versions",
]

ROUNDTRIP_ATOL = 1e-4
ROUNDTRIP_RTOL = 1e-4  # of the largest |logit|
DYNAMIC_CHECK_SHAPES = ((1, 1, 256, 256), (2, 1, 128, 160))


def export_for_release(info: Any, out_dir: Path, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Export one model (an ``irkd.release.ModelInfo``) for Ascend into ``out_dir``.

    Raises:
        ValueError: The MindIR differs from the eager network beyond
            ``ROUNDTRIP_ATOL + ROUNDTRIP_RTOL * max|logit|``.
    """
    net = load_network(info.network, info.path)
    shape = tuple(spec["shape"])
    static = export_mindir(net, out_dir / f"{info.network}.mindir", height=shape[2], width=shape[3])
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    diff = roundtrip_check(static, net, inputs)
    scale = max(float(np.abs(net(ms.Tensor(x)).asnumpy()).max()) for x in inputs)
    bound = ROUNDTRIP_ATOL + ROUNDTRIP_RTOL * scale
    if not diff <= bound:
        raise ValueError(f"MindIR vs eager max abs diff {diff:.3g} > {bound:.3g}")
    artifacts: dict[str, Any] = {"mindir": static}
    notes: list[str] = []
    checks: dict[str, Any] = {"mindir_vs_eager_max_abs": diff, "bound": bound}
    try:
        dyn = export_mindir(net, out_dir / f"{info.network}_dynamic.mindir", dynamic=True)
    except DynamicShapeError as exc:
        # Not a note and carry on: after a failed graph compile MindSpore 2.10 compiles the
        # next graphs of the process wrongly, so nothing exported after it could be trusted.
        raise ValueError(
            f"dynamic MindIR export failed ({str(exc).splitlines()[0]}); the MindSpore "
            "process is unreliable after a failed compile, so the release stops here"
        ) from exc
    else:
        dyn_inputs = [rng.standard_normal(s).astype(np.float32) for s in DYNAMIC_CHECK_SHAPES]
        dyn_diff = roundtrip_check(dyn, net, dyn_inputs)
        if not dyn_diff <= bound:
            raise ValueError(f"dynamic MindIR vs eager max abs diff {dyn_diff:.3g} > {bound:.3g}")
        artifacts["mindir_dynamic"] = dyn
        checks["mindir_dynamic_vs_eager_max_abs"] = dyn_diff
        checks["mindir_dynamic_shapes"] = [list(s) for s in DYNAMIC_CHECK_SHAPES]
    cfg = write_converter_config(out_dir / "converter_ascend.cfg", input_shape=shape)
    cfg_aipp = write_converter_config(
        out_dir / "converter_ascend_aipp.cfg",
        input_shape=shape,
        aipp={"mean": info.mean, "std": info.std},
    )
    artifacts.update({"converter_config": cfg, "converter_config_aipp": cfg_aipp})
    for p in sorted(out_dir.glob("*aipp*.cfg")):
        if p != cfg_aipp:
            artifacts["aipp_config"] = p
            # the release folder moves: name the AIPP file relative to the config's folder
            text = cfg_aipp.read_text().replace(str(p.resolve()), p.name)
            cfg_aipp.write_text(text)
    # Commands name files relative to this folder (run them from it): the release moves.
    commands = {
        "cwd": f"{out_dir.parent.name}/{out_dir.name}",
        "converter_lite": converter_command(
            static.name, cfg.name, f"{info.network}_ascend", input_shape=shape
        ),
        "converter_lite_aipp": converter_command(
            static.name, cfg_aipp.name, f"{info.network}_ascend_aipp", input_shape=shape
        ),
    }
    if not lite_available():
        notes.append(
            "mindspore_lite/converter_lite are not installed here: convert on the Ascend host "
            "with the converter_lite command"
        )
    return {
        "artifacts": artifacts,
        "checks": checks,
        "commands": commands,
        "notes": notes,
    }


def latency_runtimes(
    *, warmup: int = 10, runs: int = 50
) -> dict[str, Callable[[str, str | None, Path], dict[str, Any]]]:
    """Runtime name -> ``fn(network, weights_or_None, workdir) -> latency`` (batch 1, 256^2).

    MindSpore eager (PyNative), the MindIR through ``nn.GraphCell``, and mindspore_lite on
    the CPU where it is installed.
    """
    shape = (1, 1, 256, 256)

    def net_of(network: str, weights: str | None) -> Any:
        if weights:
            return load_network(network, weights)
        ms.set_seed(0)
        net = create_model(network)
        net.set_train(False)
        return net

    def mindir_of(network: str, weights: str | None, workdir: Path) -> Path:
        path = workdir / f"{network}.mindir"
        if not path.exists():
            export_mindir(net_of(network, weights), path)
        return path

    def keep(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k: d[k] for k in ("median_ms", "p90_ms", "mean_ms") if k in d}

    out: dict[str, Callable[[str, str | None, Path], dict[str, Any]]] = {
        "mindspore-pynative": lambda n, w, d: keep(
            eager_latency(net_of(n, w), shape, mode="pynative", warmup=warmup, runs=runs)
        ),
        "mindir-graphcell": lambda n, w, d: keep(
            mindir_latency(mindir_of(n, w, d), shape, warmup=warmup, runs=runs)
        ),
    }
    if lite_available():  # pragma: no cover - no wheel for Python 3.11

        def lite(n: str, w: str | None, d: Path) -> dict[str, Any]:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            _, lat = run_lite(mindir_of(n, w, d), x, device="cpu", warmup=warmup, runs=runs)
            return keep(latency_summary(lat))

        out["mindspore-lite-cpu"] = lite
    return out


def versions() -> dict[str, str]:
    """Tool versions of the Ascend path."""
    v = {"mindspore": ms.__version__}
    if lite_available():  # pragma: no cover - no wheel for Python 3.11
        import mindspore_lite

        v["mindspore_lite"] = getattr(mindspore_lite, "__version__", "unknown")
    return v
