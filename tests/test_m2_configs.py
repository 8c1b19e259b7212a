"""The M2 catalogue: ``configs/m2/m2.yaml`` with every estimator swapped in (as its header and
``bench/m2.py`` write them) builds what it says and trains for two steps on tiny MNIST-format
data; Jang et al.'s schedule, the 100 labels and the α = 500 recipe are in it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.data.test_semi_supervised import write_tiny_mnist
from tests.models.cases import quiet_trainer_args
from zoo.callbacks import SampleImages, TemperatureAnnealing
from zoo.cli import ZooCLI
from zoo.data.semi_supervised import SemiSupervisedMNISTDataModule
from zoo.estimators import (
    Exact,
    GumbelSoftmax,
    LearnedBaseline,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    PerturbAndMAP,
    Reinforce,
    STGumbelSoftmax,
    StraightThrough,
)
from zoo.models.m2 import M2

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODEL_FILE = CONFIGS / "m2" / "m2.yaml"
GROUP = CONFIGS / "estimator"
SWAPS = {  # what follows --config configs/m2/m2.yaml for each estimator
    "exact": ["--model.estimator=Exact"],
    "gumbel": ["--model.estimator", str(GROUP / "gumbel.yaml")],
    "st-gumbel": [],
    "straight-through": ["--model.estimator", str(GROUP / "straight-through.yaml")],
    "perturb-and-map": ["--model.estimator", str(GROUP / "perturb-and-map.yaml")],
    "reinforce-ema": ["--model.estimator", str(GROUP / "reinforce-ema.yaml")],
    "reinforce-loo": ["--model.estimator", str(GROUP / "reinforce-loo.yaml")],
    "reinforce-learned": ["--model.estimator", str(GROUP / "reinforce-learned.yaml"),
                          "--model.estimator.baseline.in_features=10"],  # fmt: skip
}
ESTIMATORS = {
    "exact": (Exact, None),
    "gumbel": (GumbelSoftmax, None),
    "st-gumbel": (STGumbelSoftmax, None),
    "straight-through": (StraightThrough, None),
    "perturb-and-map": (PerturbAndMAP, None),
    "reinforce-ema": (Reinforce, MovingAverageBaseline),
    "reinforce-loo": (Reinforce, LeaveOneOutBaseline),
    "reinforce-learned": (Reinforce, LearnedBaseline),
}
# Small enough for seconds: 20 labels of 300 tiny digits, a 16-wide network.
TINY = [
    "--data.num_labels=20",
    "--data.val_size=50",
    "--data.batch_size=16",
    "--model.hidden_sizes=[16]",
    "--model.latent_dim=4",
]


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not the CLI's


@pytest.fixture
def tiny_data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    root = write_tiny_mnist(tmp_path / "data")
    monkeypatch.setenv("ZOO_DATA_DIR", str(root))
    return root


def test_the_catalogue_is_one_model_file_and_its_header_names_every_swap() -> None:
    assert sorted(p.name for p in (CONFIGS / "m2").glob("*.yaml")) == ["m2.yaml"]
    assert set(SWAPS) == set(ESTIMATORS)
    header = MODEL_FILE.read_text().split("seed_everything")[0]
    for flag in ("--model.estimator=Exact", "reinforce-learned.yaml", "in_features=10"):
        assert flag in header


@pytest.mark.parametrize("name", list(SWAPS))
def test_every_estimator_swaps_in(name: str, tiny_data_dir) -> None:
    cli = ZooCLI(["--config", str(MODEL_FILE), *SWAPS[name]], run=False)
    model, data = cli.model, cli.datamodule
    kind, baseline = ESTIMATORS[name]
    assert type(model) is M2 and type(model.estimator) is kind
    if baseline is not None:
        assert type(model.estimator.baseline) is baseline
    assert isinstance(data, SemiSupervisedMNISTDataModule)
    assert data.num_labels == 100 and data.data_dir is None
    assert model.input_dim == data.input_dim == 784  # linked, not repeated
    assert (model.num_classes, model.latent_dim, model.alpha) == (10, 50, 500.0)  # docs/m2.md
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert SampleImages in kinds
    (annealing,) = [c for c in cli.trainer.callbacks if type(c) is TemperatureAnnealing]
    assert (annealing.rate, annealing.every_n_steps, annealing.min_temperature) == (3e-5, 2000, 0.5)


@pytest.mark.parametrize("name", list(SWAPS))
def test_every_estimator_trains_on_tiny_digits(name: str, tiny_data_dir) -> None:
    args = ["fit", "--config", str(MODEL_FILE), *SWAPS[name], *TINY, *quiet_trainer_args()]
    cli = ZooCLI([*args, "--trainer.fast_dev_run=2"])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/neg_elbo"]) > 0
    assert 0.0 <= float(metrics["val/accuracy"]) <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWAPS))
def test_every_estimator_trains_on_mnist(name: str, shared_data_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_DATA_DIR", str(shared_data_dir))
    args = ["fit", "--config", str(MODEL_FILE), *SWAPS[name], "--data.limit=200",
            "--trainer.fast_dev_run=2"]  # fmt: skip
    cli = ZooCLI([*args, *quiet_trainer_args()])
    assert float(cli.trainer.callback_metrics["val/neg_elbo"]) > 0
