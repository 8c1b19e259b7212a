"""M2: the ELBOs against importance sampling, sampled estimators against the marginalization,
training on tiny MNIST-format data, accuracy, pictures, checkpoints and bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from tests.data.test_semi_supervised import write_tiny_mnist
from tests.models.cases import quiet_trainer
from zoo.data.semi_supervised import SemiSupervisedMNISTDataModule
from zoo.estimators import (
    Exact,
    GumbelSoftmax,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    Reinforce,
    STGumbelSoftmax,
    StraightThrough,
)
from zoo.models.m2 import M2

D, K = 12, 3


def tiny_model(estimator=None, **kwargs) -> M2:
    torch.manual_seed(0)
    return M2(
        Exact() if estimator is None else estimator,
        num_classes=K,
        latent_dim=2,
        input_dim=D,
        hidden_sizes=(16,),
        **kwargs,
    )


def tiny_batch(num: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "x": torch.bernoulli(torch.full((num, D), 0.4), generator=generator),
        "x_labelled": torch.bernoulli(torch.full((num, D), 0.6), generator=generator),
        "y_labelled": torch.arange(num) % K,
    }


def repeated(batch: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """The batch repeated ``times`` times along its first dimension (many draws in one call)."""
    return {k: v.repeat(times, *([1] * (v.dim() - 1))) for k, v in batch.items()}


def mean_over_draws(model: M2, batch: dict[str, torch.Tensor], draws: int) -> torch.Tensor:
    """``(draws, B)`` per-image losses, each row a fresh draw of the estimator's noise."""
    with torch.no_grad():
        return model(repeated(batch, draws)).unflatten(0, (draws, -1))


def test_the_unlabelled_bound_is_the_mean_log_weight() -> None:
    # U(x) (analytic KLs, marginalized y) against E_{y,z∼q}[log p(x,y,z) − log q(y,z|x)]
    # (Gaussian densities written out, sampled y): two independent routes to the ELBO.
    model, batch = tiny_model(), tiny_batch()
    neg_elbo = mean_over_draws(model, batch, 1000).mean(0)
    with torch.no_grad():
        log_w = model.log_weights(model.posterior(batch), batch, 20000)
    assert torch.allclose(-log_w.mean(0), neg_elbo, atol=0.05 + 4 * log_w.std(0).max() / 140)


def test_the_importance_sampled_likelihood_is_tighter_than_the_elbo() -> None:
    model, batch = tiny_model(), tiny_batch()
    neg_elbo = mean_over_draws(model, batch, 1000).mean(0)
    with torch.no_grad():
        nll = -model.importance_log_likelihood(model.posterior(batch), batch, 1000)
    assert bool((nll < neg_elbo).all())


def test_the_labelled_bound_adds_log_k_to_the_class_conditional_one() -> None:
    model, batch = tiny_model(), tiny_batch()
    y = torch.nn.functional.one_hot(batch["y_labelled"], K).float()
    torch.manual_seed(3)
    labelled, classification = model.labelled_terms(batch)
    torch.manual_seed(3)
    given_y = model.neg_elbo_given_y(batch["x_labelled"], y)
    assert torch.allclose(labelled, given_y + math.log(K))
    log_q = torch.log_softmax(model.classifier(batch["x_labelled"]), -1)
    assert torch.allclose(classification, -log_q[torch.arange(5), batch["y_labelled"]])


@pytest.mark.parametrize(
    "estimator",
    [
        Reinforce(),
        Reinforce(num_samples=3, baseline=LeaveOneOutBaseline()),
        STGumbelSoftmax(),
        StraightThrough(),
    ],
    ids=["reinforce", "reinforce-loo", "st-gumbel", "straight-through"],
)
def test_a_sampled_class_estimates_the_marginalization(estimator) -> None:
    # Exact samples of y: the mean reported −ELBO over many draws is the marginalized one.
    exact, batch = tiny_model(), tiny_batch()
    sampled = tiny_model(estimator)
    sampled.load_state_dict(exact.state_dict(), strict=False)
    want = mean_over_draws(exact, batch, 2000).mean(0)
    draws = mean_over_draws(sampled, batch, 4000)
    assert torch.allclose(draws.mean(0), want, atol=4 * draws.std(0).max() / math.sqrt(4000) + 0.05)


@pytest.mark.parametrize(
    "estimator",
    [Exact(), GumbelSoftmax(), STGumbelSoftmax(), Reinforce(baseline=MovingAverageBaseline())],
    ids=["exact", "gumbel", "st-gumbel", "reinforce-ema"],
)
def test_the_classifier_learns_from_unlabelled_images_through_the_estimator(estimator) -> None:
    model, batch = tiny_model(estimator), tiny_batch()
    model(batch).mean().backward()  # the unlabelled bound only
    assert model.classifier[0].weight.grad.abs().sum() > 0
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_exact_gradient_of_the_classifier_is_that_of_the_sum_over_classes() -> None:
    model, batch = tiny_model(), tiny_batch()
    torch.manual_seed(5)
    model(batch).sum().backward()
    got = model.classifier[-1].bias.grad.clone()
    model.zero_grad()
    torch.manual_seed(5)
    q = torch.softmax(model.classifier(batch["x"]), -1)  # (B, K)
    eye = torch.eye(K)[:, None].expand(K, 5, K)
    costs = model.neg_elbo_given_y(batch["x"], eye).T  # (B, K), the same noise
    ((q * costs).sum(-1) + (q * (q.log() + math.log(K))).sum(-1)).sum().backward()
    assert torch.allclose(got, model.classifier[-1].bias.grad, atol=1e-5)


def logits_of(model: M2, batch: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """Run ``training_step`` on ``batch``; return the classifier's logits of ``batch[key]``,
    with their gradient after the loss's backward pass."""
    seen = {}

    def keep(module, inputs, output) -> None:
        for name, x in batch.items():
            if inputs[0] is x:
                output.retain_grad()
                seen[name] = output

    handle = model.classifier.register_forward_hook(keep)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*self\.log.*")  # no trainer attached
            output = model.training_step(batch, 0)
    finally:
        handle.remove()
    # Lightning's contract: a training step returns the loss, or a dict that holds it.
    (output if isinstance(output, torch.Tensor) else output["loss"]).backward()
    return seen[key]


@pytest.mark.parametrize("alpha", [0.1, 50.0, 500.0])
def test_the_labels_reach_the_classifier_with_weight_alpha_over_the_labelled_batch(alpha) -> None:
    # loss = mean U + mean L + α · mean_labelled CE: the gradient of the loss with respect
    # to the logits of labelled image i is α / B_l · (softmax(logits_i) − one-hot(y_i)),
    # and the labelled images reach the classifier through nothing else.
    model, batch = tiny_model(STGumbelSoftmax(), alpha=alpha), tiny_batch(num=6)
    logits = logits_of(model, batch, "x_labelled")
    one_hot = torch.nn.functional.one_hot(batch["y_labelled"], K).float()
    want = alpha / 6 * (torch.softmax(logits.detach(), -1) - one_hot)
    assert torch.allclose(logits.grad, want, rtol=1e-5, atol=1e-7)
    assert model.alpha == alpha


@pytest.fixture
def tiny_data(tmp_path) -> SemiSupervisedMNISTDataModule:
    root = write_tiny_mnist(tmp_path / "data")
    return SemiSupervisedMNISTDataModule(
        data_dir=str(root), num_labels=20, val_size=50, batch_size=32, seed=0
    )


def small_mnist_model(estimator, **kwargs) -> M2:
    torch.manual_seed(0)
    return M2(estimator, latent_dim=4, hidden_sizes=(32,), lr=3e-3, **kwargs)


def test_training_on_tiny_digits_learns_the_classes(tiny_data) -> None:
    model = small_mnist_model(Exact(), alpha=5.0)
    trainer = quiet_trainer(max_epochs=4, log_every_n_steps=1)
    before = trainer.validate(model, datamodule=tiny_data, verbose=False)[0]
    trainer.fit(model, datamodule=tiny_data)
    for name in ("train/loss", "train/labelled_neg_elbo", "train/classification", "train/kl_y"):
        assert name in trainer.callback_metrics
    after = trainer.validate(model, datamodule=tiny_data, verbose=False)[0]
    assert after["val/neg_elbo"] < before["val/neg_elbo"] - 50
    assert after["val/accuracy"] > 0.9 > before["val/accuracy"]
    tested = trainer.test(model, datamodule=tiny_data, verbose=False)[0]
    assert tested["test/accuracy"] > 0.9


def test_accuracy_is_the_fraction_of_correct_argmax_classes(tiny_data) -> None:
    model = small_mnist_model(Reinforce())
    trainer = quiet_trainer()
    got = trainer.validate(model, datamodule=tiny_data, verbose=False)[0]["val/accuracy"]
    data = tiny_data.val_set.__getitems__(list(range(len(tiny_data.val_set))))
    want = (model.classify(data["x"]) == data["y"]).float().mean().item()
    assert got == pytest.approx(want)


def test_a_checkpoint_rebuilds_the_model_and_estimator(tiny_data, tmp_path) -> None:
    estimator = Reinforce(baseline=MovingAverageBaseline(0.9))
    model = small_mnist_model(estimator)
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_data)
    path = tmp_path / "m2.ckpt"
    trainer.save_checkpoint(path)
    loaded = M2.load_from_checkpoint(path, weights_only=True)
    assert type(loaded.estimator.baseline) is MovingAverageBaseline
    assert int(loaded.estimator.baseline.steps) == 3
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_pictures() -> None:
    model = tiny_model()
    pictures = model.images({"x": tiny_batch()["x"], "y": torch.zeros(5, dtype=torch.long)}, 4)
    assert pictures["reconstructions"].shape == (8, D)
    assert pictures["classes"].shape == (8 * K, D)
    assert all(bool(((p >= 0) & (p <= 1)).all()) for p in pictures.values())


def test_a_batch_without_labelled_images_is_refused() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"lacks \['x_labelled', 'y_labelled'\]"):
        model.training_step({"x": torch.ones(2, D)}, 0)
    with pytest.raises(ValueError, match="need the true classes 'y'"):
        model.validation_step({"x": torch.ones(2, D)}, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes must be an integer ≥ 2"),
        ({"latent_dim": 0}, "latent_dim must be an integer ≥ 1"),
        ({"alpha": -1.0}, "alpha must be ≥ 0"),
    ],
)
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        M2(Exact(), **kwargs)
