"""``python -m irkd.cli``: the ``irkd`` command line (as torchrun, msrun and the study use it)."""

import sys

from irkd.cli import main

sys.exit(main())
