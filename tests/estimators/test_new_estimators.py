"""What each newer estimator claims beyond the contract suite.

* VIMCO: unbiased for the gradient of the multi-sample bound E[L̂], computed
  exactly by enumerating every S-tuple of a tiny structure.
* ARM / DisARM: DisARM's variance is below ARM's on the same problem.
* Gumbel-Rao: the same expected gradient as straight-through Gumbel, with
  less variance, and an exact sample forward.
* Gumbel-CRF: the relaxed FFBS pair of the structure, exact samples in eval
  mode, and a bias against `Exact` that shrinks as τ falls.
* Unordered set: the set probabilities against sums over orderings, distinct
  samples whose first is exact, the exact gradient once the set covers the
  support, and less variance than k samples with replacement.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.cases import STRUCTURE_CASES
from tests.estimators.test_contract import NonlinearCost
from zoo.estimators import (
    ARM,
    VIMCO,
    DisARM,
    Estimate,
    GumbelCRF,
    GumbelRao,
    LeaveOneOutBaseline,
    Reinforce,
    STGumbelSoftmax,
    UnorderedSetReinforce,
)
from zoo.estimators.unordered_set import _beam_sample, _set_probability
from zoo.structures import Bernoulli, Categorical, LinearChainCRF, Structure
from zoo.testing import check_estimator, sample_test


def _draws(estimator, q: Structure, cost_fn, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``draws`` independent θ-gradients in one call: their mean and standard error."""
    theta = q.log_potentials.detach()
    rep = theta.expand(draws, *theta.shape).clone().requires_grad_(True)
    estimator(q.with_potentials(rep), cost_fn).surrogate.sum().backward()
    return rep.grad.mean(0), rep.grad.std(0) / math.sqrt(draws)


# ---------------------------------------------------------------------------- VIMCO
class JointNLL(torch.nn.Module):
    """c(z) = -log p(x, z) of a toy model: a bilinear log-likelihood with parameter ``a``."""

    def __init__(self, q: Structure) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = torch.nn.Parameter(torch.randn(q.event_shape, generator=g, dtype=torch.float64))
        self.dims = tuple(range(-q.event_dim, 0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        score = (z * self.a).sum(self.dims)
        return 1.5 - score + 0.3 * score**2


def _exact_bound_gradient(q: Structure, cost: JointNLL, num: int) -> tuple[torch.Tensor, ...]:
    """E[L̂] over every S-tuple of the support, and its gradient in θ and in ``a``."""
    theta = q.log_potentials.detach().clone().requires_grad_(True)
    p = q.with_potentials(theta)
    support = p.enumerate_support()  # (M, *batch, *event)
    tuples = torch.tensor(list(itertools.product(range(support.shape[0]), repeat=num)))
    z = support[tuples.T]  # (S, T, *batch, *event)
    log_q = p.log_prob(z)  # (S, T, *batch)
    log_w = -cost(z) - log_q
    bound = torch.logsumexp(log_w, 0) - math.log(num)  # (T, *batch)
    value = (log_q.sum(0).exp() * bound).sum(0)  # (*batch)
    grads = torch.autograd.grad(value.sum(), [theta, cost.a])
    return value.detach(), *grads


@pytest.mark.parametrize(
    "q",
    [
        Categorical(torch.tensor([[[0.3, -0.8, 1.1]], [[1.0, 0.2, -0.5]]], dtype=torch.float64)),
        Bernoulli(torch.tensor([[0.7, -1.2], [-0.1, 0.4]], dtype=torch.float64)),
    ],
    ids=["categorical", "bernoulli"],
)
def test_vimco_is_unbiased_for_the_gradient_of_the_multi_sample_bound(q: Structure) -> None:
    torch.manual_seed(0)
    num, draws = 3, 40_000
    cost = JointNLL(q)
    value, exact_theta, exact_a = _exact_bound_gradient(q, cost, num)
    theta = q.log_potentials.detach()
    rep = theta.expand(draws, *theta.shape).clone().requires_grad_(True)
    est = VIMCO(num)(q.with_potentials(rep), cost)
    est.objective.sum().backward()
    # The reported cost is -L̂: its mean over draws is -E[L̂].
    cost_mean, cost_err = est.cost.mean(0), est.cost.std(0) / math.sqrt(draws)
    assert ((cost_mean + value).abs() < 5 * cost_err).all()
    # The objective is minimized: its gradient is -∇E[L̂].
    mean, err = -rep.grad.mean(0), rep.grad.std(0) / math.sqrt(draws)
    assert ((mean - exact_theta).abs() < 5 * err + 1e-12).all(), (mean, exact_theta, err)
    # The model's parameters get the pathwise gradient Σ ŵ_s ∇log w_s, summed over draws.
    a_mean = -cost.a.grad / draws
    torch.testing.assert_close(a_mean, exact_a, atol=0.02, rtol=0.02)
    assert 1 <= est.stats["ess"] <= num


def test_vimco_learning_signal_is_not_the_plain_score_function() -> None:
    # With the leave-one-out signal replaced by L̂ itself (no baseline) the estimate
    # is still unbiased, but VIMCO's must have less variance.
    q = Categorical(torch.tensor([[[0.3, -0.8, 1.1]]], dtype=torch.float64))
    cost = JointNLL(q)
    torch.manual_seed(1)
    _, vimco_err = _draws(VIMCO(4), q, cost, 20_000)

    class NoBaseline(VIMCO):
        def forward(self, q, cost_fn):
            z = q.sample(self.num_samples)
            log_q = q.log_prob(z)
            log_w = -self.evaluate(cost_fn, z, q) - log_q
            lw = log_w.detach()
            bound = torch.logsumexp(lw, 0) - math.log(self.num_samples)
            weights = torch.softmax(lw, 0)
            surrogate = -(bound * log_q + weights * log_w).sum(0)
            return Estimate(z=z, cost=-bound, surrogate=surrogate)

    torch.manual_seed(1)
    _, plain_err = _draws(NoBaseline(4), q, cost, 20_000)
    assert (vimco_err < plain_err).all(), (vimco_err, plain_err)


def test_vimco_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="num_samples ≥ 2"):
        VIMCO(num_samples=1)


# ---------------------------------------------------------------------- ARM / DisARM
def test_disarm_has_less_variance_than_arm() -> None:
    q = Bernoulli(torch.tensor([[1.5, -0.3, 0.2, -2.0]], dtype=torch.float64))
    cost = NonlinearCost(q)
    torch.manual_seed(0)
    arm = check_estimator(ARM(), q, cost, draws=20_000)
    torch.manual_seed(0)
    disarm = check_estimator(DisARM(), q, cost, draws=20_000)
    assert arm.max_abs_z < 5 and disarm.max_abs_z < 5
    assert disarm.variance < 0.9 * arm.variance, (disarm.variance, arm.variance)


def test_arm_evaluates_antithetic_exact_samples() -> None:
    # b = 1[u < σ(θ)] and b̃ = 1[u > σ(-θ)]: each an exact Bernoulli sample.
    q = Bernoulli(torch.tensor([[2.0, -1.0, 0.0]], dtype=torch.float64))
    torch.manual_seed(0)
    z = ARM(num_samples=4000)(q, lambda z: z.sum(-1)).z
    for half in (z[:4000], z[4000:]):
        torch.testing.assert_close(half.mean(0), q.marginals(), atol=0.03, rtol=0)
    # Antithetic: at θ = 0 the two are complements.
    z0 = ARM(num_samples=50)(Bernoulli(torch.zeros(1, 3)), lambda z: z.sum(-1)).z
    torch.testing.assert_close(z0[:50] + z0[50:], torch.ones(50, 1, 3))


# ------------------------------------------------------------------------ Gumbel-Rao
@pytest.mark.parametrize("name", ["categorical", "bernoulli"])
def test_gumbel_rao_has_the_straight_through_mean_with_less_variance(name: str) -> None:
    case = next(c for c in STRUCTURE_CASES if c.name == name)
    q = case.build(torch.float64)
    cost = NonlinearCost(q)
    draws = 20_000
    torch.manual_seed(0)
    st_mean, st_err = _draws(STGumbelSoftmax(0.5), q, cost, draws)
    torch.manual_seed(1)
    rao_mean, rao_err = _draws(GumbelRao(0.5, num_rao=16), q, cost, draws)
    spread = torch.sqrt(st_err**2 + rao_err**2)
    assert ((st_mean - rao_mean).abs() < 5 * spread + 1e-12).all()
    assert (rao_err.pow(2).mean() < 0.8 * st_err.pow(2).mean()).item()
    # More conditional draws, less variance.
    torch.manual_seed(2)
    _, one_err = _draws(GumbelRao(0.5, num_rao=1), q, cost, draws)
    assert (rao_err.pow(2).mean() < one_err.pow(2).mean()).item()


def test_gumbel_rao_forward_is_an_exact_sample() -> None:
    q = Categorical(torch.tensor([[[1.0, 0.0, -1.0, 0.5]], [[-2.0, 2.0, 0.0, 0.0]]]))
    torch.manual_seed(0)
    z = GumbelRao(0.3, num_rao=2, num_samples=20_000)(q, lambda z: z.sum((-1, -2))).z.detach()
    assert (sample_test(q, z.round()) > 1e-3).all()
    torch.testing.assert_close(z, z.round(), atol=1e-6, rtol=0)


def test_gumbel_rao_rejects_a_nonpositive_number_of_draws() -> None:
    with pytest.raises(ValueError, match="num_rao"):
        GumbelRao(num_rao=0)


# ------------------------------------------------------------------------ Gumbel-CRF
def _chain() -> LinearChainCRF:
    g = torch.Generator().manual_seed(0)
    return LinearChainCRF(
        torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64), lengths=torch.tensor([4, 3])
    )


@pytest.mark.parametrize("straight_through", [False, True])
def test_gumbel_crf_uses_the_structures_relaxed_ffbs(straight_through: bool) -> None:
    q = _chain()
    torch.manual_seed(5)
    hard, soft = q.gumbel_crf(3, 0.7)
    torch.manual_seed(5)
    est = GumbelCRF(0.7, straight_through=straight_through, num_samples=3)
    z = est(q, lambda z: z.sum((-1, -2, -3))).z
    torch.testing.assert_close(z, hard if straight_through else soft)


def test_gumbel_crf_evaluates_exact_samples_in_eval_mode() -> None:
    q = _chain()
    est = GumbelCRF(0.5, num_samples=20_000).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        z = est(q, lambda z: z.sum((-1, -2, -3))).z
    torch.testing.assert_close(z, z.round())
    torch.testing.assert_close(z.mean(0), q.marginals(), atol=0.02, rtol=0)


def test_gumbel_crf_bias_against_exact_shrinks_with_the_temperature() -> None:
    q = next(c for c in STRUCTURE_CASES if c.name == "chain-N3-C3").build(torch.float64)
    cost = NonlinearCost(q)
    reports = []
    for tau in (1.0, 0.5):
        torch.manual_seed(0)
        reports.append(check_estimator(GumbelCRF(tau), q, cost, draws=4000))
    relative = [float((r.mean - r.exact).norm() / r.exact.norm()) for r in reports]
    assert all(r.max_abs_z > 5 for r in reports), "the relaxation is biased for E_q[f]"
    assert relative[1] < relative[0], relative
    assert reports[1].cosine > 0.9


# ---------------------------------------------------------------------- unordered set
def _ordered_probability(order: tuple[int, ...], p: torch.Tensor) -> float:
    """The probability of drawing ``order`` in this order without replacement."""
    prob, rest = 1.0, 1.0
    for s in order:
        prob *= float(p[s]) / rest
        rest -= float(p[s])
    return prob


def test_set_probability_is_the_sum_over_orderings() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(24):
        p = torch.softmax((1 + trial % 3 * 4) * torch.randn(6, generator=g), 0).double()
        members = tuple(torch.randperm(6, generator=g)[: 1 + trial % 4].tolist())
        want = sum(_ordered_probability(o, p) for o in itertools.permutations(members))
        log_a = (p[list(members)] / (1 - p[list(members)].sum())).log().unsqueeze(-1)
        got = _set_probability(log_a, torch.ones(1, len(members), 1, dtype=torch.float64))
        assert float(got) == pytest.approx(want, rel=1e-6), (p, members)


def test_beam_samples_are_distinct_and_the_first_is_exact() -> None:
    one = Categorical(torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, -2.0]]]))
    q = one.expand((20_000,))
    torch.manual_seed(0)
    z, valid = _beam_sample(q, 4)  # (4, 20000, 2, 3) of 9 outcomes
    assert valid.all()
    codes = (z.argmax(-1) * torch.tensor([3, 1])).sum(-1)  # (4, B) outcome ids
    assert (codes.unsqueeze(0) != codes.unsqueeze(1)).sum(0).eq(3).all(), "distinct"
    assert (sample_test(one, z[0].unsqueeze(1)) > 1e-3).all()


@pytest.mark.parametrize(
    "q",
    [Categorical(torch.randn(2, 2, 2, dtype=torch.float64)), Bernoulli(torch.randn(3, 2).double())],
    ids=["categorical", "bernoulli"],
)
def test_unordered_set_is_exact_once_the_set_covers_the_support(q: Structure) -> None:
    # 4 outcomes per batch element.
    cost = NonlinearCost(q)
    exact = check_estimator(UnorderedSetReinforce(4), q, cost, draws=50)
    torch.testing.assert_close(exact.mean, exact.exact.to(exact.mean), atol=1e-9, rtol=1e-7)
    assert exact.variance < 1e-18
    # Asking for more than the support gives the same, with the extra rows invalid.
    more = check_estimator(UnorderedSetReinforce(6), q, cost, draws=50)
    torch.testing.assert_close(more.mean, exact.mean, atol=1e-9, rtol=1e-7)


def test_unordered_set_has_less_variance_than_samples_with_replacement() -> None:
    # A peaked q: k samples with replacement repeat themselves, a set does not.
    q = Categorical(torch.tensor([[[2.5, 0.0, -0.5], [0.0, 2.0, 0.3]]], dtype=torch.float64))
    cost = NonlinearCost(q)
    torch.manual_seed(0)
    unordered = check_estimator(UnorderedSetReinforce(3), q, cost, draws=8000)
    torch.manual_seed(0)
    loo = check_estimator(Reinforce(3, LeaveOneOutBaseline()), q, cost, draws=8000)
    assert unordered.max_abs_z < 5
    assert unordered.variance < 0.8 * loo.variance, (unordered.variance, loo.variance)


def test_unordered_set_gradients_stay_finite_in_float32_with_many_variables() -> None:
    # 128 fair bits: p(s) = 2^-128 underflows float32 and R(S, s) ~ 1 / p(s) overflows it;
    # the estimator forms their bounded products in float64.
    torch.manual_seed(0)
    theta = torch.zeros(32, 128, requires_grad=True)
    estimate = UnorderedSetReinforce(num_samples=2)(
        Bernoulli(theta), lambda z: (z - 0.45).pow(2).sum(-1)
    )
    estimate.objective.sum().backward()
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    torch.testing.assert_close(estimate.cost, torch.full((32,), 128 * 0.2525), rtol=0.1, atol=0)
