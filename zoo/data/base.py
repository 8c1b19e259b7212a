"""Shared pieces of the datamodules: the data root, a batched dataset, a base class.

The datasets here keep a whole split as one tensor and hand out whole batches at
once (``__getitems__``), so a batch costs one indexing operation instead of
``batch_size`` Python calls and a stack. Batches are dicts of float32 tensors:
``{"x": (B, D)}``, or ``{"x": (B, D // 2), "y": (B, D - D // 2)}`` when the split
is ``"halves"`` (the structured-output task of Tang & Salakhutdinov / Raiko et
al.: predict the lower half of an image from its upper half).

A run resumed from a checkpoint sees the batches an uninterrupted run would
have seen: the training order comes from a `ResumableBatchSampler`, whose
state (the shuffling generator at the start of the epoch and the batches the
model has consumed) Lightning saves with the checkpoint through the loader's
``state_dict``; under a trainer, dynamic binarization is drawn when a batch
reaches the model (``on_after_batch_transfer``), from torch's global generator,
whose state the model's checkpoint keeps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)

ENV_DATA_DIR = "ZOO_DATA_DIR"
"""Environment variable that names the dataset root when ``data_dir`` is not given."""

DEFAULT_DATA_DIR = "data"
"""The dataset root when neither ``data_dir`` nor ``ZOO_DATA_DIR`` is given (relative to the cwd)."""


class DataNotFoundError(FileNotFoundError):
    """A data set is neither under the dataset root nor reachable on the Hugging Face hub.

    The message names the data set, the files expected and where the dataset
    root came from (``data_dir``, ``ZOO_DATA_DIR`` or the default ``data/``).
    """


class DataError(ValueError):
    """The data is there but cannot be used: a malformed, truncated or empty file, or
    settings that leave a split without examples. The message names the file (and
    line) or the argument, and what was expected."""


Split = Literal["full", "halves"]
SPLITS: tuple[str, ...] = ("full", "halves")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the dataset root.

    Args:
        data_dir: An explicit directory. When ``None`` (or empty), the environment
            variable ``ZOO_DATA_DIR`` is used, and when that is unset or empty,
            ``data/`` relative to the current working directory.

    Returns:
        The directory as a ``Path`` (``~`` expanded; it need not exist).

    Raises:
        DataNotFoundError: the path names a file, saying where it came from.
    """
    given = data_dir
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise DataNotFoundError(
            f"the dataset root {root} ({describe_data_dir(given)}) is a file, not a directory; "
            f"point it at the folder that holds the data sets (layout in data/README.md)"
        )
    return root


def describe_data_dir(data_dir: str | os.PathLike[str] | None) -> str:
    """Say where the dataset root came from, for error messages."""
    if data_dir is not None and str(data_dir) != "":
        return f"from data_dir={str(data_dir)!r}"
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return f"from the environment variable {ENV_DATA_DIR}={env!r}"
    return f"the default {DEFAULT_DATA_DIR + '/'!r} (data_dir= not given, {ENV_DATA_DIR} not set)"


class BinaryImageDataset(Dataset):
    """A split of binary (or to-be-binarized) vectors, held as one uint8 tensor.

    Indexing with a list of indices (what ``DataLoader`` does through
    ``__getitems__``) returns a whole batch dict at once; indexing with an int
    returns one example (a dict of 1-D tensors).

    Args:
        data: ``(N, D)`` uint8 tensor. Values in {0, 1}, or grayscale intensities
            in 0..255 when ``dynamic`` is true.
        dynamic: If true, every access draws a fresh binarization
            ``x ~ Bernoulli(data / 255)`` with torch's global RNG (in a worker
            process, PyTorch seeds that RNG per worker from the loader's
            generator, so runs are reproducible and workers differ).
        split: ``"full"`` for ``{"x": all D}``; ``"halves"`` for
            ``{"x": first D // 2, "y": the rest}``.

    With ``defer_binarization`` set (a datamodule under a trainer does it), a
    dynamic set returns the intensities ``data / 255`` and leaves the draw to
    `binarize` at the moment the batch is used.
    """

    def __init__(self, data: Tensor, *, dynamic: bool = False, split: Split = "full") -> None:
        if data.dtype != torch.uint8 or data.dim() != 2:
            raise ValueError(
                f"data must be a 2-D uint8 tensor (N, D), got dtype {data.dtype} "
                f"and shape {tuple(data.shape)}"
            )
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.data = data
        self.dynamic = dynamic
        self.split = split
        self.defer_binarization = False

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def dim(self) -> int:
        """Number of pixels per example (D)."""
        return self.data.shape[1]

    def _format(self, rows: Tensor) -> dict[str, Tensor]:
        if self.dynamic and self.defer_binarization:
            x = rows.to(torch.float32).div_(255.0)
        elif self.dynamic:
            x = torch.bernoulli(rows.to(torch.float32).div_(255.0))
        else:
            x = rows.to(torch.float32)
        if self.split == "halves":
            half = x.shape[-1] // 2
            return {"x": x[..., :half].contiguous(), "y": x[..., half:].contiguous()}
        return {"x": x}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self._format(self.data[index])

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        return self._format(self.data[torch.as_tensor(indices, dtype=torch.long)])


def binarize(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """One Bernoulli draw of every pixel of a batch of intensities in [0, 1] (torch's global RNG)."""
    return {key: torch.bernoulli(value) for key, value in batch.items()}


class ResumableBatchSampler(BatchSampler):
    """A `BatchSampler` that resumes in the middle of an epoch.

    ``state_dict()`` holds the state of the sampler's generator at the start of
    the current epoch (a `RandomSampler` with a ``generator``; a
    `DistributedSampler` needs none, its order is a function of seed and epoch)
    and ``consumed``, the batches of this epoch the model has used (the
    datamodule counts them as they reach the model; Lightning fetches one batch
    ahead, so the batches drawn are not the batches used). After
    ``load_state_dict`` the next epoch draws the same order and starts at
    batch ``consumed``. At the end of an epoch the state is the generator's
    current one and 0: the next epoch starts afresh. The constructor is
    `BatchSampler`'s, so Lightning can rebuild it around a `DistributedSampler`.

    Args:
        sampler: the order of the indices (`RandomSampler`, `SequentialSampler`, ...).
        batch_size: indices per batch.
        drop_last: drop a last, smaller batch.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.consumed = 0
        self._epoch_start: Tensor | None = None
        self._resume: dict[str, Any] | None = None

    def _generator(self) -> torch.Generator | None:
        return getattr(self.sampler, "generator", None)

    def __iter__(self):
        start = 0
        generator = self._generator()
        if self._resume is not None:
            state, self._resume = self._resume, None
            if generator is not None and state["generator"] is not None:
                generator.set_state(state["generator"])
            start = int(state["consumed"])
        self._epoch_start = None if generator is None else generator.get_state()
        self.consumed = start
        for i, batch in enumerate(super().__iter__()):
            if i >= start:  # the batches before were used before the checkpoint
                yield batch

    def state_dict(self) -> dict[str, Any]:
        if self._resume is not None:  # loaded, not yet iterated: pass it on unchanged
            return dict(self._resume)
        generator = self._generator()
        if self._epoch_start is None or self.consumed >= len(self):
            return {
                "generator": None if generator is None else generator.get_state(),
                "consumed": 0,
            }
        return {"generator": self._epoch_start, "consumed": self.consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        consumed = state_dict.get("consumed")
        if (
            isinstance(consumed, bool)
            or not isinstance(consumed, int)
            or not 0 <= consumed <= len(self)
        ):
            raise ValueError(
                f"ResumableBatchSampler: consumed must be an integer in [0, {len(self)}], "
                f"got {consumed!r} (a checkpoint of a different data set or batch size?)"
            )
        self._resume = {"generator": state_dict.get("generator"), "consumed": consumed}


class ResumableLoader(DataLoader):
    """A `DataLoader` over a `ResumableBatchSampler` with its ``state_dict``, which Lightning checkpoints."""

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state_dict)


def collate_batch(batch: Any) -> Any:
    """Collate for ``BinaryImageDataset`` loaders.

    A dict is already a batch (from ``__getitems__``) and passes through; a list
    of examples (any other dataset) goes through ``default_collate``.
    """
    if isinstance(batch, dict):
        return batch
    return default_collate(batch)


class ZooDataModule(L.LightningDataModule):
    """Base of the binary-vector datamodules: loaders, the split option, dims.

    Subclasses fill ``self.train_set``, ``self.val_set`` and ``self.test_set``
    (``BinaryImageDataset``s) in ``setup`` and set ``self._dim`` (pixels per
    example) in ``__init__``.

    Args:
        split: ``"full"`` (batch ``{"x": (B, D)}``) or ``"halves"`` (batch
            ``{"x": (B, D // 2), "y": (B, D - D // 2)}``).
        batch_size: Examples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: Seeds the shuffling of the training set.
    """

    def __init__(
        self,
        split: Split = "full",
        batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("num_workers", num_workers, minimum=0)
        _check_int("seed", seed, minimum=None)
        self.split = split
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._dim = 0
        self.train_set: BinaryImageDataset | None = None
        self.val_set: BinaryImageDataset | None = None
        self.test_set: BinaryImageDataset | None = None
        self._shuffle_generator: torch.Generator | None = None

    @property
    def input_dim(self) -> int:
        """Width of ``batch["x"]``: D, or D // 2 for ``split="halves"``."""
        return self._dim // 2 if self.split == "halves" else self._dim

    @property
    def output_dim(self) -> int:
        """Width of what a model predicts: D (reconstruct x), or D - D // 2 (``batch["y"]``)."""
        return self._dim - self._dim // 2 if self.split == "halves" else self._dim

    def _loader(self, dataset: BinaryImageDataset | None, stage: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.{stage}_dataloader() called before setup(); "
                f"call prepare_data() and setup() first (a Trainer does this)"
            )
        if shuffle:
            # One generator for the life of the datamodule: reloading the loader
            # continues the stream instead of replaying the first epoch's order.
            if self._shuffle_generator is None:
                self._shuffle_generator = torch.Generator().manual_seed(self.seed)
            order: Sampler[int] = RandomSampler(dataset, generator=self._shuffle_generator)
        else:
            order = SequentialSampler(dataset)
        batches = ResumableBatchSampler(order, self.batch_size)
        # Under a trainer the dynamic binarization is drawn in on_after_batch_transfer.
        dataset.defer_binarization = self.trainer is not None
        return ResumableLoader(
            dataset,
            batch_sampler=batches,
            # Its own generator for the workers' seeds: creating an iterator then
            # leaves torch's global generator alone (a resumed run draws what an
            # uninterrupted one draws).
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_batch,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the training batches the model uses, and draw their dynamic binarization."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return batch
        # The loader Lightning uses (rebuilt around a DistributedSampler under DDP).
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.batch_sampler.consumed += 1
        if self.train_set is not None and self.train_set.dynamic and isinstance(batch, dict):
            batch = binarize(batch)
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "predict", shuffle=False)


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
