r"""Variational autoencoders with discrete latents (Jang et al. 2017, §4.3, Table 1).

Generative model p(z) p(x | z): a prior over the latent code z (uniform in
Jang et al.) and independent Bernoulli pixels whose logits a decoder MLP reads
from z. An encoder MLP gives the amortized posterior q(z | x). Training
minimizes the negative ELBO

    −ELBO(x) = E_{z∼q}[−log p(x | z)] + KL(q(z | x) ‖ p(z)),

whose first term (``recon``) goes through the estimator and whose KL is exact
(the latent's ``kl``). At test time ``nll_iw`` estimates −log p(x) by
importance sampling with m samples of q:

    log p(x) ≈ log (1/m) Σ_i p(x | z_i) p(z_i) / q(z_i | x),    z_i ∼ q(z | x).

What z is (N categorical variables, N bits, a label chain) is the injected
`zoo.models.latent.Latent`: one `VAE` class, one config per latent.
Checkpoints of the older ``CategoricalVAE`` and ``BernoulliVAE`` load with
``VAE.load_from_checkpoint`` (their ``num_variables``/``num_classes`` become the
latent). Default sizes are the paper's: encoder
784-512-256-(latent), decoder (latent)-256-512-784, ReLU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from zoo.estimators import Estimator
from zoo.models.base import Batch, LatentVariableModel
from zoo.models.components import MLP, bernoulli_nll
from zoo.models.latent import Latent, as_latent, upgrade_latent
from zoo.structures import Structure

__all__ = ["VAE"]


class VAE(LatentVariableModel):
    """A VAE whose latent z is injected: encoder → ``latent.posterior`` → z → ``latent.decoder_input`` → decoder.

    Args:
        estimator: the gradient estimator of E_q[−log p(x | z)], or of the multi-sample
            bound with −log p(x, z) (`VIMCO`; see `zoo.models.base`).
        latent: what z is: ``CategoricalLatent(20, 10)``, ``BernoulliLatent(200)``,
            ``ChainLatent(20, 10)``, or its config. Its ``in_features`` is the
            encoder's output width, its ``out_features`` the decoder's input width.
        input_dim: D, the pixels of x (784 for MNIST).
        hidden_sizes: encoder hidden widths; the decoder uses them reversed.
        **kwargs: `LatentVariableModel`'s ``lr``, ``num_importance_samples`` (m of
            ``test/nll_iw``, 1000 by default, as in Jang et al.), ``val_importance_samples``
            and ``importance_chunk_size``.

    Example:
        >>> from zoo.estimators import GumbelSoftmax
        >>> from zoo.models.latent import ChainLatent
        >>> model = VAE(GumbelSoftmax(), ChainLatent(num_variables=3, num_states=2), input_dim=6,
        ...             hidden_sizes=(8,))
        >>> model({"x": torch.ones(4, 6)}).shape
        torch.Size([4])
    """

    importance_samples = 1000  # Jang et al.'s m of test/nll_iw

    objective_name = "neg_elbo"
    cost_name = "recon"
    regularizer_name = "kl"

    def __init__(
        self,
        estimator: Estimator,
        latent: Latent,
        input_dim: int = 784,
        hidden_sizes: tuple[int, ...] = (512, 256),
        **kwargs: Any,
    ) -> None:
        super().__init__(estimator, **kwargs)
        hidden = tuple(hidden_sizes)
        self.latent = as_latent(latent)
        self.input_dim = input_dim
        self.encoder = MLP(input_dim, hidden, self.latent.in_features)
        self.decoder = MLP(self.latent.out_features, hidden[::-1], input_dim)

    @classmethod
    def upgrade_hyperparameters(cls, hparams):
        """A checkpoint of the older ``CategoricalVAE``/``BernoulliVAE``: its latent from
        ``num_variables`` (and ``num_classes``)."""
        return upgrade_latent(hparams)

    def posterior(self, batch: Batch) -> Structure:
        """q(z | x), batch shape ``(B,)``."""
        return self.latent.posterior(self.encoder(batch["x"]))

    def prior(self, batch_shape: torch.Size | tuple[int, ...]) -> Structure:
        """p(z) with batch shape ``batch_shape``."""
        return self.latent.prior(batch_shape)

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits ``(*sample, B, D)`` from z ``(*sample, B, *event)``."""
        return self.decoder(self.latent.decoder_input(z))

    def cost(self, z: Tensor, batch: Batch) -> Tensor:
        """−log p(x | z): z ``(S, B, *event)`` → ``(S, B)``."""
        return bernoulli_nll(self.decode(z), batch["x"])

    def regularizer(self, q: Structure, batch: Batch) -> Tensor:
        """KL(q(z | x) ‖ p(z)), ``(B,)``, exact."""
        return self.latent.kl(q)

    def joint_nll(self, z: Tensor, batch: Batch) -> Tensor:
        """−log p(x, z) = −log p(x | z) − log p(z): z ``(S, B, *event)`` → ``(S, B)`` (for `VIMCO`)."""
        batch_shape = z.shape[1 : z.dim() - self.latent.event_dim]
        return self.cost(z, batch) - self.prior(batch_shape).log_prob(z)

    def log_weights(self, q: Structure, batch: Batch, num_samples: int) -> Tensor:
        """log p(x | z) + log p(z) − log q(z | x) for ``num_samples`` exact z ∼ q: ``(m, B)``."""
        z = q.sample(num_samples)  # (m, B, *event)
        return -self.joint_nll(z, batch) - q.log_prob(z)

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
        z = self.prior((x.shape[0],)).sample().to(x.dtype)  # (n, *event): one z per picture
        samples = torch.sigmoid(self.decode(z))
        return {"reconstructions": pairs, "samples": samples}
