"""What a `VAE` step costs: Lightning against a bare PyTorch loop, REINFORCE with S
samples against one, and the test-time likelihood ``nll_iw`` by chunk size.

Model: the default `VAE` with a `CategoricalLatent` (encoder 784-512-256-(20×10), decoder
200-256-512-784, uniform prior, exact KL), batch 100, the optimizer its own
``configure_optimizers`` returns. Data: the first rows of fixed-binarized MNIST
when found under ``--data-dir`` / ``$ZOO_DATA_DIR`` (random bits otherwise),
one ``DataLoader`` type for every loop, so every loop sees the same batches.

Step table (``--trials`` interleaved rounds, every other round in reverse order;
before each trial the script waits for other processes to go quiet, and a trial
during which they used more than ``--busy`` cores is rejected):

* ``bare PyTorch loop``: ``loss = model(batch).mean()``, ``zero_grad``,
  ``backward``, ``step``, ``loss.item()``;
* ``Lightning, bare config``: ``Trainer.fit`` without logger, checkpoints,
  progress bar or summary;
* ``Lightning, as train.py``: TensorBoard logger, ``ModelCheckpoint(save_last=True)``,
  the zoo's progress bar (to /dev/null), ``TemperatureAnnealing``, ``SampleImages``;
* REINFORCE in the bare loop with S = 1 (moving-average baseline), 4 and 16
  (leave-one-out), each against S = 1.

A trial's cost is its mean step time after ``--warmup`` steps (so Lightning's
logging every 50 steps is paid for). The CPU is shared: read the ratios, which
come from one run, not the absolute times.

``--nll-iw`` times ``importance_log_likelihood`` (m = ``--samples`` importance
samples for a batch of 100 test images, what ``train.py test`` computes per
batch) for several ``importance_chunk_size`` values, against the default 100.

Run: python bench/vae_step.py [--threads 1] [--trials 5] [--nll-iw]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import _cpu_snapshot, _others_cores, measure, wait_for_quiet  # noqa: E402
from zoo.callbacks import SampleImages, TemperatureAnnealing, ZooProgressBar  # noqa: E402
from zoo.cli import PROGRESS_BAR_REFRESH_RATE, NullProfiler  # noqa: E402
from zoo.data.base import BinaryImageDataset, collate_batch, resolve_data_dir  # noqa: E402
from zoo.estimators import (  # noqa: E402
    Estimator,
    GumbelSoftmax,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    Reinforce,
)
from zoo.models import VAE, CategoricalLatent  # noqa: E402

BATCH = 100
ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "gumbel": lambda: GumbelSoftmax(temperature=1.0),
    "reinforce S=1 (EMA)": lambda: Reinforce(1, baseline=MovingAverageBaseline()),
    "reinforce S=4 (LOO)": lambda: Reinforce(4, baseline=LeaveOneOutBaseline()),
    "reinforce S=16 (LOO)": lambda: Reinforce(16, baseline=LeaveOneOutBaseline()),
}


def load_images(rows: int, data_dir: str | None) -> tuple[torch.Tensor, str]:
    """``(rows, 784)`` uint8 0/1 images: fixed-binarized MNIST if found, else random bits."""
    path = resolve_data_dir(data_dir) / "binarized_mnist" / "binarized_mnist.npz"
    if path.is_file():
        import numpy as np

        with np.load(path) as archive:
            train = archive["train"]
        if train.shape[0] >= rows:
            return torch.from_numpy(train[:rows].astype("uint8")), "fixed-binarized MNIST"
    bits = (torch.rand(rows, 784, generator=torch.Generator().manual_seed(0)) < 0.13).to(
        torch.uint8
    )
    return bits, "random bits (fixed-binarized MNIST not found)"


def make_model(estimator: str) -> VAE:
    torch.manual_seed(0)
    return VAE(ESTIMATORS[estimator](), CategoricalLatent(), num_importance_samples=0)


# ---------------------------------------------------------------------- loops
def bare_loop(estimator: str, loader: DataLoader, steps: int) -> list[float]:
    """Wall-clock stamps at the start of every step of the bare loop (after its batch is fetched)."""
    model = make_model(estimator).train()
    optimizer = model.configure_optimizers()
    stamps: list[float] = []
    while len(stamps) < steps + 1:
        for batch in loader:
            stamps.append(time.perf_counter())
            if len(stamps) > steps:
                break
            optimizer.zero_grad(set_to_none=True)
            loss = model(batch).mean()
            loss.backward()
            optimizer.step()
            loss.item()
    return stamps


class _Stamps(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())


def lightning_loop(config: str, loader: DataLoader, steps: int) -> list[float]:
    """Stamps at every ``on_train_batch_start`` of ``Trainer.fit``: ``"bare"`` or ``"train.py"``."""
    stamps = _Stamps()
    common = {"accelerator": "cpu", "devices": 1, "max_steps": steps, "log_every_n_steps": 50}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if config == "bare":
            trainer = L.Trainer(
                **common,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[stamps],
            )
        else:
            from lightning.pytorch.callbacks import ModelCheckpoint
            from lightning.pytorch.loggers import TensorBoardLogger

            trainer = L.Trainer(
                **common,
                logger=TensorBoardLogger(tmp, name="bench", default_hp_metric=False),
                profiler=NullProfiler(),
                callbacks=[
                    stamps,
                    ModelCheckpoint(dirpath=tmp, save_last=True),
                    TemperatureAnnealing(rate=1e-4, min_temperature=0.5, every_n_steps=500),
                    SampleImages(num_images=16),
                    ZooProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_RATE),
                ],
            )
        sink = open(os.devnull, "w")  # noqa: SIM115  (the progress bar and summary)
        with sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            trainer.fit(make_model("gumbel"), train_dataloaders=loader)
    return stamps.stamps


def mean_step(stamps: list[float], warmup: int) -> float:
    window = stamps[warmup:]
    return (window[-1] - window[0]) / (len(window) - 1)


def step_table(args: argparse.Namespace, loader: DataLoader, source: str) -> None:
    candidates: dict[str, Callable[[], list[float]]] = {
        "bare PyTorch loop": lambda: bare_loop("gumbel", loader, args.steps),
        "Lightning, bare config": lambda: lightning_loop("bare", loader, args.steps),
        "Lightning, as train.py": lambda: lightning_loop("train.py", loader, args.steps),
    }
    for name in ESTIMATORS:
        if name.startswith("reinforce"):
            candidates[name] = lambda name=name: bare_loop(name, loader, args.steps)
    for run in candidates.values():  # warm-up: imports, allocator, oneDNN primitives
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    everything: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(args.trials):
        order = list(candidates.items())
        for name, run in order if round_ % 2 == 0 else order[::-1]:
            wait_for_quiet(args.busy, max_wait=8.0, window=0.25)
            start = _cpu_snapshot()
            step = mean_step(run(), args.warmup)
            everything[name].append(step)
            if _others_cores(start) <= args.busy:
                times[name].append(step)
            print(f"round {round_ + 1}: {name}: {1e3 * step:.2f} ms/step", file=sys.stderr)
    median = {
        name: 1e3 * statistics.median(times[name] if len(times[name]) >= 3 else everything[name])
        for name in candidates
    }
    star = {name: "" if len(times[name]) >= 3 else "*" for name in candidates}
    print(
        f"\nVAE step, batch {BATCH}, {args.steps} steps per trial (first "
        f"{args.warmup} left out), {args.trials} interleaved trials, torch {torch.__version__}, "
        f"lightning {L.__version__}, {torch.get_num_threads()} threads; data: {source}.\n"
    )
    print("| loop | ms per step (median of trials) | × bare loop |")
    print("|---|---|---|")
    for name in ("bare PyTorch loop", "Lightning, bare config", "Lightning, as train.py"):
        ratio = median[name] / median["bare PyTorch loop"]
        print(f"| {name} | {median[name]:.2f}{star[name]} | {ratio:.2f} |")
    print("\n| estimator (bare loop) | ms per step | × S = 1 |")
    print("|---|---|---|")
    one = median["reinforce S=1 (EMA)"]
    for name in ("bare PyTorch loop", *[n for n in ESTIMATORS if n.startswith("reinforce")]):
        label = "gumbel (reference)" if name == "bare PyTorch loop" else name
        print(f"| {label} | {median[name]:.2f}{star[name]} | {median[name] / one:.2f} |")
    print(f"\n* fewer than 3 trials ran with other processes under {args.busy} cores: all used.")


# ------------------------------------------------------------------ nll_iw
def nll_iw_table(args: argparse.Namespace, images: torch.Tensor) -> None:
    model = make_model("gumbel").eval()
    batch = {"x": images[:BATCH].float()}
    with torch.no_grad():
        q = model.posterior(batch)
    chunks = [c for c in (10, 50, 100, 250, 500, 1000) if c <= args.samples]

    def run(chunk: int) -> Callable[[], object]:
        def call() -> object:
            model.importance_chunk_size = chunk
            return model.importance_log_likelihood(q, batch, args.samples)

        return call

    timings = measure({str(c): run(c) for c in chunks}, repeats=args.trials, min_time=0.0)
    base = timings["100"].median if "100" in timings else timings[str(chunks[0])].median
    print(
        f"\nnll_iw of a batch of {BATCH} images, m = {args.samples}, {torch.get_num_threads()} "
        "threads (train.py test: 100 such batches on the 10,000 test images)\n"
    )
    print("| importance_chunk_size | ms per batch, median [min–max] | × chunk 100 | floats held |")
    print("|---|---|---|---|")
    for chunk in chunks:
        timing = timings[str(chunk)]
        memory = chunk * BATCH * 784
        print(f"| {chunk} | {timing} | {timing.median / base:.2f} | {memory / 1e6:.1f} M |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="steps per trial")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of each trial")
    parser.add_argument("--trials", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--busy", type=float, default=0.3, help="reject above this many cores")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data-dir", default=None, help="dataset root (default $ZOO_DATA_DIR)")
    parser.add_argument("--nll-iw", action="store_true", help="only the nll_iw chunk table")
    parser.add_argument("--samples", type=int, default=1000, help="m for --nll-iw")
    args = parser.parse_args()
    if args.warmup + 2 > args.steps:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) by 2")
    torch.set_num_threads(args.threads)
    images, source = load_images(args.steps * BATCH, args.data_dir)
    if args.nll_iw:
        nll_iw_table(args, images)
        return
    loader = DataLoader(BinaryImageDataset(images), batch_size=BATCH, collate_fn=collate_batch)
    step_table(args, loader, source)


if __name__ == "__main__":
    main()
