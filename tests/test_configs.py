"""The catalogue: every model file under ``configs/`` parses, builds what its name says, runs,
and takes every estimator group file that applies to its structure.

Model files are named ``configs/<family>/<latent>.yaml`` (Gumbel-Softmax by default); the
estimator group files ``configs/estimator/**/<estimator>.yaml`` swap into any of them with
``--model.estimator``. Where an estimator does not apply (ARM on categorical latents, VIMCO on
the SBN, the Gumbel-CRF on independent variables), the command line says why, in one line.
"""

from __future__ import annotations

import importlib
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
    GumbelSoftmax,
    LearnedBaseline,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
)
from zoo.estimators.compatibility import applies_to, structure_of
from zoo.models import SBN, VAE, BernoulliLatent, CategoricalLatent, ChainLatent

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# The MNIST families (Jang et al. 2017); the other families' folders have catalogue tests of their own.
MNIST_FAMILIES = ("vae", "sbn")
MODEL_FILES = sorted(p for family in MNIST_FAMILIES for p in (CONFIGS / family).glob("*.yaml"))
ESTIMATOR_FILES = sorted((CONFIGS / "estimator").rglob("*.yaml"))

MODEL_CLASSES = {
    ("vae", "categorical"): VAE,
    ("vae", "bernoulli"): VAE,
    ("vae", "chain"): VAE,
    ("sbn", "bernoulli"): SBN,
    ("sbn", "categorical"): SBN,
}
LATENT_CLASSES = {
    "categorical": CategoricalLatent,
    "bernoulli": BernoulliLatent,
    "chain": ChainLatent,
}
# The files at the top of configs/estimator/ apply to every structure.
ANY_STRUCTURE = {"gumbel", "st-gumbel", "straight-through", "perturb-and-map", "reinforce-ema",
                 "reinforce-loo", "reinforce-learned", "reinmax", "gapped-st"}  # fmt: skip
BASELINES = {"reinforce-ema": MovingAverageBaseline, "reinforce-loo": LeaveOneOutBaseline,
             "reinforce-learned": LearnedBaseline}  # fmt: skip


def estimator_class(path: Path) -> type:
    module, name = yaml.safe_load(path.read_text())["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not the CLI's


def ids(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def test_the_catalogue_is_one_file_per_model() -> None:
    assert {(p.parent.name, p.stem) for p in MODEL_FILES} == set(MODEL_CLASSES)
    assert {p.stem for p in ESTIMATOR_FILES if p.parent.name == "estimator"} == ANY_STRUCTURE


def strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def test_no_config_holds_a_machine_specific_path() -> None:
    for path in [*MODEL_FILES, *ESTIMATOR_FILES]:
        values = strings(yaml.safe_load(path.read_text()))
        assert not [v for v in values if v.startswith(("/", "~")) or "\\" in v], path


@pytest.mark.parametrize("path", MODEL_FILES, ids=ids)
def test_every_config_prints(path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed_everything"] == 0
    assert printed["model"]["class_path"].startswith("zoo.models.")
    assert printed["model"]["init_args"]["estimator"]["class_path"].startswith("zoo.estimators.")
    assert printed["checkpoint"]["save_last"] is True


@pytest.mark.parametrize("path", MODEL_FILES, ids=ids)
def test_every_model_file_builds_what_its_name_says(path: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    family, latent = path.parent.name, path.stem
    cli = ZooCLI(["--config", str(path)], run=False)
    model = cli.model
    assert type(model) is MODEL_CLASSES[family, latent]
    assert type(model.latent) is LATENT_CLASSES[latent]
    if latent == "chain":
        assert (model.latent.num_variables, model.latent.num_states) == (20, 10)
    assert type(model.estimator) is GumbelSoftmax
    if family == "sbn":  # the second layer gets its own copy
        assert type(model.inner_estimator) is GumbelSoftmax
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
    if family == "sbn":
        assert model.estimator.temperature == 1.0
    (checkpoint,) = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert checkpoint.save_last and checkpoint.save_on_exception


@pytest.mark.parametrize(
    "estimator_file",
    ESTIMATOR_FILES,
    ids=lambda p: p.relative_to(CONFIGS / "estimator").with_suffix("").as_posix(),
)
@pytest.mark.parametrize("path", MODEL_FILES, ids=ids)
def test_every_model_file_takes_every_estimator_that_applies(
    path: Path, estimator_file: Path, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    kind = estimator_class(estimator_file)
    model_class = MODEL_CLASSES[path.parent.name, path.stem]
    structure = structure_of(ZooCLI(["--config", str(path)], run=False).model)
    joint = model_class.has_joint_nll() or not getattr(kind, "multi_sample_bound", False)
    args = ["--config", str(path), "--model.estimator", str(estimator_file)]
    if not (applies_to(kind, structure) and joint):
        with pytest.raises(Exception, match="needs|no joint likelihood"):
            ZooCLI(args, run=False)
        return
    model = ZooCLI(args, run=False).model
    estimators = [model.estimator]
    if model_class is SBN:
        estimators.append(model.inner_estimator)
    for estimator in estimators:
        assert type(estimator) is kind
        if estimator_file.stem in BASELINES:
            assert type(estimator.baseline) is BASELINES[estimator_file.stem]


def test_a_config_runs_end_to_end_on_synthetic_data(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config, estimator = (
        CONFIGS / "vae" / "categorical.yaml",
        CONFIGS / "estimator" / "reinforce-loo.yaml",
    )
    args = ["fit", "--config", str(config), "--model.estimator", str(estimator),
            *synthetic_args(dim=784), *quiet_trainer_args()]  # fmt: skip
    cli = ZooCLI([*args, "--trainer.fast_dev_run=2", "--model.hidden_sizes=[16]"])
    assert float(cli.trainer.callback_metrics["train/neg_elbo"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator_file", sorted((CONFIGS / "estimator").glob("*.yaml")), ids=lambda p: p.stem
)
@pytest.mark.parametrize("path", MODEL_FILES, ids=ids)
def test_every_config_trains_on_mnist(
    path: Path, estimator_file: Path, shared_data_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_DATA_DIR", str(shared_data_dir))
    args = ["fit", "--config", str(path), "--model.estimator", str(estimator_file),
            "--data.limit=200", "--trainer.fast_dev_run=2"]  # fmt: skip
    if estimator_file.stem == "reinforce-learned" and path.stem == "chain":
        # The group file's NVIL baseline reads 200 parts (20 × 10 cells, or 200 bits).
        args.append("--model.estimator.baseline.in_features=2000")
    cli = ZooCLI([*args, *quiet_trainer_args()])
    name = cli.model.objective_name
    assert float(cli.trainer.callback_metrics[f"train/{name}"]) > 0
