"""Tiny models × estimators for the model suites, and CLI arguments for synthetic data.

A new model joins every suite by one row of ``MODELS``; a new estimator by one
row of ``ESTIMATORS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L

from zoo.data import SyntheticBinaryDataModule
from zoo.estimators import (
    Estimator,
    GappedStraightThrough,
    GreedyBaseline,
    GumbelSoftmax,
    LearnedBaseline,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    PerturbAndMAP,
    Reinforce,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
)
from zoo.models import SBN, VAE, BernoulliLatent, CategoricalLatent, ChainLatent
from zoo.models.base import LatentVariableModel

DIM = 16
"""Width of the synthetic vectors (halves of 8 for the SBN)."""


@dataclass(frozen=True)
class ModelCase:
    name: str
    make: Callable[[Estimator], LatentVariableModel]
    parts: int  # parts of one latent event (what LearnedBaseline reads)
    split: str  # the datamodule split the model needs

    def data(self, **overrides: int) -> SyntheticBinaryDataModule:
        kwargs = {"num_train": 64, "num_val": 32, "num_test": 32, "batch_size": 16, "dim": DIM}
        kwargs.update(overrides)
        return SyntheticBinaryDataModule(split=self.split, num_prototypes=3, **kwargs)

    def __str__(self) -> str:
        return self.name


MODELS = [
    ModelCase(
        "categorical-vae",
        lambda e: VAE(e, CategoricalLatent(3, 4), input_dim=DIM, hidden_sizes=(8,), lr=1e-2),
        parts=12,
        split="full",
    ),
    ModelCase(
        "bernoulli-vae",
        lambda e: VAE(e, BernoulliLatent(6), input_dim=DIM, hidden_sizes=(8,), lr=1e-2),
        parts=6,
        split="full",
    ),
    ModelCase(
        "bernoulli-sbn",
        lambda e: SBN(e, BernoulliLatent(5), input_dim=DIM // 2, lr=1e-2),
        parts=5,
        split="halves",
    ),
    ModelCase(
        "categorical-sbn",
        lambda e: SBN(e, CategoricalLatent(2, 3), input_dim=DIM // 2, lr=1e-2),
        parts=6,
        split="halves",
    ),
    # Appended last: other suites pick cases by index (MODELS[0], MODELS[2]).
    ModelCase(
        "chain-vae",
        lambda e: VAE(e, ChainLatent(3, 3), input_dim=DIM, hidden_sizes=(8,), lr=1e-2),
        parts=3 * 3 * 3,  # (N, C, C): the chain layout with its virtual end
        split="full",
    ),
]

ESTIMATORS: dict[str, Callable[[int], Estimator]] = {
    "gumbel": lambda parts: GumbelSoftmax(temperature=0.7),
    "st-gumbel": lambda parts: STGumbelSoftmax(temperature=0.7),
    "straight-through": lambda parts: StraightThrough(),
    "perturb-and-map": lambda parts: PerturbAndMAP(temperature=0.7),
    # I-MLE's gradient is 0 unless λ·∂L/∂z flips a MAP; ∂L/∂z of a batch-mean loss
    # is small, so a large λ makes the first two steps move every layer.
    "perturb-and-map-imle": lambda parts: PerturbAndMAP(gradient="imle", imle_lambda=1000.0),
    "reinforce": lambda parts: Reinforce(),
    "reinforce-ema": lambda parts: Reinforce(baseline=MovingAverageBaseline(0.9)),
    "reinforce-loo": lambda parts: Reinforce(num_samples=3, baseline=LeaveOneOutBaseline()),
    "reinforce-learned": lambda parts: Reinforce(baseline=LearnedBaseline(parts, 4)),
    "reinforce-greedy": lambda parts: Reinforce(baseline=GreedyBaseline()),
    "reinmax": lambda parts: ReinMax(temperature=1.3),
    "gapped-st": lambda parts: GappedStraightThrough(temperature=0.7),
}


def synthetic_args(split: str = "full", dim: int = DIM) -> list[str]:
    """CLI arguments that swap any config's data for a tiny synthetic datamodule."""
    return [
        "--data=SyntheticBinaryDataModule",
        f"--data.dim={dim}",
        f"--data.split={split}",
        "--data.num_train=64",
        "--data.num_val=32",
        "--data.num_test=32",
        "--data.batch_size=16",
        "--data.num_prototypes=3",
    ]


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU trainer with no logger, progress bar, model summary or checkpoints; ``kwargs`` override."""
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    return L.Trainer(**{**defaults, **kwargs})


def quiet_trainer_args() -> list[str]:
    """CLI arguments that keep a test's trainer quiet and on the CPU."""
    return [
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
