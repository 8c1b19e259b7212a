"""Pathwise estimators: relaxed, straight-through and perturb-and-MAP.

All draw the structure's own perturbation noise G (Gumbel on every part;
Logistic for `Bernoulli`) and need a cost that is differentiable in z.

* `GumbelSoftmax`: z = marginals((θ + G)/τ), the Gumbel-Softmax / Concrete
  relaxation (Jang et al. 2017; Maddison et al. 2017) for one-hot variables and
  the stochastic softmax trick (Paulus et al. 2020) for chains and trees. Biased
  for E_q[f]; unbiased for the relaxed objective E_G[f(z)].
* `STGumbelSoftmax`: z = argmax(θ + G) forward, the gradient of the relaxed
  sample drawn with the same G backward (Jang et al. 2017).
* `StraightThrough`: z an exact sample forward, the gradient of the marginals
  backward (Bengio et al. 2013).
* `PerturbAndMAP`: z = argmax(θ + G) (Papandreou & Yuille 2011) with the
  straight-through gradient of the relaxation, or implicit maximum-likelihood
  estimation (I-MLE, Niepert et al. 2021).
* `GumbelCRF`: for chains, z = the relaxed forward-filtering backward-sampling
  path of Fu et al. (2020, "Latent Template Induction with Gumbel-CRFs"), or
  its exact hard path with the relaxed gradient (straight-through).
* `GumbelRao`: straight-through Gumbel with the relaxed gradient averaged over
  K draws of the noise conditioned on the hard sample D,
  E[∇ marginals((θ + G)/τ) | argmax(θ + G) = D] (Paulus, Maddison & Krause
  2021, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient
  Estimator"): the same forward value and mean as `STGumbelSoftmax`'s
  gradient, less variance. It needs the structure's conditional noise
  (`Structure.conditional_perturb_noise`: categorical and Bernoulli).

How a sample is relaxed is the estimator's choice; structures offer the
pieces as public hooks (`rsample`, `rsample_with_hard`, `gumbel_crf`,
`conditional_perturb_noise`), and an estimator that needs a hook a structure
lacks says so with a TypeError.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from zoo.estimators.base import CostFn, Estimate, Estimator, TemperedEstimator
from zoo.structures import Structure

__all__ = [
    "GumbelCRF",
    "GumbelRao",
    "GumbelSoftmax",
    "PathwiseEstimator",
    "PerturbAndMAP",
    "STGumbelSoftmax",
    "StraightThrough",
]


def _straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """``hard`` in value, the gradient of ``soft``."""
    return hard + soft - soft.detach()


class PathwiseEstimator(Estimator):
    """The base of estimators that differentiate the cost through z itself.

    A pathwise estimator writes ``forward``: it draws z ``(S, *batch, *event)``,
    relaxed or hard with a gradient attached (straight-through), as a
    differentiable function of θ, and returns ``self.estimate(q, cost_fn, z,
    stats)``. The surrogate is then the mean cost itself, so the gradient
    reaches θ through z and the cost's own parameters directly; nothing is
    reweighted (unlike `zoo.estimators.Reinforce`). A complete example, with
    its line count, is in ``docs/new-estimator.md``.

    Args:
        num_samples: S ≥ 1.
    """

    def estimate(
        self, q: Structure, cost_fn: CostFn, z: Tensor, stats: dict[str, Tensor]
    ) -> Estimate:
        """Evaluate ``cost_fn`` once on z and return the pathwise `Estimate`.

        Args:
            q: the structure z was drawn from (for the cost's shape check).
            cost_fn: f, z ``(S, *batch, *event)`` → ``(S, *batch)``.
            z: the samples, carrying the gradient the estimator chose.
            stats: detached scalars to log (the temperature, say); the
                variance of the cost over samples is added for S ≥ 2.

        Returns:
            ``Estimate(z, cost = mean of f(z) (detached), surrogate = mean of f(z), stats)``.
        """
        cost = self.evaluate(cost_fn, z, q)
        return Estimate(
            z=z,
            cost=cost.detach().mean(0),
            surrogate=cost.mean(0),
            stats={**stats, **self.spread(cost)},
        )


class GumbelSoftmax(TemperedEstimator, PathwiseEstimator):
    """The relaxed estimator: f is evaluated at z = marginals((θ + G)/τ).

    In training mode the cost sees relaxed z. In eval mode (``module.eval()``)
    it sees exact discrete samples instead, so validation and test report the
    discrete model; no gradient reaches θ there.

    Args:
        temperature: τ > 0; τ → 0 recovers discrete samples, with growing variance.
        num_samples: S ≥ 1.

    Example:
        >>> from zoo.structures import Categorical
        >>> theta = torch.zeros(4, 2, 3, requires_grad=True)
        >>> est = GumbelSoftmax(temperature=0.5)(Categorical(theta), lambda z: z[..., 0].sum(-1))
        >>> est.objective.sum().backward(); theta.grad.shape
        torch.Size([4, 2, 3])
    """

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        if self.training:
            z = q.rsample(self.num_samples, self._temperature)
        else:
            z = q.sample(self.num_samples)
        return self.estimate(q, cost_fn, z, self.temperature_stats())


class STGumbelSoftmax(TemperedEstimator, PathwiseEstimator):
    """Straight-through Gumbel-Softmax: hard z = argmax(θ + G), relaxed gradient.

    The forward z is argmax(θ + G) with the structure's noise G on every part
    (`Structure.rsample_with_hard`): an exact sample for categorical and
    Bernoulli, a perturb-and-MAP sample (not exact) for chains and trees,
    the z of `PerturbAndMAP`. The backward pass differentiates the relaxed
    sample marginals((θ + G)/τ) drawn with the same G. For an exact sample of
    a chain with a relaxed gradient, use ``GumbelCRF(straight_through=True)``.

    Args:
        temperature: τ > 0 of the relaxation used for the gradient.
        num_samples: S ≥ 1.
    """

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        hard, soft = q.rsample_with_hard(self.num_samples, self._temperature)
        return self.estimate(q, cost_fn, _straight_through(hard, soft), self.temperature_stats())


class StraightThrough(PathwiseEstimator):
    """Plain straight-through (Bengio et al. 2013): exact sample, gradient of the marginals.

    Args:
        num_samples: S ≥ 1.
    """

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        hard = q.sample(self.num_samples)
        return self.estimate(q, cost_fn, _straight_through(hard, q.marginals()), {})


class _IMLE(torch.autograd.Function):
    """I-MLE: z = MAP(θ + G) forward; (z - MAP(θ + G - λ ∂L/∂z)) / λ backward."""

    @staticmethod
    def forward(ctx: Any, perturbed: Tensor, q: Structure, lam: float) -> Tensor:
        hard = q.with_potentials(perturbed.detach(), validate_args=False).argmax()
        ctx.save_for_backward(perturbed, hard)
        ctx.q, ctx.lam = q, lam
        return hard

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        perturbed, hard = ctx.saved_tensors
        target = perturbed.detach() - ctx.lam * grad
        with torch.no_grad():
            moved = ctx.q.with_potentials(target, validate_args=False).argmax()
        return (hard - moved) / ctx.lam, None, None


class PerturbAndMAP(TemperedEstimator, PathwiseEstimator):
    """Perturb-and-MAP: z = argmax(θ + G), with one of two gradients.

    Args:
        temperature: τ > 0 of the relaxation marginals((θ + G)/τ) whose gradient
            ``gradient="st"`` passes straight through.
        gradient: ``"st"``: straight-through the relaxation; ``"imle"``: implicit
            MLE (Niepert et al. 2021), the difference of the MAP at θ + G and at
            the target θ + G - λ ∂L/∂z, divided by λ. I-MLE needs only ``argmax``.
        imle_lambda: λ > 0, the step towards the target distribution (I-MLE only), on
            the scale of ∂f/∂z: as λ → 0 the estimate tends to the exact gradient for
            costs linear in z, with growing variance.
        num_samples: S ≥ 1.

    Raises:
        ValueError: an unknown ``gradient``, λ ≤ 0, τ ≤ 0.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        gradient: Literal["st", "imle"] = "st",
        imle_lambda: float = 1.0,
        num_samples: int = 1,
    ) -> None:
        super().__init__(temperature, num_samples)
        if gradient not in ("st", "imle"):
            raise ValueError(f"gradient must be 'st' or 'imle', got {gradient!r}")
        if not float(imle_lambda) > 0:
            raise ValueError(f"imle_lambda must be > 0, got {imle_lambda!r}")
        self.gradient = gradient
        self.imle_lambda = float(imle_lambda)

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        perturbed = q.log_potentials + q.perturb_noise(self.num_samples)
        if self.gradient == "imle":
            z = _IMLE.apply(perturbed, q, self.imle_lambda)
        else:
            hard = q.with_potentials(perturbed.detach(), validate_args=False).argmax()
            soft = q.with_potentials(perturbed / self._temperature, validate_args=False).marginals()
            z = _straight_through(hard, soft)
        return self.estimate(q, cost_fn, z, self.temperature_stats())

    def extra_repr(self) -> str:
        return (
            f"gradient={self.gradient!r}, imle_lambda={self.imle_lambda:g}, {super().extra_repr()}"
        )


class GumbelCRF(TemperedEstimator, PathwiseEstimator):
    """Gumbel-CRF (Fu et al. 2020): relaxed forward-filtering backward-sampling for chains.

    One draw of Gumbel noise per position gives a pair (`LinearChainCRF.gumbel_crf`):
    the hard path, an exact FFBS sample (a Gumbel-max at every backward step),
    and the soft path, every Gumbel-max replaced by a tempered softmax, a
    point of the marginal polytope that tends to the hard path as τ → 0. In
    training mode the cost sees the soft path (``straight_through=False``;
    biased for E_q[f], pathwise through the relaxation) or the hard path with
    the soft path's gradient (``straight_through=True``). In eval mode it
    sees exact samples, as `GumbelSoftmax` does, and no gradient reaches θ.

    Unlike `GumbelSoftmax` on a chain (the stochastic softmax trick:
    marginals of (θ + G)/τ with noise on every transition), the noise here is
    on the labels, and the relaxation follows the sampler.

    Args:
        temperature: τ > 0 of the tempered softmaxes.
        straight_through: evaluate the cost at the hard path, differentiate the soft one.
        num_samples: S ≥ 1.

    Raises:
        TypeError: at call time, a structure without a ``gumbel_crf`` method
            (today only `LinearChainCRF` has one).

    Example:
        >>> from zoo.structures import LinearChainCRF
        >>> theta = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> est = GumbelCRF(0.5, num_samples=3)(LinearChainCRF(theta), lambda z: z.sum((-1, -2, -3)))
        >>> est.z.shape
        torch.Size([3, 2, 3, 4, 4])
    """

    def __init__(
        self, temperature: float = 1.0, straight_through: bool = False, num_samples: int = 1
    ) -> None:
        super().__init__(temperature, num_samples)
        if not isinstance(straight_through, bool):
            raise ValueError(f"straight_through must be a bool, got {straight_through!r}")
        self.straight_through = straight_through

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        sampler = getattr(q, "gumbel_crf", None)
        if not callable(sampler):
            raise TypeError(
                f"GumbelCRF needs a structure with a gumbel_crf(sample_shape, temperature) "
                f"method (relaxed forward-filtering backward-sampling; LinearChainCRF has one), "
                f"got {type(q).__name__}; GumbelSoftmax relaxes any structure"
            )
        if not self.training:
            z = q.sample(self.num_samples)
        else:
            hard, soft = sampler(self.num_samples, self._temperature)
            z = _straight_through(hard, soft) if self.straight_through else soft
        return self.estimate(q, cost_fn, z, self.temperature_stats())

    def extra_repr(self) -> str:
        return f"straight_through={self.straight_through}, {super().extra_repr()}"


class GumbelRao(TemperedEstimator, PathwiseEstimator):
    """Gumbel-Rao (Paulus, Maddison & Krause 2021): straight-through, Rao-Blackwellized.

    Forward, the cost sees an exact sample D ∼ q. Backward, the gradient is
    that of the relaxed sample averaged over K noise draws conditioned on D,

        (1/K) Σ_k marginals((θ + G_k)/τ),   G_k ∼ G | argmax(θ + G) = D,

    a Monte Carlo estimate of E[∇ marginals((θ + G)/τ) | D]. Since D together
    with one such G_k is distributed as `STGumbelSoftmax`'s (hard, noise)
    pair, the estimator has the same expectation as straight-through Gumbel
    with variance that falls with K, for K extra relaxations and no extra
    cost evaluations. The conditional noise is the structure's
    (`Structure.conditional_perturb_noise`).

    Args:
        temperature: τ > 0 of the relaxation.
        num_rao: K ≥ 1 conditional noise draws per sample.
        num_samples: S ≥ 1 exact samples (cost evaluations) per batch element.

    Raises:
        ValueError: num_rao < 1.
        TypeError: at call time, a structure without conditional noise (chains and trees).

    Example:
        >>> from zoo.structures import Categorical
        >>> theta = torch.zeros(4, 2, 3, requires_grad=True)
        >>> est = GumbelRao(0.5, num_rao=8)(Categorical(theta), lambda z: z[..., 0].sum(-1))
        >>> est.objective.sum().backward(); theta.grad.shape
        torch.Size([4, 2, 3])
    """

    def __init__(self, temperature: float = 1.0, num_rao: int = 10, num_samples: int = 1) -> None:
        super().__init__(temperature, num_samples)
        if isinstance(num_rao, bool) or not isinstance(num_rao, int) or num_rao < 1:
            raise ValueError(f"num_rao must be an integer ≥ 1, got {num_rao!r}")
        self.num_rao = num_rao

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        hard = q.sample(self.num_samples)  # (S, *batch, *event)
        try:
            noise = q.conditional_perturb_noise(hard, self.num_rao)  # (K, S, *batch, *event)
        except NotImplementedError as error:
            raise TypeError(
                f"GumbelRao needs noise conditioned on a sample, which {type(q).__name__} does "
                f"not provide ({error}); use STGumbelSoftmax there"
            ) from error
        perturbed = (q.log_potentials + noise) / self._temperature
        soft = q.with_potentials(perturbed, validate_args=False).marginals().mean(0)
        return self.estimate(q, cost_fn, _straight_through(hard, soft), self.temperature_stats())

    def extra_repr(self) -> str:
        return f"num_rao={self.num_rao}, {super().extra_repr()}"
