r"""Binary constituency trees over spans (`TreeCRF`), and the chart machinery of all tree DPs.

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
batched). As in torch-struct, one program serves every query by changing its
reduction (Goodman 1999, "Semiring parsing"): logsumexp gives A(θ) and, by
autograd, the marginals; max gives the best tree by autograd (Viterbi
backtracking); a logsumexp whose backward pass *samples* one term in
proportion to its weight gives exact samples (top-down sampling from the
inside chart, the forward-filtering backward-sampling of trees).

The chart helpers here (`_chart_indicator`, `_clamp_forbidden`, the
reductions) are shared with the Eisner program of `zoo.structures.dependency`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from zoo.structures.base import Structure, _as_size
from zoo.structures.noise import safe_uniform

__all__ = ["TreeCRF"]

Reduce = Callable[[Tensor, int], Tensor]
"""A semiring sum over one dimension: logsumexp, max or sampled logsumexp."""


# ------------------------------------------------------------------ reductions
def _logsumexp(x: Tensor, dim: int) -> Tensor:
    return torch.logsumexp(x, dim)


def _max(x: Tensor, dim: int) -> Tensor:
    # max(dim) (not amax) sends the whole gradient to one maximiser, so the
    # gradient of the max-inside value is the indicator of one best structure
    # even where scores tie.
    return x.max(dim).values


_SAMPLES_PER_PASS = 16
"""Samples drawn by one pass of the chart: their bits 2^0..2^15 add up exactly in float32."""


class _SampledLogsumexp(torch.autograd.Function):
    """logsumexp forward; backward draws, for every sample, one term ∝ exp(x).

    The gradient reaching an item is a bitmask: bit k is set when sample k
    uses the item (as torch-struct's MultiSampledSemiring does). Backward
    draws, independently for every sample and item, which term builds the
    item, and sends bit k down to that term. Differentiating an inside pass
    built from this reduction therefore walks the chart top-down once and
    draws S exact samples at the cost of one backward pass.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, samples: int) -> Tensor:
        out = torch.logsumexp(x, -1)
        ctx.samples = samples
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        x, out = ctx.saved_tensors
        # Inverse-CDF draws: x is finite (see `_clamp_forbidden`), the CDF rises
        # from 0 to about 1, and u lies in (0, CDF[-1]].
        cdf = (x - out.unsqueeze(-1)).exp().cumsum(-1)
        u = safe_uniform((*out.shape, ctx.samples), x.dtype, x.device) * cdf[..., -1:]
        choice = torch.searchsorted(cdf, u).clamp_(max=x.shape[-1] - 1)  # (..., S)
        bit = 2 ** torch.arange(ctx.samples, device=x.device)
        used = (grad.to(torch.long).unsqueeze(-1) & bit) != 0  # (..., S): sample k uses the item
        weight = torch.where(used, bit.to(x.dtype), 0.0)
        return torch.zeros_like(x).scatter_add_(-1, choice, weight), None


def _sampled_logsumexp(samples: int) -> Reduce:
    """The reduction whose backward pass draws ``samples`` (≤ 16) samples at once."""

    def reduce(x: Tensor, dim: int) -> Tensor:
        return _SampledLogsumexp.apply(x.movedim(dim, -1), samples)

    return reduce


def _clamp_forbidden(theta: Tensor, size: int) -> Tensor:
    """θ with -inf (a forbidden part) raised to a very negative finite value.

    A logsumexp over only -inf terms has a NaN gradient even where nothing
    flows into it, and charts hold such items wherever a part is forbidden.
    The floor ``finfo.min / (4 size)`` keeps every chart value (a sum of at most
    ``2 size`` potentials) finite while exp of it is still exactly 0 next to any
    real score; a clamp passes no gradient to the parts it raises, which is
    right for parts whose marginal is 0.
    """
    return theta.clamp(min=torch.finfo(theta.dtype).min / (4 * max(size, 1)))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision charts lose too much in long sums; work in float32 there.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _chart_indicator(
    program: Callable[[Tensor], Tensor], theta: Tensor, seed: float = 1.0
) -> Tensor:
    """∂ program(θ) / ∂θ (seeded with ``seed`` per batch element) on a detached copy of θ.

    With a max reduction this is the MAP indicator, with the sampled
    logsumexp a bitmask of samples (``seed`` = 2^S - 1 starts all S of them).
    Works in any grad mode, ``torch.no_grad`` and ``torch.inference_mode``
    included (the copy is made outside inference mode); the result carries
    no gradient.
    """
    with torch.inference_mode(False), torch.enable_grad():
        leaf = theta.detach().clone().requires_grad_(True)
        value = program(leaf)
        (grad,) = torch.autograd.grad(value, leaf, torch.full_like(value, seed))
    return grad.detach()


def _chart_samples(
    inside: Callable[[Tensor, Tensor | None, Reduce], Tensor],
    theta: Tensor,
    lengths: Tensor | None,
    num: int,
) -> Tensor:
    """``num`` exact samples ``(num, *theta.shape)`` from an inside program.

    Sixteen samples ride on the bits of one backward pass; more samples take
    ⌈num / 16⌉ copies of θ stacked along the batch, still one pass.

    Args:
        inside: ``inside(θ, lengths, reduce)``, the inside value ``(B,)``.
        theta: ``(B, *event)`` potentials.
        lengths: ``(B,)`` or None.
        num: how many samples.
    """
    theta = theta.detach().to(_work_dtype(theta.dtype))  # bits must add up exactly
    if num == 0:
        return theta.new_zeros(0, *theta.shape)
    per = min(num, _SAMPLES_PER_PASS)
    copies = -(-num // per)
    many = theta.expand(copies, *theta.shape).reshape(-1, *theta.shape[1:])  # (copies·B, ...)
    many_lengths = None if lengths is None else lengths.repeat(copies)
    reduce = _sampled_logsumexp(per)
    bits = _chart_indicator(lambda t: inside(t, many_lengths, reduce), many, float(2**per - 1))
    bit = 2 ** torch.arange(per, device=theta.device).view(-1, *([1] * many.dim()))
    z = ((bits.to(torch.long).unsqueeze(0) & bit) != 0).to(theta.dtype)  # (per, copies·B, ...)
    z = z.reshape(per, copies, *theta.shape).transpose(0, 1).reshape(-1, *theta.shape)
    return z[:num]


def _at_lengths(chart: Tensor, lengths: Tensor | None) -> Tensor:
    """The whole sentence's value: ``chart[:, length]`` (B,), or the last column without lengths."""
    if lengths is None:
        return chart[:, -1]
    if lengths.is_inference():
        lengths = lengths.clone()  # autograd cannot save an inference tensor as the index
    return chart.gather(-1, lengths.unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------------ CKY
def _cky(spans: Tensor, lengths: Tensor | None, reduce: Reduce) -> Tensor:
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
    return _at_lengths(root, None if lengths is None else lengths - 1) + leaves.sum(-1)


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


class TreeCRF(Structure):
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
    def _event_layout(cls) -> str:
        return "(*batch, N, N, L)"

    def _check_event_shape(self, event_shape: torch.Size) -> None:
        n, n2, labels = event_shape
        if n != n2 or n < 1 or labels < 1:
            raise ValueError(
                f"TreeCRF: log_potentials must end with (N, N, L), N ≥ 1 span starts and ends "
                f"and L ≥ 1 labels, got event shape {tuple(event_shape)}"
            )

    @property
    def max_length(self) -> int:
        return self.log_potentials.shape[-2]

    # ------------------------------------------------------------- inside pass
    def _prepared(self, theta: Tensor, lengths: Tensor | None) -> Tensor:
        """θ ``(B, N, N, L)`` made safe for the chart: finite, padded spans set to 0."""
        theta = _clamp_forbidden(theta.to(_work_dtype(theta.dtype)), 2 * self.max_length)
        if lengths is not None:
            inside = torch.arange(self.max_length, device=theta.device) < lengths[:, None]
            theta = theta.masked_fill(~(inside[:, :, None] & inside[:, None, :])[..., None], 0.0)
        return theta

    def _inside(self, theta: Tensor, lengths: Tensor | None, reduce: Reduce) -> Tensor:
        """The inside value ``(B,)`` of flat θ ``(B, N, N, L)``."""
        theta = self._prepared(theta, lengths)
        # Labels are independent given the bracketing: reduce them first.
        return _cky(reduce(theta, -1), lengths, reduce)

    def log_partition(self) -> Tensor:
        theta, lengths = self._flat()
        value = self._inside(theta, lengths, _logsumexp)
        return self._unflat(value.to(theta.dtype))

    def argmax(self) -> Tensor:
        theta, lengths = self._flat()
        z = _chart_indicator(lambda t: self._inside(t, lengths, _max), theta)
        return self._unflat(z)

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        shape = _as_size(sample_shape)
        theta, lengths = self._flat()
        z = _chart_samples(self._inside, theta, lengths, shape.numel())
        return z.to(theta.dtype).reshape(*shape, *self.batch_shape, *self.event_shape)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        n_words, labels = self.max_length, self.log_potentials.shape[-1]
        length = self._equal_lengths() or n_words
        trees = _bracketings(length)
        rows = []
        for spans in trees:
            for labelling in itertools.product(range(labels), repeat=len(spans)):
                rows.append([(i, j, lab) for (i, j), lab in zip(spans, labelling, strict=True)])
        index = torch.tensor(rows, dtype=torch.long, device=self.log_potentials.device)
        z = self.log_potentials.new_zeros(len(rows), n_words, n_words, labels)
        tree = torch.arange(len(rows), device=index.device)[:, None].expand(index.shape[:2])
        z[tree, index[..., 0], index[..., 1], index[..., 2]] = 1.0
        z = z.reshape(z.shape[0], *([1] * len(self.batch_shape)), *self.event_shape)
        return z.expand(z.shape[0], *self.batch_shape, *self.event_shape) if expand else z
