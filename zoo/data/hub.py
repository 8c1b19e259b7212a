"""MNIST from the Hugging Face hub, behind a probe that fails fast without a network.

When the local MNIST files are missing, the grayscale images come from
``datasets.load_dataset("ylecun/mnist")``. Before that, a short probe of the hub
endpoint (``HUB_PROBE_TIMEOUT`` seconds, in a daemon thread so not even a
hanging DNS lookup can stall it) decides whether the hub is reachable at all;
with no network the caller fails within a few seconds. With ``HF_HUB_OFFLINE=1``
the probe is skipped and ``datasets`` answers from its local cache only.
"""

from __future__ import annotations

import functools
import threading
import urllib.error
import urllib.request

import numpy as np

from zoo.data.mnist_files import IMAGE_SIDE, NUM_PIXELS, _read_only

__all__ = ["HUB_MNIST", "HUB_PROBE_TIMEOUT", "load_hub_mnist", "probe_hub"]

HUB_MNIST = "ylecun/mnist"
"""The Hugging Face hub dataset used when the local MNIST files are missing."""

HUB_PROBE_TIMEOUT = 3.0
"""Seconds the hub connectivity probe may take before the hub counts as unreachable."""


def _hub_offline() -> bool:
    """Whether ``datasets`` runs in offline mode (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``)."""
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)


def _hub_endpoint() -> str:
    import huggingface_hub.constants

    return str(huggingface_hub.constants.ENDPOINT).rstrip("/")


def probe_hub(timeout: float | None = None, dataset: str = HUB_MNIST) -> str | None:
    """Check quickly whether the Hugging Face hub answers for a dataset.

    The request runs in a daemon thread that is abandoned after ``timeout + 1``
    seconds, so DNS lookups (which ignore socket timeouts) cannot stall it either.
    Proxy environment variables are honoured.

    Args:
        timeout: Seconds to wait; ``None`` means ``HUB_PROBE_TIMEOUT``.
        dataset: The hub dataset asked for (its API page is the probed URL), so
            the reason names the dataset the caller wants.

    Returns:
        ``None`` when the hub answered, else a short reason why not.
    """
    timeout = HUB_PROBE_TIMEOUT if timeout is None else timeout
    url = f"{_hub_endpoint()}/api/datasets/{dataset}"
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
