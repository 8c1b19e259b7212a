"""The MNIST-VAE grid of ReinMax (Liu et al. 2023, §6.2), at a reduced CPU budget.

The paper's setting (its public ``mnist_vae/gumbel_softmax_vae.py`` and the
``reinmax_<C>_<L>.sh`` scripts): non-binarized MNIST (the 60,000 training
images, intensities in [0, 1] as targets of a Bernoulli likelihood, i.e. BCE),
L categorical latents of C classes each, a uniform prior and the exact KL,
encoder 784-512-256-(L·C) and decoder (L·C)-256-512-784 with ReLU, batch 100,
160 epochs (96,000 steps), Adam; for ReinMax lr 5e-4 and τ = 1.3 (RAdam for
10×30); the other estimators' lr and τ searched per shape. Reported: the
training −ELBO averaged over the last epoch, mean over 10 seeds. Shapes
C × L: 8×4, 4×24, 8×16, 16×12, 64×8, 10×30.

Here: the zoo's own `VAE` with a `CategoricalLatent` (the same MLPs, the zoo's Bernoulli
likelihood on the grey levels, which is the same BCE) trained by Lightning
for ``--steps`` steps (default 3,000, i.e. 5 epochs: 3 % of the paper's
budget) with Adam at lr 5e-4 for every estimator and a fixed τ per estimator
(below), one seed. Reported: the training −ELBO averaged over the last 600
steps (one epoch), and its ratio to ReinMax's in the same run. A budget this
small ranks how fast each estimator starts, not where it ends.

Run: OMP_NUM_THREADS=1 python bench/reinmax_vae.py [--shapes 8x4 10x30] [--steps 3000]
"""

from __future__ import annotations

import argparse
import gzip
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402

from zoo.estimators import (  # noqa: E402
    Estimator,
    GappedStraightThrough,
    GumbelRao,
    LeaveOneOutBaseline,
    Reinforce,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
)
from zoo.models import VAE, CategoricalLatent  # noqa: E402

ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "ReinMax (τ=1.3)": lambda: ReinMax(1.3),
    "Gapped ST (τ=1, κ=1)": lambda: GappedStraightThrough(1.0, gap=1.0),
    "ST Gumbel-Softmax (τ=1)": lambda: STGumbelSoftmax(1.0),
    "Gumbel-Rao (τ=1, K=10)": lambda: GumbelRao(1.0, num_rao=10),
    "straight-through": lambda: StraightThrough(),
    "REINFORCE, leave-one-out (S=4)": lambda: Reinforce(4, LeaveOneOutBaseline()),
}
LAST = 600  # steps averaged for the reported training −ELBO: one epoch of 60,000 / 100


def mnist_grey(data_dir: Path) -> torch.Tensor:
    """The 60,000 MNIST training images as ``(60000, 784)`` float32 intensities in [0, 1]."""
    path = data_dir / "mnist" / "train-images-idx3-ubyte.gz"
    if not path.is_file():
        raise FileNotFoundError(f"no MNIST images at {path}; data/README.md says where they go")
    with gzip.open(path, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    return torch.from_numpy(raw.reshape(-1, 784).astype(np.float32) / 255.0)


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i]}


class _Losses(L.Callback):
    """Records the training loss (the −ELBO of the batch) at every step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def run(make: Callable[[], Estimator], shape: tuple[int, int], images, steps: int, seed: int):
    """Train one VAE; return (mean training −ELBO of the last ``LAST`` steps, seconds)."""
    classes, latents = shape
    L.seed_everything(seed, verbose=False)
    model = VAE(make(), CategoricalLatent(latents, classes), hidden_sizes=(512, 256), lr=5e-4)
    loader = torch.utils.data.DataLoader(_Images(images), batch_size=100, shuffle=True)
    losses = _Losses()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
    )
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    return float(np.mean(losses.values[-LAST:])), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["8x4", "10x30"], help="C x L")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--estimators", nargs="*", default=list(ESTIMATORS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    images = mnist_grey(args.data_dir)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    results: dict[str, dict[tuple, float]] = {name: {} for name in args.estimators}
    for shape in shapes:
        for name in args.estimators:
            loss, seconds = run(ESTIMATORS[name], shape, images, args.steps, args.seed)
            results[name][shape] = loss
            print(f"{shape[0]}x{shape[1]} {name:32s} train -ELBO {loss:8.2f}  ({seconds:.0f} s)")
            sys.stdout.flush()

    print(
        f"\ntraining −ELBO (nats), mean of the last {LAST} of {args.steps} steps, seed "
        f"{args.seed}; in brackets the ratio to ReinMax's in this run\n"
    )
    print("| estimator | " + " | ".join(f"{c}×{n}" for c, n in shapes) + " |")
    print("|---|" + "---|" * len(shapes))
    reference = "ReinMax (τ=1.3)"
    for name in args.estimators:
        cells = []
        for shape in shapes:
            ratio = results[name][shape] / results[reference][shape] if reference in results else 1
            cells.append(f"{results[name][shape]:.2f} (×{ratio:.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
