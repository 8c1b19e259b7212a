"""Gradient estimators for E_{z∼q}[f(z)], all with one interface (`Estimator`)."""

from zoo.config import Configurable, from_config
from zoo.estimators.base import CostFn, Estimate, Estimator, TemperedEstimator
from zoo.estimators.baselines import (
    Baseline,
    GreedyBaseline,
    LearnedBaseline,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
)
from zoo.estimators.exact import Exact
from zoo.estimators.reinforce import Reinforce
from zoo.estimators.relaxed import GumbelSoftmax, PerturbAndMAP, STGumbelSoftmax, StraightThrough

__all__ = [
    "Baseline",
    "Configurable",
    "CostFn",
    "Estimate",
    "Estimator",
    "Exact",
    "GreedyBaseline",
    "GumbelSoftmax",
    "LearnedBaseline",
    "LeaveOneOutBaseline",
    "MovingAverageBaseline",
    "PerturbAndMAP",
    "Reinforce",
    "STGumbelSoftmax",
    "StraightThrough",
    "TemperedEstimator",
    "from_config",
]
