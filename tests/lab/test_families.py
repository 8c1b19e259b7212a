"""The gradient statistics on every model family: the tagger, ListOps, M2 (the VAE and SBN in test_statistics)."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from tests.models.cases import quiet_trainer_args
from tests.models.test_m2 import tiny_batch, tiny_model
from zoo.cli import ZooCLI
from zoo.estimators import LeaveOneOutBaseline, Reinforce
from zoo.lab import GradientStatistics, gradient_statistics
from zoo.structures import Categorical

ROOT = Path(__file__).resolve().parents[2]
CALLBACK = [
    "--trainer.callbacks+=zoo.lab.GradientStatistics",
    "--trainer.callbacks.every_n_steps=1",
    "--trainer.callbacks.num_probes=4",
    "--trainer.callbacks.num_examples=4",
]


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])


def _finite(stats: dict[str, float]) -> None:
    assert stats["norm"] > 0
    for name in ("variance", "cosine", "bias", "bias_floor"):
        assert math.isfinite(stats[name]), (name, stats)


def test_the_callback_measures_the_tagger_whose_batches_hold_word_lists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config", str(ROOT / "configs" / "tagger" / "hmm.yaml"),
        "--model.estimator", str(ROOT / "configs" / "estimator" / "reinforce-loo.yaml"),
        "--config", str(ROOT / "configs" / "data" / "hmm-synthetic.yaml"),
        "--model.num_tags=5", "--model.gold_tags=[states]", "--data.num_train=64",
        "--model.embedding_dim=16", "--model.hidden_size=16",
    ]  # fmt: skip
    cli = ZooCLI([*args, *CALLBACK, *quiet_trainer_args(), "--trainer.fast_dev_run=2"])
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, GradientStatistics)]
    assert [h["step"] for h in callback.history] == [0, 1]
    _finite(callback.history[-1])


@pytest.mark.parametrize(
    "config", [("dependency", "st-gumbel"), ("constituency", "reinforce-loo")], ids="-".join
)
def test_the_statistics_measure_the_listops_classifiers(config, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    test = tmp_path / "test.tsv"
    test.write_text("1\t( ( ( [SM 6 ) 5 ) ] )\n7\t7\n")
    model, estimator = config
    args = ["fit", "--config", str(ROOT / "configs" / "listops" / f"{model}.yaml"),
            "--model.estimator", str(ROOT / "configs" / "estimator" / f"{estimator}.yaml"),
            f"--data.test_file={test}", "--data.num_train=64", "--data.num_val=8",
            "--data.max_length=10", "--data.batch_size=4", "--model.init_args.hidden_dim=8",
            "--model.init_args.embedding_dim=8", "--trainer.fast_dev_run=1"]  # fmt: skip
    cli = ZooCLI([*args, *quiet_trainer_args()])
    # A batch of expressions of at least 3 symbols: more than one tree each.
    batch = next(b for b in cli.datamodule.train_dataloader() if b["lengths"].min() >= 3)
    _finite(gradient_statistics(cli.model, dict(batch), num_probes=8))


def test_the_statistics_measure_m2() -> None:
    model = tiny_model(Reinforce(4, baseline=LeaveOneOutBaseline()))
    _finite(gradient_statistics(model, tiny_batch(), num_probes=8))


class OneStructure(nn.Module):
    """A latent with one value (a 1-way categorical): its gradient is exactly 0."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(3, 2, 1))
        self.estimator = Reinforce(2, baseline=LeaveOneOutBaseline())

    def posterior(self, batch: dict[str, Tensor]) -> Categorical:
        return Categorical(self.theta)

    def cost(self, z: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return (z * batch["x"].unsqueeze(-1)).sum((-2, -1))


def test_a_zero_gradient_is_said_once_and_its_undefined_ratios_are_not_logged(caplog) -> None:
    callback = GradientStatistics(every_n_steps=1, num_probes=4)
    model = OneStructure()
    logged: list[dict[str, float]] = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append(metrics))
    with caplog.at_level(logging.WARNING, logger="zoo.lab.statistics"):
        for step in range(2):
            trainer = SimpleNamespace(global_step=step, loggers=[logger])
            callback.on_train_batch_start(trainer, model, {"x": torch.ones(3, 2)}, step)
    warnings = [
        r for r in caplog.records if "reference gradient of the fixed batch is 0" in r.message
    ]
    assert len(warnings) == 1
    assert all("grad/cosine" not in m and m["grad/variance"] == 0.0 for m in logged)
