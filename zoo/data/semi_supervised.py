r"""MNIST with a few labels: the semi-supervised task of Kingma et al. (2014) and Jang et al. (2017).

Of the 60,000 MNIST training images, ``val_size`` (10,000) are held out for
validation (a seeded permutation); of the rest, ``num_labels`` (100) keep their
label, ``num_labels / 10`` per class (a seeded choice), and the others are
unlabelled. The 10,000 t10k images are the test set. Kingma et al. (2014,
Table 1) and Jang et al. (2017, Table 2) report test accuracy with 100 labels.

A training batch carries both kinds of examples::

    {"x": (B, 784), "x_labelled": (B, 784), "y_labelled": (B,)}

``x`` are unlabelled images (their class is the model's latent) and
``(x_labelled, y_labelled)`` labelled ones. Training example i is the pair
(unlabelled image i, labelled image i mod L) for L labelled images, so the
shuffled loader (or Lightning's ``DistributedSampler``, which shards the indices
between processes) draws labelled images with it, each about N_u / L times an
epoch. Validation and test batches are ``{"x": (B, 784), "y": (B,)}``: images
whose class the model infers, and the true classes, used only for accuracy.

Pixels are binarized as in `zoo.data.mnist.MNISTDataModule`: a fresh Bernoulli
sample of the intensities at every training access (``"dynamic"``, with the
validation and test sets sampled once from a fixed seed), or intensity >
``threshold`` (``"threshold"``). Files are read from the dataset root first
(``<data_dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``, see
`zoo.data.base.resolve_data_dir`); without them, from the Hugging Face hub
(``ylecun/mnist``), after a probe that fails within seconds when it is
unreachable.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import (
    ENV_DATA_DIR,
    DataError,
    DataNotFoundError,
    collate_batch,
    describe_data_dir,
    resolve_data_dir,
)
from zoo.data.mnist import (
    HUB_MNIST,
    MNIST_IMAGE_FILES,
    NUM_PIXELS,
    binarize_bernoulli,
    binarize_threshold,
    probe_hub,
    read_idx,
    read_mnist_images,
)

__all__ = [
    "MNIST_LABEL_FILES",
    "LabelledImageDataset",
    "SemiSupervisedDataset",
    "SemiSupervisedMNISTDataModule",
    "choose_labelled",
    "read_mnist_labels",
]

NUM_CLASSES = 10

MNIST_LABEL_FILES: dict[str, str] = {
    "train": "mnist/train-labels-idx1-ubyte.gz",
    "test": "mnist/t10k-labels-idx1-ubyte.gz",
}
"""MNIST label files, relative to the dataset root."""

Binarization = Literal["dynamic", "threshold"]
BINARIZATIONS: tuple[str, ...] = ("dynamic", "threshold")
Source = Literal["auto", "local", "hub"]
SOURCES: tuple[str, ...] = ("auto", "local", "hub")


def read_mnist_labels(path: str | Path) -> np.ndarray:
    """Read an MNIST IDX label file into an ``(N,)`` uint8 array of digits 0..9.

    Raises:
        ValueError: anything `zoo.data.mnist.read_idx` rejects, an image file, or a
            label outside 0..9; the message names the file.
    """
    array = read_idx(path)
    if array.ndim != 1 or array.shape[0] < 1:
        raise DataError(f"{path}: expected MNIST labels of shape (N >= 1,), got {array.shape}")
    if int(array.max()) >= NUM_CLASSES:
        raise DataError(f"{path}: labels must be digits 0..9, found {int(array.max())}")
    return array


def choose_labelled(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """A seeded choice of ``per_class`` indices of every class, sorted.

    Args:
        labels: ``(N,)`` integer classes 0..C-1.
        per_class: how many examples of each class to choose.
        generator: the seeded generator that makes the choice.

    Returns:
        ``(C · per_class,)`` indices into ``labels``.

    Raises:
        ValueError: a class with fewer than ``per_class`` examples.
    """
    chosen = []
    for c in range(NUM_CLASSES):
        members = torch.nonzero(labels == c).squeeze(1)
        if members.numel() < per_class:
            raise ValueError(
                f"class {c} has {members.numel()} training examples, fewer than the "
                f"{per_class} labelled examples per class asked for"
            )
        order = torch.randperm(members.numel(), generator=generator)[:per_class]
        chosen.append(members[order])
    return torch.cat(chosen).sort().values


def _binary(rows: Tensor, dynamic: bool) -> Tensor:
    if dynamic:
        return torch.bernoulli(rows.to(torch.float32).div_(255.0))
    return rows.to(torch.float32)


class LabelledImageDataset(Dataset):
    """Images with their classes, batched whole: ``{"x": (B, D) float32, "y": (B,) int64}``.

    Args:
        images: ``(N, D)`` uint8, 0/1 (or intensities 0..255 when ``dynamic``).
        labels: ``(N,)`` classes.
        dynamic: draw a fresh binarization x ∼ Bernoulli(images / 255) at every access.
    """

    def __init__(self, images: Tensor, labels: Tensor, dynamic: bool = False) -> None:
        if images.dtype != torch.uint8 or images.dim() != 2:
            raise ValueError(
                f"images must be a 2-D uint8 tensor (N, D), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.long)
        self.dynamic = dynamic

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"x": _binary(self.images[index], self.dynamic), "y": self.labels[index]}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}


class SemiSupervisedDataset(Dataset):
    """Unlabelled images paired with labelled ones: example i is (unlabelled i, labelled i mod L).

    A batch (``__getitems__``) is ``{"x": (B, D), "x_labelled": (B, D),
    "y_labelled": (B,)}``. The pairing is a fixed function of the index, so
    any sampler (shuffling, or sharding between processes) draws labelled
    examples along with the unlabelled ones.

    Args:
        unlabelled: ``(N_u, D)`` uint8 images.
        labelled: ``(L, D)`` uint8 images.
        labels: ``(L,)`` their classes.
        dynamic: binarize afresh at every access (uint8 intensities 0..255).
    """

    def __init__(
        self, unlabelled: Tensor, labelled: Tensor, labels: Tensor, dynamic: bool = False
    ) -> None:
        if unlabelled.shape[0] < 1 or labelled.shape[0] < 1:
            raise ValueError(
                f"need at least one unlabelled and one labelled image, got {unlabelled.shape[0]} "
                f"and {labelled.shape[0]}"
            )
        if unlabelled.shape[1:] != labelled.shape[1:]:
            raise ValueError(
                f"unlabelled images {tuple(unlabelled.shape)} and labelled images "
                f"{tuple(labelled.shape)} must have the same width"
            )
        self.unlabelled = unlabelled
        self.labelled = LabelledImageDataset(labelled, labels, dynamic=dynamic)
        self.dynamic = dynamic

    def __len__(self) -> int:
        return self.unlabelled.shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        paired = self.labelled.__getitems__((index % len(self.labelled)).tolist())
        return {
            "x": _binary(self.unlabelled[index], self.dynamic),
            "x_labelled": paired["x"],
            "y_labelled": paired["y"],
        }

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}


class SemiSupervisedMNISTDataModule(L.LightningDataModule):
    """MNIST with ``num_labels`` labelled training images (10 per class by default 100).

    See the module docstring for the split and the batches.

    Args:
        data_dir: dataset root holding ``mnist/*-ubyte.gz`` (images and labels). Default:
            ``$ZOO_DATA_DIR``, else ``data/`` in the working directory.
        num_labels: labelled training images, a multiple of 10 (the same number per class).
        binarization: ``"dynamic"`` (fresh Bernoulli samples in training) or ``"threshold"``.
        batch_size: examples per batch; a training batch holds ``batch_size`` unlabelled
            and ``batch_size`` labelled images.
        num_workers: DataLoader worker processes (0 loads in the main process).
        val_size: validation images held out of the 60,000 training images.
        threshold: cut-off of ``binarization="threshold"``, in [0, 1).
        seed: seeds the validation split, the choice of labels, the one-off binarization
            of the validation and test sets, and the shuffling.
        limit: keep only the first ``limit`` unlabelled, validation and test images (quick
            runs); the labelled images are chosen first, from all training images.
        source: ``"auto"`` (local files, else the hub), ``"local"`` or ``"hub"``.

    Raises:
        ValueError: ``num_labels`` not a positive multiple of 10, and the other checks of
            `zoo.data.mnist.MNISTDataModule`.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        num_labels: int = 100,
        binarization: Binarization = "dynamic",
        batch_size: int = 100,
        num_workers: int = 0,
        val_size: int = 10000,
        threshold: float = 0.5,
        seed: int = 0,
        limit: int | None = None,
        source: Source = "auto",
    ) -> None:
        super().__init__()
        _check_int("num_labels", num_labels, minimum=NUM_CLASSES)
        if num_labels % NUM_CLASSES:
            raise ValueError(
                f"num_labels must be a multiple of {NUM_CLASSES} (the same number of labels "
                f"per class), got {num_labels}"
            )
        if binarization not in BINARIZATIONS:
            raise ValueError(f"binarization must be one of {BINARIZATIONS}, got {binarization!r}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("num_workers", num_workers, minimum=0)
        _check_int("val_size", val_size, minimum=1)
        _check_int("seed", seed, minimum=None)
        if limit is not None:
            _check_int("limit", limit, minimum=1)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold must be a float in [0, 1), got {threshold!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.num_labels = num_labels
        self.binarization = binarization
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.threshold = float(threshold)
        self.seed = seed
        self.limit = limit
        self.source = source
        self.train_set: SemiSupervisedDataset | None = None
        self.val_set: LabelledImageDataset | None = None
        self.test_set: LabelledImageDataset | None = None
        self.labelled_indices: Tensor | None = None
        self._shuffle_generator: torch.Generator | None = None

    @property
    def input_dim(self) -> int:
        """Width of ``batch["x"]``: 784 pixels (what the CLI links into ``model.input_dim``)."""
        return NUM_PIXELS

    @property
    def num_classes(self) -> int:
        """The classes of y: 10 digits."""
        return NUM_CLASSES

    # ------------------------------------------------------------------ loading
    def expected_files(self) -> list[Path]:
        """The local files read, under the resolved dataset root."""
        root = resolve_data_dir(self.data_dir)
        return [
            root / name
            for split in ("train", "test")
            for name in (MNIST_IMAGE_FILES[split], MNIST_LABEL_FILES[split])
        ]

    def _not_found(self, hub_reason: str) -> DataNotFoundError:
        root = resolve_data_dir(self.data_dir)
        listing = "\n".join(
            f"  {p.absolute()}{'' if p.is_file() else '   (missing)'}"
            for p in self.expected_files()
        )
        return DataNotFoundError(
            f"MNIST images and labels not found. Expected under the dataset root "
            f"{root.absolute()} ({describe_data_dir(self.data_dir)}):\n{listing}\n"
            f"The Hugging Face hub fallback (datasets.load_dataset({HUB_MNIST!r})) failed: "
            f"{hub_reason}. Put the files there, or point data_dir= (CLI: --data.data_dir) or "
            f"{ENV_DATA_DIR} at a directory that holds them."
        )

    def _load_arrays(self) -> dict[str, np.ndarray]:
        """``train_images`` (60000, 784), ``train_labels``, ``test_images``, ``test_labels`` (uint8)."""
        files = self.expected_files()
        if all(p.is_file() for p in files) and self.source != "hub":
            keys = ("train_images", "train_labels", "test_images", "test_labels")
            arrays = {
                key: _cached_read(_file_key(p), key) for key, p in zip(keys, files, strict=True)
            }
        elif self.source == "local":
            raise self._not_found("not tried (source='local')")
        else:
            arrays = self._load_hub()
        for split in ("train", "test"):
            n_x, n_y = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
            if n_x != n_y:
                raise DataError(f"MNIST {split}: {n_x} images but {n_y} labels")
        return arrays

    def _load_hub(self) -> dict[str, np.ndarray]:
        reason = probe_hub()
        if reason is not None:
            raise self._not_found(reason)
        import datasets

        try:
            dataset = datasets.load_dataset(HUB_MNIST).with_format("numpy")
        except Exception as e:  # not in the offline cache, HTTP errors, ...
            raise self._not_found(f"{type(e).__name__}: {e}") from e
        arrays = {}
        for split in ("train", "test"):
            rows = dataset[split][:]
            arrays[f"{split}_images"] = np.asarray(rows["image"], np.uint8).reshape(-1, NUM_PIXELS)
            arrays[f"{split}_labels"] = np.asarray(rows["label"], np.uint8)
        return arrays

    def prepare_data(self) -> None:
        """Check the files (or download from the hub) once, on the main process."""
        self._load_arrays()

    def setup(self, stage: str | None = None) -> None:
        """Split, choose the labels and binarize the held-out sets (all at once; they are small)."""
        if self.train_set is not None:
            return
        arrays = self._load_arrays()
        images = torch.from_numpy(np.array(arrays["train_images"]))
        labels = torch.from_numpy(np.array(arrays["train_labels"])).long()
        if self.val_size + self.num_labels >= images.shape[0]:
            raise ValueError(
                f"val_size={self.val_size} and num_labels={self.num_labels} leave no unlabelled "
                f"image of the {images.shape[0]} training images"
            )
        perm = torch.randperm(images.shape[0], generator=_generator(self.seed, 0))
        val_index, train_index = perm[: self.val_size], perm[self.val_size :]
        chosen = choose_labelled(
            labels[train_index], self.num_labels // NUM_CLASSES, _generator(self.seed, 1)
        )
        is_labelled = torch.zeros(train_index.shape[0], dtype=torch.bool)
        is_labelled[chosen] = True
        self.labelled_indices = train_index[chosen]  # into the 60,000 training images
        unlabelled_index = train_index[~is_labelled][: self.limit]
        val_index = val_index[: self.limit]
        test_x = torch.from_numpy(np.array(arrays["test_images"]))[: self.limit]
        test_y = torch.from_numpy(np.array(arrays["test_labels"])).long()[: self.limit]

        dynamic = self.binarization == "dynamic"
        if dynamic:
            val_x = binarize_bernoulli(images[val_index], _generator(self.seed, 2))
            test_x = binarize_bernoulli(test_x, _generator(self.seed, 3))
            train_u, train_l = images[unlabelled_index], images[self.labelled_indices]
        else:
            val_x = binarize_threshold(images[val_index], self.threshold)
            test_x = binarize_threshold(test_x, self.threshold)
            train_u = binarize_threshold(images[unlabelled_index], self.threshold)
            train_l = binarize_threshold(images[self.labelled_indices], self.threshold)
        self.train_set = SemiSupervisedDataset(
            train_u.contiguous(), train_l.contiguous(), labels[self.labelled_indices], dynamic
        )
        self.val_set = LabelledImageDataset(val_x.contiguous(), labels[val_index])
        self.test_set = LabelledImageDataset(test_x.contiguous(), test_y)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset | None, stage: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.{stage}_dataloader() called before setup(); "
                "call prepare_data() and setup() first (a Trainer does this)"
            )
        generator = None
        if shuffle:
            # One generator for the datamodule's life: a reloaded loader continues the stream.
            if self._shuffle_generator is None:
                self._shuffle_generator = torch.Generator().manual_seed(self.seed)
            generator = self._shuffle_generator
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "predict", shuffle=False)


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _cached_read(key: tuple[str, int, int], kind: str) -> np.ndarray:
    """An IDX file read once per process (prepare_data and setup both load it); read-only."""
    path = key[0]
    array = read_mnist_labels(path) if kind.endswith("labels") else read_mnist_images(path)
    array.flags.writeable = False
    return array


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent torch generator for each (seed, stream) pair."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, stream]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
