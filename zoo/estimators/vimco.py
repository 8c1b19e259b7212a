r"""`VIMCO`: the multi-sample bound with leave-one-out learning signals (Mnih & Rezende 2016).

For a latent-variable model p(x, z) and S samples z_1..z_S ∼ q(z | x), the
importance weights w_s = p(x, z_s) / q(z_s | x) give the multi-sample bound
(Burda et al. 2016)

    L̂ = log (1/S) Σ_s w_s  ≤  log p(x),    E[L̂] increasing in S.

Its gradient with respect to θ (the parameters of q) has a score-function
part and a pathwise part through log q in w_s:

    ∇ L̂ = Σ_s (L̂ - L̂_{-s}) ∇ log q(z_s) + Σ_s ŵ_s ∇ log w_s,    ŵ_s = w_s / Σ_t w_t.

VIMCO's baseline for sample s is L̂_{-s}, the bound with log w_s replaced by
the mean of the other S - 1 log-weights; it does not depend on z_s, so the
estimate stays unbiased for ∇ E[L̂] ("Variational Inference for Monte Carlo
Objectives", Mnih & Rezende 2016, eqs. 8–10).

**What ``cost_fn`` returns.** The per-sample *negative joint log-likelihood*
c_s = -log p(x, z_s), shape ``(S, *batch)``, the prior's log-probability
included. VIMCO adds log q(z_s) itself (it has q), so
log w_s = -c_s - log q(z_s), and its gradient reaches θ through log q and the
model's parameters through c_s. The reported ``cost`` is -L̂, whose expectation
is an upper bound on -log p(x) (at S = 1 it would be the negative ELBO), and ``objective`` is
what a model minimizes: a model using VIMCO must not add KL(q ‖ p) or an
entropy term on top, since the bound already holds them.
"""

from __future__ import annotations

import math

import torch

from zoo.estimators.base import CostFn, Estimate, Estimator
from zoo.structures import Structure

__all__ = ["VIMCO"]


class VIMCO(Estimator):
    """VIMCO gradient of the S-sample bound; ``cost_fn`` returns -log p(x, z) (module docstring).

    Args:
        num_samples: S ≥ 2 exact samples per batch element (the leave-one-out
            signal needs at least one other sample).

    Raises:
        ValueError: num_samples < 2.

    Example:
        >>> from zoo.structures import Bernoulli
        >>> theta = torch.zeros(3, 4, requires_grad=True)
        >>> est = VIMCO(num_samples=5)(Bernoulli(theta), lambda z: (z - 1).pow(2).sum(-1))
        >>> est.z.shape, est.cost.shape
        (torch.Size([5, 3, 4]), torch.Size([3]))
    """

    multi_sample_bound = True

    def __init__(self, num_samples: int = 5) -> None:
        super().__init__(num_samples)
        if num_samples < 2:
            raise ValueError(
                f"VIMCO needs num_samples ≥ 2 (a leave-one-out signal), got {num_samples}"
            )

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        num = self.num_samples
        z = q.sample(num)  # (S, *batch, *event), no gradient
        cost = self.evaluate(cost_fn, z, q)  # -log p(x, z_s), (S, *batch)
        log_q = q.log_prob(z)  # (S, *batch), differentiable in θ
        log_w = -cost - log_q
        lw = log_w.detach()
        bound = torch.logsumexp(lw, 0) - math.log(num)  # L̂, (*batch)
        # Row s: the log-weights with entry s replaced by the mean of the others.
        others = (lw.sum(0, keepdim=True) - lw) / (num - 1)
        eye = torch.eye(num, dtype=torch.bool, device=lw.device)
        eye = eye.reshape(num, num, *([1] * (lw.dim() - 1)))
        swapped = torch.where(eye, others.unsqueeze(1), lw.unsqueeze(0))  # (S, S, *batch)
        loo = torch.logsumexp(swapped, 1) - math.log(num)  # L̂_{-s}, (S, *batch)
        weights = torch.softmax(lw, 0)  # ŵ_s
        # Gradient: Σ_s (L̂ - L̂_{-s}) ∇log q(z_s) + Σ_s ŵ_s ∇log w_s, negated (a cost).
        surrogate = -((bound - loo) * log_q + weights * log_w).sum(0)
        stats = {
            **self.spread(cost),
            # Effective sample size of the importance weights, 1 ≤ ESS ≤ S.
            "ess": (1.0 / weights.pow(2).sum(0)).mean(),
        }
        return Estimate(z=z, cost=-bound, surrogate=surrogate, stats=stats)
