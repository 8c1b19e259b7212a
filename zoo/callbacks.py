r"""Callbacks: temperature annealing, curricula, pictures for TensorBoard, prediction files.

* `TemperatureAnnealing`: Jang et al. (2017)'s schedule
  τ = max(τ_min, τ₀ · exp(−r · t)) at training step t, set every N steps on
  every tempered estimator of the model (nested ones included).
* `SampleImages`: the model's pictures (reconstructions, prior samples,
  completions) as image grids in TensorBoard after every validation.
* `LengthCurriculum`: training expressions up to a first length until a
  validation metric passes a threshold, then up to the next length, ...
* `InducedTagWriter`: ``predict`` writes the tagger's induced tags into CoNLL-U.
* `ZooProgressBar`: Lightning's progress bar, drawn every N training steps
  but after every validation and test batch, so a slow evaluation (the test's
  importance-sampled likelihood with m = 1000) shows its time left.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from zoo.data.ud import Sentence
from zoo.estimators import BaselineSizeError, Estimator
from zoo.models.components import image_grid

__all__ = [
    "InducedTagWriter",
    "LengthCurriculum",
    "SampleImages",
    "TemperatureAnnealing",
    "ValidationFigures",
    "ZooCheckpoint",
    "ZooProgressBar",
    "tempered_estimators",
]

log = logging.getLogger(__name__)


def tempered_estimators(module: torch.nn.Module) -> list[Estimator]:
    """Every estimator inside ``module`` that has a temperature (outer and nested ones)."""
    return [m for m in module.modules() if isinstance(m, Estimator) and hasattr(m, "temperature")]


class TemperatureAnnealing(L.Callback):
    """τ = max(min(τ_min, τ₀), τ₀ · exp(−r · t)), updated every N training steps (Jang et al. 2017).

    The floor τ_min only stops the decay: it never raises τ above τ₀ (a fixed
    τ₀ = 0.1 with r = 0, the command line's default schedule, stays 0.1).

    At every step t that is a multiple of ``every_n_steps`` (t = 0 included),
    the temperature of every tempered estimator in the model (``GumbelSoftmax``,
    ``STGumbelSoftmax``, ``PerturbAndMAP``, also when nested, as in the SBN) is
    set to the schedule's value at t; estimators without a temperature are
    left alone. The model logs the value as ``train/temperature`` (each tempered
    estimator reports its temperature in its statistics).

    The paper anneals with r ∈ {1e-5, 1e-4} every N ∈ {500, 1000} steps from τ₀ = 1
    down to τ_min = 0.5. With r = 1e-4 τ reaches 0.5 after about 6,900 steps
    (14 epochs of 50,000 images in batches of 100); r = 1e-5 is ten times slower.

    The schedule is a function of the global step, which a checkpoint restores;
    the callback's own state (τ₀ and the step of the last update) is saved too,
    so a resumed run continues the schedule where it stopped.

    Args:
        rate: r, the decay rate per step.
        min_temperature: τ_min.
        every_n_steps: N, steps between updates.
        initial_temperature: τ₀; None: the temperature the (first) tempered estimator
            has when training starts.

    Raises:
        ValueError: r < 0, τ_min ≤ 0, N < 1, τ₀ ≤ 0.
    """

    def __init__(
        self,
        rate: float = 1e-4,
        min_temperature: float = 0.5,
        every_n_steps: int = 500,
        initial_temperature: float | None = None,
    ) -> None:
        super().__init__()
        if not float(rate) >= 0:
            raise ValueError(f"rate must be ≥ 0, got {rate!r}")
        if not float(min_temperature) > 0:
            raise ValueError(f"min_temperature must be > 0, got {min_temperature!r}")
        if (
            isinstance(every_n_steps, bool)
            or not isinstance(every_n_steps, int)
            or every_n_steps < 1
        ):
            raise ValueError(f"every_n_steps must be an integer ≥ 1, got {every_n_steps!r}")
        if initial_temperature is not None and not float(initial_temperature) > 0:
            raise ValueError(f"initial_temperature must be > 0, got {initial_temperature!r}")
        self.rate = float(rate)
        self.min_temperature = float(min_temperature)
        self.every_n_steps = every_n_steps
        self.initial_temperature = (
            None if initial_temperature is None else float(initial_temperature)
        )
        self.last_update_step: int | None = None

    def temperature_at(self, step: int) -> float:
        """The schedule at step t, as set at the last update step ≤ t."""
        if self.initial_temperature is None:
            raise RuntimeError("TemperatureAnnealing: τ₀ is not known before training starts")
        t = step - step % self.every_n_steps
        floor = min(self.min_temperature, self.initial_temperature)
        return max(floor, self.initial_temperature * math.exp(-self.rate * t))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        estimators = tempered_estimators(pl_module)
        if not estimators:
            log.debug(
                "TemperatureAnnealing: %s has no tempered estimator", type(pl_module).__name__
            )
        elif self.initial_temperature is None:
            self.initial_temperature = float(estimators[0].temperature)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.initial_temperature is None or step % self.every_n_steps != 0:
            return
        if step == self.last_update_step:  # several batches per optimizer step
            return
        value = self.temperature_at(step)
        for estimator in tempered_estimators(pl_module):
            estimator.temperature = value
        self.last_update_step = step

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial_temperature": self.initial_temperature,
            "last_update_step": self.last_update_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial_temperature = state_dict["initial_temperature"]
        self.last_update_step = state_dict["last_update_step"]


class LengthCurriculum(L.Callback):
    """Train on short inputs first: lengths ≤ ``lengths[0]`` until ``monitor`` ≥ ``threshold``, then ≤ ``lengths[1]``, ...

    The datamodule must have a ``train_length_limit`` attribute that its
    training batches obey (`zoo.data.listops.ListOpsDataModule`); the limit is
    checked after every validation and logged as ``train/max_length``. The
    stage reaches checkpoints, so a resumed run goes on at the same length.

    Args:
        lengths: increasing length limits; the last one is kept to the end.
        monitor: the validation metric that decides when to move on.
        threshold: the value of ``monitor`` (higher is better) that moves on.

    Raises:
        ValueError: no lengths, lengths not increasing or below 1.
    """

    def __init__(
        self,
        lengths: tuple[int, ...] = (30, 60, 100),
        monitor: str = "val/accuracy",
        threshold: float = 0.9,
    ) -> None:
        lengths = tuple(int(n) for n in lengths)
        if (
            not lengths
            or lengths[0] < 1
            or any(a >= b for a, b in zip(lengths[:-1], lengths[1:], strict=True))
        ):
            raise ValueError(f"lengths must be increasing integers ≥ 1, got {lengths!r}")
        self.lengths, self.monitor, self.threshold = lengths, monitor, float(threshold)
        self.stage = 0

    @staticmethod
    def _datamodule(trainer: L.Trainer) -> Any:
        data = trainer.datamodule
        if data is None or not hasattr(data, "train_length_limit"):
            raise TypeError(
                "LengthCurriculum needs a datamodule with a train_length_limit attribute "
                f"(ListOpsDataModule), got {type(data).__name__}"
            )
        return data

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._datamodule(trainer).train_length_limit = self.lengths[self.stage]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.stage + 1 >= len(self.lengths):
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            # A length bucket with no validation example is not logged: stay, and say so.
            logged = ", ".join(k for k in sorted(trainer.callback_metrics) if k.startswith("val/"))
            rank_zero_warn(
                f"LengthCurriculum monitors {self.monitor!r}, which this validation did not log "
                f"(logged: {logged or 'nothing'}); staying at lengths ≤ {self.lengths[self.stage]}"
            )
            return
        if float(value) >= self.threshold:
            self.stage += 1
            self._datamodule(trainer).train_length_limit = self.lengths[self.stage]
            log.info("LengthCurriculum: training on lengths ≤ %d", self.lengths[self.stage])

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            pl_module.log("train/max_length", float(self.lengths[self.stage]), on_step=True)

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage = int(state_dict["stage"])


class SampleImages(L.Callback):
    """Log the model's pictures (``LatentVariableModel.images``) to TensorBoard after validation.

    From the first validation batch it asks the model for named picture
    batches (for a VAE, inputs next to reconstructions and prior samples; for
    the SBN, images completed from their upper halves), tiles each into one
    grid and logs it as ``val/<name>`` at the current step. With no
    TensorBoard logger it does nothing (and says so at debug level).

    Args:
        num_images: examples taken from the first validation batch.
        image_shape: (height, width) each flat vector is shown as.
        every_n_epochs: log after every n-th validation.

    Raises:
        ValueError: sizes below 1.
    """

    def __init__(
        self,
        num_images: int = 16,
        image_shape: tuple[int, int] = (28, 28),
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__()
        if num_images < 1 or every_n_epochs < 1 or min(image_shape) < 1:
            raise ValueError(
                f"num_images, every_n_epochs and image_shape must be ≥ 1, got {num_images}, "
                f"{every_n_epochs} and {tuple(image_shape)}"
            )
        self.num_images = num_images
        self.image_shape = tuple(image_shape)
        self.every_n_epochs = every_n_epochs
        self._batch: dict[str, Tensor] | None = None

    def _logger(self, trainer: L.Trainer) -> TensorBoardLogger | None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger
        return None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and isinstance(batch, dict):
            self._batch = {k: v[: self.num_images].clone() for k, v in batch.items()}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batch, self._batch = self._batch, None
        if trainer.sanity_checking or batch is None or trainer.current_epoch % self.every_n_epochs:
            return
        logger = self._logger(trainer)
        if logger is None:
            log.debug("SampleImages: no TensorBoardLogger among the loggers; no images logged")
            return
        images_fn = getattr(pl_module, "images", None)
        if images_fn is None:
            log.debug("SampleImages: %s has no images() method", type(pl_module).__name__)
            return
        height, width = self.image_shape
        for name, images in images_fn(batch, self.num_images).items():
            if images.shape[-1] != height * width:
                log.debug(
                    "SampleImages: %s of width %d cannot be shown as %dx%d images",
                    name,
                    images.shape[-1],
                    height,
                    width,
                )
                continue
            pictures = images.detach().float().clamp(0, 1).reshape(-1, height, width).cpu()
            grid = image_grid(pictures, ncol=8)
            logger.experiment.add_image(f"val/{name}", grid, global_step=trainer.global_step)


class ZooProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar: the training bar every ``refresh_rate`` steps, evaluation bars every batch.

    A test batch with m = 1000 importance samples takes seconds, so the test bar
    (with tqdm's rate and time left) moves after each one; the training bar,
    whose steps take milliseconds, keeps a coarser rate.

    Args:
        refresh_rate: training steps between redraws of the training bar.
    """

    def __init__(self, refresh_rate: int = 20) -> None:
        super().__init__(refresh_rate=refresh_rate)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        bar = self.val_progress_bar
        bar.n = batch_idx + 1
        bar.refresh()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        bar = self.test_progress_bar
        bar.n = batch_idx + 1
        bar.refresh()


class ValidationFigures(L.Callback):
    """Log the model's figures and texts about one validation batch (``figures``) to TensorBoard.

    After each validation it asks the model (`LatentVariableModel.figures`) for
    named matplotlib figures and markdown texts about the first validation
    batch (or the middle one: the datamodules sort evaluation batches by
    length, so the middle batch holds typical examples) and what the model's
    step output for it: ListOps draws the expressions' gold and induced
    trees, the tagger its confusion with the gold tags and tagged sentences.
    Rank 0 writes them; with no TensorBoard logger it does nothing.

    Args:
        num_examples: examples of the batch shown.
        batch: ``"first"`` or ``"middle"``: which validation batch.
        every_n_epochs: log after every n-th validation.

    Raises:
        ValueError: a count below 1 or an unknown ``batch``.
    """

    def __init__(self, num_examples: int = 4, batch: str = "first", every_n_epochs: int = 1) -> None:
        super().__init__()
        if num_examples < 1 or every_n_epochs < 1:
            raise ValueError(
                f"num_examples and every_n_epochs must be ≥ 1, got {num_examples} and "
                f"{every_n_epochs}"
            )
        if batch not in ("first", "middle"):
            raise ValueError(f"batch must be 'first' or 'middle', got {batch!r}")
        self.num_examples = num_examples
        self.batch = batch
        self.every_n_epochs = every_n_epochs
        self._kept: tuple[dict[str, Any], dict[str, Any]] | None = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0 or not isinstance(batch, dict):
            return
        count = trainer.num_val_batches
        count = int(count[0] if isinstance(count, list) else count)
        wanted = 0 if self.batch == "first" else count // 2
        if batch_idx == wanted:
            self._kept = (batch, outputs if isinstance(outputs, dict) else {})

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        kept, self._kept = self._kept, None
        if trainer.sanity_checking or kept is None or trainer.current_epoch % self.every_n_epochs:
            return
        figures_fn = getattr(pl_module, "figures", None)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if figures_fn is None or not loggers or trainer.global_rank != 0:
            return
        for name, values in figures_fn(*kept, self.num_examples).items():
            for value in values if isinstance(values, list) else [values]:
                for logger in loggers:
                    if isinstance(value, str):
                        logger.experiment.add_text(f"val/{name}", value, trainer.global_step)
                    else:
                        logger.experiment.add_figure(
                            f"val/{name}", value, trainer.global_step, close=False
                        )
                if not isinstance(value, str):
                    import matplotlib.pyplot as plt

                    plt.close(value)


class ZooCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, with names that match the step and a plain stop message.

    * ``{step}`` in a file name is the trainer's global step, the step the
      checkpoint resumes from (Lightning takes the last *logged* ``step``, which
      lags behind by up to ``log_every_n_steps``).
    * When training stops on an exception (Ctrl-C, SIGTERM, an error), it says
      in one line why, at which step, where the checkpoint is and how to resume.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.trainer = trainer

    def format_checkpoint_name(
        self,
        metrics: dict[str, Tensor],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            metrics = {**metrics, "step": torch.tensor(trainer.global_step)}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, BaselineSizeError):
            return  # a setting to change: nothing worth saving or resuming
        super().on_exception(trainer, pl_module, exception)
        if not (self.save_on_exception and self.last_model_path) or trainer.sanity_checking:
            return
        if isinstance(exception, KeyboardInterrupt):
            why = "by Ctrl-C"
        elif type(exception).__name__ == "SIGTERMException":
            why = "by SIGTERM"
        else:
            why = f"by {type(exception).__name__}: {exception}"
        rank_zero_info(
            f"Training stopped {why} at step {trainer.global_step}; saved {self.last_model_path}. "
            "Resume with the same command plus --ckpt_path last."
        )


class InducedTagWriter(BasePredictionWriter):
    """``predict`` writes CoNLL-U: every sentence as read, with ``Tag=<cluster>`` added to MISC.

    Sentences without their CoNLL-U lines (synthetic data) get minimal lines
    (ID, FORM and the cluster in MISC).

    Args:
        output_path: the CoNLL-U file to write (its folder is created).
        key: the MISC key of the induced tag.
    """

    def __init__(self, output_path: str = "predictions.conllu", key: str = "Tag") -> None:
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self.key = key
        self._started = False

    @property
    def partial_path(self) -> str:
        """Where the sentences go until the last batch: renamed to ``output_path`` at
        the end, removed if predicting stops early (SIGTERM, Ctrl-C, an error)."""
        return f"{self.output_path}.part"

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.output_path)), exist_ok=True)
        open(self.partial_path, "w", encoding="utf-8").close()

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        os.replace(self.partial_path, self.output_path)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.partial_path)

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:  # fmt: skip
        with open(self.partial_path, "a", encoding="utf-8") as handle:
            tags = prediction["tags"].cpu()
            sentences = prediction.get("sentences") or [None] * len(prediction["words"])
            for i, (words, sentence) in enumerate(zip(prediction["words"], sentences, strict=True)):
                if sentence is None:
                    rows = [[str(n + 1), w, *("_" * 8)] for n, w in enumerate(words)]
                    sentence = Sentence(
                        rows=rows, words=list(words), word_rows=list(range(len(words)))
                    )
                items = [f"{self.key}={int(t)}" for t in tags[i, : len(words)]]
                handle.write(sentence.to_conllu(items))
