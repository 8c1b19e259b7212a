r"""M2, the semi-supervised generative classifier (Kingma et al. 2014; Jang et al. 2017, §4.3, Table 2).

Generative model: a class y ∼ p(y) = Uniform{1..K}, a style z ∼ N(0, I), and
independent Bernoulli pixels x ∼ p(x | y, z) whose logits a decoder MLP reads
from (y, z). Inference: a classifier q(y | x) (a `Categorical` with one K-way
variable, the latent handed to the estimator) and a Gaussian q(z | x, y)
(reparameterized, its KL to N(0, I) in closed form).

For a labelled pair (x, y) the negative ELBO is

    L(x, y) = E_{z∼q(z|x,y)}[−log p(x | y, z)] + KL(q(z | x, y) ‖ N(0, I)) + log K;

for an unlabelled x the class is a latent:

    U(x) = E_{y∼q(y|x)}[L(x, y) − log K] + KL(q(y | x) ‖ Uniform).

Kingma et al. add the classification loss of the labelled examples, weighted by
α, so that q(y | x) also learns from the labels directly. A training batch holds
B_u unlabelled images and B_l labelled pairs, and the loss the code minimizes is

    loss = (1/B_u) Σ_unlabelled U(x) + (1/B_l) Σ_labelled [L(x, y) + α · (−log q(y | x))],

so the gradient of the loss with respect to the classifier's logits of a labelled
image is α/B_l · (softmax(logits) − one-hot(y)). Kingma et al.'s objective is
J^α = Σ_u U(x) + Σ_l L(x, y) + α_K · mean_l[−log q(y | x)] with α_K = 0.1·N over
the N training images. With B_l = B_u, an epoch of N_u/B_u batches shows each of
the N_l labelled images about N_u/N_l times, so B_u times the epoch's summed loss
is Σ_u U + (N_u/N_l) Σ_l L + α·N_u · mean_l[−log q]: α = 0.1 is Kingma et al.'s
α_K = 0.1·N (up to N/N_u), α = 0.1·N_u/N_l (≈ 50 with 100 labels, common in
reimplementations) keeps J^α's ratio of the classification loss to the labelled
bound, and the default α = 500 ≈ N_u/N_l is the largest of the weights measured
in ``docs/m2.md``, the only one whose classifier kept what the labels teach over
the first 3,000 steps (smaller α let the unlabelled bound pull it down).

The expectation over y is the injected estimator's: ``Exact()`` marginalizes
(K decoder passes per image, what Kingma et al. do), ``GumbelSoftmax`` /
``STGumbelSoftmax`` / ``Reinforce`` ... sample one class (one decoder pass),
which is Jang et al.'s speed-up (their Fig. 5: 2× with K = 10 classes, 9.9×
with K = 100). Jang et al. report test accuracy with 100 labels: 92.6 % for
the marginalization and 93.6 % for ST Gumbel-Softmax (their Table 2).

Logged: ``{stage}/neg_elbo`` (the mean U(x): in training over the unlabelled
images of the batch, in validation and test over all images, their labels
unused), ``{stage}/accuracy`` (argmax q(y | x) against the labels, a
torchmetrics metric, synced across processes), and in training
``train/loss`` (what is minimized), ``train/labelled_neg_elbo`` and
``train/classification`` (the mean −log q(y | x) of the labelled images).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import kl_divergence
from torchmetrics.classification import MulticlassAccuracy

from zoo.estimators import Estimator
from zoo.models.base import Batch, LatentVariableModel, Step
from zoo.models.components import MLP, bernoulli_nll
from zoo.structures import Categorical, Structure

__all__ = ["M2"]

LABELLED_KEYS = ("x_labelled", "y_labelled")


class M2(LatentVariableModel):
    """Kingma et al.'s M2 with the class y as the estimator's latent.

    Training batches are ``{"x": (B_u, D), "x_labelled": (B_l, D), "y_labelled": (B_l,)}``;
    validation and test batches ``{"x": (B, D), "y": (B,)}`` (what
    `zoo.data.semi_supervised.SemiSupervisedMNISTDataModule` gives).

    Args:
        estimator: the gradient estimator of E_{q(y|x)}[L(x, y)] for the unlabelled
            images; ``Exact()`` is the marginalization over the K classes.
        num_classes: K.
        latent_dim: the dimension of the Gaussian style z (50 in Kingma et al.).
        input_dim: D, the pixels of x (784 for MNIST; linked from the data by the CLI).
        hidden_sizes: hidden widths of the classifier and of the encoder of z; the decoder
            uses them reversed (one layer of 500 in Kingma et al.).
        alpha: α, the weight of the mean classification loss −log q(y | x) of a batch's
            labelled images, beside the batch means of U(x) and L(x, y) (the loss above).
            0.1 is Kingma et al.'s α = 0.1·N; the default, 500 ≈ N_u/N_l with 100 labels of
            49,900 images, is the recipe of ``docs/m2.md``.
        **kwargs: `LatentVariableModel`'s ``lr`` (3e-4 by default, as in Kingma et al.),
            ``num_importance_samples`` (m of ``test/nll_iw``, −log p(x) importance-sampled
            over y and z; 0 by default: skipped), ``val_importance_samples`` and
            ``importance_chunk_size``.

    Raises:
        ValueError: K < 2, a latent dimension below 1, α < 0, and the base's checks.

    Example:
        >>> from zoo.estimators import Exact
        >>> model = M2(Exact(), num_classes=3, latent_dim=2, input_dim=6, hidden_sizes=(8,))
        >>> model({"x": torch.ones(4, 6)}).shape
        torch.Size([4])
    """

    default_lr = 3e-4  # Kingma et al.
    objective_name = "neg_elbo"
    cost_name = "neg_elbo_given_y"
    regularizer_name = "kl_y"

    def __init__(
        self,
        estimator: Estimator,
        num_classes: int = 10,
        latent_dim: int = 50,
        input_dim: int = 784,
        hidden_sizes: tuple[int, ...] = (500,),
        alpha: float = 500.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(estimator, **kwargs)
        for name, value, low in (("num_classes", num_classes, 2), ("latent_dim", latent_dim, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
        if not float(alpha) >= 0:
            raise ValueError(f"alpha must be ≥ 0, got {alpha!r}")
        hidden = tuple(hidden_sizes)
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.input_dim = input_dim
        self.alpha = float(alpha)
        self.classifier = MLP(input_dim, hidden, num_classes)  # x → logits of q(y | x)
        self.encoder = MLP(input_dim + num_classes, hidden, 2 * latent_dim)  # (x, y) → q(z | x, y)
        self.decoder = MLP(
            latent_dim + num_classes, hidden[::-1], input_dim
        )  # (y, z) → p(x | y, z)
        self.register_buffer("prior_logits", torch.zeros(1, num_classes), persistent=False)
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")

    # ------------------------------------------------------------ the model's parts
    def posterior(self, batch: Batch) -> Categorical:
        """q(y | x) of the images ``batch["x"]`` ``(B, D)``: one K-way variable, event ``(1, K)``."""
        logits = self.classifier(batch["x"])  # (B, K)
        # No NaN check (a device sync per step): a NaN here shows as a NaN loss.
        return Categorical(logits.unsqueeze(-2), validate_args=False)

    def prior(self, batch_shape: torch.Size) -> Categorical:
        """p(y), uniform over the K classes, with batch shape ``batch_shape``."""
        return Categorical(self.prior_logits.expand(*batch_shape, -1, -1), validate_args=False)

    def style(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x, y).

        Args:
            x: ``(B, D)`` images.
            y: ``(*sample, B, K)`` one-hot (or relaxed) classes.

        Returns:
            Two ``(*sample, B, latent_dim)`` tensors.
        """
        x = x.expand(*y.shape[:-1], x.shape[-1])
        return self.encoder(torch.cat([x, y.to(x.dtype)], dim=-1)).chunk(2, dim=-1)

    def decode(self, y: Tensor, z: Tensor) -> Tensor:
        """Pixel logits ``(*sample, B, D)`` of p(x | y, z), y ``(*sample, B, K)``, z ``(*sample, B, latent_dim)``."""
        return self.decoder(torch.cat([z, y.to(z.dtype)], dim=-1))

    def neg_elbo_given_y(self, x: Tensor, y: Tensor) -> Tensor:
        """L(x, y) − log K: ``(*sample, B)``, one reparameterized z per (sample, image).

        Args:
            x: ``(B, D)`` images.
            y: ``(*sample, B, K)`` one-hot (or relaxed) classes.
        """
        mean, log_var = self.style(x, y)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        kl_z = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(-1)
        return bernoulli_nll(self.decode(y, z), x) + kl_z

    def cost(self, z: Tensor, batch: Batch) -> Tensor:
        """f(y) = L(x, y) − log K: classes ``(S, B, 1, K)`` → ``(S, B)``."""
        return self.neg_elbo_given_y(batch["x"], z.squeeze(-2))

    def regularizer(self, q: Structure, batch: Batch) -> Tensor:
        """KL(q(y | x) ‖ Uniform), ``(B,)``, exact."""
        return kl_divergence(q, self.prior(q.batch_shape))

    def log_weights(self, q: Structure, batch: Batch, num_samples: int) -> Tensor:
        """log p(x, y, z) − log q(y, z | x) for ``num_samples`` exact (y, z) ∼ q: ``(m, B)``."""
        x = batch["x"]
        y = q.sample(num_samples)  # (m, B, 1, K)
        code = y.squeeze(-2).to(x.dtype)
        mean, log_var = self.style(x, code)
        noise = torch.randn_like(mean)
        z = mean + noise * (0.5 * log_var).exp()
        log_2pi = math.log(2 * math.pi)
        log_q_z = -0.5 * (noise.square() + log_var + log_2pi).sum(-1)
        log_p_z = -0.5 * (z.square() + log_2pi).sum(-1)
        log_p_x = -bernoulli_nll(self.decode(code, z), x)
        log_p_y = self.prior(q.batch_shape).log_prob(y)
        return log_p_x + log_p_y + log_p_z - log_q_z - q.log_prob(y)

    def classify(self, x: Tensor) -> Tensor:
        """``(B,)`` the most probable class of q(y | x) for images ``(B, D)``."""
        return self.classifier(x).argmax(-1)

    # ------------------------------------------------------------------ the steps
    def labelled_terms(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(B_l,)`` L(x, y) and ``(B_l,)`` −log q(y | x) of the labelled images of a batch.

        Raises:
            ValueError: a batch without ``x_labelled`` and ``y_labelled``.
        """
        missing = [key for key in LABELLED_KEYS if key not in batch]
        if missing:
            raise ValueError(
                f"M2 trains on batches with labelled images {LABELLED_KEYS} besides 'x' (as "
                f"SemiSupervisedMNISTDataModule gives); this batch lacks {missing}, its keys "
                f"are {sorted(batch)}"
            )
        x, labels = batch["x_labelled"], batch["y_labelled"]
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes).to(x.dtype)
        labelled = self.neg_elbo_given_y(x, one_hot) + math.log(self.num_classes)
        classification = torch.nn.functional.cross_entropy(
            self.classifier(x), labels, reduction="none"
        )
        return labelled, classification

    def step(self, batch: Batch, stage: str) -> Step:
        """Training: U(x) of the unlabelled images (through the estimator, logged as
        ``neg_elbo``) plus the labelled terms; evaluation: U(x) and the classifier's accuracy."""
        result = super().step(batch, stage)  # mean U(x), logged as neg_elbo
        if stage == "train":
            labelled, classification = self.labelled_terms(batch)
            result.loss = result.loss + labelled.mean() + self.alpha * classification.mean()
            if result.metrics:
                result.metrics.update(
                    loss=result.loss.detach(),
                    labelled_neg_elbo=labelled.detach().mean(),
                    classification=classification.detach().mean(),
                )
            return result
        if "y" not in batch:
            raise ValueError(
                f"M2 {stage} batches need the true classes 'y' for {stage}/accuracy; "
                f"this batch has keys {sorted(batch)}"
            )
        accuracy = self.val_accuracy if stage == "val" else self.test_accuracy
        accuracy.update(self.classify(batch["x"]), batch["y"])
        result.metrics["accuracy"] = accuracy
        return result

    def hparams_metric_names(self) -> list[str]:
        return ["val/accuracy", "test/accuracy", *super().hparams_metric_names()]

    @torch.no_grad()
    def images(self, batch: Batch, num_images: int) -> dict[str, Tensor]:
        """Reconstructions and class-conditional samples.

        Returns:
            ``reconstructions``: ``(2n, D)``, each input followed by the mean of
            p(x | y, z) at y = argmax q(y | x) and z = the mean of q(z | x, y);
            ``classes``: ``(8K, D)``, rows of 8 styles z ∼ N(0, I), one row per class:
            the same style across the classes of a column.
        """
        x = batch["x"][:num_images]
        y = torch.nn.functional.one_hot(self.classify(x), self.num_classes).to(x.dtype)
        mean, _ = self.style(x, y)
        recon = torch.sigmoid(self.decode(y, mean))
        pairs = torch.stack([x, recon], dim=1).flatten(0, 1)  # (2n, D): input, reconstruction
        columns = 8
        z = torch.randn(1, columns, self.latent_dim, dtype=x.dtype, device=x.device)
        classes = torch.eye(self.num_classes, dtype=x.dtype, device=x.device)  # (K, K)
        grid = self.decode(
            classes[:, None].expand(-1, columns, -1), z.expand(self.num_classes, -1, -1)
        )
        return {"reconstructions": pairs, "classes": torch.sigmoid(grid).flatten(0, 1)}
