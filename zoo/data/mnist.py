"""Binarized MNIST: dynamic, thresholded, or the fixed Larochelle & Murray set.

The datamodule reads the dataset root first (`zoo.data.mnist_files` has the
file formats and names), and for the grayscale images falls back on the
Hugging Face hub (`zoo.data.hub`, which fails within seconds without a
network); the fixed binarization is read from the local ``.npz`` only: no
copy on the hub is known to match Larochelle's files. Missing data raises a
``DataNotFoundError`` that lists the files it expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from zoo.data.base import (
    ENV_DATA_DIR,
    BinaryImageDataset,
    DataNotFoundError,
    Split,
    ZooDataModule,
    _check_int,
    describe_data_dir,
    resolve_data_dir,
)
from zoo.data.hub import HUB_MNIST, HUB_PROBE_TIMEOUT, load_hub_mnist, probe_hub
from zoo.data.mnist_files import (
    BINARIZED_MNIST_FILE,
    BINARIZED_MNIST_KEYS,
    IMAGE_SIDE,
    MNIST_IMAGE_FILES,
    NUM_PIXELS,
    _cached_binarized_mnist,
    _cached_mnist_images,
    _file_key,
    _tensor,
    read_binarized_mnist,
    read_idx,
    read_mnist_images,
)

__all__ = [
    "BINARIZED_MNIST_FILE",
    "BINARIZED_MNIST_KEYS",
    "HUB_MNIST",
    "HUB_PROBE_TIMEOUT",
    "IMAGE_SIDE",
    "MNIST_IMAGE_FILES",
    "NUM_PIXELS",
    "DataNotFoundError",
    "MNISTDataModule",
    "binarize_bernoulli",
    "binarize_threshold",
    "load_hub_mnist",
    "probe_hub",
    "read_binarized_mnist",
    "read_idx",
    "read_mnist_images",
]

Binarization = Literal["dynamic", "fixed", "threshold"]
Source = Literal["auto", "local", "hub"]
BINARIZATIONS: tuple[str, ...] = ("dynamic", "fixed", "threshold")
SOURCES: tuple[str, ...] = ("auto", "local", "hub")


class MNISTDataModule(ZooDataModule):
    """Binarized MNIST as batches of 0/1 float32 vectors.

    Batches are ``{"x": (B, 784)}`` for ``split="full"`` and
    ``{"x": (B, 392), "y": (B, 392)}`` for ``split="halves"`` (upper half of the
    image in, lower half out: the structured-output task for sigmoid belief
    nets). There are no labels.

    Sizes: ``dynamic`` and ``threshold`` split the 60,000 MNIST training images
    into ``60000 - val_size`` train and ``val_size`` validation images (a seeded
    permutation) and test on the 10,000 t10k images; ``fixed`` uses the standard
    50,000/10,000/10,000 split of Larochelle & Murray.

    Args:
        data_dir: Dataset root holding ``mnist/*-ubyte.gz`` and/or
            ``binarized_mnist/binarized_mnist.npz``. Default: the environment
            variable ``ZOO_DATA_DIR``, else ``data/`` in the working directory.
        binarization: ``"dynamic"``: every training batch is a fresh Bernoulli
            sample of the grayscale intensities (validation and test are sampled
            once, with a fixed seed). ``"threshold"``: pixel intensity (in [0, 1])
            ``> threshold``. ``"fixed"``: the fixed binarization of Salakhutdinov &
            Murray (2008), read from the local ``.npz``.
        split: ``"full"``: the whole image is ``x``. ``"halves"``: the first 392
            pixels are ``x``, the last 392 are ``y``.
        batch_size: Examples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        val_size: Validation images held out of the 60,000 MNIST training images
            (``dynamic``/``threshold``). ``fixed`` has its own validation set of
            10,000 and accepts only the default.
        threshold: Cut-off for ``binarization="threshold"``, in [0, 1).
        seed: Seeds the train/validation permutation, the one-off binarization of
            the validation and test sets, and the shuffling of the training set.
        limit: Keep only the first ``limit`` examples of each split (quick runs).
            ``None`` keeps everything.
        source: Where to read the data: ``"auto"`` (local files, else the hub),
            ``"local"`` (local files only), ``"hub"`` (the hub only; not for
            ``fixed``).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        binarization: Binarization = "dynamic",
        split: Split = "full",
        batch_size: int = 100,
        num_workers: int = 0,
        val_size: int = 10000,
        threshold: float = 0.5,
        seed: int = 0,
        limit: int | None = None,
        source: Source = "auto",
    ) -> None:
        super().__init__(split=split, batch_size=batch_size, num_workers=num_workers, seed=seed)
        if binarization not in BINARIZATIONS:
            raise ValueError(f"binarization must be one of {BINARIZATIONS}, got {binarization!r}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        _check_int("val_size", val_size, minimum=1)
        if binarization == "fixed":
            if val_size != 10000:
                raise ValueError(
                    f"val_size={val_size} does not apply to binarization='fixed', whose "
                    f"validation set is the standard 10000 images; leave val_size=10000"
                )
            if source == "hub":
                raise ValueError(
                    "source='hub' is not available for binarization='fixed': the fixed set is "
                    f"read from <data_dir>/{BINARIZED_MNIST_FILE}; use source='auto' or 'local'"
                )
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold must be a float in [0, 1), got {threshold!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if limit is not None:
            _check_int("limit", limit, minimum=1)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.binarization = binarization
        self.val_size = val_size
        self.threshold = float(threshold)
        self.limit = limit
        self.source = source
        self._dim = NUM_PIXELS

    # -- loading

    def expected_files(self) -> list[Path]:
        """The local files this configuration reads, under the resolved dataset root."""
        root = resolve_data_dir(self.data_dir)
        if self.binarization == "fixed":
            return [root / BINARIZED_MNIST_FILE]
        return [root / MNIST_IMAGE_FILES[s] for s in ("train", "test")]

    def _not_found(self, hub_reason: str | None) -> DataNotFoundError:
        root = resolve_data_dir(self.data_dir)
        files = self.expected_files()
        listing = "\n".join(
            f"  {p.absolute()}{'' if p.exists() else '   (missing)'}" for p in files
        )
        lines = [
            f"MNIST data for binarization={self.binarization!r} not found. Expected under the "
            f"dataset root {root.absolute()} ({describe_data_dir(self.data_dir)}):",
            listing,
        ]
        if self.binarization == "fixed":
            lines.append(
                "This is the fixed binarization of Larochelle & Murray: one numpy .npz with "
                "keys train/valid/test, each an N x 784 uint8 array of 0/1 (50000/10000/10000); "
                "no hub copy is used for it. It can be made from Larochelle's "
                "binarized_mnist_{train,valid,test}.amat files with np.savez_compressed. "
                "Or use binarization='dynamic' or 'threshold', which need only the MNIST files."
            )
        elif hub_reason is not None:
            lines.append(
                f"The Hugging Face hub fallback (datasets.load_dataset({HUB_MNIST!r})) failed: "
                f"{hub_reason}. If the hub copy is in your local cache, set HF_HUB_OFFLINE=1."
            )
        lines.append(
            f"Put the files there, or point data_dir= (CLI: --data.data_dir) or the environment "
            f"variable {ENV_DATA_DIR} at a directory that holds them."
        )
        return DataNotFoundError("\n".join(lines))

    def _load_arrays(self) -> dict[str, np.ndarray]:
        """Read the raw arrays: grayscale ``train``/``test``, or binary ``train``/``valid``/``test``."""
        files = self.expected_files()
        have_local = all(p.is_file() for p in files)
        if self.binarization == "fixed":
            if not have_local:
                raise self._not_found(None)
            return _cached_binarized_mnist(_file_key(files[0]))
        if have_local and self.source != "hub":
            train_file, test_file = files
            return {
                "train": _cached_mnist_images(_file_key(train_file)),
                "test": _cached_mnist_images(_file_key(test_file)),
            }
        if self.source == "local":
            raise self._not_found("not tried (source='local')")
        try:
            return load_hub_mnist()
        except ValueError:  # the hub answered with data we reject: say so, not "not found"
            raise
        except Exception as e:  # unreachable, not in the offline cache, HTTP errors, ...
            raise self._not_found(f"{type(e).__name__}: {e}") from e

    def prepare_data(self) -> None:
        """Check the files (or download from the hub) once, on the main process."""
        self._load_arrays()

    def setup(self, stage: str | None = None) -> None:
        """Build the train/val/test sets (all at once; they are small)."""
        if self.train_set is not None:
            return
        arrays = self._load_arrays()
        limit = self.limit

        def head(array: torch.Tensor) -> torch.Tensor:
            return array if limit is None else array[:limit]

        if self.binarization == "fixed":
            train = head(_tensor(arrays["train"]))
            val = head(_tensor(arrays["valid"]))
            test = head(_tensor(arrays["test"]))
            dynamic_train = False
        else:
            gray = _tensor(arrays["train"])
            if self.val_size >= gray.shape[0]:
                raise ValueError(
                    f"val_size={self.val_size} must be smaller than the {gray.shape[0]} "
                    f"MNIST training images"
                )
            perm = torch.randperm(gray.shape[0], generator=_generator(self.seed, 0))
            train = head(gray[perm[self.val_size :]])
            val = head(gray[perm[: self.val_size]])
            test = head(_tensor(arrays["test"]))
            if self.binarization == "threshold":
                train, val, test = (
                    binarize_threshold(t, self.threshold) for t in (train, val, test)
                )
                dynamic_train = False
            else:
                val = binarize_bernoulli(val, _generator(self.seed, 1))
                test = binarize_bernoulli(test, _generator(self.seed, 2))
                dynamic_train = True
        self.train_set = BinaryImageDataset(
            train.contiguous(), dynamic=dynamic_train, split=self.split
        )
        self.val_set = BinaryImageDataset(val.contiguous(), split=self.split)
        self.test_set = BinaryImageDataset(test.contiguous(), split=self.split)


def binarize_threshold(gray: torch.Tensor, threshold: float) -> torch.Tensor:
    """``gray / 255 > threshold`` (in float32) as a uint8 0/1 tensor."""
    return (gray.to(torch.float32) / 255.0 > threshold).to(torch.uint8)


def binarize_bernoulli(gray: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Bernoulli(gray / 255) sample as a uint8 0/1 tensor."""
    return torch.bernoulli(gray.to(torch.float32) / 255.0, generator=generator).to(torch.uint8)


def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent torch generator for each (seed, stream) pair."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, stream]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
