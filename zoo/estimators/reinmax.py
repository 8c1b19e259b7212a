r"""`ReinMax` (Liu et al. 2023): straight-through with second-order accuracy.

Liu, Dong, Liu, Yu & Gao (2023), "Bridging Discrete and Backpropagation:
Straight-Through and Beyond" (NeurIPS). For one categorical variable with
probabilities π₀ = softmax(θ), a one-hot sample D ∼ π₀ and g = ∂f/∂z at z = D,
straight-through's gradient J(π₀) g, with J(π) = diag(π) - ππᵀ the Jacobian of
the softmax, is the forward-Euler approximation of ∇_θ E[f]. ReinMax replaces it
by Heun's method, which is exact when f is quadratic:

    π₁ = (D + softmax(θ/τ)) / 2,
    ∇̂ = 2 J(π₁) g - ½ J(π₀) g.

The cost sees the exact sample D; the temperature τ only moves the point π₁
(τ = 1, the paper's default for polynomial programming, gives the
second-order-accurate estimator; the paper's VAEs use τ ≈ 1.3). It costs
one softmax Jacobian-vector product more than straight-through.

**Any structure.** J(π) is the covariance of a one-hot with mean π, and the
mixture ½ δ_D + ½ Cat(softmax(θ/τ)) is a categorical with mean π₁, so

    J(π₁) = ½ Cov_τ + ¼ c cᵀ,   c = D - μ_τ,

with Cov_τ the covariance of z under q_{θ/τ} and μ_τ its mean. Written this
way the estimator needs only what every `Structure` has: marginals μ in place
of π (their θ-Jacobian is the covariance, so Cov_τ g = τ · ∂⟨μ(θ/τ), g⟩/∂θ)
and a sampled structure D in place of the one-hot:

    ∇̂ = Cov_τ g + ½ c ⟨c, g⟩ - ½ Cov₁ g.

For an exponential family q(z) ∝ exp⟨θ, z⟩ (every structure of the zoo) and
τ = 1 this is unbiased whenever f is quadratic in z:
E[(z - μ) f(z)] = ½ E_{z,z'}[(z - z')(f(z) - f(z'))], and the trapezoid rule
f(z) - f(z') = ½ ⟨∇f(z) + ∇f(z'), z - z'⟩ is exact for quadratics, which gives
E_D[½ (Cov + (D - μ)(D - μ)ᵀ) g(D)], the estimator's mean. The assumption it
makes on a structure is the one this derivation names: the structure as a
whole plays the role of one categorical variable (the sampled structure is the
one-hot, the marginals are its probabilities). For `Categorical` and
`Bernoulli` the inner product ⟨c, g⟩ is taken per variable, as in the paper
(the N variables are N categoricals; a bit is a categorical over {0, 1} with
logits (0, θ)); both forms are unbiased for quadratic f.
"""

from __future__ import annotations

from zoo.estimators.base import CostFn, Estimate, TemperedEstimator
from zoo.estimators.relaxed import PathwiseEstimator
from zoo.structures import Bernoulli, Categorical, Structure

__all__ = ["ReinMax"]


def _variable_dims(q: Structure) -> tuple[int, ...]:
    """The event dimensions that make up one variable: the one-hot of a categorical."""
    if isinstance(q, Bernoulli):
        return ()  # a bit is its own variable
    if isinstance(q, Categorical):
        return (-1,)
    return tuple(range(-q.event_dim, 0))  # the structure is one variable


class ReinMax(TemperedEstimator, PathwiseEstimator):
    """ReinMax (Liu et al. 2023): an exact sample forward, Heun's second-order gradient backward.

    The cost sees D ∼ q (exact samples); the gradient is
    Cov_τ g + ½ c⟨c, g⟩ - ½ Cov₁ g with c = D - μ(θ/τ) and g = ∂f/∂z at D
    (module docstring), i.e. 2 J(π₁) g - ½ J(π₀) g for a categorical. At τ = 1
    the mean gradient is exact for any cost quadratic in z, on every structure.

    Args:
        temperature: τ > 0 of the marginals μ(θ/τ) that set the midpoint π₁; the
            paper uses τ ≥ 1 (1 for polynomial programming, 1.3 for its VAEs).
        num_samples: S ≥ 1.

    Example:
        >>> import torch
        >>> from zoo.structures import Categorical
        >>> theta = torch.zeros(4, 2, 3, requires_grad=True)
        >>> est = ReinMax()(Categorical(theta), lambda z: z[..., 0].sum(-1))
        >>> est.objective.sum().backward(); theta.grad.shape
        torch.Size([4, 2, 3])
    """

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        hard = q.sample(self.num_samples)  # D: (S, *batch, *event)
        theta = q.log_potentials
        tau = self.temperature
        mu_tau = q.with_potentials(theta / tau, validate_args=False).marginals()
        # At τ = 1, Cov_τ = Cov₁ and the two covariance terms are ½ Cov₁ g: one marginals pass.
        covariance = 0.5 * mu_tau if tau == 1.0 else tau * mu_tau - 0.5 * q.marginals()
        c = (hard - mu_tau).detach()
        # θ where c ≠ 0 only: a forbidden part (θ = -inf) has D = μ = 0 there.
        theta_c = theta.masked_fill(c == 0, 0.0)
        dims = _variable_dims(q)
        inner = (c * theta_c).sum(dims, keepdim=True) if dims else c * theta_c
        soft = covariance + 0.5 * c * inner  # its θ-Jacobian applied to g is the estimate
        z = hard + soft - soft.detach()  # D in value, the gradient of soft
        return self.estimate(q, cost_fn, z, self.temperature_stats())
