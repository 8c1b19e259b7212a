"""`Structure.cached`: one pass for log Z, marginals and entropy, same values and gradients.

Every row of STRUCTURE_CASES: a cached structure answers the three exact
queries with what an uncached one gives, its gradients of a loss that uses all
three (first and second order) are the uncached ones, and each query runs once.
"""

from __future__ import annotations

import pytest
import torch

from tests.cases import STRUCTURE_CASES, StructureCase
from zoo.structures import LinearChainCRF

CASES = pytest.mark.parametrize("case", STRUCTURE_CASES, ids=str)


def _loss(q, weights: torch.Tensor) -> torch.Tensor:
    """A loss through every query: A(θ), H and ⟨μ, w⟩ (the shape of a KL plus an exact cost)."""
    dims = tuple(range(-q.event_dim, 0))
    mu = q.marginals()
    return (
        q.log_partition() - q.entropy() + (mu * weights).sum(dims) + q.marginals().sum(dims)
    ).sum()


@CASES
def test_cached_values_and_gradients_equal_the_uncached_ones(case: StructureCase) -> None:
    base = case.build(torch.float64)
    weights = torch.randn(base.log_potentials.shape, generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)  # fmt: skip
    grads, values = [], []
    for cached in (False, True):
        theta = base.log_potentials.clone().requires_grad_(True)
        q = base.with_potentials(theta)
        q = q.cached() if cached else q
        values.append((q.log_partition(), q.marginals(), q.entropy()))
        (g,) = torch.autograd.grad(_loss(q, weights), theta, create_graph=True)
        # second order: the gradient of a function of the gradient
        (gg,) = torch.autograd.grad((g.where(torch.isfinite(g), 0.0) ** 2).sum(), theta)
        grads.append((g.detach(), gg))
    for a, b in zip(values[0], values[1], strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b)


@CASES
def test_cached_queries_run_once_and_new_structures_start_uncached(case: StructureCase) -> None:
    theta = case.build(torch.float64).log_potentials.clone().requires_grad_(True)
    q = case.build(torch.float64).with_potentials(theta).cached()
    for query in ("log_partition", "marginals", "entropy"):
        assert getattr(q, query)() is getattr(q, query)()
    with torch.no_grad():
        assert not q.marginals().requires_grad
        torch.testing.assert_close(q.marginals(), q.with_potentials(theta).marginals().detach())
    assert q.with_potentials(theta)._memo is None
    assert q[0]._memo is None


def test_chain_joint_pass_runs_one_forward_filter(monkeypatch) -> None:
    import zoo.structures.linear_chain as module

    calls = []
    original = module._filter
    monkeypatch.setattr(module, "_filter", lambda *a: calls.append(1) or original(*a))
    theta = torch.randn(3, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    q = LinearChainCRF(theta, lengths=torch.tensor([7, 3, 1])).cached()
    q.entropy(), q.marginals(), q.log_partition(), q.gumbel_crf(2, 0.5), q.sample(3)
    q.log_prob(q.sample(2))
    assert len(calls) == 1
    q = LinearChainCRF(theta, lengths=torch.tensor([7, 3, 1]))
    calls.clear()
    q.entropy(), q.marginals(), q.log_partition()
    assert len(calls) == 3
