"""SyntheticBinaryDataModule: deterministic, right shapes, usable by a Trainer."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import RandomSampler

from tests.models.cases import quiet_trainer
from zoo.data import SyntheticBinaryDataModule
from zoo.data.base import ResumableBatchSampler
from zoo.estimators import GumbelSoftmax
from zoo.models import VAE, CategoricalLatent


def make_dm(**kwargs) -> SyntheticBinaryDataModule:
    dm = SyntheticBinaryDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_shapes_and_values_full():
    dm = make_dm(num_train=50, num_val=20, num_test=10, dim=30, batch_size=16)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 20, 10)
    assert (dm.input_dim, dm.output_dim) == (30, 30)
    batches = list(dm.train_dataloader())
    assert [b["x"].shape[0] for b in batches] == [16, 16, 16, 2]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"x"}
        assert batch["x"].shape[1] == 30
        assert batch["x"].dtype == torch.float32
        assert bool(((batch["x"] == 0) | (batch["x"] == 1)).all())


def test_default_dim_is_mnist_sized():
    dm = make_dm(num_train=10, num_val=5, num_test=5)
    assert next(iter(dm.train_dataloader()))["x"].shape == (10, 784)


def test_shapes_halves_odd_dim():
    dm = make_dm(num_train=8, num_val=4, num_test=4, dim=21, split="halves", batch_size=4)
    assert (dm.input_dim, dm.output_dim) == (10, 11)
    full = make_dm(num_train=8, num_val=4, num_test=4, dim=21, batch_size=4)
    parts = next(iter(dm.val_dataloader()))
    whole = next(iter(full.val_dataloader()))["x"]
    assert set(parts) == {"x", "y"}
    assert parts["x"].shape == (4, 10)
    assert parts["y"].shape == (4, 11)
    assert torch.equal(torch.cat([parts["x"], parts["y"]], dim=1), whole)


def test_deterministic_given_seed():
    a = make_dm(num_train=40, num_val=10, num_test=10, dim=16, batch_size=8, seed=1)
    b = make_dm(num_train=40, num_val=10, num_test=10, dim=16, batch_size=8, seed=1)
    c = make_dm(num_train=40, num_val=10, num_test=10, dim=16, batch_size=8, seed=2)
    for name in ("train_set", "val_set", "test_set"):
        assert torch.equal(getattr(a, name).data, getattr(b, name).data)
    assert not torch.equal(a.train_set.data, c.train_set.data)
    order_a = [x["x"] for x in a.train_dataloader()]
    order_b = [x["x"] for x in b.train_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(order_a, order_b, strict=True))
    # the splits are different examples, not copies of each other
    assert not torch.equal(a.val_set.data, a.test_set.data)


def test_mixture_structure():
    dm = make_dm(num_train=200, num_val=10, num_test=10, dim=64, num_prototypes=3, noise=0.0)
    assert len(torch.unique(dm.train_set.data, dim=0)) <= 3
    noisy = make_dm(num_train=200, num_val=10, num_test=10, dim=64, num_prototypes=3, noise=0.2)
    assert len(torch.unique(noisy.train_set.data, dim=0)) > 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_train": 0}, "num_train must be >= 1, got 0"),
        ({"dim": 1, "split": "halves"}, "dim must be >= 2, got 1"),
        ({"noise": 0.7}, "noise must be a float in"),
        ({"split": "thirds"}, "split.*'thirds'"),
        ({"num_prototypes": 0}, "num_prototypes must be >= 1, got 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticBinaryDataModule(**kwargs)


class _TinyModel(L.LightningModule):
    """Logistic regression of y on x: enough to run a Trainer over the loaders."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.net = torch.nn.Linear(input_dim, output_dim)
        self.seen: dict[str, int] = {"train": 0, "val": 0, "test": 0}

    def _step(self, batch, stage):
        self.seen[stage] += batch["x"].shape[0]
        logits = self.net(batch["x"])
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["y"])

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_runs_on_datamodule(tmp_path):
    dm = SyntheticBinaryDataModule(
        num_train=64, num_val=32, num_test=16, dim=20, split="halves", batch_size=16
    )
    model = _TinyModel(dm.input_dim, dm.output_dim)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.seen == {"train": 64, "val": 32, "test": 16}


def test_the_batch_sampler_resumes_in_the_middle_of_an_epoch_and_at_its_end():
    def sampler():
        order = RandomSampler(range(10), generator=torch.Generator().manual_seed(5))
        return ResumableBatchSampler(order, 3)

    straight = sampler()
    epochs = [list(straight), list(straight)]  # two epochs of 4 batches
    assert epochs[0] != epochs[1]
    assert sorted(i for batch in epochs[0] for i in batch) == list(range(10))
    # Two batches used, then a checkpoint: a new sampler goes on from the third.
    first = sampler()
    iterator = iter(first)
    next(iterator), next(iterator), next(iterator)  # the loader fetched one ahead
    first.consumed = 2  # what the datamodule counted
    resumed = sampler()
    resumed.sampler.generator.manual_seed(123)  # whatever it had: the state replaces it
    resumed.load_state_dict(first.state_dict())
    assert list(resumed) == epochs[0][2:]
    assert list(resumed) == epochs[1]  # and the next epoch is the uninterrupted run's
    # At the end of an epoch the state points at the next one.
    done = sampler()
    list(done)
    done.consumed = len(done)
    after = sampler()
    after.load_state_dict(done.state_dict())
    assert list(after) == epochs[1]
    with pytest.raises(ValueError, match="consumed must be an integer in \\[0, 4\\], got 9"):
        after.load_state_dict({"generator": done.sampler.generator.get_state(), "consumed": 9})


def test_the_loader_counts_only_the_batches_training_uses():
    dm = make_dm(num_train=64, num_val=16, num_test=16, dim=16, batch_size=16)
    model = VAE(GumbelSoftmax(), CategoricalLatent(2, 3), input_dim=16, hidden_sizes=(8,))
    trainer: L.Trainer = quiet_trainer(max_steps=3)
    trainer.fit(model, dm)
    assert trainer.train_dataloader.state_dict()["consumed"] == 3  # 4 fetched, 3 used
