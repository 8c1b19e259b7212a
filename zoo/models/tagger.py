r"""Unsupervised tagging with linear-chain latent variables: neural HMMs and a CRF posterior.

Words x = x_0 … x_{L-1}, tags z = z_0 … z_{L-1} ∈ {0, …, C-1}. The generative
model is a Markov chain over tags and a decoder of the words,

    p(x, z) = p(z) p(x | z),      p(z) = π(z_0) Π_{n ≥ 1} A(z_{n-1}, z_n),

with, as the decoder, either the emissions of a neural HMM (Tran et al. 2016,
"Unsupervised Neural Hidden Markov Models"): p(x | z) = Π_n B(z_n, x_n), π, A
and B softmaxes of tag (and word, optionally character-aware) embeddings; or
an LSTM over the words fed the tags (Fu et al. 2020, "Latent Template
Induction with Gumbel-CRFs"): p(x | z) = Π_n p(x_n | x_{<n}, z_n), where no
closed form exists. The posterior q(z | x) is a `LinearChainCRF` whose
potentials a BiLSTM reads from the sentence. Training minimizes

    −ELBO(x) = E_q[−log p(x | z)] + KL(q(z | x) ‖ p(z)),

the first term (``recon``) through the injected estimator, the KL exact: log
p(z) is a sum over chain parts, log p(z) = ⟨z, φ_prior⟩, so KL = −H(q) −
⟨μ_q, φ_prior⟩ from the marginals μ_q and the exact entropy. With HMM
emissions −log p(x | z) is linear in z too, so `MarginalExpectation`
(E_q[f(z)] = f(μ_q)) gives the exact ELBO and its exact gradient: the
reference for every estimator on real data. log p(x) is exact by the forward
algorithm with HMM emissions (``encoder: HMMPosterior`` trains on it directly,
the classical baseline), importance-sampled otherwise.

**Chains with an end.** The chain layout (B, N-1, C, C) folds unary scores
into transitions, so a sentence of length 1 would have no part to put its
tag in. Every chain here has one extra, virtual position L whose only label
is 0 (scores 0 into label 0, −∞ elsewhere): a sentence of L words is a chain
of L + 1 positions, transition n ≤ L − 1 starts at word n, and the tag of
word n is Σ_{c'} z[n, c', ·]. The virtual position adds nothing to any score,
entropy or probability, and length-1 sentences get their categorical q(z_0).

Metrics (`zoo.metrics.clustering`): many-to-one, one-to-one and V-measure of
the Viterbi tags of q against each gold tagging, ``{val,test}/m1_upos`` …;
``nll`` (−log p(x) per sentence), ``elbo_gap`` (−ELBO − nll) and the per-token
perplexity ``ppl``. TensorBoard gets the tags of fixed dev sentences as text
and the cluster × gold confusion matrix as an image at every validation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from zoo.config import Configurable, from_config
from zoo.estimators import Estimate, Estimator, MarginalExpectation
from zoo.metrics.clustering import (
    ContingencyMetric,
    ManyToOneAccuracy,
    OneToOneAccuracy,
    VMeasure,
    many_to_one,
)
from zoo.models.base import LatentVariableModel, Step
from zoo.structures import LinearChainCRF, Structure

__all__ = [
    "ChainTagger",
    "HMMEmission",
    "LSTMDecoder",
    "LSTMTagger",
    "BiLSTMEncoder",
    "ChainEncoder",
    "ConvEncoder",
    "HMMPosterior",
    "NeuralHMMTagger",
    "WORD_FEATURES",
    "WordEmbedding",
    "chain",
    "chain_potentials",
    "chain_tags",
    "word_features",
]

Batch = dict[str, Any]
"""A tagging batch (`zoo.data.ud`): ``x`` (B, N), ``lengths`` (B,), gold tags (B, N), ..."""


# ----------------------------------------------------------------------------- chains
def chain_potentials(unary: Tensor, transition: Tensor, start: Tensor, lengths: Tensor) -> Tensor:
    """θ ``(B, N, C, C)`` of `LinearChainCRF.from_scores` (chains of ``lengths + 1``
    positions, the last one a virtual end), for `chain`.

    Args:
        unary: ``(B, N, C)`` score of tag c at word n.
        transition: ``(C, C)`` or ``(B, C, C)``, transition[c', c] the score of tag c'
            following tag c.
        start: ``(C,)`` or ``(B, C)`` score of the first tag.
        lengths: ``(B,)`` words per sentence, in [1, N].
    """
    # No NaN or range check (a device sync per step): a NaN here shows as a NaN loss.
    q = LinearChainCRF.from_scores(unary, transition, start, lengths, validate_args=False)
    return q.log_potentials


def chain(theta: Tensor, lengths: Tensor, cached: bool = False) -> LinearChainCRF:
    """The `LinearChainCRF` of potentials from `chain_potentials`.

    ``cached``: one forward-backward pass serves log Z, the marginals, the
    entropy and the samples (`Structure.cached`), for a step that asks for several.
    """
    # No NaN check (a device sync per step): a NaN here shows as a NaN loss.
    q = LinearChainCRF(theta, lengths=lengths + 1, validate_args=False)
    return q.cached() if cached else q


def chain_tags(z: Tensor) -> Tensor:
    """The tag indicators of each word, ``(*, N, C, C)`` → ``(*, N, C)`` (0 at padding)."""
    return z.sum(-2)


def _inner(z: Tensor, theta: Tensor) -> Tensor:
    """⟨z, θ⟩ over ``(N, C, C)``; parts with z = 0 count 0 even where θ = −∞."""
    return (torch.where(z != 0, theta, 0.0) * z).sum((-3, -2, -1))


# ----------------------------------------------------------------------------- parts
def _shape(word: str) -> str:
    """The word's shape: character classes (A a 0, punctuation kept), runs collapsed: 'Aa-a', '0.0'."""
    out = []
    for ch in word:
        kind = "A" if ch.isupper() else "a" if ch.isalpha() else "0" if ch.isdigit() else ch
        if not out or out[-1] != kind:
            out.append(kind)
    return "".join(out)[:8]


WORD_FEATURES = ("suffix1", "suffix2", "suffix3", "prefix2", "shape", "length")
"""The spelling features of `word_features`, one bucket id each."""


def word_features(words: Sequence[str], buckets: int) -> Tensor:
    """``(V, 6)`` ids in [1, buckets) of each word's spelling features (`WORD_FEATURES`).

    Suffixes of 1–3 characters, the 2-character prefix, the shape (`_shape`) and
    the length (capped at 12), each hashed with CRC-32 (reproducible across
    processes) into one shared table; 0 is left for the words without
    spelling (``<pad>``, ``<unk>``), which get no features.
    """
    import zlib

    rows = []
    for word in words:
        if word.startswith("<") and word.endswith(">") and len(word) > 2:
            rows.append([0] * len(WORD_FEATURES))
            continue
        keys = (f"s1:{word[-1:]}", f"s2:{word[-2:]}", f"s3:{word[-3:]}", f"p2:{word[:2]}",
                f"sh:{_shape(word)}", f"len:{min(len(word), 12)}")  # fmt: skip
        rows.append([1 + zlib.crc32(k.encode()) % (buckets - 1) for k in keys])
    return torch.tensor(rows, dtype=torch.long).reshape(len(words), len(WORD_FEATURES))


class WordEmbedding(nn.Module):
    """Word vectors, optionally plus a character CNN (Tran et al. 2016, §3.2) and spelling features.

    e(v) = w_v [+ max-pooled character CNN of v] [+ Σ_f g_{f(v)} over the spelling
    features of `word_features`: suffixes, prefix, shape, length, as in the
    feature HMMs of Berg-Kirkpatrick et al. 2010]. The tables of characters and
    feature ids are buffers, filled from the data by the model's ``setup``.

    Args:
        vocab_size: V.
        dim: width of the vectors.
        num_chars: size of the character vocabulary (0: no character CNN).
        max_word_length: characters per word in the ``chars`` tables.
        feature_buckets: size of the hashed table of spelling features (0: none).
    """

    def __init__(self, vocab_size: int, dim: int, num_chars: int = 0, max_word_length: int = 20,
                 feature_buckets: int = 0):  # fmt: skip
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim)
        self.num_chars = num_chars
        self.feature_buckets = feature_buckets
        if num_chars > 0:
            self.chars = nn.Embedding(num_chars, dim, padding_idx=0)
            self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
            self.register_buffer(
                "word_chars", torch.zeros(vocab_size, max_word_length, dtype=torch.long)
            )
        if feature_buckets > 0:
            self.features = nn.Embedding(feature_buckets, dim, padding_idx=0)
            self.register_buffer(
                "word_features", torch.zeros(vocab_size, len(WORD_FEATURES), dtype=torch.long)
            )

    def forward(self, ids: Tensor | None = None) -> Tensor:
        """Vectors of ``ids`` (any shape) → ``(*ids, dim)``; None: the whole vocabulary ``(V, dim)``."""
        table = self.words.weight
        if self.num_chars > 0:
            chars = self.word_chars  # (V, W)
            h = self.conv(self.chars(chars).transpose(1, 2)).transpose(1, 2)  # (V, W, dim)
            h = h.masked_fill((chars == 0).unsqueeze(-1), -math.inf).amax(1)
            table = table + torch.where(torch.isfinite(h), h, 0.0).tanh()
        if self.feature_buckets > 0:
            bag = F.embedding_bag(self.word_features, self.features.weight, mode="sum",
                                  padding_idx=0)  # fmt: skip
            table = table + bag  # Σ_f g_{f(v)}, (V, dim)
        return table if ids is None else F.embedding(ids, table)


class HMMEmission(nn.Module):
    """p(x_n | z_n) = softmax_v(MLP(u_{z_n}) · w_v + b_v): a neural HMM's emissions.

    Args:
        num_tags: C.
        vocab_size: V (id 0 is padding and gets probability 0).
        dim: width of the tag and word embeddings.
        num_chars: character vocabulary of the character-aware word vectors (0: none).
        max_word_length: characters per word.
        feature_buckets: hashed spelling features in the word vectors (0: none; `WordEmbedding`).
    """

    linear = True
    """−log p(x | z) is linear in z: `MarginalExpectation` is exact for it."""

    def __init__(self, num_tags: int, vocab_size: int, dim: int, num_chars: int = 0,
                 max_word_length: int = 20, feature_buckets: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.tags = nn.Parameter(torch.randn(num_tags, dim) * 0.1)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.words = WordEmbedding(vocab_size, dim, num_chars, max_word_length, feature_buckets)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def log_probs(self) -> Tensor:
        """log B, ``(C, V)``."""
        logits = self.mlp(self.tags) @ self.words().T + self.bias
        return torch.log_softmax(
            logits.index_fill(1, logits.new_zeros(1, dtype=torch.long), -math.inf), -1
        )

    def unary(self, x: Tensor, mask: Tensor) -> Tensor:
        """log B(c, x_n), ``(B, N, C)``, 0 at padding."""
        emit = self.log_probs().T[x]  # (B, N, C)
        return torch.where(mask.unsqueeze(-1), emit, 0.0)

    def log_likelihood(self, tags: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        """log p(x | z) = Σ_n ⟨tags_n, log B(·, x_n)⟩: tags ``(S, B, N, C)`` → ``(S, B)``."""
        return (tags * self.unary(x, mask)).sum((-2, -1))


class LSTMDecoder(nn.Module):
    """p(x | z) = Π_n softmax(W h_n)[x_n], h_n = LSTM([e(x_{n-1}); Σ_c z_n(c) u_c]), x_{-1} = <pad>.

    Args:
        num_tags: C.
        vocab_size: V.
        dim: width of the word and tag embeddings.
        hidden_size: width of the LSTM.
    """

    linear = False

    def __init__(self, num_tags: int, vocab_size: int, dim: int, hidden_size: int) -> None:
        super().__init__()
        self.tags = nn.Parameter(torch.randn(num_tags, dim) * 0.1)
        self.words = nn.Embedding(vocab_size, dim)
        self.lstm = nn.LSTM(2 * dim, hidden_size, batch_first=True)
        self.out = nn.Linear(hidden_size, vocab_size)

    def log_likelihood(self, tags: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        """log p(x | z): tags ``(S, B, N, C)`` (one-hot or relaxed) → ``(S, B)``."""
        samples, batch, size, _ = tags.shape
        previous = F.pad(x, (1, 0))[:, :-1]  # (B, N): <pad> (id 0) before the first word
        words = self.words(previous).expand(samples, -1, -1, -1)
        inputs = torch.cat([words, tags @ self.tags], dim=-1).reshape(samples * batch, size, -1)
        h, _ = self.lstm(inputs)  # (S·B, N, H)
        logits = self.out(h).view(samples, batch, size, -1)
        logp = torch.log_softmax(logits, -1).gather(-1, x.expand(samples, -1, -1).unsqueeze(-1))
        return torch.where(mask, logp.squeeze(-1), 0.0).sum(-1)


class ChainEncoder(Configurable, nn.Module):
    """q(z | x)'s network: words ``(B, N)`` → chain potentials ``(B, N + 1, C, C)`` (`chain_potentials`).

    The tagger's injected part, chosen in YAML (``model.encoder``). An encoder
    is built with its own widths only; the tagger then calls ``bind(num_tags,
    vocab_size)`` with the sizes the data decides, where the encoder creates its
    layers. A new encoder subclasses this, writes ``bind`` and ``forward``
    (``unary (B, N, C)``, a transition and a start through `chain_potentials`),
    and is named by its class path in a config.
    """

    def bind(self, num_tags: int, vocab_size: int) -> None:
        """Create the layers whose sizes the data decides: C tags, V words."""
        raise NotImplementedError(f"{type(self).__name__} must implement bind(num_tags, vocab_size)")

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Chain potentials of q(z | x) for words ``x`` ``(B, N)`` of ``lengths`` ``(B,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, lengths)")


class BiLSTMEncoder(ChainEncoder):
    """A BiLSTM-CRF: unary scores ``(B, N, C)`` from a BiLSTM over word embeddings, and learned
    tag-pair ``(C, C)`` and start ``(C,)`` scores (Tran et al. 2016's and Fu et al. 2020's q).

    Args:
        embedding_dim: width of the word embeddings.
        hidden_size: width of each LSTM direction.
    """

    def __init__(self, embedding_dim: int = 128, hidden_size: int = 128) -> None:
        super().__init__()
        for name, value in (("embedding_dim", embedding_dim), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BiLSTMEncoder: {name} must be an integer ≥ 1, got {value!r}")
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size

    def bind(self, num_tags: int, vocab_size: int) -> None:
        dim, hidden = self.embedding_dim, self.hidden_size
        self.words = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, num_tags)
        self.transition = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start = nn.Parameter(torch.zeros(num_tags))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            self.words(x), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        h, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
        return chain_potentials(self.out(h), self.transition, self.start, lengths)


class ConvEncoder(ChainEncoder):
    """A CNN-CRF: unary scores from ``num_layers`` 1-D convolutions over word embeddings (each
    word sees ``num_layers · (kernel_size − 1)`` neighbours), and learned tag-pair and start scores.

    Faster than the BiLSTM on a CPU (no recurrence); a narrower context.

    Args:
        embedding_dim: width of the word embeddings and of the convolutions.
        kernel_size: words per convolution window (odd).
        num_layers: convolutions, each followed by a ReLU.
    """

    def __init__(self, embedding_dim: int = 128, kernel_size: int = 3, num_layers: int = 2) -> None:
        super().__init__()
        for name, value, odd in (("embedding_dim", embedding_dim, False),
                                 ("kernel_size", kernel_size, True), ("num_layers", num_layers, False)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (odd and value % 2 == 0):
                kind = "an odd integer ≥ 1" if odd else "an integer ≥ 1"
                raise ValueError(f"ConvEncoder: {name} must be {kind}, got {value!r}")
        self.embedding_dim, self.kernel_size, self.num_layers = embedding_dim, kernel_size, num_layers

    def bind(self, num_tags: int, vocab_size: int) -> None:
        dim = self.embedding_dim
        self.words = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.convs = nn.ModuleList(
            nn.Conv1d(dim, dim, self.kernel_size, padding=self.kernel_size // 2)
            for _ in range(self.num_layers)
        )
        self.out = nn.Linear(dim, num_tags)
        self.transition = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start = nn.Parameter(torch.zeros(num_tags))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        real = (x != 0).unsqueeze(1).to(self.out.weight.dtype)  # (B, 1, N): padding stays 0
        h = self.words(x).transpose(1, 2)  # (B, dim, N)
        for conv in self.convs:
            h = torch.relu(conv(h * real))
        return chain_potentials(self.out(h.transpose(1, 2)), self.transition, self.start, lengths)


class HMMPosterior(ChainEncoder):
    """No network: q(z | x) is the HMM's own posterior p(z | x) (`NeuralHMMTagger` only).

    The ELBO is then tight: the loss is −log p(x) by the forward algorithm and
    its gradient the expected complete-data gradient of EM (Baum-Welch;
    Salakhutdinov et al. 2003), the classical baseline. The estimator is unused.
    """

    def bind(self, num_tags: int, vocab_size: int) -> None:
        pass

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        raise TypeError("HMMPosterior has no network: its tagger builds q from the HMM itself")


# ----------------------------------------------------------------------------- models
class ChainTagger(LatentVariableModel):
    """The family's shared part: p(z), q(z | x), the ELBO's terms, metrics, pictures, predict.

    Subclasses set ``self.decoder`` (an `HMMEmission` or an `LSTMDecoder`).

    Args:
        estimator: the gradient estimator of E_q[−log p(x | z)].
        encoder: q(z | x)'s network, a `ChainEncoder` (``BiLSTMEncoder``, ``ConvEncoder``, or
            its config); None: ``BiLSTMEncoder(embedding_dim, hidden_size)``.
        num_tags: C, the clusters to induce (45 against PTB-style XPOS, 17 against UPOS).
        input_dim: V, the vocabulary size (linked from the data).
        embedding_dim: width of the word and tag embeddings.
        hidden_size: width of the encoder's LSTM (each direction) and of the LSTM decoder.
        gold_tags: the gold taggings in the batches to score against (``upos``, ``xpos``; ``states``
            on synthetic data); missing ones are an error at evaluation.
        max_gold_tags: an upper bound on the ids of any gold tagging (unused ids change no score).
        **kwargs: `LatentVariableModel`'s ``lr``, ``num_importance_samples`` (m of the
            importance-sampled ``test/nll`` where log p(x) is not exact),
            ``val_importance_samples`` (the same for ``val/nll``) and ``importance_chunk_size``.

    Raises:
        ValueError: sizes below 1.
    """

    objective_name = "neg_elbo"
    cost_name = "recon"
    regularizer_name = "kl"
    decoder: nn.Module

    def __init__(
        self,
        estimator: Estimator,
        encoder: ChainEncoder | None = None,
        num_tags: int = 45,
        input_dim: int = 10000,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        gold_tags: Sequence[str] = ("upos", "xpos"),
        max_gold_tags: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(estimator, **kwargs)
        for name, value in (
            ("num_tags", num_tags),
            ("input_dim", input_dim),
            ("embedding_dim", embedding_dim),
            ("hidden_size", hidden_size),
            ("max_gold_tags", max_gold_tags),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        self.num_tags = num_tags
        self.input_dim = input_dim
        self.gold_tags = tuple(gold_tags)
        if encoder is None:
            encoder = BiLSTMEncoder(embedding_dim, hidden_size)
        encoder = from_config(encoder, ChainEncoder) if isinstance(encoder, Mapping) else encoder
        if not isinstance(encoder, ChainEncoder):
            raise TypeError(
                f"encoder must be a ChainEncoder (BiLSTMEncoder, ConvEncoder, ...) or its config, "
                f"got {type(encoder).__name__}"
            )
        if isinstance(encoder, HMMPosterior) and not self.exact_likelihood:
            raise ValueError(
                f"HMMPosterior makes q the HMM's own posterior; {type(self).__name__} has no "
                "exact posterior (its decoder is not an HMM's). Use NeuralHMMTagger."
            )
        encoder.bind(num_tags, input_dim)
        self.encoder = encoder
        # The prior p(z): start and transition logits (Tran et al. read them from tag embeddings).
        self.prior_tags = nn.Parameter(torch.randn(num_tags, embedding_dim) * 0.1)
        self.prior_mlp = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim), nn.ReLU(), nn.Linear(embedding_dim, num_tags)
        )
        self.start_logits = nn.Parameter(torch.zeros(num_tags))

        def scores(stage: str) -> nn.ModuleDict:
            return nn.ModuleDict(
                {
                    gold: MetricCollection(
                        {
                            "m1": ManyToOneAccuracy(num_tags, max_gold_tags),
                            "o1": OneToOneAccuracy(num_tags, max_gold_tags),
                            "vm": VMeasure(num_tags, max_gold_tags),
                        },
                        postfix=f"_{gold}",
                    )
                    for gold in self.gold_tags
                }
            )

        self.scores = nn.ModuleDict({stage: scores(stage) for stage in ("val", "test")})
        self.confusion = nn.ModuleDict(
            {g: ContingencyMetric(num_tags, max_gold_tags) for g in self.gold_tags}
        )
        self.token_nll = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})

    # ------------------------------------------------------------------ the model
    def prior_parameters(self) -> tuple[Tensor, Tensor]:
        """log π ``(C,)`` and log A in the chain layout, ``[c', c] = log p(z_{n+1} = c' | z_n = c)``."""
        log_a = torch.log_softmax(self.prior_mlp(self.prior_tags), dim=-1)  # (C, C'): rows sum to 1
        return torch.log_softmax(self.start_logits, -1), log_a.T

    def prior_potentials(self, batch: Batch) -> Tensor:
        """θ of p(z), ``(B, N, C, C)``; ⟨z, θ⟩ = log p(z) (the chain is normalized)."""
        x = batch["x"]
        start, transition = self.prior_parameters()
        unary = start.new_zeros(*x.shape, self.num_tags)
        return chain_potentials(unary, transition, start, batch["lengths"])

    def mask(self, batch: Batch) -> Tensor:
        """``(B, N)`` True at real words."""
        steps = torch.arange(batch["x"].shape[1], device=batch["x"].device)
        return steps < batch["lengths"].unsqueeze(-1)

    share_inference = True
    """Whether q memoizes its exact queries for the step (`Structure.cached`): the estimator's
    marginals or samples and the KL's entropy and marginals then come from one forward-backward
    pass. False runs a pass per query (the behaviour before; ``bench/tagger_step.py``)."""

    def posterior(self, batch: Batch) -> LinearChainCRF:
        theta = self.encoder(batch["x"], batch["lengths"])
        return chain(theta, batch["lengths"], cached=self.share_inference)

    def cost(self, z: Tensor, batch: Batch) -> Tensor:
        """−log p(x | z): z ``(S, B, N, C, C)`` → ``(S, B)``."""
        return -self.decoder.log_likelihood(chain_tags(z), batch["x"], self.mask(batch))

    def regularizer(self, q: Structure, batch: Batch) -> Tensor:
        """KL(q ‖ p(z)) = −H(q) − ⟨μ_q, θ_prior⟩, ``(B,)``, exact."""
        if not self.share_inference:  # as before: θ_prior built in full (bench/tagger_step.py)
            return _at_least_zero(
                -q.entropy() - _inner(q.marginals(), self.prior_potentials(batch))
            )
        return _at_least_zero(-q.entropy() - self.prior_expectation(q.marginals(), batch))

    def prior_expectation(
        self, mu: Tensor, batch: Batch, prior: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """E_q[log p(z)] = ⟨μ, θ_prior⟩, ``(B,)``, without building θ_prior.

        = Σ_{n < L−1} ⟨μ_n, log A⟩ + ⟨tags of word 0, log π⟩: the pair marginals of the
        real transitions summed over positions first (the virtual end scores 0).
        ``prior``: (log π, log A) to use instead of `prior_parameters`.
        """
        start, transition = self.prior_parameters() if prior is None else prior
        steps = torch.arange(mu.shape[-3], device=mu.device)
        real = (steps < (batch["lengths"] - 1).unsqueeze(-1)).to(mu.dtype)  # (B, N)
        pairs = torch.einsum("...ncd,...n->...cd", mu, real)  # (*, C', C)
        return (pairs * transition).sum((-2, -1)) + (mu[..., 0, :, :].sum(-2) * start).sum(-1)

    def log_weights(self, q: Structure, batch: Batch, num_samples: int) -> Tensor:
        """log p(x | z) + log p(z) − log q(z | x) for z ∼ q, ``(m, B)``."""
        z = q.sample(num_samples)
        return -self.cost(z, batch) + _inner(z, self.prior_potentials(batch)) - q.log_prob(z)

    def log_likelihood(self, q: Structure, batch: Batch, num_samples: int) -> Tensor:
        """log p(x), ``(B,)``: exact where the decoder allows, else importance-sampled with m samples."""
        return self.importance_log_likelihood(q, batch, num_samples)

    @torch.no_grad()
    def tags(self, batch: Batch) -> Tensor:
        """The Viterbi tags of q, ``(B, N)`` (−1 at padding)."""
        tags = chain_tags(self.posterior(batch).argmax()).argmax(-1)
        return torch.where(self.mask(batch), tags, -1)

    # ------------------------------------------------------------------ the step
    _auxiliary: Tensor | None = None
    """``(B,)`` loss terms of a training recipe beyond the −ELBO (set by ``terms``), or None."""
    _recipe_logs: dict[str, Tensor] | None = None

    def forward(self, batch: Batch) -> Tensor:
        """``(B,)`` per-example loss: the −ELBO, plus a recipe's own terms in training."""
        self._auxiliary = None
        _, estimate, kl = self.terms(batch)
        loss = estimate.objective + kl
        return loss if self._auxiliary is None else loss + self._auxiliary

    def step(self, batch: Batch, stage: str) -> Step:
        """The −ELBO (plus a recipe's terms in training) and its parts; in evaluation the
        likelihood and the induced tags, scored against every gold tagging.

        Outputs (for callbacks): ``tags`` ``(B, N)``, the Viterbi tags (−1 at padding).
        """
        self._auxiliary, self._recipe_logs = None, None
        q, estimate, kl = self.terms(batch)
        elbo = estimate.objective + kl
        loss = (elbo if self._auxiliary is None else elbo + self._auxiliary).mean()
        batch_size = int(batch["lengths"].shape[0])
        if not self.logs_this_step(stage):
            return Step(loss, batch_size=batch_size)
        metrics = {
            self.objective_name: elbo.detach().mean(),
            self.cost_name: estimate.cost.mean(),
            self.regularizer_name: kl.detach().mean(),
        }
        with torch.no_grad():
            tokens = batch["lengths"].to(kl.dtype)
            metrics["kl_token"] = (kl.detach() / tokens).mean()
            metrics["entropy_token"] = (q.entropy() / tokens).mean()
        if self._recipe_logs:
            metrics.update(self._recipe_logs)
        if stage == "train":
            metrics["loss"] = loss.detach()
            metrics.update(estimate.stats)
            return Step(loss, metrics, batch_size)
        samples = self.val_importance_samples if stage == "val" else self.num_importance_samples
        if self.exact_likelihood or samples > 0:
            nll = -self.log_likelihood(q, batch, samples)
            metrics["nll"] = nll.mean()
            metrics["elbo_gap"] = (estimate.cost + kl.detach() - nll).mean()
            tokens = batch["lengths"].to(nll.dtype)
            self.token_nll[stage].update(nll / tokens, tokens)
        predicted = self.tags(batch)
        for gold in self.gold_tags:
            if gold not in batch:
                raise ValueError(
                    f"{type(self).__name__}: gold_tags names {gold!r} but the batch has only "
                    f"{sorted(k for k in batch if torch.is_tensor(batch[k]))}; set model.gold_tags "
                    f"to the data's taggings"
                )
            self.scores[stage][gold].update(predicted, batch[gold])
            if stage == "val":
                self.confusion[gold].update(predicted, batch[gold])
        return Step(loss, metrics, batch_size, outputs={"tags": predicted})

    exact_likelihood = False
    """Whether log p(x) is exact (so ``nll`` is logged without importance samples)."""

    def epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        """Many-to-one, one-to-one and V-measure against each gold tagging (``m1_xpos``, ...),
        and the per-word likelihood (``nll_token``, ``ppl``) of the epoch."""
        values: dict[str, Tensor] = {}
        for gold in self.gold_tags:
            scores = self.scores[stage][gold]
            if any(metric.update_called for metric in scores.values()):
                values.update(scores.compute())
            scores.reset()
            if stage == "val":
                self.confusion[gold].reset()
        metric = self.token_nll[stage]
        if metric.update_called:
            value = metric.compute()
            values["nll_token"], values["ppl"] = value, value.exp()
        metric.reset()
        return values

    def figures(self, batch: Batch, outputs: dict[str, Any], count: int) -> dict[str, Any]:
        """``confusion_{gold}``: the epoch's confusion of induced and gold tags (a figure);
        ``tags``: ``count`` sentences of the batch tagged ``word/**induced**/gold`` (text)."""
        figures: dict[str, Any] = {}
        for gold in self.gold_tags:
            confusion = self.confusion[gold].compute().cpu()
            figures[f"confusion_{gold}"] = confusion_figure(confusion, gold, self._names(gold))
        if "words" in batch and "tags" in outputs:
            names = getattr(self.trainer.datamodule, "tag_names", {}) if self.trainer else {}
            lines = []
            for i, words in enumerate(batch["words"][:count]):
                cells = []
                for n, word in enumerate(words):
                    gold = ""
                    for g in self.gold_tags:
                        tag = int(batch[g][i, n])
                        gold += f"/{names[g][tag] if g in names else tag}"
                    cells.append(f"{word}/**{int(outputs['tags'][i, n])}**{gold}")
                lines.append(" ".join(cells))
            figures["tags"] = "\n\n".join(lines)
        return figures

    def _names(self, gold: str) -> list[str] | None:
        datamodule = getattr(self.trainer, "datamodule", None)
        return getattr(datamodule, "tag_names", {}).get(gold)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """The induced tags: ``{"tags": (B, N) (−1 at padding), "words", "sentences"}``."""
        return {
            "tags": self.tags(batch),
            "words": batch["words"],
            "sentences": batch.get("sentences"),
        }

    def hparams_metric_names(self) -> list[str]:
        names = super().hparams_metric_names()
        for stage in ("val", "test"):
            names += [f"{stage}/{m}_{g}" for g in self.gold_tags for m in ("m1", "o1", "vm")]
            names += [f"{stage}/nll", f"{stage}/ppl"]
        return names

    def setup(self, stage: str) -> None:
        """Copies the vocabulary's characters (and spelling features) from the datamodule into
        character-aware (feature-aware) emissions."""
        words = getattr(self.decoder, "words", None)
        if isinstance(words, WordEmbedding) and words.feature_buckets > 0:
            datamodule = getattr(self.trainer, "datamodule", None)
            vocabulary = getattr(datamodule, "vocabulary", None)
            if vocabulary is None:
                raise ValueError(
                    "emission_features needs a datamodule with a vocabulary (zoo.data.ud, zoo.data.hmm)"
                )
            if len(vocabulary.items) != words.word_features.shape[0]:
                raise ValueError(
                    f"emission_features: the data has {len(vocabulary.items)} words, the model "
                    f"{words.word_features.shape[0]} (input_dim)"
                )
            table = word_features(vocabulary.items, words.feature_buckets)
            words.word_features.copy_(table.to(words.word_features.device))
        if isinstance(words, WordEmbedding) and words.num_chars > 0:
            datamodule = getattr(self.trainer, "datamodule", None)
            table = getattr(datamodule, "word_chars", None)
            if table is None:
                raise ValueError("char_emission needs a datamodule with word_chars (zoo.data.ud)")
            if table.shape[0] != words.word_chars.shape[0] or int(table.max()) >= words.num_chars:
                raise ValueError(
                    f"char_emission: the data has {table.shape[0]} words and "
                    f"{int(table.max()) + 1} characters, the model {words.word_chars.shape[0]} "
                    f"and {words.num_chars} (num_chars)"
                )
            width = min(table.shape[1], words.word_chars.shape[1])
            words.word_chars.zero_()[:, :width] = table[:, :width].to(words.word_chars.device)


def _at_least_zero(x: Tensor) -> Tensor:
    """KL ≥ 0 up to rounding: clamp the rounding, keep the gradient."""
    return x.clamp(min=0.0)


class NeuralHMMTagger(ChainTagger):
    """The neural HMM p(x, z) of Tran et al. (2016) with a BiLSTM-CRF posterior q(z | x).

    ``MarginalExpectation`` gives the exact ELBO and gradient; every other
    estimator estimates them. log p(x) (``nll``) is exact by the forward algorithm.

    Args:
        estimator: the gradient estimator of E_q[−log p(x | z)] (`MarginalExpectation`: exact).
        encoder: q(z | x)'s network (a `ChainEncoder`; None: a BiLSTM-CRF), or `HMMPosterior`:
            q is the HMM's own posterior and the loss −log p(x), the classical baseline
            (Baum-Welch's gradient), whatever the estimator.
        num_tags: C, the clusters to induce.
        input_dim: V, the vocabulary size (linked from the data).
        embedding_dim: width of the embeddings.
        hidden_size: width of the encoder's LSTM (each direction).
        char_emission: character-aware word vectors in the emissions (a char CNN).
        num_chars: size of the character vocabulary (an upper bound) for ``char_emission``.
        max_word_length: characters per word for ``char_emission``.
        gold_tags: the gold taggings to score against.
        max_gold_tags: an upper bound on gold ids.
        **kwargs: `LatentVariableModel`'s ``lr``, ``num_importance_samples`` (m of
            ``test/nll_iw``; 0 by default: ``test/nll`` is exact anyway),
            ``val_importance_samples`` and ``importance_chunk_size``.
        warmup_steps: training steps of the warm-up stage (0: none): the HMM (emissions and
            prior) trains on −log p(x), as with `HMMPosterior`, and q on
            ``warmup_posterior``; the estimator is not used.
        warmup_posterior: what q learns in the warm-up: ``"distill"``, KL(p(z | x) ‖ q) toward
            the HMM's exact posterior (exact, no sampling); ``"frozen"``, nothing.
        generative_objective: what trains the HMM after the warm-up: ``"elbo"`` the −ELBO (a
            VAE; with the estimator's gradient for the emissions), ``"marginal"`` −log p(x)
            alone (the −ELBO then trains q only: the HMM cannot drift to ignore z, the
            posterior collapse of the sampled estimators), ``"both"`` their sum.
        posterior_kl_weight: w ≥ 0 of w · KL(p(z | x) ‖ q) added for q after the warm-up: a
            pull toward the HMM's own posterior, whatever the estimator.
        emission_features: buckets of hashed spelling features (suffixes of 1–3 characters,
            a prefix, the shape, the length: `word_features`) added to the emissions' word
            vectors; 0: none. The emissions stay a softmax over the vocabulary, so log p(x)
            stays exact. Works with ``char_emission``.

    **Stages.** With ``warmup_steps`` the loss switches at that training step: before it
    −log p(x) + KL(p(z | x) ‖ q) (``train/stage`` 0), after it the −ELBO through the
    estimator plus the terms ``generative_objective`` and ``posterior_kl_weight`` ask for
    (``train/stage`` 1). Validation and test always report the −ELBO of q. Logged beside
    it: ``kl_token`` and ``entropy_token`` (KL(q ‖ p(z)) and H(q) per word: collapse shows
    as both near 0 and log C), ``distill`` (KL(p(z | x) ‖ q) per sentence) and, in
    training, ``loss`` (what is minimized) and ``nll_train`` (−log p(x)).

    Example:
        >>> model = NeuralHMMTagger(MarginalExpectation(), num_tags=3, input_dim=10,
        ...                         embedding_dim=8, hidden_size=8, gold_tags=())
        >>> batch = {"x": torch.tensor([[2, 3, 4], [5, 0, 0]]), "lengths": torch.tensor([3, 1])}
        >>> model(batch).shape
        torch.Size([2])
    """

    exact_likelihood = True

    def __init__(
        self,
        estimator: Estimator,
        encoder: ChainEncoder | None = None,
        num_tags: int = 45,
        input_dim: int = 10000,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        char_emission: bool = False,
        num_chars: int = 512,
        max_word_length: int = 20,
        gold_tags: Sequence[str] = ("upos", "xpos"),
        max_gold_tags: int = 64,
        warmup_steps: int = 0,
        warmup_posterior: str = "distill",
        generative_objective: str = "elbo",
        posterior_kl_weight: float = 0.0,
        emission_features: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            estimator,
            encoder,
            num_tags=num_tags,
            input_dim=input_dim,
            embedding_dim=embedding_dim,
            hidden_size=hidden_size,
            gold_tags=gold_tags,
            max_gold_tags=max_gold_tags,
            **kwargs,
        )
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer ≥ 0, got {warmup_steps!r}")
        if warmup_posterior not in ("distill", "frozen"):
            raise ValueError(
                f"warmup_posterior must be 'distill' or 'frozen', got {warmup_posterior!r}"
            )
        if generative_objective not in ("elbo", "marginal", "both"):
            raise ValueError(
                "generative_objective must be 'elbo', 'marginal' or 'both', "
                f"got {generative_objective!r}"
            )
        if (
            isinstance(emission_features, bool)
            or not isinstance(emission_features, int)
            or emission_features < 0
            or emission_features == 1
        ):
            raise ValueError(
                f"emission_features must be 0 (none) or an integer ≥ 2, got {emission_features!r}"
            )
        if not float(posterior_kl_weight) >= 0:
            raise ValueError(f"posterior_kl_weight must be ≥ 0, got {posterior_kl_weight!r}")
        self.warmup_steps = warmup_steps
        self.warmup_posterior = warmup_posterior
        self.generative_objective = generative_objective
        self.posterior_kl_weight = float(posterior_kl_weight)
        self.decoder = HMMEmission(
            num_tags,
            input_dim,
            embedding_dim,
            num_chars if char_emission else 0,
            max_word_length,
            emission_features,
        )

    # ------------------------------------------------------------------ the recipe
    def in_warmup(self) -> bool:
        """Whether this is a training step of the warm-up stage."""
        if not self.training or self.warmup_steps == 0:
            return False
        try:
            return self.trainer.global_step < self.warmup_steps
        except RuntimeError:  # not attached to a trainer: the main stage
            return False

    def _plain(self) -> bool:
        """Whether this step is the plain −ELBO (no recipe term applies)."""
        return not self.training or (
            not self.in_warmup()
            and self.generative_objective == "elbo"
            and self.posterior_kl_weight == 0
        )

    def posterior(self, batch: Batch) -> LinearChainCRF:
        """q(z | x): the encoder's chain, or with `HMMPosterior` the HMM's own p(z | x)."""
        if isinstance(self.encoder, HMMPosterior):
            return chain(self.joint_potentials(batch), batch["lengths"], cached=self.share_inference)
        return super().posterior(batch)

    def terms(self, batch: Batch) -> tuple[Structure, Estimate, Tensor]:
        """q, the estimate of E_q[−log p(x | z)] and KL(q ‖ p(z)); a recipe's terms in ``_auxiliary``.

        With `HMMPosterior` the loss is −log p(x) itself, split into its exact recon and KL
        (the ELBO is tight at the exact posterior; the estimator is unused).
        """
        if isinstance(self.encoder, HMMPosterior):
            q = self.posterior(batch)
            nll = -q.log_partition()
            with torch.no_grad():
                mu = q.marginals()
                recon = self.cost(mu.unsqueeze(0), batch)[0]
            estimate = Estimate(z=mu.unsqueeze(0), cost=recon, surrogate=nll)
            return q, estimate, (nll - recon).detach().clamp(min=0.0)
        if self._plain():
            return super().terms(batch)
        x, lengths, mask = batch["x"], batch["lengths"], self.mask(batch)
        warm = self.in_warmup()
        q = self.posterior(batch)
        unary = self.decoder.unary(x, mask)  # log B(·, x_n), (B, N, C)
        start, transition = self.prior_parameters()
        exact = chain(chain_potentials(unary, transition, start, lengths), lengths, cached=True)
        log_px = exact.log_partition()  # the forward algorithm: log p(x), (B,)
        if warm and self.warmup_posterior == "frozen":
            q = chain(q.log_potentials.detach(), lengths, cached=True)
        logs = {"stage": torch.tensor(0.0 if warm else 1.0), "nll_train": -log_px.detach().mean()}
        distill = None
        if warm or self.posterior_kl_weight > 0 or self.logs_this_step():
            with torch.no_grad():
                mu_p = exact.marginals()  # p(z | x)'s marginals
                entropy_p = log_px - _inner(mu_p, exact.log_potentials)
            # KL(p(z | x) ‖ q) = A_q − ⟨μ_p, θ_q⟩ − H(p), with p fixed (q's gradient only).
            distill = _at_least_zero(q.log_partition() - _inner(mu_p, q.log_potentials) - entropy_p)
            logs["distill"] = distill.detach().mean()
        self._recipe_logs = logs
        if warm:
            # −log p(x) as the HMM's loss, split into its exact recon and KL for the logs.
            with torch.no_grad():
                recon = -(chain_tags(mu_p) * unary).sum((-2, -1))
            estimate = Estimate(z=mu_p.unsqueeze(0), cost=recon, surrogate=-log_px)
            self._auxiliary = distill if self.warmup_posterior == "distill" else None
            return q, estimate, (-log_px - recon).detach().clamp(min=0.0)
        if self.generative_objective == "marginal":  # the −ELBO trains q alone
            unary, start, transition = unary.detach(), start.detach(), transition.detach()

        def cost(z: Tensor) -> Tensor:
            return -(chain_tags(z) * unary).sum((-2, -1))

        estimate = self.estimator(q, cost)
        kl = _at_least_zero(
            -q.entropy() - self.prior_expectation(q.marginals(), batch, (start, transition))
        )
        auxiliary = -log_px if self.generative_objective != "elbo" else torch.zeros_like(log_px)
        if self.posterior_kl_weight > 0 and distill is not None:
            auxiliary = auxiliary + self.posterior_kl_weight * distill
        self._auxiliary = auxiliary
        return q, estimate, kl

    def joint_potentials(self, batch: Batch) -> Tensor:
        """θ of p(x, z) as a chain, ``(B, N, C, C)``: ⟨z, θ⟩ = log p(x, z)."""
        start, transition = self.prior_parameters()
        unary = self.decoder.unary(batch["x"], self.mask(batch))
        return chain_potentials(unary, transition, start, batch["lengths"])

    def exact_posterior(self, batch: Batch) -> LinearChainCRF:
        """p(z | x) of the HMM itself; its log-partition is log p(x)."""
        return chain(self.joint_potentials(batch), batch["lengths"])

    def log_likelihood(self, q: Structure, batch: Batch, num_samples: int) -> Tensor:
        """log p(x), ``(B,)``, exact (the forward algorithm)."""
        return self.exact_posterior(batch).log_partition()


class LSTMTagger(ChainTagger):
    """A Markov prior p(z), an LSTM decoder p(x | z) and a BiLSTM-CRF posterior (Fu et al. 2020).

    −log p(x | z) is not linear in z, so the estimators differ here; log p(x)
    is importance-sampled with m samples of q (``nll``, at test time by default).

    Args:
        estimator: the gradient estimator of E_q[−log p(x | z)]; not `MarginalExpectation`.
        num_tags: C, the clusters to induce.
        input_dim: V, the vocabulary size (linked from the data).
        embedding_dim: width of the embeddings.
        hidden_size: width of the encoder's (each direction) and the decoder's LSTMs.
        gold_tags: the gold taggings to score against.
        max_gold_tags: an upper bound on gold ids.
        **kwargs: `LatentVariableModel`'s ``lr``, ``num_importance_samples`` (m of
            ``test/nll``, 100 by default; 0 skips it), ``val_importance_samples`` (m of
            ``val/nll``) and ``importance_chunk_size`` (20 by default).

    Raises:
        ValueError: `MarginalExpectation` as the estimator (exact for linear costs only).
    """

    importance_samples = 100  # test/nll is importance-sampled: log p(x) is not exact
    importance_chunk = 20

    def __init__(
        self,
        estimator: Estimator,
        encoder: ChainEncoder | None = None,
        num_tags: int = 45,
        input_dim: int = 10000,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        gold_tags: Sequence[str] = ("upos", "xpos"),
        max_gold_tags: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            estimator,
            encoder,
            num_tags=num_tags,
            input_dim=input_dim,
            embedding_dim=embedding_dim,
            hidden_size=hidden_size,
            gold_tags=gold_tags,
            max_gold_tags=max_gold_tags,
            **kwargs,
        )
        if isinstance(self.estimator, MarginalExpectation):
            raise ValueError(
                "LSTMTagger: MarginalExpectation is exact only for costs linear in z; the LSTM "
                "decoder's is not. Use a sampling estimator (e.g. GumbelCRF, Reinforce)."
            )
        self.decoder = LSTMDecoder(num_tags, input_dim, embedding_dim, hidden_size)


# ----------------------------------------------------------------------------- pictures
def confusion_figure(confusion: Tensor, gold: str, names: Sequence[str] | None = None):
    """The cluster × gold-tag matrix as a matplotlib figure, rows normalized, clusters
    ordered by the gold tag they map to (many-to-one), unused gold columns dropped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = confusion.sum(0) > 0
    matrix = confusion[:, used].double()
    labels = [
        names[i] if names and i < len(names) else str(i) for i in used.nonzero().flatten().tolist()
    ]
    mapped, sizes = matrix.argmax(1).tolist(), matrix.sum(1).tolist()
    order = torch.tensor(sorted(range(matrix.shape[0]), key=lambda k: (mapped[k], -sizes[k])))
    matrix = matrix[order]
    rows = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
    figure, axes = plt.subplots(figsize=(0.25 * len(labels) + 2, 0.2 * matrix.shape[0] + 2))
    axes.imshow(rows.numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    axes.set_yticks(range(matrix.shape[0]), [str(i) for i in order.tolist()], fontsize=6)
    axes.set_xlabel(f"gold {gold}")
    axes.set_ylabel("cluster")
    axes.set_title(f"p(gold | cluster), M-1 = {float(many_to_one(confusion)):.3f}")
    figure.tight_layout()
    return figure
