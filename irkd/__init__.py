"""irkd: the framework-free core of IRKD.

Importing it sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) before any framework
loads: with the default active wait, OpenMP threads spin on each other and a 2-thread PyTorch
step becomes several times slower as soon as another process is busy on the machine (see the
README). Set ``OMP_WAIT_POLICY=ACTIVE`` to opt out.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
