r"""Sequences from a random hidden Markov model with known parameters, and its oracle.

A seeded HMM with K states and V words,

    p(x, z) = π(z_0) B(z_0, x_0) Π_{n ≥ 1} A(z_{n-1}, z_n) B(z_n, x_n),

π ∼ Dir(1), each row of A ∼ Dir(α_A), each row of B ∼ Dir(α_B) (small α_B:
every state emits a few words of its own, so the states are identifiable),
lengths uniform in [min_length, max_length]. The batches are those of
`zoo.data.ud` with the true states as the gold tags (``batch["states"]``),
the words named ``w0 … w{V-1}``. Needs no files.

The oracle is posterior decoding under the true parameters, ẑ_n = argmax_k
p(z_n = k | x) by the forward-backward algorithm (Rabiner 1989): the best
per-token accuracy any tagger can expect, and the many-to-one score an
induced tagger is compared with.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from zoo.data.base import _check_int
from zoo.data.ud import PAD, SPLITS, UNK, TaggedDataset, TaggingDataModule, Vocabulary
from zoo.metrics.clustering import many_to_one, one_to_one, v_measure

__all__ = ["RandomHMM", "SyntheticHMMDataModule", "posterior_decode"]


class RandomHMM:
    """The parameters of a seeded random HMM (probabilities, float64).

    Args:
        num_states: K.
        vocab_size: V.
        transition_concentration: α_A of the Dirichlet rows of A.
        emission_concentration: α_B of the Dirichlet rows of B.
        generator: the random generator.
    """

    def __init__(
        self,
        num_states: int,
        vocab_size: int,
        transition_concentration: float,
        emission_concentration: float,
        generator: torch.Generator,
    ) -> None:
        # torch's Dirichlet takes no generator; numpy's, seeded from ours, keeps it reproducible.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))

        def dirichlet(alpha: float, rows: int, cols: int) -> Tensor:
            return torch.from_numpy(rng.dirichlet(np.full(cols, float(alpha)), size=rows))

        self.start = dirichlet(1.0, 1, num_states)[0]  # (K,)
        self.transition = dirichlet(transition_concentration, num_states, num_states)  # (K, K)
        self.emission = dirichlet(emission_concentration, num_states, vocab_size)  # (K, V)

    def sample(self, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """One sequence: ``(states, words)``, each ``(length,)`` int64."""
        states = torch.empty(length, dtype=torch.long)
        words = torch.empty(length, dtype=torch.long)
        probs = self.start
        for n in range(length):
            states[n] = torch.multinomial(probs, 1, generator=generator)
            words[n] = torch.multinomial(self.emission[states[n]], 1, generator=generator)
            probs = self.transition[states[n]]
        return states, words


def posterior_decode(hmm: RandomHMM, words: Tensor) -> Tensor:
    """argmax_k p(z_n = k | x) under ``hmm`` for one sequence ``(L,)`` → ``(L,)`` states."""
    log_a, log_b = hmm.transition.log(), hmm.emission.log()
    emit = log_b[:, words].T  # (L, K)
    length = words.shape[0]
    alpha = [hmm.start.log() + emit[0]]
    for n in range(1, length):
        alpha.append(torch.logsumexp(alpha[-1].unsqueeze(-1) + log_a, dim=0) + emit[n])
    beta = [torch.zeros_like(alpha[0])]
    for n in range(length - 1, 0, -1):
        beta.append(torch.logsumexp(log_a + (emit[n] + beta[-1]).unsqueeze(0), dim=1))
    beta = beta[::-1]
    return torch.stack([a + b for a, b in zip(alpha, beta, strict=True)]).argmax(-1)


class SyntheticHMMDataModule(TaggingDataModule):
    """Tagging batches sampled from a random HMM (see the module docstring).

    ``batch["states"]`` holds the true states (for evaluation only), and
    `oracle_scores` the scores of posterior decoding under the true HMM.

    Args:
        num_states: K, the hidden states (the number of clusters to induce).
        vocab_size: V, distinct words (``input_dim`` is V + 2: ``<pad>`` and ``<unk>``).
        min_length: shortest sentence (≥ 1).
        max_length: longest sentence.
        num_train: training sentences.
        num_val: validation sentences.
        num_test: test sentences.
        transition_concentration: α_A > 0 (small: peaked transitions).
        emission_concentration: α_B > 0 (small: each state owns few words).
        batch_size: sentences per batch.
        max_word_length: characters kept per word.
        predict_split: the split ``predict`` tags.
        num_workers: DataLoader worker processes.
        seed: seeds the HMM, the sentences and the training order.
    """

    def __init__(
        self,
        num_states: int = 5,
        vocab_size: int = 50,
        min_length: int = 1,
        max_length: int = 12,
        num_train: int = 2000,
        num_val: int = 200,
        num_test: int = 200,
        transition_concentration: float = 0.5,
        emission_concentration: float = 0.1,
        batch_size: int = 32,
        max_word_length: int = 20,
        predict_split: Literal["train", "dev", "test"] = "test",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, max_word_length, predict_split, num_workers, seed)
        for name, value, low in (
            ("num_states", num_states, 1),
            ("vocab_size", vocab_size, 1),
            ("min_length", min_length, 1),
            ("max_length", max_length, min_length),
            ("num_train", num_train, 1),
            ("num_val", num_val, 1),
            ("num_test", num_test, 1),
        ):
            _check_int(name, value, minimum=low)
        for name, value in (
            ("transition_concentration", transition_concentration),
            ("emission_concentration", emission_concentration),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        self.save_hyperparameters()
        self.num_states = num_states
        self.vocab_size = vocab_size
        self.min_length, self.max_length = min_length, max_length
        self.counts = {"train": num_train, "dev": num_val, "test": num_test}
        self.transition_concentration = float(transition_concentration)
        self.emission_concentration = float(emission_concentration)
        self.hmm: RandomHMM | None = None
        self.raw: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Draw the HMM and all three splits from one seeded generator (once)."""
        if self.vocabulary is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        self.hmm = RandomHMM(
            self.num_states,
            self.vocab_size,
            self.transition_concentration,
            self.emission_concentration,
            generator,
        )
        names = [f"w{v}" for v in range(self.vocab_size)]
        self.vocabulary = Vocabulary([PAD, UNK, *names])
        self.characters = Vocabulary([PAD, UNK, "w", *"0123456789"])
        self.tag_names = {"states": [str(k) for k in range(self.num_states)]}
        for split in SPLITS:
            lengths = torch.randint(
                self.min_length, self.max_length + 1, (self.counts[split],), generator=generator
            )
            self.raw[split] = [self.hmm.sample(int(n), generator) for n in lengths]
            examples = []
            for states, words in self.raw[split]:
                forms = [names[w] for w in words.tolist()]
                examples.append(self._encode(forms, forms, {"states": states.tolist()}, None))
            self.splits[split] = TaggedDataset(examples)

    def oracle_tags(self, split: str = "dev") -> list[Tensor]:
        """Posterior decoding under the true HMM for every sentence of ``split``."""
        self.setup()
        if split not in self.raw:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [posterior_decode(self.hmm, words) for _, words in self.raw[split]]

    def oracle_scores(self, split: str = "dev") -> dict[str, float]:
        """The oracle's ``accuracy`` (states as they are) and its ``m1``, ``o1``, ``vm``."""
        predicted = torch.cat(self.oracle_tags(split))
        gold = torch.cat([states for states, _ in self.raw[split]])
        k = self.num_states
        confusion = torch.bincount(predicted * k + gold, minlength=k * k).view(k, k)
        return {
            "accuracy": float((predicted == gold).double().mean()),
            "m1": float(many_to_one(confusion)),
            "o1": float(one_to_one(confusion)),
            "vm": float(v_measure(confusion)),
        }
