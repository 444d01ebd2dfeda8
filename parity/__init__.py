"""parity: what sees both frameworks.

- :mod:`parity.weights`: weight converters between live networks and files (neutral
  safetensors, PyTorch ``.pt``, MindSpore ``.ckpt``).
- :mod:`parity.oracle`: the numpy (float64) reference of the method's and the baselines' math,
  the third implementation the two twins are checked against (imports no framework).
- :mod:`parity.tolerances`: the one table of tolerances (absolute and relative error).
- :mod:`parity.core`: cases, comparisons, the runner and the JSON report (numpy only).
- :mod:`parity.cases_loss`, :mod:`parity.cases_net`, :mod:`parity.cases_train`: the case
  table (method components and losses; networks; training steps).
- :mod:`parity.suite`: the whole suite, ``irkd parity``.

The release gate that reads the report is framework-free: :mod:`irkd.gate`.
"""
