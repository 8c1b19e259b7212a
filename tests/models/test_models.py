"""Every model × every estimator trains; evaluation runs under inference mode; the metrics are right.

The exactness checks use latent spaces small enough to enumerate, so the
ELBO, the SBN's nested objective (value and gradient) and log p(x) are
compared with brute force.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from tests.models.cases import ESTIMATORS, MODELS, ModelCase, quiet_trainer
from zoo.estimators import (
    Exact,
    GumbelSoftmax,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    Reinforce,
    StraightThrough,
)
from zoo.models import SBN, VAE, BernoulliLatent, CategoricalLatent
from zoo.structures import Bernoulli, Categorical


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("case", MODELS, ids=str)
def test_every_model_trains_with_every_estimator(case: ModelCase, estimator: str) -> None:
    torch.manual_seed(0)
    model = case.make(ESTIMATORS[estimator](case.parts))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = quiet_trainer(fast_dev_run=2)
    trainer.fit(model, case.data())
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics[f"train/{model.objective_name}"])
    assert torch.isfinite(metrics[f"val/{model.objective_name}"])
    # Every parameter moved: the estimate reached θ (the first layer), the
    # cost's own parameters and, where there is one, the learned baseline.
    frozen = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not frozen


@pytest.mark.parametrize("estimator", ["gumbel", "reinforce-ema"])
@pytest.mark.parametrize("case", MODELS, ids=str)
def test_validate_and_test_run_under_inference_mode(case: ModelCase, estimator: str) -> None:
    torch.manual_seed(0)
    model = case.make(ESTIMATORS[estimator](case.parts))
    model.num_importance_samples, model.val_importance_samples = 7, 5
    model.importance_chunk_size = 3  # chunks of 3, 3 and 1 samples
    seen: list[tuple[bool, torch.Tensor]] = []
    cost = model.cost

    def recording_cost(z, batch):
        seen.append((torch.is_inference_mode_enabled(), z))
        return cost(z, batch)

    model.cost = recording_cost
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(inference_mode=True)
    val = trainer.validate(model, case.data())[0]
    test = trainer.test(model, case.data())[0]
    name = model.objective_name
    for key in (f"val/{name}", "val/nll_iw"):
        assert math.isfinite(val[key]), key
    for key in (f"test/{name}", "test/nll_iw"):
        assert math.isfinite(test[key]), key
    assert seen and all(inference for inference, _ in seen)
    # Evaluation sees discrete z (Gumbel-Softmax included) and leaves all state alone.
    assert all(bool(((z == 0) | (z == 1)).all()) for _, z in seen)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_loss_goes_down_on_synthetic_data() -> None:
    torch.manual_seed(0)
    model = VAE(
        GumbelSoftmax(temperature=0.7),
        CategoricalLatent(4, 4), input_dim=64,
        hidden_sizes=(32,), lr=3e-3)  # fmt: skip
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    data = MODELS[0].data(dim=64, num_train=1600, batch_size=16)
    quiet_trainer(max_steps=100, limit_val_batches=0, callbacks=[Record()]).fit(model, data)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert len(losses) == 100
    assert last < 0.8 * first, (first, last)


def test_training_scalars_are_logged_only_at_logging_steps(tmp_path) -> None:
    torch.manual_seed(0)
    case = MODELS[0]
    model = case.make(ESTIMATORS["reinforce-ema"](case.parts))
    calls: list[str] = []
    log = model.log

    def counting_log(name, value, **kwargs):
        calls.append(name)
        return log(name, value, **kwargs)

    model.log = counting_log
    trainer = quiet_trainer(
        max_steps=7, log_every_n_steps=3, limit_val_batches=0, logger=CSVLogger(tmp_path)
    )
    trainer.fit(model, case.data())
    assert calls.count("train/neg_elbo") == 2  # steps 2 and 5 of 0..6
    assert {"train/recon", "train/kl", "train/baseline"} <= set(calls)
    # ... and those are the steps Lightning writes.
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column, step = header.index("train/neg_elbo"), header.index("step")
    written = [r.split(",")[step] for r in rows[1:] if r.split(",")[column]]
    assert written == ["2", "5"]


# ----------------------------------------------------------------- exactness
def binary(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=generator, dtype=torch.float64) < 0.4).double()


def test_vae_objective_and_likelihood_match_enumeration() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = VAE(Exact(), CategoricalLatent(2, 3), input_dim=6, hidden_sizes=(5,))
    model = model.double()
    with torch.no_grad():  # a poor posterior: a wide gap between −ELBO and −log p(x)
        model.encoder[-1].weight.mul_(8.0)
    batch = {"x": binary((5, 6), gen)}
    q = model.posterior(batch)
    z = Categorical(torch.zeros(2, 3, dtype=torch.float64)).enumerate_support()  # (9, 2, 3)
    zb = z.unsqueeze(1).expand(9, 5, 2, 3)
    log_joint = -model.cost(zb, batch) + math.log(1 / 9)  # (9, B): log p(x | z) + log p(z)
    log_q = q.log_prob(zb)
    nll = -torch.logsumexp(log_joint, dim=0)
    neg_elbo = (log_q.exp() * (log_q - log_joint)).sum(0)
    with torch.no_grad():
        loss = model(batch)
    torch.testing.assert_close(loss, neg_elbo)
    assert bool((neg_elbo - nll > 0.2).all())  # the gap the bound relation must respect
    model.importance_chunk_size = 1000
    torch.manual_seed(2)
    nll_iw = -model.importance_log_likelihood(q, batch, 1000)
    assert bool((nll_iw <= neg_elbo).all())
    assert bool((nll_iw >= nll - 0.05).all())
    nll_iw_many = -model.importance_log_likelihood(q, batch, 20000)
    torch.testing.assert_close(nll_iw_many, nll, atol=0.05, rtol=0)  # seeded


def test_importance_sampling_combines_its_chunks_exactly() -> None:
    model = VAE(GumbelSoftmax(), CategoricalLatent(), hidden_sizes=(4,), importance_chunk_size=3)
    drawn: list[int] = []

    def log_weights(q, batch, num_samples):  # log w_i = i for the i-th sample drawn
        start = sum(drawn)
        drawn.append(num_samples)
        return torch.arange(start, start + num_samples, dtype=torch.float64).unsqueeze(1)

    model.log_weights = log_weights
    result = model.importance_log_likelihood(None, {}, 7)
    assert drawn == [3, 3, 1]
    expected = torch.logsumexp(torch.arange(7.0, dtype=torch.float64), 0) - math.log(7)
    torch.testing.assert_close(result, expected.reshape(1))


def test_bernoulli_vae_kl_is_against_the_uniform_prior() -> None:
    model = VAE(Exact(), BernoulliLatent(3), input_dim=4, hidden_sizes=(4,)).double()
    batch = {"x": binary((2, 4), torch.Generator().manual_seed(0))}
    q = model.posterior(batch)
    p = torch.sigmoid(q.log_potentials)
    kl = (p * torch.log(2 * p) + (1 - p) * torch.log(2 * (1 - p))).sum(-1)
    torch.testing.assert_close(model.regularizer(q, batch), kl)


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_sbn_nested_objective_matches_enumeration_in_value_and_gradient(kind: str) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    if kind == "bernoulli":
        model = SBN(Exact(), BernoulliLatent(3), input_dim=4, output_dim=5).double()
        support = Bernoulli(torch.zeros(3, dtype=torch.float64)).enumerate_support()  # (8, 3)
    else:
        model = SBN(Exact(), CategoricalLatent(2, 3), input_dim=4, output_dim=5)
        model = model.double()
        support = Categorical(torch.zeros(2, 3, dtype=torch.float64)).enumerate_support()
    batch = {"x": binary((3, 4), gen), "y": binary((3, 5), gen)}
    k = support.shape[0]

    # Brute force: Σ_{z1, z2} p(z1 | x) p(z2 | z1) [−log p(y | z2)], and log p(y | x).
    q1 = model.posterior(batch)
    z1 = support.unsqueeze(1).expand(k, 3, *support.shape[1:])  # (K, B, *event)
    log_p1 = q1.log_prob(z1)  # (K, B)
    q2 = model.second_layer(z1)  # batch (K, B)
    z2 = support.reshape(k, 1, 1, *support.shape[1:]).expand(k, k, 3, *support.shape[1:])
    log_p2 = q2.log_prob(z2)  # (K2, K1, B)
    nll_y = model.output_cost(z2, batch["y"])  # (K2, K1, B)
    weights = (log_p1.unsqueeze(0) + log_p2).exp()
    bound = (weights * nll_y).sum((0, 1))  # (B,)
    nll = -torch.logsumexp(log_p1.unsqueeze(0) + log_p2 - nll_y, dim=(0, 1))

    expected = torch.autograd.grad(bound.sum(), list(model.parameters()))
    loss = model(batch)
    got = torch.autograd.grad(loss.sum(), list(model.parameters()))
    torch.testing.assert_close(loss, bound)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert bool((bound >= nll).all())

    model.importance_chunk_size = 5000
    torch.manual_seed(4)
    nll_iw = -model.importance_log_likelihood(
        q1.with_potentials(q1.log_potentials.detach()), batch, 20000
    )
    torch.testing.assert_close(nll_iw, nll.detach(), atol=0.03, rtol=0)


# ----------------------------------------------------------------- interface
@pytest.mark.parametrize("case", MODELS, ids=str)
def test_images_are_pictures_in_the_unit_interval(case: ModelCase) -> None:
    model = case.make(GumbelSoftmax())
    data = case.data()
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    images = model.images(batch, 5)
    assert images
    for name, pictures in images.items():
        width = sum(v.shape[-1] for v in batch.values())
        assert pictures.shape[-1] == width, name
        assert pictures.shape[0] in (5, 10), name
        assert bool(((pictures >= 0) & (pictures <= 1)).all()), name


def test_the_estimators_may_be_given_as_configs() -> None:
    model = SBN(
        {
            "class_path": "Reinforce",
            "init_args": {"num_samples": 2, "baseline": {"class_path": "LeaveOneOutBaseline"}},
        },
        BernoulliLatent(3),
        input_dim=4,
        inner_estimator={"class_path": "zoo.estimators.StraightThrough"},
    )
    assert type(model.estimator) is Reinforce
    assert type(model.estimator.baseline) is LeaveOneOutBaseline
    assert model.estimator.num_samples == 2
    assert type(model.inner_estimator) is StraightThrough


def test_sbn_inner_estimator_is_a_separate_copy_by_default() -> None:
    model = SBN(Reinforce(baseline=MovingAverageBaseline()), BernoulliLatent(3), input_dim=4)
    assert type(model.inner_estimator) is Reinforce
    assert model.inner_estimator is not model.estimator
    assert model.inner_estimator.baseline is not model.estimator.baseline


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr"),
        ({"num_importance_samples": -1}, "num_importance_samples"),
        ({"importance_chunk_size": 0}, "importance_chunk_size"),
        ({"estimator": torch.nn.Linear(1, 1)}, "estimator"),
        ({"estimator": {"class_path": "torch.nn.Linear"}}, "torch.nn.Linear does not correspond to a subclass of Estimator"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    arguments = {"estimator": GumbelSoftmax(), **kwargs}
    with pytest.raises(ValueError, match=message):
        VAE(latent=CategoricalLatent(), **arguments)


def test_configure_optimizers_uses_fused_adam() -> None:
    optimizer = VAE(GumbelSoftmax(), CategoricalLatent(), hidden_sizes=(8,)).configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["fused"] is True


@pytest.mark.parametrize("estimator", ["gumbel", "reinforce-ema", "reinforce-learned"])
@pytest.mark.parametrize("case", MODELS, ids=str)
def test_a_checkpoint_written_from_python_loads_with_weights_only(
    tmp_path, case: ModelCase, estimator: str
) -> None:
    torch.manual_seed(0)
    model = case.make(ESTIMATORS[estimator](case.parts))
    trainer = quiet_trainer(max_steps=3, default_root_dir=tmp_path)
    trainer.fit(model, case.data())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    # The estimator is stored as its config: plain values that the safe unpickler takes.
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert hparams["estimator"] == model.estimator.init_config()
    loaded = type(model).load_from_checkpoint(path)  # weights_only=True by default
    assert type(loaded.estimator) is type(model.estimator)
    # The state trained into the estimator (temperature, moving average, learned
    # baseline) comes back with the rest of the weights.
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    data = case.data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        expected = model(batch)
        torch.manual_seed(1)
        torch.testing.assert_close(loaded(batch), expected)
