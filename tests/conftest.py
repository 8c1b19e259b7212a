"""Shared test fixtures: where the vendored data sets live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

SHARED_DATA_FILES = (
    "mnist/train-images-idx3-ubyte.gz",
    "mnist/t10k-images-idx3-ubyte.gz",
    "binarized_mnist/binarized_mnist.npz",
)


def shared_data_candidates() -> list[Path]:
    """Where the data may be, in order: $ZOO_DATA_DIR, <repo>/data, <repo>/../shared/data."""
    candidates = []
    env = os.environ.get("ZOO_DATA_DIR")
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(REPO_ROOT / "data")
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    return candidates


def find_shared_data_dir() -> Path | None:
    """The first candidate that holds all of ``SHARED_DATA_FILES``, or None."""
    for candidate in shared_data_candidates():
        if all((candidate / name).is_file() for name in SHARED_DATA_FILES):
            return candidate.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The directory with the vendored MNIST files; skips the test when there is none."""
    found = find_shared_data_dir()
    if found is None:
        tried = ", ".join(str(c) for c in shared_data_candidates())
        pytest.skip(
            f"shared data not found: none of [{tried}] holds {', '.join(SHARED_DATA_FILES)} "
            f"(set ZOO_DATA_DIR to the folder that does)"
        )
    return found
