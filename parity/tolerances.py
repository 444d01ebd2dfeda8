"""The parity tolerances: one table, stated as absolute and relative error.

A comparison of ``actual`` against ``reference`` passes when every element satisfies

    |actual - reference| <= atol + rtol * |reference|

(``numpy.allclose``'s rule; NaN or Inf in one and not the other fails). The report prints,
next to each tolerance, the measured largest absolute error, the largest relative error and
the largest ratio ``|a - r| / (atol + rtol * |r|)`` (a case passes when that ratio is <= 1).

Everything is float32 in both frameworks; the oracle computes in float64. The figures below
were set from the errors measured on this project's CPUs (the ``why`` of each row), with
headroom of about 10x, so that a real bug (a wrong eps, a missing ReLU, a flipped
align_corners, a BatchNorm momentum of 0.1 instead of 0.9) is far outside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["TOLERANCES", "Tolerance", "tolerance", "tolerance_table"]


@dataclass(frozen=True)
class Tolerance:
    """An absolute and a relative error bound, and why they are what they are."""

    atol: float
    rtol: float
    why: str

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


TOLERANCES: dict[str, Tolerance] = {
    # ------------------------------------------------------------------ method and losses
    "map": Tolerance(
        1e-5,
        1e-4,
        "MSA maps and L2-normalised features (values O(1), M up to e^(1/tau)): float32 "
        "pooling/softmax in different reduction orders; measured <= 2e-6 relative",
    ),
    "loss": Tolerance(
        1e-5,
        1e-4,
        "scalar loss values (float32 sums over up to 1e5 elements): measured <= 2e-6 "
        "relative; atol 1e-5 because CWD's KL of two near-uniform maps is a difference of "
        "O(tau^2 log HW) terms (float32 cancellation ~1e-6 on the 'tiny' input)",
    ),
    "loss_grad": Tolerance(
        1e-7,
        1e-3,
        "input gradients of a loss (per element, many near zero): float32 backward in two "
        "frameworks; measured <= 1e-8 absolute",
    ),
    # ------------------------------------------------------------------ networks
    "forward": Tolerance(
        1e-4,
        1e-4,
        "network logits and stage features (eval and train mode), a dozen conv+BN layers "
        "deep in float32: measured <= 2e-5 absolute",
    ),
    "stats": Tolerance(
        1e-5,
        1e-4,
        "BatchNorm running mean/variance after one train-mode forward (momentum 0.1 torch = "
        "0.9 MindSpore); measured <= 1e-6",
    ),
    "param_grad": Tolerance(
        1e-6,
        1e-3,
        "parameter gradients of one training step (BatchNorm in eval mode), float32 "
        "backward through the whole network: measured <= 1e-7 absolute",
    ),
    # ------------------------------------------------------------------ training
    "train_sgd": Tolerance(
        1e-5,
        1e-4,
        "parameters after each of N SGD steps of a distillation run (lr 1e-2): the drift "
        "stays near float32 rounding; measured <= 2e-7 after 3 steps",
    ),
    "train_adamw": Tolerance(
        1e-5,
        1e-4,
        "parameters after each of N AdamW steps, on the parameters that receive a gradient. "
        "Parameters whose gradient is zero in exact arithmetic (a conv bias followed by "
        "BatchNorm) get float32 noise that Adam divides by its own square root, so they move "
        "by up to lr per step in either framework: they are reported, with the bound "
        "'train_adamw_zero_grad', not hidden",
    ),
    "train_adamw_zero_grad": Tolerance(
        0.0,
        0.0,
        "parameters with an exactly-zero gradient under AdamW: atol = 2 * lr * step, set by "
        "the case (each framework may move them by up to lr a step, see train_adamw)",
    ),
    "loss_trajectory": Tolerance(
        1e-5,
        1e-4,
        "the training loss at each of N steps",
    ),
}


def tolerance(family: str) -> Tolerance:
    """The tolerance of a case family.

    Raises:
        KeyError: Not a family of :data:`TOLERANCES`.
    """
    if family not in TOLERANCES:
        raise KeyError(f"no parity tolerance for family {family!r}; known: {sorted(TOLERANCES)}")
    return TOLERANCES[family]


def tolerance_table() -> str:
    """The table as text (family, atol, rtol, why), for ``irkd parity --tolerances``."""
    lines = [f"{'family':<22} {'atol':>8} {'rtol':>8}  why"]
    for name, tol in TOLERANCES.items():
        lines.append(f"{name:<22} {tol.atol:>8.0e} {tol.rtol:>8.0e}  {tol.why}")
    return "\n".join(lines)
