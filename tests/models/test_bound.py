"""Models trained with an estimator of a multi-sample bound (VIMCO).

The VAE gives VIMCO its joint −log p(x, z) and adds no KL, so its loss is
−L̂_S and its gradient is unbiased for ∇(−E[L̂_S]) with respect to every
parameter (encoder and decoder), checked here against enumeration of every
S-tuple of a latent with three values. Models without a joint refuse VIMCO
when they are built, and the gradient statistics measure it against its own
target.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.models.cases import MODELS, quiet_trainer, quiet_trainer_args, synthetic_args
from zoo.cli import ZooCLI
from zoo.estimators import VIMCO, LeaveOneOutBaseline, Reinforce
from zoo.lab import GradientStatistics, gradient_statistics, reference_gradient
from zoo.models import (
    M2,
    SBN,
    VAE,
    BernoulliLatent,
    CategoricalLatent,
    ChainLatent,
    LatentTreeClassifier,
    NeuralHMMTagger,
)
from zoo.structures import Categorical

S = 2  # samples of the bound
K = 3  # values of the one latent variable


def _tiny_vae() -> VAE:
    torch.manual_seed(0)
    model = VAE(VIMCO(S), CategoricalLatent(1, K), input_dim=4, hidden_sizes=(4,))
    return model.double()


def _batch() -> dict[str, torch.Tensor]:
    return {"x": torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)}


def _expected_bound(model: VAE, q: Categorical, batch) -> torch.Tensor:
    """E[L̂_S] ``(B,)`` by enumeration of the K^S tuples, differentiable in θ and the model."""
    eye = torch.eye(K, dtype=torch.float64)
    total = 0.0
    for values in itertools.product(range(K), repeat=S):
        z = eye[list(values)].reshape(S, 1, 1, K).expand(S, 2, 1, K)  # (S, B, 1, K)
        log_q = q.log_prob(z)  # (S, B)
        log_w = -model.joint_nll(z, batch) - log_q
        bound = torch.logsumexp(log_w, 0) - math.log(S)
        total = total + log_q.sum(0).exp() * bound
    return total


@pytest.mark.parametrize(
    "make",
    [
        lambda: VAE(VIMCO(4), CategoricalLatent(3, 4), input_dim=6, hidden_sizes=(8,)),
        lambda: VAE(VIMCO(4), BernoulliLatent(5), input_dim=6, hidden_sizes=(8,)),
        lambda: VAE(VIMCO(4), ChainLatent(3, 2), input_dim=6, hidden_sizes=(8,)),
    ],
    ids=["categorical", "bernoulli", "chain"],
)
def test_the_vimco_loss_is_the_negative_bound_of_the_models_importance_weights(make) -> None:
    model = make()
    batch = {"x": (torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()}
    torch.manual_seed(3)
    loss = model(batch)
    torch.manual_seed(3)  # the same draws: VIMCO and log_weights both sample first
    log_w = model.log_weights(model.posterior(batch), batch, 4)
    torch.testing.assert_close(loss, -(torch.logsumexp(log_w, 0) - math.log(4)))


def test_the_vimco_gradient_of_every_parameter_is_unbiased_for_the_bound() -> None:
    model = _tiny_vae()
    batch = _batch()
    params = list(model.parameters())
    q = model.posterior(batch)
    exact = torch.autograd.grad(-_expected_bound(model, q, batch).mean(), params)
    exact = torch.cat([g.flatten() for g in exact])
    chunks, copies = 20, 2000
    replicated = {"x": batch["x"].repeat(copies, 1)}
    torch.manual_seed(0)
    estimates = []
    for _ in range(chunks):  # each: the mean of 2 × 2000 independent estimates
        grads = torch.autograd.grad(model(replicated).mean(), params)
        estimates.append(torch.cat([g.flatten() for g in grads]))
    estimates = torch.stack(estimates)
    error = (estimates.mean(0) - exact).abs()
    se = estimates.std(0) / math.sqrt(chunks)
    assert (error <= 5 * se + 1e-9).all(), (error / se).max()
    # The test resolves the KL term a wrong model would add: its gradient is far above 5 SE.
    encoder = list(model.encoder.parameters())
    kl = torch.autograd.grad(model.latent.kl(model.posterior(batch)).mean(), encoder)
    assert torch.cat([g.flatten() for g in kl]).abs().max() > 20 * se.max()


def test_the_bound_reference_is_the_exact_gradient_of_the_expected_bound() -> None:
    model = _tiny_vae()
    batch = _batch()
    q = model.posterior(batch)
    theta = q.log_potentials.detach().requires_grad_(True)
    exact = torch.autograd.grad(
        _expected_bound(model, Categorical(theta), batch).neg().sum(), theta
    )[0]
    torch.manual_seed(0)
    ref = reference_gradient(
        model, batch, q, reference_samples=16_000, reference_chunks=8, estimator=model.estimator
    )
    assert ref.kind == "bound"
    se = ref.estimates.std(0) / math.sqrt(ref.estimates.shape[0])
    assert ((ref.gradient - exact).abs() <= 5 * se + 1e-9).all()


def test_the_bound_reference_is_only_for_bounds() -> None:
    model = _tiny_vae()
    batch = _batch()
    q = model.posterior(batch)
    with pytest.raises(ValueError, match="VIMCO.*must be 'bound'"):
        reference_gradient(model, batch, q, "exact", estimator=model.estimator)
    reinforce = Reinforce(num_samples=2, baseline=LeaveOneOutBaseline())
    with pytest.raises(
        ValueError, match="'bound' is for estimators of a multi-sample bound, got Reinforce"
    ):
        reference_gradient(model, batch, q, "bound", estimator=reinforce)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SBN(VIMCO(3), BernoulliLatent(5), input_dim=8),
        lambda: SBN(VIMCO(3), CategoricalLatent(2, 3), input_dim=8),
        lambda: NeuralHMMTagger(VIMCO(3), num_tags=3, input_dim=10, embedding_dim=8, hidden_size=8),
        lambda: LatentTreeClassifier(VIMCO(3), hidden_dim=8),
        lambda: M2(VIMCO(3), num_classes=3, latent_dim=2, input_dim=6, hidden_sizes=(8,)),
    ],
    ids=["bernoulli-sbn", "categorical-sbn", "hmm-tagger", "listops", "m2"],
)
def test_a_model_without_a_joint_refuses_vimco(make) -> None:
    with pytest.raises(TypeError, match="VIMCO .* has no joint_nll"):
        make()


def test_the_joint_keeps_every_batch_dimension() -> None:
    model = VAE(VIMCO(3), CategoricalLatent(2, 3), input_dim=6, hidden_sizes=(8,))
    batch = {"x": (torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()}
    q = model.posterior(batch)  # batch shape (2, 5)
    z = q.sample(4)
    prior = -2 * math.log(3)  # log p(z) of two uniform 3-way variables
    torch.testing.assert_close(model.joint_nll(z, batch), model.cost(z, batch) - prior)
    assert model.log_weights(q, batch, 4).shape == (4, 2, 5)


def test_the_lab_refuses_a_bound_it_cannot_measure(tmp_path) -> None:
    sbn = SBN(Reinforce(2), BernoulliLatent(5), input_dim=8)
    batch = {"x": torch.ones(3, 8), "y": torch.zeros(3, 8)}
    with pytest.raises(
        TypeError, match="VIMCO estimates a multi-sample bound.*SBN has none"
    ):
        gradient_statistics(sbn, batch, estimator=VIMCO(3))
    # The callback says so before the first training step.
    for model, reference, message in (
        (_tiny_vae().float(), "exact", "must be 'bound'"),
        (
            VAE(Reinforce(2), CategoricalLatent(1, 3), input_dim=16),
            "bound",
            "got Reinforce",
        ),
    ):
        steps = []
        callbacks = [
            _Count(steps),
            GradientStatistics(reference=reference),
        ]  # _Count sees a step first
        with pytest.raises(ValueError, match=message):
            quiet_trainer(max_steps=2, callbacks=callbacks).fit(model, MODELS[0].data())
        assert steps == []


class _Count(L.Callback):
    def __init__(self, steps: list[int]) -> None:
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(batch_idx)


def test_the_sbn_refuses_vimco_as_its_inner_estimator() -> None:
    with pytest.raises(TypeError, match="inner_estimator: VIMCO"):
        SBN(Reinforce(2), BernoulliLatent(5), input_dim=8, inner_estimator=VIMCO(3))


def test_a_vimco_run_logs_the_bound_beside_the_elbo_of_its_samples() -> None:
    torch.manual_seed(0)
    case = MODELS[0]
    model = VAE(VIMCO(4), CategoricalLatent(3, 4), input_dim=16, hidden_sizes=(8,))
    trainer = quiet_trainer(max_steps=4, log_every_n_steps=1, limit_val_batches=2)
    trainer.fit(model, case.data())
    metrics = trainer.callback_metrics
    for stage in ("train", "val"):
        bound, elbo = metrics[f"{stage}/neg_bound"], metrics[f"{stage}/neg_elbo"]
        recon, kl = metrics[f"{stage}/recon"], metrics[f"{stage}/kl"]
        assert torch.isfinite(bound) and kl > 0
        torch.testing.assert_close(elbo, recon + kl)
    assert 1.0 <= metrics["train/ess"] <= 4.0
    assert "val/neg_bound" in model.hparams_metric_names()


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
VIMCO_FILE = CONFIGS / "estimator" / "joint-nll" / "vimco.yaml"


def test_the_vimco_group_file_trains_the_vae_from_the_command_line(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "vae" / "categorical.yaml"
    args = ["fit", "--config", str(config), "--model.estimator", str(VIMCO_FILE)]
    args += [*synthetic_args(dim=784), *quiet_trainer_args(), "--model.hidden_sizes=[16]"]
    cli = ZooCLI([*args, "--trainer.fast_dev_run=2"])
    assert isinstance(cli.model.estimator, VIMCO)
    assert float(cli.trainer.callback_metrics["train/neg_bound"]) > 0


def test_the_vimco_group_file_is_refused_by_the_sbn_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "sbn" / "bernoulli.yaml"
    # The CLI's parser wraps what the constructor raised; train.py prints the message alone.
    with pytest.raises((TypeError, ValueError), match="SBN writes no joint_nll"):
        ZooCLI(["--config", str(config), "--model.estimator", str(VIMCO_FILE)], run=False)
