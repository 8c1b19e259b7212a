"""MNISTDataModule: the three binarizations, the halves split, file validation, the hub fallback."""

from __future__ import annotations

import gzip
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from tests.models.cases import quiet_trainer
from zoo.data import DataNotFoundError, MNISTDataModule, resolve_data_dir
from zoo.data import hub as hub_module
from zoo.data import mnist as mnist_module
from zoo.estimators import GumbelSoftmax
from zoo.models import VAE, CategoricalLatent

TRAIN_GZ = "mnist/train-images-idx3-ubyte.gz"
TEST_GZ = "mnist/t10k-images-idx3-ubyte.gz"
NPZ = "binarized_mnist/binarized_mnist.npz"


def read_gray(path: Path) -> np.ndarray:
    """Independent reader (the README's one-liner): (N, 784) uint8."""
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)


def make_dm(data_dir, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_dir), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def first_batch(loader) -> dict[str, torch.Tensor]:
    return next(iter(loader))


def assert_binary_float(t: torch.Tensor) -> None:
    assert t.dtype == torch.float32
    assert bool(((t == 0) | (t == 1)).all())


def write_idx_gz(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(f">i{len(dims)}i", magic, *dims)
    path.write_bytes(gzip.compress(header + payload))


# ----------------------------------------------------------------------------- data dir


def test_resolve_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    assert resolve_data_dir(None) == Path("data")
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_a_dataset_root_that_is_a_file_says_so(monkeypatch, tmp_path):
    """ZOO_DATA_DIR=/etc/passwd said '/etc/passwd/binarized_mnist/... (missing)'."""
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    monkeypatch.setenv("ZOO_DATA_DIR", str(a_file))
    message = (
        rf"the dataset root {a_file} \(from the environment variable ZOO_DATA_DIR=.*\) is a file"
    )
    with pytest.raises(DataNotFoundError, match=message):
        MNISTDataModule(binarization="fixed").prepare_data()
    with pytest.raises(
        DataNotFoundError, match=r"\(from data_dir=.*\) is a file, not a directory"
    ):
        resolve_data_dir(str(a_file))


def test_env_data_dir_is_used(monkeypatch, shared_data_dir):
    monkeypatch.setenv("ZOO_DATA_DIR", str(shared_data_dir))
    dm = MNISTDataModule(binarization="fixed", limit=5)
    dm.setup()
    assert len(dm.train_set) == 5


# ----------------------------------------------------------------------------- full sizes


def test_fixed_full_sizes_and_content(shared_data_dir):
    dm = make_dm(shared_data_dir, binarization="fixed")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50000, 10000, 10000)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = first_batch(loader)
        assert set(batch) == {"x"}
        assert batch["x"].shape == (100, 784)
        assert_binary_float(batch["x"])
    assert (dm.input_dim, dm.output_dim) == (784, 784)
    # the README lists the 1-pixels of train[0] (123 of them, a 6) and train[1] (80, a 1)
    first = dm.train_set[0]["x"]
    assert int(first.sum()) == 123
    assert first.nonzero().flatten()[:6].tolist() == [64, 65, 66, 93, 94, 120]
    assert int(dm.train_set[1]["x"].sum()) == 80
    # the mean pixel of the train split, as in the README (0.1306)
    assert abs(float(dm.train_set.data.float().mean()) - 0.1306) < 5e-4


def test_dynamic_full_sizes_and_split(shared_data_dir):
    dm = make_dm(shared_data_dir, binarization="dynamic")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50000, 10000, 10000)
    batch = first_batch(dm.train_dataloader())
    assert set(batch) == {"x"}
    assert batch["x"].shape == (100, 784)
    assert_binary_float(batch["x"])
    # the training set keeps the grayscale images: 50000 distinct rows of the 60000
    gray = read_gray(shared_data_dir / TRAIN_GZ)
    row_index = {row.tobytes(): i for i, row in enumerate(gray)}
    assert len(row_index) == 60000
    train_rows = dm.train_set.data.numpy()
    assert int(train_rows.max()) > 1
    picked = {row_index[row.tobytes()] for row in train_rows}
    assert len(picked) == 50000
    # val/test were binarized once: 0 where the pixel is 0, 1 where it is 255
    test_gray = torch.from_numpy(read_gray(shared_data_dir / TEST_GZ).copy())
    test_bin = dm.test_set.data
    assert set(test_bin.unique().tolist()) <= {0, 1}
    assert bool((test_bin[test_gray == 0] == 0).all())
    assert bool((test_bin[test_gray == 255] == 1).all())
    mid = (test_gray > 0) & (test_gray < 255)
    expected = (test_gray[mid].float() / 255).mean()
    assert abs(float(test_bin[mid].float().mean()) - float(expected)) < 0.01


def test_val_size_changes_split(shared_data_dir):
    dm = make_dm(shared_data_dir, binarization="threshold", val_size=5000)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)


def test_same_split_for_threshold_and_dynamic(shared_data_dir):
    dyn = make_dm(shared_data_dir, binarization="dynamic", seed=3, limit=500)
    thr = make_dm(shared_data_dir, binarization="threshold", seed=3, limit=500, threshold=0.4)
    expected = (dyn.train_set.data.float() / 255 > 0.4).to(torch.uint8)
    assert torch.equal(thr.train_set.data, expected)
    other = make_dm(shared_data_dir, binarization="dynamic", seed=4, limit=500)
    assert not torch.equal(other.train_set.data, dyn.train_set.data)


# ----------------------------------------------------------------------------- binarizations


def test_threshold_matches_pixel_greater_than_t(shared_data_dir):
    t = 0.4  # = 102 / 255: pixels of value 102 sit exactly on the threshold and stay 0
    dm = make_dm(shared_data_dir, binarization="threshold", threshold=t)
    gray = torch.from_numpy(read_gray(shared_data_dir / TEST_GZ).copy())
    assert bool((gray == 102).any())
    expected = (gray.float() / 255 > t).float()
    got = torch.cat([b["x"] for b in dm.test_dataloader()])
    assert got.shape == (10000, 784)
    assert torch.equal(got, expected)
    # and the train split is thresholded too (no grayscale left)
    assert int(dm.train_set.data.max()) == 1
    assert not dm.train_set.dynamic


def test_dynamic_train_rebinarized_each_epoch_val_fixed(shared_data_dir):
    dm = make_dm(shared_data_dir, binarization="dynamic", limit=100, batch_size=50)

    def epoch_pixel_sums(loader) -> torch.Tensor:
        # order-free summary of an epoch: how often each pixel is on
        return torch.cat([b["x"] for b in loader]).sum(0)

    train1 = epoch_pixel_sums(dm.train_dataloader())
    train2 = epoch_pixel_sums(dm.train_dataloader())
    assert not torch.equal(train1, train2)
    # the same images give different samples on two accesses
    a = dm.train_set.__getitems__(list(range(100)))
    b = dm.train_set.__getitems__(list(range(100)))
    assert_binary_float(a["x"])
    assert not torch.equal(a["x"], b["x"])
    # ... whose average is the grayscale intensity
    draws = torch.stack([dm.train_set.__getitems__([0, 1, 2])["x"] for _ in range(400)])
    intensity = dm.train_set.data[:3].float() / 255
    assert (draws.mean(0) - intensity).abs().max() < 0.15
    # validation is the same every time, and the same for a new datamodule with that seed
    val1 = torch.cat([b["x"] for b in dm.val_dataloader()])
    val2 = torch.cat([b["x"] for b in dm.val_dataloader()])
    assert torch.equal(val1, val2)
    again = make_dm(shared_data_dir, binarization="dynamic", limit=100, batch_size=50)
    assert torch.equal(torch.cat([b["x"] for b in again.val_dataloader()]), val1)
    assert torch.equal(again.test_set.data, dm.test_set.data)


def test_train_order_seeded_and_reshuffled(shared_data_dir):
    def order(dm) -> list[torch.Tensor]:
        return [b["x"] for b in dm.train_dataloader()]

    dm1 = make_dm(shared_data_dir, binarization="fixed", limit=64, batch_size=16)
    dm2 = make_dm(shared_data_dir, binarization="fixed", limit=64, batch_size=16)
    first = order(dm1)
    assert all(torch.equal(a, b) for a, b in zip(first, order(dm2), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, order(dm1), strict=True))  # next epoch
    unshuffled = torch.cat([dm1.train_set[i]["x"][None] for i in range(64)])
    assert not torch.equal(torch.cat(first), unshuffled)


# ----------------------------------------------------------------------------- halves


@pytest.mark.parametrize("binarization", ["fixed", "threshold", "dynamic"])
def test_halves_split(shared_data_dir, binarization):
    full = make_dm(shared_data_dir, binarization=binarization, limit=20, batch_size=20)
    halves = make_dm(
        shared_data_dir, binarization=binarization, split="halves", limit=20, batch_size=20
    )
    assert (halves.input_dim, halves.output_dim) == (392, 392)
    for loader_name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        batch = first_batch(getattr(halves, loader_name)())
        assert set(batch) == {"x", "y"}
        assert batch["x"].shape == (20, 392)
        assert batch["y"].shape == (20, 392)
        assert_binary_float(batch["x"])
        assert_binary_float(batch["y"])
    # x is the upper half (first 392 pixels), y the lower half
    whole = first_batch(full.test_dataloader())["x"]
    parts = first_batch(halves.test_dataloader())
    assert torch.equal(parts["x"], whole[:, :392])
    assert torch.equal(parts["y"], whole[:, 392:])


def test_workers_produce_binary_batches(shared_data_dir):
    dm = make_dm(shared_data_dir, binarization="dynamic", limit=200, batch_size=50, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    iterator = iter(loader)
    try:
        batches = list(iterator)
    finally:
        # what Lightning does at teardown; left to the garbage collector, the
        # shutdown can stall for seconds in a later test
        iterator._shutdown_workers()
    assert len(batches) == 4
    for batch in batches:
        assert batch["x"].shape == (50, 784)
        assert_binary_float(batch["x"])
    single = make_dm(shared_data_dir, binarization="fixed", limit=10).train_dataloader()
    assert not single.persistent_workers


# ----------------------------------------------------------------------------- bad files


def copy_mnist(shared_data_dir: Path, target: Path) -> None:
    (target / "mnist").mkdir(parents=True)
    for name in (TRAIN_GZ, TEST_GZ):
        shutil.copyfile(shared_data_dir / name, target / name)


def test_truncated_gz_raises_value_error_naming_file(shared_data_dir, tmp_path):
    copy_mnist(shared_data_dir, tmp_path)
    bad = tmp_path / TEST_GZ
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz") as info:
        MNISTDataModule(data_dir=str(tmp_path), source="local").prepare_data()
    assert str(bad) in str(info.value)


def test_truncated_payload_raises_value_error_naming_file(shared_data_dir, tmp_path):
    copy_mnist(shared_data_dir, tmp_path)
    bad = tmp_path / TEST_GZ
    # a valid gzip whose IDX header promises 100 images but holds 99 and a half
    write_idx_gz(bad, 2051, (100, 28, 28), bytes(99 * 784 + 392))
    with pytest.raises(ValueError, match="truncated") as info:
        MNISTDataModule(data_dir=str(tmp_path), source="local").prepare_data()
    assert str(bad) in str(info.value)
    assert "(100, 28, 28)" in str(info.value)


@pytest.mark.parametrize(
    ("magic", "dims", "message"),
    [
        (2049, (4,), "shape"),  # a label file where images belong
        (2051, (4, 27, 29), r"\(4, 27, 29\)"),  # not 28x28
        (1234, (4, 28, 28), "magic number 1234"),
    ],
)
def test_bad_idx_header_raises_value_error(tmp_path, magic, dims, message):
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    write_idx_gz(path, magic, dims, bytes(int(np.prod(dims))))
    with pytest.raises(ValueError, match=message) as info:
        mnist_module.read_mnist_images(path)
    assert str(path) in str(info.value)


def test_read_idx_labels(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx_gz(path, 2049, (3,), bytes([5, 0, 4]))
    assert mnist_module.read_idx(path).tolist() == [5, 0, 4]


def write_npz(root: Path, **arrays) -> Path:
    path = root / NPZ
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"train": np.zeros((5, 783), np.uint8), "valid": np.zeros((5, 784), np.uint8)},
            "missing key",
        ),
        (
            {k: np.zeros((5, 783), np.uint8) for k in ("train", "valid", "test")},
            r"shape \(5, 783\)",
        ),
        (
            {k: np.zeros((5, 28, 28), np.uint8) for k in ("train", "valid", "test")},
            r"shape \(5, 28, 28\)",
        ),
        (
            {k: np.full((5, 784), 2, np.uint8) for k in ("train", "valid", "test")},
            "values other than 0 and 1",
        ),
    ],
)
def test_bad_npz_raises_value_error_naming_file(tmp_path, arrays, message):
    path = write_npz(tmp_path, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        MNISTDataModule(data_dir=str(tmp_path), binarization="fixed").prepare_data()
    assert str(path) in str(info.value)


def test_corrupt_npz_raises_value_error(tmp_path):
    path = tmp_path / NPZ
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz") as info:
        MNISTDataModule(data_dir=str(tmp_path), binarization="fixed").prepare_data()
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- missing data


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Point the hub at a closed local port, online mode: the probe fails at once."""
    import datasets.config
    import huggingface_hub.constants

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub_module._cached_hub_mnist.cache_clear()
    yield
    hub_module._cached_hub_mnist.cache_clear()


@pytest.mark.parametrize("binarization", ["dynamic", "threshold"])
def test_missing_data_fails_fast_with_expected_paths(tmp_path, unreachable_hub, binarization):
    dm = MNISTDataModule(data_dir=str(tmp_path), binarization=binarization)  # no I/O yet
    start = time.monotonic()
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(tmp_path / TRAIN_GZ) in message
    assert str(tmp_path / TEST_GZ) in message
    assert "data_dir=" in message
    assert "ZOO_DATA_DIR" in message
    assert "ylecun/mnist" in message  # says the hub was tried, and why it failed


def test_missing_data_without_mocks_when_offline(tmp_path, monkeypatch):
    """The real code path, on a machine where the hub really is unreachable."""
    if hub_module._hub_offline():
        pytest.skip("HF_HUB_OFFLINE is set: datasets would answer from its cache")
    if hub_module.probe_hub() is None:
        pytest.skip("the Hugging Face hub is reachable here")
    hub_module._cached_hub_mnist.cache_clear()
    start = time.monotonic()
    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        MNISTDataModule(data_dir=str(tmp_path)).prepare_data()
    assert time.monotonic() - start < 10


def test_missing_fixed_names_npz_and_does_not_touch_hub(tmp_path, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("the hub must not be tried for the fixed binarization")

    monkeypatch.setattr(hub_module, "probe_hub", no_hub)
    monkeypatch.setattr(hub_module, "_load_hub_dataset", no_hub)
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        MNISTDataModule(binarization="fixed").setup()
    message = str(info.value)
    assert str(tmp_path / NPZ) in message
    assert "ZOO_DATA_DIR" in message
    assert "data_dir=" in message


def test_source_local_does_not_touch_hub(tmp_path, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("source='local' must not try the hub")

    monkeypatch.setattr(hub_module, "probe_hub", no_hub)
    monkeypatch.setattr(hub_module, "_load_hub_dataset", no_hub)
    # only one of the two files: the other is reported missing
    (tmp_path / "mnist").mkdir()
    (tmp_path / TRAIN_GZ).write_bytes(b"")
    with pytest.raises(DataNotFoundError) as info:
        MNISTDataModule(data_dir=str(tmp_path), source="local").prepare_data()
    assert f"{tmp_path / TEST_GZ}   (missing)" in str(info.value)


def test_probe_bounded_when_server_never_answers(monkeypatch):
    """A server that accepts the connection but never replies: the probe times out."""
    import huggingface_hub.constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel accepts; nobody ever answers
        port = server.getsockname()[1]
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        start = time.monotonic()
        reason = hub_module.probe_hub(timeout=0.5)
        elapsed = time.monotonic() - start
    assert reason is not None
    assert elapsed < 3, f"took {elapsed:.1f} s"


def test_probe_bounded_when_request_hangs(monkeypatch):
    """A request that ignores its timeout (a hanging DNS lookup, say) is abandoned."""
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(hub_module.urllib.request, "urlopen", hang)
    try:
        start = time.monotonic()
        reason = hub_module.probe_hub(timeout=0.3)
        elapsed = time.monotonic() - start
    finally:
        release.set()
    assert reason is not None
    assert "did not answer" in reason
    assert elapsed < 3, f"took {elapsed:.1f} s"


# ----------------------------------------------------------------------------- hub path


@pytest.fixture
def fake_hub(monkeypatch):
    """A small in-memory stand-in for ylecun/mnist (same features), and a reachable hub."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)}
    images["test"] = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )
    fake = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"image": [Image.fromarray(a) for a in arr], "label": [0] * len(arr)},
                features=features,
            )
            for split, arr in images.items()
        }
    )
    calls = []

    def load(name):
        calls.append(name)
        return fake

    monkeypatch.setattr(hub_module, "_load_hub_dataset", load)
    monkeypatch.setattr(hub_module, "probe_hub", lambda timeout=None: None)
    monkeypatch.setattr(hub_module, "_hub_offline", lambda: False)
    hub_module._cached_hub_mnist.cache_clear()
    yield images, calls
    hub_module._cached_hub_mnist.cache_clear()


def test_hub_fallback_converts_images(tmp_path, fake_hub):
    images, calls = fake_hub
    dm = make_dm(tmp_path, binarization="threshold", val_size=2)
    assert calls == ["ylecun/mnist"]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 2, 5)
    test_gray = torch.from_numpy(images["test"].reshape(5, 784))
    assert torch.equal(dm.test_set.data, (test_gray.float() / 255 > 0.5).to(torch.uint8))


def test_source_hub_skips_local_files(shared_data_dir, fake_hub):
    _, calls = fake_hub
    dm = make_dm(shared_data_dir, binarization="dynamic", val_size=2, source="hub")
    assert calls == ["ylecun/mnist"]
    assert len(dm.test_set) == 5


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"binarization": "stochastic"}, "binarization.*'stochastic'"),
        ({"split": "quarters"}, "split.*'quarters'"),
        ({"source": "ftp"}, "source.*'ftp'"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
        ({"val_size": 0}, "val_size must be >= 1, got 0"),
        ({"threshold": 1.5}, r"threshold must be in \[0, 1\), got 1.5"),
        ({"limit": 0}, "limit must be >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size must be an int, got 2.5"),
        ({"binarization": "fixed", "val_size": 5000}, "val_size=5000"),
        ({"binarization": "fixed", "source": "hub"}, "source='hub'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(**kwargs)


def test_init_does_no_io(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "does-not-exist"), binarization="fixed")
    assert dm.hparams["binarization"] == "fixed"
    with pytest.raises(RuntimeError, match="before setup"):
        dm.train_dataloader()


def test_val_size_too_large(shared_data_dir):
    dm = MNISTDataModule(data_dir=str(shared_data_dir), val_size=60000)
    with pytest.raises(ValueError, match="val_size=60000"):
        dm.setup()


def test_cli_parses_arguments():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(MNISTDataModule, "data")
    cfg = parser.parse_args(["--data.binarization=fixed", "--data.split=halves", "--data.limit=7"])
    assert cfg.data.binarization == "fixed"
    assert cfg.data.split == "halves"
    assert cfg.data.limit == 7
    assert cfg.data.batch_size == 100
    with pytest.raises(SystemExit):
        parser.parse_args(["--data.binarization=nonsense"])


def test_under_a_trainer_dynamic_batches_are_drawn_as_they_reach_the_model(shared_data_dir):
    seen: list[torch.Tensor] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(batch["x"])

    def run() -> list[torch.Tensor]:
        seen.clear()
        torch.manual_seed(0)
        dm = make_dm(shared_data_dir, binarization="dynamic", limit=200, batch_size=50)
        model = VAE(GumbelSoftmax(), CategoricalLatent(2, 3), hidden_sizes=(8,), num_importance_samples=0)
        quiet_trainer(max_steps=3, callbacks=[Record()], limit_val_batches=0).fit(model, dm)
        # The loader itself hands out intensities; the draw waits for the model.
        assert dm.train_set.defer_binarization
        return list(seen)

    first = run()
    assert len(first) == 3
    for x in first:
        assert_binary_float(x)
    # From torch's global generator: the same seed, the same pixels.
    assert all(torch.equal(a, b) for a, b in zip(first, run(), strict=True))
