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
    ONEDNN_MAX_CPU_ISA=AVX2 python scripts/optimizer_step_cpu.py mindspore --threads 1 --flat

``--flat`` times a prototype instead (MindSpore only, not used by irkd): the same AdamW
formula as ``mindspore.experimental.optim.AdamW``, operation for operation, run once on the
concatenated parameters and gradients with flat moment buffers, then split and assigned back
to the parameters: about 3 launches per parameter (slice, reshape, assign) instead of about 20.
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


def flat_adamw(params: list, optim_cfg: object) -> object:
    """A compiled flat AdamW update over ``params`` (the prototype of ``--flat``)."""
    import mindspore as ms
    import numpy as np
    from mindspore import ops

    beta1, beta2 = (float(b) for b in optim_cfg.betas)  # type: ignore[attr-defined]
    eps = float(optim_cfg.eps)  # type: ignore[attr-defined]
    n = int(sum(int(np.prod(p.shape)) for p in params))
    sizes = tuple(int(np.prod(p.shape)) for p in params)
    shapes = tuple(tuple(p.shape) for p in params)
    exp_avg = ms.Parameter(ms.Tensor(np.zeros(n, np.float32)), name="flat_exp_avg")
    exp_avg_sq = ms.Parameter(ms.Tensor(np.zeros(n, np.float32)), name="flat_exp_avg_sq")
    step = ms.Parameter(ms.Tensor(np.float32(0.0)), name="flat_step")
    lr = ms.Parameter(ms.Tensor(np.float32(optim_cfg.lr)), name="flat_lr")  # type: ignore[attr-defined]
    wd = float(optim_cfg.weight_decay)  # type: ignore[attr-defined]
    offsets = tuple(int(o) for o in np.cumsum((0,) + sizes))
    ms.set_recursion_limit(10000)  # the loops below unroll over every parameter

    @ms.jit
    def update(*grads: ms.Tensor) -> ms.Tensor:
        ops.assign_add(step, ops.ones((), ms.float32))
        wd_new = 1 - lr * wd
        step_size = lr / (1 - ops.pow(beta1, step))
        bc2_sqrt = ops.sqrt(1 - ops.pow(beta2, step))
        g = ops.cat([x.reshape(-1) for x in grads])
        p = ops.cat([x.reshape(-1) for x in params])
        next_p = ops.mul(p, wd_new)
        ops.assign(exp_avg, ops.mul(exp_avg, beta1) + ops.mul(g, 1 - beta1))
        ops.assign(exp_avg_sq, ops.addcmul(ops.mul(exp_avg_sq, beta2), g, g, 1 - beta2))
        denom = ops.sqrt(exp_avg_sq) / bc2_sqrt + eps
        new = next_p - ops.mul(exp_avg / denom, step_size)
        for i in range(len(params)):
            ops.assign(params[i], new[offsets[i] : offsets[i + 1]].reshape(shapes[i]))
        return g[0]

    return update


def main() -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("backend", choices=["mindspore", "pytorch"])
    ap.add_argument("--network", default="dnanet_xs")
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="0: the framework's (irkd's) choice")
    ap.add_argument("--flat", action="store_true", help="MindSpore: the flat prototype")
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
        opt = build_optimizer(params, cfg.optim)
        grads = tuple(
            ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 1e-3) for p in params
        )

        if args.flat:
            update = flat_adamw(params, cfg.optim)
        else:

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
        f"{args.backend} AdamW over {args.network}: {len(params)} parameter tensors, "
        f"{sum(int(np.prod(p.shape)) for p in params)} values; first call {times[0]:.2f} CPU s; "
        f"update CPU ms median {statistics.median(rest) * 1e3:.1f} "
        f"(min {min(rest) * 1e3:.1f}, n={len(rest)}); load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
