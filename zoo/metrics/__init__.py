"""torchmetrics `Metric`s the models need and torchmetrics lacks.

They accumulate over an epoch and synchronize across processes like every
torchmetrics metric: clustering scores of induced tags (`zoo.metrics.clustering`)
and agreement of induced trees with gold trees (`zoo.metrics.trees`).
"""

from zoo.metrics.clustering import ManyToOneAccuracy, OneToOneAccuracy, VMeasure
from zoo.metrics.trees import AttachmentScore, BucketedAccuracy, SpanF1

__all__ = [
    "AttachmentScore",
    "BucketedAccuracy",
    "ManyToOneAccuracy",
    "OneToOneAccuracy",
    "SpanF1",
    "VMeasure",
]
