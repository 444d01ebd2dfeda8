"""The distiller: connectors and stage losses of one method, and the weighted total.

PyTorch twin of ``ms_impl.distill.distiller`` (see docs/contracts.md): the same class, method
names, module tree and parameter names (``connectors.0.conv.weight``, ``connectors.0.bn.*``,
``losses.0.*``), up to MindSpore's BatchNorm renames.

The distiller owns every trainable part that is not the student (the connectors, and the
parameters of baseline losses such as MGD's generation block), so the student's exported
weights never contain them. It is called as::

    total, terms = distiller(t_feats, s_feats, t_logits, s_logits, mask, noise)

with ``total = lam * sum_s w_s * L_s`` and ``terms`` the unweighted ``L_s`` in stage order.
With ``method.out_weight > 0`` (``msa_awmse`` only) the output-map term ``L_out`` of
:class:`~.method.OutputMapLoss` joins them: ``total = lam * (sum_s w_s * L_s + out_weight *
L_out)``, and ``terms`` ends with ``L_out`` (named ``out`` in :attr:`Distiller.term_names`).
Teacher features and logits are detached inside: no gradient reaches the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from irkd.config import MethodConfig
from irkd.methods import out_weight as _out_weight
from irkd.methods import stage_channel as _channels
from irkd.methods import stage_params, stage_stride  # noqa: F401

from .method import Connector, MSAAWMSELoss, OutputMapLoss, msa_map

__all__ = [
    "METHODS",
    "Distiller",
    "build_distiller",
    "loss_class",
    "stage_params",
    "stage_stride",
]

# method name -> class name in .baselines (or in .method for the method itself)
_LOSSES: dict[str, str] = {
    "msa_awmse": "MSAAWMSELoss",
    "fitnet": "FitNetLoss",
    "at": "ATLoss",
    "cwd": "CWDLoss",
    "pkd": "PKDLoss",
    "mgd": "MGDLoss",
    "fgd": "FGDLoss",
    "logit_kd": "LogitKDLoss",
}

METHODS: tuple[str, ...] = ("none", *_LOSSES)
"""Valid ``MethodConfig.name`` values."""

_NOISE_METHODS = ("mgd",)  # stage losses fed a uniform (B, 1, h, w) noise tensor


def loss_class(name: str) -> type[nn.Module]:
    """The stage-loss class of a method name (baselines are imported on first use).

    Raises:
        ValueError: ``name`` is ``none`` or not a method.
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown distillation method {name!r}; valid: {', '.join(METHODS)}")
    if name == "msa_awmse":
        return MSAAWMSELoss
    from . import baselines

    return getattr(baselines, _LOSSES[name])


class Distiller(nn.Module):
    """Connectors and stage losses of a distillation method; returns ``(total, terms)``.

    Args:
        method: The method config (``name`` must not be ``none``: see :func:`build_distiller`).
        teacher_channels: Channels of the teacher's stage features (``net.stage_channels``).
        student_channels: Channels of the student's stage features.

    Attributes:
        stages: Names of the distilled stages, in order (``("logits",)`` for ``logit_kd``).
        connectors: One :class:`Connector` per stage (empty for ``logit_kd``, whose logits
            have the same channels on both sides).
        losses: One stage loss per stage, built as ``Cls(t_channels, stage_params(method))``
            (``logit_kd``: ``t_channels = teacher_channels.get("logits", 1)``).
        stage_weights: ``w_s`` (default 1.0 each; ``logit_kd`` has the single weight 1.0,
            ``lam`` scales it).
        lam: ``lambda``.
        out_weight: Weight of the output-map term (``method.out_weight``; 0: none).
        out_loss: The :class:`OutputMapLoss` of that term (``None`` when ``out_weight`` is 0).
        term_names: Names of the unweighted terms returned, in order: :attr:`stages`, then
            ``out`` when ``out_weight > 0`` (the trainers log them as ``kd/<name>``).

    Raises:
        ValueError: Unknown method, a stage missing from the channel maps, a
            ``stage_weights`` of the wrong length, or an ``out_weight`` below 0 or other than
            0 for a method other than ``msa_awmse``.
    """

    def __init__(
        self,
        method: MethodConfig,
        teacher_channels: Mapping[str, int],
        student_channels: Mapping[str, int],
    ) -> None:
        super().__init__()
        if method.name == "none":
            raise ValueError("method 'none' has no distiller (build_distiller returns None)")
        cls = loss_class(method.name)
        params = stage_params(method)
        self.out_weight = _out_weight(method)
        self.out_loss: OutputMapLoss | None = None
        self.method = method.name
        self.lam = float(method.lam)
        self.on_logits = method.name == "logit_kd"
        self.needs_noise = method.name in _NOISE_METHODS or bool(getattr(cls, "needs_noise", False))
        msa = method.msa
        self._msa = (bool(msa.enabled), tuple(msa.scales), msa.fusion, float(msa.tau), msa.eps)
        if self.on_logits:
            self.stages: tuple[str, ...] = ("logits",)
            self.stage_weights: tuple[float, ...] = (1.0,)
            self.connectors = nn.ModuleList()
            t_ch = int(teacher_channels.get("logits", 1))
            self.losses = nn.ModuleList([cls(t_ch, params)])
            self.term_names: tuple[str, ...] = self.stages
            return
        self.stages = tuple(method.stages)
        if not self.stages:
            raise ValueError("method.stages is empty")
        weights = method.stage_weights
        if weights is None:
            weights = [1.0] * len(self.stages)
        if len(weights) != len(self.stages):
            raise ValueError(
                f"stage_weights has {len(weights)} entries for {len(self.stages)} stages"
            )
        self.stage_weights = tuple(float(w) for w in weights)
        t_chs = [_channels("teacher", teacher_channels, s) for s in self.stages]
        s_chs = [_channels("student", student_channels, s) for s in self.stages]
        self.connectors = nn.ModuleList(
            [Connector(sc, tc) for sc, tc in zip(s_chs, t_chs, strict=True)]
        )
        self.losses = nn.ModuleList([cls(tc, params) for tc in t_chs])
        self.term_names = self.stages
        if self.out_weight > 0:
            self.out_loss = OutputMapLoss(params)
            self.term_names = (*self.stages, "out")

    def noise_shapes(self, batch: int, height: int, width: int) -> tuple[tuple[int, ...], ...]:
        """Per-stage shapes of the uniform noise the loop must draw (``()``: none needed).

        Args:
            batch: Batch size.
            height: Input height.
            width: Input width.
        """
        out: list[tuple[int, ...]] = []
        for stage in self.stages:
            if self.needs_noise:
                s = stage_stride(stage)
                out.append((batch, 1, height // s, width // s))
            else:
                out.append(())
        return tuple(out)

    def attention_maps(self, t_feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """MSA maps ``M`` (B, 1, H, W) of the teacher's stage features, for visualisation.

        Uses ``method.msa`` (uniform when MSA is disabled) whatever the method; stages absent
        from ``t_feats`` (and ``logits``) are left out. With ``msa.on_student`` the loss also
        folds in the student's map, which is not shown here.
        """
        enabled, scales, fusion, tau, eps = self._msa
        out: dict[str, Tensor] = {}
        for stage in self.stages:
            if stage not in t_feats:
                continue
            t = t_feats[stage].detach()
            if enabled:
                out[stage] = msa_map(t, scales, fusion, tau, eps)
            else:
                out[stage] = t.new_ones((t.shape[0], 1, t.shape[2], t.shape[3]))
        return out

    def forward(
        self,
        t_feats: Mapping[str, Tensor],
        s_feats: Mapping[str, Tensor],
        t_logits: Tensor | None,
        s_logits: Tensor | None,
        mask: Tensor | None,
        noise: Sequence[Tensor | None] = (),
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(total, terms)``: ``lam * sum_s w_s * L_s`` and the unweighted ``L_s``.

        With ``out_weight > 0``: ``lam * (sum_s w_s * L_s + out_weight * L_out)``, and
        ``L_out`` last in ``terms``.

        Args:
            t_feats: Teacher stage features by name.
            s_feats: Student stage features by name (before the connectors).
            t_logits: Teacher logits (used by ``logit_kd`` and the output-map term only).
            s_logits: Student logits (used by ``logit_kd`` and the output-map term only).
            mask: GT mask (B, 1, H, W) at input resolution.
            noise: One tensor per stage, shaped by :meth:`noise_shapes` (``()`` or ``None``
                entries where a stage needs none; the whole tuple may be empty then).
        """
        terms = []
        for i in range(len(self.stages)):
            if self.on_logits:
                if t_logits is None or s_logits is None:
                    raise ValueError("logit_kd distils the logits: pass t_logits and s_logits")
                t = t_logits.detach()
                s = s_logits
            else:
                stage = self.stages[i]
                t = t_feats[stage].detach()
                s = self.connectors[i](s_feats[stage])
            n = noise[i] if i < len(noise) else None
            terms.append(self.losses[i](t, s, mask, n))
        total = terms[0] * self.stage_weights[0]
        for i in range(1, len(terms)):
            total = total + terms[i] * self.stage_weights[i]
        if self.out_weight > 0:
            if t_logits is None or s_logits is None:
                raise ValueError(
                    "method.out_weight distils the output maps: pass t_logits and s_logits"
                )
            out = self.out_loss(t_logits.detach(), s_logits, mask)  # type: ignore[misc]
            terms.append(out)
            total = total + out * self.out_weight
        return self.lam * total, tuple(terms)


def build_distiller(
    method: MethodConfig,
    teacher_channels: Mapping[str, int],
    student_channels: Mapping[str, int],
) -> Distiller | None:
    """A :class:`Distiller` for ``method``, or ``None`` for ``method.name == "none"``."""
    if method.name == "none":
        return None
    return Distiller(method, teacher_channels, student_channels)
