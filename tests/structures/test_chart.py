"""`zoo.structures.chart`: the semirings, the helpers, and generic paths against hand-written ones."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.structures import ChartStructure, LinearChainCRF
from zoo.structures.chart import (
    chart_indicator,
    clamp_forbidden,
    is_empty_support,
    logsumexp,
    maximum,
    sampled_logsumexp,
)
from zoo.testing import sample_test

ALPHA = 1e-3


def _chain(seed: int = 0) -> LinearChainCRF:
    theta = torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(seed)).double()
    theta[0, 1, 2] = -math.inf
    theta[1, :, 0, :] = -math.inf  # label 0 is never entered after position 0
    return LinearChainCRF(theta, lengths=torch.tensor([5, 3, 1]))


def test_generic_chain_log_partition_and_marginals_equal_the_hand_written_ones() -> None:
    q = _chain()
    theta = q.log_potentials.clone().requires_grad_(True)
    q = q.with_potentials(theta)
    generic = ChartStructure.log_partition(q)
    torch.testing.assert_close(generic, q.log_partition())
    (mu,) = torch.autograd.grad(generic.sum(), theta)
    torch.testing.assert_close(mu, q.marginals().detach())


def test_generic_chain_argmax_equals_viterbi() -> None:
    for seed in range(5):
        q = _chain(seed)
        torch.testing.assert_close(ChartStructure.argmax(q), q.argmax())


def test_generic_chain_samples_are_exact() -> None:
    q = _chain(1)
    torch.manual_seed(0)
    p_values = sample_test(q, ChartStructure.sample(q, 20000))
    assert (p_values > ALPHA).all(), p_values


def test_max_semiring_gradient_is_one_maximiser_even_with_ties() -> None:
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(maximum(x, -1).sum(), x)
    assert grad.sum() == 1 and grad[0, 1:3].sum() == 1


def test_sampled_logsumexp_draws_in_proportion_to_the_weights() -> None:
    # 16 samples per pass ride on the bits of the gradient.
    x = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    x = x.expand(4000, 4)
    torch.manual_seed(0)
    bits, value = chart_indicator(lambda t: sampled_logsumexp(16)(t, -1), x, float(2**16 - 1))
    torch.testing.assert_close(value, torch.zeros(4000, dtype=torch.float64))
    bit = 2 ** torch.arange(16)
    chosen = (bits.long().unsqueeze(-1) & bit) != 0  # (4000, 4, 16)
    assert (chosen.sum(1) == 1).all()  # every sample picks exactly one term
    freq = chosen.double().mean((0, 2))
    torch.testing.assert_close(
        freq, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.01, rtol=0
    )
    with pytest.raises(ValueError, match="17"):
        sampled_logsumexp(17)


def test_clamped_forbidden_parts_have_no_nan_gradient_and_flag_empty_supports() -> None:
    x = torch.tensor([[-math.inf, -math.inf], [0.0, -math.inf]], requires_grad=True)
    naive = torch.autograd.grad(torch.logsumexp(x, -1).sum(), x)[0]
    assert torch.isnan(naive).any()  # the trap
    value = logsumexp(clamp_forbidden(x, 2), -1)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(grad).all() and grad[1].tolist() == [1.0, 0.0]
    assert is_empty_support(value, 2).tolist() == [True, False]
