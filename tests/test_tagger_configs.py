"""The tagger catalogue: one model file per variant, each building what it says and running.

``configs/tagger/hmm.yaml`` (the neural HMM with the exact `MarginalExpectation`
and the recipe), ``hmm-marginal-likelihood.yaml`` (its variant with
``encoder: HMMPosterior``) and ``lstm.yaml`` (the LSTM decoder with Gumbel-CRF);
the estimators come from ``configs/estimator/`` (tests/test_catalogue_matrix.py
runs every pair). Each model file runs ``fast_dev_run`` on a ``limit``-ed UD
English EWT (skipped without the shared files), and the synthetic data group
file runs fit, test and predict end to end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from tests.conftest import EWT_FILES, find_data_dir
from tests.models.cases import quiet_trainer_args
from tests.test_catalogue_matrix import TAGGER_DATA
from zoo.cli import ZooCLI
from zoo.data import SyntheticHMMDataModule
from zoo.estimators import GumbelCRF, LeaveOneOutBaseline, MarginalExpectation, Reinforce
from zoo.models.tagger import BiLSTMEncoder, HMMPosterior, LSTMTagger, NeuralHMMTagger

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "configs" / "tagger"
ESTIMATORS = ROOT / "configs" / "estimator"
SYNTHETIC = ROOT / "configs" / "data" / "hmm-synthetic.yaml"
DATA = find_data_dir(EWT_FILES)  # $ZOO_DATA_DIR or data/, as the datamodule looks
HAS_EWT = DATA is not None

MODEL_FILES = {
    "hmm": (NeuralHMMTagger, BiLSTMEncoder, MarginalExpectation),
    "hmm-marginal-likelihood": (NeuralHMMTagger, HMMPosterior, MarginalExpectation),
    "lstm": (LSTMTagger, BiLSTMEncoder, GumbelCRF),
}
SMALL = ["--model.embedding_dim=16", "--model.hidden_size=16"]
GUMBEL_CRF = ["--model.estimator", str(ESTIMATORS / "chain" / "gumbel-crf.yaml"),
              "--model.estimator.temperature=0.5"]  # fmt: skip
"""Gumbel-CRF as the HMM's recipe was measured with it (docs/tagger.md)."""


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(tmp_path)


def test_the_catalogue_is_one_file_per_variant() -> None:
    assert {p.stem for p in FOLDER.glob("*.yaml")} == set(MODEL_FILES)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_every_model_file_builds_what_it_says(name: str) -> None:
    path = FOLDER / f"{name}.yaml"
    config = yaml.safe_load(path.read_text())
    assert config["data"]["class_path"] == "zoo.data.ud.UDTaggingDataModule"
    assert "input_dim" not in config["model"]["init_args"]  # linked from the data
    cli = ZooCLI(["--config", str(path), *TAGGER_DATA], run=False)
    model_class, encoder_class, estimator_class = MODEL_FILES[name]
    assert type(cli.model) is model_class
    assert type(cli.model.encoder) is encoder_class
    assert type(cli.model.estimator) is estimator_class
    assert isinstance(cli.datamodule, SyntheticHMMDataModule)  # the data group file wins
    assert cli.model.input_dim == cli.datamodule.input_dim


def test_the_hmm_file_is_the_recipe_with_a_fixed_temperature() -> None:
    """Warm-up on −log p(x), then the HMM kept on −log p(x) and q on the estimator; τ fixed."""
    config = yaml.safe_load((FOLDER / "hmm.yaml").read_text())
    args = config["model"]["init_args"]
    assert args["warmup_steps"] > 0
    assert args["warmup_posterior"] == "distill"
    assert args["generative_objective"] == "marginal"
    assert "annealing" not in config  # τ stays what --model.estimator.temperature says
    cli = ZooCLI(["--config", str(FOLDER / "hmm.yaml"), *TAGGER_DATA, *GUMBEL_CRF], run=False)
    assert isinstance(cli.model.estimator, GumbelCRF) and not cli.model.estimator.straight_through
    assert cli.model.estimator.temperature == 0.5
    assert cli.model.warmup_steps == args["warmup_steps"]  # the recipe stays


def test_the_lstm_file_anneals_the_temperature_of_any_estimator() -> None:
    config = yaml.safe_load((FOLDER / "lstm.yaml").read_text())
    assert config["annealing"] == {"rate": 1e-4, "min_temperature": 0.5, "every_n_steps": 500}
    assert config["model"]["init_args"]["estimator"]["init_args"]["temperature"] == 1.0


def test_the_lstm_decoder_refuses_the_linear_cost_estimator() -> None:
    args = ["--config", str(FOLDER / "lstm.yaml"), *TAGGER_DATA]
    with pytest.raises(ValueError, match="MarginalExpectation is exact only for costs linear"):
        ZooCLI([*args, "--model.estimator=MarginalExpectation"], run=False)


@pytest.mark.skipif(not HAS_EWT, reason="UD English EWT not found under $ZOO_DATA_DIR or data/")
@pytest.mark.parametrize("name", MODEL_FILES)
def test_every_model_file_runs_fast_dev_run_on_a_limited_ewt(name: str, monkeypatch) -> None:
    monkeypatch.setenv("ZOO_DATA_DIR", str(DATA))
    path = FOLDER / f"{name}.yaml"
    args = ["fit", "--config", str(path), "--data.limit=40", "--trainer.fast_dev_run=2"]
    tiny = ["--model.num_tags=6", "--data.batch_size=8", "--data.max_train_length=15"]
    cli = ZooCLI([*args, *SMALL, *tiny, *quiet_trainer_args()])
    assert type(cli.model) is MODEL_FILES[name][0]
    assert cli.model.input_dim == cli.datamodule.input_dim
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/neg_elbo"]) > 0
    for metric in ("m1_xpos", "o1_xpos", "vm_xpos", "m1_upos"):
        assert 0 < float(metrics[f"val/{metric}"]) <= 1, metric


def test_synthetic_group_file_fit_test_and_predict(tmp_path) -> None:
    config = FOLDER / "hmm.yaml"
    common = ["--config", str(config), "--config", str(SYNTHETIC), "--model.num_tags=5",
              "--model.gold_tags=[states]", "--data.num_train=64", "--data.num_val=32",
              "--data.num_test=24", *SMALL, *quiet_trainer_args()]  # fmt: skip
    cli = ZooCLI(["fit", *common, "--trainer.max_epochs=1"])
    assert 0 < float(cli.trainer.callback_metrics["val/m1_states"]) <= 1
    ckpt = next(Path("lightning_logs").glob("tagger/version_0/checkpoints/last.ckpt"))
    cli = ZooCLI(["test", *common, f"--ckpt_path={ckpt}"])
    assert float(cli.trainer.callback_metrics["test/nll"]) > 0
    out = tmp_path / "tags.conllu"
    writer = ["--trainer.callbacks+=zoo.callbacks.InducedTagWriter",
              f"--trainer.callbacks.output_path={out}"]  # fmt: skip
    ZooCLI(["predict", *common, *writer, f"--ckpt_path={ckpt}"])
    blocks = out.read_text().strip().split("\n\n")
    assert len(blocks) == 24  # the test split
    assert blocks[0].splitlines()[0].split("\t")[9].startswith("Tag=")


@pytest.mark.parametrize(
    "estimator",
    [GUMBEL_CRF, ["--model.estimator", str(ESTIMATORS / "reinforce-loo.yaml")]],
    ids=["gumbel-crf", "reinforce-loo"],
)
def test_the_recipe_runs_both_stages_from_one_fit(estimator: list[str]) -> None:
    """One ``train.py fit``: warm-up steps, then the estimator's stage (synthetic data)."""
    args = ["--config", str(FOLDER / "hmm.yaml"), *estimator, "--config", str(SYNTHETIC),
            "--model.num_tags=5", "--model.gold_tags=[states]", "--data.num_train=64",
            "--model.warmup_steps=2", "--trainer.max_steps=4", "--trainer.log_every_n_steps=1",
            *SMALL, *quiet_trainer_args()]  # fmt: skip
    seen = []

    class Stages(L.Callback):
        def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx) -> None:
            seen.append(float(trainer.callback_metrics["train/stage"]))

    cli = ZooCLI(args, run=False)
    if "reinforce-loo" in estimator[1]:
        assert isinstance(cli.model.estimator, Reinforce)
        assert isinstance(cli.model.estimator.baseline, LeaveOneOutBaseline)
    cli.trainer.callbacks.append(Stages())
    cli.trainer.fit(cli.model, cli.datamodule)
    assert seen == [0.0, 0.0, 1.0, 1.0]
    assert float(cli.trainer.callback_metrics["train/kl_token"]) > 0
