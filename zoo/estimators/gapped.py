r"""`GappedStraightThrough` (Fan et al. 2022): straight-through Gumbel without the noise.

Fan, Liu, Luo, Chen & Gao (2022), "Training Discrete Deep Generative Models via
Gapped Straight-Through Estimator" (ICML). Straight-through Gumbel-Softmax
differentiates softmax((θ + G)/τ) with Gumbel noise G drawn so that
argmax(θ + G) = D. The paper keeps two properties of that relaxation and drops
the noise, the source of its variance: the relaxation is taken at perturbed
logits θ + m, with m a deterministic function of θ and the sample D such that

* consistency: D is the argmax of θ + m, and
* gap: the logit of D exceeds every other by at least κ (the gap).

For one categorical variable, with d the sampled class and θ_max = max_k θ_k,
the smallest such move raises θ_d to θ_max and lowers every other logit that
is within κ of θ_max to θ_max - κ:

    (θ + m)_k = θ_max                    k = d,
    (θ + m)_k = min(θ_k, θ_max - κ)      k ≠ d,

and the estimator is z = D forward, ∇ softmax((θ + m)/τ) backward, with m
held constant (the paper's GST-1.0 is κ = 1). A bit with logit θ is a
categorical over {0, 1} with logits (0, θ), for which the rule reads
θ + m = s max(sθ, κ) with s = 2D - 1.

**Any structure.** With the structure's marginals in place of the softmax, the
same two properties are asked of a structure's potentials: D is the MAP of
θ + m and its score ⟨θ + m, D⟩ exceeds that of any other structure by at least
κ. Lifting the parts of D and lowering all others by the same amount,

    m = (Δ + κ)(2D - 1),   Δ = max(0, ⟨θ, MAP(θ)⟩ - ⟨θ, D⟩),

does it for every structure (⟨θ + m, D - z⟩ ≥ -Δ + (Δ + κ)|D △ z| ≥ κ for
z ≠ D), at the price of one MAP per batch element. This move is global (one
amount for every part), not the smallest one; for `Categorical` and
`Bernoulli` the paper's per-variable rule above is used instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.estimators.base import CostFn, Estimate, TemperedEstimator
from zoo.estimators.relaxed import PathwiseEstimator
from zoo.structures import Bernoulli, Categorical, Structure

__all__ = ["GappedStraightThrough"]


def gapped_potentials(q: Structure, hard: Tensor, gap: float) -> Tensor:
    """θ + m: the potentials moved so that ``hard`` is their MAP by a margin of ``gap``.

    Args:
        q: the structure, θ of shape ``(*batch, *event)``.
        hard: samples D ``(S, *batch, *event)``.
        gap: κ > 0.

    Returns:
        ``(S, *batch, *event)``, θ + m with m detached (the gradient reaches θ
        unchanged); parts with θ = ±inf are left as they are.
    """
    theta = q.log_potentials
    fixed = theta.detach()
    chosen = hard.bool()
    if isinstance(q, Categorical):
        top = fixed.amax(-1, keepdim=True)
        moved = torch.where(chosen, top, torch.minimum(fixed, top - gap))
    elif isinstance(q, Bernoulli):
        sign = 2.0 * hard - 1.0
        moved = sign * torch.clamp(sign * fixed, min=gap)
    else:
        best = q.score(q.argmax().detach()).detach()  # (*batch)
        lift = (best - q.score(hard).detach()).clamp(min=0.0) + gap  # (S, *batch)
        lift = lift.reshape(*lift.shape, *(1,) * q.event_dim)
        moved = fixed + lift * (2.0 * hard - 1.0)
    move = torch.where(torch.isfinite(fixed), moved - fixed, 0.0)
    return theta + move


class GappedStraightThrough(TemperedEstimator, PathwiseEstimator):
    """Gapped straight-through (Fan et al. 2022): exact sample, gradient of a noiseless relaxation.

    The cost sees D ∼ q (exact samples); the gradient is that of
    marginals((θ + m)/τ), m the deterministic move that makes D the MAP with a
    margin κ (module docstring). Same cost as `StraightThrough`, plus one MAP
    per batch element on structures other than `Categorical` and `Bernoulli`.

    Args:
        temperature: τ > 0 of the relaxation.
        gap: κ > 0, the margin of D over every other value (the paper's GST-1.0: 1).
        num_samples: S ≥ 1.

    Raises:
        ValueError: κ ≤ 0 or not finite, τ ≤ 0.

    Example:
        >>> from zoo.structures import Categorical
        >>> theta = torch.zeros(4, 2, 3, requires_grad=True)
        >>> est = GappedStraightThrough(0.5)(Categorical(theta), lambda z: z[..., 0].sum(-1))
        >>> est.objective.sum().backward(); theta.grad.shape
        torch.Size([4, 2, 3])
    """

    def __init__(self, temperature: float = 1.0, gap: float = 1.0, num_samples: int = 1) -> None:
        super().__init__(temperature, num_samples)
        value = float(gap)
        if not 0 < value < float("inf"):
            raise ValueError(f"gap must be a finite number > 0, got {gap!r}")
        self.gap = value

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        hard = q.sample(self.num_samples)  # D: (S, *batch, *event)
        moved = gapped_potentials(q, hard, self.gap)
        soft = q.with_potentials(moved / self._temperature, validate_args=False).marginals()
        z = hard + soft - soft.detach()  # D in value, the gradient of soft
        return self.estimate(q, cost_fn, z, self.temperature_stats())

    def extra_repr(self) -> str:
        return f"gap={self.gap:g}, {super().extra_repr()}"
