"""What a `GradientStatistics` call costs, against the training step it interrupts.

For the categorical VAE of Jang et al. (20 × 10 latents, 784-512-256, batch
100; synthetic 784-pixel data, so no files are needed) and each estimator,
the median wall time of

* one training step (forward, backward, Adam; a plain loop, no Lightning), and
* one call of `gradient_statistics` as the callback makes it (K probes on
  ``--examples`` examples; the reference is REINFORCE with 256 or 1,024
  samples and leave-one-out baselines, since 10^20 z cannot be enumerated),

and their ratio: the overhead of measuring every n steps is ratio / n.

    nice -n 10 python bench/gradient_statistics.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zoo.data import SyntheticBinaryDataModule
from zoo.estimators import (
    GumbelSoftmax,
    LeaveOneOutBaseline,
    Reinforce,
    STGumbelSoftmax,
)
from zoo.lab import gradient_statistics
from zoo.models import VAE, CategoricalLatent

ESTIMATORS = {
    "gumbel": lambda: GumbelSoftmax(temperature=1.0),
    "st-gumbel": lambda: STGumbelSoftmax(temperature=1.0),
    "reinforce-loo (S=4)": lambda: Reinforce(num_samples=4, baseline=LeaveOneOutBaseline()),
}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--reference_samples", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = SyntheticBinaryDataModule(num_train=200, dim=784, batch_size=100)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    fixed = {k: v[: args.examples] for k, v in batch.items()}
    print(
        f"threads={args.threads}, K={args.probes} probes on {args.examples} examples, "
        f"median of {args.repeats}"
    )
    print(
        "| estimator | REINFORCE reference samples | train step (ms) | statistics call (ms) "
        "| ratio | overhead every 100 / 250 steps |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, make in ESTIMATORS.items():
        model = VAE(make(), CategoricalLatent(), num_importance_samples=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(model=model, optimizer=optimizer) -> None:
            optimizer.zero_grad()
            model(batch).mean().backward()
            optimizer.step()

        for samples in args.reference_samples:

            def measure(model=model, samples=samples) -> None:
                gradient_statistics(model, fixed, num_probes=args.probes, reference_samples=samples)

            # Alternating, so that a change in the machine's load hits both alike.
            train = median_time(step, args.repeats)
            call = median_time(measure, args.repeats)
            train = (train + median_time(step, args.repeats)) / 2
            ratio = call / train
            print(
                f"| {name} | {samples} | {1e3 * train:.1f} | {1e3 * call:.1f} | {ratio:.1f} | "
                f"{100 * ratio / 100:.1f} % / {100 * ratio / 250:.1f} % |"
            )


if __name__ == "__main__":
    main()
