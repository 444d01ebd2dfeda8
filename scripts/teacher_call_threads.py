"""CPU time and context switches of each thread over the distillation trainer's teacher call.

A lab script for issue 13 (docs/speed.md, sections 1 and 2). It builds the distillation
trainer of ``irkd bench steps`` (teacher ``dnanet`` with seeded random weights, student
``dnanet_xs``, MSA-AWMSE on ``enc1``) and runs only its teacher call, ``--calls`` times on one
batch: MindSpore's compiled eval graph (``MSTrainer._teacher_fn``, GRAPH_MODE; the first call
compiles it, a few CPU seconds, far cheaper than a train step's graph) or PyTorch's
``no_grad`` forward. For each call it prints the wall time, the process CPU time, and per
thread name the CPU clock ticks and the voluntary / involuntary context switches
(``/proc/<pid>/task/*/status``). A thread that waits by sleeping shows voluntary switches;
one that waits by spinning shows involuntary ones (the scheduler takes the CPU from it), so
the counts tell how a framework's threads wait, whatever the machine's load::

    python scripts/teacher_call_threads.py mindspore --calls 8
    python scripts/teacher_call_threads.py mindspore --calls 6 --threads 1 --dispatch 1
    python scripts/teacher_call_threads.py pytorch --calls 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import irkd  # noqa: E402,F401  (OMP_WAIT_POLICY=PASSIVE before any framework loads)


def per_thread() -> dict[str, list[int]]:
    """Thread name (digits stripped) -> [CPU ticks, voluntary, involuntary switches]."""
    out: dict[str, list[int]] = {}
    for tid in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            stat = (tid / "stat").read_text()
            status = (tid / "status").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")].rstrip("0123456789_")
        fields = stat[stat.rindex(")") + 2 :].split()
        d = dict(ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
        row = out.setdefault(name, [0, 0, 0])
        row[0] += int(fields[11]) + int(fields[12])
        row[1] += int(d["voluntary_ctxt_switches"])
        row[2] += int(d["nonvoluntary_ctxt_switches"])
    return out


def main() -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("backend", choices=["mindspore", "pytorch"])
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0: the framework's (irkd's) choice")
    ap.add_argument(
        "--dispatch", type=int, default=0, help="mindspore.runtime.dispatch_threads_num"
    )
    ap.add_argument("--out", help="JSON file")
    args = ap.parse_args()
    import numpy as np

    from irkd.bench import step_configs

    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 1, args.size, args.size)).astype(np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="teacher-call-")) / "teacher.safetensors"
    if args.backend == "mindspore":
        import mindspore as ms

        import ms_impl  # noqa: F401  (ONEDNN_MAX_CPU_ISA before the first kernel)
        from ms_impl import bench
        from ms_impl.train import MSTrainer as Trainer

        if args.threads:
            ms.device_context.cpu.op_tuning.threads_num(args.threads)
        if args.dispatch:
            ms.runtime.dispatch_threads_num(args.dispatch)
    else:
        import torch

        from torch_ref import bench
        from torch_ref.runtime import torch_threads
        from torch_ref.train import TorchTrainer as Trainer

        torch.set_num_threads(args.threads or torch_threads())
    bench.write_random_weights("dnanet", tmp)
    _label, cfg = step_configs("dnanet", "dnanet_xs", tmp)[2]
    trainer: Any = Trainer(cfg)
    trainer.train_mode()
    rows = []
    for i in range(args.calls):
        before, w0, c0 = per_thread(), time.perf_counter(), time.process_time()
        if args.backend == "mindspore":
            for t in trainer._teacher_fn(ms.Tensor(images)):
                t.asnumpy()
        else:
            with torch.no_grad():
                trainer.teacher.forward_features(torch.from_numpy(images))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        after = per_thread()
        threads = {
            k: [v[j] - before.get(k, [0, 0, 0])[j] for j in range(3)] for k, v in after.items()
        }
        threads = {k: v for k, v in threads.items() if any(v)}
        load = os.getloadavg()[0]
        rows.append({"wall_s": wall, "cpu_s": cpu, "threads": threads, "load_1min": load})
        print(
            f"call {i}: wall {wall:.3f} s, CPU {cpu:.3f} s, load {load:.2f}; "
            + ", ".join(f"{k} ticks {v[0]} vol {v[1]} invol {v[2]}" for k, v in threads.items()),
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "calls": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
