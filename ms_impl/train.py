"""MindSpore training: ``irkd train`` (a network alone) and ``irkd distill`` (frozen teacher).

Why this module is long: most of it is this docstring, the MindSpore behaviour the compiled
step depends on (each point a workaround the code below relies on); the code is one trainer
class mirroring ``torch_ref.train``. The measurements behind these choices are in
``docs/mindspore-notes.md``.

The native implementation; ``torch_ref.train`` is its PyTorch twin, with the same structure
(``MSTrainer`` <-> ``TorchTrainer``, both following the :class:`irkd.engine.Trainer`
protocol: ``train_mode``, ``step``, ``write``, ``read``, ``eval_forward``, ``save_best``,
``bare_forward``, ``run_info``). Everything that is not the step itself (the run loop, data,
schedule, noise, run folder, checkpoints, validation, test report) comes from
:mod:`irkd.engine` and the framework-free modules it drives (:mod:`irkd.data.prepare`,
:mod:`irkd.schedule`, :mod:`irkd.rundir`, :mod:`irkd.evaluate`), shared by both backends:
:func:`run` sets nothing up beyond the trainer (whose constructor selects the MindSpore mode
and device) and calls :func:`irkd.engine.run_training`.

Per step::

    set_lr(optimizer, lr_at(step, steps_per_epoch, cfg.optim, cfg.schedule))  # ops.assign
    t_logits, t_feats = teacher_fn(x)            # compiled eval-mode call, outside the grad
    noise = noise_for(seed, step, distiller.noise_shapes(B, H, W))          # numpy, (seed, step)
    loss, task, kd, terms = train_step(x, mask, t_logits, *t_feats, *noise) # one compiled graph:
        # value_and_grad(forward, None, optimizer.parameters, has_aux=True), then
        # optimizer(grads) only when the loss is finite
    check_finite(...)                            # NonFiniteLossError: the update was skipped
    ema.update(step + 1)                         # train.ema > 0 only; numpy, outside the graph

The compiled step (findings, MindSpore 2.10 on CPU)
===================================================

- **One graph per step.** ``train_step`` is ``ms.jit`` of a function that calls
  ``ms.value_and_grad(forward, None, optimizer.parameters, has_aux=True)`` and the optimizer;
  GRAPH_MODE when ``cfg.train.graph_mode`` (the default), otherwise PyNative, run eagerly
  (no ``ms.jit``, for debugging). The gradient is taken with respect to
  ``optimizer.parameters`` only: the student's and the distiller's (connectors, MGD/FGD
  blocks) trainable parameters, never the teacher's.
- **Inputs are flat tensors.** A tuple of tensors passed to a ``ms.jit`` function is taken as
  a *constant* (MindSpore warns "Constant value tensor are detected in tuple or list") and
  the step is recompiled at every call with new values.
  The teacher features and the noise are therefore passed as separate positional tensors
  (``*t_feats, *noise``) and regrouped inside the graph.
- **The teacher is frozen three ways**: its parameters have ``requires_grad=False`` and are
  not in the optimizer; it runs in a separate compiled eval-mode call (``set_train(False)``,
  so its BatchNorm layers use and never update their moving statistics) whose outputs enter
  the step as inputs, wrapped in ``ops.stop_gradient`` again by the distiller; and it is
  never made a child of a cell that gets ``set_train(True)`` (a parent's ``set_train``
  switches every descendant, which would put the teacher's BatchNorm in train mode and
  update its statistics). ``tests/test_train.py`` checks its parameters and statistics bit
  for bit in both modes.
- **Feature dicts.** DNANet's feature dict is consumed inside the step's graph (the student's,
  in ``forward``) and is never a graph output in train mode (that hangs MindSpore 2.10's graph
  scheduler); the teacher's eval-mode call returns a tuple of the distilled stages only.
- **Learning rate.** Written each step in place with ``ops.assign`` into the optimizer's lr
  ``Parameter`` (:func:`ms_impl.optim.set_lr`): seen by the compiled step without
  recompiling. ``Parameter.set_data`` is *not* seen by an already compiled graph: it swaps
  the parameter's storage while the graph (and, in PyNative, the experimental optimizers'
  own ``@jit`` update) keeps the old one. The same holds for weights: a checkpoint loaded
  with ``set_data`` after the first step would be read by the forward pass while the
  optimizer kept updating the old storage.
  :meth:`MSTrainer.read` therefore writes weights and optimizer state in place
  (:func:`assign_neutral`, :func:`ms_impl.optim.load_optimizer`).
- **NaN/Inf.** The update is guarded inside the graph (``if isfinite(loss): optimizer(grads)``),
  so, as in PyTorch, a non-finite loss updates no parameter (BatchNorm statistics of the
  forward pass aside, as in PyTorch); the loop then raises
  :class:`~irkd.engine.NonFiniteLossError` and the last good checkpoint is left untouched.
  Note: MindSpore's CPU ReLU maps NaN to 0 where PyTorch's propagates it, so a NaN pixel in
  an *input image* can vanish inside a MindSpore network and never reach the loss; the check
  sees what reaches the loss (a NaN mask pixel, an overflow, a diverging run).
- **Evaluation** (validation, test report) of a GRAPH_MODE run uses
  :func:`ms_impl.predict.forward_fn` ``mode="auto"``: the eval network is compiled for the
  first few image shapes and any further shape runs eagerly, so a dataset of many sizes
  does not pay one compilation per size. The compiled eval graph reads the parameters the train step
  updates in place, and switching the context mode for evaluation leaves the compiled train
  step valid (it is not recompiled). A PyNative run evaluates eagerly.

Which mode: distillation when ``cfg.teacher`` is set and ``cfg.method.name != "none"``;
otherwise the student (``cfg.model``) is trained alone with the task loss.

Run folder (:class:`irkd.rundir.RunDir`): ``config.yaml``, ``log.jsonl``,
``checkpoints/last/{student,distiller}.safetensors + optimizer.ckpt + state.json``
(``optimizer.ckpt``: :func:`ms_impl.optim.save_optimizer`; the distiller file only when it
has parameters; ``+ ema.safetensors`` with ``train.ema`` > 0), ``best.safetensors`` (student
only, neutral names; metadata holds the network kwargs and the normalisation), ``best.json``,
``metrics.json`` (test split, best weights).

Weight average (``train.ema`` > 0, :class:`ms_impl.ema.ModelEma`): updated after every
optimizer step outside the compiled step (numpy; the module docstring of ``ms_impl.ema`` says
why), it is what validation, ``best.safetensors`` and ``last.safetensors`` (so the test report)
see; training keeps the raw student.

Resume (``resume=True``) restarts at the epoch after the last checkpoint; on CPU it reproduces
an uninterrupted run bit for bit (``tests/test_train.py`` checks it: weights, optimizer
state and losses identical; same machine and thread count).

Data parallel (``msrun --worker_num=N --local_worker_num=N irkd train|distill ... --out RUN``,
contract in :mod:`irkd.dist`, communication in :mod:`ms_impl.dist`): :func:`run` calls
``mindspore.communication.init()``, each rank trains on its B/N images of every global
batch, the compiled step averages the gradients with ``nn.DistributedGradReducer`` before
the optimizer and guards the update with the all-reduced loss, SoftIoU's sums are
all-reduced inside the step, the logged values are the ranks' mean, and only rank 0 writes
the run folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from irkd.config import ConfigError, ExperimentConfig, is_distill
from irkd.dist import World, check_supported, shard_noise
from irkd.engine import check_finite, net_kwargs, run_training
from irkd.evaluate import Forward
from irkd.rundir import EMA_FILE, require_ema_file
from irkd.schedule import noise_for
from irkd.weights import WeightsError
from irkd.zoo import stage_channels
from ms_impl import dist
from ms_impl.ema import ModelEma
from ms_impl.losses import task_loss
from ms_impl.models import create_model
from ms_impl.optim import build_optimizer, load_optimizer, save_optimizer, set_lr
from ms_impl.predict import Mode, forward_fn, load_network, load_weights
from ms_impl.runtime import context_mode, device_target, set_mode
from ms_impl.weights import assign_neutral, save_neutral_net

__all__ = [
    "MSTrainer",
    "freeze_batchnorm",
    "run",
]

BACKEND = "mindspore"
AUX_KEYS = ("aux1", "aux2", "aux3")
EVAL_MODE: Mode = "auto"
"""Evaluation mode of a GRAPH_MODE run (``ms_impl.predict.forward_fn``); PyNative runs
evaluate eagerly."""


# ----------------------------------------------------------------------------- building


def freeze(net: nn.Cell) -> nn.Cell:
    """Freeze a network for use as a teacher: no gradient, eval mode (BN statistics fixed)."""
    for p in net.get_parameters():
        p.requires_grad = False
    net.set_train(False)
    return net


def freeze_batchnorm(net: nn.Cell) -> None:
    """Put every BatchNorm layer of ``net`` in eval mode (``train.freeze_bn``)."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm1d | nn.BatchNorm2d):
            cell.set_train(False)


def load_teacher(cfg: ExperimentConfig) -> nn.Cell:
    """Build the teacher, load its checkpoint strictly and freeze it (eval, no grad).

    Raises:
        ConfigError: No ``teacher.checkpoint``.
        WeightsError: The checkpoint does not fit the teacher network.
    """
    t = cfg.teacher
    assert t is not None
    if not t.checkpoint:
        raise ConfigError(
            "teacher.checkpoint: distillation needs the teacher's trained weights "
            "(a .safetensors or .ckpt file, e.g. a teacher run's best.safetensors)"
        )
    path = Path(t.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} not found")
    try:
        return freeze(load_network(t.name, path, **t.kwargs))
    except WeightsError as exc:
        raise WeightsError(f"teacher.checkpoint: {exc}") from None


class MSTrainer:
    """The student, the frozen teacher, the distiller, the optimizer and the compiled step.

    Follows :class:`irkd.engine.Trainer`, the protocol :func:`irkd.engine.run_training`
    drives.

    Args:
        cfg: The experiment.
        graph: Compile the step in GRAPH_MODE (default ``cfg.train.graph_mode``); False runs
            it eagerly in PYNATIVE_MODE. The MindSpore context mode is set accordingly.
        device: MindSpore device target (``CPU``, ``Ascend``, ``GPU``); None keeps
            MindSpore's choice.
        world: The processes of a data-parallel run (:mod:`irkd.dist`, joined by
            :func:`ms_impl.dist.init`); one by default.

    Attributes:
        backend: ``"mindspore"``.
        cfg: The experiment.
        graph: Whether the step is compiled (GRAPH_MODE).
        device: The device target the trainer runs on.
        student: The network being trained.
        teacher: The frozen teacher (None when training alone).
        distiller: ``build_distiller(...)`` (None when training alone).
        optimizer: Over the student's and the distiller's trainable parameters only.
        ema: The student's weight average (:class:`ms_impl.ema.ModelEma`), None when
            ``train.ema`` is 0.
        student_kwargs: The student's constructor kwargs (stored with the best weights).
        t_stages: The teacher feature stages the step takes (the distiller's, ``logits``
            aside).
    """

    backend = BACKEND

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        graph: bool | None = None,
        device: str | None = None,
        world: World | None = None,
    ) -> None:
        self.cfg = cfg
        self.world = world or World()
        check_supported(cfg, self.world.size)
        self.graph = bool(cfg.train.graph_mode if graph is None else graph)
        set_mode("graph" if self.graph else "pynative", device)
        self.device = device_target()
        distill = is_distill(cfg)
        self.teacher = load_teacher(cfg) if distill else None
        self.student_kwargs = net_kwargs(cfg.model, deep_supervision=cfg.train.deep_supervision)
        ms.set_seed(cfg.seed)
        self.student = create_model(cfg.model.name, **self.student_kwargs)
        if cfg.model.checkpoint:
            load_weights(self.student, cfg.model.checkpoint, network=cfg.model.name)
        self.distiller = None
        if distill:
            from ms_impl.distill import build_distiller

            assert cfg.teacher is not None
            self.distiller = build_distiller(
                cfg.method,
                stage_channels(cfg.teacher.name, **cfg.teacher.kwargs),
                stage_channels(cfg.model.name, **cfg.model.kwargs),
            )
        params = list(self.student.trainable_params())
        if self.distiller is not None:
            params += list(self.distiller.trainable_params())
        self.optimizer = build_optimizer(params, cfg.optim)
        self.ema = ModelEma(self.student, cfg.train.ema) if cfg.train.ema > 0 else None
        self.t_stages: tuple[str, ...] = ()
        if self.distiller is not None:
            self.t_stages = tuple(s for s in self.distiller.stages if s != "logits")
        self._build()

    # ------------------------------------------------------------------ the compiled step

    def _build(self) -> None:
        """Create the teacher call and the train step (compiled on first use)."""
        student, distiller, teacher = self.student, self.distiller, self.teacher
        optimizer = self.optimizer
        t_stages = self.t_stages
        n_t = len(t_stages)
        aux_keys = AUX_KEYS if getattr(student, "deep_supervision", False) else ()
        # Data parallel: SoftIoU's sums over every rank, gradients averaged over the ranks,
        # the update guarded by the global loss (every rank updates, or none does).
        reduce = dist.sum_op() if self.world.parallel else None
        reducer = dist.grad_reducer(optimizer.parameters, self.world)

        def forward(x: ms.Tensor, m: ms.Tensor, *rest: ms.Tensor) -> tuple[Any, ...]:
            s_logits, s_feats = student.forward_features(x)
            aux = tuple(s_feats[k] for k in aux_keys)
            task = task_loss(s_logits, aux, m, reduce=reduce)
            if distiller is None:
                return task, task
            t_logits = rest[0]
            t_feats = {}
            for i in range(n_t):
                t_feats[t_stages[i]] = ops.stop_gradient(rest[1 + i])
            noise = rest[1 + n_t :]
            kd, terms = distiller(t_feats, s_feats, ops.stop_gradient(t_logits), s_logits, m, noise)
            return task + kd, task, kd, terms

        grad_fn = ms.value_and_grad(forward, None, optimizer.parameters, has_aux=True)

        def train_step(x: ms.Tensor, m: ms.Tensor, *rest: ms.Tensor) -> tuple[Any, ...]:
            out, grads = grad_fn(x, m, *rest)
            if reducer is None:
                finite = ops.isfinite(out[0])
            else:
                grads = reducer(grads)
                # reduce is set with reducer (a parallel run); no assert in ms.jit graph code
                finite = ops.isfinite(reduce(out[0]))  # type: ignore[misc]
            if finite:
                optimizer(grads)
            return out

        def teacher_fn(x: ms.Tensor) -> tuple[Any, ...]:
            # built only when teacher is set (below); no assert in ms.jit graph code
            logits, feats = teacher.forward_features(x)  # type: ignore[union-attr]
            return (logits,) + tuple(feats[s] for s in t_stages)

        self._forward = forward
        self._train_step: Callable[..., Any] = ms.jit(train_step) if self.graph else train_step
        self._teacher_fn: Callable[..., Any] | None = None
        if teacher is not None:
            self._teacher_fn = ms.jit(teacher_fn) if self.graph else teacher_fn

    def train_mode(self) -> None:
        """Student and distiller in train mode; the teacher stays in eval mode.

        With ``train.freeze_bn`` the student's and distiller's BatchNorm layers stay in
        eval mode. Also (re)selects this trainer's execution mode, GRAPH_MODE or PYNATIVE_MODE (the
        MindSpore context is global: another trainer or an evaluation may have changed it).
        """
        want = ms.GRAPH_MODE if self.graph else ms.PYNATIVE_MODE
        if ms.get_context("mode") != want:
            set_mode("graph" if self.graph else "pynative")
        self.student.set_train(True)
        if self.distiller is not None:
            self.distiller.set_train(True)
        if self.cfg.train.freeze_bn:
            freeze_batchnorm(self.student)
            if self.distiller is not None:
                freeze_batchnorm(self.distiller)
        if self.teacher is not None:
            self.teacher.set_train(False)

    def inputs(self, images: np.ndarray, masks: np.ndarray, step: int) -> list[ms.Tensor]:
        """The step's positional inputs: ``x, mask[, t_logits, *t_feats, *noise]``."""
        x = ms.Tensor(np.ascontiguousarray(images, dtype=np.float32))
        m = ms.Tensor(np.ascontiguousarray(masks, dtype=np.float32))
        out = [x, m]
        if self.distiller is not None:
            assert self._teacher_fn is not None
            t_out = self._teacher_fn(x)
            out += list(t_out)
            b, _, h, w = images.shape
            distiller, seed = self.distiller, self.cfg.seed
            noise = shard_noise(
                lambda n: noise_for(seed, step, distiller.noise_shapes(n, h, w)),
                b,
                self.world.rank,
                self.world.size,
            )
            out += [ms.Tensor(a) for a in noise]
        return out

    def losses(
        self, images: np.ndarray, masks: np.ndarray, step: int
    ) -> tuple[ms.Tensor, dict[str, ms.Tensor]]:
        """Forward pass of one batch, no update: ``(loss, terms)``.

        ``terms`` has ``task``, ``kd`` and ``kd/<stage>`` (and ``kd/out`` with
        ``method.out_weight``), as in the step's values. Runs eagerly (PYNATIVE_MODE for the
        call, outside the compiled step).
        """
        with context_mode("pynative"):
            out = self._forward(*self.inputs(images, masks, step))
        return out[0], self._terms(out)

    def _terms(self, out: tuple[Any, ...]) -> dict[str, ms.Tensor]:
        terms = {"task": out[1]}
        if self.distiller is not None:
            terms["kd"] = out[2]
            for name, value in zip(self.distiller.term_names, out[3], strict=True):
                terms[f"kd/{name}"] = value
        return terms

    def step(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        step: int,
        lr: float,
        *,
        where: str,
        last_good: Path | None = None,
    ) -> dict[str, float]:
        """One optimizer step; returns the loss and its terms as floats.

        Raises:
            NonFiniteLossError: The loss or a term is NaN/Inf (no parameter is updated).
        """
        set_lr(self.optimizer, lr)
        out = self._train_step(*self.inputs(images, masks, step))
        values = {"loss": float(out[0].asnumpy())}
        values.update({k: float(v.asnumpy()) for k, v in self._terms(out).items()})
        values = dist.mean_values(values, self.world)  # the same on every rank
        check_finite(values, where=where, last_good=last_good)
        if self.ema is not None:
            self.ema.update(step + 1)
        return values

    # ------------------------------------------------------------------ evaluation

    @property
    def eval_mode(self) -> Mode:
        """Evaluation mode of :func:`ms_impl.predict.forward_fn`: :data:`EVAL_MODE` for a
        GRAPH_MODE trainer, ``pynative`` otherwise.
        """  # noqa: D205
        return EVAL_MODE if self.graph else "pynative"

    def eval_forward(self) -> Forward:
        """The current student (its weight average with ``train.ema``), in eval mode, as a
        numpy logits callable.
        """  # noqa: D205
        if self.ema is not None:
            return forward_fn(self.ema.module, mode=self.eval_mode)
        self.student.set_train(False)
        return forward_fn(self.student, mode=self.eval_mode)

    def bare_forward(self, path: Path) -> Forward:
        """A fresh student loaded from ``path``, as a numpy logits callable."""
        return forward_fn(load_network(self.cfg.model.name, path), mode=self.eval_mode)

    def run_info(self) -> dict[str, Any]:
        """``threads`` (MindSpore runtime threads, 0: its default) and ``device``."""
        return {
            "threads": int(ms.get_context("runtime_num_threads") or 0),
            "device": self.device,
        }

    # ------------------------------------------------------------------ checkpoints

    def save_best(self, path: Path, metadata: dict[str, Any]) -> None:
        """Save the student alone (its weight average with ``train.ema``), neutral names,
        with ``metadata``.
        """  # noqa: D205
        if self.ema is not None:
            self.ema.save(path, name=self.cfg.model.name, metadata=metadata)
            return
        save_neutral_net(self.student, path, name=self.cfg.model.name, metadata=metadata)

    def write(self, folder: Path) -> None:
        """Store student, distiller, optimizer state and weight average in ``folder``."""
        folder = Path(folder)
        save_neutral_net(self.student, folder / "student.safetensors", name=self.cfg.model.name)
        if self.ema is not None:
            self.ema.save(folder / EMA_FILE, name=self.cfg.model.name)
        if self.distiller is not None and self.distiller.parameters_dict():
            save_neutral_net(self.distiller, folder / "distiller.safetensors")
        save_optimizer(self.optimizer, folder / "optimizer.ckpt")

    def read(self, folder: Path) -> None:
        """Restore what :meth:`write` stored (strictly), writing every value in place.

        In place (``ops.assign``) rather than ``Parameter.set_data``: after ``set_data``, a
        step compiled before (GRAPH_MODE, ``ms.jit``, or in PyNative the optimizer's own
        ``@jit`` update) keeps updating the parameters' old storage, so training would
        silently stop changing the weights the forward pass reads.

        Raises:
            ConfigError: ``train.ema`` > 0 and the checkpoint holds no weight average.
        """
        folder = Path(folder)
        if self.ema is not None:
            require_ema_file(folder, self.cfg.train.ema)
        assign_neutral(self.student, folder / "student.safetensors", network=self.cfg.model.name)
        if self.ema is not None:
            self.ema.load(folder / EMA_FILE, network=self.cfg.model.name)
        if self.distiller is not None and self.distiller.parameters_dict():
            assign_neutral(self.distiller, folder / "distiller.safetensors", network="distiller")
        load_optimizer(self.optimizer, folder / "optimizer.ckpt")


# ----------------------------------------------------------------------------- the run


def run(
    cfg: ExperimentConfig,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    cache_dir: str | os.PathLike[str] = "runs/_data",
    synth_size: int = 256,
    stop_after: int | None = None,
    quiet: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Train (or distill) a network with MindSpore and report on the test split.

    Args:
        cfg: The experiment (``cfg.backend`` is not checked here: the CLI dispatches on it).
        run_dir: The run folder (created).
        resume: Continue from ``run_dir/checkpoints/last`` (the next epoch after it).
        cache_dir: Where the synthetic dataset is generated when ``data.root`` is None.
        synth_size: Image side of the synthetic dataset.
        stop_after: Stop once this many epochs are complete, without the final report (a
            planned interruption; ``--resume`` continues). None: run to ``schedule.epochs``.
        quiet: Print nothing.
        device: MindSpore device target (``CPU``, ``Ascend``, ``GPU``); None keeps
            MindSpore's choice. Exact resume is checked on the CPU.

    Returns:
        ``{"run_dir", "state", "best_epoch", "best_val", "metrics"}`` (``metrics``: the test
        figures, None when stopped early).

    Raises:
        NonFiniteLossError: A NaN/Inf loss; the last good checkpoint is left untouched.
        ConfigError, DatasetError, WeightsError, FileNotFoundError: Bad inputs.
    """
    world = dist.init()
    check_supported(cfg, world.size)
    try:
        return run_training(
            cfg,
            run_dir,
            lambda: MSTrainer(cfg, device=device, world=world),
            resume=resume,
            cache_dir=cache_dir,
            synth_size=synth_size,
            stop_after=stop_after,
            quiet=quiet,
            world=world if world.parallel else None,
        )
    finally:
        dist.shutdown()
