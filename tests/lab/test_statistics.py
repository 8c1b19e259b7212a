"""GradientStatistics: the statistics against closed forms, the references, and a training run left untouched."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from tests.models.cases import MODELS, quiet_trainer
from zoo.estimators import (
    Exact,
    GumbelSoftmax,
    MovingAverageBaseline,
    Reinforce,
    StraightThrough,
)
from zoo.lab import GradientStatistics, gradient_statistics, reference_gradient, summarize
from zoo.structures import Categorical, LinearChainCRF

THETA = (0.3, -0.2)
COST = (3.0, 1.0)  # f(z = 0), f(z = 1)


class TwoClass(nn.Module):
    """One two-class categorical q(z) = softmax(θ) with the cost f(z) = COST[z]."""

    def __init__(self, estimator: nn.Module, closed_form: bool = False) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([[THETA]]))  # (B=1, N=1, K=2)
        self.register_buffer("f", torch.tensor(COST))
        self.estimator = estimator
        if closed_form:
            self.expected_cost = lambda q, batch: (q.marginals() * self.f).sum((-1, -2))

    def posterior(self, batch: dict[str, Tensor]) -> Categorical:
        return Categorical(self.theta.expand(batch["x"].shape[0], -1, -1))

    def cost(self, z: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return (z * self.f).sum((-1, -2))  # (S, B)


def closed_form() -> dict[str, float]:
    """REINFORCE without baseline on the two-class case, by hand.

    g = f(z) (e_z − p): for z = 0 it is f0 p1 (1, −1), for z = 1 it is f1 p0 (−1, 1).
    E g = p0 p1 (f0 − f1) (1, −1); E‖g‖² = 2 p0 p1 (f0² p1 + f1² p0).
    """
    p0 = 1 / (1 + math.exp(THETA[1] - THETA[0]))
    p1 = 1 - p0
    f0, f1 = COST
    mean_sq = 2 * p0**2 * p1**2 * (f0 - f1) ** 2
    variance = 2 * p0 * p1 * (f0**2 * p1 + f1**2 * p0) - mean_sq
    # Each g points along ±(1, −1): along the gradient (f0 > f1) for z = 0, against it for z = 1.
    return {
        "variance": variance,
        "snr": math.sqrt(mean_sq / variance),
        "cosine": p0 - p1,
        "gradient": p0 * p1 * (f0 - f1),
    }


def test_reinforce_variance_snr_and_cosine_match_the_closed_form() -> None:
    torch.manual_seed(0)
    expected = closed_form()
    stats = gradient_statistics(TwoClass(Reinforce()), {"x": torch.zeros(1, 1)}, num_probes=20000)
    assert stats["variance"] == pytest.approx(expected["variance"], rel=0.04)
    assert stats["snr"] == pytest.approx(expected["snr"], rel=0.04)
    assert stats["cosine"] == pytest.approx(expected["cosine"], abs=0.02)
    assert stats["reference_se"] == 0.0  # enumerated: exact
    assert stats["norm"] == pytest.approx(math.sqrt(2) * expected["gradient"], rel=1e-5)
    assert stats["bias"] < 3 * stats["bias_floor"]  # unbiased, within the resolution


def test_exact_probes_have_no_variance_and_no_bias() -> None:
    stats = gradient_statistics(TwoClass(Exact()), {"x": torch.zeros(3, 1)}, num_probes=4)
    assert stats["variance"] == pytest.approx(0.0, abs=1e-12)
    assert stats["cosine"] == pytest.approx(1.0)
    assert stats["bias"] == pytest.approx(0.0, abs=1e-6)


def test_a_biased_estimator_shows_its_bias() -> None:
    # Gumbel-Softmax's gradient at τ = 1 of a linear cost is not the exact one.
    torch.manual_seed(0)
    model = MODELS[0].make(GumbelSoftmax(temperature=1.0))
    data = MODELS[0].data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    stats = gradient_statistics(model, batch, num_probes=512)
    assert stats["bias"] > 5 * stats["bias_floor"]


def test_references_agree() -> None:
    torch.manual_seed(0)
    model = TwoClass(Reinforce())
    batch = {"x": torch.zeros(2, 1)}
    q = model.posterior(batch)
    exact = reference_gradient(model, batch, q, "exact")
    by_hand = closed_form()["gradient"] * torch.tensor([1.0, -1.0])
    torch.testing.assert_close(exact.gradient, by_hand.expand(2, 1, 2))
    closed = reference_gradient(TwoClass(Reinforce(), closed_form=True), batch, q)
    assert closed.kind == "closed_form"
    torch.testing.assert_close(closed.gradient, exact.gradient)
    sampled = reference_gradient(model, batch, q, "reinforce", reference_samples=4000)
    assert sampled.kind == "reinforce" and sampled.noise > 0
    error = (sampled.gradient - exact.gradient).norm()
    assert error < 4 * math.sqrt(sampled.noise)  # within its stated standard error


def test_auto_reference_falls_back_to_sampling_for_a_large_support() -> None:
    model = TwoClass(Reinforce())
    batch = {"x": torch.zeros(1, 1)}
    q = model.posterior(batch)
    assert reference_gradient(model, batch, q, max_support=1).kind == "reinforce"
    with pytest.raises(ValueError, match="max_support=1"):
        reference_gradient(model, batch, q, "exact", max_support=1)
    with pytest.raises(ValueError, match="expected_cost"):
        reference_gradient(model, batch, q, "closed_form")


def test_encoder_statistics_follow_the_chain_rule() -> None:
    torch.manual_seed(0)
    model = MODELS[0].make(Exact())
    data = MODELS[0].data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    stats = gradient_statistics(model, batch, num_probes=2, encoder=True)
    assert stats["encoder_variance"] == pytest.approx(0.0, abs=1e-10)
    assert stats["encoder_cosine"] == pytest.approx(1.0)
    # The reference's norm equals that of the exact recon gradient of the encoder by backprop.
    q = model.posterior(batch)
    recon = Exact()(q, lambda z: model.cost(z, batch)).surrogate.sum()
    grads = torch.autograd.grad(recon, list(model.encoder.parameters()))
    norm = torch.cat([g.flatten() for g in grads]).norm()
    assert stats["encoder_norm"] == pytest.approx(float(norm), rel=1e-4)


def test_summarize_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 estimates"):
        summarize(torch.zeros(1, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="does not match"):
        summarize(torch.zeros(2, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="num_probes"):
        GradientStatistics(num_probes=1)
    with pytest.raises(ValueError, match="reference must be"):
        GradientStatistics(reference="nope")


def test_callback_leaves_the_training_run_untouched_and_logs(tmp_path) -> None:
    case = MODELS[0]

    def train(callbacks: list, logger=False) -> nn.Module:
        torch.manual_seed(0)
        model = case.make(Reinforce(baseline=MovingAverageBaseline(0.9)))
        trainer = quiet_trainer(
            max_steps=6, limit_val_batches=0, callbacks=callbacks, logger=logger
        )
        trainer.fit(model, case.data())
        return model

    plain = train([])
    callback = GradientStatistics(every_n_steps=2, num_probes=4)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    probed = train([callback], logger)
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [h["step"] for h in callback.history] == [0, 2, 4]
    events = EventAccumulator(str(tmp_path / "run" / "version_0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"grad/variance", "grad/snr", "grad/cosine", "grad/bias", "grad/seconds"} <= tags
    assert [e.step for e in events.Scalars("grad/variance")] == [0, 2, 4]


class LinearChain(nn.Module):
    """A chain posterior with lengths and a cost linear in its parts, ⟨w, z⟩: closed form by marginals."""

    def __init__(self, estimator: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.theta = nn.Parameter(torch.randn(3, 3, 2, 2))  # (B, N-1, C, C): chains of 4
        self.register_buffer("w", torch.randn(3, 2, 2))  # the same weights for every example
        self.estimator = estimator

    def posterior(self, batch: dict[str, Tensor]) -> LinearChainCRF:
        return LinearChainCRF(self.theta, lengths=batch["lengths"])

    def cost(self, z: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return (z * self.w).sum((-3, -2, -1))  # (S, B)

    def expected_cost(self, q: LinearChainCRF, batch: dict[str, Tensor]) -> Tensor:
        return self.cost(q.marginals().unsqueeze(0), batch)[0]


def test_closed_form_reference_on_a_chain_with_lengths() -> None:
    model = LinearChain(StraightThrough())
    batch = {"lengths": torch.tensor([4, 2, 3])}
    q = model.posterior(batch)
    closed = reference_gradient(model, batch, q)
    assert closed.kind == "closed_form"
    exact = reference_gradient(model, batch, q, "exact")
    torch.testing.assert_close(closed.gradient, exact.gradient)
    # Straight-through is exact for a linear cost; REINFORCE is unbiased but noisy.
    stats = gradient_statistics(model, batch, num_probes=8)
    assert stats["variance"] == pytest.approx(0.0, abs=1e-10)
    assert stats["bias"] == pytest.approx(0.0, abs=1e-5)
    torch.manual_seed(0)
    noisy = gradient_statistics(LinearChain(Reinforce()), batch, num_probes=4000)
    assert noisy["variance"] > 0.1 and noisy["bias"] < 3 * noisy["bias_floor"]
