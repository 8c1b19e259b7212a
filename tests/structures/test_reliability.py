"""Bad and degenerate inputs, every structure (issue 16, "Structures"): one test per row.

* +inf potentials: `test_contract.py::test_invalid_potentials_raise_value_error`.
* An empty support (every part -inf): log Z = -inf, zero marginals and
  entropy, log q = -inf, no NaN anywhere (gradients included), and `argmax` /
  `sample` raise a ValueError instead of returning a non-structure.
* A categorical of K = 0 classes: an empty support, as above.
* An empty batch (B = 0): every method returns an empty result.
* Sample shapes: ``sample(0)`` is an empty leading dimension, a non-integer a
  TypeError naming it, a negative size a ValueError.
* Batches of one element (shape `()` or `(1,)`): samples and the MAP lie in the support.
* Half precision: relaxed samples of θ × 1000 at τ = 0.01 are finite.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from tests.cases import STRUCTURE_CASES, StructureCase
from zoo.structures import Bernoulli, Categorical, LinearChainCRF, Structure

EVERY = pytest.mark.parametrize("case", STRUCTURE_CASES, ids=str)
# Bernoulli never has an empty support (θ = -inf makes z = 0 certain), and a
# chain of length 1 has one z (no transitions), so those rows are left out.
CAN_BE_EMPTY = [
    c for c in STRUCTURE_CASES if not c.has_lengths and not isinstance(c.build(), Bernoulli)
]


def _empty_support(case: StructureCase) -> Structure:
    q = case.build(torch.float64)
    theta = torch.full_like(q.log_potentials, -math.inf).requires_grad_(True)
    return q.with_potentials(theta)


@pytest.mark.parametrize("case", CAN_BE_EMPTY, ids=str)
def test_empty_support_gives_minus_inf_and_no_nan(case: StructureCase) -> None:
    q = _empty_support(case)
    batch = q.batch_shape
    log_z = q.log_partition()
    assert (log_z == -math.inf).all(), log_z
    (grad,) = torch.autograd.grad(log_z.sum(), q.log_potentials, allow_unused=True)
    assert grad is None or (grad == 0).all()
    assert (q.marginals() == 0).all()
    torch.testing.assert_close(q.entropy(), torch.zeros(batch, dtype=torch.float64))
    z = torch.zeros(q.log_potentials.shape, dtype=torch.float64)
    assert (q.log_prob(z) == -math.inf).all()
    kl = torch.distributions.kl_divergence(q, q)
    assert not torch.isnan(kl).any()
    assert not torch.isnan(q.rsample(3, 0.5)).any()
    for method in (q.argmax, lambda: q.sample(4), lambda: q.rsample_with_hard(2)):
        with pytest.raises(ValueError, match="support is empty"):
            method()


def test_a_categorical_of_no_class_has_an_empty_support() -> None:
    """K = 0 (the newcomer probe): no outcome, so log Z = -inf, as for every value -inf."""
    q = Categorical(torch.zeros(3, 2, 0, dtype=torch.float64, requires_grad=True))
    assert q.batch_shape == (3,) and q.event_shape == (2, 0)
    assert (q.log_partition() == -math.inf).all()
    assert q.marginals().shape == (3, 2, 0)
    torch.testing.assert_close(q.entropy(), torch.zeros(3, dtype=torch.float64))
    assert (q.log_prob(torch.zeros(3, 2, 0, dtype=torch.float64)) == -math.inf).all()
    assert not torch.isnan(torch.distributions.kl_divergence(q, q)).any()
    assert q.rsample(4, 0.5).shape == (4, 3, 2, 0)
    for method in (q.argmax, lambda: q.sample(2)):
        with pytest.raises(ValueError, match=r"support is empty \(K = 0: a variable with no value"):
            method()


def test_empty_support_of_one_element_names_it() -> None:
    theta = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    theta[1] = -math.inf
    q = LinearChainCRF(theta)
    log_z = q.log_partition()
    assert torch.isfinite(log_z[[0, 2]]).all() and log_z[1] == -math.inf
    with pytest.raises(ValueError, match=r"support is empty.*index \[1\]"):
        q.argmax()


def _empty_batch_value(q: Structure) -> torch.Tensor:
    return torch.zeros(2, *q.batch_shape, *q.event_shape, dtype=q.log_potentials.dtype)


EMPTY_BATCH_OPS = {
    "log_partition": (lambda q: q.log_partition(), 0),
    "marginals": (lambda q: q.marginals(), 1),
    "argmax": (lambda q: q.argmax(), 1),
    "sample": (lambda q: q.sample(2), 2),
    "entropy": (lambda q: q.entropy(), 0),
    "log_prob": (lambda q: q.log_prob(_empty_batch_value(q)), -1),
    "rsample": (lambda q: q.rsample(2, 0.5), 2),
    "rsample_with_hard": (lambda q: q.rsample_with_hard(2, 0.5)[0], 2),
    "kl": (lambda q: torch.distributions.kl_divergence(q, q), 0),
    "perturb_noise": (lambda q: q.perturb_noise(2), 2),
}


@pytest.mark.parametrize("op", list(EMPTY_BATCH_OPS))
@EVERY
def test_empty_batch_gives_empty_results(case: StructureCase, op: str) -> None:
    q = case.build(torch.float64)
    q = q[torch.zeros(q.batch_shape[0], dtype=torch.bool)]  # batch shape (0,)
    assert q.batch_shape == (0,)
    method, kind = EMPTY_BATCH_OPS[op]
    got = method(q)
    want = {
        0: (0,),
        1: (0, *q.event_shape),
        2: (2, 0, *q.event_shape),
        -1: (2, 0),
    }[kind]
    assert got.shape == want


@EVERY
def test_sample_shapes_are_checked(case: StructureCase) -> None:
    q = case.build(torch.float64)
    assert q.sample(0).shape == (0, *q.batch_shape, *q.event_shape)
    assert q.sample((2, 0)).shape == (2, 0, *q.batch_shape, *q.event_shape)
    assert q.sample(torch.tensor(2)).shape == (2, *q.batch_shape, *q.event_shape)
    for bad in (2.5, (2, 1.5), "3", True):
        with pytest.raises(TypeError, match=re.escape(repr(bad))):
            q.sample(bad)
    with pytest.raises(ValueError, match="nonnegative"):
        q.sample(-1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@EVERY
def test_half_precision_relaxed_samples_are_finite(case: StructureCase, dtype) -> None:
    # (θ + G)/τ with |θ| ~ 1000 and τ = 0.01 exceeds float16's 65504.
    q = case.build(torch.float64)
    q = q.with_potentials((1000 * q.log_potentials).to(dtype))
    torch.manual_seed(0)
    draws = [q.rsample(4, 0.01), *q.rsample_with_hard(4, 0.01)]
    if isinstance(q, LinearChainCRF):
        draws += list(q.gumbel_crf(4, 0.01))
    for z in draws:
        assert z.dtype == dtype
        assert torch.isfinite(z).all()
    # The relaxed sample is near its hard sample at this temperature.
    hard, soft = q.rsample_with_hard(4, 0.01)
    assert (soft.float() - hard.float()).abs().mean() < 0.05


@pytest.mark.parametrize("index", [0, slice(0, 1)], ids=["batch ()", "batch (1,)"])
@EVERY
def test_a_batch_of_one_or_none_samples_in_the_support(case: StructureCase, index) -> None:
    # Batch shapes () and (1,) once made the chain's in-place CDF normalization
    # divide a tensor by a view of itself (a RuntimeError from torch).
    q = case.build(torch.float64)[index]
    assert q.batch_shape == ((1,) if isinstance(index, slice) else ())
    for z in (q.sample(), q.sample(3), q.argmax(), q.rsample_with_hard(2, 0.5)[1]):
        assert z.shape[z.dim() - len(q.event_shape) - len(q.batch_shape) :] == (
            *q.batch_shape,
            *q.event_shape,
        )
        assert torch.isfinite(q.log_prob(z)).all()
