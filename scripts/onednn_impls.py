"""Which oneDNN implementation each framework picks for a conv + BatchNorm train step.

A lab script for issue 13 (docs/speed.md, section 2): one 3x3 convolution (16 -> 16
channels, bias) and a train-mode BatchNorm on a 2 x 16 x 64 x 64 batch, forward and backward,
twice, one thread, with ``ONEDNN_VERBOSE=1``; prints the ``exec`` lines' primitive,
implementation, propagation kind and memory formats, counted. One framework per process
(MindSpore needs ``ONEDNN_MAX_CPU_ISA=AVX2``, which ``ms_impl`` sets)::

    ONEDNN_MAX_CPU_ISA=AVX2 python scripts/onednn_impls.py mindspore
    python scripts/onednn_impls.py pytorch
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys

CHILD = {
    "mindspore": """
import numpy as np, mindspore as ms
from mindspore import nn
ms.set_context(mode=ms.PYNATIVE_MODE)
ms.device_context.cpu.op_tuning.threads_num(1)
x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 16, 64, 64)).astype(np.float32))
conv = nn.Conv2d(16, 16, 3, pad_mode="pad", padding=1, has_bias=True)
bn = nn.BatchNorm2d(16, momentum=0.9)
bn.set_train(True)
params = conv.trainable_params() + bn.trainable_params()
g = ms.value_and_grad(lambda x: bn(conv(x)).sum(), 0, params)
for _ in range(2):
    g(x)[0].asnumpy()
""",
    "pytorch": """
import torch
torch.set_num_threads(1)
x = torch.randn(2, 16, 64, 64, requires_grad=True)
conv, bn = torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
for _ in range(2):
    bn(conv(x)).sum().backward()
""",
}


def main() -> int:
    """Command line: ``mindspore`` or ``pytorch``."""
    backend = sys.argv[1] if len(sys.argv) > 1 else "mindspore"
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run(
        [sys.executable, "-c", CHILD[backend]], env=env, capture_output=True, text=True, check=True
    )
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ",exec,cpu," in ln]
    counts = collections.Counter(",".join(ln.split(",")[3:9]) for ln in lines)
    print(f"{backend} (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}):")
    for key, n in sorted(counts.items()):
        print(f"  {n}x {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
