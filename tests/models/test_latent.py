"""The injected latents: structure, prior, exact KL, decoder input; the chain VAE; older checkpoints."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from tests.models.cases import quiet_trainer
from zoo.data import SyntheticBinaryDataModule
from zoo.estimators import GumbelSoftmax, Reinforce, STGumbelSoftmax
from zoo.models import SBN, VAE, BernoulliLatent, CategoricalLatent, ChainLatent

FIXTURES = Path(__file__).parent / "fixtures"


def sequences(num_variables: int, num_states: int) -> list[tuple[int, ...]]:
    return list(itertools.product(range(num_states), repeat=num_variables))


def brute_force_log_q(emissions: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
    """log q(y) = Σ_n e_n(y_n) + Σ_n T[y_{n+1}, y_n] − log Z over every sequence y: ``(C^N,)``."""
    n, c = emissions.shape
    scores = []
    for y in sequences(n, c):
        score = sum(emissions[i, y[i]] for i in range(n))
        score = score + sum(transition[y[i + 1], y[i]] for i in range(n - 1))
        scores.append(score)
    scores = torch.stack(scores)
    return scores - torch.logsumexp(scores, 0)


def test_chain_posterior_and_kl_match_enumeration() -> None:
    torch.manual_seed(0)
    n, c = 3, 3
    latent = ChainLatent(num_variables=n, num_states=c).double()
    with torch.no_grad():
        latent.transition.normal_()
    emissions = torch.randn(2, n, c, dtype=torch.float64)
    q = latent.posterior(emissions.flatten(-2))
    assert q.batch_shape == (2,)
    for b in range(2):
        log_q = brute_force_log_q(emissions[b], latent.transition.detach())
        # The structure's probability of every sequence is the brute-force one ...
        for k, y in enumerate(sequences(n, c)):
            z = torch.zeros(n, c, c, dtype=torch.float64)
            for i in range(n - 1):
                z[i, y[i + 1], y[i]] = 1
            z[n - 1, 0, y[n - 1]] = 1  # into the virtual end (LinearChainCRF.from_scores)
            torch.testing.assert_close(q[b].log_prob(z), log_q[k])
        # ... and the KL to the uniform prior is Σ q log(q · C^N), exact and ≥ 0.
        expected = (log_q.exp() * (log_q + n * math.log(c))).sum()
        kl = latent.kl(q)[b]
        torch.testing.assert_close(kl, expected)
        assert kl > 0
    # At zero emissions and transition, q is the prior: KL 0.
    zero = ChainLatent(num_variables=n, num_states=c)
    assert torch.allclose(zero.kl(zero.posterior(torch.zeros(1, n * c))), torch.zeros(1))


def test_chain_decoder_input_is_the_labels_per_position() -> None:
    latent = ChainLatent(num_variables=4, num_states=3)
    q = latent.posterior(torch.randn(5, 12))
    z = q.sample(7)  # (7, 5, 4, 3, 3): the last transition into the virtual end
    labels = latent.decoder_input(z).unflatten(-1, (4, 3))  # (7, 5, N, C)
    assert torch.equal(labels.sum(-1), torch.ones(7, 5, 4))  # one label per position
    # Consecutive labels are the transition the sample took.
    for i in range(3):
        moved = torch.einsum("...a,...b->...ab", labels[..., i + 1, :], labels[..., i, :])
        assert torch.equal(moved, z[..., i, :, :])
    # A relaxed z gives the unary marginals: rows sum to one, values in [0, 1].
    soft = latent.decoder_input(q.marginals()).unflatten(-1, (4, 3))
    torch.testing.assert_close(soft.sum(-1), torch.ones(5, 4))


@pytest.mark.parametrize(
    ("latent", "event"),
    [
        (CategoricalLatent(3, 4), (3, 4)),
        (BernoulliLatent(5), (5,)),
        (ChainLatent(3, 2), (3, 2, 2)),
    ],
    ids=["categorical", "bernoulli", "chain"],
)
def test_every_latent_keeps_its_contract(latent, event) -> None:
    logits = torch.randn(6, latent.in_features)
    q = latent.posterior(logits)
    assert q.batch_shape == (6,) and q.event_shape == event
    assert latent.prior((6,)).event_shape == event
    kl = latent.kl(q)
    assert kl.shape == (6,) and bool((kl >= 0).all())
    z = q.sample(2)
    assert latent.decoder_input(z).shape == (2, 6, latent.out_features)
    with pytest.raises(ValueError, match=f"end with {latent.in_features} features"):
        latent.posterior(torch.zeros(6, latent.in_features + 1))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CategoricalLatent(0, 10), "num_variables must be an integer ≥ 1, got 0"),
        (lambda: CategoricalLatent(2, 2.5), "num_classes must be an integer ≥ 1, got 2.5"),
        (lambda: BernoulliLatent(True), "num_variables must be an integer ≥ 1, got True"),
        (lambda: ChainLatent(1, 10), "num_variables must be an integer ≥ 2, got 1"),
        (lambda: VAE(GumbelSoftmax(), "chain"), "latent must be a zoo.models.latent.Latent"),
    ],
)
def test_bad_latents_raise(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_the_chain_vae_trains_and_its_loss_goes_down() -> None:
    torch.manual_seed(0)
    model = VAE(
        STGumbelSoftmax(temperature=0.7),
        {
            "class_path": "zoo.models.ChainLatent",
            "init_args": {"num_variables": 4, "num_states": 3},
        },
        input_dim=16,
        hidden_sizes=(16,),
        lr=1e-2,
    )
    data = SyntheticBinaryDataModule(
        num_train=64, num_val=32, num_test=32, batch_size=16, dim=16, num_prototypes=3
    )
    data.setup()
    batch = data.val_set[list(range(32))]
    torch.manual_seed(1)
    with torch.no_grad():
        before = float(model(batch).mean())
    transition = model.latent.transition.detach().clone()
    quiet_trainer(max_epochs=8, limit_val_batches=0).fit(model, data)
    torch.manual_seed(1)
    with torch.no_grad():
        after = float(model(batch).mean())
    assert after < before - 1.0, (before, after)
    assert not torch.equal(model.latent.transition, transition)  # the transition is learned


@pytest.mark.parametrize("estimator", [GumbelSoftmax, Reinforce], ids=["gumbel", "reinforce"])
def test_a_chain_vae_checkpoint_round_trips_with_weights_only(tmp_path, estimator) -> None:
    model = VAE(estimator(), ChainLatent(3, 2), input_dim=16, hidden_sizes=(8,))
    with torch.no_grad():
        model.latent.transition.normal_()
    trainer = quiet_trainer(max_steps=1)
    data = SyntheticBinaryDataModule(num_train=16, num_val=16, num_test=16, batch_size=16, dim=16)
    trainer.fit(model, data)
    path = tmp_path / "chain.ckpt"
    trainer.save_checkpoint(path)
    loaded = VAE.load_from_checkpoint(path)  # weights_only=True by default
    assert type(loaded.latent) is ChainLatent
    torch.testing.assert_close(loaded.latent.transition, model.latent.transition)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("categorical-vae", VAE),
        ("bernoulli-vae", VAE),
        ("bernoulli-sbn", SBN),
        ("categorical-sbn", SBN),
    ],
)
def test_checkpoints_of_the_older_classes_load_and_compute_the_same(name: str, cls) -> None:
    # Written by the code of 7705a4b (see fixtures/make_7705a4b_checkpoints.py) with the older
    # CategoricalVAE, BernoulliVAE, BernoulliSBN and CategoricalSBN: the general class upgrades them.
    model = cls.load_from_checkpoint(FIXTURES / f"{name}-7705a4b-checkpoint.pt").eval()
    expected = torch.load(FIXTURES / f"{name}-7705a4b-expected.pt", weights_only=True)
    batch = expected["batch"]
    with torch.no_grad():
        q = model.posterior(batch)
        z = q.argmax()[None]
        if isinstance(model, VAE):
            cost = model.cost(z, batch)
        else:
            assert isinstance(model, SBN)
            cost = model.output_cost(model.second_layer(z).argmax(), batch["y"])
    torch.testing.assert_close(q.log_potentials, expected["log_potentials"])
    torch.testing.assert_close(cost, expected["cost"])


def test_an_older_checkpoint_gets_the_latent_its_arguments_named() -> None:
    model = SBN.load_from_checkpoint(FIXTURES / "categorical-sbn-7705a4b-checkpoint.pt")
    assert type(model.latent) is CategoricalLatent
    assert (model.latent.num_variables, model.latent.num_classes) == (2, 3)
    assert model.hparams["latent"]["class_path"] == "zoo.models.latent.CategoricalLatent"
