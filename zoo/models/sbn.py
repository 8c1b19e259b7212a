r"""Stochastic binary networks for structured output prediction (Jang et al. 2017, §4.2).

The task (Raiko et al. 2015; Gu et al. 2016): predict the lower half y of an
MNIST digit from its upper half x. The model is a belief network with two
stochastic layers, 392-200-200-392 by default:

    p(y | x) = Σ_{z1, z2} p(z1 | x) p(z2 | z1) p(y | z2),

each conditional a linear map (or an MLP with ``hidden_sizes``) to the logits
of independent Bernoulli bits, or of independent categorical variables (20
ten-way in the paper). There is no encoder: as in the paper, the stochastic
layers are the model itself and the samples come from p(z | x).

Training minimizes the one-sample bound of Jang et al. (m = 1 in the
importance-sampled objective of Gu et al. 2016), by Jensen an upper bound on
the negative log-likelihood:

    neg_elbo = E_{z1∼p(z1|x)} E_{z2∼p(z2|z1)} [−log p(y | z2)] ≥ −log p(y | x).

Each stochastic layer is an injected `zoo.models.latent.Latent` (bits,
categorical variables, a chain); the second layer gets a copy of the first's,
with its own parameters. Checkpoints of the older ``BernoulliSBN`` and
``CategoricalSBN`` load with ``SBN.load_from_checkpoint``.

It is the negative ELBO with the model's own p(z | x) as the variational
distribution (so its KL term is 0), and it is logged under that name, as for
the VAEs, so the runs of both families share their TensorBoard columns.

The two expectations are two estimators, nested through
``Estimate.objective``: the cost of z1 runs the inner estimator on
p(z2 | z1), whose batch shape is (S1, B), and returns its objective (value:
the cost; gradient: the inner estimate). So each layer gets its own gradient
estimator, with its own state (baselines, temperature).

The test metric ``nll_iw`` is the m-sample estimate of Gu et al. (m = 1000 in
Jang et al., Table: SBN 58.5 nats):

    −log p(y | x) ≈ −log (1/m) Σ_i p(y | z2_i),    (z1_i, z2_i) ∼ p(z1 | x) p(z2 | z1),

an importance-sampling estimate whose proposal is the model's own p(z | x)
(so the weights are p(y | z2)). In expectation it is an upper bound on
−log p(y | x) that decreases towards it as m grows.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from zoo.estimators import Estimator, as_estimator
from zoo.models.base import Batch, LatentVariableModel
from zoo.models.components import MLP, bernoulli_nll
from zoo.models.latent import Latent, as_latent, upgrade_latent
from zoo.structures import Structure

__all__ = ["SBN"]


class SBN(LatentVariableModel):
    """The two-layer network x → z1 → z2 → y; ``latent`` says what each stochastic layer is.

    Args:
        estimator: the gradient estimator of the first layer, z1 ∼ p(z1 | x).
        latent: the structure of z1, ``BernoulliLatent(200)`` or
            ``CategoricalLatent(20, 10)`` (or its config); z2 has a copy of it,
            with its own parameters where it has any.
        inner_estimator: the estimator of the second layer, z2 ∼ p(z2 | z1), or its config;
            None (default): a copy of ``estimator`` with its own state.
        input_dim: the width of x (392, the upper half of a 28×28 image).
        output_dim: the width of y (392, the lower half); None: ``input_dim``.
        hidden_sizes: deterministic ReLU layers inside each conditional; empty (default)
            for the paper's linear conditionals.
        **kwargs: `LatentVariableModel`'s ``lr``, ``num_importance_samples`` (m of
            ``test/nll_iw``, 1000 by default, as in Jang et al.), ``val_importance_samples``
            and ``importance_chunk_size``.

    Example:
        >>> from zoo.estimators import StraightThrough
        >>> from zoo.models.latent import BernoulliLatent
        >>> model = SBN(StraightThrough(), BernoulliLatent(5), input_dim=4, output_dim=3)
        >>> model({"x": torch.ones(2, 4), "y": torch.zeros(2, 3)}).shape
        torch.Size([2])
    """

    importance_samples = 1000  # Jang et al.'s m of test/nll_iw

    objective_name = "neg_elbo"

    def __init__(
        self,
        estimator: Estimator,
        latent: Latent,
        inner_estimator: Estimator | None = None,
        input_dim: int = 392,
        output_dim: int | None = None,
        hidden_sizes: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(estimator, **kwargs)
        hidden = tuple(hidden_sizes)
        self.inner_estimator = (
            copy.deepcopy(self.estimator)
            if inner_estimator is None
            else as_estimator(inner_estimator, "inner_estimator")
        )
        if self.inner_estimator.multi_sample_bound:
            raise TypeError(
                f"inner_estimator: {type(self.inner_estimator).__name__} estimates a multi-sample "
                "bound and needs the joint -log p(x, z); the SBN's second layer has none"
            )
        self.latent = as_latent(latent)
        self.inner_latent = copy.deepcopy(self.latent)
        self.input_dim = input_dim
        self.output_dim = input_dim if output_dim is None else output_dim
        features = self.latent.in_features
        self.first = MLP(input_dim, hidden, features)  # x → logits of z1
        self.second = MLP(self.latent.out_features, hidden, features)  # z1 → logits of z2
        self.output = MLP(self.inner_latent.out_features, hidden, self.output_dim)  # z2 → y

    @classmethod
    def upgrade_hyperparameters(cls, hparams):
        """A checkpoint of the older ``BernoulliSBN``/``CategoricalSBN``: its latent from
        ``num_variables`` (and ``num_classes``)."""
        return upgrade_latent(hparams)

    def posterior(self, batch: Batch) -> Structure:
        """p(z1 | x), batch shape ``(B,)``."""
        return self.latent.posterior(self.first(batch["x"]))

    def second_layer(self, z1: Tensor) -> Structure:
        """p(z2 | z1): z1 ``(*sample, B, *event)`` → batch shape ``(*sample, B)``."""
        return self.inner_latent.posterior(self.second(self.latent.decoder_input(z1)))

    def output_logits(self, z2: Tensor) -> Tensor:
        """Logits of p(y | z2): z2 ``(*sample, B, *event)`` → ``(*sample, B, D_out)``."""
        return self.output(self.inner_latent.decoder_input(z2))

    def output_cost(self, z2: Tensor, y: Tensor) -> Tensor:
        """−log p(y | z2): z2 ``(*sample, B, *event)`` → ``(*sample, B)``."""
        return bernoulli_nll(self.output_logits(z2), y)

    def cost(self, z1: Tensor, batch: Batch) -> Tensor:
        """E_{z2∼p(z2|z1)}[−log p(y | z2)] as the inner estimator's objective: ``(S1, B)``."""
        q2 = self.second_layer(z1)  # batch shape (S1, B)
        inner = self.inner_estimator(q2, lambda z2: self.output_cost(z2, batch["y"]))
        return inner.objective  # (S1, B): value = cost, gradient = the inner estimate

    def log_weights(self, q: Structure, batch: Batch, num_samples: int) -> Tensor:
        """log p(y | z2) for ``num_samples`` ancestral samples z1 ∼ p(z1 | x), z2 ∼ p(z2 | z1).

        The proposal is the model's own p(z | x), so the weight is p(y | z2): ``(m, B)``.
        """
        z1 = q.sample(num_samples)  # (m, B, *event)
        z2 = self.second_layer(z1).sample()  # (m, B, *event)
        return -self.output_cost(z2, batch["y"])

    @torch.no_grad()
    def images(self, batch: Batch, num_images: int) -> dict[str, Tensor]:
        """Upper halves completed by the model.

        Returns:
            ``completions``: ``(2n, D_in + D_out)``, each true image followed by its
            upper half over the mean of p(y | z2) for one ancestral sample z2.
        """
        x, y = batch["x"][:num_images], batch["y"][:num_images]
        z1 = self.posterior({"x": x}).sample()
        z2 = self.second_layer(z1).sample()
        predicted = torch.sigmoid(self.output_logits(z2))
        truth = torch.cat([x, y], dim=-1)
        completed = torch.cat([x, predicted], dim=-1)
        return {"completions": torch.stack([truth, completed], dim=1).flatten(0, 1)}
