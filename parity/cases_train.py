"""Parity cases of training: N steps of the real trainers, MindSpore against PyTorch.

Why this module is long: the AdamW bounds (:func:`adamw_tolerance`,
:func:`expected_tolerance`, :func:`advisory`) and the checks they bound are one piece (the
release gate recomputes verdicts with the same functions), and the docstring below is their
specification. The measurements behind the bounds are in ``docs/mindspore-notes.md``.

Each case runs :data:`STEPS` steps of a distillation run with both backends' own trainers
(:class:`ms_impl.train.MSTrainer`, :class:`torch_ref.train.TorchTrainer`, the objects
``irkd train`` / ``irkd distill`` drive) from the same neutral weights, on the same numpy
batches, and compares the two after every step:

- the teacher and the student are loaded by the trainers themselves from neutral files
  (``teacher.checkpoint``, ``model.checkpoint`` of an :class:`irkd.config.ExperimentConfig`):
  ``ctx.weights`` where it names them, else the seeded random weights of
  :func:`parity.cases_net.neutral_weights` (shared with the network cases);
- the distiller's trainable parts (the connector; MGD's generation block) are initialised by
  PyTorch under ``torch.manual_seed(cfg.seed)``, saved as a neutral file and written into the
  MindSpore distiller in place (:func:`ms_impl.weights.assign_neutral`, strict);
- ``trainer.step(images, masks, step, lr, where=...)`` with a fixed learning rate
  (:data:`LR`), ``optim.weight_decay`` and SGD ``momentum`` at their defaults (1e-4, 0.9).

Checks per step ``k`` (1-based, PyTorch the reference):

``loss step k mindspore~pytorch`` (also ``task``, ``kd``)
    The values ``step`` returned, family ``loss_trajectory``.
``params step k mindspore~pytorch``
    Every trainable student and distiller parameter, concatenated into one check, family
    ``train_sgd`` / ``train_adamw``. When it fails, ``error`` names the worst tensor.
    SGD: the table's ``train_sgd`` bound. AdamW: the parameters with a gradient (the
    zero-grad ones below aside), bound :func:`adamw_tolerance` = ``train_adamw`` plus
    :data:`ADAMW_LR_FRACTION` ``* lr * k``. Adam divides each gradient element by its own
    running magnitude, so any gradient the two frameworks do not compute alike becomes a
    parameter difference of a fraction of ``lr``, however small the gradient (float32
    rounding of the elements whose gradient is below Adam's eps). From the second step on,
    the two runs' weights differ by float32 rounding, and at the network's kinks
    (max-pooling, CBAM's channel and spatial max, ReLU) that routes gradients differently,
    so a few weights end up beyond the ``train_adamw`` row although the optimizers
    themselves agree. The losses (``loss_trajectory``) stay within 1e-6 and are the tight,
    bulk check of the AdamW runs.
``zero-grad params step k mindspore~pytorch`` (AdamW only)
    The parameter elements whose gradient is zero in exact arithmetic: a conv bias that
    feeds a train-mode BatchNorm (which removes any per-channel shift; nearly every conv of
    DNANet has one), or a dead unit. Their float32 gradient is rounding noise, which AdamW
    divides by its own magnitude, so each framework moves them by up to ``lr`` a step in
    directions of its own. Family ``train_adamw_zero_grad``, bound
    ``Tolerance(atol=2 * lr * k, rtol=0)``. **Rule**: an element is zero-grad when its
    float64 gradient (PyTorch, the first step computed in double precision,
    :func:`exact_zero_grads`) is at most :data:`ZERO_GRAD_REL` (1e-12) times the largest
    float64 gradient element of all trained parameters; the two groups lie orders of
    magnitude apart on either side of it, so the split does not depend on float32 noise.
    (A rule on the float32 gradient relative to its own tensor,
    ``|g| < 1e-6 max |g|``, cannot find them: a bias tensor that feeds a BatchNorm is noise
    in all of its elements.)
``bn running_mean step k mindspore~pytorch``, ``bn running_var step k mindspore~pytorch``
    Every BatchNorm running mean (variance) of the student and the connector, same family
    as the parameters. Under AdamW the running means also absorb the zero-grad biases'
    drift: family ``train_adamw_zero_grad``, ``atol`` = the family's plus
    ``(1 - 0.9**k) * 2 * lr * (k - 1)`` (see :func:`_stats_checks`).

``loss step k mindspore~pytorch at mindspore weights`` (also ``task``, ``kd``) and
``bn running_mean|running_var step k mindspore~pytorch at mindspore weights`` (AdamW, k >= 2)
    The well-conditioned form of the two checks above, for the steps after an AdamW step.
    The reference is PyTorch's forward of step ``k`` from **MindSpore's** state before that
    step (its weights and running statistics loaded into a copy of the PyTorch student and
    distiller, :func:`_torch_from`): both sides then start from identical numbers, and
    ``R_k(ms) - R_k(ref) = 0.1 * (B_ms(W) - B_torch(W))`` for a running statistic (``B`` the
    batch statistic of the same weights ``W`` and batch), which is the situation of
    ``net/<n>/train-bn`` (one train-mode forward): family ``stats``. The loss terms likewise
    compare two forwards of identical weights: family ``loss_trajectory``.

Gating and advisory checks (:func:`advisory`): under AdamW, the end-to-end ``loss``/``task``
/``kd`` and ``bn running_mean``/``running_var`` checks of steps ``k >= 2`` are reported
(``gating: false``) but do not decide the verdict. Why no bound from the table can hold for
them: after step 1 the two runs' weights differ by up to ``2 * lr`` per step on the elements
whose tiny gradient float32 gave opposite signs in the two frameworks
(:func:`adamw_hard_tolerance`, a handful of elements), and the forward of step ``k`` turns
that weight difference ``dW`` into ``J dW`` in every downstream batch statistic, ``J`` the
Jacobian of the statistic with respect to the weights: a property of the trained weights and
of the batch, not of the implementations. What the verdict keeps under AdamW: step 1 end to
end (identical weights on both sides), the parameters at every step with their derived bounds
(the per-element ``2 * lr * k``, the 1% fraction beyond ``0.5 * lr * k`` and the zero-grad
``2 * lr * k``), and the conditioned checks above. SGD has no such amplification (an update
is ``lr * g``, as continuous as the gradient): its end-to-end checks all gate.
:func:`expected_tolerance` gives the bound of every check by its name (the release gate
recomputes verdicts with it).

Cases: ``train/<optimizer>/<mode>`` (method ``msa_awmse`` on :data:`STAGE`, teacher
:data:`TEACHER`, student :data:`STUDENT`) for ``sgd`` and ``adamw`` and each MindSpore mode,
``mode`` being ``cfg.train.graph_mode`` of the MindSpore trainer (GRAPH_MODE compiles the
whole step; PyNative runs it eagerly). Plus one baseline, ``train/sgd/<mode>/mgd``: MGD on
the same stage, whose generation block is a second trainable distiller part and whose random
mask comes from the step's noise (``irkd.schedule.noise_for``). The quick set is
``train/sgd/pynative`` and ``train/adamw/pynative`` (both optimizers, no compilation).
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from irkd.config import ExperimentConfig, config_from_dict

from .cases_net import (
    MS_MODES,
    case_rng,
    input_shape,
    keep_alive,
    neutral_weights,
    random_mask,
    scratch_dir,
    stored_kwargs,
)
from .core import Case, Check, Context, compare
from .tolerances import TOLERANCES, Tolerance

__all__ = [
    "ADAMW_LR_FRACTION",
    "LR",
    "OPTIMIZERS",
    "STAGE",
    "STEPS",
    "STUDENT",
    "TEACHER",
    "ZERO_GRAD_REL",
    "adamw_tolerance",
    "advisory",
    "exact_zero_grads",
    "expected_tolerance",
    "required_checks",
    "train_cases",
]

TEACHER = "dnanet_s"
STUDENT = "dnanet_xxs"
#: Distilled stage (stride 2: teacher 16 channels, student 8, connector 8 -> 16).
STAGE = "enc1"
#: Steps per case.
STEPS = 3
#: Learning rate by optimizer.
LR: dict[str, float] = {"sgd": 1e-2, "adamw": 1e-3}
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
#: Baseline method of the extra cases (``train/sgd/<mode>/<baseline>``).
BASELINE = "mgd"
#: A parameter element is "zero-grad" when ``|g64| <= ZERO_GRAD_REL * max |g64|``.
ZERO_GRAD_REL = 1e-12
#: AdamW, parameters with a gradient: ``train_adamw`` plus this fraction of ``lr * step``.
ADAMW_LR_FRACTION = 0.5

_PAIR = "mindspore~pytorch"
_STATS = ("running_mean", "running_var")
#: Suffix of the well-conditioned checks (the reference starts from MindSpore's state).
AT_MS = "at mindspore weights"
_TERMS = ("loss", "task", "kd")
_CASE_RE = re.compile(r"^train/(?P<opt>[a-z]+)/(?P<mode>[a-z]+)(?:/(?P<method>[a-z_]+))?$")
_WHAT_RE = re.compile(
    rf"^(?P<what>.+?),? step (?P<n>\d+) {re.escape(_PAIR)}(?P<at> {re.escape(AT_MS)})?$"
)


# --------------------------------------------------------------------------- helpers


def _config(
    ctx: Context, optimizer: str, mode: str, method: str, teacher: str, student: str
) -> ExperimentConfig:
    """The experiment both trainers build from (neutral checkpoints for both networks)."""
    t_file = neutral_weights(ctx, teacher)
    s_file = neutral_weights(ctx, student)
    s_kwargs = stored_kwargs(s_file)
    deep = bool(s_kwargs.pop("deep_supervision", False))
    return config_from_dict(
        {
            "name": "parity",
            "seed": int(ctx.seed),
            "model": {"name": student, "kwargs": s_kwargs, "checkpoint": str(s_file)},
            "teacher": {
                "name": teacher,
                "kwargs": stored_kwargs(t_file),
                "checkpoint": str(t_file),
            },
            "method": {"name": method, "stages": [STAGE]},
            "optim": {"name": optimizer, "lr": LR[optimizer]},
            "train": {"graph_mode": mode == "graph", "deep_supervision": deep},
        }
    )


@contextlib.contextmanager
def _restore_ms_mode() -> Iterator[None]:
    """Restore MindSpore's context mode after the block (MSTrainer sets it globally)."""
    import mindspore as ms

    before = ms.get_context("mode")
    try:
        yield
    finally:
        ms.set_context(mode=before)


def _ms_state(tr: Any) -> dict[str, np.ndarray]:
    from ms_impl.weights import net_to_neutral

    out = {f"student/{k}": v for k, v in net_to_neutral(tr.student).items()}
    if tr.distiller is not None:
        out.update({f"distiller/{k}": v for k, v in net_to_neutral(tr.distiller).items()})
    return out


def _torch_state(tr: Any) -> dict[str, np.ndarray]:
    from torch_ref.weights import net_to_neutral as state_to_neutral

    out = {f"student/{k}": v for k, v in state_to_neutral(tr.student).items()}
    if tr.distiller is not None:
        out.update({f"distiller/{k}": v for k, v in state_to_neutral(tr.distiller).items()})
    return out


def exact_zero_grads(
    tr: Any, images: np.ndarray, masks: np.ndarray, step: int, rel: float = ZERO_GRAD_REL
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Which trained parameter elements have an exactly-zero gradient (float64 PyTorch).

    Runs ``tr.losses`` on float64 copies of the trainer's networks (train mode, as in the
    step) and marks the elements with ``|g| <= rel * max |g|`` over all trained parameters.

    Args:
        tr: A :class:`torch_ref.train.TorchTrainer` (left untouched).
        images: The batch.
        masks: Its masks.
        step: Global step (noise).
        rel: Threshold relative to the largest gradient element.

    Returns:
        ``(masks, stats)``: ``student/<name>`` / ``distiller/<name>`` -> bool array (True:
        zero-grad), and ``{"gmax", "zero_max", "nonzero_min"}`` (the largest gradient, the
        largest zero-grad and the smallest other gradient element, all ``|g|``).
    """
    twin = copy.copy(tr)
    twin.student = copy.deepcopy(tr.student).double()
    twin.teacher = copy.deepcopy(tr.teacher).double() if tr.teacher is not None else None
    twin.distiller = copy.deepcopy(tr.distiller).double() if tr.distiller is not None else None
    twin.student.train()
    if twin.distiller is not None:
        twin.distiller.train()
    loss, _ = twin.losses(images.astype(np.float64), masks.astype(np.float64), step)
    loss.backward()
    grads: dict[str, np.ndarray] = {}
    for prefix, net in (("student", twin.student), ("distiller", twin.distiller)):
        if net is None:
            continue
        for name, p in net.named_parameters():
            g = p.grad
            grads[f"{prefix}/{name}"] = (
                np.zeros(tuple(p.shape)) if g is None else np.abs(g.detach().numpy())
            )
    gmax = max(float(g.max()) for g in grads.values() if g.size)
    zero = {k: g <= rel * gmax for k, g in grads.items()}
    zero_vals = np.concatenate([g[zero[k]] for k, g in grads.items()])
    other = np.concatenate([g[~zero[k]] for k, g in grads.items()])
    stats = {
        "gmax": gmax,
        "zero_max": float(zero_vals.max()) if zero_vals.size else 0.0,
        "nonzero_min": float(other.min()) if other.size else 0.0,
    }
    return zero, stats


def _merged_check(
    case: str,
    what: str,
    actual: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    family: str,
    select: Mapping[str, np.ndarray] | None = None,
    tol: Tolerance | None = None,
) -> Check:
    """One check over many tensors (their selected elements, concatenated).

    A failed check's ``error`` names the worst tensor and its figures.
    """
    names = sorted(reference)
    if set(actual) != set(reference):
        diff = sorted(set(actual) ^ set(reference))
        return Check(
            case, what, family, 0.0, 0.0, np.inf, np.inf, np.inf, False,
            error=f"tensors on one side only: {diff[:8]}",
        )  # fmt: skip

    def pick(d: Mapping[str, np.ndarray], n: str) -> np.ndarray:
        a = np.asarray(d[n], dtype=np.float64)
        return a[select[n]] if select is not None else a.ravel()

    checks = {
        n: compare(case, what, pick(actual, n), pick(reference, n), family, tol) for n in names
    }
    merged = compare(
        case,
        what,
        np.concatenate([pick(actual, n) for n in names]),
        np.concatenate([pick(reference, n) for n in names]),
        family,
        tol,
    )
    if not merged.passed:
        worst = max(names, key=lambda n: checks[n].ratio)
        w = checks[worst]
        merged.error = (
            f"worst tensor {worst}: max abs {w.max_abs:.3g}, max rel {w.max_rel:.3g}, "
            f"err/tol {w.ratio:.3g} (atol {merged.atol:g}, rtol {merged.rtol:g})"
        )
    return merged


def adamw_tolerance(lr: float, step: int) -> Tolerance:
    """The bound of the AdamW parameters that have a gradient, after ``step`` steps.

    The ``train_adamw`` row plus :data:`ADAMW_LR_FRACTION` ``* lr * step``: Adam divides
    each gradient element by its own running magnitude, so a gradient that the two
    frameworks do not compute alike becomes a difference of a fraction of ``lr``, however
    small the gradient. Two sources (measured, see the module docstring): float32 rounding of
    gradients below Adam's ``eps`` (1e-8), and, from the second step on, the kinks of the
    network (max-pooling, CBAM's channel and spatial max, ReLU), where weights that differ by
    float32 rounding route a gradient differently.
    """
    base = TOLERANCES["train_adamw"]
    extra = ADAMW_LR_FRACTION * lr * step
    return Tolerance(
        base.atol + extra,
        base.rtol,
        f"train_adamw plus {ADAMW_LR_FRACTION:g} * lr * step = {extra:.3g} (lr {lr:g}, "
        f"step {step}): Adam maps any gradient disagreement to a fraction of lr",
    )


ADAMW_MAX_FRACTION = 0.01
"""AdamW: at most this fraction of the parameters with a gradient may lie beyond
:func:`adamw_tolerance` (measured: 0 with seeded random weights; 1.8e-5 of them, 3 elements,
with the trained cpu-bench dnanet_s -> dnanet_xxs weights in GRAPH_MODE, where a few gradients
are small enough for float32 to decide their sign)."""


def adamw_hard_tolerance(lr: float, step: int) -> Tolerance:
    """The per-element bound of the AdamW parameters: ``atol + 2 * lr * step``.

    Adam's first steps move an element by about ``lr * sign(g)``: where the two frameworks
    disagree on the sign of a tiny gradient (float32 cancellation), the two runs differ by up
    to ``2 * lr`` a step. Beyond that no rounding can go; the bulk is held to
    :func:`adamw_tolerance` by the fraction check.
    """
    base = TOLERANCES["train_adamw"]
    extra = 2.0 * lr * step
    return Tolerance(
        base.atol + extra,
        base.rtol,
        f"train_adamw plus 2 * lr * step = {extra:.3g}: the largest difference a gradient "
        "sign flip can make",
    )


def zero_grad_tolerance(lr: float, step: int) -> Tolerance:
    """The bound of the AdamW zero-grad parameter elements after ``step`` steps.

    Each framework moves them by up to ``lr`` a step, in directions of its own.
    """
    return Tolerance(
        2.0 * lr * step,
        0.0,
        f"zero-grad elements after {step} AdamW steps: each framework moves them by up to "
        f"lr = {lr:g} a step",
    )


def running_mean_tolerance(lr: float, step: int) -> Tolerance:
    """The AdamW running means' bound after ``step`` steps, end to end.

    The ``train_adamw`` row plus the running mean's share of the zero-grad bias drift,
    ``(1 - 0.9**n) * 2 * lr * (n - 1)`` (see :func:`_stats_checks`).
    """
    base = TOLERANCES["train_adamw"]
    drift = (1.0 - 0.9**step) * 2.0 * lr * (step - 1)
    return Tolerance(
        base.atol + drift,
        base.rtol,
        f"train_adamw plus the running mean's share of the zero-grad bias drift after "
        f"{step} AdamW steps at lr {lr:g}: (1 - 0.9^n) * 2 * lr * (n - 1) = {drift:.3g}",
    )


#: The limit of the fraction check (a fraction compared with 0 under this atol).
FRACTION_LIMIT = Tolerance(ADAMW_MAX_FRACTION, 0.0, "at most 1% of the elements beyond the bound")


def advisory(case: str, what: str) -> bool:
    """Whether a check of the training cases is reported without deciding the verdict.

    True for the end-to-end ``loss``/``task``/``kd`` and ``bn running_mean``/``running_var``
    checks of AdamW steps ``k >= 2`` (the module docstring says why; their well-conditioned
    twins ``... at mindspore weights`` gate instead). False for everything else, including
    any check of another family of cases.
    """
    c = _CASE_RE.match(case)
    w = _WHAT_RE.match(what)
    if c is None or w is None or c["opt"] != "adamw" or w["at"]:
        return False
    kind = w["what"]
    return int(w["n"]) >= 2 and (kind in _TERMS or kind in {f"bn {k}" for k in _STATS})


def required_checks(case: str) -> list[str]:
    """The checks a training case must report for the gate to decide it.

    The well-conditioned AdamW checks of steps ``2..STEPS``: without them the verdict of
    those steps would rest on advisory checks alone (a report made before they existed is
    refused, not passed).
    """
    c = _CASE_RE.match(case)
    if c is None or c["opt"] != "adamw":
        return []
    kinds = [*_TERMS, *(f"bn {k}" for k in _STATS)]
    return [f"{k} step {n} {_PAIR} {AT_MS}" for n in range(2, STEPS + 1) for k in kinds]


def expected_tolerance(case: str, what: str, family: str) -> Tolerance | None:
    """The bound a training-case check must be held to, from its names alone.

    The same functions set the bounds when the checks are made, so the release gate can
    recompute a report's verdict against the current table and derivations.

    Returns:
        The tolerance, or None when ``case``/``what``/``family`` is not a check this module
        makes (the gate refuses such a check).
    """
    c = _CASE_RE.match(case)
    w = _WHAT_RE.match(what)
    if c is None or w is None or c["opt"] not in LR:
        return None
    opt, n, kind = c["opt"], int(w["n"]), w["what"]
    lr = LR[opt]
    adam = opt == "adamw"
    if kind in _TERMS:
        return TOLERANCES["loss_trajectory"] if family == "loss_trajectory" else None
    if w["at"]:
        ok = adam and n >= 2 and kind in {f"bn {k}" for k in _STATS} and family == "stats"
        return TOLERANCES["stats"] if ok else None
    fam = f"train_{opt}"
    if kind == "params":
        if family != fam:
            return None
        return adamw_hard_tolerance(lr, n) if adam else TOLERANCES[fam]
    if adam and kind == f"params beyond {ADAMW_LR_FRACTION:g}*lr*step, fraction":
        return FRACTION_LIMIT if family == fam else None
    if adam and kind == "zero-grad params":
        return zero_grad_tolerance(lr, n) if family == "train_adamw_zero_grad" else None
    if kind == "bn running_mean" and adam:
        return running_mean_tolerance(lr, n) if family == "train_adamw_zero_grad" else None
    if kind in {f"bn {k}" for k in _STATS}:
        return TOLERANCES[fam] if family == fam else None
    return None


def _fraction_check(
    case: str,
    what: str,
    actual: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    select: Mapping[str, np.ndarray],
    tol: Tolerance,
) -> Check:
    """The fraction of selected elements outside ``tol``, checked against
    :data:`ADAMW_MAX_FRACTION` (family ``train_adamw``).
    """  # noqa: D205
    outside, total = 0, 0
    for n in sorted(reference):
        a = np.asarray(actual[n], dtype=np.float64)[select[n]]
        r = np.asarray(reference[n], dtype=np.float64)[select[n]]
        bound = tol.atol + tol.rtol * np.abs(r)
        outside += int(np.count_nonzero(np.abs(a - r) > bound))
        total += int(r.size)
    frac = outside / max(total, 1)
    check = compare(case, what, frac, 0.0, "train_adamw", FRACTION_LIMIT)
    if not check.passed:
        check.error = f"{outside} of {total} elements ({100 * frac:.2f}%) beyond {tol.why}"
    return check


def _stats_checks(
    case: str,
    n: int,
    ms_w: Mapping[str, np.ndarray],
    th_w: Mapping[str, np.ndarray],
    names: Sequence[str],
    family: str,
    lr: float,
    adam: bool,
) -> list[Check]:
    """``bn running_mean step n`` and ``bn running_var step n`` (student and connector).

    Under AdamW the running means absorb the drift of the zero-grad conv biases that feed
    each BatchNorm (a batch mean contains the bias; the variance does not): the forward of
    step ``j`` sees biases up to ``2 * lr * (j - 1)`` apart, and the running mean, a
    momentum-0.1 average, at most ``(1 - 0.9**n) * 2 * lr * (n - 1)`` apart. That bound is
    added to the family's ``atol`` (family ``train_adamw_zero_grad``).
    """
    pair = _PAIR
    out = []
    for kind in _STATS:
        sel = [s for s in names if s.endswith(kind)]
        fam, tol = family, None
        if adam and kind == "running_mean":
            fam, tol = "train_adamw_zero_grad", running_mean_tolerance(lr, n)
        out.append(
            _merged_check(
                case,
                f"bn {kind} step {n} {pair}",
                {s: ms_w[s] for s in sel if s in ms_w},
                {s: th_w[s] for s in sel},
                fam,
                tol=tol,
            )
        )
    return out


# --------------------------------------------------------------------------- the case


def _train_case(
    optimizer: str, mode: str, method: str, teacher: str, student: str, ctx: Context
) -> list[Check]:
    """``train/<optimizer>/<mode>[/<method>]``: N steps in both trainers, compared per step."""
    from irkd.weights import save_neutral
    from ms_impl.train import MSTrainer
    from ms_impl.weights import assign_neutral
    from torch_ref.train import TorchTrainer
    from torch_ref.weights import net_to_neutral as state_to_neutral

    suffix = "" if method == "msa_awmse" else f"/{method}"
    case = f"train/{optimizer}/{mode}{suffix}"
    if mode not in ctx.ms_modes:
        raise ValueError(f"{case}: mode {mode!r} is not in ctx.ms_modes {ctx.ms_modes}")
    cfg = _config(ctx, optimizer, mode, method, teacher, student)
    lr = LR[optimizer]
    fam = f"train_{optimizer}"
    rng = case_rng(ctx, case)
    b, c, h, w = input_shape(ctx)
    batches = [
        (rng.standard_normal((b, c, h, w)).astype(np.float32), random_mask(rng, (b, 1, h, w)))
        for _ in range(STEPS)
    ]

    th = TorchTrainer(cfg, device="cpu")
    d_file = scratch_dir(ctx) / f"{case.replace('/', '_')}-distiller.safetensors"
    assert th.distiller is not None  # a distillation config
    save_neutral(d_file, state_to_neutral(th.distiller), source="torch")
    zero: dict[str, np.ndarray] | None = None
    if optimizer == "adamw":
        zero, _ = exact_zero_grads(th, *batches[0], 0)

    checks: list[Check] = []
    with _restore_ms_mode():
        ms_tr = MSTrainer(cfg)
        keep_alive(ms_tr)
        assign_neutral(ms_tr.distiller, d_file, network="distiller")
        ms_tr.train_mode()
        th.train_mode()
        ms_w: dict[str, np.ndarray] | None = None
        for k, (x, m) in enumerate(batches):
            n = k + 1
            at_ms = None
            if optimizer == "adamw" and ms_w is not None:
                at_ms = _torch_from(th, ms_w, x, m, k)  # before either side steps
            a = ms_tr.step(x, m, k, lr, where=f"{case} step {k} (MindSpore)")
            ref = th.step(x, m, k, lr, where=f"{case} step {k} (PyTorch)")
            for key in _TERMS:
                checks.append(
                    compare(case, f"{key} step {n} {_PAIR}", a[key], ref[key], "loss_trajectory")
                )
            ms_w, th_w = _ms_state(ms_tr), _torch_state(th)
            if at_ms is not None:
                checks += _conditioned_checks(case, n, a, ms_w, *at_ms)
            stats = [k_ for k_ in th_w if k_.endswith(_STATS)]
            params = [k_ for k_ in th_w if not k_.endswith(_STATS)]
            sel = {p: ~zero[p] for p in params} if zero is not None else None
            checks.append(
                _merged_check(
                    case,
                    f"params step {n} {_PAIR}",
                    {p: ms_w[p] for p in params if p in ms_w},
                    {p: th_w[p] for p in params},
                    fam,
                    sel,
                    adamw_hard_tolerance(lr, n) if zero is not None else None,
                )
            )
            if zero is not None and sel is not None:
                checks.append(
                    _fraction_check(
                        case,
                        f"params beyond {ADAMW_LR_FRACTION:g}*lr*step, fraction, step {n} {_PAIR}",
                        {p: ms_w[p] for p in params if p in ms_w},
                        {p: th_w[p] for p in params},
                        sel,
                        adamw_tolerance(lr, n),
                    )
                )
            if zero is not None:
                tol = zero_grad_tolerance(lr, n)
                checks.append(
                    _merged_check(
                        case,
                        f"zero-grad params step {n} {_PAIR}",
                        {p: ms_w[p] for p in params if p in ms_w},
                        {p: th_w[p] for p in params},
                        "train_adamw_zero_grad",
                        zero,
                        tol,
                    )
                )
            checks += _stats_checks(case, n, ms_w, th_w, stats, fam, lr, zero is not None)
    for check in checks:
        check.gating = not advisory(check.case, check.what)
    return checks


def _torch_from(
    th: Any, state: Mapping[str, np.ndarray], images: np.ndarray, masks: np.ndarray, step: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """PyTorch's forward of one step from another state (MindSpore's): ``(terms, state)``.

    A copy of the PyTorch student and distiller gets ``state`` (``student/<name>``,
    ``distiller/<name>``: weights and running statistics) strictly and runs
    ``losses(images, masks, step)`` in train mode without gradients; returned are the loss
    terms and the copy's state afterwards (its running statistics updated by that forward).
    The trainer ``th`` is left untouched.
    """
    import torch

    from torch_ref.weights import load_neutral_net as load_neutral_torch

    twin = copy.copy(th)
    parts = (("student", th.student), ("distiller", th.distiller))
    for prefix, net in parts:
        if net is None:
            continue
        clone = copy.deepcopy(net)
        arrays = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{prefix}/")}
        if arrays:
            load_neutral_torch(clone, arrays, network=f"{prefix} (MindSpore state)")
        setattr(twin, prefix, clone)
    twin.train_mode()
    with torch.no_grad():
        loss, terms = twin.losses(images, masks, step)
    values = {"loss": float(loss)}
    values.update({k: float(v) for k, v in terms.items()})
    return values, _torch_state(twin)


def _conditioned_checks(
    case: str,
    n: int,
    ms_terms: Mapping[str, float],
    ms_w: Mapping[str, np.ndarray],
    ref_terms: Mapping[str, float],
    ref_w: Mapping[str, np.ndarray],
) -> list[Check]:
    """Step ``n`` of MindSpore against PyTorch's forward from MindSpore's previous state."""
    what = f"step {n} {_PAIR} {AT_MS}"
    out = [
        compare(case, f"{key} {what}", ms_terms[key], ref_terms[key], "loss_trajectory")
        for key in _TERMS
    ]
    for kind in _STATS:
        sel = sorted(s for s in ref_w if s.endswith(kind))
        out.append(
            _merged_check(
                case,
                f"bn {kind} step {n} {_PAIR} {AT_MS}",
                {s: ms_w[s] for s in sel if s in ms_w},
                {s: ref_w[s] for s in sel},
                "stats",
            )
        )
    return out


def train_cases(
    *,
    teacher: str = TEACHER,
    student: str = STUDENT,
    ms_modes: Sequence[str] = MS_MODES,
) -> list[Case]:
    """The training cases (see the module docstring).

    Args:
        teacher: Teacher network (its weights: ``ctx.weights[teacher]`` or seeded random).
        student: Student network (likewise).
        ms_modes: MindSpore modes to cover (pass ``ctx.ms_modes``).

    Returns:
        ``train/<optimizer>/<mode>`` for :data:`OPTIMIZERS` x ``ms_modes`` (msa_awmse), and
        ``train/sgd/<mode>/mgd``; the PyNative msa_awmse cases are the quick set.
    """
    bad = [m for m in ms_modes if m not in MS_MODES]
    if bad:
        raise ValueError(f"unknown MindSpore modes {bad}; valid: {MS_MODES}")
    needs = (teacher, student)
    cases = []
    for opt in OPTIMIZERS:
        for mode in ms_modes:
            fn = partial(_train_case, opt, mode, "msa_awmse", teacher, student)
            cases.append(Case(f"train/{opt}/{mode}", f"train_{opt}", fn, mode == "pynative", needs))
    for mode in ms_modes:
        fn = partial(_train_case, "sgd", mode, BASELINE, teacher, student)
        cases.append(Case(f"train/sgd/{mode}/{BASELINE}", "train_sgd", fn, False, needs))
    return cases
