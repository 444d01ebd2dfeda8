"""BatchNorm folded into convolutions in a MindSpore network before its MindIR export.

``mindspore.export`` keeps every BatchNorm of an eval-mode network as a ``BatchNorm`` node in
the MindIR (48 in ``dnanet_xxs``); the GraphCell then runs them one by one on the CPU. Folding
them into the convolution before (``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g /
sqrt(v + eps) + beta``, in float64 then cast to float32) removes those nodes. Twin of
:func:`deploy_jetson.optimize.fold_batchnorm` (PyTorch's own ``fuse_conv_bn_eval`` there).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn

__all__ = [
    "evaluate_mindir",
    "fold_batchnorm",
    "folded_conv",
    "mindir_op_count",
    "pareto_part",
]


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` (with bias) computing ``bn(conv(x))`` of eval-mode BatchNorm."""
    w = conv.weight.asnumpy().astype(np.float64)
    b = conv.bias.asnumpy().astype(np.float64) if conv.has_bias else np.zeros(w.shape[0])
    g = bn.gamma.asnumpy().astype(np.float64)
    beta = bn.beta.asnumpy().astype(np.float64)
    mean = bn.moving_mean.asnumpy().astype(np.float64)
    var = bn.moving_variance.asnumpy().astype(np.float64)
    scale = g / np.sqrt(var + float(bn.eps))
    out = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        pad_mode=conv.pad_mode,
        padding=conv.padding,
        dilation=conv.dilation,
        group=conv.group,
        has_bias=True,
    )
    out.weight.set_data(ms.Tensor((w * scale[:, None, None, None]).astype(np.float32)))
    out.bias.set_data(ms.Tensor(((b - mean) * scale + beta).astype(np.float32)))
    return out


def fold_batchnorm(net: nn.Cell) -> tuple[nn.Cell, int]:
    """A copy of ``net`` (eval mode) with each BatchNorm folded into the convolution before it.

    A pair is a ``Conv2d`` registered directly before a ``BatchNorm2d`` in the same parent
    cell (registration order, not the forward, so compare outputs after: the tests do for
    every registered network). The BatchNorm becomes ``nn.Identity``.

    Returns:
        ``(folded copy, number of BatchNorms folded)``; ``net`` is not changed.
    """
    out = copy.deepcopy(net)
    out.set_train(False)
    folded = 0
    for _, parent in list(out.cells_and_names()):
        children = list(parent.name_cells().items())
        for (n1, c1), (n2, c2) in zip(children, children[1:], strict=False):
            if isinstance(c1, nn.Conv2d) and isinstance(c2, nn.BatchNorm2d):
                conv = folded_conv(c1, c2)
                if isinstance(parent, nn.SequentialCell):
                    parent[int(n1)] = conv
                    parent[int(n2)] = nn.Identity()
                else:
                    setattr(parent, n1, conv)
                    setattr(parent, n2, nn.Identity())
                folded += 1
    # the new convolutions' parameters are named "weight"/"bias" relative to their parent:
    # give every parameter its full path (a dynamic MindIR export refuses duplicate names)
    for name, param in out.parameters_and_names():
        param.name = name
    out.set_train(False)
    return out, folded


def _net(network: str, weights: str | None) -> nn.Cell:
    from ms_impl.models import create_model
    from ms_impl.predict import load_network

    if weights:
        return load_network(network, weights)
    ms.set_seed(0)
    net = create_model(network)
    net.set_train(False)
    return net


def pareto_part(spec: dict[str, Any], workdir: Path, say: Any = print) -> dict[str, Any]:
    """The MindSpore half of ``irkd bench pareto``: MindIR GraphCell, plain and BN-folded.

    Twin of :func:`deploy_jetson.optimize.pareto_part`.

    Args:
        spec: ``{"networks": {network: weights or None}, "rounds", "warmup", "fold_eval":
            [{"label", "network", "weights", "data", "mean", "std", "multiple"}]}``.
        workdir: Scratch folder for the MindIR files.
        say: Progress messages.

    Returns:
        ``{"latency": {runtime: {network: summary}}, "accuracy": {"mindir-graphcell-bnfold":
        {label: metrics}}, "checks", "load_before", "load_after", "rounds", "warmup"}``.
    """
    from deploy_ascend.mindir_export import export_mindir, load_mindir
    from irkd.pareto import interleaved_latency

    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 1, 256, 256)).astype(np.float32))
    calls: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    for network, weights in spec["networks"].items():
        say(f"[ascend] {network}: fold, export")
        net = _net(network, weights)
        folded, n_bn = fold_batchnorm(net)
        diff = float(np.abs(net(x).asnumpy() - folded(x).asnumpy()).max())
        plain = load_mindir(export_mindir(net, workdir / f"{network}.mindir"))
        fold = load_mindir(export_mindir(folded, workdir / f"{network}-bnfold.mindir"))
        checks[network] = {
            "bn_folded": n_bn,
            "bn_fold_max_abs_diff": diff,
            "mindir_batchnorm_nodes": mindir_op_count(workdir / f"{network}.mindir", "BatchNorm"),
            "mindir_bnfold_batchnorm_nodes": mindir_op_count(
                workdir / f"{network}-bnfold.mindir", "BatchNorm"
            ),
        }
        calls[f"mindir-graphcell|{network}"] = lambda c=plain: c(x).asnumpy()
        calls[f"mindir-graphcell-bnfold|{network}"] = lambda c=fold: c(x).asnumpy()
    say(f"[ascend] timing {len(calls)} entries interleaved")
    timed = interleaved_latency(
        calls, warmup=int(spec.get("warmup", 3)), rounds=int(spec.get("rounds", 20)), say=say
    )
    latency: dict[str, dict[str, Any]] = {}
    for key, summary in timed["latency"].items():
        runtime, network = key.split("|")
        latency.setdefault(runtime, {})[network] = summary
    accuracy: dict[str, dict[str, Any]] = {}
    for item in spec.get("fold_eval") or []:
        say(f"[ascend] {item['label']}: BatchNorm-folded MindIR, test-split metrics")
        folded, _ = fold_batchnorm(_net(item["network"], item["weights"]))
        path = export_mindir(folded, workdir / f"{item['label']}-bnfold-dyn.mindir", dynamic=True)
        accuracy.setdefault("mindir-graphcell-bnfold", {})[item["label"]] = evaluate_mindir(
            path, item["data"], mean=item["mean"], std=item["std"], multiple=item["multiple"]
        )
    return {
        "latency": latency,
        "accuracy": accuracy,
        "checks": checks,
        "load_before": timed["load_before"],
        "load_after": timed["load_after"],
        "rounds": timed["rounds"],
        "warmup": timed["warmup"],
    }


def mindir_op_count(path: str | os.PathLike[str], op: str) -> int:
    """Nodes of a MindIR file's graph whose operator is ``op`` (``BatchNorm``, ``Conv2D``)."""
    from mindspore.train import mind_ir_pb2

    model = mind_ir_pb2.ModelProto()
    model.ParseFromString(Path(path).read_bytes())
    return sum(1 for n in model.graph.node if n.op_type.split(":")[-2:-1] == [op])


def evaluate_mindir(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    mean: float,
    std: float,
    split: str = "test",
    multiple: int = 32,
) -> dict[str, Any]:
    """IRSTD metrics of a dynamic MindIR on a split, run through ``nn.GraphCell``."""
    from deploy_ascend.mindir_export import load_mindir
    from irkd.data import IRSTDDataset
    from irkd.evaluate import evaluate_predictions, predict_split, summary_metrics

    cell = load_mindir(path)

    def forward(x: np.ndarray) -> np.ndarray:
        return cell(ms.Tensor(np.ascontiguousarray(x, np.float32))).asnumpy()

    result = evaluate_predictions(
        predict_split(IRSTDDataset(root, split), forward, mean=mean, std=std, multiple=multiple)
    )
    return {
        "split": split,
        "dataset": str(root),
        "runtime": "mindir-graphcell",
        "artifact": Path(path).name,
        **summary_metrics(result["metrics"]),
    }
