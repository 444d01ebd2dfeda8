"""PyTorch training: ``irkd train`` (a network alone) and ``irkd distill`` (frozen teacher).

A plain loop that the MindSpore functional step (``ms_impl.train``) mirrors line for line.
Everything that is not the step itself (the run loop, data, schedule, noise, run folder,
checkpoints, validation, test report) comes from :mod:`irkd.engine` and the framework-free
modules it drives (:mod:`irkd.data.prepare`, :mod:`irkd.schedule`, :mod:`irkd.rundir`,
:mod:`irkd.evaluate`), shared by both backends: :func:`run` sets the thread count, builds a
:class:`TorchTrainer` (which follows the :class:`irkd.engine.Trainer` protocol) and calls
:func:`irkd.engine.run_training`.

Per step::

    lr = lr_at(step, steps_per_epoch, cfg.optim, cfg.schedule)   # set on every param group
    t_logits, t_feats = teacher.forward_features(x)               # no_grad, eval mode
    s_logits, s_feats = student.forward_features(x)
    task = task_loss(s_logits, aux, mask)                         # aux: deep supervision
    kd, terms = distiller(t_feats, s_feats, t_logits, s_logits, mask, noise_for(seed, step))
    loss = task + kd
    check_finite(...)                                             # before any update
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    ema.update(step + 1)                                          # train.ema > 0 only

Which mode: distillation when ``cfg.teacher`` is set and ``cfg.method.name != "none"``;
otherwise the student (``cfg.model``) is trained alone with the task loss.

Run folder (:class:`irkd.rundir.RunDir`): ``config.yaml``, ``log.jsonl``,
``checkpoints/last/{student,distiller}.safetensors + optimizer.pt + state.json``
(``+ ema.safetensors`` with ``train.ema`` > 0), ``best.safetensors`` (student only, neutral
names; metadata holds the network kwargs and the normalisation), ``best.json``,
``metrics.json`` (test split, best weights).

Weight average (``train.ema`` > 0, :class:`torch_ref.ema.ModelEma`): updated after every
optimizer step, it is what validation, ``best.safetensors`` and ``last.safetensors`` (so the
test report) see; training keeps the raw student.

Resume (``resume=True``) restarts at the epoch after the last checkpoint and reproduces an
uninterrupted run bit for bit (same machine, same thread count).

Data parallel (``torchrun --nproc_per_node=N irkd train|distill ... --out RUN``, contract in
:mod:`irkd.dist`, communication in :mod:`torch_ref.dist`): :func:`run` joins the process
group, each rank trains on its B/N images of every global batch through
``DistributedDataParallel(TrainNet)`` (gradients averaged, SoftIoU's sums all-reduced), the
logged values are the ranks' mean, and only rank 0 writes the run folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from irkd.config import ConfigError, ExperimentConfig, is_distill
from irkd.dist import World, check_supported, shard_noise
from irkd.engine import check_finite, net_kwargs, run_training
from irkd.evaluate import Forward
from irkd.rundir import EMA_FILE, require_ema_file
from irkd.schedule import noise_for
from irkd.weights import WeightsError, save_neutral
from irkd.zoo import stage_channels
from torch_ref import dist
from torch_ref.ema import ModelEma
from torch_ref.losses import Reduce, task_loss
from torch_ref.models import Network, create_model
from torch_ref.optim import build_optimizer, set_lr
from torch_ref.predict import forward_fn, load_network, read_weights
from torch_ref.runtime import resolve_device, torch_threads
from torch_ref.weights import load_neutral_net, net_to_neutral, save_neutral_net

if TYPE_CHECKING:  # imported when distilling only
    from torch_ref.distill import Distiller

__all__ = [
    "TorchTrainer",
    "TrainNet",
    "freeze_batchnorm",
    "run",
]

BACKEND = "pytorch"
AUX_KEYS = ("aux1", "aux2", "aux3")


# ----------------------------------------------------------------------------- building


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode (``train.freeze_bn``)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.SyncBatchNorm):
            m.eval()


class TrainNet(nn.Module):
    """The trainable part of a step, student and distiller: what data parallel wraps.

    ``forward(x, m, t_logits, t_feats, noise) -> (loss, terms)``, the student's forward
    pass, the task loss (its batch sums summed over the ranks by ``reduce``) and the
    distillation loss. ``DistributedDataParallel`` sees this module's ``forward``, so its
    gradient hooks cover the student's and the connectors' parameters.

    Args:
        student: The network being trained.
        distiller: ``build_distiller(...)`` or None.
        reduce: :func:`torch_ref.dist.global_sum` in a data-parallel run, else None.
    """

    def __init__(
        self, student: Network, distiller: Distiller | None, reduce: Reduce | None = None
    ) -> None:
        super().__init__()
        self.student = student
        self.distiller = distiller
        self.reduce = reduce

    def forward(
        self,
        x: torch.Tensor,
        m: torch.Tensor,
        t_logits: torch.Tensor | None,
        t_feats: dict[str, torch.Tensor] | None,
        noise: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, terms)``; ``terms``: ``task``, ``kd`` and ``kd/<stage>`` (and ``kd/out``)."""
        s_logits, s_feats = self.student.forward_features(x)
        aux = tuple(s_feats[k] for k in AUX_KEYS if k in s_feats)
        task = task_loss(s_logits, aux, m, reduce=self.reduce)
        terms: dict[str, torch.Tensor] = {"task": task}
        loss = task
        if self.distiller is not None:
            kd, stage_terms = self.distiller(t_feats, s_feats, t_logits, s_logits, m, noise)
            loss = task + kd
            terms["kd"] = kd
            for name, value in zip(self.distiller.term_names, stage_terms, strict=True):
                terms[f"kd/{name}"] = value
        return loss, terms


def load_teacher(cfg: ExperimentConfig) -> Network:
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
            "(a .safetensors or .pt file, e.g. a teacher run's best.safetensors)"
        )
    path = Path(t.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} not found")
    try:
        teacher = load_network(t.name, path, **t.kwargs)
    except WeightsError as exc:
        raise WeightsError(f"teacher.checkpoint: {exc}") from None
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    return teacher


class TorchTrainer:
    """The student, the frozen teacher, the distiller and the optimizer of a run.

    Follows :class:`irkd.engine.Trainer`, the protocol :func:`irkd.engine.run_training`
    drives.

    Attributes:
        backend: ``"pytorch"``.
        cfg: The experiment.
        student: The network being trained.
        teacher: The frozen teacher (None when training alone).
        distiller: ``build_distiller(...)`` (None when training alone).
        optimizer: Over the student's and the distiller's parameters only.
        ema: The student's weight average (:class:`torch_ref.ema.ModelEma`), None when
            ``train.ema`` is 0.
        student_kwargs: The student's constructor kwargs (stored with the best weights).
        world: The processes of a data-parallel run (:mod:`irkd.dist`); one by default.
        train_net: :class:`TrainNet`, wrapped in ``DistributedDataParallel`` when the world
            has more than one process.
    """

    backend = BACKEND

    def __init__(
        self,
        cfg: ExperimentConfig,
        device: str | torch.device | None = None,
        world: World | None = None,
    ) -> None:
        self.cfg = cfg
        self.world = world or World()
        check_supported(cfg, self.world.size)
        if device is None and self.world.parallel and torch.cuda.is_available():
            device = os.environ.get("IRKD_DEVICE") or f"cuda:{self.world.local_rank}"
        self.device = resolve_device(device)
        distill = is_distill(cfg)
        self.teacher = load_teacher(cfg) if distill else None
        self.student_kwargs = net_kwargs(cfg.model, deep_supervision=cfg.train.deep_supervision)
        torch.manual_seed(cfg.seed)
        self.student = create_model(cfg.model.name, **self.student_kwargs)
        if cfg.model.checkpoint:
            arrays, _ = read_weights(cfg.model.checkpoint)
            load_neutral_net(self.student, arrays, network=cfg.model.name)
        self.distiller = None
        if distill:
            from torch_ref.distill import build_distiller

            assert cfg.teacher is not None
            self.distiller = build_distiller(
                cfg.method,
                stage_channels(cfg.teacher.name, **cfg.teacher.kwargs),
                stage_channels(cfg.model.name, **cfg.model.kwargs),
            )
        self.student.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device)
        if self.distiller is not None:
            self.distiller.to(self.device)
        params = list(self.student.parameters())
        if self.distiller is not None:
            params += list(self.distiller.parameters())
        self.optimizer = build_optimizer(params, cfg.optim)
        self.ema = ModelEma(self.student, cfg.train.ema) if cfg.train.ema > 0 else None
        reduce = dist.sum_op() if self.world.parallel else None
        self.train_net = dist.wrap(
            TrainNet(self.student, self.distiller, reduce), self.world, self.device
        )

    def train_mode(self) -> None:
        """Student and distiller in train mode (BatchNorm in eval mode with
        ``train.freeze_bn``); the teacher stays in eval mode.
        """  # noqa: D205
        self.student.train()
        if self.distiller is not None:
            self.distiller.train()
        if self.cfg.train.freeze_bn:
            freeze_batchnorm(self.student)
            if self.distiller is not None:
                freeze_batchnorm(self.distiller)
        if self.teacher is not None:
            self.teacher.eval()

    def losses(
        self, images: np.ndarray, masks: np.ndarray, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass of one batch: ``(loss, terms)`` (``task``, ``kd``, ``kd/<stage>``).

        In a data-parallel run ``images`` is this rank's shard, the task loss is that of the
        global batch and the distillation terms are this shard's.
        """
        x = torch.from_numpy(images).to(self.device)
        m = torch.from_numpy(masks).to(self.device)
        t_logits = t_feats = None
        noise: tuple[torch.Tensor, ...] = ()
        if self.teacher is not None:
            with torch.no_grad():
                t_logits, t_feats = self.teacher.forward_features(x)
        if self.distiller is not None:
            b, _, h, w = images.shape
            distiller, seed = self.distiller, self.cfg.seed
            arrays = shard_noise(
                lambda n: noise_for(seed, step, distiller.noise_shapes(n, h, w)),
                b,
                self.world.rank,
                self.world.size,
            )
            noise = tuple(torch.from_numpy(a).to(self.device) for a in arrays)
        # One process: a TrainNet of the current attributes (parity's float64 twin swaps them).
        net = self.train_net if self.world.parallel else TrainNet(self.student, self.distiller)
        return net(x, m, t_logits, t_feats, noise)

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
        loss, terms = self.losses(images, masks, step)
        values = {"loss": float(loss.detach())}
        values.update({k: float(v.detach()) for k, v in terms.items()})
        values = dist.mean_values(values, self.world)  # the same on every rank
        check_finite(values, where=where, last_good=last_good)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(step + 1)
        return values

    # ------------------------------------------------------------------ evaluation

    def eval_forward(self) -> Forward:
        """The current student (its weight average with ``train.ema``), in eval mode, as a
        numpy logits callable.
        """  # noqa: D205
        if self.ema is not None:
            return forward_fn(self.ema.module.eval())
        self.student.eval()
        return forward_fn(self.student)

    def bare_forward(self, path: Path) -> Forward:
        """A fresh student loaded from ``path`` (on this trainer's device), as a callable."""
        return forward_fn(load_network(self.cfg.model.name, path).to(self.device))

    def run_info(self) -> dict[str, Any]:
        """``threads`` (torch intra-op threads) and ``device`` for the start log record."""
        return {"threads": torch.get_num_threads(), "device": str(self.device)}

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
        """Store student, distiller, optimizer (plus torch RNG) and weight average in
        ``folder``.
        """  # noqa: D205
        save_neutral_net(self.student, folder / "student.safetensors", name=self.cfg.model.name)
        if self.ema is not None:
            self.ema.save(folder / EMA_FILE, name=self.cfg.model.name)
        if self.distiller is not None:
            arrays = net_to_neutral(self.distiller)
            if arrays:
                save_neutral(folder / "distiller.safetensors", arrays, source="torch")
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()},
            folder / "optimizer.pt",
        )

    def read(self, folder: Path) -> None:
        """Restore what :meth:`write` stored (strictly).

        Raises:
            ConfigError: ``train.ema`` > 0 and the checkpoint holds no weight average.
        """
        if self.ema is not None:
            require_ema_file(folder, self.cfg.train.ema)
        load_neutral_net(self.student, folder / "student.safetensors")
        if self.ema is not None:
            self.ema.load(folder / EMA_FILE, network=self.cfg.model.name)
        if self.distiller is not None and net_to_neutral(self.distiller):
            load_neutral_net(self.distiller, folder / "distiller.safetensors")
        blob = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["torch_rng"])


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
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train (or distill) a network with PyTorch and report on the test split.

    Args:
        cfg: The experiment (``cfg.backend`` is not checked here: the CLI dispatches on it).
        run_dir: The run folder (created).
        resume: Continue from ``run_dir/checkpoints/last`` (the next epoch after it).
        cache_dir: Where the synthetic dataset is generated when ``data.root`` is None.
        synth_size: Image side of the synthetic dataset.
        stop_after: Stop once this many epochs are complete, without the final report (a
            planned interruption; ``--resume`` continues). None: run to ``schedule.epochs``.
        quiet: Print nothing.
        device: Torch device (default: ``$IRKD_DEVICE``, else CUDA when available, else
            CPU). Bit-exact resume is checked on the CPU.

    Returns:
        ``{"run_dir", "state", "best_epoch", "best_val", "metrics"}`` (``metrics``: the test
        figures, None when stopped early).

    Raises:
        NonFiniteLossError: A NaN/Inf loss; the last good checkpoint is left untouched.
        ConfigError, DatasetError, WeightsError, FileNotFoundError: Bad inputs.
    """
    torch.set_num_threads(torch_threads())
    world = dist.init()
    check_supported(cfg, world.size)
    try:
        return run_training(
            cfg,
            run_dir,
            lambda: TorchTrainer(cfg, device, world),
            resume=resume,
            cache_dir=cache_dir,
            synth_size=synth_size,
            stop_after=stop_after,
            quiet=quiet,
            world=world if world.parallel else None,
        )
    finally:
        dist.shutdown()
