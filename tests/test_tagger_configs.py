"""The tagger catalogue: every config under configs/tagger parses, builds what its name says, and runs.

Files are named ``configs/tagger/<decoder>-<estimator>.yaml``; each runs
``fast_dev_run`` on a ``limit``-ed UD English EWT (skipped without the shared
files) with small widths, and the synthetic data group file runs end to end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from tests.conftest import EWT_FILES, find_data_dir
from tests.models.cases import quiet_trainer_args
from zoo.cli import ZooCLI
from zoo.estimators import (
    GreedyBaseline,
    GumbelCRF,
    GumbelSoftmax,
    LeaveOneOutBaseline,
    MarginalExpectation,
    MovingAverageBaseline,
    PerturbAndMAP,
    Reinforce,
    StraightThrough,
)
from zoo.models.tagger import (
    HMMPosterior,
    LSTMTagger,
    NeuralHMMTagger,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "tagger").glob("*.yaml"))
DATA = find_data_dir(EWT_FILES)  # $ZOO_DATA_DIR or data/, as the datamodule looks
HAS_EWT = DATA is not None

DECODERS = {"hmm": NeuralHMMTagger, "lstm": LSTMTagger}
ESTIMATORS = {
    "exact": (MarginalExpectation, None),
    "gumbel": (GumbelSoftmax, None),
    "gumbel-crf": (GumbelCRF, None),
    "st-gumbel-crf": (GumbelCRF, None),
    "straight-through": (StraightThrough, None),
    "perturb-and-map": (PerturbAndMAP, None),
    "reinforce-ema": (Reinforce, MovingAverageBaseline),
    "reinforce-loo": (Reinforce, LeaveOneOutBaseline),
    "reinforce-greedy": (Reinforce, GreedyBaseline),
}
SMALL = ["--model.embedding_dim=16", "--model.hidden_size=16"]


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])


def parts(path: Path) -> tuple[str, str]:
    decoder, estimator = path.stem.split("-", 1)
    return decoder, estimator


def test_the_catalogue_is_complete() -> None:
    names = {p.stem for p in CONFIGS}
    expected = {f"{d}-{e}" for d in DECODERS for e in ESTIMATORS if (d, e) != ("lstm", "exact")}
    assert names == expected | {"hmm-marginal-likelihood"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_names_what_it_builds(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    decoder, estimator = parts(path)
    model = config["model"]
    assert config["data"]["class_path"] == "zoo.data.ud.UDTaggingDataModule"
    assert "input_dim" not in model["init_args"]  # linked from the data
    if estimator == "marginal-likelihood":
        assert model["class_path"] == "zoo.models.tagger.NeuralHMMTagger"
        assert model["init_args"]["encoder"]["class_path"] == "zoo.models.tagger.HMMPosterior"
        return
    assert model["class_path"] == f"zoo.models.tagger.{DECODERS[decoder].__name__}"
    kind, baseline = ESTIMATORS[estimator]
    spec = model["init_args"]["estimator"]
    assert spec["class_path"].rsplit(".", 1)[1] == kind.__name__
    if kind is GumbelCRF:
        assert spec["init_args"]["straight_through"] == estimator.startswith("st-")
    if baseline is not None:
        assert spec["init_args"]["baseline"]["class_path"].rsplit(".", 1)[1] == baseline.__name__


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.stem.startswith("hmm-") and "marginal" not in p.stem],
    ids=lambda p: p.stem,
)  # fmt: skip
def test_hmm_configs_default_to_the_recipe(path: Path) -> None:
    """Warm-up on −log p(x), then the HMM kept on −log p(x) and q on the estimator; τ = 0.5."""
    config = yaml.safe_load(path.read_text())
    args = config["model"]["init_args"]
    assert args["warmup_steps"] > 0
    assert args["warmup_posterior"] == "distill"
    assert args["generative_objective"] == "marginal"
    temperature = args["estimator"].get("init_args", {}).get("temperature")
    assert temperature in (None, 0.5)
    assert not [c for c in config["trainer"]["callbacks"] if "Annealing" in c["class_path"]]  # τ fixed


@pytest.mark.skipif(not HAS_EWT, reason="UD English EWT not found under $ZOO_DATA_DIR or data/")
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_runs_fast_dev_run_on_a_limited_ewt(path: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_DATA_DIR", str(DATA))
    args = ["fit", "--config", str(path), "--data.limit=40", "--trainer.fast_dev_run=2"]
    tiny = ["--model.num_tags=6", "--data.batch_size=8", "--data.max_train_length=15"]
    cli = ZooCLI([*args, *SMALL, *tiny, *quiet_trainer_args()])
    decoder, estimator = parts(path)
    assert type(cli.model) is DECODERS[decoder]
    assert isinstance(cli.model.encoder, HMMPosterior) == (estimator == "marginal-likelihood")
    assert cli.model.input_dim == cli.datamodule.input_dim
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/neg_elbo"]) > 0
    for name in ("m1_xpos", "o1_xpos", "vm_xpos", "m1_upos"):
        assert 0 < float(metrics[f"val/{name}"]) <= 1, name


def test_synthetic_group_file_fit_test_and_predict(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "tagger" / "hmm-exact.yaml"
    data = ROOT / "configs" / "data" / "hmm-synthetic.yaml"
    common = ["--config", str(config), "--config", str(data), "--model.num_tags=5",
              "--model.gold_tags=[states]", "--data.num_train=64", *SMALL, *quiet_trainer_args()]  # fmt: skip
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
    assert len(blocks) == 200  # the test split
    assert blocks[0].splitlines()[0].split("\t")[9].startswith("Tag=")


@pytest.mark.parametrize("name", ["hmm-gumbel-crf", "hmm-reinforce-loo"])
def test_the_recipe_runs_both_stages_from_one_fit(name: str, tmp_path, monkeypatch) -> None:
    """One ``train.py fit --config``: warm-up steps, then the estimator's stage (synthetic data)."""
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "tagger" / f"{name}.yaml"
    data = ROOT / "configs" / "data" / "hmm-synthetic.yaml"
    args = ["--config", str(config), "--config", str(data), "--model.num_tags=5",
            "--model.gold_tags=[states]", "--data.num_train=64", "--model.warmup_steps=2",
            "--trainer.max_steps=4", "--trainer.log_every_n_steps=1", *SMALL, *quiet_trainer_args()]  # fmt: skip
    seen = []

    class Stages(L.Callback):
        def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx) -> None:
            seen.append(float(trainer.callback_metrics["train/stage"]))

    cli = ZooCLI(args, run=False)
    cli.trainer.callbacks.append(Stages())
    cli.trainer.fit(cli.model, cli.datamodule)
    assert seen == [0.0, 0.0, 1.0, 1.0]
    assert float(cli.trainer.callback_metrics["train/kl_token"]) > 0
