"""Bias and variance of every estimator on one fixed toy problem.

The problem: q = Categorical over N = 3 variables with K = 4 classes, θ drawn
from N(0, 1) with a fixed seed (float64), and the nonlinear cost
f(z) = sin(3⟨a, z⟩) + ⟨b, z⟩² with fixed random a, b. For each estimator,
D independent gradient draws are made in one vectorized call
(`zoo.testing.check_estimator`) and compared with the exact gradient:
cosine similarity of the mean draw to the exact gradient (1 = no bias in
direction), relative bias ‖mean - exact‖ / ‖exact‖, the per-draw variance
averaged over the coordinates of θ, and max |z| (bias in standard errors;
< 5 is consistent with an unbiased estimator).

Run: python bench/estimators.py [--draws 20000] [--structure categorical|bernoulli|chain]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.estimators import (
    GreedyBaseline,
    GumbelSoftmax,
    LearnedBaseline,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    PerturbAndMAP,
    Reinforce,
    STGumbelSoftmax,
    StraightThrough,
)
from zoo.structures import Bernoulli, Categorical, Structure
from zoo.testing import check_estimator


def problem(name: str) -> Structure:
    g = torch.Generator().manual_seed(0)
    if name == "categorical":
        return Categorical(torch.randn(1, 3, 4, generator=g, dtype=torch.float64))
    if name == "bernoulli":
        return Bernoulli(torch.randn(1, 6, generator=g, dtype=torch.float64))
    if name == "chain":
        from zoo.structures import LinearChainCRF

        return LinearChainCRF(torch.randn(1, 3, 3, 3, generator=g, dtype=torch.float64))
    raise ValueError(f"unknown structure {name!r}")


def make_cost(q: Structure):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(q.event_shape, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(q.event_shape, generator=g, dtype=torch.float64)
    dims = tuple(range(-q.event_dim, 0))
    return lambda z: torch.sin(3 * (z * a).sum(dims)) + (z * b).sum(dims) ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20000)
    parser.add_argument("--structure", default="categorical")
    args = parser.parse_args()
    torch.manual_seed(0)
    q = problem(args.structure)
    parts = q.event_shape.numel()
    rows = [
        ("GumbelSoftmax(τ=1)", GumbelSoftmax(1.0)),
        ("GumbelSoftmax(τ=0.5)", GumbelSoftmax(0.5)),
        ("GumbelSoftmax(τ=0.1)", GumbelSoftmax(0.1)),
        ("STGumbelSoftmax(τ=1)", STGumbelSoftmax(1.0)),
        ("STGumbelSoftmax(τ=0.5)", STGumbelSoftmax(0.5)),
        ("StraightThrough", StraightThrough()),
        ("PerturbAndMAP(st, τ=0.5)", PerturbAndMAP(0.5)),
        ("PerturbAndMAP(imle, λ=1)", PerturbAndMAP(gradient="imle", imle_lambda=1.0)),
        ("PerturbAndMAP(imle, λ=0.1)", PerturbAndMAP(gradient="imle", imle_lambda=0.1)),
        ("Reinforce(S=1)", Reinforce(1)),
        ("Reinforce(S=1, EMA 0.9)", Reinforce(1, MovingAverageBaseline(0.9))),
        ("Reinforce(S=1, learned)", Reinforce(1, LearnedBaseline(parts, 16))),
        ("Reinforce(S=1, greedy)", Reinforce(1, GreedyBaseline())),
        ("Reinforce(S=2, leave-one-out)", Reinforce(2, LeaveOneOutBaseline())),
        ("Reinforce(S=4, leave-one-out)", Reinforce(4, LeaveOneOutBaseline())),
    ]
    cost = make_cost(q)
    print(f"structure: {q!r}; cost: sin(3<a,z>) + <b,z>^2; draws: {args.draws}\n")
    print("| estimator | cosine to exact | relative bias | variance per draw | max abs z |")
    print("|---|---|---|---|---|")
    for name, estimator in rows:
        # The learned baseline gets a short fit first: it is only as good as its regression.
        if isinstance(getattr(estimator, "baseline", None), LearnedBaseline):
            opt = torch.optim.Adam(estimator.parameters(), lr=1e-2)
            for _ in range(300):
                theta = q.log_potentials.expand(256, *q.log_potentials.shape)
                loss = estimator(q.with_potentials(theta), cost).surrogate.sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        r = check_estimator(estimator, q, cost, draws=args.draws, warmup=3)
        rel = float((r.mean - r.exact).norm() / r.exact.norm())
        print(f"| {name} | {r.cosine:.4f} | {rel:.3f} | {r.variance:.4g} | {r.max_abs_z:.1f} |")


if __name__ == "__main__":
    main()
