r"""The latent of a model, injected: logits → `Structure`, the prior and its KL, z → decoder input.

A model with a discrete latent reads the same three things about it, whatever
its structure:

* ``posterior(logits)``: the structure q(z | x) whose log-potentials an encoder
  (or a stochastic layer) produced, ``(*batch, in_features)`` → batch shape
  ``(*batch,)``;
* ``prior(batch_shape)`` and ``kl(q)``: p(z) and the exact KL(q ‖ p), from the
  structures' registered ``kl_divergence`` (exponential family:
  KL = A(θ_p) − A(θ_q) + ⟨μ_q, θ_q − θ_p⟩);
* ``decoder_input(z)``: the ``(*sample, *batch, out_features)`` vector a
  decoder reads from z ``(*sample, *batch, *event)``, hard or relaxed.

`CategoricalLatent` (N one-hot K-way variables, Jang et al. 2017),
`BernoulliLatent` (N bits) and `ChainLatent` (a `LinearChainCRF` over N
positions of C states, with a learned transition matrix) implement it, so a
categorical, a Bernoulli and a chain-posterior VAE are one class with three
configs:

    model:
      class_path: zoo.models.VAE
      init_args:
        latent:
          class_path: zoo.models.ChainLatent
          init_args: {num_variables: 20, num_states: 10}

The chain's posterior scores a label sequence y by its emissions and a
learned transition T (the same for every x):

    log q(y | x) = Σ_n e_n(y_n) + Σ_n T[y_{n+1}, y_n] − log Z(x),

with e = the encoder's ``(N, C)`` output, so θ[n, c', c] = e_{n+1}(c') + T[c', c]
(+ e_0(c) at n = 0) in torch-struct's transition layout; its prior is the
uniform distribution over the C^N sequences, and the decoder reads the
per-position labels ``(N, C)`` (the chain's unary marginals for a relaxed z),
which is what a categorical latent of the same size gives it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import kl_divergence

from zoo.config import Configurable, from_config
from zoo.structures import Bernoulli, Categorical, LinearChainCRF, Structure

__all__ = ["BernoulliLatent", "CategoricalLatent", "ChainLatent", "Latent", "as_latent", "upgrade_latent"]


class Latent(Configurable, nn.Module):
    """What a model needs to know about its discrete latent z (see the module docstring).

    A subclass sets ``in_features`` and ``out_features`` in ``__init__`` and writes
    ``posterior`` and ``prior``; ``kl`` and ``decoder_input`` have defaults (the
    registered KL; z's parts flattened). Any learned parameter (the chain's
    transition) is an ``nn.Parameter`` of the latent, so it trains with the model
    and reaches checkpoints.
    """

    in_features: int
    """The width of the logits ``posterior`` reads (an encoder's output)."""
    out_features: int
    """The width of ``decoder_input``'s output (a decoder's input)."""
    event_dim: int = 1
    """The number of trailing dimensions of one z (that of the structure)."""

    def posterior(self, logits: Tensor) -> Structure:
        """The structure with these logits: ``(*batch, in_features)`` → batch shape ``(*batch,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement posterior(logits)")

    def prior(self, batch_shape: torch.Size | tuple[int, ...]) -> Structure:
        """p(z) with batch shape ``batch_shape``."""
        raise NotImplementedError(f"{type(self).__name__} has no prior")

    def kl(self, q: Structure) -> Tensor:
        """KL(q ‖ p), exact: ``(*batch)`` for q of batch shape ``(*batch,)``."""
        return kl_divergence(q, self.prior(q.batch_shape))

    def decoder_input(self, z: Tensor) -> Tensor:
        """``(*sample, *batch, out_features)`` from z ``(*sample, *batch, *event)``: its parts, flat."""
        return z.flatten(start_dim=z.dim() - self.event_dim)

    def _check_logits(self, logits: Tensor) -> None:
        if logits.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"{type(self).__name__}: logits must end with {self.in_features} features, "
                f"got shape {tuple(logits.shape)}"
            )


def _check_size(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer ≥ {minimum}, got {value!r}")
    return value


class CategoricalLatent(Latent):
    """N independent K-way categorical variables, one-hot (``Categorical``), uniform prior.

    Args:
        num_variables: N (20 in Jang et al. 2017).
        num_classes: K (10 in Jang et al.).

    Example:
        >>> latent = CategoricalLatent(num_variables=2, num_classes=3)
        >>> q = latent.posterior(torch.zeros(4, 6))
        >>> q.batch_shape, latent.kl(q)
        (torch.Size([4]), tensor([0., 0., 0., 0.]))
    """

    event_dim = 2

    def __init__(self, num_variables: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        self.num_variables = _check_size("CategoricalLatent", "num_variables", num_variables)
        self.num_classes = _check_size("CategoricalLatent", "num_classes", num_classes)
        self.in_features = self.out_features = num_variables * num_classes
        # Not persistent: a constant, and checkpoints of the older classes have no such key.
        self.register_buffer(
            "prior_logits", torch.zeros(num_variables, num_classes), persistent=False
        )

    def posterior(self, logits: Tensor) -> Categorical:
        self._check_logits(logits)
        # No NaN check (a device sync per step): a NaN here shows as a NaN loss.
        shape = (self.num_variables, self.num_classes)
        return Categorical(logits.unflatten(-1, shape), validate_args=False)

    def prior(self, batch_shape: torch.Size | tuple[int, ...]) -> Categorical:
        return Categorical(self.prior_logits.expand(*batch_shape, -1, -1), validate_args=False)


class BernoulliLatent(Latent):
    """N independent bits (``Bernoulli``), uniform prior.

    Args:
        num_variables: N (200 in Jang et al. 2017).
    """

    event_dim = 1

    def __init__(self, num_variables: int = 200) -> None:
        super().__init__()
        self.num_variables = _check_size("BernoulliLatent", "num_variables", num_variables)
        self.in_features = self.out_features = num_variables
        self.register_buffer("prior_logits", torch.zeros(num_variables), persistent=False)

    def posterior(self, logits: Tensor) -> Bernoulli:
        self._check_logits(logits)
        return Bernoulli(logits, validate_args=False)

    def prior(self, batch_shape: torch.Size | tuple[int, ...]) -> Bernoulli:
        return Bernoulli(self.prior_logits.expand(*batch_shape, -1), validate_args=False)


class ChainLatent(Latent):
    """A label sequence of N positions and C states: a `LinearChainCRF` with a learned transition.

    The logits are N·C emission scores e ``(N, C)``, and the chain is
    ``LinearChainCRF.from_scores(e, T)`` with T a learned ``(C, C)`` transition
    parameter initialised at 0 (so the chain starts as N independent
    categoricals): z ``(N, C, C)``, the last transition the virtual end. The
    prior is uniform over the C^N sequences (all scores 0), so
    KL(q ‖ p) = N log C − H(q), exact. The decoder reads the labels per
    position ``(N·C)``: one-hot for a hard z, the unary marginals of a relaxed one.

    Args:
        num_variables: N positions (≥ 2: a chain needs a transition).
        num_states: C states per position.

    Example:
        >>> latent = ChainLatent(num_variables=3, num_states=2)
        >>> q = latent.posterior(torch.zeros(1, 6))  # uniform over 2^3 sequences
        >>> latent.kl(q)
        tensor([0.])
        >>> latent.decoder_input(q.sample(5)).shape
        torch.Size([5, 1, 6])
    """

    event_dim = 3

    def __init__(self, num_variables: int = 20, num_states: int = 10) -> None:
        super().__init__()
        self.num_variables = _check_size("ChainLatent", "num_variables", num_variables, minimum=2)
        self.num_states = _check_size("ChainLatent", "num_states", num_states)
        self.in_features = self.out_features = num_variables * num_states
        # T[c', c]: the score of moving from state c to state c'.
        self.transition = nn.Parameter(torch.zeros(num_states, num_states))

    def posterior(self, logits: Tensor) -> LinearChainCRF:
        self._check_logits(logits)
        emissions = logits.unflatten(-1, (self.num_variables, self.num_states))  # (*batch, N, C)
        return LinearChainCRF.from_scores(emissions, self.transition, validate_args=False)

    def prior(self, batch_shape: torch.Size | tuple[int, ...]) -> LinearChainCRF:
        n, c = self.num_variables, self.num_states
        zeros = self.transition.new_zeros(()).expand(*batch_shape, n, c)
        return LinearChainCRF.from_scores(zeros, zeros.new_zeros(c, c), validate_args=False)

    def decoder_input(self, z: Tensor) -> Tensor:
        """The labels per position, ``(*sample, *batch, N·C)``, from transitions ``(…, N, C, C)``."""
        return z.sum(-2).flatten(-2)  # the label c left at every position n


def as_latent(value: Any, name: str = "latent") -> Latent:
    """``value`` if it is a `Latent`, the latent its config describes if it is a config.

    Raises:
        ValueError: anything else (the message names ``name`` and what it got).
    """
    if isinstance(value, Latent):
        return value
    if isinstance(value, Mapping):
        return from_config(value, Latent)
    raise ValueError(
        f"{name} must be a zoo.models.latent.Latent (e.g. CategoricalLatent(20, 10)) or its "
        f"config {{'class_path': ..., 'init_args': {{...}}}}, got {type(value).__name__}"
    )


def upgrade_latent(hparams: Any) -> dict[str, Any]:
    """The ``latent`` of a checkpoint written by the older ``Categorical*``/``Bernoulli*`` model
    classes, which took ``num_variables`` (and ``num_classes``) instead; none when it has one."""
    if "latent" in hparams or "num_variables" not in hparams:
        return {}
    if "num_classes" in hparams:
        latent = CategoricalLatent(hparams["num_variables"], hparams["num_classes"])
    else:
        latent = BernoulliLatent(hparams["num_variables"])
    return {"latent": latent.init_config()}
