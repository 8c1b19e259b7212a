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

The last column divides the variance by that of straight-through
Gumbel-Softmax (τ = 0.5) in the same run, the reference Gumbel-Rao is meant
to improve on. Rows for estimators made for other structures (ARM and DisARM
are for Bernoulli, Gumbel-CRF for chains, Gumbel-Rao needs conditional noise,
the unordered-set estimator is for Categorical)
are listed as n/a. A second table checks VIMCO against the exact gradient of
its own objective, the S-sample bound E[log (1/S) Σ_s w_s] with
log w_s = -f(z_s) - log q(z_s), enumerated over every S-tuple.

With ``--structure chain`` or ``tree`` (a projective dependency tree over 4
words, 30 trees) the rows that apply to any structure are measured there,
among them the structured forms of ReinMax and gapped straight-through.
``--cost quadratic`` replaces the cost by the quadratic
⟨a, z⟩ + ⟨b, z⟩² - ½⟨c, z⟩², on which ReinMax at τ = 1 is unbiased on every
structure.

Run: python bench/estimators.py [--draws 20000] [--structure categorical|bernoulli|chain|tree]
     [--cost nonlinear|quadratic]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.estimators import (
    ARM,
    VIMCO,
    DisARM,
    GappedStraightThrough,
    GreedyBaseline,
    GumbelCRF,
    GumbelRao,
    GumbelSoftmax,
    LearnedBaseline,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    PerturbAndMAP,
    Reinforce,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
    UnorderedSetReinforce,
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
    if name == "tree":
        from zoo.structures import DependencyCRF

        return DependencyCRF(
            torch.randn(1, 4, 4, generator=g, dtype=torch.float64), multiroot=False
        )
    raise ValueError(f"unknown structure {name!r}; expected categorical, bernoulli, chain or tree")


def make_cost(q: Structure):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(q.event_shape, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(q.event_shape, generator=g, dtype=torch.float64)
    dims = tuple(range(-q.event_dim, 0))
    return lambda z: torch.sin(3 * (z * a).sum(dims)) + (z * b).sum(dims) ** 2


def make_quadratic_cost(q: Structure):
    """⟨a, z⟩ + ⟨b, z⟩² - ½⟨c, z⟩² with fixed random a, b, c (ReinMax's second-order case)."""
    g = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(q.event_shape, generator=g, dtype=torch.float64) for _ in range(3))
    dims = tuple(range(-q.event_dim, 0))
    return lambda z: (z * a).sum(dims) + (z * b).sum(dims) ** 2 - 0.5 * (z * c).sum(dims) ** 2


def vimco_table(q: Structure, cost, draws: int) -> None:
    """VIMCO's mean gradient against the exact gradient of the S-sample bound."""
    print("\n| VIMCO | cosine to exact | relative bias | variance per draw | max abs z |")
    print("|---|---|---|---|---|")
    for num in (2, 3):
        theta = q.log_potentials.detach().clone().requires_grad_(True)
        p = q.with_potentials(theta)
        support = p.enumerate_support()  # (M, *batch, *event)
        tuples = torch.tensor(list(itertools.product(range(support.shape[0]), repeat=num)))
        z = support[tuples.T]  # (S, T, *batch, *event)
        log_q = p.log_prob(z)
        bound = torch.logsumexp(-cost(z) - log_q, 0) - math.log(num)
        (exact,) = torch.autograd.grad(-(log_q.sum(0).exp() * bound).sum(), theta)
        rep = q.log_potentials.detach().expand(draws, *theta.shape).clone().requires_grad_(True)
        VIMCO(num)(q.with_potentials(rep), cost).surrogate.sum().backward()
        mean, std = rep.grad.mean(0), rep.grad.std(0)
        z_score = ((mean - exact).abs() / (std / math.sqrt(draws)).clamp(min=1e-300)).max()
        cosine = torch.nn.functional.cosine_similarity(mean.flatten(), exact.flatten(), dim=0)
        rel = float((mean - exact).norm() / exact.norm())
        print(
            f"| VIMCO(S={num}) | {cosine:.4f} | {rel:.3f} | {float(std.pow(2).mean()):.4g} "
            f"| {float(z_score):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20000)
    parser.add_argument("--structure", default="categorical")
    parser.add_argument("--cost", choices=["nonlinear", "quadratic"], default="nonlinear")
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
        ("GumbelRao(τ=0.5, K=1)", GumbelRao(0.5, num_rao=1)),
        ("GumbelRao(τ=0.5, K=10)", GumbelRao(0.5, num_rao=10)),
        ("GumbelRao(τ=0.5, K=100)", GumbelRao(0.5, num_rao=100)),
        ("GumbelCRF(τ=1)", GumbelCRF(1.0)),
        ("GumbelCRF(τ=0.5)", GumbelCRF(0.5)),
        ("GumbelCRF(ST, τ=0.5)", GumbelCRF(0.5, straight_through=True)),
        ("StraightThrough", StraightThrough()),
        ("ReinMax(τ=1)", ReinMax(1.0)),
        ("ReinMax(τ=1.3)", ReinMax(1.3)),
        ("GappedStraightThrough(τ=1, κ=1)", GappedStraightThrough(1.0)),
        ("GappedStraightThrough(τ=0.5, κ=1)", GappedStraightThrough(0.5)),
        ("PerturbAndMAP(st, τ=0.5)", PerturbAndMAP(0.5)),
        ("PerturbAndMAP(imle, λ=1)", PerturbAndMAP(gradient="imle", imle_lambda=1.0)),
        ("PerturbAndMAP(imle, λ=0.1)", PerturbAndMAP(gradient="imle", imle_lambda=0.1)),
        ("Reinforce(S=1)", Reinforce(1)),
        ("Reinforce(S=1, EMA 0.9)", Reinforce(1, MovingAverageBaseline(0.9))),
        ("Reinforce(S=1, learned)", Reinforce(1, LearnedBaseline(parts, 16))),
        ("Reinforce(S=1, greedy)", Reinforce(1, GreedyBaseline())),
        ("Reinforce(S=2, leave-one-out)", Reinforce(2, LeaveOneOutBaseline())),
        ("Reinforce(S=4, leave-one-out)", Reinforce(4, LeaveOneOutBaseline())),
        ("UnorderedSetReinforce(k=2)", UnorderedSetReinforce(2)),
        ("UnorderedSetReinforce(k=4)", UnorderedSetReinforce(4)),
        ("ARM (2 evaluations)", ARM()),
        ("DisARM (2 evaluations)", DisARM()),
    ]
    if args.cost == "quadratic":
        cost, formula = make_quadratic_cost(q), "<a,z> + <b,z>^2 - <c,z>^2/2"
    else:
        cost, formula = make_cost(q), "sin(3<a,z>) + <b,z>^2"
    print(f"structure: {q!r}; cost: {formula}; draws: {args.draws}\n")
    print(
        "| estimator | cosine to exact | relative bias | variance per draw | max abs z | variance ÷ ST-Gumbel(τ=0.5) |"
    )
    print("|---|---|---|---|---|---|")
    results = {}
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
        try:
            results[name] = check_estimator(estimator, q, cost, draws=args.draws, warmup=3)
        except TypeError:
            results[name] = None  # made for another kind of structure
    reference = results["STGumbelSoftmax(τ=0.5)"].variance
    for name, r in results.items():
        if r is None:
            print(f"| {name} | n/a | n/a | n/a | n/a | n/a |")
            continue
        rel = float((r.mean - r.exact).norm() / r.exact.norm())
        print(
            f"| {name} | {r.cosine:.4f} | {rel:.3f} | {r.variance:.4g} | {r.max_abs_z:.1f} "
            f"| {r.variance / reference:.3f} |"
        )
    vimco_table(q, cost, args.draws)


if __name__ == "__main__":
    main()
