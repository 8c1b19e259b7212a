"""The synthetic HMM data: seeded, shaped like the UD batches, and an oracle that is right."""

from __future__ import annotations

import itertools

import pytest
import torch

from zoo.data.hmm import RandomHMM, SyntheticHMMDataModule, posterior_decode


def test_seeded_and_shaped() -> None:
    a, b = (
        SyntheticHMMDataModule(num_train=50, seed=3),
        SyntheticHMMDataModule(num_train=50, seed=3),
    )
    a.setup(), b.setup()
    assert torch.equal(a.hmm.emission, b.hmm.emission)
    assert [e.x.tolist() for e in a.splits["train"].examples] == [
        e.x.tolist() for e in b.splits["train"].examples
    ]
    assert a.input_dim == 52
    batch = next(iter(a.val_dataloader()))
    assert batch["states"].shape == batch["x"].shape
    assert int(batch["states"].max()) < a.num_states
    lengths = a.splits["train"].lengths
    assert min(lengths) >= 1 and max(lengths) <= 12


def test_sampled_frequencies_follow_the_parameters() -> None:
    hmm = RandomHMM(3, 4, 0.5, 0.5, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    first = torch.stack([hmm.sample(1, g)[0][0] for _ in range(4000)])
    freq = torch.bincount(first, minlength=3).double() / 4000
    assert torch.allclose(freq, hmm.start, atol=0.03)


def test_posterior_decoding_matches_brute_force() -> None:
    hmm = RandomHMM(3, 5, 0.5, 0.5, torch.Generator().manual_seed(2))
    words = torch.tensor([0, 3, 1, 4])
    joint = torch.zeros(3, 3, 3, 3, dtype=torch.float64)
    for z in itertools.product(range(3), repeat=4):
        p = hmm.start[z[0]] * hmm.emission[z[0], words[0]]
        for n in range(1, 4):
            p = p * hmm.transition[z[n - 1], z[n]] * hmm.emission[z[n], words[n]]
        joint[z] = p
    marginals = [joint.sum(dim=tuple(d for d in range(4) if d != n)) for n in range(4)]
    want = torch.stack([m.argmax() for m in marginals])
    assert torch.equal(posterior_decode(hmm, words), want)


def test_oracle_beats_chance() -> None:
    dm = SyntheticHMMDataModule(num_train=10, num_val=100)
    scores = dm.oracle_scores("dev")
    assert scores["m1"] >= scores["accuracy"] > 0.6  # chance is about 1/5
    with pytest.raises(ValueError, match="split"):
        dm.oracle_tags("valid")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_length"):
        SyntheticHMMDataModule(min_length=5, max_length=3)
    with pytest.raises(ValueError, match="emission_concentration"):
        SyntheticHMMDataModule(emission_concentration=0)
