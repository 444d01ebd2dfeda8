"""ModelArts boot file: ``python modelarts/start.py --data_url D --train_url T --config C ...``.

Set it as the training job's boot file (code directory: this repository); docs/modelarts.md
has the job settings. Everything it does is :func:`irkd.modelarts.main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the code directory, when irkd is not installed
    sys.path.insert(0, str(REPO))

from irkd.modelarts import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
