"""Gradient estimators for E_{z∼q}[f(z)], all with one interface (`Estimator`)."""

from zoo.config import Configurable, from_config
from zoo.estimators.arm import ARM, DisARM
from zoo.estimators.base import CostFn, Estimate, Estimator, TemperedEstimator, as_estimator
from zoo.estimators.baselines import (
    Baseline,
    BaselineSizeError,
    GreedyBaseline,
    LearnedBaseline,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
)
from zoo.estimators.exact import Exact, MarginalExpectation
from zoo.estimators.gapped import GappedStraightThrough
from zoo.estimators.reinforce import Reinforce
from zoo.estimators.reinmax import ReinMax
from zoo.estimators.relaxed import (
    GumbelCRF,
    GumbelRao,
    GumbelSoftmax,
    PathwiseEstimator,
    PerturbAndMAP,
    STGumbelSoftmax,
    StraightThrough,
)
from zoo.estimators.unordered_set import UnorderedSetReinforce
from zoo.estimators.vimco import VIMCO

__all__ = [
    "ARM",
    "Baseline",
    "BaselineSizeError",
    "Configurable",
    "CostFn",
    "DisARM",
    "Estimate",
    "Estimator",
    "Exact",
    "GappedStraightThrough",
    "GreedyBaseline",
    "GumbelCRF",
    "GumbelRao",
    "GumbelSoftmax",
    "LearnedBaseline",
    "LeaveOneOutBaseline",
    "MarginalExpectation",
    "MovingAverageBaseline",
    "PathwiseEstimator",
    "PerturbAndMAP",
    "Reinforce",
    "ReinMax",
    "STGumbelSoftmax",
    "StraightThrough",
    "TemperedEstimator",
    "UnorderedSetReinforce",
    "VIMCO",
    "as_estimator",
    "from_config",
]
