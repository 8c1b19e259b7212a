import math

import pytest
import torch

from zoo.structures import Bernoulli, Categorical, gumbel_noise, logistic_noise
from zoo.structures.noise import safe_uniform

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noise", [gumbel_noise, logistic_noise])
def test_noise_is_finite_in_every_dtype(noise, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    g = noise((200_000,), dtype=dtype)
    assert g.dtype == dtype
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_extremes_are_clamped(monkeypatch, dtype: torch.dtype) -> None:
    # torch.rand can return exactly 0; the clamp must keep -log(-log u) finite.
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor([0.0, 1.0], dtype=dtype))
    u = safe_uniform((2,), dtype=dtype)
    assert (u > 0).all()
    assert (u < 1).all()
    assert torch.isfinite(gumbel_noise((2,), dtype=dtype)).all()
    assert torch.isfinite(logistic_noise((2,), dtype=dtype)).all()


def test_gumbel_and_logistic_moments() -> None:
    torch.manual_seed(0)
    g = gumbel_noise((400_000,), dtype=torch.float64)
    s = logistic_noise((400_000,), dtype=torch.float64)
    euler = 0.5772156649015329
    # Standard errors: sqrt(var/n) = 0.002 and 0.0029; bounds are 5 standard errors.
    assert abs(g.mean().item() - euler) < 0.01
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03
    assert abs(s.mean().item()) < 0.015
    assert abs(s.var().item() - math.pi**2 / 3) < 0.06


def test_structures_draw_their_own_noise() -> None:
    # Logistic noise makes 1[θ + L > 0] exact for Bernoulli; Gumbel would give P(z=1) = 0.63 at θ = 0.
    torch.manual_seed(0)
    z = Bernoulli(torch.zeros(100_000)).rsample_with_hard((), 1.0)[0]
    assert abs(z.mean().item() - 0.5) < 0.01
    g = Categorical(torch.zeros(4, 3)).perturb_noise(5)
    assert g.shape == (5, 4, 3)
