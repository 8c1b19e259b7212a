"""TemperatureAnnealing follows Jang et al.'s schedule, reaches nested estimators and resumes; SampleImages logs grids."""

from __future__ import annotations

import logging
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.models.cases import MODELS, quiet_trainer
from zoo.callbacks import SampleImages, TemperatureAnnealing, tempered_estimators
from zoo.estimators import GumbelSoftmax, MovingAverageBaseline, Reinforce, STGumbelSoftmax
from zoo.models import SBN, VAE, BernoulliLatent, image_grid

SBN_CASE = MODELS[2]


def trainer(tmp_path, **kwargs) -> L.Trainer:
    return quiet_trainer(**{"limit_val_batches": 0, "default_root_dir": tmp_path, **kwargs})


def test_schedule_is_jangs() -> None:
    schedule = TemperatureAnnealing(rate=1e-4, min_temperature=0.5, every_n_steps=500)
    schedule.initial_temperature = 1.0
    assert schedule.temperature_at(0) == 1.0
    assert schedule.temperature_at(499) == 1.0  # constant between updates
    assert schedule.temperature_at(500) == pytest.approx(math.exp(-0.05))
    assert schedule.temperature_at(1999) == pytest.approx(math.exp(-0.15))
    assert schedule.temperature_at(10**6) == 0.5


def test_the_floor_never_raises_the_temperature() -> None:
    # A fixed τ below τ_min (the CLI's default schedule has r = 0, τ_min = 0.5) stays put.
    fixed = TemperatureAnnealing(rate=0.0, min_temperature=0.5, every_n_steps=1)
    fixed.initial_temperature = 0.1
    assert [fixed.temperature_at(t) for t in (0, 1, 10**6)] == [0.1, 0.1, 0.1]
    decaying = TemperatureAnnealing(rate=1e-3, min_temperature=0.5, every_n_steps=1)
    decaying.initial_temperature = 0.2
    assert decaying.temperature_at(10**4) == 0.2


def test_sets_every_tempered_estimator_including_nested_ones(tmp_path) -> None:
    torch.manual_seed(0)
    # Outer and inner estimators both tempered, from different starting τ.
    model = SBN(
        GumbelSoftmax(temperature=2.0),
        BernoulliLatent(3),
        inner_estimator=STGumbelSoftmax(temperature=5.0),
        input_dim=8,
    )
    callback = TemperatureAnnealing(rate=0.1, min_temperature=0.3, every_n_steps=2)
    trainer(tmp_path, max_steps=7, callbacks=[callback]).fit(model, SBN_CASE.data())
    expected = max(0.3, 2.0 * math.exp(-0.1 * 6))  # τ₀ from the outer estimator; last update at 6
    assert [e.temperature for e in tempered_estimators(model)] == pytest.approx([expected] * 2)
    assert callback.last_update_step == 6


def test_leaves_estimators_without_temperature_alone(tmp_path) -> None:
    case = MODELS[0]
    model = case.make(Reinforce(baseline=MovingAverageBaseline()))
    callback = TemperatureAnnealing(every_n_steps=1)
    trainer(tmp_path, max_steps=2, callbacks=[callback]).fit(model, case.data())
    assert tempered_estimators(model) == []
    assert callback.initial_temperature is None


def test_resume_continues_the_schedule_where_it_stopped(tmp_path) -> None:
    torch.manual_seed(0)
    case = MODELS[0]

    def fit(max_steps: int, ckpt_path: str | None) -> tuple[VAE, TemperatureAnnealing]:
        model = case.make(GumbelSoftmax(temperature=1.0))
        callback = TemperatureAnnealing(rate=0.1, min_temperature=0.01, every_n_steps=2)
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_last=True)
        run = trainer(
            tmp_path,
            max_steps=max_steps,
            callbacks=[callback, checkpoint],
            enable_checkpointing=True,
        )
        run.fit(model, case.data(num_train=256), ckpt_path=ckpt_path)
        return model, callback

    fit(5, None)  # anneals to exp(-0.4) at step 4
    model, callback = fit(9, str(tmp_path / "ckpt" / "last.ckpt"))
    # τ₀ comes from the checkpoint (1.0), not from the annealed estimator (exp(-0.4)).
    assert callback.initial_temperature == 1.0
    assert callback.last_update_step == 8
    assert model.estimator.temperature == pytest.approx(math.exp(-0.8))


def test_state_dict_round_trips() -> None:
    callback = TemperatureAnnealing()
    callback.initial_temperature, callback.last_update_step = 0.9, 1500
    fresh = TemperatureAnnealing()
    fresh.load_state_dict(callback.state_dict())
    assert (fresh.initial_temperature, fresh.last_update_step) == (0.9, 1500)


@pytest.mark.parametrize("kwargs", [{"rate": -1.0}, {"min_temperature": 0.0}, {"every_n_steps": 0}])
def test_bad_schedules_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TemperatureAnnealing(**kwargs)


# -------------------------------------------------------------------- images
def test_image_grid_places_images_in_rows() -> None:
    images = torch.stack([torch.full((2, 3), float(i)) for i in range(1, 6)])  # 5 images 2×3
    grid = image_grid(images, ncol=2, padding=1)
    assert grid.shape == (1, 3 * 3 + 1, 2 * 4 + 1)
    assert grid[0, 1, 1] == 1 and grid[0, 1, 5] == 2 and grid[0, 4, 1] == 3 and grid[0, 7, 1] == 5
    assert grid[0, 7, 5] == 0  # the empty sixth cell and the borders stay black


def test_sample_images_logs_grids_to_tensorboard(tmp_path) -> None:
    torch.manual_seed(0)
    case = MODELS[0]
    model = case.make(GumbelSoftmax())
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    run = trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=logger,
        callbacks=[SampleImages(num_images=4, image_shape=(4, 4))],
    )
    run.fit(model, case.data())
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"val/reconstructions", "val/samples"}
    steps = [image.step for image in events.Images("val/samples")]
    assert steps == [2, 4]  # after each validation, not during the sanity check
    reconstructions = events.Images("val/reconstructions")[-1]
    assert (reconstructions.width, reconstructions.height) == (8 * 6 + 2, 6 + 2)  # 8 pictures


def test_sample_images_without_tensorboard_says_so_at_debug_level(tmp_path, caplog) -> None:
    case = MODELS[0]
    model = case.make(GumbelSoftmax())
    run = trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[SampleImages(image_shape=(4, 4))],
    )
    with caplog.at_level(logging.DEBUG, logger="zoo.callbacks"):
        run.fit(model, case.data())
    assert any("no TensorBoardLogger" in r.getMessage() for r in caplog.records)
