"""Per-operator profile of one training step, MindSpore (GRAPH_MODE) or PyTorch (eager).

A lab script for issue 13 (docs/speed.md, section 2). It builds the real trainer of one of
``irkd bench steps``' configurations (0 teacher ``dnanet``, 1 student ``dnanet_xs``,
2 distillation ``dnanet -> dnanet_xs`` MSA-AWMSE on ``enc1``), runs ``--warm`` steps (the
first compiles the MindSpore graphs), times ``--steps`` more, then profiles ``--prof`` steps
with the framework's own profiler (``mindspore.Profiler``, CPU activity: every kernel's
start and duration; ``torch.profiler``: every aten operator's self CPU time) and reports:

- per step: wall time and CPU time (``time.process_time``, every thread; and per thread name
  from ``/proc``); for MindSpore's distillation, the teacher's compiled eval call
  (``MSTrainer.inputs``) and the compiled train step apart; MindSpore's compiled graphs and
  the recompiles while timed;
- per operator type: calls and milliseconds per step, summed over the kernels (the
  profilers' milliseconds are wall-clock durations: on a loaded machine preemption inflates
  them, the counts stay exact);
- the part of the wall time no kernel ran in (framework overhead, waits, Python);
- with ``--perf FILE``: ``perf record -e cpu-clock`` samples of the timed steps, by thread,
  shared object, symbol and :data:`CATEGORIES` (CPU shares, whatever the machine's load).

One process per backend and configuration (MindSpore's ``ONEDNN_MAX_CPU_ISA`` would slow
PyTorch; its compiled graphs accumulate)::

    python scripts/step_profile.py --backend mindspore --run 2 --size 64 --batch 2 \
        --out runs/bench/profile-ms-distill64.json
    python scripts/step_profile.py --backend pytorch --run 2 --size 64 --batch 2 \
        --out runs/bench/profile-pt-distill64.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import irkd  # noqa: E402,F401  (OMP_WAIT_POLICY=PASSIVE before any framework loads)

RUNS = ("teacher", "student", "distill")
CLK = os.sysconf("SC_CLK_TCK")


class PerfRecord:
    """``perf record -e cpu-clock`` of this process (every thread) while the block runs.

    CPU-clock samples are taken only while a thread runs on a CPU, so the shares they give do
    not depend on how often a loaded machine preempts the process (the profilers' wall-clock
    kernel durations do). oneDNN's JIT kernels are named through ``ONEDNN_JIT_PROFILE=1``
    (a ``/tmp/perf-PID.map``), set by :func:`main` before any framework loads.
    """

    def __init__(self, out: Path | None, freq: int = 997) -> None:
        self.out, self.freq, self.proc = out, freq, None

    def __enter__(self) -> PerfRecord:
        if self.out is not None:
            self.proc = subprocess.Popen(
                ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(self.freq)]
                + ["-p", str(os.getpid()), "-o", str(self.out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(2.0)  # perf attaches to every thread
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=600)


def perf_symbols(data: Path, steps: int) -> dict[str, Any]:
    """Samples of a ``perf record`` file by (thread, shared object, symbol), per step."""
    text = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "-F", "sample,comm,dso,sym"]
        + ["--sort", "comm,dso,sym", "-t", "\t"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        n, comm, dso, sym = int(parts[0]), parts[1], parts[2], "\t".join(parts[3:])
        rows.append({"samples": n, "thread": comm.rstrip("0123456789_"), "dso": dso, "sym": sym})
    total = sum(r["samples"] for r in rows) or 1
    rows.sort(key=lambda r: -r["samples"])
    out: dict[str, Any] = {"samples": total, "samples_per_step": total / steps}
    for key in ("thread", "dso"):
        agg: dict[str, int] = defaultdict(int)
        for r in rows:
            agg[r[key]] += r["samples"]
        out[f"by_{key}"] = dict(sorted(agg.items(), key=lambda kv: -kv[1]))
    out["rows"] = rows
    return out


# (category, regular expression on "dso sym"), first match wins; the names of both frameworks'
# kernels (PyTorch's at::native, MindSpore's kernel mods and nnacl) and of their runtimes.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("convolution (oneDNN JIT code)", r"^\[JIT\]|jit:|jit_"),
    (
        "convolution (gemm, im2col, oneDNN setup)",
        r"sgemm|gemm|unfolded2d|im2col|col2im|slow_conv|Conv|conv|dnnl|ideep|MatMul|matmul",
    ),
    ("batch norm", r"(?i)batch_?norm|BN"),
    ("bilinear resize", r"(?i)upsample|resize|bilinear"),
    ("pooling", r"(?i)pool"),
    ("concat, copy, transpose", r"(?i)concat|cat_serial|copy|memcpy|memmove|transpose|slice"),
    ("optimizer (Adam)", r"(?i)adam|lerp|addcdiv|addcmul"),
    (
        "memory (malloc, free, pools)",
        r"(?i)malloc|free|unlink_chunk|memalign|memset|mem_pool|MemPool|Alloc",
    ),
    ("Python interpreter", r"libpython"),
    ("OS kernel", r"\[kernel|\[vdso"),
    (
        "elementwise, reductions, activations",
        r"(?i)Elementwise|Arithmetic|Eltwise|VectorizedLoop|cpu_kernel|reduce|Reduce|sum|mean|"
        r"sigmoid|relu|ReLU|Mul|Add|Sub|Div|Exp|Sqrt|Maximum|Minimum|Select|Cast|abs|nnacl",
    ),
    (
        "framework runtime (dispatch, autograd, actors, threads)",
        r"libtorch|libc10|mindspore|libstdc|libc\.so|libpthread|libgomp|libiomp",
    ),
)


def categorize(perf: dict[str, Any]) -> dict[str, float]:
    """Share of the CPU samples of each :data:`CATEGORIES` entry (``other`` for the rest)."""
    import re

    total = perf["samples"]
    out: dict[str, float] = defaultdict(float)
    jit = sum(v for k, v in perf["by_dso"].items() if k.startswith("[JIT]"))
    out[CATEGORIES[0][0]] = jit
    seen = 0
    for row in perf["rows"]:
        if row["dso"].startswith("[JIT]"):
            continue
        seen += row["samples"]
        text = f"{row['dso']} {row['sym']}"
        for name, pattern in CATEGORIES[1:]:
            if re.search(pattern, text):
                out[name] += row["samples"]
                break
        else:
            out["other"] += row["samples"]
    out["other"] += total - jit - seen
    return {k: v / total for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v}


def thread_ticks() -> dict[str, int]:
    """CPU clock ticks (user + system) of this process's threads, summed by thread name."""
    out: dict[str, int] = {}
    for tid in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            stat = (tid / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")].rstrip("0123456789_")
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def batch(size: int, n: int) -> tuple[Any, Any]:
    """``irkd bench steps``' batch: seeded normal images, sparse masks."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, 1, size, size)).astype(np.float32)
    masks = (rng.random((n, 1, size, size)) > 0.995).astype(np.float32)
    return images, masks


# ----------------------------------------------------------------------------- MindSpore


def timed_steps(
    one: Callable[[], dict[str, float]], steps: int, perf: Path | None
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Time ``steps`` calls of ``one``, under ``perf record`` if asked.

    Returns:
        The calls' rows, and each thread's CPU seconds a step (threads that ran only).
    """
    tick0 = thread_ticks()
    with PerfRecord(perf):
        rows = [one() for _ in range(steps)]
    ticks = {k: (v - tick0.get(k, 0)) / CLK / steps for k, v in thread_ticks().items()}
    return rows, {k: v for k, v in ticks.items() if v}


def result_head(
    backend: str,
    label: str,
    first: float,
    timed: tuple[list[dict[str, float]], dict[str, float]],
    split: list[dict[str, float]],
    prof_steps: list[dict[str, float]],
    prof_wall: float,
) -> dict[str, Any]:
    """The fields both backends' results share (``timed``: :func:`timed_steps`' answer)."""
    rows, ticks = timed
    return {
        "backend": backend,
        "run": label,
        "first_s": first,
        "step_s": [r["step_s"] for r in rows],
        "cpu_s": [r["cpu_s"] for r in rows],
        "thread_cpu_s_per_step": ticks,
        "split": split,
        "profiled_steps": prof_steps,
        "profiled_wall_s": prof_wall,
    }


def profile_mindspore(args: argparse.Namespace, weights: Path) -> dict[str, Any]:
    """Time and profile the MindSpore trainer (GRAPH_MODE); kernels from MindSpore's Profiler."""
    import mindspore as ms
    from mindspore.graph.api import ms_compile_cache
    from mindspore.profiler import ProfilerActivity

    import ms_impl  # noqa: F401  (ONEDNN_MAX_CPU_ISA before the first kernel)
    from irkd.bench import step_configs
    from ms_impl import bench as mb
    from ms_impl.train import MSTrainer

    if args.threads:  # None or 0: MindSpore's (or irkd's) own choice
        ms.device_context.cpu.op_tuning.threads_num(args.threads)

    mb.write_random_weights("dnanet", weights)
    label, cfg = step_configs("dnanet", "dnanet_xs", weights)[args.run]
    images, masks = batch(args.size, args.batch)
    trainer = MSTrainer(cfg)
    trainer.train_mode()
    lr = cfg.optim.lr
    no = 0

    def one(split: bool, phases: list[tuple[str, int, int]] | None = None) -> dict[str, float]:
        """One step; with ``split`` the teacher call and the train step are timed apart.

        ``phases`` collects ``(name, start_ns, end_ns)`` on the profiler's clock.
        """
        nonlocal no
        t0, n0, c0 = time.perf_counter(), time.time_ns(), time.process_time()
        if not split:
            trainer.step(images, masks, no, lr, where="profile")
            no += 1
            if phases is not None:
                phases.append(("step", n0, time.time_ns()))
            return {"step_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        from ms_impl.optim import set_lr

        set_lr(trainer.optimizer, lr)
        inputs = trainer.inputs(images, masks, no)
        for t in inputs[2:]:
            t.asnumpy()  # wait for the teacher's graph
        t1, n1, c1 = time.perf_counter(), time.time_ns(), time.process_time()
        out = trainer._train_step(*inputs)
        float(out[0].asnumpy())
        t2, n2, c2 = time.perf_counter(), time.time_ns(), time.process_time()
        no += 1
        if phases is not None:
            phases += [("teacher call + inputs", n0, n1), ("train step", n1, n2)]
        return {
            "step_s": t2 - t0,
            "inputs_s": t1 - t0,
            "train_step_s": t2 - t1,
            "cpu_s": c2 - c0,
            "inputs_cpu_s": c1 - c0,
            "train_step_cpu_s": c2 - c1,
        }

    first_t0 = time.perf_counter()
    one(False)
    first = time.perf_counter() - first_t0
    for _ in range(args.warm - 1):
        one(False)
    graphs = len(ms_compile_cache)
    timed = timed_steps(lambda: one(False), args.steps, args.perf)
    split = [one(True) for _ in range(args.steps)] if trainer.distiller is not None else []
    recompiles = len(ms_compile_cache) - graphs
    out_dir = Path(tempfile.mkdtemp(prefix="ms-prof-"))
    prof = ms.Profiler(output_path=str(out_dir), activities=[ProfilerActivity.CPU])
    phases: list[tuple[str, int, int]] = []
    t0 = time.perf_counter()
    prof_steps = [one(trainer.distiller is not None, phases) for _ in range(args.prof)]
    prof_wall = time.perf_counter() - t0
    prof.stop()
    prof.analyse()
    ts = next(out_dir.rglob("cpu_op_execute_timestamp_*.txt"))
    kernels = []  # (start_ns, dur_ms, type, full name)
    for line in ts.read_text().splitlines():
        if not line.strip():
            continue
        name, _side, rest = line.split(";", 2)
        op_type = name.rsplit("/", 1)[-1].split("-op")[0]
        for item in rest.split():
            start, dur, _ = item.split(",")
            kernels.append((int(start), float(dur), op_type, name))
    if not args.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    kernels.sort()
    n = args.prof
    out = {
        **result_head("mindspore", label, first, timed, split, prof_steps, prof_wall),
        "graphs_compiled": graphs,
        "recompiles_while_timed": recompiles,
        **summarize(kernels, n),
        "phases": {},
        "threads_arg": args.threads,
        "runtime_num_threads": ms.get_context("runtime_num_threads"),
    }
    for name in dict.fromkeys(p[0] for p in phases):
        spans = [(a, b) for p, a, b in phases if p == name]
        inside = [k for k in kernels if any(a <= k[0] < b for a, b in spans)]
        wall = sum(b - a for a, b in spans) / 1e6 / n
        out["phases"][name] = {"wall_ms_per_step": wall, **summarize(inside, n)}
    outside = [k for k in kernels if not any(a <= k[0] < b for _p, a, b in phases)]
    out["kernels_outside_phases_per_step"] = len(outside) / n
    return out


def summarize(kernels: list[tuple[int, float, str, str]], n: int) -> dict[str, Any]:
    """Per-operator-type calls and milliseconds per step, and the kernel totals."""
    by_type: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for _s, dur, op_type, _n in kernels:
        by_type[op_type][0] += 1
        by_type[op_type][1] += dur
    return {
        "ops": {
            k: {"calls_per_step": v[0] / n, "ms_per_step": v[1] / n}
            for k, v in sorted(by_type.items(), key=lambda kv: -kv[1][1])
        },
        "kernel_ms_per_step": sum(d for _s, d, _t, _n in kernels) / n,
        "kernel_busy_ms_per_step": union_ms([(s, s + d * 1e6) for s, d, _t, _n in kernels]) / n,
        "kernels_per_step": len(kernels) / n,
    }


def union_ms(intervals: list[tuple[float, float]]) -> float:
    """Milliseconds covered by at least one of the ``(start_ns, end_ns)`` intervals."""
    total, end = 0.0, None
    start = None
    for s, e in sorted(intervals):
        if end is None or s > end:
            if end is not None:
                total += end - start
            start, end = s, e
        else:
            end = max(end, e)
    if end is not None:
        total += end - start
    return total / 1e6


# ----------------------------------------------------------------------------- PyTorch


def profile_pytorch(args: argparse.Namespace, weights: Path) -> dict[str, Any]:
    """Time and profile the PyTorch trainer; operators' self CPU time from torch.profiler."""
    import torch

    from irkd.bench import step_configs
    from torch_ref import bench as tb
    from torch_ref.runtime import torch_threads
    from torch_ref.train import TorchTrainer

    torch.set_num_threads(args.threads or torch_threads())  # None or 0: irkd's choice
    tb.write_random_weights("dnanet", weights)
    label, cfg = step_configs("dnanet", "dnanet_xs", weights)[args.run]
    images, masks = batch(args.size, args.batch)
    trainer = TorchTrainer(cfg)
    trainer.train_mode()
    no = 0

    def one() -> dict[str, float]:
        nonlocal no
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.step(images, masks, no, cfg.optim.lr, where="profile")
        no += 1
        return {"step_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

    first = one()["step_s"]
    for _ in range(args.warm - 1):
        one()
    timed = timed_steps(one, args.steps, args.perf)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        prof_steps = [one() for _ in range(args.prof)]
        prof_wall = time.perf_counter() - t0
    n = args.prof
    ops = {}
    for e in prof.key_averages():
        if e.self_cpu_time_total <= 0:
            continue
        ops[e.key] = {"calls_per_step": e.count / n, "ms_per_step": e.self_cpu_time_total / 1e3 / n}
    ops = dict(sorted(ops.items(), key=lambda kv: -kv[1]["ms_per_step"]))
    return {
        **result_head("pytorch", label, first, timed, [], prof_steps, prof_wall),
        "ops": ops,
        "kernel_ms_per_step": sum(v["ms_per_step"] for v in ops.values()),
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- report


def report(r: dict[str, Any], top: int) -> str:
    """The figures of one profile, as text."""
    med = statistics.median(r["step_s"])
    cpu = statistics.median(r["cpu_s"])
    lines = [
        f"{r['backend']} {r['run']}: first {r['first_s']:.1f} s; step median {med * 1e3:.1f} ms "
        f"(min {min(r['step_s']) * 1e3:.1f}, n={len(r['step_s'])}); CPU {cpu * 1e3:.1f} ms a step "
        f"(min {min(r['cpu_s']) * 1e3:.1f}); load {r['load']}; max RSS {r['max_rss_mb']:.0f} MB",
        "  thread CPU ms a step: "
        + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in r["thread_cpu_s_per_step"].items()),
    ]
    if "graphs_compiled" in r:
        lines.append(
            f"  graphs compiled {r['graphs_compiled']}, recompiles while timed "
            f"{r['recompiles_while_timed']}"
        )
    if r["split"]:
        inp = statistics.median(s["inputs_s"] for s in r["split"])
        trs = statistics.median(s["train_step_s"] for s in r["split"])
        inp_c = statistics.median(s["inputs_cpu_s"] for s in r["split"])
        trs_c = statistics.median(s["train_step_cpu_s"] for s in r["split"])
        lines.append(
            f"  split: teacher call + inputs {inp * 1e3:.1f} ms (CPU {inp_c * 1e3:.1f}), "
            f"train step {trs * 1e3:.1f} ms (CPU {trs_c * 1e3:.1f})"
        )
    n_prof = len(r["profiled_steps"])
    wall = r["profiled_wall_s"] / n_prof * 1e3
    text = (
        f"  profiled: {wall:.1f} ms a step (profiler on), kernels {r['kernel_ms_per_step']:.1f} ms"
    )
    if "kernels_per_step" in r:
        busy = r["kernel_busy_ms_per_step"]
        text += (
            f", {r['kernels_per_step']:.0f} kernels, covered {busy:.1f} ms, "
            f"no kernel running {wall - busy:.1f} ms"
        )
    lines.append(text)
    for name, ph in r.get("phases", {}).items():
        wall, busy = ph["wall_ms_per_step"], ph["kernel_busy_ms_per_step"]
        lines.append(
            f"  phase {name}: {wall:.1f} ms, {ph['kernels_per_step']:.0f} kernels "
            f"{ph['kernel_ms_per_step']:.1f} ms (covered {busy:.1f} ms), "
            f"no kernel running {wall - busy:.1f} ms; "
            + ", ".join(
                f"{k} {v['calls_per_step']:.0f}x {v['ms_per_step']:.1f}"
                for k, v in list(ph["ops"].items())[:6]
            )
        )
    lines.append(f"  {'op':<36} {'calls':>6} {'ms/step':>9} {'share':>6}")
    tot = r["kernel_ms_per_step"] or 1.0
    for i, (k, v) in enumerate(r["ops"].items()):
        if i >= top:
            rest = sum(x["ms_per_step"] for x in list(r["ops"].values())[top:])
            lines.append(f"  {'(others)':<36} {'':>6} {rest:>9.1f} {rest / tot:>6.1%}")
            break
        lines.append(
            f"  {k[:36]:<36} {v['calls_per_step']:>6.0f} {v['ms_per_step']:>9.2f} "
            f"{v['ms_per_step'] / tot:>6.1%}"
        )
    if r.get("perf"):
        lines += perf_report(r, top)
    return "\n".join(lines)


def perf_report(r: dict[str, Any], top: int) -> list[str]:
    """The CPU-clock samples of the timed steps: by thread, by shared object, top symbols."""
    p = r["perf"]
    tot = p["samples"]
    cpu_ms = statistics.mean(r["cpu_s"]) * 1e3
    lines = [f"  perf cpu-clock: {p['samples_per_step']:.0f} samples a step ({cpu_ms:.0f} CPU ms)"]
    for key in ("thread", "dso"):
        agg = p[f"by_{key}"]
        lines.append(
            f"  by {key}: " + ", ".join(f"{k} {v / tot:.1%}" for k, v in list(agg.items())[:8])
        )
    lines.append(f"  {'category':<56} {'share':>6} {'CPU ms':>7}")
    for name, share in categorize(p).items():
        lines.append(f"  {name:<56} {share:>6.1%} {share * cpu_ms:>7.1f}")
    for row in p["rows"][:top]:
        lines.append(
            f"  {row['samples'] / tot:>6.1%} {cpu_ms * row['samples'] / tot:>7.1f} ms "
            f"{row['thread'][:14]:<14} {row['dso'][:22]:<22} {row['sym'][:90]}"
        )
    return lines


def main() -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["mindspore", "pytorch"], required=True)
    ap.add_argument(
        "--run", type=int, default=2, choices=[0, 1, 2], help="0 teacher 1 student 2 distill"
    )
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warm", type=int, default=3, help="steps before timing (the first compiles)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (no profiler)")
    ap.add_argument("--prof", type=int, default=3, help="profiled steps")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="MindSpore op_tuning.threads_num / torch threads; default (or 0) the framework's "
        "or irkd's choice",
    )
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", action="store_true", help="keep MindSpore's profiler folder")
    ap.add_argument(
        "--perf",
        type=Path,
        default=None,
        help="perf record (cpu-clock) the timed steps into this file; the report goes in the JSON",
    )
    ap.add_argument("--out", help="JSON file")
    args = ap.parse_args()
    if args.perf is not None:
        os.environ.setdefault("ONEDNN_JIT_PROFILE", "2")  # oneDNN's JIT code in a perf map
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="step-profile-") as tmp:
        weights = Path(tmp) / "teacher.safetensors"
        fn = profile_mindspore if args.backend == "mindspore" else profile_pytorch
        r = fn(args, weights)
    if args.perf is not None:
        try:
            r["perf"] = perf_symbols(args.perf, args.steps)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"perf report failed: {exc}", flush=True)
    r.update(
        {
            "size": args.size,
            "batch": args.batch,
            "load": [load_before, [round(v, 2) for v in os.getloadavg()]],
            "command": " ".join(sys.argv),
            "nice": os.nice(0),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )
    print(report(r, args.top), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
