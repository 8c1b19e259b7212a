"""Polynomial programming (Liu et al. 2023, §6.1): every estimator that applies to Bernoulli bits.

The paper's setting (ReinMax, "Bridging Discrete and Backpropagation:
Straight-Through and Beyond", NeurIPS 2023, §6.1 and Figure 3; its public
``poly/poly_programming.py`` gives the defaults):

    128 independent binary latents z_n, each a 2-way softmax over two logits
    (a_n0, a_n1) initialised U(-0.01, 0.01), z_n = 1 for the first class;
    loss  (1/128) Σ_n |z_n - 0.45|^p  for p ∈ {1.5, 2, 3},
    batch 64 (64 independent samples per step, the mean loss),
    Adam, lr 1e-3, 40 epochs × 200 steps, τ = 1, 10 seeds;
    reported: the training loss averaged over the last epoch (200 steps).

Here z_n ∼ Bernoulli(σ(a_n0 - a_n1)), which is the same distribution and
gives the same gradient to (a_n0, a_n1) as the paper's 2-way softmax, so Adam
sees the same parameters. The optimum is z = 0 (|0.45|^p < |0.55|^p), with
loss 0.45^p; the table also gives the exact expected loss of the final θ,
E_q (1/128) Σ |z_n - 0.45|^p, which no sample noise blurs, and, for reference,
exact gradient descent (the expectation is linear in σ(θ)).

Every estimator gets 64 cost evaluations per step: S = 1 on a batch of 64,
S = 2 on a batch of 32 for leave-one-out and the unordered set, one
antithetic pair on a batch of 32 for ARM and DisARM. The 10 seeds are run as
one batch of independent problems (Adam acts elementwise, so they do not
interact; the moving-average baseline is one scalar, shared by the seeds).

Run: OMP_NUM_THREADS=1 python bench/polynomial_programming.py [--seeds 10] [--epochs 40]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.estimators import (
    ARM,
    DisARM,
    Estimator,
    GappedStraightThrough,
    GreedyBaseline,
    GumbelRao,
    GumbelSoftmax,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    PerturbAndMAP,
    Reinforce,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
    UnorderedSetReinforce,
)
from zoo.structures import Bernoulli

LATENTS, TARGET, BATCH, STEPS_PER_EPOCH, LR = 128, 0.45, 64, 200, 1e-3

# name -> (estimator factory, batch): 64 cost evaluations per step each.
ESTIMATORS: dict[str, tuple[Callable[[], Estimator], int]] = {
    "ReinMax (τ=1)": (lambda: ReinMax(1.0), BATCH),
    "Gapped ST (τ=1, κ=1)": (lambda: GappedStraightThrough(1.0, gap=1.0), BATCH),
    "ST Gumbel-Softmax (τ=1)": (lambda: STGumbelSoftmax(1.0), BATCH),
    "Gumbel-Rao (τ=1, K=10)": (lambda: GumbelRao(1.0, num_rao=10), BATCH),
    "straight-through": (lambda: StraightThrough(), BATCH),
    "Gumbel-Softmax (τ=1, relaxed)": (lambda: GumbelSoftmax(1.0), BATCH),
    "perturb-and-MAP I-MLE (λ=1)": (lambda: PerturbAndMAP(gradient="imle"), BATCH),
    "REINFORCE": (lambda: Reinforce(), BATCH),
    "REINFORCE, moving average": (lambda: Reinforce(1, MovingAverageBaseline(0.9)), BATCH),
    "REINFORCE, greedy baseline": (lambda: Reinforce(1, GreedyBaseline()), BATCH),
    "REINFORCE, leave-one-out (S=2)": (lambda: Reinforce(2, LeaveOneOutBaseline()), BATCH // 2),
    "unordered set (S=2)": (lambda: UnorderedSetReinforce(2), BATCH // 2),
    "ARM": (lambda: ARM(1), BATCH // 2),
    "DisARM": (lambda: DisARM(1), BATCH // 2),
}


def expected_loss(theta: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """E_q (1/N) Σ_n |z_n - 0.45|^p per problem: θ ``(R, N)``, p ``(R, 1)`` → ``(R,)``."""
    one = torch.sigmoid(theta)
    return (one * (1 - TARGET) ** p + (1 - one) * TARGET**p).mean(-1)


def run(make: Callable[[], Estimator] | None, batch: int, powers: torch.Tensor, epochs: int):
    """Train R independent problems at once, problem r with power ``powers[r]``.

    Returns:
        (last-epoch mean training loss, final expected loss), each ``(R,)``.
    """
    torch.manual_seed(0)
    rows = powers.numel()
    p = powers.reshape(rows, 1)
    logits = torch.empty(rows, LATENTS, 2).uniform_(-0.01, 0.01).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=LR)
    estimator = None if make is None else make()

    def cost(z: torch.Tensor) -> torch.Tensor:  # (S, R, batch, N) -> (S, R, batch)
        return (z - TARGET).abs().pow(p.unsqueeze(-1)).mean(-1)

    last = torch.zeros(rows)
    for epoch in range(epochs):
        for _ in range(STEPS_PER_EPOCH):
            theta = logits[..., 0] - logits[..., 1]  # (R, N)
            if estimator is None:
                loss = expected_loss(theta, p)
            else:
                q = Bernoulli(theta.unsqueeze(1).expand(rows, batch, LATENTS))
                loss = estimator(q, cost).objective.mean(-1)  # (R,)
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
            if epoch == epochs - 1:
                last += loss.detach() / STEPS_PER_EPOCH
    with torch.no_grad():
        final = expected_loss(logits[..., 0] - logits[..., 1], p)
    return last, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--powers", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--skip", nargs="*", default=[], help="estimator names to leave out")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = {"exact gradient (reference)": (None, BATCH), **ESTIMATORS}
    if args.skip:
        rows = {name: row for name, row in rows.items() if name not in args.skip}
    # Every (power, seed) pair is one row of one batched run.
    powers = torch.tensor(args.powers).repeat_interleave(args.seeds)
    results: dict[str, dict[float, tuple]] = {}
    for name, (make, batch) in rows.items():
        start = time.perf_counter()
        last, final = run(make, batch, powers, args.epochs)
        last, final = last.view(-1, args.seeds), final.view(-1, args.seeds)
        results[name] = {p: (last[i], final[i]) for i, p in enumerate(args.powers)}
        summary = "  ".join(f"p={p:g}: {last[i].mean():.5f}" for i, p in enumerate(args.powers))
        print(f"{name:34s} {summary}  ({time.perf_counter() - start:.0f} s)", flush=True)

    print(
        f"\n{args.seeds} seeds, {args.epochs} × {STEPS_PER_EPOCH} steps; training loss over "
        "the last epoch, mean ± std over seeds (the paper's quantity); in brackets the "
        "exact expected loss of the final θ; optimum 0.45^p; ratio: the last-epoch loss "
        "minus the optimum, over ReinMax's\n"
    )
    head = "| estimator | " + " | ".join(f"p = {p:g}" for p in args.powers) + " |"
    print(head)
    print("|---|" + "---|" * len(args.powers))
    reference = "ReinMax (τ=1)"
    for name in rows:
        cells = []
        for p in args.powers:
            last, final = results[name][p]
            optimum = TARGET**p
            gap = float(last.mean()) - optimum
            ratio = gap / (float(results[reference][p][0].mean()) - optimum)
            ratio_text = f"{ratio:.2f}" if math.isfinite(ratio) else "–"
            cells.append(f"{last.mean():.4f} ± {last.std():.4f} [{final.mean():.4f}] ×{ratio_text}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| optimum 0.45^p | " + " | ".join(f"{TARGET**p:.4f}" for p in args.powers) + " |")


if __name__ == "__main__":
    main()
