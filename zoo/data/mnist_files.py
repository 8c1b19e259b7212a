"""MNIST's file formats: gzip-compressed IDX images and the fixed binarization's ``.npz``.

Under the dataset root (see `zoo.data.base.resolve_data_dir`)::

    mnist/train-images-idx3-ubyte.gz      (IDX, gzip; 60,000 images)
    mnist/t10k-images-idx3-ubyte.gz       (IDX, gzip; 10,000 images)
    binarized_mnist/binarized_mnist.npz   (keys train/valid/test, N x 784 uint8 0/1)

The readers check what they read and name the file in every error; the
cached variants share one read-only copy per file (keyed by path, mtime and size)
among the datamodules of a process.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from zoo.data.base import DataError

__all__ = [
    "BINARIZED_MNIST_FILE",
    "BINARIZED_MNIST_KEYS",
    "MNIST_IMAGE_FILES",
    "NUM_PIXELS",
    "read_binarized_mnist",
    "read_idx",
    "read_mnist_images",
]

MNIST_IMAGE_FILES: dict[str, str] = {
    "train": "mnist/train-images-idx3-ubyte.gz",
    "test": "mnist/t10k-images-idx3-ubyte.gz",
}
"""Grayscale MNIST image files, relative to the dataset root."""

BINARIZED_MNIST_FILE = "binarized_mnist/binarized_mnist.npz"
"""The fixed binarization, relative to the dataset root."""

BINARIZED_MNIST_KEYS: tuple[str, ...] = ("train", "valid", "test")

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes (MNIST images or labels).

    Args:
        path: The ``.gz`` file.

    Returns:
        A uint8 array shaped as its header says: ``(N, rows, cols)`` for images
        (magic 2051), ``(N,)`` for labels (magic 2049).

    Raises:
        DataError: The file is not valid gzip, the magic number is not 2051/2049,
            or the payload length does not match the header (a truncated file);
            the message names the file.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: not a readable gzip-compressed IDX file ({type(e).__name__}: {e}); "
            f"the file is truncated or corrupt, replace it"
        ) from e
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header (expected >= 8)")
    (magic,) = struct.unpack(">i", raw[:4])
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise DataError(
            f"{path}: IDX magic number {magic}, expected {IDX_IMAGES_MAGIC} (images) "
            f"or {IDX_LABELS_MAGIC} (labels) of unsigned bytes"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header of {header} bytes")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload != expected:
        raise DataError(
            f"{path}: IDX header says shape {tuple(dims)} = {expected} bytes of data, "
            f"but the file holds {payload}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an MNIST IDX image file into an ``(N, 784)`` uint8 array (0..255).

    Raises:
        DataError: Anything ``read_idx`` rejects, a label file (magic 2049), or
            images that are not 28x28; the message names the file.
    """
    array = read_idx(path)
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or array.shape[0] < 1:
        raise DataError(
            f"{path}: expected MNIST images, an IDX file with magic {IDX_IMAGES_MAGIC} and "
            f"shape (N >= 1, {IMAGE_SIDE}, {IMAGE_SIDE}), got shape {array.shape}"
        )
    return array.reshape(array.shape[0], NUM_PIXELS)


def read_binarized_mnist(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the fixed binarized MNIST ``.npz`` (keys train/valid/test).

    Returns:
        ``{"train": ..., "valid": ..., "test": ...}``, each an ``(N, 784)`` uint8
        array of 0/1.

    Raises:
        DataError: Unreadable archive, a key missing, an array that is not
            ``N x 784``, or values other than 0/1; the message names the file.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # OSError, EOFError, zipfile.BadZipFile, ValueError, ...
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: expected a .npz archive with keys {list(BINARIZED_MNIST_KEYS)}, "
            f"got a single array of shape {getattr(archive, 'shape', None)}"
        )
    with archive:
        missing = [k for k in BINARIZED_MNIST_KEYS if k not in archive.files]
        if missing:
            raise DataError(
                f"{path}: missing key(s) {missing}; expected keys {list(BINARIZED_MNIST_KEYS)}, "
                f"found {archive.files}"
            )
        try:
            arrays = {k: archive[k] for k in BINARIZED_MNIST_KEYS}
        except Exception as e:
            raise DataError(f"{path}: cannot read an array ({type(e).__name__}: {e})") from e
    out = {}
    for key, array in arrays.items():
        if array.ndim != 2 or array.shape[1] != NUM_PIXELS or array.shape[0] < 1:
            raise DataError(
                f"{path}: array {key!r} has shape {array.shape}, expected (N >= 1, {NUM_PIXELS})"
            )
        if array.dtype == np.uint8 or array.dtype == np.bool_:
            binary = array.max() <= 1
        elif np.issubdtype(array.dtype, np.number):
            binary = bool(((array == 0) | (array == 1)).all())
        else:
            binary = False
        if not binary:
            raise DataError(
                f"{path}: array {key!r} (dtype {array.dtype}) holds values other than 0 and 1"
            )
        out[key] = array.astype(np.uint8, copy=False)
    return out


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _cached_mnist_images(key: tuple[str, int, int]) -> np.ndarray:
    return _read_only(read_mnist_images(key[0]))


@functools.lru_cache(maxsize=4)
def _cached_binarized_mnist(key: tuple[str, int, int]) -> dict[str, np.ndarray]:
    return {k: _read_only(v) for k, v in read_binarized_mnist(key[0]).items()}


def _read_only(array: np.ndarray) -> np.ndarray:
    """Cached arrays are shared by every datamodule in the process: freeze them."""
    array.flags.writeable = False
    return array


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor that owns a copy of a (read-only, cached) array."""
    return torch.from_numpy(np.array(array, copy=True))
