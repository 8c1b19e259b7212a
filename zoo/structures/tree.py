r"""Binary constituency trees over spans (`TreeCRF`) by CKY.

`TreeCRF`: z ∈ {0, 1}^{N×N×L} marks the spans of a binary bracketing of N
words, each span with one of L labels. A binary tree over words 0..N-1 has
2N - 1 spans (the N single words, the N - 2 inner spans and the root span
0..N-1), and a span i..j (inclusive, i ≤ j) is the part ``[i, j, l]``:

    q(z) ∝ Π_{(i, j, l) ∈ z} exp θ[i, j, l],
    A(θ) = log Σ_{bracketings T} Π_{(i, j) ∈ T} Σ_l exp θ[i, j, l].

This is torch-struct's ``TreeCRF`` layout ``(*batch, N, N, L)``; entries below
the diagonal (i > j) are never part of a tree.

A(θ) is the CKY inside pass (Cocke–Younger–Kasami; Baker 1979 for the inside
algorithm), in log space:

    β[i, i] = s[i, i],    β[i, j] = s[i, j] + logsumexp_{i ≤ k < j} (β[i, k] + β[k+1, j]),

with s[i, j] = logsumexp_l θ[i, j, l]: O(N³) work in N - 1 steps, one short
sequence of tensor operations per span width (all spans of one width at once,
batched). The pass is written once over `zoo.structures.chart`'s semirings
(Goodman 1999, "Semiring parsing"): logsumexp gives A(θ) and, by autograd,
the marginals; max gives the best tree by autograd (Viterbi backtracking); a
logsumexp whose backward pass *samples* one term in proportion to its weight
gives exact samples (top-down sampling from the inside chart, the
forward-filtering backward-sampling of trees).
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import torch
from torch import Tensor

from zoo.structures.chart import (
    ChartStructure,
    Semiring,
    at_lengths,
    clamp_forbidden,
    work_dtype,
)

__all__ = ["TreeCRF"]


# ------------------------------------------------------------------------ CKY
def _cky(spans: Tensor, lengths: Tensor | None, reduce: Semiring) -> Tensor:
    """The CKY inside value of the whole sentence.

    Args:
        spans: ``(B, N, N)`` finite span scores s[i, j] (i ≤ j; the rest is ignored).
        lengths: ``(B,)`` sentence lengths, or None for N.
        reduce: the semiring sum.

    Returns:
        ``(B,)`` the inside value β[0, length - 1].
    """
    n_words = spans.shape[-1]
    # After width w two charts of shape (B, N-w+1, w) hold every β still
    # needed: by start, ``starts[:, i, v-1]`` = β of width v starting at i, and
    # by end, ``ends[:, j, w-v]`` = β of width v ending at j+w-1 (widths
    # descending). All splits of all spans of the next width are then one
    # slice of each. Appending with `torch.cat` to the rows still needed
    # keeps the backward pass at O(N³/6) numbers moved; in-place writes into
    # full N × N charts (torch-struct's way) move O(N³) zeros and copies.
    # Every tree has every word as a span: the leaves add their scores outside
    # the chart, which keeps their marginals exactly 1 (not 1 ± rounding).
    leaves = spans.diagonal(0, -2, -1)  # (B, N)
    if lengths is not None:
        leaves = leaves * (torch.arange(n_words, device=spans.device) < lengths.unsqueeze(-1))
    beta = spans.new_zeros(*leaves.shape, 1)  # (B, N, 1)
    starts, ends = beta, beta
    for w in range(2, n_words + 1):
        n = n_words - w + 1  # spans of width w
        left = starts[:, :n]  # (B, n, w-1): β[i, i+a-1], a = 1..w-1
        right = ends[:, 1:]  # (B, n, w-1): β[i+a, i+w-1]
        beta = reduce(left + right, -1) + spans.diagonal(w - 1, -2, -1)  # (B, n)
        starts = torch.cat([left, beta.unsqueeze(-1)], -1)
        ends = torch.cat([beta.unsqueeze(-1), right], -1)
    root = starts[:, 0]  # (B, N): β[0, w-1] for every width w
    return at_lengths(root, None if lengths is None else lengths - 1) + leaves.sum(-1)


@lru_cache(maxsize=64)
def _bracketings(n: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Every binary bracketing of n words, each as its 2n - 1 spans (i, j)."""

    def build(i: int, j: int) -> list[tuple[tuple[int, int], ...]]:
        if i == j:
            return [((i, i),)]
        out = []
        for k in range(i, j):
            for left in build(i, k):
                for right in build(k + 1, j):
                    out.append(((i, j), *left, *right))
        return out

    return tuple(build(0, n - 1))


class TreeCRF(ChartStructure):
    """Binary constituency trees over spans with L labels (CKY).

    Args:
        log_potentials: ``(*batch, N, N, L)`` span scores θ[i, j, l] for span
            i..j (inclusive, i ≤ j) with label l; torch-struct's ``TreeCRF``
            layout. Entries with i > j are ignored.
        lengths: optional ``(*batch)`` sentence lengths in [1, N]; spans
            reaching past a length are 0 in every z, marginal and gradient.
        validate_args: check θ for NaN and lengths for range.

    Raises:
        ValueError: θ not of shape ``(*batch, N, N, L)`` with square span
            dimensions, NaN in θ, lengths out of range.

    Example:
        >>> q = TreeCRF(torch.zeros(2, 4, 4, 1))
        >>> q.log_partition().exp().round()  # 5 binary trees over 4 words
        tensor([5., 5.])
        >>> q.argmax().sum((-3, -2, -1))  # 2N - 1 spans
        tensor([7., 7.])
    """

    event_dim = 3

    @classmethod
    def event_layout(cls) -> str:
        return "(*batch, N, N, L)"

    def check_event_shape(self, event_shape: torch.Size) -> None:
        n, n2, labels = event_shape
        if n != n2 or n < 1 or labels < 1:
            raise ValueError(
                f"TreeCRF: log_potentials must end with (N, N, L), N ≥ 1 span starts and ends "
                f"and L ≥ 1 labels, got event shape {tuple(event_shape)}"
            )

    @property
    def max_length(self) -> int:
        return self.log_potentials.shape[-2]

    @property
    def chart_size(self) -> int:
        return 2 * self.max_length

    # ------------------------------------------------------------- inside pass
    def _prepared(self, theta: Tensor, lengths: Tensor | None) -> Tensor:
        """θ ``(B, N, N, L)`` made safe for the chart: finite, padded spans set to 0."""
        theta = clamp_forbidden(theta.to(work_dtype(theta.dtype)), self.chart_size)
        if lengths is not None:
            inside = torch.arange(self.max_length, device=theta.device) < lengths[:, None]
            theta = theta.masked_fill(~(inside[:, :, None] & inside[:, None, :])[..., None], 0.0)
        return theta

    def inside(self, theta: Tensor, lengths: Tensor | None, semiring: Semiring) -> Tensor:
        """The CKY inside value ``(B,)`` of flat θ ``(B, N, N, L)``."""
        theta = self._prepared(theta, lengths)
        # Labels are independent given the bracketing: reduce them first.
        return _cky(semiring(theta, -1), lengths, semiring)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        n_words, labels = self.max_length, self.log_potentials.shape[-1]
        length = self.support_length()
        trees = _bracketings(length)
        rows = []
        for spans in trees:
            for labelling in itertools.product(range(labels), repeat=len(spans)):
                rows.append([(i, j, lab) for (i, j), lab in zip(spans, labelling, strict=True)])
        index = torch.tensor(rows, dtype=torch.long, device=self.log_potentials.device)
        z = self.log_potentials.new_zeros(len(rows), n_words, n_words, labels)
        tree = torch.arange(len(rows), device=index.device)[:, None].expand(index.shape[:2])
        z[tree, index[..., 0], index[..., 1], index[..., 2]] = 1.0
        return self.broadcast_support(z, expand)
