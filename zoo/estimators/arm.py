r"""`ARM` and `DisARM`: unbiased antithetic estimators for Bernoulli variables.

For z ∼ Bernoulli(σ(θ)) (independent bits, θ the logits) and one uniform
vector u ∼ U(0, 1)^N, the pair

    b = 1[u < σ(θ)],    b̃ = 1[1 - u < σ(θ)] = 1[u > σ(-θ)]

holds two exact samples of q, antithetically coupled. Both estimators
evaluate f at b and b̃ (two cost evaluations per sample) and are unbiased for
∇_θ E_q[f(z)]:

* ARM, the augment-REINFORCE-merge estimator (Yin & Zhou 2019, "ARM:
  Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks"):

      g_n = (f(b̃) - f(b)) (u_n - 1/2).

* DisARM (Dong, Mnih & Tucker 2020, "DisARM: An Antithetic Gradient
  Estimator for Binary Latent Variables"), ARM with the augmentation
  integrated out given (b, b̃); it never has more variance than ARM and is
  zero where the pair agrees:

      g_n = 1/2 (f(b) - f(b̃)) (-1)^{b̃_n} 1[b_n ≠ b̃_n] σ(|θ_n|).

Both are specific to Bernoulli logits, so they take only `Bernoulli`
structures (a TypeError names any other): the identities above hold for
independent bits with P(z_n = 1) = σ(θ_n), which no other structure's
attributes express. Padded bits (``lengths``) are 0 in both samples and get
no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.estimators.base import CostFn, Estimate, Estimator
from zoo.structures import Bernoulli, Structure, sequence_mask
from zoo.structures.noise import safe_uniform

__all__ = ["ARM", "DisARM"]


class ARM(Estimator):
    """ARM (Yin & Zhou 2019) for `Bernoulli`: unbiased, two cost evaluations per sample.

    ``cost_fn`` is called once on the S antithetic pairs, z of shape
    ``(2S, *batch, N)`` (the S samples b, then the S samples b̃), and the
    reported cost is the mean over all 2S, each an exact sample of q.

    Args:
        num_samples: S ≥ 1 antithetic pairs per batch element.

    Raises:
        TypeError: at call time, a structure that is not `Bernoulli`.

    Example:
        >>> theta = torch.zeros(2, 3, requires_grad=True)
        >>> est = ARM(num_samples=4)(Bernoulli(theta), lambda z: z.sum(-1))
        >>> est.z.shape
        torch.Size([8, 2, 3])
    """

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        if not isinstance(q, Bernoulli):
            raise TypeError(
                f"{type(self).__name__} is defined for Bernoulli structures (independent bits "
                f"with logits θ), got {type(q).__name__}; Reinforce or STGumbelSoftmax work there"
            )
        num = self.num_samples
        theta = q.log_potentials
        u = safe_uniform((num, *theta.shape), dtype=_work(theta), device=theta.device)
        p = torch.sigmoid(theta.detach().to(u.dtype))
        b, b_anti = u < p, u > 1.0 - p
        real = None if q.lengths is None else sequence_mask(q.lengths, q.max_length)
        if real is not None:
            b, b_anti = b & real, b_anti & real
        z = torch.cat([b, b_anti]).to(theta.dtype)  # (2S, *batch, N)
        cost = self.evaluate(cost_fn, z, q)
        diff = (cost[:num] - cost[num:]).detach().to(u.dtype)  # f(b) - f(b̃), (S, *batch)
        # (S, *batch, N)
        grad = self.gradient_estimate(diff, u, b, b_anti, theta.detach().to(u.dtype))
        if real is not None:
            grad = grad * real
        # The θ-gradient of the second term is the mean estimate; z carries none.
        surrogate = cost.mean(0) + (grad.mean(0).to(theta.dtype) * theta).sum(-1)
        return Estimate(
            z=z, cost=cost.detach().mean(0), surrogate=surrogate, stats=self.spread(cost)
        )

    def gradient_estimate(
        self, diff: Tensor, u: Tensor, b: Tensor, b_anti: Tensor, theta: Tensor
    ) -> Tensor:
        """The per-bit gradient estimate g = (f(b̃) - f(b)) (u - 1/2), ``(S, *batch, N)``.

        The one method an antithetic variant overrides (`DisARM` does); the
        sampling, the cost evaluation and the surrogate stay `ARM`'s.

        Args:
            diff: f(b) - f(b̃), ``(S, *batch)``, detached.
            u: the uniforms ``(S, *batch, N)``.
            b: the sample 1[u < σ(θ)], boolean ``(S, *batch, N)``.
            b_anti: its antithetic partner 1[u > σ(-θ)], boolean.
            theta: the logits ``(*batch, N)``, detached, in u's dtype.
        """
        return -diff.unsqueeze(-1) * (u - 0.5)


class DisARM(ARM):
    """DisARM (Dong, Mnih & Tucker 2020) for `Bernoulli`: ARM with the uniform integrated out.

    Same samples and cost evaluations as `ARM`; lower variance.

    Args:
        num_samples: S ≥ 1 antithetic pairs per batch element.

    Raises:
        TypeError: at call time, a structure that is not `Bernoulli`.
    """

    def gradient_estimate(
        self, diff: Tensor, u: Tensor, b: Tensor, b_anti: Tensor, theta: Tensor
    ) -> Tensor:
        """g = ½ (f(b) - f(b̃)) (-1)^{b̃} 1[b ≠ b̃] σ(|θ|), ``(S, *batch, N)``."""
        sign = 1.0 - 2.0 * b_anti.to(u.dtype)  # (-1)^{b̃}
        return 0.5 * diff.unsqueeze(-1) * sign * (b != b_anti) * torch.sigmoid(theta.abs())


def _work(theta: Tensor) -> torch.dtype:
    # The uniform is compared with σ(θ): float32 at least, float64 when θ is.
    return torch.float64 if theta.dtype == torch.float64 else torch.float32
