"""Bad costs and oversized supports end in clear errors, never in silent NaN or a killed process."""

from __future__ import annotations

import pytest
import torch

from tests.cases import STRUCTURE_CASES, StructureCase
from zoo.estimators import (
    Exact,
    GumbelSoftmax,
    LearnedBaseline,
    MovingAverageBaseline,
    Reinforce,
    StraightThrough,
)
from zoo.estimators.support import support_size
from zoo.structures import (
    Bernoulli,
    Categorical,
    DependencyCRF,
    LinearChainCRF,
    NonProjectiveDependencyCRF,
    TreeCRF,
)


def _first_bits(z: torch.Tensor) -> torch.Tensor:
    return z.flatten(2).sum(-1)


def test_a_nan_cost_raises_before_the_moving_average_is_touched() -> None:
    # Before: one NaN cost made the average NaN, and every later gradient with it.
    q = Categorical(torch.zeros(4, 3, 5, dtype=torch.float64))
    baseline = MovingAverageBaseline(0.9)
    est = Reinforce(2, baseline)
    est(q, _first_bits)
    state = {k: v.clone() for k, v in baseline.state_dict().items()}

    def poisoned(z: torch.Tensor) -> torch.Tensor:
        cost = _first_bits(z)
        cost[1, 2] = float("nan")
        cost[0, 0] = float("inf")
        return cost

    with pytest.raises(
        ValueError, match=r"Reinforce: cost_fn returned 2 non-finite .*1 NaN, 1 ±inf"
    ):
        est(q, poisoned)
    for name, value in baseline.state_dict().items():
        torch.testing.assert_close(value, state[name], msg=name)
    out = est(q, _first_bits)  # training goes on with a finite baseline
    assert torch.isfinite(out.stats["baseline"])


@pytest.mark.parametrize(
    "make",
    [lambda: GumbelSoftmax(0.5, num_samples=2), lambda: StraightThrough(), lambda: Exact()],
    ids=["gumbel_softmax", "straight_through", "exact"],
)
def test_every_estimator_names_itself_when_the_cost_is_not_finite(make) -> None:
    q = Categorical(torch.zeros(2, 2, 3))
    est = make()
    with pytest.raises(ValueError, match=f"{type(est).__name__}: cost_fn returned"):
        est(q, lambda z: _first_bits(z) / 0.0)


def test_learned_baseline_is_untouched_by_a_nan_cost() -> None:
    q = Bernoulli(torch.zeros(3, 4))
    est = Reinforce(1, LearnedBaseline(4, 8))
    before = [p.clone() for p in est.parameters()]
    with pytest.raises(ValueError, match="1 non-finite"):
        est(q, lambda z: torch.where(torch.arange(3) == 1, torch.nan, _first_bits(z)))
    for old, new in zip(before, est.parameters(), strict=True):
        assert new.grad is None
        torch.testing.assert_close(old, new)


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
def test_integer_costs_are_cast_to_the_structure_dtype(dtype: torch.dtype) -> None:
    # Before: an integer cost failed inside var() ("std and var only support floating point").
    q = Categorical(torch.zeros(3, 2, 4, dtype=torch.float64))
    est = Reinforce(4, MovingAverageBaseline(0.5))
    out = est(q, lambda z: (z[..., 0].sum(-1) > 0).to(dtype))
    assert out.cost.dtype == torch.float64
    assert out.stats["cost_var"].dtype == torch.float64
    exact = Exact()(q, lambda z: (z[..., 0].sum(-1) > 0).to(dtype)).cost
    torch.testing.assert_close(exact, torch.full((3,), 1 - 0.75**2, dtype=torch.float64))


def test_a_complex_cost_is_rejected() -> None:
    q = Categorical(torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="complex"):
        StraightThrough()(q, lambda z: _first_bits(z).to(torch.complex64))


def test_exact_refuses_a_support_of_ten_to_the_twenty_before_allocating() -> None:
    # Before: Exact() on 20 × 10 categorical variables tried to enumerate 10^20 z (killed at 23 GB).
    q = Categorical(torch.zeros(2, 20, 10))
    called = []
    with pytest.raises(
        ValueError, match=r"1e\+20 structures per batch element.*max_support=1,000,000"
    ):
        Exact()(q, lambda z: called.append(z) or _first_bits(z))
    assert not called


def test_exact_max_support_is_an_argument() -> None:
    q = Bernoulli(torch.zeros(2, 10))  # 1,024 per element
    with pytest.raises(ValueError, match="1,024 structures"):
        Exact(max_support=1000)(q, _first_bits)
    out = Exact(max_support=1024)(q, _first_bits)
    torch.testing.assert_close(out.cost, torch.full((2,), 5.0))
    with pytest.raises(ValueError, match="max_support"):
        Exact(max_support=0)


@pytest.mark.parametrize("case", STRUCTURE_CASES, ids=str)
def test_support_size_counts_what_enumeration_gives(case: StructureCase) -> None:
    q = case.build()
    size = support_size(q)
    if size is None:
        pytest.skip(f"{type(q).__name__} has no support_size() and is not in the table")
    _, valid = q.enumerate_padded_support()
    assert size == int(valid.sum(0).max())


@pytest.mark.parametrize(
    ("q", "size"),
    [
        (Categorical(torch.zeros(20, 10)), 10**20),
        (Bernoulli(torch.zeros(200)), 2**200),
        (LinearChainCRF(torch.zeros(29, 45, 45)), 45**30),
        (DependencyCRF(torch.zeros(5, 5), multiroot=True), 273),
        (DependencyCRF(torch.zeros(6, 6), multiroot=False), 728),
        (NonProjectiveDependencyCRF(torch.zeros(6, 6), multiroot=True), 7**5),
        (NonProjectiveDependencyCRF(torch.zeros(6, 6), multiroot=False), 6**5),
        (TreeCRF(torch.zeros(6, 6, 2)), 42 * 2**11),
    ],
    ids=[
        "categorical",
        "bernoulli",
        "chain",
        "proj-multi",
        "proj-single",
        "nonproj-multi",
        "nonproj-single",
        "tree",
    ],
)
def test_support_size_of_large_structures_is_exact(q, size: int) -> None:
    assert support_size(q) == size


def test_support_size_uses_a_structure_method_when_there_is_one() -> None:
    class Counted(Categorical):
        def support_size(self) -> int:
            return 7

    assert support_size(Counted(torch.zeros(2, 3))) == 7


def test_a_learned_baseline_without_its_size_says_which_size_to_set() -> None:
    q = Categorical(torch.randn(4, 3, 5))  # events of 15 parts
    with pytest.raises(ValueError, match="set in_features=15$"):
        Reinforce(1, LearnedBaseline())(q, lambda z: z.flatten(2).sum(-1))


def test_a_learned_baseline_on_chains_of_varying_length_says_why_it_cannot_apply() -> None:
    q = LinearChainCRF(torch.randn(2, 4, 3, 3), lengths=torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="vary in size with the input.*LeaveOneOutBaseline"):
        Reinforce(1, LearnedBaseline())(q, lambda z: z.flatten(2).sum(-1))
