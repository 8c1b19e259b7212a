"""`Structure.conditional_perturb_noise`: noise given its MAP (Gumbel-Rao's hook).

Two properties define it: every conditional draw reproduces the sample it was
conditioned on, and conditioning on ``hard ~ q`` and then drawing G gives G
the unconditional noise distribution (checked entry by entry with a
Kolmogorov-Smirnov test against the Gumbel / Logistic CDF).
"""

import math

import pytest
import torch
from scipy import stats

from zoo.structures import Bernoulli, Categorical, DependencyCRF, LinearChainCRF, TreeCRF

ALPHA = 1e-3


def _categorical(dtype: torch.dtype) -> Categorical:
    theta = 2.0 * torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    theta[0, 1, 2] = -math.inf  # a forbidden value
    return Categorical(theta, lengths=torch.tensor([3, 2]))


def _bernoulli(dtype: torch.dtype) -> Bernoulli:
    theta = 3.0 * torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    theta[1, 0] = 40.0  # z = 0 there is a 4e-18 event: the truncation must stay exact
    return Bernoulli(theta, lengths=torch.tensor([5, 3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", [_categorical, _bernoulli], ids=["categorical", "bernoulli"])
def test_conditional_noise_reproduces_the_sample(make, dtype: torch.dtype) -> None:
    q = make(dtype)
    torch.manual_seed(0)
    hard = q.sample(2000)
    noise = q.conditional_perturb_noise(hard, (3,))
    assert noise.shape == (3, *hard.shape) and noise.dtype == dtype
    assert torch.isfinite(noise).all()
    again = q.with_potentials(q.log_potentials + noise).argmax()
    torch.testing.assert_close(again, hard.expand_as(again), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("make", "cdf"),
    [(_categorical, stats.gumbel_r.cdf), (_bernoulli, stats.logistic.cdf)],
    ids=["categorical", "bernoulli"],
)
def test_conditional_noise_averaged_over_samples_is_the_unconditional_noise(make, cdf) -> None:
    q = make(torch.float64)
    torch.manual_seed(1)
    noise = q.conditional_perturb_noise(q.sample(20000))  # (S, *batch, *event)
    flat = noise.reshape(noise.shape[0], -1).T
    p_values = torch.tensor([stats.kstest(g.numpy(), cdf).pvalue for g in flat])
    assert (p_values > ALPHA / len(flat)).all(), p_values
    # And one draw of G is not simply unconditional noise: given z the mean moves.
    hard = q.argmax().expand(20000, *q.batch_shape, *q.event_shape)
    shifted = q.conditional_perturb_noise(hard).mean(0)
    assert (shifted - q.perturb_noise(20000).mean(0)).abs().max() > 0.3


def test_conditional_noise_rejects_a_wrong_shape() -> None:
    q = _categorical(torch.float64)
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 3, 4\)"):
        q.conditional_perturb_noise(torch.zeros(2, 3, 5))


@pytest.mark.parametrize(
    "q",
    [
        LinearChainCRF(torch.zeros(1, 2, 2, 2)),
        DependencyCRF(torch.zeros(1, 3, 3)),
        TreeCRF(torch.zeros(1, 3, 3, 1)),
    ],
    ids=["chain", "dependency", "tree"],
)
def test_structures_without_a_conditional_sampler_say_so(q) -> None:
    with pytest.raises(NotImplementedError, match=type(q).__name__ + ".*Categorical.*Bernoulli"):
        q.conditional_perturb_noise(q.argmax())
