"""Spelling-feature emissions: reproducible features, a normalized emission softmax, exact log p(x)."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.models.cases import quiet_trainer
from zoo.data.hmm import SyntheticHMMDataModule
from zoo.estimators import MarginalExpectation
from zoo.models.tagger import (
    WORD_FEATURES,
    HMMPosterior,
    NeuralHMMTagger,
    word_features,
)


def test_word_features_are_reproducible_and_share_suffixes() -> None:
    words = ["<pad>", "<unk>", "running", "jumping", "U.S.", "1,000", "a"]
    table = word_features(words, 1024)
    assert table.shape == (len(words), len(WORD_FEATURES))
    assert torch.equal(table, word_features(words, 1024))  # CRC-32, not Python's salted hash
    assert (table[:2] == 0).all()  # no spelling: no features
    assert ((table[2:] >= 1) & (table[2:] < 1024)).all()
    suffixes = [WORD_FEATURES.index(f) for f in ("suffix1", "suffix2", "suffix3")]
    assert torch.equal(table[2, suffixes], table[3, suffixes])  # -g, -ng, -ing
    shape = WORD_FEATURES.index("shape")
    assert table[4, shape] != table[5, shape]


def test_feature_emissions_keep_an_exact_hmm_likelihood() -> None:
    torch.manual_seed(0)
    model = NeuralHMMTagger(MarginalExpectation(), num_tags=2, input_dim=6, embedding_dim=8,
                            hidden_size=8, gold_tags=(), emission_features=64)  # fmt: skip
    words = model.decoder.words
    words.word_features.copy_(word_features(["<pad>", "<unk>", "dog", "dogs", "ran", "4"], 64))
    assert words.features.weight.requires_grad
    log_b = model.decoder.log_probs()
    torch.testing.assert_close(log_b.exp().sum(-1), torch.ones(2))  # normalized over V
    assert torch.isinf(log_b[:, 0]).all()  # <pad> never emitted
    x = torch.tensor([[2, 3, 4]])
    got = model.log_likelihood(None, {"x": x, "lengths": torch.tensor([3])}, 0)
    log_pi, transition = model.prior_parameters()
    total = []
    for z in itertools.product(range(2), repeat=3):
        s = log_pi[z[0]] + log_b[z[0], 2]
        for n in (1, 2):
            s = s + transition[z[n], z[n - 1]] + log_b[z[n], int(x[0, n])]
        total.append(s)
    torch.testing.assert_close(got[0], torch.logsumexp(torch.stack(total), 0))


@pytest.mark.parametrize("encoder", [None, HMMPosterior()])
def test_setup_fills_the_features_from_the_data(encoder) -> None:
    data = SyntheticHMMDataModule(num_train=32, num_val=8, num_test=8, batch_size=8, seed=0)
    args = {"num_tags": 3, "input_dim": data.input_dim, "embedding_dim": 8, "hidden_size": 8,
            "gold_tags": ("states",), "emission_features": 128}  # fmt: skip
    model = NeuralHMMTagger(MarginalExpectation(), encoder, **args)
    quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, data)
    table = model.decoder.words.word_features
    assert torch.equal(table, word_features(data.vocabulary.items, 128))
    assert (table[2:] > 0).all()


def test_emission_features_argument_is_checked() -> None:
    for bad in (-1, 1, True, 2.0):
        with pytest.raises(ValueError):
            NeuralHMMTagger(MarginalExpectation(), num_tags=3, input_dim=10, emission_features=bad)
