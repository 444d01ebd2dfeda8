"""torch_ref: the PyTorch twin of ms_impl.

Importing it sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) before PyTorch loads
its OpenMP runtime, like :mod:`irkd` does (see there).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
