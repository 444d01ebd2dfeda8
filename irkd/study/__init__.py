"""``irkd study``: a resumable runner and reporter for a grid of training runs.

- :mod:`irkd.study.spec`: the study file (parse and validate).
- :mod:`irkd.study.plan`: runs, resolved configs, ids, shared duplicates, tuning winners.
- :mod:`irkd.study.runner`: scheduling, subprocesses, resume, progress.
- :mod:`irkd.study.results`: run status and the committed copy of each run.
- :mod:`irkd.study.report`: ``table.json/md``, ``tuning.json/md``.
- :mod:`irkd.study.plots`: the PNG figures.

The file format and the semantics are described in ``docs/study.md``.
"""

from irkd.study.spec import Study, StudyError, load_study

__all__ = ["Study", "StudyError", "load_study"]
