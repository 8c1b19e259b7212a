"""The catalogue: every config under ``configs/`` parses, builds what its name says, and runs.

Experiment files are named ``configs/<family>/<latent>-<estimator>.yaml``; the
estimator group files ``configs/estimator/<estimator>.yaml`` swap into any of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.models.cases import quiet_trainer_args, synthetic_args
from zoo.callbacks import SampleImages, TemperatureAnnealing
from zoo.cli import ZooCLI, main
from zoo.data import MNISTDataModule
from zoo.estimators import (
    GappedStraightThrough,
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

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# The MNIST families (Jang et al. 2017); the other families' folders have catalogue tests of their own.
MNIST_FAMILIES = ("vae", "sbn")
EXPERIMENTS = sorted(p for family in MNIST_FAMILIES for p in (CONFIGS / family).glob("*.yaml"))
ESTIMATOR_FILES = sorted((CONFIGS / "estimator").glob("*.yaml"))

MODEL_CLASSES = {
    ("vae", "categorical"): VAE,
    ("vae", "bernoulli"): VAE,
    ("sbn", "bernoulli"): SBN,
    ("sbn", "categorical"): SBN,
    ("vae", "chain"): VAE,
}
# The chain-posterior VAE ships with a few estimators, not all.
CHAIN_ESTIMATORS = ("gumbel", "st-gumbel", "straight-through", "reinforce-loo")
ESTIMATOR_CLASSES = {
    "gumbel": (GumbelSoftmax, None),
    "st-gumbel": (STGumbelSoftmax, None),
    "straight-through": (StraightThrough, None),
    "perturb-and-map": (PerturbAndMAP, None),
    "reinforce-ema": (Reinforce, MovingAverageBaseline),
    "reinforce-loo": (Reinforce, LeaveOneOutBaseline),
    "reinforce-learned": (Reinforce, LearnedBaseline),
    "reinmax": (ReinMax, None),
    "gapped-st": (GappedStraightThrough, None),
}


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not the CLI's


def ids(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def parts(path: Path) -> tuple[str, str, str]:
    latent, estimator = path.stem.split("-", 1)
    return path.parent.name, latent, estimator


def check_estimator(estimator, name: str) -> None:
    kind, baseline = ESTIMATOR_CLASSES[name]
    assert type(estimator) is kind
    if baseline is not None:
        assert type(estimator.baseline) is baseline


def test_the_catalogue_is_complete() -> None:
    expected = {
        f"{family}/{latent}-{estimator}"
        for family, latent in MODEL_CLASSES
        for estimator in (CHAIN_ESTIMATORS if latent == "chain" else ESTIMATOR_CLASSES)
    }
    assert {ids(p) for p in EXPERIMENTS} == expected
    assert {p.stem for p in ESTIMATOR_FILES} == set(ESTIMATOR_CLASSES)


def strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def test_no_config_holds_a_machine_specific_path() -> None:
    for path in [*EXPERIMENTS, *ESTIMATOR_FILES]:
        values = strings(yaml.safe_load(path.read_text()))
        assert not [v for v in values if v.startswith(("/", "~")) or "\\" in v], path


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids)
def test_every_config_prints(path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed_everything"] == 0
    assert printed["model"]["class_path"].startswith("zoo.models.")
    assert printed["model"]["init_args"]["estimator"]["class_path"].startswith("zoo.estimators.")
    assert printed["checkpoint"]["save_last"] is True


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids)
def test_every_config_builds_what_its_name_says(path: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    family, latent, estimator = parts(path)
    cli = ZooCLI(["--config", str(path)], run=False)
    model = cli.model
    assert type(model) is MODEL_CLASSES[family, latent]
    kinds = {"categorical": CategoricalLatent, "bernoulli": BernoulliLatent, "chain": ChainLatent}
    assert type(model.latent) is kinds[latent]
    if latent == "chain":
        assert (model.latent.num_variables, model.latent.num_states) == (20, 10)
    check_estimator(model.estimator, estimator)
    if family == "sbn":  # the second layer gets its own copy
        check_estimator(model.inner_estimator, estimator)
        assert model.inner_estimator is not model.estimator
    # The data root is not written into configs: data/ or $ZOO_DATA_DIR.
    assert isinstance(cli.datamodule, MNISTDataModule)
    assert cli.datamodule.data_dir is None
    assert model.input_dim == cli.datamodule.input_dim  # linked, not repeated
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert SampleImages in kinds
    # Jang et al.: τ annealed for the VAE (§4.2), fixed at 1 for the SBN (§4.1).
    (annealing,) = [c for c in cli.trainer.callbacks if isinstance(c, TemperatureAnnealing)]
    assert annealing.rate == (1e-4 if family == "vae" else 0.0)
    if family == "sbn" and hasattr(model.estimator, "temperature"):
        assert model.estimator.temperature == 1.0
    (checkpoint,) = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert checkpoint.save_last and checkpoint.save_on_exception


@pytest.mark.parametrize("estimator_file", ESTIMATOR_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("experiment", ["vae/categorical-gumbel", "sbn/bernoulli-straight-through"])
def test_estimator_group_files_swap_in(
    experiment: str, estimator_file: Path, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / f"{experiment}.yaml"
    cli = ZooCLI(["--config", str(config), "--model.estimator", str(estimator_file)], run=False)
    check_estimator(cli.model.estimator, estimator_file.stem)
    if experiment.startswith("sbn"):
        check_estimator(cli.model.inner_estimator, estimator_file.stem)


def test_a_config_runs_end_to_end_on_synthetic_data(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "vae" / "categorical-reinforce-loo.yaml"
    args = ["fit", "--config", str(config), *synthetic_args(dim=784), *quiet_trainer_args()]
    cli = ZooCLI([*args, "--trainer.fast_dev_run=2", "--model.hidden_sizes=[16]"])
    assert float(cli.trainer.callback_metrics["train/neg_elbo"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids)
def test_every_config_trains_on_mnist(path: Path, shared_data_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_DATA_DIR", str(shared_data_dir))
    args = ["fit", "--config", str(path), "--data.limit=200", "--trainer.fast_dev_run=2"]
    cli = ZooCLI([*args, *quiet_trainer_args()])
    name = cli.model.objective_name
    assert float(cli.trainer.callback_metrics[f"train/{name}"]) > 0
