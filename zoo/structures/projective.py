r"""Projective dependency trees (`DependencyCRF`) by Eisner's algorithm.

The set and its factorization are those of `zoo.structures.dependency`,
restricted to projective trees (no crossing arcs, ROOT to the left of the
sentence). A(θ) by Eisner's algorithm (Eisner 1996, "Three new probabilistic
models for dependency parsing"; the first-order inside pass of Eisner 2000,
"Bilexical grammars and their cubic-time parsing algorithms"), in log space
over complete and incomplete spans, one short sequence of tensor operations
per span width: O(N³) work in N steps. The pass is written once over
`zoo.structures.chart`'s semirings, which give marginals (autograd of
logsumexp), the MAP tree (autograd of max) and exact samples (autograd of a
logsumexp that samples in its backward pass), after Goodman (1999) and
torch-struct.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.structures.chart import (
    ChartStructure,
    Semiring,
    at_lengths,
    clamp_forbidden,
    work_dtype,
)
from zoo.structures.dependency import DependencyStructure

__all__ = ["DependencyCRF"]


def _eisner(arcs: Tensor, lengths: Tensor | None, reduce: Semiring, multiroot: bool) -> Tensor:
    """Eisner's inside value with ROOT as node 0.

    Args:
        arcs: ``(B, M, M)`` finite scores of arc h → m over M = N + 1 nodes,
            node 0 the ROOT (column 0, arcs into ROOT, is ignored).
        lengths: ``(B,)`` sentence lengths (words), or None for N.
        reduce: the semiring sum.
        multiroot: allow more than one child of ROOT.

    Returns:
        ``(B,)`` the value of the complete right span 0..length headed by ROOT.
    """
    batch, size, _ = arcs.shape
    # After width w each chart holds the items still needed, for spans of
    # widths 0..w (incomplete: 1..w): by start, ``[:, i, v]`` for the span
    # i..i+v, rows i < M-w; or by end, widths descending, ``[:, j, w-v]`` for
    # the span ending at j+w, rows j ≤ M-1-w. Every split of every span of the
    # next width is then one slice of a chart, and appending with `torch.cat`
    # keeps the backward pass at O(N³) numbers moved in all (in-place writes
    # into full charts, torch-struct's way, move several times more).
    # Complete spans are → (head at the left end) or ← (head at the right
    # end); complete spans of width 0 are log 1 = 0.
    zero = arcs.new_zeros(batch, size, 1)
    right_start, right_end, left_start, left_end = zero, zero, zero, zero
    incomplete_right = incomplete_left = arcs.new_zeros(batch, size, 0)
    for w in range(1, size):
        n = size - w  # spans of width w
        right_start, right_end = right_start[:, :n], right_end[:, 1:]
        left_start, left_end = left_start[:, :n], left_end[:, 1:]
        # Both incomplete spans over i..i+w split into C→[i, k] + C←[k+1, i+w].
        split = right_start + left_end  # (B, n, w)
        inner = reduce(split, -1)  # (B, n)
        if not multiroot:
            # ROOT takes exactly one child: its arc must start from ROOT alone
            # (the split k = 0), never from ROOT with children already.
            inner = torch.cat([split[:, :1, 0], inner[:, 1:]], 1)
        new_right = inner + arcs.diagonal(w, -2, -1)  # i → i+w
        new_left = inner + arcs.diagonal(-w, -2, -1)  # i+w → i (into ROOT for i = 0: never read)
        incomplete_right = torch.cat([incomplete_right[:, :n], new_right.unsqueeze(-1)], -1)
        incomplete_left = torch.cat([new_left.unsqueeze(-1), incomplete_left[:, 1:]], -1)
        # C→[i, i+w] = ⊕_k I→[i, k] + C→[k, i+w];  C←[i, i+w] = ⊕_k C←[i, k] + I←[k, i+w].
        right = reduce(incomplete_right + right_end, -1).unsqueeze(-1)  # (B, n, 1)
        left = reduce(left_start + incomplete_left, -1).unsqueeze(-1)
        right_start = torch.cat([right_start, right], -1)
        right_end = torch.cat([right, right_end], -1)
        left_start = torch.cat([left_start, left], -1)
        left_end = torch.cat([left, left_end], -1)
    return at_lengths(right_start[:, 0], lengths)


class DependencyCRF(ChartStructure, DependencyStructure):
    """Projective dependency trees (Eisner's algorithm).

    Args:
        log_potentials: ``(*batch, N, N)`` arc scores θ[h, m] of head h → child
            m, with θ[m, m] the score of ROOT → m (torch-struct's layout).
        lengths: optional ``(*batch)`` sentence lengths in [1, N]; words at or
            past a length are padding, with no arcs in any z, marginal or gradient.
        multiroot: True (torch-struct's default for this class): ROOT may have
            any number of children; False: exactly one.
        validate_args: check θ for NaN and lengths for range.

    Raises:
        ValueError: θ not of shape ``(*batch, N, N)``, NaN in θ, lengths out of
            range, a ``multiroot`` that is not a bool.

    Example:
        >>> q = DependencyCRF(torch.zeros(3, 3), multiroot=False)
        >>> q.log_partition().exp().round()  # 7 projective single-root trees over 3 words
        tensor(7.)
        >>> q.argmax().sum((-2, -1))
        tensor(3.)
    """

    _projective = True

    def _arcs(self, theta: Tensor, lengths: Tensor | None) -> Tensor:
        """θ ``(B, N, N)`` → finite arc scores ``(B, N+1, N+1)`` with ROOT as node 0."""
        theta = clamp_forbidden(theta.to(work_dtype(theta.dtype)), self.chart_size)
        if lengths is not None:
            theta = theta.masked_fill(~self._valid(lengths, theta.shape[0], theta.device), 0.0)
        root = F.pad(theta.diagonal(0, -2, -1), (1, 0))  # (B, M): ROOT → m at column m + 1
        words = F.pad(theta, (1, 0, 1, 0))[:, 1:]  # (B, N, M): word h → m at [h, m + 1]
        # Column 0 (arcs into ROOT) is 0, not -inf: the items it feeds are never read.
        return torch.cat([root.unsqueeze(1), words], 1)

    def inside(self, theta: Tensor, lengths: Tensor | None, semiring: Semiring) -> Tensor:
        """Eisner's inside value ``(B,)`` of flat θ ``(B, N, N)``."""
        return _eisner(self._arcs(theta, lengths), lengths, semiring, self.multiroot)
