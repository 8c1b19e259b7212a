"""The estimator lab: gradient statistics of any model's estimator, and the comparison of estimators.

* `GradientStatistics`: a Lightning callback logging ``grad/variance``, ``grad/snr``,
  ``grad/cosine`` and ``grad/bias`` of the model's estimator (`zoo.lab.statistics`).
* ``python -m zoo.lab.compare``: configs × estimators × seeds → ``results.csv``, ``results.md``
  and plots (`zoo.lab.compare`, reading the runs back with `zoo.lab.events`).
"""

from zoo.lab.checkpoint import FinalCheckpoint
from zoo.lab.statistics import (
    GradientStatistics,
    Reference,
    gradient_statistics,
    probe_gradients,
    reference_gradient,
    summarize,
)

__all__ = [
    "FinalCheckpoint",
    "GradientStatistics",
    "Reference",
    "gradient_statistics",
    "probe_gradients",
    "reference_gradient",
    "summarize",
]
