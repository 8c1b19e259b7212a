r"""Factorized structures: independent categorical and Bernoulli variables.

`Categorical`: N independent K-way variables, z ∈ {0, 1}^{N×K} with one 1 per
row (one-hot), θ of shape ``(*batch, N, K)``:

    q(z) = Π_n softmax(θ_n)[z_n],    A(θ) = Σ_n logsumexp_k θ_{n,k}.

`Bernoulli`: N independent bits, z ∈ {0, 1}^N, θ of shape ``(*batch, N)``
(the logit of z_n = 1; the part for z_n = 0 is implicit and fixed at 0):

    q(z) = Π_n sigmoid(θ_n)^{z_n} sigmoid(-θ_n)^{1-z_n},    A(θ) = Σ_n softplus(θ_n).

Everything is in closed form, including the noise conditioned on a sample
that Gumbel-Rao needs (`conditional_perturb_noise`; Paulus, Maddison & Krause
2021): for a categorical, the max of θ + G is logsumexp θ + Gumbel(0, 1) and
the other entries are Gumbels truncated below it (the top-down construction of
Maddison, Tarlow & Minka 2014, "A* Sampling"); for a bit, the Logistic noise is
truncated to the side of -θ that z names. With ``lengths``, variables n ≥ length are
padding: their z, marginals and gradients are 0 and they add nothing to A(θ).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.structures.base import Structure, _as_size, _at_least_zero, _at_most_zero, sequence_mask
from zoo.structures.noise import gumbel_noise, logistic_noise, safe_uniform

__all__ = ["Bernoulli", "Categorical"]


def _noise_shape(q: Structure, hard: Tensor, sample_shape: int | Sequence[int] | torch.Size):
    """Check ``hard`` against q's shapes; the shape of G, ``(*sample_shape, *hard.shape)``."""
    try:
        torch.broadcast_shapes(hard.shape, q.log_potentials.shape)
        ok = hard.shape[hard.dim() - q.log_potentials.dim() :] == q.log_potentials.shape
    except RuntimeError:
        ok = False
    if not ok or hard.dim() < q.log_potentials.dim():
        raise ValueError(
            f"{type(q).__name__}.conditional_perturb_noise: hard of shape {tuple(hard.shape)} "
            f"must end with the shape {tuple(q.log_potentials.shape)} of log_potentials"
        )
    return _as_size(sample_shape) + hard.shape


def _work(theta: Tensor) -> torch.dtype:
    # Truncated noise is a difference of nearby numbers: float32 at least.
    return torch.float64 if theta.dtype == torch.float64 else torch.float32


class _Factorized(Structure):
    """Shared masking for N independent variables (N is dimension -event_dim)."""

    @property
    def max_length(self) -> int:
        return self.log_potentials.shape[-self.event_dim]

    def _mask(self) -> Tensor | None:
        """``(*batch, N)`` True at real variables, None without lengths."""
        if self.lengths is None:
            return None
        return sequence_mask(self.lengths, self.max_length)

    def _masked(self, x: Tensor, fill: float = 0.0) -> Tensor:
        """``x`` of shape ``(..., *batch, N[, K])`` with padded variables set to ``fill``."""
        mask = self._mask()
        if mask is None:
            return x
        if self.event_dim == 2:
            mask = mask.unsqueeze(-1)
        return x.masked_fill(~mask, fill)

    def _combinations(self, values: int) -> Tensor:
        """All assignments of the real variables, ``(values^L, N)`` with -1 at padding."""
        length = self.support_length()
        rows = torch.tensor(
            list(itertools.product(range(values), repeat=length)),
            dtype=torch.long,
            device=self.log_potentials.device,
        ).reshape(-1, length)
        pad = rows.new_full((rows.shape[0], self.max_length - length), -1)
        return torch.cat([rows, pad], dim=1)


class Categorical(_Factorized):
    """N independent K-way categorical variables with one-hot z.

    Args:
        log_potentials: ``(*batch, N, K)`` logits θ_{n,k}.
        lengths: optional ``(*batch)`` number of real variables.

    Example:
        >>> q = Categorical(torch.zeros(2, 3, 4))
        >>> q.sample(5).shape, q.log_partition()
        (torch.Size([5, 2, 3, 4]), tensor([4.1589, 4.1589]))
    """

    event_dim = 2

    @classmethod
    def event_layout(cls) -> str:
        return "(*batch, N, K)"

    def _safe(self) -> tuple[Tensor, Tensor]:
        """θ with padded rows and all -inf rows set to 0 (finite softmaxes), and ``(*batch)``
        True where the support is empty (a real variable with every value forbidden)."""
        theta = self._masked(self.log_potentials)  # padding → 0 keeps logsumexp finite
        dead = (theta == -math.inf).all(-1)  # (*batch, N)
        return theta.masked_fill(dead.unsqueeze(-1), 0.0), dead.any(-1)

    def log_partition(self) -> Tensor:
        theta, empty = self._safe()
        lse = torch.logsumexp(theta, dim=-1)
        mask = self._mask()
        if mask is not None:
            lse = lse * mask
        return torch.where(empty, -math.inf, lse.sum(-1))

    def marginals(self) -> Tensor:
        theta, empty = self._safe()
        mu = self._masked(torch.softmax(theta, dim=-1))
        return mu.masked_fill(empty[..., None, None], 0.0)  # no mass on an empty support

    def _check_support(self, what: str) -> None:
        empty = self._safe()[1]
        if bool(empty.any()):
            none = self.log_potentials.shape[-1] == 0
            why = "K = 0: a variable with no value" if none else "a variable with every value -inf"
            raise ValueError(
                f"Categorical.{what}: the support is empty ({why}) at flat batch index "
                f"{empty.reshape(-1).nonzero()[:5, 0].tolist()}"
            )

    def argmax(self) -> Tensor:
        self._check_support("argmax")
        theta = self.log_potentials.detach()
        index = theta.argmax(-1)
        return self._masked(F.one_hot(index, theta.shape[-1]).to(theta.dtype))

    def log_prob(self, value: Tensor) -> Tensor:
        # Σ_n ⟨z_n, log_softmax(θ_n)⟩ stays ≤ 0 at any scale of θ.
        self._check_value(value)
        theta, empty = self._safe()
        logp = torch.log_softmax(theta, dim=-1)
        logp = torch.where(value != 0, logp, 0.0)
        return _at_most_zero(torch.where(empty, -math.inf, (logp * value).sum((-2, -1))))

    def entropy(self) -> Tensor:
        theta, _ = self._safe()
        logp = torch.log_softmax(theta, dim=-1)
        p = self.marginals()
        return _at_least_zero(-torch.where(p > 0, p * logp, 0.0).sum((-2, -1)))

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        # Gumbel-max: argmax(θ + G) is an exact categorical sample.
        self._check_support("sample")
        perturbed = self.log_potentials.detach() + self.perturb_noise(sample_shape)
        index = perturbed.argmax(-1)
        return self._masked(F.one_hot(index, perturbed.shape[-1]).to(perturbed.dtype))

    @torch.no_grad()
    def conditional_perturb_noise(
        self, hard: Tensor, sample_shape: int | Sequence[int] | torch.Size = ()
    ) -> Tensor:
        """Gumbel noise G given argmax(θ + G) = hard, top-down (see the module docstring).

        The winner k* gets θ_{k*} + G_{k*} = M with M = logsumexp θ + Gumbel(0, 1);
        every other k gets θ_k + G_k = -log(exp(-M) + exp(-(θ_k + g_k))), a
        Gumbel of location θ_k truncated below M. Padded variables (all-zero
        rows of ``hard``) and forbidden entries (θ = -inf) get unconditional
        Gumbel noise.

        Args:
            hard: one-hot samples ``(*S, *batch, N, K)``.
            sample_shape: further leading dimensions.

        Returns:
            G ``(*sample_shape, *S, *batch, N, K)``.
        """
        shape = _noise_shape(self, hard, sample_shape)
        work = _work(self.log_potentials)
        theta = self.log_potentials.detach().to(work)
        free = gumbel_noise(shape, dtype=work, device=theta.device)  # g_k
        top = torch.logsumexp(theta, -1, keepdim=True) + gumbel_noise(
            shape[:-1] + (1,), dtype=work, device=theta.device
        )  # M
        top = top.clamp(min=torch.finfo(work).min)  # a padded row of -inf stays finite
        below = -torch.logaddexp(-top, -(theta + free))
        winner = hard.to(torch.bool)
        noise = torch.where(winner, top - theta, below - theta)
        real = winner.any(-1, keepdim=True) & (theta > -math.inf)
        return torch.where(real, noise, free).to(self.log_potentials.dtype)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        theta = self.log_potentials
        rows = self._combinations(theta.shape[-1])  # (K^L, N)
        z = F.one_hot(rows.clamp(min=0), theta.shape[-1]).to(theta.dtype)
        z = z * (rows >= 0).unsqueeze(-1)  # padded variables are all-zero
        return self.broadcast_support(z, expand)


class Bernoulli(_Factorized):
    """N independent bits; θ_n is the logit of z_n = 1.

    Its perturbation noise is Logistic(0, 1), not Gumbel: the single part per
    bit encodes z = 1 against an implicit 0-potential part for z = 0, and the
    difference of the two parts' Gumbels is Logistic. So ``1[θ + G > 0]`` is an
    exact sample and ``sigmoid((θ + G)/τ)`` is the binary Concrete relaxation.

    Args:
        log_potentials: ``(*batch, N)`` logits.
        lengths: optional ``(*batch)`` number of real variables.

    Example:
        >>> q = Bernoulli(torch.zeros(3))
        >>> q.marginals()
        tensor([0.5000, 0.5000, 0.5000])
    """

    event_dim = 1

    @classmethod
    def event_layout(cls) -> str:
        return "(*batch, N)"

    def log_partition(self) -> Tensor:
        return self._masked(F.softplus(self.log_potentials)).sum(-1)

    def marginals(self) -> Tensor:
        return self._masked(torch.sigmoid(self.log_potentials))

    def argmax(self) -> Tensor:
        theta = self.log_potentials.detach()
        return self._masked((theta > 0).to(theta.dtype))

    def log_prob(self, value: Tensor) -> Tensor:
        self._check_value(value)
        theta = self._masked(self.log_potentials)
        # z log σ(θ) + (1 - z) log σ(-θ), exact for relaxed z as well; a term
        # with weight 0 is 0 even where θ = -inf makes its log -inf.
        logp = torch.where(value != 0, value * F.logsigmoid(theta), 0.0) + torch.where(
            value != 1, (1 - value) * F.logsigmoid(-theta), 0.0
        )
        return _at_most_zero(self._masked(logp).sum(-1))

    def entropy(self) -> Tensor:
        theta = self._masked(self.log_potentials)
        p = torch.sigmoid(theta)
        h = F.softplus(theta) - torch.where(p > 0, p * theta, 0.0)  # A(θ_n) - θ_n μ_n per bit
        return _at_least_zero(self._masked(h).sum(-1))

    def perturb_noise(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        theta = self.log_potentials
        shape = _as_size(sample_shape) + theta.shape
        return logistic_noise(shape, dtype=theta.dtype, device=theta.device)

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        perturbed = self.log_potentials.detach() + self.perturb_noise(sample_shape)
        return self._masked((perturbed > 0).to(perturbed.dtype))

    @torch.no_grad()
    def conditional_perturb_noise(
        self, hard: Tensor, sample_shape: int | Sequence[int] | torch.Size = ()
    ) -> Tensor:
        """Logistic noise L given 1[θ + L > 0] = hard: L truncated to the side z names.

        By inverse CDF with V ~ Uniform(0, 1) and σ the sigmoid: for z = 1,
        σ(L) = σ(-θ) + V σ(θ); for z = 0, σ(L) = V σ(-θ); both written in log
        space so no cancellation occurs at large |θ|. Padded bits get
        unconditional noise.

        Args:
            hard: 0/1 samples ``(*S, *batch, N)``.
            sample_shape: further leading dimensions.

        Returns:
            L ``(*sample_shape, *S, *batch, N)``.
        """
        shape = _noise_shape(self, hard, sample_shape)
        work = _work(self.log_potentials)
        theta = self.log_potentials.detach().to(work)
        v = safe_uniform(shape, dtype=work, device=theta.device)
        log_v, log_1mv = v.log(), torch.log1p(-v)
        on, off = F.logsigmoid(theta), F.logsigmoid(-theta)  # log σ(θ), log σ(-θ)
        one = hard.to(torch.bool)
        # L = log σ(L) - log(1 - σ(L)).
        log_u = torch.where(one, torch.logaddexp(off, log_v + on), log_v + off)
        log_1mu = torch.where(one, log_1mv + on, torch.logaddexp(on, log_1mv + off))
        noise = log_u - log_1mu
        mask = self._mask()
        if mask is not None:
            noise = torch.where(mask, noise, logistic_noise(shape, dtype=work, device=theta.device))
        return noise.to(self.log_potentials.dtype)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        theta = self.log_potentials
        rows = self._combinations(2)  # (2^L, N)
        z = rows.clamp(min=0).to(theta.dtype)
        return self.broadcast_support(z, expand)
