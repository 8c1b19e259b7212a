"""`Reinforce`: the score-function (likelihood-ratio) estimator.

∇_θ E_q[f(z)] = E_q[(f(z) - b) ∇_θ log q(z)] for any b independent of z
(Williams 1992; Glynn 1990). With S samples z_s ∼ q the surrogate is

    (1/S) Σ_s [ f(z_s) + (f(z_s) - b_s)⁻ · log q(z_s) ],

where ⁻ stops the gradient: its θ-gradient is the estimate above, and the
first term carries the gradient of the cost's own parameters. Unbiased for any
cost, differentiable or not; its variance is what the baselines are for.
"""

from __future__ import annotations

import torch

from zoo.estimators.base import CostFn, Estimate, Estimator
from zoo.estimators.baselines import Baseline
from zoo.structures import Structure

__all__ = ["Reinforce"]


class Reinforce(Estimator):
    """Score-function estimator with an optional baseline.

    Args:
        num_samples: S ≥ 1 exact samples per batch element.
        baseline: a `Baseline` module (None: b = 0).

    Raises:
        ValueError: a baseline that needs more samples than ``num_samples``
            (``LeaveOneOutBaseline`` with S = 1).

    Example:
        >>> from zoo.structures import Categorical
        >>> from zoo.estimators import LeaveOneOutBaseline
        >>> est = Reinforce(num_samples=4, baseline=LeaveOneOutBaseline())
        >>> out = est(Categorical(torch.zeros(2, 3, 5)), lambda z: z[..., 0].sum(-1))
        >>> out.z.shape, out.cost.shape
        (torch.Size([4, 2, 3, 5]), torch.Size([2]))
    """

    def __init__(self, num_samples: int = 1, baseline: Baseline | None = None) -> None:
        super().__init__(num_samples)
        if baseline is not None and num_samples < baseline.min_samples:
            raise ValueError(
                f"{type(baseline).__name__} needs num_samples ≥ {baseline.min_samples}, "
                f"got num_samples={num_samples}"
            )
        self.baseline = baseline

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        num = self.num_samples
        z = q.sample(num)  # (S, *batch, *event), no gradient
        extra = None if self.baseline is None else self.baseline.extra_samples(q)
        # One cost_fn call for the samples and whatever the baseline needs.
        cost_all = self.evaluate(cost_fn, z if extra is None else torch.cat([z, extra]), q)
        cost, extra_cost = cost_all[:num], cost_all[num:]
        detached = cost.detach()
        stats = self.spread(cost)
        if self.baseline is None:
            advantage, baseline_loss = detached, 0.0
        else:
            b = self.baseline(q, detached, extra_cost.detach() if extra is not None else None)
            advantage = detached - b.detach()
            baseline_loss = self.baseline.loss(b, detached)
            stats["baseline"] = b.detach().mean()
            self.baseline.update(detached)
        surrogate = (cost + advantage * q.log_prob(z)).mean(0) + baseline_loss
        return Estimate(z=z, cost=detached.mean(0), surrogate=surrogate, stats=stats)
