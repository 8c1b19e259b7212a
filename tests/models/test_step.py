"""One step for every family: the base runs `step` and logs; pictures come from a callback.

* no family overrides Lightning's step hooks or logs on its own: every
  validation and test metric goes through the base, reduced over the ranks
  (``sync_dist``);
* the tagger's and ListOps' figures (confusion matrices, tagged sentences,
  trees) reach TensorBoard through `zoo.callbacks.ValidationFigures`;
* the tagger's encoder is a part chosen in YAML: a CNN-CRF and the HMM's own
  posterior need no code, and a checkpoint rebuilds the one it was trained with.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

import zoo.models
from tests.data.test_semi_supervised import write_tiny_mnist
from tests.models.cases import quiet_trainer, quiet_trainer_args
from zoo.callbacks import ValidationFigures
from zoo.cli import ZooCLI
from zoo.data.hmm import SyntheticHMMDataModule
from zoo.data.listops import ListOpsDataModule
from zoo.data.semi_supervised import SemiSupervisedMNISTDataModule
from zoo.estimators import MarginalExpectation, Reinforce, StraightThrough
from zoo.models import (
    ConvEncoder,
    HMMPosterior,
    LatentTreeClassifier,
    LatentVariableModel,
    NeuralHMMTagger,
)
from zoo.models.m2 import M2

FAMILIES = [
    cls
    for cls in vars(zoo.models).values()
    if inspect.isclass(cls)
    and issubclass(cls, LatentVariableModel)
    and cls is not LatentVariableModel
]
HOOKS = ("training_step", "validation_step", "test_step", "_run", "_log_metrics")


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
def test_no_family_overrides_the_step_hooks_or_the_logging(cls) -> None:
    for hook in HOOKS:
        assert getattr(cls, hook) is getattr(LatentVariableModel, hook), f"{cls.__name__}.{hook}"


def _tagger(**kwargs) -> NeuralHMMTagger:
    args = {"num_tags": 3, "input_dim": 24, "embedding_dim": 8, "hidden_size": 8,
            "gold_tags": ("states",), "lr": 1e-2}  # fmt: skip
    args.update(kwargs)
    return NeuralHMMTagger(MarginalExpectation(), **args)


def _hmm_data() -> SyntheticHMMDataModule:
    return SyntheticHMMDataModule(num_train=32, num_val=16, num_test=16, batch_size=8, seed=0)


def _logged(model, monkeypatch) -> dict[str, dict]:
    """Every ``self.log`` call of a validation run: name → its keyword arguments."""
    calls: dict[str, dict] = {}
    original = LatentVariableModel.log

    def record(self, name, value, *args, **kwargs):
        calls[name] = kwargs
        return original(self, name, value, *args, **kwargs)

    monkeypatch.setattr(LatentVariableModel, "log", record)
    return calls


def test_every_evaluation_metric_of_the_tagger_is_reduced_over_the_ranks(monkeypatch) -> None:
    data = _hmm_data()
    data.setup("fit")
    model = _tagger(input_dim=data.input_dim)
    calls = _logged(model, monkeypatch)
    quiet_trainer().validate(model, datamodule=data, verbose=False)
    names = {n for n in calls if n.startswith("val/")}
    # The ELBO's terms, the exact likelihood, the clusterings' scores and the per-word likelihood.
    assert {"val/neg_elbo", "val/nll", "val/m1_states", "val/vm_states", "val/ppl"} <= names
    assert all(calls[n].get("sync_dist") for n in names), {n: calls[n] for n in names}


def test_m2_logs_its_accuracy_through_the_base(tmp_path, monkeypatch) -> None:
    data_dir = write_tiny_mnist(tmp_path / "data", num_train=200, num_test=32)
    data = SemiSupervisedMNISTDataModule(data_dir=str(data_dir), num_labels=20, val_size=32,
                                         batch_size=16)  # fmt: skip
    model = M2(StraightThrough(), latent_dim=4, hidden_sizes=(16,))
    calls = _logged(model, monkeypatch)
    (metrics,) = quiet_trainer().validate(model, datamodule=data, verbose=False)
    assert calls["val/accuracy"].get("sync_dist")
    assert 0 <= metrics["val/accuracy"] <= 1


def _tags(logs) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for path in logs.rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"images": 0, "tensors": 0})
        events.Reload()
        for kind, names in events.Tags().items():
            if isinstance(names, list):
                tags.update(f"{kind}:{name}" for name in names)
    return tags


def test_the_figures_callback_draws_the_taggers_confusion_and_sentences(tmp_path) -> None:
    data = _hmm_data()
    data.setup("fit")
    model = _tagger(input_dim=data.input_dim)
    trainer = quiet_trainer(
        max_epochs=1, logger=TensorBoardLogger(tmp_path), callbacks=[ValidationFigures(2)]
    )
    trainer.fit(model, datamodule=data)
    tags = _tags(tmp_path)
    assert "images:val/confusion_states" in tags  # a matplotlib figure
    assert any(t.startswith("tensors:val/tags") for t in tags)  # markdown text


def test_the_figures_callback_draws_the_trees_of_listops(tmp_path) -> None:
    test = tmp_path / "test.tsv"
    test.write_text("1\t( ( ( [SM 6 ) 5 ) ] )\n7\t7\n")
    data = ListOpsDataModule(num_train=16, num_val=16, test_file=str(test), max_length=12,
                             batch_size=8)  # fmt: skip
    model = LatentTreeClassifier(Reinforce(2), hidden_dim=8)
    trainer = quiet_trainer(max_epochs=1, logger=TensorBoardLogger(tmp_path / "logs"),
                            callbacks=[ValidationFigures(2)])  # fmt: skip
    trainer.fit(model, datamodule=data)
    tags = _tags(tmp_path / "logs")
    assert "images:val/trees" in tags and any(t.startswith("tensors:val/trees") for t in tags)


def test_a_tagger_variant_is_a_config_and_its_checkpoint_rebuilds_its_encoder(tmp_path) -> None:
    config = "configs/tagger/hmm.yaml"
    args = ["fit", "--config", config, "--data=zoo.data.hmm.SyntheticHMMDataModule",
            "--data.num_train=32", "--data.num_val=8", "--data.num_test=8", "--data.batch_size=8",
            "--model.gold_tags=[states]", "--model.num_tags=3", "--model.embedding_dim=8",
            "--model.hidden_size=8", "--model.warmup_steps=0",
            "--model.encoder=ConvEncoder", "--model.encoder.embedding_dim=8",
            "--model.encoder.kernel_size=5", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=2", *quiet_trainer_args()]  # fmt: skip
    cli = ZooCLI(args)
    assert type(cli.model.encoder) is ConvEncoder and cli.model.encoder.kernel_size == 5
    (path,) = tmp_path.rglob("last.ckpt")
    loaded = NeuralHMMTagger.load_from_checkpoint(path)
    assert type(loaded.encoder) is ConvEncoder and loaded.encoder.kernel_size == 5
    batch = next(iter(cli.datamodule.val_dataloader()))
    torch.testing.assert_close(loaded.eval()(batch), cli.model.eval()(batch))


def test_the_hmm_posterior_trains_on_the_marginal_likelihood() -> None:
    data = _hmm_data()
    data.setup("fit")
    model = _tagger(input_dim=data.input_dim, encoder=HMMPosterior())
    batch = next(iter(data.train_dataloader()))
    assert not list(model.encoder.parameters())
    # The loss is −log p(x), the forward algorithm's value.
    torch.testing.assert_close(model(batch), -model.exact_posterior(batch).log_partition())


def test_an_encoder_that_is_not_a_chain_encoder_is_refused() -> None:
    with pytest.raises(TypeError, match="encoder must be a ChainEncoder"):
        _tagger(encoder=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="ConvEncoder: kernel_size must be an odd integer"):
        ConvEncoder(kernel_size=4)


def test_an_estimator_that_does_not_apply_is_refused_when_fitting_starts() -> None:
    from tests.models.cases import MODELS
    from zoo.estimators import DisARM
    from zoo.estimators.compatibility import IncompatibleEstimatorError
    from zoo.models import VAE, CategoricalLatent

    model = VAE(DisARM(), CategoricalLatent(2, 3), input_dim=16, hidden_sizes=(8,))
    with pytest.raises(IncompatibleEstimatorError, match="DisARM needs a Bernoulli structure"):
        quiet_trainer(max_steps=1).fit(model, datamodule=MODELS[0].data())
