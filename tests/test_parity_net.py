"""Parity suite, network and training families: the quick set passes, and breakage is caught.

The quick cases of :mod:`parity.cases_net` (``dnanet_xxs`` and ``unet_s`` at 2x1x32x32:
eval in both MindSpore modes, train-mode BatchNorm, parameter gradients) and of
:mod:`parity.cases_train` (3 distillation steps with SGD and AdamW, PyNative) must pass. Each
case is a test of its own and runs once; the costliest (:data:`GATE_CASES`) are marked ``gate``:
outside pytest's fast default, inside the test command CI runs (``bash scripts/test.sh``).
Then each deliberate bug, monkeypatched into one twin, must make the named case fail on its
numbers (a failed check without an error message, not a crash):

- BatchNorm momentum 0.1 on the MindSpore side (PyTorch's value; MindSpore's convention
  wants 0.9) -> ``net/dnanet_xxs/train-bn`` (the running statistics);
- bilinear ``align_corners`` flipped, MindSpore DNANet / PyTorch U-Net -> ``eval``;
- a missing ReLU (MindSpore U-Net), a BatchNorm eps of 1e-3 (MindSpore DNANet; Keras'
  default) -> ``eval``.

The breakage cases run in PyNative only (no compilation), on the quick networks.
"""

from __future__ import annotations

from typing import Any

import pytest

import ms_impl  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before MindSpore's first conv)
from parity.cases_net import network_cases, neutral_weights
from parity.cases_train import train_cases
from parity.core import Check, Context, failed_checks, run_cases, select_cases

QUICK = {
    "net/dnanet_xxs/eval/graph",
    "net/dnanet_xxs/eval/pynative",
    "net/dnanet_xxs/train-bn",
    "net/dnanet_xxs/grad",
    "net/unet_s/eval/graph",
    "net/unet_s/eval/pynative",
    "net/unet_s/train-bn",
    "net/unet_s/grad",
    "train/sgd/pynative",
    "train/adamw/pynative",
}


def _all_cases() -> list[Any]:
    return network_cases() + train_cases()


@pytest.fixture(scope="module")
def cache() -> dict[str, Any]:
    """A context cache shared by the tests: the seeded random weights are written once."""
    ctx = Context(quick=True)
    for n in ("dnanet_xxs", "unet_s", "dnanet_s"):
        neutral_weights(ctx, n)
    return ctx.cache


#: Quick cases outside the fast default but in CI's gate (``-m gate``): the two training runs
#: and DNANet's gradients in both modes. The quick parity set is the release gate, so CI runs
#: all of it; a developer's ``pytest`` skips these ~65 s.
GATE_CASES = {"net/dnanet_xxs/grad", "train/sgd/pynative", "train/adamw/pynative"}

#: The check families each kind of quick case must produce.
FAMILIES = {
    "eval": {"forward"},
    "train-bn": {"forward", "stats"},
    "grad": {"loss", "param_grad"},
    "sgd": {"loss_trajectory", "train_sgd"},
    "adamw": {"loss_trajectory", "train_adamw", "train_adamw_zero_grad"},
}


def test_case_table_names() -> None:
    cases = _all_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert {c.name for c in select_cases(cases, quick=True)} == QUICK
    for n in ("dnanet", "dnanet_s", "dnanet_xs", "dnanet_xxs", "unet", "unet_s"):
        assert {f"net/{n}/eval/graph", f"net/{n}/eval/pynative", f"net/{n}/train-bn"} < set(names)
        assert f"net/{n}/grad" in names
    assert {"train/sgd/graph", "train/adamw/graph", "train/sgd/pynative/mgd"} < set(names)
    only = network_cases({"unet_s": "x.safetensors"}, ms_modes=("pynative",))
    assert [c.name for c in only] == [
        "net/unet_s/eval/pynative",
        "net/unet_s/train-bn",
        "net/unet_s/grad",
    ]
    assert all(c.needs == ("unet_s",) for c in only)
    with pytest.raises(KeyError, match="unregistered"):
        network_cases({"resnet": "x.safetensors"})


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.gate) if n in GATE_CASES else n for n in sorted(QUICK)],
)
def test_quick_case_passes(name: str, cache: dict[str, Any]) -> None:
    (case,) = [c for c in _all_cases() if c.name == name]
    assert case.quick
    checks, _ = run_cases([case], Context(quick=True, cache=cache))
    assert {c.case for c in checks} == {name}
    bad = failed_checks(checks)
    assert not bad, "\n".join(
        f"{c.case} [{c.what}]: {c.error or f'max abs {c.max_abs:.3g}, err/tol {c.ratio:.3g}'}"
        for c in bad
    )
    kind = name.split("/")[2] if name.startswith("net/") else name.split("/")[1]
    assert FAMILIES[kind] <= {c.family for c in checks}
    if kind == "eval":  # every stage feature is compared
        whats = {c.what for c in checks}
        assert {f"{s} mindspore~pytorch" for s in ("logits", "enc0", "enc4", "dec0")} <= whats


def _run_one(name: str, cache: dict[str, Any]) -> list[Check]:
    (case,) = [c for c in _all_cases() if c.name == name]
    checks, _ = run_cases([case], Context(quick=True, ms_modes=("pynative",), cache=cache))
    return checks


def _assert_caught(checks: list[Check], name: str, family: str) -> None:
    bad = failed_checks(checks)
    assert bad, f"{name} passed despite the bug"
    assert {c.case for c in bad} == {name}
    assert all(c.error is None for c in bad), [c.error for c in bad if c.error]
    assert any(c.family == family for c in bad)


def test_bn_momentum_of_pytorch_on_mindspore_is_caught(monkeypatch, cache) -> None:
    from mindspore import nn

    from ms_impl.models import dnanet

    monkeypatch.setattr(dnanet, "batch_norm", lambda c: nn.BatchNorm2d(c, eps=1e-5, momentum=0.1))
    name = "net/dnanet_xxs/train-bn"
    checks = _run_one(name, cache)
    _assert_caught(checks, name, "stats")
    # the batch statistics themselves are right: only the running statistics fail
    assert all(c.passed for c in checks if c.family == "forward")


def test_align_corners_flipped_in_mindspore_dnanet_is_caught(monkeypatch, cache) -> None:
    from mindspore import ops

    from ms_impl.models import dnanet

    def to(x: Any, ref: Any) -> Any:
        size = (ref.shape[2], ref.shape[3])
        return ops.interpolate(x, size=size, mode="bilinear", align_corners=False)

    monkeypatch.setattr(dnanet, "resize_like", to)
    name = "net/dnanet_xxs/eval/pynative"
    checks = _run_one(name, cache)
    _assert_caught(checks, name, "forward")
    # the encoder (no upsampling on the way) still agrees
    assert all(c.passed for c in checks if c.what.startswith(("enc0 ", "enc4 ")))


def test_align_corners_flipped_in_pytorch_unet_is_caught(monkeypatch, cache) -> None:
    import torch
    import torch.nn.functional as F

    from torch_ref.models.unet import UNet

    def up_cat(skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([skip, up], dim=1)

    monkeypatch.setattr(UNet, "_up_cat", staticmethod(up_cat))
    name = "net/unet_s/eval/pynative"
    _assert_caught(_run_one(name, cache), name, "forward")


def test_missing_relu_in_mindspore_unet_is_caught(monkeypatch, cache) -> None:
    from mindspore import nn

    from ms_impl.models import unet

    def double_conv(cin: int, cout: int) -> nn.SequentialCell:
        return nn.SequentialCell(
            nn.Conv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=False),
            nn.BatchNorm2d(cout, eps=1e-5, momentum=0.9),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, pad_mode="pad", padding=1, has_bias=False),
            nn.BatchNorm2d(cout, eps=1e-5, momentum=0.9),
            nn.Identity(),  # the bug: no ReLU (parameter names unchanged)
        )

    monkeypatch.setattr(unet, "_double_conv", double_conv)
    name = "net/unet_s/eval/pynative"
    _assert_caught(_run_one(name, cache), name, "forward")


def test_bn_eps_of_keras_in_mindspore_dnanet_is_caught(monkeypatch, cache) -> None:
    from mindspore import nn

    from ms_impl.models import dnanet

    monkeypatch.setattr(dnanet, "batch_norm", lambda c: nn.BatchNorm2d(c, eps=1e-3, momentum=0.9))
    name = "net/dnanet_xxs/eval/pynative"
    _assert_caught(_run_one(name, cache), name, "forward")
