"""Typed experiment configuration: YAML in, validated dataclasses out.

Why this module is long: the dataclass of every config section and the checks of its values
(``_check_values``) are the config's one definition; splitting the sections from their
checks would scatter it.

A config file is a YAML mapping whose sections mirror the dataclasses below. Unknown keys
are rejected with their dotted name, values are type-checked (no string booleans: ``"true"``
is not a bool), and any field can be overridden from the command line as ``key.sub=value``
where the value is parsed as YAML (``optim.lr=1e-3``, ``method.msa.scales=[3,5]``).
The resolved config is saved with every run (:func:`save_config`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from irkd.files import write_text_atomic
from irkd.zoo import UnknownNetworkError, check_network

__all__ = [
    "is_distill",
    "ConfigError",
    "DataConfig",
    "NetConfig",
    "MSAConfig",
    "MethodConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "ExperimentConfig",
    "load_config",
    "out_weight_problem",
    "parse_overrides",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "yaml_load",
]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


#: Largest seed: numpy's legacy seeding, MindSpore's ``set_seed`` and the data RNGs take
#: 32-bit unsigned seeds.
MAX_SEED = 2**32 - 1


@dataclass
class DataConfig:
    """Where the data comes from and how it is fed.

    Attributes:
        root: Dataset folder (images/, masks/, train.txt, test.txt). ``None`` selects the
            built-in synthetic dataset, generated under the run's cache folder.
        layout: ``auto``, ``irkd`` or ``basicirstd``.
        synth_n: Number of synthetic images when ``root`` is ``None``.
        crop: Training crop size (pixels).
        batch_size: Training batch size.
        val_fraction: Share of the training split held out to choose the best checkpoint
            (the test split is never used for that).
        target_bias: Probability that a training crop is centred to contain a target.
        eval_multiple: Test images are padded to a multiple of this.
    """

    root: str | None = None
    layout: Literal["auto", "irkd", "basicirstd"] = "auto"
    synth_n: int = 240
    crop: int = 256
    batch_size: int = 8
    val_fraction: float = 0.1
    target_bias: float = 0.8
    eval_multiple: int = 32


@dataclass
class NetConfig:
    """A registered network and its keyword arguments.

    Attributes:
        name: Registry name (``irkd models`` lists them).
        kwargs: Extra keyword arguments passed to the network's constructor.
        checkpoint: Weights to start from (a teacher must have one for distillation).
    """

    name: str = "dnanet_s"
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None


@dataclass
class MSAConfig:
    """Multi-scale spatial attention (DESIGN.md section 2.2).

    Attributes:
        enabled: ``False`` makes the attention map uniform (ablation).
        scales: Local-contrast window sizes (odd).
        fusion: How the per-scale contrasts are fused.
        tau: Softmax temperature of the attention map.
        on_student: Also compute MSA on the student's connected feature, fused by max.
        eps: Guard of the per-image max normalisation.
        border: Cells at each edge of the map where the contrast is set to 0 before the
            normalisation (0: none). The convolutions' zero padding makes the border of a
            feature stand out; with ``max(scales) // 2`` no incomplete window is scored.
    """

    enabled: bool = True
    scales: list[int] = field(default_factory=lambda: [3, 5, 7])
    fusion: Literal["mean", "max"] = "mean"
    tau: float = 0.5
    on_student: bool = False
    eps: float = 1e-6
    border: int = 0


@dataclass
class MethodConfig:
    """The distillation method and its options.

    Attributes:
        name: ``none`` (student alone), ``msa_awmse`` (the method) or a baseline
            (``fitnet``, ``at``, ``cwd``, ``pkd``, ``mgd``, ``fgd``, ``logit_kd``).
        stages: Names of the distilled stage features (same resolution on both networks).
        stage_weights: One weight per stage (default 1.0 each).
        lam: Weight lambda of the distillation term in ``L = L_task + lam * sum_s L_s``.
        normalize: ``l2`` per-pixel channel normalisation, ``l2_map`` the whole map's L2
            norm per image (per-pixel magnitudes kept), or ``none`` (ablation).
        l2_eps: Guard of the L2 normalisation.
        msa: Multi-scale spatial attention options.
        awmse: ``False`` replaces AWMSE by a plain MSE (ablation).
        alpha: Foreground weight of AWMSE.
        beta: Background weight of AWMSE.
        use_mask: Use the ground-truth mask as target region (else ``M > 1``).
        awmse_eps: Guard of the AWMSE region sums.
        out_weight: ``msa_awmse`` only: weight of an extra AWMSE term on the output
            probability maps, ``L = L_task + lam * (sum_s w_s L_s + out_weight * L_out)``.
            ``L_out`` is the stage loss applied to ``sigmoid(teacher logits)`` (a constant)
            and ``sigmoid(student logits)`` at input resolution, without normalisation or
            connector, with the MSA map of the teacher's map (the ``msa`` options), the GT
            mask as region and the same ``alpha``, ``beta``, ``awmse``. It transfers the
            teacher's confidence, which the per-pixel L2 normalisation removes from the
            stage features. ``0`` (default): no such term (logged as ``kd/out`` otherwise).
        awmse_reduce: ``image``: each image's target (and background) weights sum to
            ``alpha`` (``beta``), the loss is the mean over images (DESIGN.md 2.4); ``batch``:
            they sum to ``alpha`` (``beta``) over the whole batch, so that a target pixel
            weighs the same whatever the size of the other targets of its image.
        params: Baseline-specific hyperparameters (see each baseline's defaults).
    """

    name: str = "msa_awmse"
    stages: list[str] = field(default_factory=lambda: ["enc0", "dec0"])
    stage_weights: list[float] | None = None
    lam: float = 1.0
    normalize: Literal["l2", "l2_map", "none"] = "l2"
    l2_eps: float = 1e-6
    msa: MSAConfig = field(default_factory=MSAConfig)
    awmse: bool = True
    alpha: float = 1.0
    beta: float = 0.5
    use_mask: bool = True
    awmse_eps: float = 1e-6
    out_weight: float = 0.0
    awmse_reduce: Literal["image", "batch"] = "image"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimizer (the same numbers on both backends).

    Attributes:
        name: ``adamw`` (MindSpore experimental AdamW / torch AdamW), ``adam`` or ``sgd``.
        lr: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 (SGD, Adam) weight decay.
        momentum: SGD momentum.
        betas: Adam betas.
        eps: Adam epsilon.
    """

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    """Learning-rate schedule and run length.

    Attributes:
        epochs: Number of epochs.
        scheduler: ``cosine`` (to ``min_lr``), ``step`` or ``constant``.
        warmup_epochs: Linear warm-up length.
        min_lr: Final learning rate of the cosine schedule.
        step_epochs: Epochs between decays for ``step``.
        gamma: Decay factor for ``step``.
        steps_per_epoch: Cap on steps per epoch (``None``: the whole training split).
    """

    epochs: int = 20
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 1e-5
    step_epochs: int = 30
    gamma: float = 0.1
    steps_per_epoch: int | None = None


@dataclass
class TrainConfig:
    """Run bookkeeping.

    Attributes:
        deep_supervision: Average the task loss over the deep-supervision heads.
        eval_every: Validate (and maybe keep the best checkpoint) every N epochs.
        log_every: Log a JSONL record every N steps.
        graph_mode: MindSpore: compile the train step in GRAPH_MODE.
        keep_last: Number of last checkpoints to keep.
        ema: Decay of an exponential moving average of the student's weights (0 disables
            it; typical 0.99 to 0.9999). After optimizer step ``t`` (1-based),
            ``d = min(ema, (1 + t) / (10 + t))`` (:func:`irkd.schedule.ema_decay`) and every
            floating-point tensor of the student (parameters and BatchNorm statistics)
            becomes ``e = d * e + (1 - d) * w``, starting from the initial weights. When
            on, validation, ``best.safetensors``, ``last.safetensors`` and so the test
            report use the averaged weights; training itself keeps the raw ones. Only the
            student is averaged (not connectors, not the teacher).
        freeze_bn: Train with every BatchNorm layer of the student and the distiller in
            eval mode: normalised by its running statistics, which stay as loaded (its
            scale and shift still train). Such a step does not depend on how the batch is
            split, so a data-parallel run equals one process exactly (``irkd.dist``); for
            fine-tuning from a checkpoint with very small per-device batches.
    """

    deep_supervision: bool = False
    eval_every: int = 1
    log_every: int = 10
    graph_mode: bool = True
    keep_last: int = 2
    ema: float = 0.0
    freeze_bn: bool = False


@dataclass
class ExperimentConfig:
    """A whole experiment: what to train, on what, how, and on which backend."""

    name: str = "experiment"
    seed: int = 0
    backend: Literal["mindspore", "pytorch"] = "pytorch"
    data: DataConfig = field(default_factory=DataConfig)
    model: NetConfig = field(default_factory=NetConfig)
    teacher: NetConfig | None = None
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- validation


def out_weight_problem(name: str, out_weight: float) -> str | None:
    """What is wrong with ``method.out_weight`` for method ``name`` (``None``: nothing).

    The output-map term is an option of ``msa_awmse`` only, and its weight is >= 0.
    """
    if isinstance(out_weight, bool) or not isinstance(out_weight, int | float):
        return f"must be a number >= 0, got {out_weight!r}"
    if not (math.isfinite(out_weight) and out_weight >= 0):
        return f"must be a number >= 0, got {out_weight!r}"
    if out_weight != 0 and name != "msa_awmse":
        return (
            f"the output-map term is an option of msa_awmse only; method {name!r} needs "
            f"out_weight 0, got {out_weight!r}"
        )
    return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]!s}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    obj = cls(**kwargs)
    _check_values(obj, prefix)
    return obj


def _check_values(obj: Any, prefix: str) -> None:
    """Range checks that a type alone cannot express."""
    p = f"{prefix}." if prefix else ""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{p}{key}: {msg}")

    if isinstance(obj, DataConfig):
        need(obj.crop >= 32 and obj.crop % 32 == 0, "crop", "must be a multiple of 32, >= 32")
        need(obj.batch_size >= 1, "batch_size", "must be >= 1")
        need(0.0 <= obj.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")
        need(0.0 <= obj.target_bias <= 1.0, "target_bias", "must be in [0, 1]")
        need(obj.synth_n >= 4, "synth_n", "must be >= 4")
        need(obj.eval_multiple >= 1, "eval_multiple", "must be >= 1")
    elif isinstance(obj, MSAConfig):
        need(len(obj.scales) > 0, "scales", "needs at least one scale")
        need(all(k >= 1 and k % 2 == 1 for k in obj.scales), "scales", "must be odd and >= 1")
        need(obj.tau > 0, "tau", "must be > 0")
        need(obj.eps > 0, "eps", "must be > 0")
    elif isinstance(obj, MethodConfig):
        need(obj.lam >= 0, "lam", "must be >= 0")
        need(obj.alpha >= 0 and obj.beta >= 0, "alpha", "alpha and beta must be >= 0")
        problem = out_weight_problem(obj.name, obj.out_weight)
        need(problem is None, "out_weight", problem or "")
        if obj.stage_weights is not None:
            need(
                len(obj.stage_weights) == len(obj.stages),
                "stage_weights",
                f"needs one weight per stage ({len(obj.stages)})",
            )
    elif isinstance(obj, OptimConfig):
        need(math.isfinite(obj.lr) and obj.lr > 0, "lr", f"must be a number > 0, got {obj.lr!r}")
        need(
            math.isfinite(obj.weight_decay) and obj.weight_decay >= 0,
            "weight_decay",
            f"must be a number >= 0, got {obj.weight_decay!r}",
        )
        need(0 <= obj.momentum < 1, "momentum", f"must be in [0, 1), got {obj.momentum!r}")
        need(len(obj.betas) == 2, "betas", "needs two values")
        need(all(0 <= b < 1 for b in obj.betas), "betas", f"must be in [0, 1), got {obj.betas!r}")
        need(math.isfinite(obj.eps) and obj.eps > 0, "eps", f"must be > 0, got {obj.eps!r}")
    elif isinstance(obj, ScheduleConfig):
        need(obj.epochs >= 1, "epochs", "must be >= 1")
        need(obj.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        need(
            math.isfinite(obj.min_lr) and obj.min_lr >= 0,
            "min_lr",
            f"must be a number >= 0 (the final learning rate), got {obj.min_lr!r}",
        )
        need(
            math.isfinite(obj.gamma) and 0 < obj.gamma <= 1,
            "gamma",
            f"must be in (0, 1] (the step decay factor), got {obj.gamma!r}",
        )
        need(obj.step_epochs >= 1, "step_epochs", "must be >= 1")
        need(
            obj.steps_per_epoch is None or obj.steps_per_epoch >= 1,
            "steps_per_epoch",
            "must be >= 1 or null",
        )
    elif isinstance(obj, TrainConfig):
        need(obj.eval_every >= 1, "eval_every", "must be >= 1")
        need(obj.log_every >= 1, "log_every", "must be >= 1")
        need(obj.keep_last >= 1, "keep_last", "must be >= 1")
        need(
            math.isfinite(obj.ema) and 0.0 <= obj.ema < 1.0,
            "ema",
            f"must be in [0, 1) (the EMA decay; 0 disables the average), got {obj.ema!r}",
        )
    elif isinstance(obj, ExperimentConfig):
        nets = [("model", obj.model)] + ([("teacher", obj.teacher)] if obj.teacher else [])
        for key, net in nets:
            try:
                check_network(net.name, net.kwargs, key=f"{p}{key}")
            except UnknownNetworkError as exc:
                raise ConfigError(str(exc)) from None
        need(
            0 <= obj.seed <= MAX_SEED,
            "seed",
            f"must be an integer in [0, {MAX_SEED}] (2**32 - 1, what every RNG here accepts), "
            f"got {obj.seed}",
        )
        if obj.schedule.scheduler == "cosine":
            need(
                obj.schedule.min_lr <= obj.optim.lr,
                "schedule.min_lr",
                f"{obj.schedule.min_lr:g} is above optim.lr {obj.optim.lr:g}: the cosine "
                "schedule would raise the learning rate",
            )


# ----------------------------------------------------------------------------- public API


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping that holds the same key twice (the last would silently win)."""

    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line} (first at line {first})")
        self.key, self.line, self.first = key, line, first


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that reads ``1e-3`` as a float (YAML 1.2), not a string, and refuses
    a mapping that holds the same key twice (YAML itself lets the last one win silently).
    """  # noqa: D205

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then an explicit key is an override, not a duplicate
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, line, seen[key])
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeConstructor reports it
                    continue
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML like the configs are parsed: safe, YAML 1.2 floats, duplicate keys refused.

    Raises:
        yaml.YAMLError: Invalid YAML, or a mapping with a repeated key.
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def config_from_dict(data: dict[str, Any] | None) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a plain mapping."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(data).__name__}")
    return _build(ExperimentConfig, data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data (YAML/JSON-ready) form of a config."""
    return dataclasses.asdict(cfg)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["optim.lr=1e-3", "method.msa.scales=[3,5]"]`` into a nested mapping.

    Values are parsed as YAML, so ``1e-3`` is a float, ``true`` a bool, ``[3,5]`` a list and
    ``null`` is None.

    Raises:
        ConfigError: An item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("kwargs", "params"):
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def apply_overrides(cfg: ExperimentConfig, items: list[str] | tuple[str, ...]) -> ExperimentConfig:
    """Return a new config with ``key.sub=value`` overrides applied and re-validated."""
    if not items:
        return cfg
    base = config_to_dict(cfg)
    upd = parse_overrides(items)
    if "teacher" in upd and base.get("teacher") is None and isinstance(upd["teacher"], dict):
        base["teacher"] = config_to_dict(NetConfig())
    return config_from_dict(_merge(base, upd))


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Raises:
        ConfigError: The file is missing, is not YAML, or holds an invalid value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {p} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                f"offset {exc.start}): save it as UTF-8"
            ) from None
        except OSError as exc:
            raise ConfigError(f"config file {p} cannot be read: {exc.strerror or exc}") from None
        try:
            data = yaml_load(text) or {}
        except DuplicateKeyError as exc:
            raise ConfigError(
                f"config file {p}: duplicate key {exc.key!r} at line {exc.line} (first at line "
                f"{exc.first}); a key may appear once in a mapping"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from exc
    return apply_overrides(cfg, overrides)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (loadable again with :func:`load_config`)."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def is_distill(cfg: ExperimentConfig) -> bool:
    """Whether a config distills (a teacher and a method other than ``none``)."""
    return cfg.teacher is not None and cfg.method.name != "none"
