"""The seed paper's claims for one categorical variable (Jang, Gu & Poole 2017)."""

import torch
import torch.nn.functional as F

from zoo.estimators import GumbelSoftmax, STGumbelSoftmax
from zoo.structures import Categorical
from zoo.structures.noise import gumbel_noise
from zoo.testing import sample_test


def test_gumbel_softmax_at_small_temperature_matches_the_categorical() -> None:
    torch.manual_seed(0)
    theta = torch.tensor([[[1.0, 0.0, -1.0, 0.5]], [[-2.0, 2.0, 0.0, 0.0]]], dtype=torch.float64)
    q = Categorical(theta)
    est = GumbelSoftmax(temperature=0.01, num_samples=20_000)
    z = est(q, lambda z: z.sum((-1, -2))).z  # relaxed, (S, 2, 1, 4)
    assert (z.max(-1).values > 0.99).float().mean() > 0.95, "τ → 0 gives nearly one-hot z"
    rounded = F.one_hot(z.argmax(-1), 4).to(z.dtype)
    p = sample_test(q, rounded)
    assert (p > 1e-3).all(), p  # chi-square, false alarm 1e-3 per element
    # The relaxed mean tends to the class probabilities.
    torch.testing.assert_close(z.mean(0), q.marginals(), atol=0.015, rtol=0)


def test_st_gumbel_forward_is_the_gumbel_max_sample() -> None:
    theta = torch.randn(3, 5, 6, dtype=torch.float64)
    torch.manual_seed(42)
    z = STGumbelSoftmax(temperature=0.7, num_samples=4)(
        Categorical(theta), lambda z: z.sum((-1, -2))
    ).z
    torch.manual_seed(42)
    g = gumbel_noise((4, 3, 5, 6), dtype=torch.float64)
    want = F.one_hot((theta + g).argmax(-1), 6).to(theta.dtype)
    torch.testing.assert_close(z, want)
    torch.testing.assert_close(z.sum(-1), torch.ones(4, 3, 5, dtype=z.dtype))


def test_gumbel_softmax_is_the_tempered_softmax_of_perturbed_logits() -> None:
    theta = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.manual_seed(3)
    z = GumbelSoftmax(temperature=0.3)(Categorical(theta), lambda z: z.sum((-1, -2))).z
    torch.manual_seed(3)
    g = gumbel_noise((1, 2, 3, 4), dtype=torch.float64)
    torch.testing.assert_close(z, torch.softmax((theta + g) / 0.3, -1))
