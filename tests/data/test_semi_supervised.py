"""SemiSupervisedMNISTDataModule: the split, the seeded choice of labels, the batches, bad input."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data import DataNotFoundError
from zoo.data.semi_supervised import (
    SemiSupervisedDataset,
    SemiSupervisedMNISTDataModule,
    choose_labelled,
    read_mnist_labels,
)


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2049 if array.ndim == 1 else 2051
    header = struct.pack(f">i{array.ndim}i", magic, *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_tiny_mnist(root: Path, num_train: int = 300, num_test: int = 100, seed: int = 0) -> Path:
    """MNIST-format files of 28×28 digits that are easy to tell apart; returns ``root``.

    Class c lights the pixel rows 2c..2c+4 (intensity 230) over a background of
    low-intensity noise, so a classifier can learn it in a few steps.
    """
    rng = np.random.default_rng(seed)
    for split, num in (("train", num_train), ("t10k", num_test)):
        labels = np.arange(num) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(num, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 2 : 2 * c + 7, 4:24] = 230
        _write_idx(root / "mnist" / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / "mnist" / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def make_dm(root: Path, **kwargs) -> SemiSupervisedMNISTDataModule:
    dm = SemiSupervisedMNISTDataModule(data_dir=str(root), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_tiny_mnist(tmp_path / "data")


def test_split_sizes_and_ten_labels_per_class(tiny) -> None:
    dm = make_dm(tiny, num_labels=20, val_size=50, batch_size=16)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (300 - 50 - 20, 50, 100)
    labels = read_mnist_labels(tiny / "mnist" / "train-labels-idx1-ubyte.gz")
    chosen = labels[dm.labelled_indices.numpy()]
    assert np.bincount(chosen, minlength=10).tolist() == [2] * 10
    assert dm.input_dim == 784 and dm.num_classes == 10


def test_the_labelled_images_are_neither_unlabelled_nor_held_out(tiny) -> None:
    dm = make_dm(tiny, num_labels=20, val_size=50, binarization="threshold")
    with gzip.open(tiny / "mnist/train-images-idx3-ubyte.gz") as f:
        gray = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    images = torch.from_numpy((gray / 255.0 > 0.5).astype(np.uint8))
    labelled = images[dm.labelled_indices]
    assert torch.equal(dm.train_set.labelled.images, labelled)
    # Every training image is exactly one of labelled, unlabelled, validation.
    everything = torch.cat([dm.train_set.unlabelled, labelled, dm.val_set.images])
    assert everything.shape[0] == 300
    assert sorted(map(bytes, everything.numpy())) == sorted(map(bytes, images.numpy()))


def test_the_choice_is_seeded(tiny) -> None:
    a = make_dm(tiny, num_labels=20, val_size=50).labelled_indices
    b = make_dm(tiny, num_labels=20, val_size=50).labelled_indices
    c = make_dm(tiny, num_labels=20, val_size=50, seed=1).labelled_indices
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batches_carry_labelled_and_unlabelled_images(tiny) -> None:
    dm = make_dm(tiny, num_labels=20, val_size=50, batch_size=16)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "x_labelled", "y_labelled"}
    assert batch["x"].shape == batch["x_labelled"].shape == (16, 784)
    assert batch["y_labelled"].dtype == torch.int64 and batch["y_labelled"].shape == (16,)
    for key in ("x", "x_labelled"):
        assert batch[key].dtype == torch.float32 and bool(
            ((batch[key] == 0) | (batch[key] == 1)).all()
        )
    # The labelled images of the batch are the labelled set's, with their own labels.
    val = next(iter(dm.val_dataloader()))
    assert set(val) == {"x", "y"} and val["y"].dtype == torch.int64


def test_the_pairing_follows_the_index() -> None:
    unlabelled = torch.arange(7, dtype=torch.uint8)[:, None].expand(7, 3).contiguous()
    labelled = (100 + torch.arange(3, dtype=torch.uint8))[:, None].expand(3, 3).contiguous()
    data = SemiSupervisedDataset(unlabelled, labelled, torch.tensor([5, 6, 7]))
    batch = data.__getitems__([6, 1, 4])
    assert batch["x"][:, 0].tolist() == [6, 1, 4]
    assert batch["x_labelled"][:, 0].tolist() == [100, 101, 101]
    assert batch["y_labelled"].tolist() == [5, 6, 6]
    assert data[4]["y_labelled"].item() == 6


def test_dynamic_binarization_resamples_training_but_not_validation(tiny) -> None:
    dm = make_dm(tiny, num_labels=20, val_size=50)
    first, second = (dm.train_set.__getitems__(list(range(40))) for _ in range(2))
    assert not torch.equal(first["x"], second["x"])
    assert torch.equal(dm.val_set.__getitems__([0, 1])["x"], dm.val_set.__getitems__([0, 1])["x"])


def test_choose_labelled_refuses_a_class_that_is_too_small() -> None:
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    assert choose_labelled(labels, 1, torch.Generator().manual_seed(0)).numel() == 10
    with pytest.raises(ValueError, match="class 1 has 1 training examples"):
        choose_labelled(labels, 2, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_labels": 25}, "multiple of 10"),
        ({"num_labels": 0}, "num_labels must be >= 10"),
        ({"binarization": "fixed"}, "binarization must be one of"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"threshold": 1.5}, "threshold must be in"),
        ({"source": "web"}, "source must be one of"),
    ],
)
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        SemiSupervisedMNISTDataModule(**kwargs)


def test_too_few_images_for_the_split(tiny) -> None:
    with pytest.raises(ValueError, match="leave no unlabelled image"):
        make_dm(tiny, num_labels=100, val_size=200)


def test_missing_files_fail_fast_and_name_them(tmp_path) -> None:
    dm = SemiSupervisedMNISTDataModule(data_dir=str(tmp_path), source="local")
    with pytest.raises(DataNotFoundError, match="train-labels-idx1-ubyte.gz   \\(missing\\)"):
        dm.prepare_data()


def test_a_label_file_with_a_bad_digit(tmp_path) -> None:
    path = tmp_path / "labels.gz"
    _write_idx(path, np.array([1, 2, 12]))
    with pytest.raises(ValueError, match="digits 0..9, found 12"):
        read_mnist_labels(path)


def test_the_real_mnist_gives_100_labels(shared_data_dir) -> None:
    dm = make_dm(shared_data_dir)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (49900, 10000, 10000)
    assert torch.bincount(dm.train_set.labelled.labels).tolist() == [10] * 10
