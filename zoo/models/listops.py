r"""Latent-tree classifiers for ListOps (Nangia & Bowman 2018), every estimator, two tree structures.

The label of a ListOps expression is its value; a model that finds its tree
can compute it. The latent-tree classifier is

    x → embeddings → BiLSTM → tree log-potentials θ(x) → q(z | x) → composer(x, z) → p(y | x, z),

trained on  loss = E_{z∼q}[−log p(y | x, z)] − λ H(q)  with the expectation
through the injected estimator (REINFORCE with the greedy, self-critical
baseline of Havrylov et al. 2019; Gumbel-Softmax as the stochastic softmax
trick of Paulus et al. 2020, straight-through, perturb-and-MAP, ...). Two
structures:

* dependency trees, ``z[h, m] = 1`` for h → m and ROOT arcs on the diagonal:
  `DependencyCRF` (projective, Eisner) or `NonProjectiveDependencyCRF`
  (matrix-tree), with biaffine arc scores (Dozat & Manning 2017);
  `DependencyComposer` passes values bottom-up along the head matrix;
* binary constituency trees over spans: `TreeCRF` (CKY) with biaffine span
  scores; `BinaryComposer` combines the two children of every span, CKY-style.

What makes a composer able to compute the value: MIN, MAX, MED and SM are
all functions of the *multiset* of argument values, i.e. of the vector of
value counts c ∈ {0..5}^10 (SM = Σ_v v·c_v mod 10, MED from the sorted
counts, ...). So each node carries a value distribution
p ∈ Δ^{11} (the ten values and "none", which ``]`` and unfinished spans
learn), a parent receives the *sum* of its children's value distributions
(for a hard tree exactly the counts), and an MLP maps (the node's token, the
counts) to its own value. For the dependency composer that is

    c_h^{(t+1)} = Σ_{m ≠ h} z[h, m] p_m^{(t)}[0:10],    p_h^{(t)} = softmax(MLP(e_h, c_h^{(t)})),

``num_rounds`` rounds (a node of height k is exact after k rounds; ListOps
trees have height ≤ 19), and the class distribution is Σ_m z[m, m] p_m, the
root's. For binary trees, the released left-branching trees thread the
counts along each operator's spine: a span's counts are its left child's
plus its right child's value, c_{ij} = Σ_k ω_{ijk} (c_{ik} + p_{k+1,j}), with
ω_{ijk} ∝ z[i, k] z[k+1, j] the split (one-hot for a hard tree), and its
state h_{ij} = MLP(h_{ik}, h_{k+1,j}, c_{ij}) (a Tree-LSTM-style composer
with an additive count channel; Tai et al. 2015 for the Tree-LSTM). With hard
z both are exact tree evaluations; with the relaxed z of Gumbel-Softmax they
pass soft messages (a mean field over splits for binary trees).

Baselines that run through the same CLI and metrics: `LSTMClassifier` (no
tree; Nangia & Bowman's LSTM: 74.4 %) and `GoldTreeClassifier` (the composer
on the released gold tree: the ceiling). Both have a degenerate latent (one
outcome, a ``Categorical`` with a single class, exact by enumeration), so the
base's step and logging apply unchanged.

Metrics (`zoo.metrics.trees`): ``{val,test}/accuracy`` of the prediction
from the MAP tree, and the agreement of that tree with the gold one,
``{val,test}/uas`` for dependency trees and ``{val,test}/tree_f1`` for
binary trees, each also by length bucket (``accuracy_1-10``, ...). Every
validation writes the induced trees of the first examples beside the gold
ones to TensorBoard, as bracketed text and as a picture.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.data.listops import VOCABULARY
from zoo.estimators import Estimator, Exact
from zoo.metrics.trees import AttachmentScore, BucketedAccuracy, SpanF1
from zoo.models.base import Batch, LatentVariableModel
from zoo.structures import (
    Categorical,
    DependencyCRF,
    NonProjectiveDependencyCRF,
    Structure,
    TreeCRF,
)

__all__ = [
    "ArcScorer",
    "BinaryComposer",
    "BinaryTreeClassifier",
    "DependencyComposer",
    "DependencyTreeClassifier",
    "Encoder",
    "GoldTreeClassifier",
    "LSTMClassifier",
    "LatentTreeClassifier",
    "ListOpsClassifier",
    "SpanScorer",
    "gold_arcs",
    "gold_spans",
]

NUM_CLASSES = 10
_NONE = NUM_CLASSES + 1  # value distributions: the ten values and "none"
_TINY = 1e-30


def gold_arcs(batch: Batch) -> Tensor:
    """``(B, N, N)`` float arc indicators of the gold dependency trees (``z[h, m]``, ROOT on the diagonal)."""
    heads, lengths = batch["heads"], batch["lengths"]
    n = heads.shape[-1]
    valid = torch.arange(n, device=heads.device) < lengths[:, None]  # (B, N)
    z = F.one_hot(heads, n).transpose(-1, -2).to(torch.float32)  # z[b, h, m] = [heads[b, m] = h]
    return z * valid[:, None, :]


def gold_spans(batch: Batch) -> Tensor:
    """``(B, N, N)`` float indicators of the gold binary spans i ≤ j."""
    return batch["spans"].to(torch.float32)


# ------------------------------------------------------------------ the parts
class Encoder(nn.Module):
    """Token embeddings and a BiLSTM over the real tokens (padding packed away).

    Args:
        vocabulary_size: token ids are below this (0 is padding).
        embedding_dim: width of the embeddings.
        hidden_dim: width of each direction of the LSTM; the output is ``2 · hidden_dim``.
    """

    def __init__(self, vocabulary_size: int, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.output_dim = 2 * hidden_dim

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, N)`` ids, ``lengths`` ``(B,)`` → states ``(B, N, 2H)`` and final states ``(B, 2H)``."""
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embedding(x), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, (final, _) = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out, torch.cat([final[0], final[1]], -1)


class ArcScorer(nn.Module):
    """Biaffine arc scores (Dozat & Manning 2017): θ[h, m] = a_h^T U b_m + a_h^T u, θ[m, m] = w^T b_m.

    Args:
        input_dim: width of the encoder states.
        arc_dim: width of the head and child projections.
    """

    def __init__(self, input_dim: int, arc_dim: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(input_dim, arc_dim), nn.ReLU())
        self.child = nn.Sequential(nn.Linear(input_dim, arc_dim), nn.ReLU())
        self.bilinear = nn.Parameter(torch.zeros(arc_dim, arc_dim))
        self.head_bias = nn.Linear(arc_dim, 1, bias=False)
        self.root = nn.Linear(arc_dim, 1)

    def forward(self, states: Tensor) -> Tensor:
        """``(B, N, D)`` → ``(B, N, N)`` arc scores head → child, ROOT scores on the diagonal."""
        a, b = self.head(states), self.child(states)
        scores = a @ self.bilinear @ b.transpose(-1, -2) + self.head_bias(a)  # (B, N, N)
        eye = torch.eye(states.shape[1], dtype=torch.bool, device=states.device)
        return torch.where(eye, self.root(b).squeeze(-1)[:, None, :], scores)


class SpanScorer(nn.Module):
    """Biaffine span scores θ[i, j, 0] = a_i^T U b_j + v^T a_i + w^T b_j of a span's first and last token.

    Args:
        input_dim: width of the encoder states.
        span_dim: width of the start and end projections.
    """

    def __init__(self, input_dim: int, span_dim: int) -> None:
        super().__init__()
        self.start = nn.Sequential(nn.Linear(input_dim, span_dim), nn.ReLU())
        self.end = nn.Sequential(nn.Linear(input_dim, span_dim), nn.ReLU())
        self.bilinear = nn.Parameter(torch.zeros(span_dim, span_dim))
        self.start_bias = nn.Linear(span_dim, 1, bias=False)
        self.end_bias = nn.Linear(span_dim, 1)

    def forward(self, states: Tensor) -> Tensor:
        """``(B, N, D)`` → ``(B, N, N, 1)`` span scores (entries i > j are ignored by `TreeCRF`)."""
        a, b = self.start(states), self.end(states)
        scores = (
            a @ self.bilinear @ b.transpose(-1, -2)
            + self.start_bias(a)
            + self.end_bias(b).transpose(-1, -2)
        )
        return scores.unsqueeze(-1)


def multiset_features(counts: Tensor) -> Tensor:
    """Features of a multiset of values from its counts ``(..., 10)`` → ``(..., 32)``.

    The counts themselves, the cumulative counts from below and from above,
    #{values ≤ v} and #{values ≥ v} (MIN is the first v with a value ≤ v, MAX
    the last with a value ≥ v, MED where the two cross), and the phase of the
    sum of values, cos and sin of 2π s / 10 with s = Σ_v v·c_v (SM is s mod 10,
    which a ReLU network reads off a circle, not off the line). All are linear
    or smooth in the counts, so soft counts get soft features.
    """
    values = torch.arange(NUM_CLASSES, device=counts.device, dtype=counts.dtype)
    phase = (counts * values).sum(-1, keepdim=True) * (2 * torch.pi / NUM_CLASSES)
    below = counts.cumsum(-1)
    above = counts.flip(-1).cumsum(-1).flip(-1)
    return torch.cat([counts, below, above, phase.cos(), phase.sin()], -1)


MULTISET_FEATURES = 3 * NUM_CLASSES + 2


def _literal_values(vocabulary_size: int) -> Tensor:
    """``(V, 11)``: the one-hot value of every digit token, zeros for the other tokens."""
    table = torch.zeros(vocabulary_size, _NONE)
    for digit in range(NUM_CLASSES):
        table[VOCABULARY.index(str(digit)), digit] = 1.0
    return table


def _node_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


class DependencyComposer(nn.Module):
    """The value of an expression by bottom-up message passing over a head matrix z.

    Each token m has a value distribution p_m over the ten values and "none";
    a head receives the sum of its children's value distributions and maps it,
    with its own token, through an MLP (see the module docstring). Works on
    hard z (exact tree evaluation after as many rounds as the tree is high)
    and on relaxed z (soft messages).

    Args:
        vocabulary_size: token ids are below this.
        embedding_dim: width of the composer's own token embeddings.
        hidden_dim: width of the node MLP.
        num_rounds: message-passing rounds (at most N are run); a node of height k
            is exact after k rounds (digits need none), and ListOps operators nest 19 deep at
            most. Rounds stop early at a fixpoint (a hard tree's depth, plus one).
    """

    def __init__(
        self, vocabulary_size: int, embedding_dim: int, hidden_dim: int, num_rounds: int = 20
    ) -> None:
        super().__init__()
        if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < 1:
            raise ValueError(f"num_rounds must be an integer ≥ 1, got {num_rounds!r}")
        self.embedding = nn.Embedding(vocabulary_size, embedding_dim, padding_idx=0)
        self.node = _node_mlp(embedding_dim + MULTISET_FEATURES, hidden_dim, _NONE)
        self.num_rounds = num_rounds
        self.register_buffer("literals", _literal_values(vocabulary_size), persistent=False)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """``x`` ``(B, N)`` ids, ``z`` ``(B, N, N)`` arcs (hard or relaxed) → ``(B, 10)`` log p(y)."""
        e = self.embedding(x)
        n = x.shape[-1]
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        children = z.masked_fill(eye, 0.0)  # head → child, the ROOT arcs removed
        literal = self.literals[x]  # (B, N, 11): a digit's value is the digit
        is_digit = literal.sum(-1, keepdim=True)
        counts = e.new_zeros(*x.shape, NUM_CLASSES)
        for _ in range(min(self.num_rounds, n)):
            logits = self.node(torch.cat([e, multiset_features(counts)], -1))
            values = is_digit * literal + (1 - is_digit) * logits.softmax(-1)
            update = children @ values[..., :NUM_CLASSES]  # (B, N, 10): Σ_m z[h, m] p_m
            # A hard tree reaches its fixpoint after as many rounds as it is deep; the
            # rounds after it would recompute the same numbers bit for bit.
            if torch.equal(update, counts):
                break
            counts = update
        # At the root every token speaks through the node MLP, digits included: a hard
        # literal there would cost −log 0 for a wrongly rooted digit.
        logits = self.node(torch.cat([e, multiset_features(counts)], -1))
        log_values = logits[..., :NUM_CLASSES].log_softmax(-1)
        root = z.diagonal(0, -2, -1)  # (B, N)
        # The root's distribution, a mixture of nodes' for relaxed z.
        mixed = (root.unsqueeze(-1) * log_values.exp()).sum(-2)
        return mixed.clamp_min(_TINY).log()


class BinaryComposer(nn.Module):
    """The value of an expression by combining the children of every span of a binary tree z.

    Spans are composed by width, CKY-style: span (i, j) mixes its splits k by
    ω_k ∝ z[i, k] z[k+1, j] and carries a state h (an MLP of its children's
    states and its counts) and counts c (its left child's counts plus its right
    child's value distribution); see the module docstring.

    Args:
        vocabulary_size: token ids are below this.
        embedding_dim: width of the token embeddings.
        hidden_dim: width of span states and of the MLP.
        max_cells: without gradients (evaluation), examples are composed in chunks of
            at most this many span cells (B · N²) to bound memory on long expressions.
    """

    def __init__(
        self, vocabulary_size: int, embedding_dim: int, hidden_dim: int, max_cells: int = 2_000_000
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding_dim, padding_idx=0)
        self.leaf = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.Tanh())
        self.combine = nn.Sequential(
            nn.Linear(2 * hidden_dim + MULTISET_FEATURES, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Tanh(),
        )
        self.value = nn.Linear(hidden_dim, _NONE)
        self.hidden_dim = hidden_dim
        self.max_cells = max_cells
        self.register_buffer("literals", _literal_values(vocabulary_size), persistent=False)

    def forward(self, x: Tensor, z: Tensor, lengths: Tensor) -> Tensor:
        """``x`` ``(B, N)``, ``z`` ``(B, N, N)`` spans (hard or relaxed), ``lengths`` ``(B,)`` → ``(B, 10)`` log p(y)."""
        n = x.shape[-1]
        chunk = max(1, self.max_cells // (n * n))
        if torch.is_grad_enabled() or x.shape[0] <= chunk:
            return self._compose(x, z, lengths)
        return torch.cat(
            [
                self._compose(x[i : i + chunk], z[i : i + chunk], lengths[i : i + chunk])
                for i in range(0, x.shape[0], chunk)
            ]
        )

    def _state(self, h: Tensor, counts: Tensor) -> Tensor:
        values = self.value(h).softmax(-1)[..., :NUM_CLASSES]
        return torch.cat([h, counts, values], -1)

    def _compose(self, x: Tensor, z: Tensor, lengths: Tensor) -> Tensor:
        d, n = self.hidden_dim, x.shape[-1]
        h = self.leaf(self.embedding(x))  # (B, N, d)
        state = self._state(h, h.new_zeros(*x.shape, NUM_CLASSES))  # (B, N, d + 20)
        literal = self.literals[x][..., :NUM_CLASSES]  # a digit's value is the digit
        is_digit = literal.sum(-1, keepdim=True)
        values = is_digit * literal + (1 - is_digit) * state[..., d + NUM_CLASSES :]
        state = torch.cat([state[..., : d + NUM_CLASSES], values], -1)
        # As in zoo's CKY: `starts[:, i, v-1]` is the span of width v starting at i,
        # `ends[:, j, w-v]` the span of width v ending at j + w - 1; the splits of
        # all spans of the next width are then one slice of each.
        starts = ends = state.unsqueeze(2)
        root = [state[:, 0]]  # the span (0, w - 1) for every width w
        index = torch.arange(n, device=x.device)
        for w in range(2, n + 1):
            m = n - w + 1
            left, right = starts[:, :m], ends[:, 1:]  # (B, m, w-1, ·)
            i = index[:m, None]
            a = index[None, 1:w]  # left widths 1..w-1
            weight = z[:, i, i + a - 1] * z[:, i + a, i + w - 1]  # (B, m, w-1)
            weight = weight / (weight.sum(-1, keepdim=True) + 1e-6)
            # Mixing each part on its own spares a concatenated (B, m, w-1, 2d + 10) copy.
            counts = torch.einsum("bmk,bmkf->bmf", weight, left[..., d : d + NUM_CLASSES]) + (
                torch.einsum("bmk,bmkf->bmf", weight, right[..., d + NUM_CLASSES :])
            )
            h_left = torch.einsum("bmk,bmkf->bmf", weight, left[..., :d])
            h_right = torch.einsum("bmk,bmkf->bmf", weight, right[..., :d])
            h = self.combine(torch.cat([h_left, h_right, multiset_features(counts)], -1))
            span = self._state(h, counts)  # (B, m, d + 20)
            starts = torch.cat([left, span.unsqueeze(2)], 2)
            ends = torch.cat([span.unsqueeze(2), right], 2)
            root.append(span[:, 0])
        top = torch.stack(root, 1)[torch.arange(x.shape[0], device=x.device), lengths - 1]
        return self.value(top[:, :d])[:, :NUM_CLASSES].log_softmax(-1)


# ------------------------------------------------------------------ pictures
def bracketed(tokens: list[str], tree: Tensor, kind: str) -> str:
    """A tree as bracketed text: ``(head child …)`` for dependency trees, ``(left right)`` for binary ones.

    Args:
        tokens: the N symbols.
        tree: ``(≥N, ≥N)`` arc indicators ``z[h, m]`` or span indicators ``z[i, j]``.
        kind: ``"dependency"`` or ``"binary"``.
    """
    n = len(tokens)
    z = tree[:n, :n] > 0.5
    if kind == "dependency":
        heads = z.to(torch.float32).argmax(0).tolist()  # the head of every token (itself: ROOT)
        children: list[list[int]] = [[] for _ in range(n)]
        for m, h in enumerate(heads):
            if h != m:
                children[h].append(m)

        def dep(m: int, seen: frozenset[int]) -> str:
            if not children[m] or m in seen:
                return tokens[m]
            inner = " ".join(dep(c, seen | {m}) for c in [m, *children[m]] if c != m)
            return f"({tokens[m]} {inner})"

        return " ".join(dep(m, frozenset()) for m in range(n) if heads[m] == m)

    def span(i: int, j: int) -> str:
        if i == j:
            return tokens[i]
        for k in range(i, j):
            if z[i, k] and z[k + 1, j]:
                return f"({span(i, k)} {span(k + 1, j)})"
        return "(" + " ".join(tokens[i : j + 1]) + ")"

    return span(0, n - 1)


def draw_trees(batch: Batch, gold: Tensor, induced: Tensor | None, kind: str, count: int):
    """A matplotlib figure: per example its symbols, the gold tree above them, the induced one below.

    Dependency arcs are drawn as half-ellipses from head to child (a ROOT arc as a
    vertical line); binary spans (wider than one symbol) as brackets at height
    their width.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Arc

    lengths = [int(n) for n in batch["lengths"][:count]]
    width = max(4.0, 0.45 * max(lengths))
    figure, axes = plt.subplots(count, 1, figsize=(width, 2.6 * count), squeeze=False)
    for b, ax in enumerate(axes[:, 0]):
        n = lengths[b]
        for m in range(n):
            ax.text(m, 0, VOCABULARY[int(batch["x"][b, m])], ha="center", va="center", fontsize=8)
        top = 1.0
        for sign, tree, color in ((1, gold[b], "tab:blue"), (-1, induced, "tab:red")):
            if tree is None:
                continue
            if sign < 0:
                tree = tree[b]
            z = tree[:n, :n] > 0.5
            for i, j in z.nonzero().tolist():
                if kind == "dependency":
                    if i == j:
                        ax.plot([j, j], [sign * 0.3, sign * (n / 4 + 1)], color=color, lw=0.8)
                    else:
                        height = abs(i - j) / 2 + 0.5
                        top = max(top, height)
                        ax.add_patch(
                            Arc(
                                ((i + j) / 2, sign * 0.3),
                                abs(i - j),
                                2 * height,
                                theta1=0 if sign > 0 else 180,
                                theta2=180 if sign > 0 else 360,
                                color=color,
                                lw=0.8,
                            )
                        )
                        ax.plot(j, sign * 0.3, marker="v" if sign > 0 else "^", color=color, ms=3)
                elif i < j:
                    height = sign * (0.3 + 0.25 * (j - i))
                    top = max(top, abs(height))
                    ax.plot(
                        [i, i, j, j], [sign * 0.3, height, height, sign * 0.3], color=color, lw=0.8
                    )
        ax.set_xlim(-1, max(n, 2))
        ax.set_ylim(-top - 0.5, top + 0.5)
        ax.axis("off")
        ax.set_title(
            f"y = {int(batch['y'][b])}: gold (blue, above), induced (red, below)", fontsize=8
        )
    figure.tight_layout()
    return figure


# ------------------------------------------------------------------ the models
class ListOpsClassifier(LatentVariableModel):
    """Shared base of the ListOps models: metrics, tree pictures, the classifier's cost.

    A subclass writes ``posterior`` and ``log_probs(z, batch)`` (``(S, B, *event)`` →
    ``(S, B, 10)``) and, for a latent tree, ``as_tree`` and ``gold_tree``.

    Args:
        estimator: the gradient estimator of E_q[−log p(y | x, z)].
        input_dim: the vocabulary size (linked from the datamodule).
        lr: learning rate of Adam.
        boundaries: inclusive upper edges of the length buckets of the metrics.
        num_tree_images: examples whose trees are drawn to TensorBoard every validation.
    """

    objective_name = "loss"
    cost_name = "cross_entropy"
    tree_metric: ClassVar[str | None] = None
    """``"uas"`` or ``"tree_f1"``: the tree agreement this model logs, or None."""

    def __init__(
        self,
        estimator: Estimator,
        input_dim: int = len(VOCABULARY),
        lr: float = 1e-3,
        boundaries: tuple[int, ...] = (10, 25, 50, 100, 200),
        num_tree_images: int = 4,
    ) -> None:
        super().__init__(estimator, lr=lr, num_importance_samples=0, val_importance_samples=0)
        if (
            isinstance(input_dim, bool)
            or not isinstance(input_dim, int)
            or input_dim < len(VOCABULARY)
        ):
            raise ValueError(
                f"input_dim must be an integer ≥ {len(VOCABULARY)} (the ListOps vocabulary), "
                f"got {input_dim!r}"
            )
        self.input_dim = input_dim
        self.num_tree_images = num_tree_images
        edges = tuple(boundaries)
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        "accuracy": BucketedAccuracy(edges),
                        **({"uas": AttachmentScore(edges)} if self.tree_metric == "uas" else {}),
                        **({"tree_f1": SpanF1(edges)} if self.tree_metric == "tree_f1" else {}),
                    }
                )
                for stage in ("val", "test")
            }
        )

    # ------------------------------------------------------ what subclasses write
    def log_probs(self, z: Tensor, batch: Batch) -> Tensor:
        """log p(y | x, z): z ``(S, B, *event)`` → ``(S, B, 10)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_probs(z, batch)")

    def as_tree(self, z: Tensor) -> Tensor | None:
        """A latent z ``(B, *event)`` as the tree the metrics compare, ``(B, N, N)``; None: no tree."""
        return None

    def gold_tree(self, batch: Batch) -> Tensor | None:
        """The gold tree in this model's layout ``(B, N, N)``, or None."""
        return None

    # ------------------------------------------------------------------ the cost
    def cost(self, z: Tensor, batch: Batch) -> Tensor:
        """−log p(y | x, z): ``(S, B, *event)`` → ``(S, B)``."""
        log_p = self.log_probs(z, batch)  # (S, B, 10)
        target = batch["y"].expand(log_p.shape[0], -1)
        return -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def predict(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Class scores ``(B, 10)`` from the MAP tree, and that tree ``(B, N, N)`` (or None)."""
        z = self.posterior(batch).argmax()
        return self.log_probs(z.unsqueeze(0), batch)[0], self.as_tree(z)

    # ------------------------------------------------------------ val and test
    def _evaluate(self, batch: Batch, stage: str, batch_idx: int) -> None:
        scores, tree = self.predict(batch)
        metrics = self.metrics[stage]
        metrics["accuracy"].update(scores, batch["y"], batch["lengths"])
        if tree is not None and self.tree_metric is not None:
            metrics[self.tree_metric].update(tree, self.gold_tree(batch), batch["lengths"])
        if stage == "val" and batch_idx == 0 and self.num_tree_images > 0:
            self._draw_trees(batch, tree)

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = super().validation_step(batch, batch_idx)
        self._evaluate(batch, "val", batch_idx)
        return loss

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = super().test_step(batch, batch_idx)
        self._evaluate(batch, "test", batch_idx)
        return loss

    def _log_metrics(self, stage: str) -> None:
        for name, metric in self.metrics[stage].items():
            if not metric.update_called:
                continue
            for bucket, value in metric.compute().items():
                key = f"{stage}/{name}" if bucket == "" else f"{stage}/{name}_{bucket}"
                self.log(key, value.float(), prog_bar=bucket == "" and name == "accuracy")
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def hparams_metric_names(self) -> list[str]:
        names = [*super().hparams_metric_names(), "val/accuracy", "test/accuracy"]
        if self.tree_metric is not None:
            names += [f"val/{self.tree_metric}", f"test/{self.tree_metric}"]
        return names

    # ---------------------------------------------------------------- pictures
    def _draw_trees(self, batch: Batch, tree: Tensor | None) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        writers = [lg.experiment for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers or self.global_rank != 0 or self.trainer.sanity_checking:
            return
        gold = self.gold_tree(batch)
        kind = "dependency" if self.tree_metric == "uas" else "binary"
        count = min(self.num_tree_images, batch["x"].shape[0])
        texts = []
        for b in range(count):
            tokens = [VOCABULARY[int(t)] for t in batch["x"][b, : int(batch["lengths"][b])]]
            lines = [f"expression {b}: `{' '.join(tokens)}` = {int(batch['y'][b])}"]
            if gold is not None:
                lines.append(f"gold: `{bracketed(tokens, gold[b], kind)}`")
            if tree is not None:
                lines.append(f"induced: `{bracketed(tokens, tree[b], kind)}`")
            texts.append("  \n".join(lines))
        figure = draw_trees(batch, gold, tree, kind, count) if gold is not None else None
        for writer in writers:
            writer.add_text("val/trees", "\n\n".join(texts), self.global_step)
            if figure is not None:
                writer.add_figure("val/trees", figure, self.global_step, close=False)
        if figure is not None:
            import matplotlib.pyplot as plt

            plt.close(figure)


class LatentTreeClassifier(ListOpsClassifier):
    """Encoder → tree log-potentials → structure → composer; subclasses choose the structure.

    Args:
        estimator: the gradient estimator of E_q[−log p(y | x, z)].
        input_dim: the vocabulary size (linked from the datamodule).
        embedding_dim: width of the token embeddings (encoder and composer each have their own).
        hidden_dim: width of each LSTM direction and of the composer.
        score_dim: width of the biaffine projections.
        entropy_weight: λ ≥ 0 of the entropy bonus −λ H(q) in the loss.
        lr: learning rate of Adam.
        boundaries: inclusive upper edges of the length buckets of the metrics.
        num_tree_images: examples whose trees are drawn every validation.
    """

    regularizer_name = "entropy_bonus"

    def __init__(
        self,
        estimator: Estimator,
        input_dim: int = len(VOCABULARY),
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        score_dim: int = 64,
        entropy_weight: float = 0.0,
        lr: float = 1e-3,
        boundaries: tuple[int, ...] = (10, 25, 50, 100, 200),
        num_tree_images: int = 4,
    ) -> None:
        super().__init__(estimator, input_dim, lr, boundaries, num_tree_images)
        if not float(entropy_weight) >= 0:
            raise ValueError(f"entropy_weight must be ≥ 0, got {entropy_weight!r}")
        self.entropy_weight = float(entropy_weight)
        self.encoder = Encoder(input_dim, embedding_dim, hidden_dim)

    def structure(self, scores: Tensor, lengths: Tensor) -> Structure:
        raise NotImplementedError

    def potentials(self, states: Tensor) -> Tensor:
        raise NotImplementedError

    def posterior(self, batch: Batch) -> Structure:
        """q(z | x): batch shape ``(B,)``."""
        states, _ = self.encoder(batch["x"], batch["lengths"])
        return self.structure(self.potentials(states), batch["lengths"])

    def regularizer(self, q: Structure, batch: Batch) -> Tensor:
        """−λ H(q): ``(B,)`` (zeros without computing H when λ = 0)."""
        if self.entropy_weight == 0:
            return q.log_potentials.new_zeros(q.batch_shape)
        return -self.entropy_weight * q.entropy()

    def as_tree(self, z: Tensor) -> Tensor:
        return z


class DependencyTreeClassifier(LatentTreeClassifier):
    """Latent dependency trees: biaffine arcs → `DependencyCRF` or `NonProjectiveDependencyCRF` → `DependencyComposer`.

    Args:
        estimator: the gradient estimator of E_q[−log p(y | x, z)].
        projective: `DependencyCRF` (Eisner; the gold trees are projective) or, if
            False, `NonProjectiveDependencyCRF` (matrix-tree). Single root either way.
        input_dim: the vocabulary size (linked from the datamodule).
        embedding_dim: width of the token embeddings.
        hidden_dim: width of each LSTM direction and of the composer.
        score_dim: width of the biaffine projections.
        num_rounds: message-passing rounds of the composer.
        entropy_weight: λ ≥ 0 of the entropy bonus.
        lr: learning rate of Adam.
        boundaries: inclusive upper edges of the length buckets of the metrics.
        num_tree_images: examples whose trees are drawn every validation.

    Example:
        >>> from zoo.data.listops import collate, generate
        >>> from zoo.estimators import Reinforce, GreedyBaseline
        >>> model = DependencyTreeClassifier(Reinforce(2, baseline=GreedyBaseline()), hidden_dim=8)
        >>> model(collate(generate(3, seed=0, min_length=2))).shape
        torch.Size([3])
    """

    tree_metric = "uas"

    def __init__(
        self,
        estimator: Estimator,
        projective: bool = True,
        input_dim: int = len(VOCABULARY),
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        score_dim: int = 64,
        num_rounds: int = 20,
        entropy_weight: float = 0.0,
        lr: float = 1e-3,
        boundaries: tuple[int, ...] = (10, 25, 50, 100, 200),
        num_tree_images: int = 4,
    ) -> None:
        super().__init__(
            estimator,
            input_dim,
            embedding_dim,
            hidden_dim,
            score_dim,
            entropy_weight,
            lr,
            boundaries,
            num_tree_images,
        )
        self.projective = bool(projective)
        self.scorer = ArcScorer(self.encoder.output_dim, score_dim)
        self.composer = DependencyComposer(input_dim, embedding_dim, hidden_dim, num_rounds)

    def potentials(self, states: Tensor) -> Tensor:
        return self.scorer(states)

    def structure(self, scores: Tensor, lengths: Tensor) -> Structure:
        kind = DependencyCRF if self.projective else NonProjectiveDependencyCRF
        return kind(scores, lengths=lengths, multiroot=False, validate_args=False)

    def log_probs(self, z: Tensor, batch: Batch) -> Tensor:
        s, b, n = z.shape[0], z.shape[1], z.shape[-1]
        x = batch["x"].expand(s, b, n).reshape(s * b, n)
        return self.composer(x, z.reshape(s * b, n, n)).reshape(s, b, NUM_CLASSES)

    def gold_tree(self, batch: Batch) -> Tensor:
        return gold_arcs(batch)


class BinaryTreeClassifier(LatentTreeClassifier):
    """Latent binary constituency trees: biaffine spans → `TreeCRF` → `BinaryComposer`.

    Args:
        estimator: the gradient estimator of E_q[−log p(y | x, z)].
        input_dim: the vocabulary size (linked from the datamodule).
        embedding_dim: width of the token embeddings.
        hidden_dim: width of each LSTM direction and of the composer.
        score_dim: width of the biaffine projections.
        entropy_weight: λ ≥ 0 of the entropy bonus.
        lr: learning rate of Adam.
        boundaries: inclusive upper edges of the length buckets of the metrics.
        num_tree_images: examples whose trees are drawn every validation.
    """

    tree_metric = "tree_f1"

    def __init__(
        self,
        estimator: Estimator,
        input_dim: int = len(VOCABULARY),
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        score_dim: int = 64,
        entropy_weight: float = 0.0,
        lr: float = 1e-3,
        boundaries: tuple[int, ...] = (10, 25, 50, 100, 200),
        num_tree_images: int = 4,
    ) -> None:
        super().__init__(
            estimator,
            input_dim,
            embedding_dim,
            hidden_dim,
            score_dim,
            entropy_weight,
            lr,
            boundaries,
            num_tree_images,
        )
        self.scorer = SpanScorer(self.encoder.output_dim, score_dim)
        self.composer = BinaryComposer(input_dim, embedding_dim, hidden_dim)

    def potentials(self, states: Tensor) -> Tensor:
        return self.scorer(states)

    def structure(self, scores: Tensor, lengths: Tensor) -> Structure:
        return TreeCRF(scores, lengths=lengths, validate_args=False)

    def log_probs(self, z: Tensor, batch: Batch) -> Tensor:
        s, b, n = z.shape[0], z.shape[1], z.shape[2]
        x = batch["x"].expand(s, b, n).reshape(s * b, n)
        lengths = batch["lengths"].repeat(s)
        out = self.composer(x, z.sum(-1).reshape(s * b, n, n), lengths)
        return out.reshape(s, b, NUM_CLASSES)

    def as_tree(self, z: Tensor) -> Tensor:
        return z.sum(-1)  # (B, N, N): the labels (one) summed

    def gold_tree(self, batch: Batch) -> Tensor:
        return gold_spans(batch)


class _FixedLatent(ListOpsClassifier):
    """A ListOps model without a latent to estimate: q is a point mass (one outcome).

    The estimator defaults to `Exact`, which evaluates the cost once, so the
    loss is the plain cross-entropy and its gradient exact.
    """

    def posterior(self, batch: Batch) -> Structure:
        """The one-outcome distribution: a ``Categorical`` with one class, batch shape ``(B,)``."""
        return Categorical(batch["x"].new_zeros(batch["x"].shape[0], 1, 1, dtype=torch.float32))

    def predict(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        with torch.no_grad():
            one = self.posterior(batch).log_potentials.new_ones(1, batch["x"].shape[0], 1, 1)
            return self.log_probs(one, batch)[0], self.gold_tree(batch)


class LSTMClassifier(_FixedLatent):
    """The no-tree baseline: a BiLSTM's final states → an MLP → 10 classes.

    Args:
        estimator: None (default): `Exact` (there is nothing to estimate).
        input_dim: the vocabulary size (linked from the datamodule).
        embedding_dim: width of the token embeddings.
        hidden_dim: width of each LSTM direction and of the MLP.
        lr: learning rate of Adam.
        boundaries: inclusive upper edges of the length buckets of the metrics.
    """

    def __init__(
        self,
        estimator: Estimator | None = None,
        input_dim: int = len(VOCABULARY),
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        lr: float = 1e-3,
        boundaries: tuple[int, ...] = (10, 25, 50, 100, 200),
    ) -> None:
        super().__init__(Exact() if estimator is None else estimator, input_dim, lr, boundaries, 0)
        self.encoder = Encoder(input_dim, embedding_dim, hidden_dim)
        self.classifier = nn.Sequential(
            nn.Linear(self.encoder.output_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, NUM_CLASSES),
        )

    def log_probs(self, z: Tensor, batch: Batch) -> Tensor:
        _, final = self.encoder(batch["x"], batch["lengths"])
        log_p = self.classifier(final).log_softmax(-1)  # (B, 10)
        return log_p.expand(z.shape[0], *log_p.shape)


class GoldTreeClassifier(_FixedLatent):
    """The ceiling: the composer on the released gold tree (dependency heads or binary spans).

    Args:
        estimator: None (default): `Exact` (there is nothing to estimate).
        tree: ``"dependency"`` (`DependencyComposer` on the gold heads) or ``"binary"``
            (`BinaryComposer` on the gold spans).
        input_dim: the vocabulary size (linked from the datamodule).
        embedding_dim: width of the composer's token embeddings.
        hidden_dim: width of the composer.
        num_rounds: message-passing rounds of the dependency composer.
        lr: learning rate of Adam.
        boundaries: inclusive upper edges of the length buckets of the metrics.

    Raises:
        ValueError: an unknown ``tree``.
    """

    def __init__(
        self,
        estimator: Estimator | None = None,
        tree: Literal["dependency", "binary"] = "dependency",
        input_dim: int = len(VOCABULARY),
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        num_rounds: int = 20,
        lr: float = 1e-3,
        boundaries: tuple[int, ...] = (10, 25, 50, 100, 200),
    ) -> None:
        super().__init__(Exact() if estimator is None else estimator, input_dim, lr, boundaries, 0)
        if tree not in ("dependency", "binary"):
            raise ValueError(f"tree must be 'dependency' or 'binary', got {tree!r}")
        self.tree = tree
        if tree == "dependency":
            self.composer = DependencyComposer(input_dim, embedding_dim, hidden_dim, num_rounds)
        else:
            self.composer = BinaryComposer(input_dim, embedding_dim, hidden_dim)

    def gold_tree(self, batch: Batch) -> Tensor:
        return gold_arcs(batch) if self.tree == "dependency" else gold_spans(batch)

    def log_probs(self, z: Tensor, batch: Batch) -> Tensor:
        gold = self.gold_tree(batch)
        if self.tree == "dependency":
            log_p = self.composer(batch["x"], gold)
        else:
            log_p = self.composer(batch["x"], gold, batch["lengths"])
        return log_p.expand(z.shape[0], *log_p.shape)
