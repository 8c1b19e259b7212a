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

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.config import Configurable
from zoo.estimators import Estimate, Estimator, Exact
from zoo.listops_vocabulary import VOCABULARY
from zoo.metrics.trees import AttachmentScore, BucketedAccuracy, SpanF1
from zoo.models.base import Batch, LatentVariableModel, Step
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
    "DependencyComposer",
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
        self.bilinear = nn.Parameter(torch.empty(arc_dim, arc_dim))
        self.head_bias = nn.Linear(arc_dim, 1, bias=False)
        self.root = nn.Linear(arc_dim, 1)
        # A random U gives each child its own head preference; a zero U (or a head bias
        # larger than it) gives them all one, and the MAP trees at step 0 are stars.
        nn.init.orthogonal_(self.bilinear)
        nn.init.zeros_(self.head_bias.weight)

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
        self.bilinear = nn.Parameter(torch.empty(span_dim, span_dim))
        self.start_bias = nn.Linear(span_dim, 1, bias=False)
        self.end_bias = nn.Linear(span_dim, 1)
        nn.init.orthogonal_(self.bilinear)  # as `ArcScorer`: no shared preference at step 0
        nn.init.zeros_(self.start_bias.weight)

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


class DependencyComposer(Configurable, nn.Module):
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
        num_rounds: message-passing rounds on a relaxed z (at most N are run). A node of
            height k is exact after k rounds (digits need none); a hard z (every entry 0 or 1,
            samples and MAP trees, also under straight-through gradients) runs until its
            fixpoint, its depth plus one, whatever this says, so a deep tree is never cut short.
    """

    def __init__(
        self,
        vocabulary_size: int = len(VOCABULARY),
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        num_rounds: int = 20,
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
        hard = bool(((z == 0) | (z == 1)).all())
        for _ in range(n if hard else min(self.num_rounds, n)):
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
        # The root's distribution: a mixture of nodes' for relaxed z, the mean of the
        # roots' for a multi-rooted z.
        mixed = (root.unsqueeze(-1) * log_values.exp()).sum(-2)
        mixed = mixed / root.sum(-1, keepdim=True).clamp_min(_TINY)
        return mixed.clamp_min(_TINY).log()


class BinaryComposer(Configurable, nn.Module):
    """The value of an expression by combining the children of every span of a binary tree z.

    Spans are composed by width, CKY-style: span (i, j) mixes its splits k by
    ω_k ∝ z[i, k] z[k+1, j] and carries a state h (an MLP of its children's
    states and its counts) and counts c (its left child's counts plus its right
    child's value distribution); see the module docstring.

    Two evaluations of that one definition:

    * a hard z without a gradient (REINFORCE's samples, the MAP tree, gold
      trees): each example a binary tree of its length, only its 2L − 1 spans
      are composed, bottom-up by height, one ``combine`` call per level for
      the whole batch, so a step costs O(B · N) MLP rows instead of O(B · N²)
      and no O(N³) mixing;
    * a relaxed z, or one that carries a gradient (straight-through estimators:
      the gradient w.r.t. every z[i, j] needs the state of every span): the
      full chart, each span's state written once into a preallocated
      ``[width, start]`` table, each width's left and right children read as two
      strided views of it (`_Mix`), and their gradients accumulated in place
      into a second table (`_Write`). Where few splits weigh anything (the hard
      values of a straight-through z) only those children are read, and only
      the spans with a weighted split go through the MLP: the others share the
      state of zero inputs.

    Both give the same numbers (to float rounding) on the same hard z.

    Args:
        vocabulary_size: token ids are below this.
        embedding_dim: width of the token embeddings.
        hidden_dim: width of span states and of the MLP.
        max_cells: without gradients (evaluation), relaxed z are composed in chunks of
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
        if not (torch.is_grad_enabled() and z.requires_grad):
            plan = self._tree_plan(z, lengths)
            if plan is not None:
                return self._compose_tree(x, plan)
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

    # --------------------------------------------------------------- hard trees
    @staticmethod
    def _region(lengths: Tensor, n: int) -> Tensor:
        """``(B, N, N)``: the spans i ≤ j < L, all the entries of z the chart reads."""
        index = torch.arange(n, device=lengths.device)
        return (index[:, None] <= index) & (index < lengths[:, None])[:, None, :]

    @staticmethod
    def _tree_splits(spans: Tensor, lengths: Tensor) -> tuple[Tensor, ...] | None:
        """``(b, i, j, k)``: the inner spans and their splits where ``spans`` is a binary tree of each example.

        ``spans`` ``(B, N, N)`` bool, within the region: a tree when it marks
        2 L − 1 spans, the L tokens and the root (0, L − 1) among them, and every
        other marked span (i, j) has its longest marked proper prefix (i, k) and
        the rest (k + 1, j) marked: the root's splits then reach all 2 L − 1, so
        each marked span has one marked split. None otherwise.
        """
        bsz, n = spans.shape[0], spans.shape[-1]
        if bsz == 0 or not bool(((lengths >= 1) & (lengths <= n)).all()):
            return None
        index = torch.arange(n, device=spans.device)
        batch = torch.arange(bsz, device=spans.device)
        if not (
            torch.equal(spans.diagonal(0, 1, 2), index < lengths[:, None])
            and torch.equal(spans.sum((1, 2)), 2 * lengths - 1)
            and bool(spans[batch, 0, lengths - 1].all())
        ):
            return None
        b, i, j = (spans & (index[:, None] != index)).nonzero().unbind(1)
        k = torch.where(spans, index, -1).cummax(-1).values[b, i, j - 1]
        if not bool(spans[b, k + 1, j].all()):
            return None
        return b, i, j, k

    @staticmethod
    def _tree_plan(z: Tensor, lengths: Tensor) -> dict[str, Any] | None:
        """The bottom-up schedule of a batch of hard binary trees; None where z is not one.

        z is one when its entries in the region (`_region`) are 0 or 1 and its
        ones are a binary tree of each example (`_tree_splits`); the relaxed path
        then weighs each tree span's one split 1 / (1 + 1e-6), the others 0.

        Nodes are the tokens ``b · N + i`` and the P inner spans ``B · N + p``. A
        node's level is its height (tokens 0); each level's states are split by
        the level of their parents, so that a level reads its children from the
        chunks the levels below left for it (``pending``): every state is copied
        O(1) times, forward and backward.

        Returns:
            ``levels``: per level, the rows to compose (level 0: token positions in
            ``x.flatten()``; above: the positions of the left and right children
            among the level's pending chunks) and the sizes of its chunks by
            parent level; ``roots``: the position of every example's root among
            the chunks of the top level; ``top``: the number of levels; ``weight``:
            1 / (1 + 1e-6) in z's dtype.
        """
        bsz, n = z.shape[0], z.shape[-1]
        device = z.device
        lengths = lengths.to(device=device, dtype=torch.long)
        inside = torch.where(BinaryComposer._region(lengths, n), z.detach(), 0.0)
        if not bool(((inside == 0) | (inside == 1)).all()):
            return None  # relaxed
        tree = BinaryComposer._tree_splits(inside == 1, lengths)
        if tree is None:
            return None
        b, i, j, k = tree
        index = torch.arange(n, device=device)
        batch = torch.arange(bsz, device=device)
        real = index < lengths[:, None]  # (B, N) the tokens
        leaves, inner = bsz * n, b.shape[0]
        ids = torch.full((bsz, n, n), -1, dtype=torch.long, device=device)
        ids.diagonal(0, 1, 2).copy_(batch[:, None] * n + index)
        ids[b, i, j] = leaves + torch.arange(inner, device=device)
        left, right = ids[b, i, k], ids[b, k + 1, j]
        height = torch.zeros(leaves + inner, dtype=torch.long, device=device)
        while True:  # one round per level of the highest tree
            up = 1 + torch.maximum(height[left], height[right])
            if torch.equal(up, height[leaves:]):
                break
            height[leaves:] = up
        top = int(height.max()) + 1  # the roots' "parent": the output
        roots = ids[batch, 0, lengths - 1]
        parent = torch.full_like(height, -1)
        parent[left] = height[leaves:]
        parent[right] = height[leaves:]
        parent[roots] = top
        nodes = torch.cat(
            [(batch[:, None] * n + index)[real], leaves + torch.arange(inner, device=device)]
        )
        own, above = height[nodes], parent[nodes]
        span = top + 1
        by_level = nodes[torch.argsort(own * span + above, stable=True)]
        by_parent = torch.argsort(above * span + own, stable=True)
        groups = torch.bincount(above, minlength=span)
        position = torch.empty_like(height)  # a node's row among its parent level's chunks
        position[nodes[by_parent]] = (
            torch.arange(nodes.shape[0], device=device)
            - (groups.cumsum(0) - groups)[above[by_parent]]
        )
        table = torch.bincount(own * span + above, minlength=top * span).view(top, span).tolist()
        levels, offset = [], 0
        for s, row in enumerate(table):
            level = by_level[offset : offset + sum(row)]
            offset += sum(row)
            if s == 0:
                levels.append((level, None, row[1:]))
            else:
                inner_level = level - leaves
                levels.append(
                    (position[left[inner_level]], position[right[inner_level]], row[s + 1 :])
                )
        one = z.detach().new_ones(())
        weight = one / (one + 1e-6)
        return {"levels": levels, "roots": position[roots], "top": top, "weight": weight}

    def _compose_tree(self, x: Tensor, plan: dict[str, Any]) -> Tensor:
        d, top = self.hidden_dim, plan["top"]
        pending: list[list[Tensor]] = [[] for _ in range(top + 1)]
        weight = plan["weight"]  # the relaxed path's weight of a tree's split
        for s, (first, second, sizes) in enumerate(plan["levels"]):
            if s == 0:
                tokens = x.flatten()[first]
                h = self.leaf(self.embedding(tokens))
                literal = self.literals[tokens][:, :NUM_CLASSES]  # a digit's value is the digit
                is_digit = literal.sum(-1, keepdim=True)
                values = self.value(h).softmax(-1)[:, :NUM_CLASSES]
                values = is_digit * literal + (1 - is_digit) * values
                counts = h.new_zeros(h.shape[0], NUM_CLASSES)
            else:
                below = pending[s]
                children = below[0] if len(below) == 1 else torch.cat(below)
                h_left, counts_left, _ = children[first].split([d, NUM_CLASSES, NUM_CLASSES], -1)
                h_right, _, values_right = children[second].split([d, NUM_CLASSES, NUM_CLASSES], -1)
                counts = weight * counts_left + weight * values_right
                features = [weight * h_left, weight * h_right, multiset_features(counts)]
                h = self.combine(torch.cat(features, -1))
                values = self.value(h).softmax(-1)[:, :NUM_CLASSES]
            state = torch.cat([h, counts, values], -1)
            for t, chunk in enumerate(torch.split(state, sizes), start=s + 1):
                if chunk.shape[0]:
                    pending[t].append(chunk)
        roots = pending[top]
        root = (roots[0] if len(roots) == 1 else torch.cat(roots))[plan["roots"]]
        return self.value(root[:, :d])[:, :NUM_CLASSES].log_softmax(-1)

    # ------------------------------------------------------------ relaxed trees
    class _Write(torch.autograd.Function):
        """One width's spans into the chart, and later their gradients out of it.

        ``chart["states"][a - 1, i, b]`` holds (counts, h, values) of span
        (i, i + a − 1): a left child is read as its first d + 10 features, a right
        one as its last. The returned token orders the backward: `_Mix` of width w
        takes the token of width w − 1, which took the one before, so the gradient
        of width a is read only after every wider `_Mix` has added to it.
        """

        @staticmethod
        def forward(
            ctx: Any,
            chart: dict[str, Any],
            width: int,
            token: Tensor | None,
            h: Tensor,
            counts: Tensor,
            values: Tensor,
        ) -> Tensor:
            m, d = h.shape[0], h.shape[-1]
            row = chart["states"][width - 1, :m]
            row[..., :NUM_CLASSES] = counts
            row[..., NUM_CLASSES : NUM_CLASSES + d] = h
            row[..., NUM_CLASSES + d :] = values
            ctx.chart, ctx.width, ctx.m, ctx.d = chart, width, m, d
            return h.new_zeros(())

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
            chart, width, m, d = ctx.chart, ctx.width, ctx.m, ctx.d
            token = grad.new_zeros(()) if ctx.needs_input_grad[2] else None
            if chart["grads"] is None:  # no wider span used it
                return None, None, token, None, None, None
            counts, h, values = chart["grads"][width - 1, :m].split(
                [NUM_CLASSES, d, NUM_CLASSES], -1
            )
            return None, None, token, h, counts, values

    class _Mix(torch.autograd.Function):
        """The split-weighted sums of the left and right children of every span of one width.

        ``weight`` ``(m, B, w − 1)``: ω of span (i, i + w − 1) for left widths
        1..w − 1. Dense: the children are strided views of the chart (the right
        children too: span (i + a, i + w − 1) of width w − a is row (w − a − 1,
        i + a), one stride per width), one batched matrix-vector product each way,
        and the backward adds ω ⊗ grad into the chart's gradient in place.
        ``pairs`` (the (row i · B + b, split) of the nonzero ω, when they are few, as
        for the hard values of a straight-through z): only those children are read
        and given gradients. Either way ∂ω is computed only for the spans whose
        gradient is not zero (with hard values, those of the tree): what is skipped
        is zeros.
        """

        @staticmethod
        def _children(chart: Tensor, width: int, m: int, side: int) -> Tensor:
            """``(m·B, w − 1, d + 10)`` views: left children by left width, right ones by their own width."""
            n, _, bsz, f = chart.shape
            part = f - NUM_CLASSES
            if side == 0:
                view = chart[: width - 1, :m, :, :part]
            else:  # row (c, w − 1 − c + i): a constant stride over the widths c
                view = chart.as_strided(
                    (width - 1, m, bsz, part),
                    ((n - 1) * bsz * f, bsz * f, f, 1),
                    chart.storage_offset() + (width - 1) * bsz * f + NUM_CLASSES,
                )
            return view.permute(1, 2, 0, 3).flatten(0, 1)

        @staticmethod
        def _rows(chart: Tensor, width: int, row: Tensor, split: Tensor) -> tuple[Tensor, Tensor]:
            """Rows of ``chart.view(-1, f)``: the left and right child of split ``split`` of span row ``row``."""
            n, bsz = chart.shape[1], chart.shape[2]
            left = split * (n * bsz) + row
            right = (width - 2 - split) * (n * bsz) + (split + 1) * bsz + row
            return left, right

        @staticmethod
        def forward(
            ctx: Any,
            chart: dict[str, Any],
            width: int,
            token: Tensor,
            weight: Tensor,
            pairs: Tensor | None,
        ) -> tuple[Tensor, Tensor]:
            m, bsz, k = weight.shape
            states = chart["states"]
            f = states.shape[-1]
            part = f - NUM_CLASSES
            if pairs is None:
                children = BinaryComposer._Mix._children
                # The right child of split a has width w − a: the widths run backwards.
                left = torch.bmm(weight.reshape(m * bsz, 1, k), children(states, width, m, 0))
                right = torch.bmm(
                    weight.flip(-1).reshape(m * bsz, 1, k), children(states, width, m, 1)
                )
            else:
                row, split = pairs.unbind(1)
                nonzero = weight.reshape(m * bsz, k)[row, split].unsqueeze(-1)
                rows_left, rows_right = BinaryComposer._Mix._rows(states, width, row, split)
                flat = states.view(-1, f)
                left = weight.new_zeros(m * bsz, part).index_add_(
                    0, row, flat[:, :part][rows_left] * nonzero
                )
                right = weight.new_zeros(m * bsz, part).index_add_(
                    0, row, flat[:, NUM_CLASSES:][rows_right] * nonzero
                )
            ctx.save_for_backward(weight, pairs)
            ctx.chart, ctx.width = chart, width
            return left.view(m, bsz, part), right.view(m, bsz, part)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad_left: Tensor, grad_right: Tensor) -> tuple[Tensor | None, ...]:
            weight, pairs = ctx.saved_tensors
            chart, width = ctx.chart, ctx.width
            m, bsz, k = weight.shape
            states = chart["states"]
            n, f = states.shape[0], states.shape[-1]
            part = f - NUM_CLASSES
            if width == n or chart["grads"] is None:
                # The widest runs first in every backward pass (a retained graph may see
                # several): zero what `_Write` reads back.
                chart["grads"] = torch.empty_like(states)
                for a in range(1, n):
                    chart["grads"][a - 1, : n - a + 1].zero_()
            grads = chart["grads"]
            grad_left = grad_left.reshape(m * bsz, part)
            grad_right = grad_right.reshape(m * bsz, part)
            grad_weight = None
            if ctx.needs_input_grad[3]:
                live = (grad_left.abs().amax(-1) + grad_right.abs().amax(-1)).nonzero().squeeze(1)
                if 4 * live.shape[0] < m * bsz:  # ∂ω of the spans with a gradient only
                    split = torch.arange(k, device=weight.device)
                    rows_left, rows_right = BinaryComposer._Mix._rows(
                        states, width, live[:, None], split
                    )
                    flat = states.view(-1, f)
                    from_left = flat[:, :part][rows_left] @ grad_left[live, :, None]
                    from_right = flat[:, NUM_CLASSES:][rows_right] @ grad_right[live, :, None]
                    grad_weight = weight.new_zeros(m * bsz, k).index_copy_(
                        0, live, (from_left + from_right).squeeze(-1)
                    )
                else:
                    children = BinaryComposer._Mix._children
                    from_left = torch.bmm(
                        grad_left.view(m * bsz, 1, part),
                        children(states, width, m, 0).transpose(1, 2),
                    )
                    from_right = torch.bmm(
                        grad_right.view(m * bsz, 1, part),
                        children(states, width, m, 1).transpose(1, 2),
                    )
                    grad_weight = (from_left + from_right.flip(-1)).view(m * bsz, k)
                grad_weight = grad_weight.view(m, bsz, k)
            if pairs is None:
                into_left = grads[:k, :m, :, :part]
                into_right = grads.as_strided(
                    (k, m, bsz, part),
                    ((n - 1) * bsz * f, bsz * f, f, 1),
                    grads.storage_offset() + (width - 1) * bsz * f + NUM_CLASSES,
                )
                into_left.addcmul_(
                    weight.permute(2, 0, 1).unsqueeze(-1), grad_left.view(m, bsz, part)
                )
                into_right.addcmul_(
                    weight.flip(-1).permute(2, 0, 1).unsqueeze(-1), grad_right.view(m, bsz, part)
                )
            else:
                row, split = pairs.unbind(1)
                nonzero = weight.reshape(m * bsz, k)[row, split].unsqueeze(-1)
                rows_left, rows_right = BinaryComposer._Mix._rows(states, width, row, split)
                flat = grads.view(-1, f)
                flat[:, :part].index_add_(0, rows_left, grad_left[row] * nonzero)
                flat[:, NUM_CLASSES:].index_add_(0, rows_right, grad_right[row] * nonzero)
            token = weight.new_zeros(()) if ctx.needs_input_grad[2] else None
            return None, None, token, grad_weight, None

    @staticmethod
    def _split_weights(z: Tensor) -> list[Tensor]:
        """ω of every span's splits, ``(N − w + 1, B, w − 1)`` for widths w = 2..N, from one gather.

        ω_a ∝ z[i, i + a − 1] z[i + a, i + w − 1] (left width a), normalized over a
        with 1e-6 added to the sum: splits whose children are not both spans weigh 0.
        """
        bsz, n = z.shape[0], z.shape[-1]
        device = z.device
        index = torch.arange(n, device=device)
        starts, splits, ends, sizes = [], [], [], []
        for w in range(2, n + 1):
            m = n - w + 1
            i = index[:m, None].expand(m, w - 1)
            a = index[None, 1:w].expand(m, w - 1)
            starts.append(i.flatten())
            splits.append((i + a).flatten())
            ends.append((i + w - 1).expand(m, w - 1).flatten())
            sizes.append(m * (w - 1))
        i, k, j = torch.cat(starts), torch.cat(splits), torch.cat(ends)
        flat = z.permute(1, 2, 0).reshape(n * n, bsz)  # (N², B)
        raw = flat.index_select(0, i * n + k - 1) * flat.index_select(0, k * n + j)  # (T, B)
        span = i * n + j  # the span each split belongs to
        total = raw.new_zeros(n * n, bsz).index_add_(0, span, raw)
        weight = raw / (total.index_select(0, span) + 1e-6)
        return [
            part.view(n - w + 1, w - 1, bsz).transpose(1, 2)
            for w, part in zip(range(2, n + 1), weight.split(sizes), strict=True)
        ]

    def _compose(self, x: Tensor, z: Tensor, lengths: Tensor) -> Tensor:
        d, (bsz, n) = self.hidden_dim, x.shape
        tokens = x.t()
        h = self.leaf(self.embedding(tokens))  # (N, B, d): the spans of width 1, [start, b]
        literal = self.literals[tokens][..., :NUM_CLASSES]  # a digit's value is the digit
        is_digit = literal.sum(-1, keepdim=True)
        values = is_digit * literal + (1 - is_digit) * self.value(h).softmax(-1)[..., :NUM_CLASSES]
        roots = [h[0]]  # the span (0, w − 1) for every width w
        if n > 1:
            chart = {"states": h.new_empty(n, n, bsz, d + 2 * NUM_CLASSES), "grads": None}
            counts = h.new_zeros(n, bsz, NUM_CLASSES)
            token = self._Write.apply(chart, 1, None, h, counts, values)
            # Where z's nonzero entries are trees (a straight-through z), a span without a
            # weighted split gets no gradient: such spans can share the state of zero inputs.
            sizes = lengths.to(z.device, torch.long)
            support = (z.detach() != 0) & self._region(sizes, n)
            shared = self._tree_splits(support, sizes) is not None
            empty = empty_values = None
            for w, weight in enumerate(self._split_weights(z), start=2):
                m = n - w + 1
                pairs = weight.reshape(m * bsz, w - 1).nonzero()  # (row i · B + b, split)
                if 8 * pairs.shape[0] > weight.numel():
                    pairs = None
                left, right = self._Mix.apply(chart, w, token, weight, pairs)  # (m, B, d + 10)
                counts_left, h_left = left.split([NUM_CLASSES, d], -1)
                h_right, values_right = right.split([d, NUM_CLASSES], -1)
                counts = counts_left + values_right
                if pairs is None or not shared:
                    h = self.combine(torch.cat([h_left, h_right, multiset_features(counts)], -1))
                    values = self.value(h).softmax(-1)[..., :NUM_CLASSES]
                else:  # most spans have no weighted split: zero inputs, one state
                    if empty is None:
                        zero = [counts.new_zeros(1, 2 * d), counts.new_zeros(1, NUM_CLASSES)]
                        empty = self.combine(torch.cat([zero[0], multiset_features(zero[1])], -1))
                        empty_values = self.value(empty).softmax(-1)[:, :NUM_CLASSES]
                    live = pairs[:, 0].unique_consecutive()
                    part = [
                        t.reshape(m * bsz, t.shape[-1])[live] for t in (h_left, h_right, counts)
                    ]
                    h_live = self.combine(torch.cat([*part[:2], multiset_features(part[2])], -1))
                    values_live = self.value(h_live).softmax(-1)[:, :NUM_CLASSES]
                    h = empty.expand(m * bsz, d).index_put((live,), h_live).view(m, bsz, d)
                    values = (
                        empty_values.expand(m * bsz, NUM_CLASSES)
                        .index_put((live,), values_live)
                        .view(m, bsz, NUM_CLASSES)
                    )
                roots.append(h[0])
                if w < n:
                    token = self._Write.apply(chart, w, token, h, counts, values)
        top = torch.stack(roots, 1)[torch.arange(bsz, device=x.device), lengths - 1]
        return self.value(top)[:, :NUM_CLASSES].log_softmax(-1)


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
        self._prediction: tuple[Tensor, Tensor | None] | None = None
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
        return self._nll(self.log_probs(z, batch), batch)

    @staticmethod
    def _nll(log_p: Tensor, batch: Batch) -> Tensor:
        """``(S, B, 10)`` log p(y | x, z) → ``(S, B)`` −log p of the true values."""
        target = batch["y"].expand(log_p.shape[0], -1)
        return -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def terms(self, batch: Batch) -> tuple[Structure, Estimate, Tensor]:
        """Training: the estimator's terms. Validation and test: the MAP tree's cross-entropy.

        Evaluation scores the prediction from the MAP tree, so its loss is that
        tree's −log p(y | x, z*) (no samples, no entropy term): one parse and one
        composer pass per batch, whose prediction the metrics then take.
        """
        if self.training:
            return super().terms(batch)
        q = self.posterior(batch)
        z = q.argmax().unsqueeze(0)
        log_p = self.log_probs(z, batch)  # (1, B, 10)
        cost = self._nll(log_p, batch)
        self._prediction = (log_p[0], self.as_tree(z[0]))
        zeros = cost.new_zeros(cost.shape[1:])
        return q, Estimate(z=z, cost=cost.mean(0), surrogate=zeros), zeros

    @torch.no_grad()
    def predict(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Class scores ``(B, 10)`` from the MAP tree, and that tree ``(B, N, N)`` (or None)."""
        z = self.posterior(batch).argmax()
        return self.log_probs(z.unsqueeze(0), batch)[0], self.as_tree(z)

    # ------------------------------------------------------------ val and test
    def step(self, batch: Batch, stage: str) -> Step:
        """The loss; in evaluation also the MAP tree's prediction scored by the bucketed metrics.

        Outputs (for callbacks): ``scores`` ``(B, 10)`` and ``tree`` ``(B, N, N)`` (or None).
        """
        result = super().step(batch, stage)
        if stage in self.metrics:
            scores, tree = self._prediction  # what this batch's step predicted (see `terms`)
            self._prediction = None
            metrics = self.metrics[stage]
            metrics["accuracy"].update(scores, batch["y"], batch["lengths"])
            if tree is not None and self.tree_metric is not None:
                metrics[self.tree_metric].update(tree, self.gold_tree(batch), batch["lengths"])
            result.outputs.update(scores=scores, tree=tree)
        return result

    def epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        """Accuracy and tree agreement, overall (``accuracy``) and by length (``accuracy_11-25``)."""
        values = {}
        for name, metric in self.metrics[stage].items():
            if not metric.update_called:
                continue
            for bucket, value in metric.compute().items():
                values[name if bucket == "" else f"{name}_{bucket}"] = value.float()
            metric.reset()
        return values

    def hparams_metric_names(self) -> list[str]:
        names = [*super().hparams_metric_names(), "val/accuracy", "test/accuracy"]
        if self.tree_metric is not None:
            names += [f"val/{self.tree_metric}", f"test/{self.tree_metric}"]
        return names

    # ---------------------------------------------------------------- pictures
    def figures(self, batch: Batch, outputs: dict[str, Any], count: int) -> dict[str, Any]:
        """The first ``count`` expressions of a validation batch with their gold and induced
        trees: ``val/trees`` as text (bracketed) and, where a gold tree exists, as a figure."""
        tree = outputs.get("tree")
        gold = self.gold_tree(batch)
        if tree is None and gold is None:
            return {}
        kind = "dependency" if self.tree_metric == "uas" else "binary"
        count = min(count, batch["x"].shape[0])
        texts = []
        for b in range(count):
            tokens = [VOCABULARY[int(t)] for t in batch["x"][b, : int(batch["lengths"][b])]]
            lines = [f"expression {b}: `{' '.join(tokens)}` = {int(batch['y'][b])}"]
            if gold is not None:
                lines.append(f"gold: `{bracketed(tokens, gold[b], kind)}`")
            if tree is not None:
                lines.append(f"induced: `{bracketed(tokens, tree[b], kind)}`")
            texts.append("  \n".join(lines))
        text = "\n\n".join(texts)
        if gold is None:
            return {"trees": text}
        return {"trees": [text, draw_trees(batch, gold, tree, kind, count)]}


class LatentTreeClassifier(ListOpsClassifier):
    """Encoder → tree log-potentials → a tree structure → composer: one class, every tree, chosen in YAML.

    The parser (embeddings, BiLSTM, the biaffine scorer: θ's network) and the
    composer learn from one loss,

        loss = E_{z∼q}[−log p(y | x, z)] − λ H(q) / N,

    the entropy bonus per token (N the expression's length). What makes the
    parser find the tree rather than collapse onto the first one it commits to
    (see ``docs/listops.md`` for the measurements) is configuration:

    * ``parser_warmup_steps``: the parser is frozen (its θ has no gradient) for
      that many steps, so the composer first learns the operators on trees drawn
      from the untrained parser;
    * ``parser_lr``: the parser's own learning rate (a second Adam parameter
      group; Havrylov et al. 2019 train parser and composer with two optimizers);
    * ``entropy_weight`` and ``target_entropy``: λ, fixed, or adapted after every
      training step as λ ← clip(λ + ``target_rate`` · (target − H/N), 0,
      ``max_entropy_weight``), dual
      ascent on the constraint H/N ≥ target (λ its Lagrange multiplier; SAC adapts
      its temperature so, Haarnoja et al. 2018), which holds the entropy per
      token near the target;
    * the estimator's own options: `zoo.estimators.Reinforce`'s
      ``normalize_advantages`` and proximal ``policy_updates`` with ``clip_ratio``.

    Args:
        estimator: the gradient estimator of E_q[−log p(y | x, z)].
        structure: ``"projective"`` (`DependencyCRF`, Eisner; the gold trees are projective),
            ``"nonprojective"`` (`NonProjectiveDependencyCRF`, matrix-tree) or ``"binary"``
            (`TreeCRF`, binary constituency trees, CKY).
        multiroot: dependency trees may hang several tokens from ROOT (ListOps trees have one).
        composer: the network that evaluates an expression on a tree: a `DependencyComposer`
            for dependency trees, a `BinaryComposer` for binary ones; None: the structure's
            own, of widths ``embedding_dim`` and ``hidden_dim``.
        input_dim: the vocabulary size (linked from the datamodule).
        embedding_dim: width of the token embeddings (encoder and composer each have their own).
        hidden_dim: width of each LSTM direction and of the composer.
        score_dim: width of the biaffine projections.
        num_rounds: message-passing rounds of the default dependency composer.
        entropy_weight: λ ≥ 0 of the entropy bonus per token (the start value when adapted).
        target_entropy: None: λ fixed; else the entropy per token λ is adapted towards.
        target_rate: the step of λ's adaptation per unit of entropy gap (per token).
        max_entropy_weight: the largest λ the adaptation reaches (while the entropy stays
            below the target, λ grows by ``target_rate`` × the gap at every step). A cap of
            1 did not prevent the crash that ``score_cap`` prevents (docs/listops.md).
        score_cap: None, or c > 0: every arc or span score s becomes c · tanh(s / c), within
            (−c, c). Unbounded, the scores of a parser that has committed to its trees grow
            until the entropy and its gradient, computed in float32, are garbage (H/N of
            6–48 nats, gradient norms of 10⁵: docs/listops.md).
        parser_lr: the parser's learning rate; None: ``lr``.
        parser_warmup_steps: training steps during which the parser is frozen.
        lr: learning rate of Adam (the composer's, and the parser's without ``parser_lr``).
        boundaries: inclusive upper edges of the length buckets of the metrics.

    Raises:
        ValueError: an unknown structure, a composer of the other kind of tree, a negative
            λ, warm-up or rate, a learning rate ≤ 0, multiroot binary trees.

    Example:
        >>> from zoo.data.listops import collate, generate
        >>> from zoo.estimators import Reinforce, GreedyBaseline
        >>> model = LatentTreeClassifier(Reinforce(2, baseline=GreedyBaseline()), hidden_dim=8)
        >>> model(collate(generate(3, seed=0, min_length=2))).shape
        torch.Size([3])
    """

    regularizer_name = "entropy_bonus"
    STRUCTURES: ClassVar[tuple[str, ...]] = ("projective", "nonprojective", "binary")

    def __init__(
        self,
        estimator: Estimator,
        structure: Literal["projective", "nonprojective", "binary"] = "projective",
        multiroot: bool = False,
        composer: DependencyComposer | BinaryComposer | None = None,
        input_dim: int = len(VOCABULARY),
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        score_dim: int = 64,
        num_rounds: int = 20,
        entropy_weight: float = 0.0,
        target_entropy: float | None = None,
        target_rate: float = 0.05,
        max_entropy_weight: float = 100.0,
        score_cap: float | None = None,
        parser_lr: float | None = None,
        parser_warmup_steps: int = 0,
        lr: float = 1e-3,
        boundaries: tuple[int, ...] = (10, 25, 50, 100, 200),
    ) -> None:
        if structure not in self.STRUCTURES:
            raise ValueError(
                f"structure must be one of {', '.join(map(repr, self.STRUCTURES))}, got {structure!r}"
            )
        self.tree_metric = "tree_f1" if structure == "binary" else "uas"
        super().__init__(estimator, input_dim, lr, boundaries)
        if not float(entropy_weight) >= 0:
            raise ValueError(f"entropy_weight must be ≥ 0, got {entropy_weight!r}")
        if not float(target_rate) >= 0:
            raise ValueError(f"target_rate must be ≥ 0, got {target_rate!r}")
        if not float(max_entropy_weight) >= float(entropy_weight):
            raise ValueError(
                f"max_entropy_weight must be ≥ entropy_weight ({entropy_weight!r}), "
                f"got {max_entropy_weight!r}"
            )
        if score_cap is not None and not float(score_cap) > 0:
            raise ValueError(f"score_cap must be > 0 or None, got {score_cap!r}")
        if parser_lr is not None and not float(parser_lr) > 0:
            raise ValueError(f"parser_lr must be > 0 or None, got {parser_lr!r}")
        if (
            isinstance(parser_warmup_steps, bool)
            or not isinstance(parser_warmup_steps, int)
            or parser_warmup_steps < 0
        ):
            raise ValueError(
                f"parser_warmup_steps must be an integer ≥ 0, got {parser_warmup_steps!r}"
            )
        if structure == "binary" and multiroot:
            raise ValueError("multiroot applies to dependency trees, not to structure='binary'")
        wanted = BinaryComposer if structure == "binary" else DependencyComposer
        if composer is None:
            if structure == "binary":
                composer = BinaryComposer(input_dim, embedding_dim, hidden_dim)
            else:
                composer = DependencyComposer(input_dim, embedding_dim, hidden_dim, num_rounds)
        elif not isinstance(composer, wanted):
            raise ValueError(
                f"structure={structure!r} needs a {wanted.__name__}, got {type(composer).__name__}"
            )
        self.structure_name = structure
        self.multiroot = bool(multiroot)
        self.target_entropy = None if target_entropy is None else float(target_entropy)
        self.target_rate = float(target_rate)
        self.max_entropy_weight = float(max_entropy_weight)
        self.score_cap = None if score_cap is None else float(score_cap)
        self.parser_lr = None if parser_lr is None else float(parser_lr)
        self.parser_warmup_steps = parser_warmup_steps
        # λ is state when it is adapted (it then reaches checkpoints, for exact resume).
        self.register_buffer(
            "entropy_weight",
            torch.tensor(float(entropy_weight)),
            persistent=self.target_entropy is not None,
        )
        self.encoder = Encoder(input_dim, embedding_dim, hidden_dim)
        if structure == "binary":
            self.scorer: nn.Module = SpanScorer(self.encoder.output_dim, score_dim)
        else:
            self.scorer = ArcScorer(self.encoder.output_dim, score_dim)
        self.composer = composer
        self._entropy: Tensor | None = None

    # ------------------------------------------------------------- the parser
    def posterior_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.scorer.parameters()]

    def parameter_groups(self) -> list[dict[str, Any]]:
        parser = self.posterior_parameters()
        ids = {id(p) for p in parser}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        own = {} if self.parser_lr is None else {"lr": self.parser_lr}  # else the optimizer's
        return [{"params": rest}, {"params": parser, **own}]

    def parser_frozen(self) -> bool:
        """Whether this training step is within the parser's warm-up."""
        if not self.training or self.parser_warmup_steps == 0:
            return False
        try:
            return self.trainer.global_step < self.parser_warmup_steps
        except RuntimeError:  # not attached to a trainer
            return False

    @property
    def structure_type(self) -> type[Structure]:
        """The class of the structures ``posterior`` builds (for the estimator check)."""
        kinds = {"binary": TreeCRF, "projective": DependencyCRF}
        return kinds.get(self.structure_name, NonProjectiveDependencyCRF)

    def posterior(self, batch: Batch) -> Structure:
        """q(z | x): batch shape ``(B,)``; θ has no gradient while the parser is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.parser_frozen()):
            states, _ = self.encoder(batch["x"], batch["lengths"])
            scores = self.scorer(states)
            if self.score_cap is not None:
                scores = self.score_cap * torch.tanh(scores / self.score_cap)
        lengths = batch["lengths"]
        if self.structure_name == "binary":
            return TreeCRF(scores, lengths=lengths, validate_args=False)
        kind = DependencyCRF if self.structure_name == "projective" else NonProjectiveDependencyCRF
        return kind(scores, lengths=lengths, multiroot=self.multiroot, validate_args=False)

    def regularizer(self, q: Structure, batch: Batch) -> Tensor:
        """−λ H(q) / N: ``(B,)`` (zeros without computing H when λ = 0 and not adapted)."""
        if float(self.entropy_weight) == 0 and self.target_entropy is None:
            self._entropy = None
            return q.log_potentials.new_zeros(q.batch_shape)
        entropy = q.entropy() / batch["lengths"].to(q.log_potentials.dtype)
        self._entropy = entropy.detach().mean()
        return -self.entropy_weight.to(entropy.dtype) * entropy

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self.target_entropy is not None and self._entropy is not None:
            gap = self.target_entropy - float(self._entropy)
            weight = float(self.entropy_weight) + self.target_rate * gap
            self.entropy_weight.fill_(min(max(weight, 0.0), self.max_entropy_weight))
        super().on_train_batch_end(outputs, batch, batch_idx)

    # ----------------------------------------------------------- the composer
    def log_probs(self, z: Tensor, batch: Batch) -> Tensor:
        s, b, n = z.shape[0], z.shape[1], z.shape[2]
        x = batch["x"].expand(s, b, n).reshape(s * b, n)
        if self.structure_name == "binary":
            lengths = batch["lengths"].repeat(s)
            out = self.composer(x, z.sum(-1).reshape(s * b, n, n), lengths)
        else:
            out = self.composer(x, z.reshape(s * b, n, n))
        return out.reshape(s, b, NUM_CLASSES)

    def as_tree(self, z: Tensor) -> Tensor:
        return z.sum(-1) if self.structure_name == "binary" else z

    def gold_tree(self, batch: Batch) -> Tensor:
        return gold_spans(batch) if self.structure_name == "binary" else gold_arcs(batch)

    # ------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def diagnostics(
        self, q: Structure, estimate: Estimate, batch: Batch, stage: str
    ) -> dict[str, Tensor]:
        """The entropy of q per token, the share of samples equal to the MAP tree, λ (training).

        Validation logs the entropy alone; testing none of them (long test
        expressions make every extra pass costly).
        """
        if stage == "test":
            return {}
        if stage == "val":
            return {"entropy": (q.entropy() / batch["lengths"].to(q.log_potentials.dtype)).mean()}
        entropy = self._entropy
        if entropy is None:
            entropy = (q.entropy() / batch["lengths"].to(q.log_potentials.dtype)).mean()
        metrics = {"entropy": entropy, "entropy_weight": self.entropy_weight.clone()}
        z = estimate.z.detach()
        if bool(((z == 0) | (z == 1)).all()):  # hard samples
            same = (z == q.argmax().unsqueeze(0)).flatten(z.dim() - q.event_dim).all(-1)
            metrics["map_share"] = same.to(entropy.dtype).mean()
        return metrics

    def gradient_groups(self) -> dict[str, list[nn.Module]]:
        """``train/grad_norm_parser`` (encoder and scorer) and ``train/grad_norm_composer``."""
        return {"parser": [self.encoder, self.scorer], "composer": [self.composer]}


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
        super().__init__(Exact() if estimator is None else estimator, input_dim, lr, boundaries)
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
        super().__init__(Exact() if estimator is None else estimator, input_dim, lr, boundaries)
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
