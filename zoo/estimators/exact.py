"""Exact expectations: `Exact` by enumeration, the reference every estimator is tested
against; `MarginalExpectation` from the marginals, for costs affine in z."""

from __future__ import annotations

import torch

from zoo.estimators.base import CostFn, Estimate, Estimator
from zoo.estimators.support import support_size
from zoo.structures import Structure

__all__ = ["Exact", "MarginalExpectation"]


class Exact(Estimator):
    """E_q[f] = Σ_z q(z) f(z) over the whole support (small spaces only).

    ``cost_fn`` is called once on every z, ``(|Z|, *batch, *event)``; the
    surrogate is the exact expectation, so its gradient is the exact gradient
    with respect to θ and to the cost's own parameters.

    The support is counted before anything is allocated
    (`zoo.estimators.support.support_size`): a 20 × 10 categorical has 10^20
    outcomes, which would exhaust any memory, so supports larger than
    ``max_support`` per batch element are refused. Memory is about
    |Z| · batch · parts numbers, so the default (10^6) already needs a small
    batch; lower it to fail earlier.

    Args:
        max_support: the largest |Z| per batch element that is enumerated (≥ 1).

    Raises:
        ValueError: ``max_support`` < 1; at call time, a structure whose support
            exceeds it (the message gives the size).

    Example:
        >>> import torch
        >>> from zoo.structures import Categorical
        >>> theta = torch.zeros(1, 2, 3, requires_grad=True)
        >>> est = Exact()(Categorical(theta), lambda z: z[..., 0].sum(-1))
        >>> est.cost
        tensor([0.6667])
    """

    def __init__(self, max_support: int = 10**6) -> None:
        super().__init__(num_samples=1)
        if isinstance(max_support, bool) or not isinstance(max_support, int) or max_support < 1:
            raise ValueError(f"max_support must be an integer ≥ 1, got {max_support!r}")
        self.max_support = max_support

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        size = support_size(q)
        if size is not None and size > self.max_support:
            raise ValueError(
                f"Exact: {q!r} has {_readable(size)} structures per batch element, more than "
                f"max_support={self.max_support:,}; enumerating them would need about "
                f"{_readable(size * q.event_shape.numel())} numbers per batch element. Use a "
                f"sampling estimator, or raise max_support if the memory is there"
            )
        # Padded rows (batch elements with smaller supports) get weight 0.
        z, valid = q.enumerate_padded_support()  # (|Z|, *batch, *event), (|Z|, *batch)
        cost = self.evaluate(cost_fn, z, q)  # (|Z|, *batch)
        weight = torch.where(valid, q.log_prob(z).exp(), 0.0)
        expected = (weight * cost).sum(0)
        return Estimate(z=z, cost=expected.detach(), surrogate=expected)

    def extra_repr(self) -> str:
        return f"max_support={self.max_support}"


class MarginalExpectation(Estimator):
    """E_q[f(z)] = f(μ_q) for a cost f affine in z: exact value and gradient, no sampling.

    An affine f commutes with the expectation, E_q[f(z)] = f(E_q[z]), and
    E_q[z] = μ_q, the structure's marginals, so ``cost_fn`` is called once, on
    μ_q ``(1, *batch, *event)``, and the gradient flows through the marginals
    (a backward pass of the structure's dynamic program). The HMM tagger's
    cost −log p(x | z) = −Σ_n ⟨z_n, log B(·, x_n)⟩ is linear in the chain
    parts: this is its exact mode. For any other cost the value is wrong (by
    Jensen's gap), and the models whose cost is not affine refuse it.

    Example:
        >>> import torch
        >>> from zoo.structures import Categorical
        >>> theta = torch.zeros(1, 2, 3, requires_grad=True)
        >>> MarginalExpectation()(Categorical(theta), lambda z: z[..., 0].sum(-1)).cost
        tensor([0.6667])
    """

    def __init__(self) -> None:
        super().__init__(num_samples=1)

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        z = q.marginals().unsqueeze(0)  # (1, *batch, *event)
        cost = self.evaluate(cost_fn, z, q)[0]
        return Estimate(z=z, cost=cost.detach(), surrogate=cost)

    def extra_repr(self) -> str:
        return ""


def _readable(count: int) -> str:
    """``1,000,000`` below 10^9, ``1e+20`` above (an exact int may have many digits)."""
    return f"{count:,}" if count < 10**9 else f"{float(count):.3g}"
