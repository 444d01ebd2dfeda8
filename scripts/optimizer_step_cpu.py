"""CPU time of the optimizer update alone: irkd's AdamW over a network's parameters.

A lab script for issue 13 (docs/speed.md, section 2). It builds the optimizer the trainer
builds (``ms_impl.optim.build_optimizer`` / ``torch_ref.optim.build_optimizer``, AdamW,
irkd's defaults) over the trainable parameters of a registered network, then times ``--calls``
updates with fixed random gradients: MindSpore's as one ``ms.jit`` graph that only calls the
optimizer (GRAPH_MODE, as inside the train step; the first call compiles), PyTorch's
``optimizer.step()``. It prints the CPU time of each update (``time.process_time``, every
thread) and the number of parameter tensors::

    ONEDNN_MAX_CPU_ISA=AVX2 python scripts/optimizer_step_cpu.py mindspore --threads 1
    python scripts/optimizer_step_cpu.py pytorch --threads 1
    ONEDNN_MAX_CPU_ISA=AVX2 python scripts/optimizer_step_cpu.py mindspore --threads 1 \
        --per-parameter

irkd's MindSpore AdamW is ``ms_impl.optim.FlatAdamW`` (one update over the flattened
parameters, about 3 launches per parameter). ``--per-parameter`` times the optimizer it
replaced instead, ``mindspore.experimental.optim.AdamW`` (about 20 launches per parameter;
the same values, bit for bit).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import irkd  # noqa: E402,F401  (OMP_WAIT_POLICY=PASSIVE before any framework loads)


def main() -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("backend", choices=["mindspore", "pytorch"])
    ap.add_argument("--network", default="dnanet_xs")
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="0: the framework's (irkd's) choice")
    ap.add_argument(
        "--per-parameter",
        action="store_true",
        help="MindSpore: the experimental AdamW that irkd used before FlatAdamW",
    )
    args = ap.parse_args()
    import numpy as np

    from irkd.config import config_from_dict

    cfg = config_from_dict({"model": {"name": args.network}, "optim": {"name": "adamw"}})
    rng = np.random.default_rng(0)
    times = []
    if args.backend == "mindspore":
        import mindspore as ms

        import ms_impl  # noqa: F401  (ONEDNN_MAX_CPU_ISA before the first kernel)
        from ms_impl.models import create_model
        from ms_impl.optim import build_optimizer

        if args.threads:
            ms.device_context.cpu.op_tuning.threads_num(args.threads)
        ms.set_context(mode=ms.GRAPH_MODE)
        params = list(create_model(args.network).trainable_params())
        if args.per_parameter:
            from mindspore.experimental.optim import AdamW

            opt = AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        else:
            opt = build_optimizer(params, cfg.optim)
        grads = tuple(
            ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 1e-3) for p in params
        )

        @ms.jit
        def update(*g: ms.Tensor) -> ms.Tensor:
            opt(g)
            return g[0].sum()

        for _ in range(args.calls + 1):
            c0 = time.process_time()
            update(*grads).asnumpy()
            times.append(time.process_time() - c0)
    else:
        import torch

        from torch_ref.models import create_model as create_torch_model
        from torch_ref.optim import build_optimizer as build_torch_optimizer
        from torch_ref.runtime import torch_threads

        torch.set_num_threads(args.threads or torch_threads())
        params = [p for p in create_torch_model(args.network).parameters() if p.requires_grad]
        opt = build_torch_optimizer(params, cfg.optim)
        for p in params:
            p.grad = torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32) * 1e-3)
        for _ in range(args.calls + 1):
            c0 = time.process_time()
            opt.step()
            times.append(time.process_time() - c0)
    rest = times[1:]
    print(
        f"{args.backend} {type(opt).__name__} over {args.network}: {len(params)} parameter "
        "tensors, "
        f"{sum(int(np.prod(p.shape)) for p in params)} values; first call {times[0]:.2f} CPU s; "
        f"update CPU ms median {statistics.median(rest) * 1e3:.1f} "
        f"(min {min(rest) * 1e3:.1f}, n={len(rest)}); load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
