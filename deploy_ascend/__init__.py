"""Ascend deployment: MindIR export and checks, MindSpore Lite converter config and runner.

- :mod:`deploy_ascend.mindir_export`: ``export_mindir``, ``roundtrip_check``, ``mindir_info``.
- :mod:`deploy_ascend.lite`: ``converter_config`` / ``write_converter_config`` (the
  ``converter_lite --configFile`` for Ascend, optional AIPP normalisation),
  ``converter_command``, ``lite_available``, ``run_lite`` (``mindspore_lite``, imported lazily).
- :mod:`deploy_ascend.latency`: ``mindir_latency`` (GraphCell), ``eager_latency``.

Importing this package imports MindSpore (through ``ms_impl``, which first sets
``ONEDNN_MAX_CPU_ISA``); ``mindspore_lite`` is optional.
"""

from deploy_ascend.latency import eager_latency, mindir_latency
from deploy_ascend.lite import (
    PRECISION_MODES,
    LiteUnavailableError,
    aipp_config,
    converter_command,
    converter_config,
    lite_available,
    run_lite,
    write_converter_config,
)
from deploy_ascend.mindir_export import (
    DynamicShapeError,
    export_mindir,
    load_mindir,
    mindir_info,
    roundtrip_check,
)

__all__ = [
    "PRECISION_MODES",
    "DynamicShapeError",
    "LiteUnavailableError",
    "aipp_config",
    "converter_command",
    "converter_config",
    "eager_latency",
    "export_mindir",
    "lite_available",
    "load_mindir",
    "mindir_info",
    "mindir_latency",
    "roundtrip_check",
    "run_lite",
    "write_converter_config",
]
