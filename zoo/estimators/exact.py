"""`Exact`: the expectation by enumeration, the reference every estimator is tested against."""

from __future__ import annotations

import torch

from zoo.estimators.base import CostFn, Estimate, Estimator
from zoo.structures import Structure

__all__ = ["Exact"]


class Exact(Estimator):
    """E_q[f] = Σ_z q(z) f(z) over the whole support (small spaces only).

    ``cost_fn`` is called once on every z, ``(|Z|, *batch, *event)``; the
    surrogate is the exact expectation, so its gradient is the exact gradient
    with respect to θ and to the cost's own parameters.

    Example:
        >>> import torch
        >>> from zoo.structures import Categorical
        >>> theta = torch.zeros(1, 2, 3, requires_grad=True)
        >>> est = Exact()(Categorical(theta), lambda z: z[..., 0].sum(-1))
        >>> est.cost
        tensor([0.6667])
    """

    def __init__(self) -> None:
        super().__init__(num_samples=1)

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        # Padded rows (batch elements with smaller supports) get weight 0.
        z, valid = q.enumerate_padded_support()  # (|Z|, *batch, *event), (|Z|, *batch)
        cost = self.evaluate(cost_fn, z, q)  # (|Z|, *batch)
        weight = torch.where(valid, q.log_prob(z).exp(), 0.0)
        expected = (weight * cost).sum(0)
        return Estimate(z=z, cost=expected.detach(), surrogate=expected)

    def extra_repr(self) -> str:
        return ""
