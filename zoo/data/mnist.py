"""Binarized MNIST: dynamic, thresholded, or the fixed Larochelle & Murray set.

Files are read from the dataset root first (see ``resolve_data_dir``)::

    <data_dir>/mnist/train-images-idx3-ubyte.gz      (IDX, gzip; 60,000 images)
    <data_dir>/mnist/t10k-images-idx3-ubyte.gz       (IDX, gzip; 10,000 images)
    <data_dir>/binarized_mnist/binarized_mnist.npz   (keys train/valid/test, N x 784 uint8 0/1)

When the MNIST files are missing, the grayscale images come from the Hugging
Face hub (``datasets.load_dataset("ylecun/mnist")``). Before that, a short probe
of the hub endpoint (``HUB_PROBE_TIMEOUT`` seconds, in a daemon thread so not
even a hanging DNS lookup can stall it) decides whether the hub is reachable at
all; with no network the datamodule fails within a few seconds, with a
``DataNotFoundError`` that lists the files it expected. With ``HF_HUB_OFFLINE=1``
the probe is skipped and ``datasets`` answers from its local cache only.
The fixed binarization is read from the local ``.npz`` only: no copy on the hub
is known to match Larochelle's files.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from zoo.data.base import (
    ENV_DATA_DIR,
    BinaryImageDataset,
    Split,
    ZooDataModule,
    _check_int,
    describe_data_dir,
    resolve_data_dir,
)

Binarization = Literal["dynamic", "fixed", "threshold"]
Source = Literal["auto", "local", "hub"]
BINARIZATIONS: tuple[str, ...] = ("dynamic", "fixed", "threshold")
SOURCES: tuple[str, ...] = ("auto", "local", "hub")

MNIST_IMAGE_FILES: dict[str, str] = {
    "train": "mnist/train-images-idx3-ubyte.gz",
    "test": "mnist/t10k-images-idx3-ubyte.gz",
}
"""Grayscale MNIST image files, relative to the dataset root."""

BINARIZED_MNIST_FILE = "binarized_mnist/binarized_mnist.npz"
"""The fixed binarization, relative to the dataset root."""

BINARIZED_MNIST_KEYS: tuple[str, ...] = ("train", "valid", "test")

HUB_MNIST = "ylecun/mnist"
"""The Hugging Face hub dataset used when the local MNIST files are missing."""

HUB_PROBE_TIMEOUT = 3.0
"""Seconds the hub connectivity probe may take before the hub counts as unreachable."""

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


class DataNotFoundError(FileNotFoundError):
    """The data set is neither under the dataset root nor reachable on the hub."""


# ----------------------------------------------------------------------------- file readers


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes (MNIST images or labels).

    Args:
        path: The ``.gz`` file.

    Returns:
        A uint8 array shaped as its header says: ``(N, rows, cols)`` for images
        (magic 2051), ``(N,)`` for labels (magic 2049).

    Raises:
        ValueError: The file is not valid gzip, the magic number is not 2051/2049,
            or the payload length does not match the header (a truncated file);
            the message names the file.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"{path}: not a readable gzip-compressed IDX file ({type(e).__name__}: {e}); "
            f"the file is truncated or corrupt, replace it"
        ) from e
    if len(raw) < 8:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header (expected >= 8)")
    (magic,) = struct.unpack(">i", raw[:4])
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise ValueError(
            f"{path}: IDX magic number {magic}, expected {IDX_IMAGES_MAGIC} (images) "
            f"or {IDX_LABELS_MAGIC} (labels) of unsigned bytes"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header of {header} bytes")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload != expected:
        raise ValueError(
            f"{path}: IDX header says shape {tuple(dims)} = {expected} bytes of data, "
            f"but the file holds {payload}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an MNIST IDX image file into an ``(N, 784)`` uint8 array (0..255).

    Raises:
        ValueError: Anything ``read_idx`` rejects, a label file (magic 2049), or
            images that are not 28x28; the message names the file.
    """
    array = read_idx(path)
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or array.shape[0] < 1:
        raise ValueError(
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
        ValueError: Unreadable archive, a key missing, an array that is not
            ``N x 784``, or values other than 0/1; the message names the file.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # OSError, EOFError, zipfile.BadZipFile, ValueError, ...
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path}: expected a .npz archive with keys {list(BINARIZED_MNIST_KEYS)}, "
            f"got a single array of shape {getattr(archive, 'shape', None)}"
        )
    with archive:
        missing = [k for k in BINARIZED_MNIST_KEYS if k not in archive.files]
        if missing:
            raise ValueError(
                f"{path}: missing key(s) {missing}; expected keys {list(BINARIZED_MNIST_KEYS)}, "
                f"found {archive.files}"
            )
        try:
            arrays = {k: archive[k] for k in BINARIZED_MNIST_KEYS}
        except Exception as e:
            raise ValueError(f"{path}: cannot read an array ({type(e).__name__}: {e})") from e
    out = {}
    for key, array in arrays.items():
        if array.ndim != 2 or array.shape[1] != NUM_PIXELS or array.shape[0] < 1:
            raise ValueError(
                f"{path}: array {key!r} has shape {array.shape}, expected (N >= 1, {NUM_PIXELS})"
            )
        if array.dtype == np.uint8 or array.dtype == np.bool_:
            binary = array.max() <= 1
        elif np.issubdtype(array.dtype, np.number):
            binary = bool(((array == 0) | (array == 1)).all())
        else:
            binary = False
        if not binary:
            raise ValueError(
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


# ----------------------------------------------------------------------------- the hub


def _hub_offline() -> bool:
    """Whether ``datasets`` runs in offline mode (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``)."""
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)


def _hub_endpoint() -> str:
    import huggingface_hub.constants

    return str(huggingface_hub.constants.ENDPOINT).rstrip("/")


def probe_hub(timeout: float | None = None) -> str | None:
    """Check quickly whether the Hugging Face hub answers.

    The request runs in a daemon thread that is abandoned after ``timeout + 1``
    seconds, so DNS lookups (which ignore socket timeouts) cannot stall it either.
    Proxy environment variables are honoured.

    Args:
        timeout: Seconds to wait; ``None`` means ``HUB_PROBE_TIMEOUT``.

    Returns:
        ``None`` when the hub answered, else a short reason why not.
    """
    timeout = HUB_PROBE_TIMEOUT if timeout is None else timeout
    url = f"{_hub_endpoint()}/api/datasets/{HUB_MNIST}"
    result: list[str | None] = []

    def attempt() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                pass
            result.append(None)
        except urllib.error.HTTPError as e:  # the server answered
            result.append(None if e.code < 500 else f"{url} answered HTTP {e.code}")
        except Exception as e:
            result.append(f"{url} is unreachable ({type(e).__name__}: {e})")

    thread = threading.Thread(target=attempt, name="zoo-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not result:
        return f"{url} did not answer within {timeout:g} s"
    return result[0]


def _load_hub_dataset(name: str):
    """``datasets.load_dataset(name)``; a separate function so tests can replace it."""
    import datasets

    return datasets.load_dataset(name)


def _hub_split_images(dataset, split: str) -> np.ndarray:
    """The images of one split of the hub dataset as an ``(N, 784)`` uint8 array."""
    images = np.asarray(dataset.with_format("numpy")[:]["image"])
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(
            f"hub dataset {HUB_MNIST!r} split {split!r}: expected uint8 images of shape "
            f"(N, {IMAGE_SIDE}, {IMAGE_SIDE}), got {images.dtype} {images.shape}"
        )
    return np.ascontiguousarray(images.reshape(images.shape[0], NUM_PIXELS))


@functools.lru_cache(maxsize=1)
def _cached_hub_mnist() -> dict[str, np.ndarray]:
    dataset = _load_hub_dataset(HUB_MNIST)
    return {
        split: _read_only(_hub_split_images(dataset[split], split)) for split in ("train", "test")
    }


def load_hub_mnist() -> dict[str, np.ndarray]:
    """Grayscale MNIST from the hub: ``{"train": (60000, 784), "test": (10000, 784)}`` uint8.

    Fails within about ``HUB_PROBE_TIMEOUT`` seconds when the hub is unreachable
    (``ConnectionError``); in offline mode ``datasets`` reads its cache only.
    """
    if _cached_hub_mnist.cache_info().currsize == 0 and not _hub_offline():
        reason = probe_hub()
        if reason is not None:
            raise ConnectionError(reason)
    return _cached_hub_mnist()


# ----------------------------------------------------------------------------- the datamodule


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
