"""MindSpore implementation (native side): networks, method, baselines, training.

Importing this package sets ``ONEDNN_MAX_CPU_ISA=AVX2`` (unless the user set it) before
MindSpore runs its first convolution: on AVX-512 CPUs MindSpore's bundled oneDNN otherwise
picks a reference convolution, many times slower (``docs/mindspore-notes.md``). It has no
effect on Ascend. Like :mod:`torch_ref`, it also sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the
user set it): the wait policy changes how idle threads wait, never what they compute.
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
