"""Brute-force checks for structures and estimators, public so users can test their own.

For a structure small enough to enumerate, `brute_force` computes log Z,
marginals, the MAP score and the entropy from the support alone, and
`check_structure` compares the structure's own oracles with them;
`sample_test` compares sample frequencies with the exact probabilities by a
chi-square test. For an estimator, `check_estimator` draws many independent
gradient estimates in one vectorized call and compares their mean with the
exact gradient of `Exact` (a z-score per coordinate and the cosine similarity).

Example:
    >>> import torch
    >>> from zoo.structures import Categorical
    >>> from zoo.estimators import Reinforce, LeaveOneOutBaseline
    >>> q = Categorical(torch.randn(2, 3, 4, dtype=torch.float64))
    >>> check_structure(q)
    >>> est = Reinforce(num_samples=2, baseline=LeaveOneOutBaseline())
    >>> report = check_estimator(est, q, lambda z: (z[..., 0] * 2.0).sum(-1) ** 2, draws=4000)
    >>> report.max_abs_z < 5
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.estimators import CostFn, Estimator, Exact
from zoo.structures import Structure

__all__ = [
    "BruteForce",
    "EstimatorCheck",
    "brute_force",
    "check_estimator",
    "check_structure",
    "exact_gradient",
    "sample_test",
]


@dataclass(frozen=True)
class BruteForce:
    """Exact quantities of one structure from its enumerated support (batch elements first)."""

    log_partition: Tensor  # (*batch)
    marginals: Tensor  # (*batch, *event)
    max_score: Tensor  # (*batch)
    entropy: Tensor  # (*batch)


def _elements(q: Structure) -> list[Structure]:
    """q split into single batch elements (each keeps a batch dim of size 1)."""
    flat = q.reshape_batch((-1,))
    return [flat[i : i + 1] for i in range(flat.batch_shape[0])]


def _support_and_scores(q: Structure) -> tuple[Tensor, Tensor]:
    """(support (|Z|, 1, *event), scores (|Z|, 1)) of a single-element structure."""
    support = q.enumerate_support()
    return support, q.score(support)


def brute_force(q: Structure) -> BruteForce:
    """Exact log Z, marginals, MAP score and entropy of ``q`` by enumeration (tiny spaces only)."""
    parts = {"log_partition": [], "marginals": [], "max_score": [], "entropy": []}
    for element in _elements(q):
        support, scores = _support_and_scores(element)
        log_z = torch.logsumexp(scores, 0)
        # An empty support (every score -inf) has no mass: p = 0, not -inf - (-inf) = NaN.
        p = torch.where(log_z > -math.inf, (scores - log_z).exp(), 0.0)
        marginals = (p.reshape(p.shape + (1,) * q.event_dim) * support).sum(0)
        parts["log_partition"].append(log_z)
        parts["marginals"].append(marginals)
        parts["max_score"].append(scores.max(0).values)
        # Structures of score -inf have p = 0 and add nothing (not 0 · -inf = NaN).
        parts["entropy"].append(-torch.where(p > 0, p * (scores - log_z), 0.0).sum(0))
    return BruteForce(
        **{k: torch.cat(v).reshape(*q.batch_shape, *v[0].shape[1:]) for k, v in parts.items()}
    )


def _close(name: str, got: Tensor, want: Tensor, atol: float, rtol: float, label: str) -> None:
    if got.shape != want.shape:
        raise AssertionError(
            f"{label}: {name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        )
    if not torch.allclose(got.to(want.dtype), want, atol=atol, rtol=rtol):
        err = (got.to(want.dtype) - want).abs().max().item()
        raise AssertionError(f"{label}: {name} differs from enumeration by up to {err:.3g}")


def check_structure(q: Structure, atol: float = 1e-6, rtol: float = 1e-6) -> None:
    """Assert that q's exact oracles agree with brute-force enumeration.

    Checks log Z, marginals, that argmax is a support element with the best
    score, entropy, and that exp(log_prob) sums to one over the support.
    Batch elements with an empty support (every z has a forbidden part) must
    have log Z = -inf, zero marginals and entropy, and an argmax that raises
    ValueError. Use
    float64 potentials for tight tolerances.

    Raises:
        AssertionError: naming the first quantity that disagrees.
    """
    label = repr(q)
    exact = brute_force(q)
    _close("log_partition", q.log_partition(), exact.log_partition, atol, rtol, label)
    _close("marginals", q.marginals(), exact.marginals, atol, rtol, label)
    _close("entropy", q.entropy(), exact.entropy, atol, rtol, label)
    empty = exact.log_partition == -math.inf
    if bool(empty.any()):
        # No structure to return: argmax must refuse (zoo convention), then check the rest.
        try:
            q.argmax()
        except ValueError:
            pass
        else:
            raise AssertionError(f"{label}: argmax returned a z although the support is empty")
        if bool(empty.all()):
            return
        q = q.reshape_batch((-1,))[~empty.reshape(-1)]
        label, exact = repr(q), brute_force(q)
    best = q.argmax()
    _close("score of argmax", q.score(best), exact.max_score, atol, rtol, label)
    for element, z in zip(_elements(q), best.reshape(-1, *q.event_shape), strict=True):
        support, _ = _support_and_scores(element)
        if not (support == z).flatten(1).all(1).any():
            raise AssertionError(f"{label}: argmax is not an element of the support")
        total = element.log_prob(support).exp().sum()
        if abs(total.item() - 1.0) > max(atol, 1e-6) * support.shape[0]:
            raise AssertionError(
                f"{label}: exp(log_prob) sums to {total.item():.8f} over the support"
            )


def sample_test(q: Structure, samples: Tensor) -> Tensor:
    """Pearson chi-square p-values of sample frequencies against exact probabilities.

    Args:
        q: an enumerable structure.
        samples: ``(n, *batch, *event)`` draws from q (e.g. ``q.sample(n)``).

    Returns:
        ``(B,)`` p-values, one per flattened batch element. Cells whose
        expected count is below 5 are pooled into one. Under a correct sampler
        each p-value is uniform on [0, 1], so asserting ``p > α`` fails
        falsely with probability α per element.

    Raises:
        AssertionError: a sample that is not in the support.
    """
    n = samples.shape[0]
    flat = samples.reshape(n, -1, *q.event_shape)
    p_values = []
    for b, element in enumerate(_elements(q)):
        support, scores = _support_and_scores(element)
        probs = (scores - torch.logsumexp(scores, 0)).exp().squeeze(1).double()  # (|Z|,)
        # Match each sample to its support element through a random projection.
        weights = torch.rand(
            q.event_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
        keys = (support.squeeze(1).double() * weights).flatten(1).sum(1)  # (|Z|,)
        sample_keys = (flat[:, b].double() * weights).flatten(1).sum(1)  # (n,)
        match = (sample_keys[:, None] - keys[None, :]).abs() < 1e-9
        if not match.any(1).all():
            raise AssertionError(f"{q!r}: a sample of batch element {b} is not in the support")
        counts = match.double().sum(0)
        expected = probs * n
        small = expected < 5
        if small.any():
            counts = torch.cat([counts[~small], counts[small].sum().reshape(1)])
            expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
        keep = expected > 0
        stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
        dof = max(int(keep.sum()) - 1, 1)
        p_values.append(
            torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2)
        )
    return torch.stack(p_values)


def exact_gradient(q: Structure, cost_fn: CostFn) -> Tensor:
    """∇_θ E_q[f(z)] by enumeration, shape of θ."""
    theta = q.log_potentials.detach().clone().requires_grad_(True)
    Exact()(q.with_potentials(theta), cost_fn).surrogate.sum().backward()
    return theta.grad


@dataclass(frozen=True)
class EstimatorCheck:
    """An estimator's gradient against the exact one over many independent draws."""

    mean: Tensor  # mean estimate, shape of θ
    exact: Tensor  # exact gradient
    stderr: Tensor  # standard error of the mean
    variance: float  # per-draw variance, averaged over coordinates
    max_abs_z: float  # max over coordinates of |mean - exact| / stderr
    cosine: float  # cosine similarity of mean and exact

    def __str__(self) -> str:
        return f"max|z|={self.max_abs_z:.2f} cos={self.cosine:.4f} var={self.variance:.4g}"


def check_estimator(
    estimator: Estimator, q: Structure, cost_fn: CostFn, draws: int = 2000, warmup: int = 1
) -> EstimatorCheck:
    """Compare the mean gradient of ``estimator`` with the exact gradient of E_q[f].

    The draws are vectorized: θ is replicated ``draws`` times along a new
    leading batch dimension and the estimator runs once, so ``cost_fn`` must
    act on the trailing ``(*batch, *event)`` dimensions and broadcast over any
    leading ones. ``warmup`` calls before the measured one give stateful
    baselines (moving averages) a value.

    Returns:
        An `EstimatorCheck`. Coordinates where every draw and the exact value
        agree exactly (padding, say) count as z = 0; a coordinate with zero
        spread that disagrees gives z = inf.
    """
    exact = exact_gradient(q, cost_fn)
    theta = q.log_potentials.detach()
    for _ in range(warmup):
        estimator(q.with_potentials(theta.expand(draws, *theta.shape)), cost_fn)
    rep = theta.expand(draws, *theta.shape).clone().requires_grad_(True)
    estimator(q.with_potentials(rep), cost_fn).surrogate.sum().backward()
    grads = rep.grad.double()
    mean, std = grads.mean(0), grads.std(0)
    stderr = std / math.sqrt(draws)
    # Differences at rounding level (a part in every structure has gradient 0
    # in theory, 1e-16 in practice) are not bias.
    diff = ((mean - exact.double()).abs() - 1e-9).clamp(min=0)
    z = torch.where(
        stderr > 0, diff / stderr.clamp(min=1e-300), torch.where(diff > 0, math.inf, 0.0)
    )
    cosine = torch.nn.functional.cosine_similarity(mean.flatten(), exact.double().flatten(), dim=0)
    return EstimatorCheck(
        mean=mean,
        exact=exact,
        stderr=stderr,
        variance=float(std.pow(2).mean()),
        max_abs_z=float(z.max()),
        cosine=float(cosine),
    )
