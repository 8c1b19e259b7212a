r"""Variational autoencoders with discrete latents (Jang et al. 2017, §4.3, Table 1).

Generative model p(z) p(x | z): a uniform prior over the latent code z and
independent Bernoulli pixels whose logits a decoder MLP reads from z. An
encoder MLP gives the amortized posterior q(z | x). Training minimizes the
negative ELBO

    −ELBO(x) = E_{z∼q}[−log p(x | z)] + KL(q(z | x) ‖ p(z)),

whose first term (``recon``) goes through the estimator and whose KL is exact
(the structures' registered ``kl_divergence``). At test time
``nll_iw`` estimates −log p(x) by importance sampling with m samples of q:

    log p(x) ≈ log (1/m) Σ_i p(x | z_i) p(z_i) / q(z_i | x),    z_i ∼ q(z | x).

`CategoricalVAE` (20 ten-way variables) and `BernoulliVAE` (200 bits) share
everything but the structure of z. Default sizes are the paper's: encoder
784-512-256-(latent), decoder (latent)-256-512-784, ReLU.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import kl_divergence

from zoo.estimators import Estimator
from zoo.models.base import Batch, LatentVariableModel
from zoo.models.components import MLP, bernoulli_nll
from zoo.structures import Bernoulli, Categorical, Structure

__all__ = ["VAE", "BernoulliVAE", "CategoricalVAE"]


class VAE(LatentVariableModel):
    """The shared VAE; subclasses choose the structure of z (``posterior`` and ``prior``).

    Args:
        estimator: the gradient estimator of E_q[−log p(x | z)].
        latent_features: the number of parts of z (N·K one-hot cells, or N bits),
            the width of the encoder's output and the decoder's input.
        input_dim: D, the pixels of x (784 for MNIST).
        hidden_sizes: encoder hidden widths; the decoder uses them reversed.
        lr: learning rate of Adam.
        num_importance_samples: m for ``test/nll_iw``; 0 skips it.
        val_importance_samples: m for ``val/nll_iw``; 0 skips it.
        importance_chunk_size: samples per chunk of the importance-sampling loop.
    """

    objective_name = "neg_elbo"
    cost_name = "recon"
    regularizer_name = "kl"
    structure: ClassVar[type[Structure]] = Structure
    """The kind of structure z is (its ``event_dim`` says how z flattens into the decoder)."""

    def __init__(
        self,
        estimator: Estimator,
        latent_features: int,
        input_dim: int = 784,
        hidden_sizes: tuple[int, ...] = (512, 256),
        lr: float = 1e-3,
        num_importance_samples: int = 1000,
        val_importance_samples: int = 0,
        importance_chunk_size: int = 100,
    ) -> None:
        super().__init__(
            estimator,
            lr=lr,
            num_importance_samples=num_importance_samples,
            val_importance_samples=val_importance_samples,
            importance_chunk_size=importance_chunk_size,
        )
        hidden = tuple(hidden_sizes)
        self.input_dim = input_dim
        self.encoder = MLP(input_dim, hidden, latent_features)
        self.decoder = MLP(latent_features, hidden[::-1], input_dim)

    def prior(self, batch_shape: torch.Size) -> Structure:
        """p(z), the uniform prior, with batch shape ``batch_shape``."""
        raise NotImplementedError(f"{type(self).__name__} must implement prior(batch_shape)")

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits ``(*sample, B, D)`` from z ``(*sample, B, *event)``."""
        flat = z.flatten(start_dim=z.dim() - self.structure.event_dim)  # (*sample, B, parts)
        return self.decoder(flat)

    def cost(self, z: Tensor, batch: Batch) -> Tensor:
        """−log p(x | z): z ``(S, B, *event)`` → ``(S, B)``."""
        return bernoulli_nll(self.decode(z), batch["x"])

    def regularizer(self, q: Structure, batch: Batch) -> Tensor:
        """KL(q(z | x) ‖ p(z)), ``(B,)``, exact."""
        return kl_divergence(q, self.prior(q.batch_shape))

    def log_weights(self, q: Structure, batch: Batch, num_samples: int) -> Tensor:
        """log p(x | z) + log p(z) − log q(z | x) for ``num_samples`` exact z ∼ q: ``(m, B)``."""
        z = q.sample(num_samples)  # (m, B, *event)
        prior = self.prior(q.batch_shape)
        return -self.cost(z, batch) + prior.log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def images(self, batch: Batch, num_images: int) -> dict[str, Tensor]:
        """Inputs next to the decoder means at the posterior mode, and prior samples.

        Returns:
            ``reconstructions``: ``(2n, D)``, each input followed by the mean of
            p(x | argmax q(z | x)); ``samples``: ``(n, D)``, means of p(x | z), z ∼ p(z).
        """
        x = batch["x"][:num_images]
        q = self.posterior({"x": x})
        recon = torch.sigmoid(self.decode(q.argmax()))
        pairs = torch.stack([x, recon], dim=1).flatten(0, 1)  # (2n, D): input, reconstruction
        z = self.prior(()).sample(x.shape[0]).to(x.dtype)  # (n, *event)
        samples = torch.sigmoid(self.decode(z))
        return {"reconstructions": pairs, "samples": samples}


class CategoricalVAE(VAE):
    """VAE with N independent K-way categorical latents (one-hot, ``Categorical``).

    Args:
        estimator: the gradient estimator of E_q[−log p(x | z)].
        num_variables: N (20 in Jang et al.).
        num_classes: K (10 in Jang et al.).
        input_dim: D, the pixels of x.
        hidden_sizes: encoder hidden widths; the decoder uses them reversed.
        lr: learning rate of Adam.
        num_importance_samples: m for ``test/nll_iw`` (1000 in Jang et al.); 0 skips it.
        val_importance_samples: m for ``val/nll_iw``; 0 skips it.
        importance_chunk_size: samples per chunk of the importance-sampling loop.

    Example:
        >>> from zoo.estimators import GumbelSoftmax
        >>> model = CategoricalVAE(GumbelSoftmax(), num_variables=2, num_classes=3, input_dim=6,
        ...                        hidden_sizes=(8,))
        >>> model({"x": torch.ones(4, 6)}).shape
        torch.Size([4])
    """

    structure = Categorical

    def __init__(
        self,
        estimator: Estimator,
        num_variables: int = 20,
        num_classes: int = 10,
        input_dim: int = 784,
        hidden_sizes: tuple[int, ...] = (512, 256),
        lr: float = 1e-3,
        num_importance_samples: int = 1000,
        val_importance_samples: int = 0,
        importance_chunk_size: int = 100,
    ) -> None:
        super().__init__(
            estimator,
            latent_features=num_variables * num_classes,
            input_dim=input_dim,
            hidden_sizes=hidden_sizes,
            lr=lr,
            num_importance_samples=num_importance_samples,
            val_importance_samples=val_importance_samples,
            importance_chunk_size=importance_chunk_size,
        )
        self.num_variables = num_variables
        self.num_classes = num_classes
        self.register_buffer(
            "prior_logits", torch.zeros(num_variables, num_classes), persistent=False
        )

    def posterior(self, batch: Batch) -> Categorical:
        logits = self.encoder(batch["x"])  # (B, N·K)
        # No NaN check (a device sync per step): a NaN here shows as a NaN loss.
        return Categorical(
            logits.unflatten(-1, (self.num_variables, self.num_classes)), validate_args=False
        )

    def prior(self, batch_shape: torch.Size) -> Categorical:
        return Categorical(self.prior_logits.expand(*batch_shape, -1, -1), validate_args=False)


class BernoulliVAE(VAE):
    """VAE with N independent binary latents (``Bernoulli``).

    Args:
        estimator: the gradient estimator of E_q[−log p(x | z)].
        num_variables: N bits (200 in Jang et al.).
        input_dim: D, the pixels of x.
        hidden_sizes: encoder hidden widths; the decoder uses them reversed.
        lr: learning rate of Adam.
        num_importance_samples: m for ``test/nll_iw`` (1000 in Jang et al.); 0 skips it.
        val_importance_samples: m for ``val/nll_iw``; 0 skips it.
        importance_chunk_size: samples per chunk of the importance-sampling loop.
    """

    structure = Bernoulli

    def __init__(
        self,
        estimator: Estimator,
        num_variables: int = 200,
        input_dim: int = 784,
        hidden_sizes: tuple[int, ...] = (512, 256),
        lr: float = 1e-3,
        num_importance_samples: int = 1000,
        val_importance_samples: int = 0,
        importance_chunk_size: int = 100,
    ) -> None:
        super().__init__(
            estimator,
            latent_features=num_variables,
            input_dim=input_dim,
            hidden_sizes=hidden_sizes,
            lr=lr,
            num_importance_samples=num_importance_samples,
            val_importance_samples=val_importance_samples,
            importance_chunk_size=importance_chunk_size,
        )
        self.num_variables = num_variables
        self.register_buffer("prior_logits", torch.zeros(num_variables), persistent=False)

    def posterior(self, batch: Batch) -> Bernoulli:
        # No NaN check (a device sync per step): a NaN here shows as a NaN loss.
        return Bernoulli(self.encoder(batch["x"]), validate_args=False)

    def prior(self, batch_shape: torch.Size) -> Bernoulli:
        return Bernoulli(self.prior_logits.expand(*batch_shape, -1), validate_args=False)
