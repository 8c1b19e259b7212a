"""Shared test fixtures: where the data sets live, found as the datamodules find them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zoo.data.base import DEFAULT_DATA_DIR, ENV_DATA_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent

SHARED_DATA_FILES = (
    "mnist/train-images-idx3-ubyte.gz",
    "mnist/t10k-images-idx3-ubyte.gz",
    "binarized_mnist/binarized_mnist.npz",
)
"""The MNIST files of ``shared_data_dir``."""

EWT_FILES = tuple(
    f"ud_english_ewt/en_ewt-ud-{split}.conllu.gz" for split in ("train", "dev", "test")
)
"""UD English EWT as the datamodule reads it (``UDTaggingDataModule``'s default treebank)."""


def shared_data_candidates() -> list[Path]:
    """Where the data may be, in the datamodules' order: ``$ZOO_DATA_DIR``, then ``<repo>/data``.

    The datamodules read ``data/`` relative to the working directory; the tests
    run from anywhere, so they look in the repository's ``data/``.
    """
    candidates = []
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(REPO_ROOT / DEFAULT_DATA_DIR)
    return candidates


def find_data_dir(files: tuple[str, ...]) -> Path | None:
    """The first candidate dataset root that holds all of ``files``, or None."""
    for candidate in shared_data_candidates():
        if all((candidate / name).is_file() for name in files):
            return candidate.resolve()
    return None


def find_shared_data_dir() -> Path | None:
    """The first candidate that holds all of ``SHARED_DATA_FILES``, or None."""
    return find_data_dir(SHARED_DATA_FILES)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The directory with the vendored MNIST files; skips the test when there is none."""
    found = find_shared_data_dir()
    if found is None:
        tried = ", ".join(str(c) for c in shared_data_candidates())
        pytest.skip(
            f"shared data not found: none of [{tried}] holds {', '.join(SHARED_DATA_FILES)} "
            f"(set {ENV_DATA_DIR} to the folder that does)"
        )
    return found
