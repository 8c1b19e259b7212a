"""`Reinforce`: the score-function (likelihood-ratio) estimator, optionally with PPO's clipped updates.

∇_θ E_q[f(z)] = E_q[(f(z) - b) ∇_θ log q(z)] for any b independent of z
(Williams 1992; Glynn 1990). With S samples z_s ∼ q the surrogate is

    (1/S) Σ_s [ f(z_s) + A_s⁻ · log q(z_s) ],    A_s = (f(z_s) - b_s) / σ,

where ⁻ stops the gradient: its θ-gradient is the estimate above, and the
first term carries the gradient of the cost's own parameters. Unbiased for any
cost, differentiable or not; its variance is what the baselines are for.
σ = 1 unless ``normalize_advantages``: then σ = max(1, √v) with v a running
average of the advantages' variance (Havrylov et al. 2019, "Cooperative
learning of disjoint syntax and semantics"), which bounds the policy's step
when the costs spread widely and leaves it alone otherwise; the direction of
the estimate is unchanged, its length is divided by σ.

**Proximal updates** (Schulman et al. 2017; for latent trees Havrylov et al.
2019). With ``policy_updates = K > 1`` the model takes, after its usual step,
K − 1 more steps of q's own parameters on the same batch, the same samples
and the same advantages, each on the clipped surrogate

    (1/S) Σ_s max(r_s A_s, clip(r_s, 1 − ε, 1 + ε) A_s),    r_s = q_new(z_s) / q_old(z_s),

(`clipped_surrogate`; A is a cost, so the max is the pessimistic bound). The
first step is the plain estimate above (r = 1). The estimator keeps its last
samples, log-probabilities and advantages for these steps (`rollout`); the
loop that takes them is `zoo.models.base.LatentVariableModel`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.estimators.base import CostFn, Estimate, Estimator
from zoo.estimators.baselines import Baseline, global_mean
from zoo.structures import Structure

__all__ = ["Reinforce", "Rollout"]


@dataclass(frozen=True)
class Rollout:
    """What a proximal update reuses: samples ``(S, *batch, *event)``, and ``(S, *batch)`` log q_old and advantages."""

    z: Tensor
    log_prob: Tensor
    advantage: Tensor


class Reinforce(Estimator):
    """Score-function estimator with an optional baseline, advantage scaling and proximal updates.

    Args:
        num_samples: S ≥ 1 exact samples per batch element.
        baseline: a `Baseline` module (None: b = 0).
        normalize_advantages: divide the advantages by max(1, running std) (see the module docstring).
        normalization_decay: weight of the old variance in that running average, in [0, 1).
        policy_updates: K ≥ 1 steps of q's parameters per batch; K > 1 adds K − 1 proximal steps.
        clip_ratio: ε > 0 of the proximal steps' clipped ratio.

    Raises:
        ValueError: a baseline that needs more samples than ``num_samples``
            (``LeaveOneOutBaseline`` with S = 1), K < 1, ε ≤ 0, a decay outside [0, 1).

    Example:
        >>> from zoo.structures import Categorical
        >>> from zoo.estimators import LeaveOneOutBaseline
        >>> est = Reinforce(num_samples=4, baseline=LeaveOneOutBaseline())
        >>> out = est(Categorical(torch.zeros(2, 3, 5)), lambda z: z[..., 0].sum(-1))
        >>> out.z.shape, out.cost.shape
        (torch.Size([4, 2, 3, 5]), torch.Size([2]))
    """

    def __init__(
        self,
        num_samples: int = 1,
        baseline: Baseline | None = None,
        normalize_advantages: bool = False,
        normalization_decay: float = 0.9,
        policy_updates: int = 1,
        clip_ratio: float = 0.2,
    ) -> None:
        super().__init__(num_samples)
        if baseline is not None and num_samples < baseline.min_samples:
            raise ValueError(
                f"{type(baseline).__name__} needs num_samples ≥ {baseline.min_samples}, "
                f"got num_samples={num_samples}"
            )
        if (
            isinstance(policy_updates, bool)
            or not isinstance(policy_updates, int)
            or policy_updates < 1
        ):
            raise ValueError(f"policy_updates must be an integer ≥ 1, got {policy_updates!r}")
        if not float(clip_ratio) > 0:
            raise ValueError(f"clip_ratio must be > 0, got {clip_ratio!r}")
        if not 0.0 <= float(normalization_decay) < 1.0:
            raise ValueError(f"normalization_decay must lie in [0, 1), got {normalization_decay!r}")
        self.baseline = baseline
        self.normalize_advantages = bool(normalize_advantages)
        self.normalization_decay = float(normalization_decay)
        self.policy_updates = policy_updates
        self.clip_ratio = float(clip_ratio)
        # Kept in checkpoints only when used, so older checkpoints still load.
        self.register_buffer("advantage_var", torch.ones(()), persistent=self.normalize_advantages)
        self.rollout: Rollout | None = None

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
        if self.normalize_advantages:
            scale = self._advantage_scale(advantage)
            advantage = advantage / scale
            stats["advantage_scale"] = scale
        log_prob = q.log_prob(z)
        if self.policy_updates > 1 and self.training:
            self.rollout = Rollout(z, log_prob.detach(), advantage)
        surrogate = (cost + advantage * log_prob).mean(0) + baseline_loss
        return Estimate(z=z, cost=detached.mean(0), surrogate=surrogate, stats=stats)

    @torch.no_grad()
    def _advantage_scale(self, advantage: Tensor) -> Tensor:
        """max(1, √v), v the running variance of the advantages (updated in training only)."""
        if self.training and advantage.numel() > 1:
            variance = global_mean((advantage - global_mean(advantage)).pow(2)).to(
                self.advantage_var
            )
            decay = self.normalization_decay
            self.advantage_var.mul_(decay).add_((1.0 - decay) * variance)
        return self.advantage_var.sqrt().clamp(min=1.0).to(advantage.dtype)

    def clipped_surrogate(self, q: Structure, rollout: Rollout | None = None) -> Tensor:
        """``(*batch)`` PPO's clipped surrogate of the kept ``rollout`` under the updated q.

        Its gradient moves q's parameters; its value is the pessimistic (larger)
        of the ratio-weighted and clipped-ratio-weighted advantages, averaged over samples.

        Raises:
            RuntimeError: no rollout was kept (``policy_updates = 1`` or no training step yet).
        """
        rollout = self.rollout if rollout is None else rollout
        if rollout is None:
            raise RuntimeError(
                "Reinforce.clipped_surrogate needs the samples of a training step: set "
                "policy_updates > 1 and call the estimator in training mode first"
            )
        ratio = (q.log_prob(rollout.z) - rollout.log_prob).exp()
        clipped = ratio.clamp(1.0 - self.clip_ratio, 1.0 + self.clip_ratio)
        return torch.maximum(ratio * rollout.advantage, clipped * rollout.advantage).mean(0)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.normalize_advantages:
            extra += ", normalize_advantages=True"
        if self.policy_updates > 1:
            extra += f", policy_updates={self.policy_updates}, clip_ratio={self.clip_ratio:g}"
        return extra
