"""The structure contract: every row of STRUCTURE_CASES against brute-force enumeration.

Sampling tests use a fixed seed and a chi-square test at α = 1e-3 per batch
element; with a correct sampler a given seed fails with probability ≤ 1e-3
per element, and since the seed is fixed the outcome is reproducible.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.distributions import kl_divergence

from tests.cases import STRUCTURE_CASES, StructureCase
from zoo.testing import brute_force, check_structure, sample_test

CASES = pytest.mark.parametrize("case", STRUCTURE_CASES, ids=str)
LENGTH_CASES = pytest.mark.parametrize(
    "case", [c for c in STRUCTURE_CASES if c.has_lengths], ids=str
)
ALPHA = 1e-3


def _never_used(q) -> torch.Tensor:
    """Parts that are 0 in every z of the support: padding and structurally impossible parts."""
    support, valid = q.enumerate_padded_support()
    used = (support != 0) & valid.reshape(*valid.shape, *([1] * q.event_dim))
    return ~used.any(0)


@CASES
def test_exact_inference_matches_enumeration(case: StructureCase) -> None:
    check_structure(case.build(torch.float64), atol=1e-8, rtol=1e-8)


@CASES
def test_kl_matches_enumeration(case: StructureCase) -> None:
    p, q = case.build(torch.float64, seed=0), case.build(torch.float64, seed=1)
    support, valid = p.enumerate_padded_support()
    lp, lq = p.log_prob(support), q.log_prob(support)
    want = torch.where(valid, lp.exp() * (lp - lq), 0.0).sum(0)
    torch.testing.assert_close(kl_divergence(p, q), want)
    torch.testing.assert_close(kl_divergence(p, p), torch.zeros_like(want), atol=1e-10, rtol=0)


@CASES
def test_sample_frequencies_match_probabilities(case: StructureCase) -> None:
    torch.manual_seed(1234)
    q = case.build(torch.float64)
    samples = q.sample(20000)
    assert samples.shape == (20000, *q.batch_shape, *q.event_shape)
    p_values = sample_test(q, samples)
    assert (p_values > ALPHA).all(), f"chi-square p-values {p_values.tolist()}"


@CASES
def test_sample_is_not_differentiable_and_has_requested_shape(case: StructureCase) -> None:
    theta = case.build(torch.float64).log_potentials.clone().requires_grad_(True)
    q = case.build(torch.float64).with_potentials(theta)
    assert not q.sample().requires_grad
    assert q.sample().shape == q.batch_shape + q.event_shape
    assert q.sample((2, 3)).shape == (2, 3, *q.batch_shape, *q.event_shape)


@CASES
def test_gradcheck_log_partition(case: StructureCase) -> None:
    q = case.build(torch.float64)
    theta = q.log_potentials.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: q.with_potentials(t).log_partition(), (theta,))


@CASES
def test_marginals_are_gradient_of_log_partition(case: StructureCase) -> None:
    q = case.build(torch.float64)
    theta = q.log_potentials.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(q.with_potentials(theta).log_partition().sum(), theta)
    torch.testing.assert_close(q.marginals(), grad)


@CASES
def test_parts_outside_the_support_never_leak(case: StructureCase) -> None:
    q = case.build(torch.float64)
    never = _never_used(q)
    theta = q.log_potentials.clone().requires_grad_(True)
    q_grad = q.with_potentials(theta)
    q_grad.log_partition().sum().backward()
    assert (theta.grad[never] == 0).all()
    assert (q.marginals()[never] == 0).all()
    assert (q.argmax()[never] == 0).all()
    assert (q.sample(50)[:, never] == 0).all()
    # Whatever stands in those parts changes nothing.
    noisy = q.with_potentials(torch.where(never, 1e3 * torch.randn_like(theta), q.log_potentials))
    torch.testing.assert_close(noisy.log_partition(), q.log_partition())
    torch.testing.assert_close(noisy.marginals(), q.marginals())


@LENGTH_CASES
def test_lengths_match_separately_built_elements(case: StructureCase) -> None:
    q = case.build(torch.float64)
    exact = brute_force(q)
    for b in range(q.batch_shape[0]):
        torch.testing.assert_close(q[b].log_partition(), exact.log_partition[b])
        torch.testing.assert_close(q[b : b + 1].marginals(), exact.marginals[b : b + 1])


@CASES
def test_extra_batch_dims_and_expand(case: StructureCase) -> None:
    q = case.build(torch.float64)
    stacked = q.with_potentials(q.log_potentials.expand(3, *q.log_potentials.shape))
    assert stacked.batch_shape == (3, *q.batch_shape)
    torch.testing.assert_close(stacked.log_partition(), q.log_partition().expand(3, *q.batch_shape))
    torch.testing.assert_close(stacked.marginals()[1], q.marginals())
    torch.testing.assert_close(stacked.argmax()[2], q.argmax())
    torch.testing.assert_close(stacked.entropy()[0], q.entropy())
    expanded = q.expand((2, *q.batch_shape))
    assert expanded.batch_shape == (2, *q.batch_shape)


@CASES
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_every_operation_under_no_grad_and_inference_mode(case: StructureCase, mode: str) -> None:
    q = case.build(torch.float64)
    want = {
        "log_partition": q.log_partition(),
        "marginals": q.marginals(),
        "argmax": q.argmax(),
        "entropy": q.entropy(),
        "log_prob": q.log_prob(q.argmax()),
    }
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        inner = case.build(torch.float64)  # built inside: inference tensors in inference mode
        got = {
            "log_partition": inner.log_partition(),
            "marginals": inner.marginals(),
            "argmax": inner.argmax(),
            "entropy": inner.entropy(),
            "log_prob": inner.log_prob(inner.argmax()),
        }
        samples = inner.sample(3)
        hard, soft = inner.rsample_with_hard(2, 0.5)
        relaxed = inner.rsample(2, 0.5)
    for name, value in want.items():
        torch.testing.assert_close(got[name].clone(), value, msg=name)
    assert samples.shape == (3, *q.batch_shape, *q.event_shape)
    assert hard.shape == soft.shape == relaxed.shape == (2, *q.batch_shape, *q.event_shape)


@CASES
def test_relaxed_samples_have_gradient(case: StructureCase) -> None:
    q = case.build(torch.float64)
    theta = q.log_potentials.clone().requires_grad_(True)
    hard, soft = q.with_potentials(theta).rsample_with_hard(4, 0.5)
    assert not hard.requires_grad
    (soft * torch.randn_like(soft)).sum().backward()
    assert (
        theta.grad is not None and torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    )


@CASES
def test_large_potentials_stay_finite(case: StructureCase) -> None:
    q = case.build(torch.float32)
    big = q.with_potentials(q.log_potentials * 1e6)
    for name in ("log_partition", "marginals", "entropy"):
        assert torch.isfinite(getattr(big, name)()).all(), name
    lp = big.log_prob(big.argmax())
    assert torch.isfinite(lp).all() and (lp <= 0).all(), lp
    lp = big.log_prob(big.sample(5))
    assert torch.isfinite(lp).all() and (lp <= 0).all(), lp


@CASES
def test_invalid_potentials_raise_value_error(case: StructureCase) -> None:
    q = case.build(torch.float64)
    kind = type(q)
    theta = q.log_potentials.clone()
    last = theta.numel() - 1
    theta.view(-1)[last] = float("nan")
    index = tuple(torch.unravel_index(torch.tensor(last), theta.shape))
    with pytest.raises(ValueError, match=re.escape(f"first at index {tuple(map(int, index))}")):
        q.with_potentials(theta)
    # +inf (log Z = inf, NaN marginals before) is an error, also beside a -inf
    # (their sum is NaN) and alone (the sum is +inf); -inf alone is allowed.
    for other in (-float("inf"), 0.0):
        mixed = q.log_potentials.clone()
        mixed.view(-1)[1], mixed.view(-1)[last] = float("inf"), other
        index = tuple(map(int, torch.unravel_index(torch.tensor(1), theta.shape)))
        with pytest.raises(ValueError, match=re.escape(f"+inf (first at index {index})")):
            q.with_potentials(mixed)
    forbidden = q.log_potentials.clone()
    forbidden.view(-1)[last] = -float("inf")
    q.with_potentials(forbidden)
    with pytest.raises(ValueError, match="dimensions"):
        kind(torch.zeros(q.event_shape[1:] if q.event_dim > 1 else ()), **q.extra_args())
    n = q.max_length
    try:
        kind(q.log_potentials, lengths=torch.full(q.batch_shape, n), **q.extra_args())
    except ValueError:
        return  # a structure without lengths (the tutorial's k-subsets)
    for bad in (0, -1, n + 1):
        with pytest.raises(ValueError, match=rf"lengths must lie in \[1, {n}\]"):
            kind(q.log_potentials, lengths=torch.full(q.batch_shape, bad), **q.extra_args())
    with pytest.raises(ValueError, match="integer"):
        kind(q.log_potentials, lengths=torch.full(q.batch_shape, 1.0), **q.extra_args())
