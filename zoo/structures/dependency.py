r"""Dependency trees: projective (`DependencyCRF`) and non-projective (`NonProjectiveDependencyCRF`).

A dependency tree over N words gives every word exactly one head, another
word or the ROOT, with no cycles. z ∈ {0, 1}^{N×N} marks its arcs in
torch-struct's layout: ``z[h, m] = 1`` for the arc head h → child m (h ≠ m),
and ``z[m, m] = 1`` when word m hangs from the ROOT. Arcs factorize:

    q(z) ∝ Π_{(h, m) ∈ z} exp θ[h, m],    A(θ) = log Σ_{trees T} exp Σ_{(h, m) ∈ T} θ[h, m].

``multiroot=False`` admits only trees with exactly one ROOT arc (one word
heads the sentence, as in Universal Dependencies); ``multiroot=True`` admits
any number. The flag belongs to the instance (unlike torch-struct, which sets
it on its ``DepTree`` class).

`DependencyCRF`: the projective trees (no crossing arcs, ROOT to the left of
the sentence). A(θ) by Eisner's algorithm (Eisner 1996, "Three new
probabilistic models for dependency parsing"; the first-order inside pass of
Eisner 2000, "Bilexical grammars and their cubic-time parsing algorithms"),
in log space over complete and incomplete spans, one short sequence of tensor
operations per span width: O(N³) work in N steps. As for `TreeCRF`, the
same program gives marginals (autograd of logsumexp), the MAP tree (autograd
of max) and exact samples (autograd of a logsumexp that samples in its
backward pass), after Goodman (1999) and torch-struct.

`NonProjectiveDependencyCRF`: all spanning arborescences rooted at ROOT.
A(θ) by the matrix-tree theorem (Koo et al. 2007, "Structured prediction
models via the matrix-tree theorem"; McDonald & Satta 2007; Smith & Smith
2007), A = log det L̂(θ) for the root-augmented Laplacian L̂ (or, for a single
root, the Laplacian with its first row replaced by the ROOT weights), and the
marginals in closed form from L̂⁻¹: one float64 LU serves both. The
determinant is taken after a per-word shift of θ (every word has exactly one
head, so subtracting c_m from column m shifts every tree's score by Σ c_m).
Where the shifted matrix is too close to singular (log det < -11: potentials
of large magnitude whose best heads form cycles), A and the marginals come
instead from Gaussian elimination of the Laplacian in log space, which for
these diagonally dominant M-matrices needs only sums of positive terms (as in
the elimination of Grassmann, Taksar & Heyman 1985) and so is exact at any
scale. The MAP tree is the maximum spanning arborescence of Chu & Liu (1965)
and Edmonds (1967), batched, with every cycle of a round contracted at once;
the single-root constraint is exact by penalizing ROOT arcs by more than any
two trees' scores can differ (the standard reduction; Gabow & Tarjan 1984,
Zmigrod et al. 2020 give asymptotically faster ones). Samples are drawn word
by word: each word's head from its marginal given the heads already drawn
(exact, since every word has exactly one head), with Sherman–Morrison
updates of L̂⁻¹, O(N³) per sample.

θ = -inf forbids an arc (or span); forbidden parts get no mass and no NaN.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.structures.base import Structure, _as_size
from zoo.structures.noise import gumbel_noise
from zoo.structures.tree import (
    Reduce,
    _at_lengths,
    _chart_indicator,
    _chart_samples,
    _clamp_forbidden,
    _logsumexp,
    _max,
    _work_dtype,
)

__all__ = ["DependencyCRF", "NonProjectiveDependencyCRF"]


# ---------------------------------------------------------------- enumeration
@lru_cache(maxsize=64)
def _trees(n: int, multiroot: bool, projective: bool) -> tuple[tuple[int, ...], ...]:
    """Every dependency tree over n words as head tuples (head of word m; -1 = ROOT)."""

    def ancestors(heads: tuple[int, ...], m: int) -> list[int] | None:
        seen = []
        while heads[m] != -1:
            m = heads[m]
            if m in seen or len(seen) > n:
                return None  # a cycle
            seen.append(m)
        return seen

    trees = []
    choices = [[-1, *(h for h in range(n) if h != m)] for m in range(n)]
    for heads in itertools.product(*choices):
        if not multiroot and heads.count(-1) != 1:
            continue
        up = [ancestors(heads, m) for m in range(n)]
        if any(a is None for a in up):
            continue
        if projective and any(
            h != -1 and any(h not in up[k] for k in range(min(h, m) + 1, max(h, m)))
            for m, h in enumerate(heads)
        ):
            continue
        trees.append(heads)
    return tuple(trees)


class _Dependency(Structure):
    """Shared layout, flags, masks and enumeration of the two dependency structures."""

    event_dim = 2
    _projective: ClassVar[bool] = True
    """Whether the support is the projective trees only (a trait of the class, not a flag)."""

    def __init__(
        self,
        log_potentials: Tensor,
        lengths: Tensor | None = None,
        multiroot: bool = True,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(multiroot, bool):
            raise ValueError(f"{type(self).__name__}: multiroot must be a bool, got {multiroot!r}")
        self.multiroot = multiroot
        super().__init__(log_potentials, lengths=lengths, validate_args=validate_args)

    @classmethod
    def _event_layout(cls) -> str:
        return "(*batch, N, N): arcs head → child, ROOT arcs on the diagonal"

    def _check_event_shape(self, event_shape: torch.Size) -> None:
        n, n2 = event_shape
        if n != n2 or n < 1:
            raise ValueError(
                f"{type(self).__name__}: log_potentials must end with a square (N, N) arc matrix "
                f"{self._event_layout()}, N ≥ 1, got event shape {tuple(event_shape)}"
            )

    @property
    def max_length(self) -> int:
        return self.log_potentials.shape[-1]

    def _extra_args(self) -> dict[str, Any]:
        return {"multiroot": self.multiroot}

    def _valid(self, lengths: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """``(B, N, N)`` True at arcs between real words (and ROOT arcs of real words)."""
        n = self.max_length
        if lengths is None:
            return torch.ones(batch, n, n, dtype=torch.bool, device=device)
        word = torch.arange(n, device=device) < lengths[:, None]
        return word[:, :, None] & word[:, None, :]

    def enumerate_support(self, expand: bool = True) -> Tensor:
        n = self.max_length
        length = self._equal_lengths() or n
        heads = torch.tensor(
            _trees(length, self.multiroot, self._projective),
            dtype=torch.long,
            device=self.log_potentials.device,
        ).reshape(-1, length)
        child = torch.arange(length, device=heads.device).expand_as(heads)
        tree = torch.arange(heads.shape[0], device=heads.device)[:, None].expand_as(heads)
        z = self.log_potentials.new_zeros(heads.shape[0], n, n)
        z[tree, torch.where(heads < 0, child, heads), child] = 1.0
        z = z.reshape(z.shape[0], *([1] * len(self.batch_shape)), *self.event_shape)
        return z.expand(z.shape[0], *self.batch_shape, *self.event_shape) if expand else z


# ----------------------------------------------------------------- projective
def _eisner(arcs: Tensor, lengths: Tensor | None, reduce: Reduce, multiroot: bool) -> Tensor:
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
    return _at_lengths(right_start[:, 0], lengths)


class DependencyCRF(_Dependency):
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
        theta = _clamp_forbidden(theta.to(_work_dtype(theta.dtype)), self.max_length + 1)
        if lengths is not None:
            theta = theta.masked_fill(~self._valid(lengths, theta.shape[0], theta.device), 0.0)
        root = F.pad(theta.diagonal(0, -2, -1), (1, 0))  # (B, M): ROOT → m at column m + 1
        words = F.pad(theta, (1, 0, 1, 0))[:, 1:]  # (B, N, M): word h → m at [h, m + 1]
        # Column 0 (arcs into ROOT) is 0, not -inf: the items it feeds are never read.
        return torch.cat([root.unsqueeze(1), words], 1)

    def _inside(self, theta: Tensor, lengths: Tensor | None, reduce: Reduce) -> Tensor:
        return _eisner(self._arcs(theta, lengths), lengths, reduce, self.multiroot)

    def log_partition(self) -> Tensor:
        theta, lengths = self._flat()
        return self._unflat(self._inside(theta, lengths, _logsumexp).to(theta.dtype))

    def argmax(self) -> Tensor:
        theta, lengths = self._flat()
        z = _chart_indicator(lambda t: self._inside(t, lengths, _max), theta)
        return self._unflat(z.to(theta.dtype))

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        shape = _as_size(sample_shape)
        theta, lengths = self._flat()
        z = _chart_samples(self._inside, theta, lengths, shape.numel())
        return z.to(theta.dtype).reshape(*shape, *self.batch_shape, *self.event_shape)


# ------------------------------------------------------------- non-projective
_CONDITION = 11.0
"""The float64 determinant is trusted while log det ≥ -11 in the shifted
frame, where every column's best head has weight 1: the inverse then loses at
most about e^11 · 1e-16 ≈ 6e-12 to rounding, and marginals stay within 1e-11
(at -16 they were already off by 1e-9). Below it, the exact elimination."""


_PASSIVE_THREADS = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
_SERIAL_SOLVE_MAX = 96 if _PASSIVE_THREADS else 32
"""Batched solves and inverses of matrices up to this size run on one thread.

torch loops over the batch and MKL threads each small triangular solve on its
own, which pays a hand-over between threads per matrix. For the (32, N, N)
inverse with two threads on a 2-core CPU, one thread took 0.14 against
0.33 ms at N = 24 and 0.38 against 0.59 ms at N = 32, but 0.66 against
0.55 ms at N = 40. Where idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``)
every hand-over is a wake-up: one thread took 0.23 against 4.6 ms at N = 24,
0.66 against 5.1 ms at N = 40 and 4.9 against 6.6 ms at N = 80, and broke even
near N = 120.
"""


@contextlib.contextmanager
def _serial_solves(matrices: Tensor) -> Iterator[None]:
    """One intra-op thread for the body when the CPU ``matrices`` are at most `_SERIAL_SOLVE_MAX` wide.

    ``torch.set_num_threads`` is process-wide: another Python thread running
    intra-op work meanwhile runs it on one thread too (slower, never wrong).
    """
    threads = torch.get_num_threads()
    if matrices.device.type != "cpu" or matrices.shape[-1] > _SERIAL_SOLVE_MAX or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _inverse(lu: Tensor, pivots: Tensor) -> Tensor:
    """The inverse ``(B, N, N)`` of the matrices whose LU factorization is given."""
    eye = torch.eye(lu.shape[-1], dtype=lu.dtype, device=lu.device)
    with _serial_solves(lu):
        return torch.linalg.lu_solve(lu, pivots, eye.expand_as(lu))


def _laplacian(
    theta: Tensor, valid: Tensor | None, multiroot: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The shifted matrix-tree matrix L̂ whose determinant is Z · exp(-shift).

    Args:
        theta: ``(B, N, N)`` arc scores (-inf allowed), ROOT arcs on the diagonal.
        valid: ``(B, N, N)`` True at arcs between real words, or None (no padding).
        multiroot: root-augmented Laplacian (any number of ROOT arcs) or
            Koo et al.'s first-row replacement (exactly one).

    Returns:
        ``(matrix (B, N, N), weights (B, N, N), shift (B,))``, all float64: the weights
        exp(θ[h, m] - c_m) with c_m the best score into word m (0 at padding),
        and shift = Σ_m c_m. Padded words get an identity row and column.
    """
    # Every word has exactly one head, so shifting column m by c_m shifts every
    # tree by Σ c_m: log Z is unchanged and the gradient needs no path through c.
    theta = theta.to(_working_dtype(theta))
    if valid is None:
        best = theta.detach().amax(-2)
    else:
        best = torch.where(valid, theta.detach(), -torch.inf).amax(-2)
    best = best.nan_to_num_(0.0, 0.0, 0.0)  # (B, N); 0 at padding
    shifted = theta - best.unsqueeze(-2)
    if valid is not None:
        shifted = torch.where(valid, shifted, -torch.inf)
    weights = _exp64(shifted)
    # One fresh matrix edited in place: -w off the diagonal, the weight into
    # each word on it (a few passes over B·N² numbers; the LU is the rest).
    matrix = weights.neg()
    diagonal = matrix.diagonal(0, -2, -1)
    diagonal.zero_()
    root = weights.diagonal(0, -2, -1)
    # (B, N): ROOT and Σ_{h ≠ m} w[h, m]; for a single root the sum without ROOT,
    # taken from -L̂'s zeroed diagonal rather than by a cancelling subtraction.
    into = weights.sum(-2) if multiroot else -matrix.sum(-2)
    if valid is not None:
        into = into + (~valid.diagonal(0, -2, -1)).to(theta.dtype)  # identity at padding
    diagonal.copy_(into)
    if not multiroot:
        matrix[:, 0] = root
    return matrix, weights, best.to(torch.float64).sum(-1)


def _working_dtype(theta: Tensor) -> torch.dtype:
    """θ's dtype, but at least float32: the shifted scores θ - c are formed in it."""
    return torch.promote_types(theta.dtype, torch.float32)


def _exp64(shifted: Tensor) -> Tensor:
    """exp(θ - c) as float64, taken in place in the dtype of the fresh ``shifted``.

    float64 exp costs about four times float32 exp per element here; for float32
    θ the float32 exponential of the float32 difference is as exact as θ itself.
    In place is safe under autograd: neither subtraction nor ``where`` keeps its
    output for the backward pass.
    """
    return shifted.exp_().to(torch.float64)


def _negated_laplacian(
    theta: Tensor, valid: Tensor | None, multiroot: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """-L̂ of `_laplacian`, built in place in one fresh float64 buffer (no autograd).

    The forward pass of `_MatrixTree`, in fewer passes over B·N² numbers than
    the differentiable build. Returns ``(-L̂, root (B, N), best (B, N), first)``,
    with c_m = best[m] the shift of column m: the arc weights are -L̂ off its
    diagonal, but for row 0 with a single root, which holds -root; ``first``
    (B, N) is then the weights of the arcs from word 0 (None for multiroot).
    """
    theta = theta.detach().to(_working_dtype(theta))
    if valid is not None:
        theta = theta.masked_fill(~valid, -torch.inf)
    best = theta.amax(-2).nan_to_num_(0.0, 0.0, 0.0)  # 0: no real head
    weights = _exp64(theta - best.unsqueeze(-2))  # the fresh buffer (θ - c itself for float64 θ)
    best = best.to(torch.float64)
    diagonal = weights.diagonal(0, -2, -1)
    root = diagonal.clone()
    if not multiroot:
        diagonal.zero_()
    into = weights.sum(-2)  # (B, N): with ROOT for multiroot, without for a single root
    if valid is not None:
        into += ~valid.diagonal(0, -2, -1)  # identity at padding
    diagonal.copy_(into.neg_())
    first = None
    if not multiroot:
        first = weights[:, 0].clone()  # the arcs from word 0 (and -into at [0, 0])
        weights[:, 0] = -root
    return weights, root, best, first


def _factor(matrix: Tensor, negated: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """LU of L̂ (or of -L̂) with log |det| and where the float64 determinant can be trusted.

    Args:
        matrix: ``(B, N, N)`` L̂, or -L̂ with ``negated=True`` (det L̂ = (-1)^N det(-L̂)).

    Returns:
        ``(lu, pivots, log_det (B,), fine)``: ``fine`` is None where every
        determinant can be trusted, else the ``(B,)`` mask of those that can;
        where it is False (a non-positive or too small determinant) the LU is
        that of ∓identity, so that everything computed from it stays finite.
    """
    n = matrix.shape[-1]
    lu, pivots, _ = torch.linalg.lu_factor_ex(matrix)
    diagonal = lu.diagonal(0, -2, -1)
    log_det = diagonal.abs().log_().sum(-1)
    # det has the sign (-1)^(row swaps + negative pivots), times (-1)^N for -L̂.
    steps = torch.arange(1, n + 1, device=matrix.device, dtype=pivots.dtype)
    odd = ((pivots != steps) ^ (diagonal < 0)).sum(-1) % 2
    fine = (log_det > -_CONDITION) & (odd == (n % 2 if negated else 0))
    if bool(fine.all()):
        return lu, pivots, log_det, None
    eye = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
    eye = -eye if negated else eye
    lu, pivots, _ = torch.linalg.lu_factor_ex(torch.where(fine.view(-1, 1, 1), matrix, eye))
    return lu, pivots, torch.where(fine, log_det, 0.0), fine


def _arc_marginals(
    weights: Tensor,
    inverse: Tensor,
    multiroot: bool,
    root: Tensor | None = None,
    first: Tensor | None = None,
    overwrite: bool = False,
) -> Tensor:
    """μ[h, m] = w[h, m] ∂ log det L̂ / ∂w[h, m] (Koo et al. 2007), ``(B, N, N)``.

    Arc h → m enters L̂ at [m, m] (+w) and [h, m] (-w), and ∂ log det / ∂L̂[i, j]
    = L̂⁻¹[j, i]. With a single root, row 0 of L̂ holds the ROOT weights
    instead, so word 0's diagonal and the arcs from word 0 have no Laplacian entry.

    Args:
        weights: ``(B, N, N)`` arc weights; only those off the diagonal (and
            off row 0 where ``first`` is given) are read when ``root`` is given.
        inverse: ``(B, N, N)`` L̂⁻¹.
        multiroot: which L̂.
        root: ``(B, N)`` ROOT weights, if not on the diagonal of ``weights``.
        first: ``(B, N)`` weights of the arcs from word 0, if not row 0 of ``weights``.
        overwrite: compute in ``inverse``'s memory (no graph; ``inverse`` is lost):
            every fresh (B, N, N) float64 buffer costs about as much as a pass over it.
    """
    diagonal = inverse.diagonal(0, -2, -1)  # (B, N): L̂⁻¹[m, m]
    if multiroot:
        into = factor = diagonal.clone() if overwrite else diagonal
    else:
        into = diagonal * (torch.arange(inverse.shape[-1], device=inverse.device) != 0)
        factor = inverse[..., 0].clone() if overwrite else inverse[..., 0]  # L̂⁻¹[m, 0]
    # The edits below touch one row and the diagonal of fresh tensors, which
    # autograd allows (neither op saves its output).
    back = inverse.transpose(-2, -1)  # [h, m] = L̂⁻¹[m, h]
    # [h, m] = L̂⁻¹[m, m] - L̂⁻¹[m, h]
    wide = into.unsqueeze(-2)
    difference = torch.sub(wide, back, out=back) if overwrite else wide - back
    if not multiroot:
        difference[:, 0] = into  # row 0 of L̂ holds ROOT: no [0, m] entry for the arcs from word 0
    marginals = difference.mul_(weights) if overwrite else weights * difference
    if first is not None:
        marginals[:, 0] = first * into
    weight = weights.diagonal(0, -2, -1) if root is None else root
    marginals.diagonal(0, -2, -1).copy_(weight * factor)
    return marginals


def _matrix_tree_marginals(
    theta: Tensor, valid: Tensor | None, multiroot: bool
) -> tuple[Tensor, Tensor | None]:
    """Closed-form arc marginals ``(B, N, N)`` and the ``fine`` mask of `_factor`, differentiable in θ."""
    matrix, weights, _ = _laplacian(theta, valid, multiroot)
    lu, pivots, _, fine = _factor(matrix)
    inverse = _inverse(lu, pivots)
    return _arc_marginals(weights, inverse, multiroot), fine


def _exact_marginals(theta: Tensor, valid: Tensor | None, multiroot: bool) -> Tensor:
    """Arc marginals by autograd of `_log_partition_elimination`; a graph only if θ needs one."""

    def program(t: Tensor) -> Tensor:
        return _log_partition_elimination(t, valid, multiroot)

    if torch.is_grad_enabled() and theta.requires_grad:
        (marginals,) = torch.autograd.grad(program(theta).sum(), theta, create_graph=True)
        return marginals
    return _chart_indicator(program, theta)


def _marginals(theta: Tensor, valid: Tensor | None, multiroot: bool) -> Tensor:
    """Float64 arc marginals ``(B, N, N)`` of θ (any dtype) at any scale, differentiable in θ."""
    marginals, fine = _matrix_tree_marginals(theta, valid, multiroot)
    if fine is not None:
        bad = ~fine
        sub_valid = None if valid is None else valid[bad]
        exact = _exact_marginals(theta[bad].to(torch.float64), sub_valid, multiroot)
        marginals = marginals.masked_scatter(bad.view(-1, 1, 1), exact)
    return marginals


class _MatrixTree(torch.autograd.Function):
    """log Z of θ (any dtype) by the matrix-tree theorem, with closed-form marginals as backward.

    One float64 LU serves both passes (autograd through the matrix build and
    slogdet costs more than the whole closed form). Sentences whose shifted
    determinant cannot be trusted in float64 take log Z and marginals from the
    log-space elimination instead. A second-order backward (a gradient taken
    with ``create_graph=True``) differentiates the traced closed form.
    """

    @staticmethod
    def forward(ctx: Any, theta: Tensor, valid: Tensor | None, multiroot: bool) -> Tensor:
        matrix, root, best, first = _negated_laplacian(theta, valid, multiroot)
        lu, pivots, log_det, fine = _factor(matrix, negated=True)
        log_z = log_det + best.sum(-1)
        if fine is not None:
            bad = ~fine
            sub_valid = None if valid is None else valid[bad]
            exact = _log_partition_elimination(theta[bad].to(torch.float64), sub_valid, multiroot)
            log_z = log_z.masked_scatter(bad, exact)
        ctx.save_for_backward(theta, matrix, root, first, lu, pivots, fine)
        ctx.valid, ctx.multiroot = valid, multiroot
        return log_z.to(theta.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        theta, matrix, root, first, lu, pivots, fine = ctx.saved_tensors
        grad = grad.to(torch.float64).view(-1, 1, 1)
        if torch.is_grad_enabled():
            marginals = _marginals(theta, ctx.valid, ctx.multiroot)
            return (grad * marginals).to(theta.dtype), None, None
        inverse = _inverse(lu, pivots)  # (-L̂)⁻¹ = -L̂⁻¹
        # -L̂ holds the arc weights off its diagonal and, but for a single root
        # (whose row 0 holds -root; the arcs from word 0 are `first`), row 0.
        # The marginals of -L̂ and (-L̂)⁻¹ are those of L̂ negated: fold the sign into grad.
        marginals = _arc_marginals(
            matrix, inverse, ctx.multiroot, root=root, first=first, overwrite=True
        )
        scale = grad.neg()
        if fine is not None:
            bad = ~fine
            sub_valid = None if ctx.valid is None else ctx.valid[bad]
            exact = _exact_marginals(theta[bad].to(torch.float64), sub_valid, ctx.multiroot)
            marginals = marginals.masked_scatter(bad.view(-1, 1, 1), exact.neg())
        # One pass: scaled and cast to θ's dtype together.
        return torch.mul(marginals, scale, out=torch.empty_like(theta)), None, None


def _logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """log(e^a + e^b), twice differentiable where one side is the floor of `_clamp_forbidden`.

    torch.logaddexp's second derivative is inf/inf = NaN when the sides differ
    by more than ~700; shifting by the (detached) larger side avoids that.
    """
    top = torch.maximum(a, b).detach()
    return top + torch.log(torch.exp(a - top) + torch.exp(b - top))


def _log_partition_elimination(theta: Tensor, valid: Tensor | None, multiroot: bool) -> Tensor:
    """log Z ``(B,)`` by Gaussian elimination of the Laplacian in log space.

    Eliminating word k from a Laplacian with arc weights W and ROOT weights r
    leaves a Laplacian over the other words with

        d_k = r_k + Σ_i W[i, k],   W'[i, j] = W[i, j] + W[i, k] W[k, j] / d_k,
        r'_j = r_j + W[k, j] r_k / d_k,

    and det = Π_k d_k: sums of positive terms only, so logsumexp/logaddexp
    compute it exactly at any magnitude of θ. For a single root, Z is the
    coefficient of t in the multi-root Z(t · r): the same elimination without
    r in the pivots, carrying r' as the first-order term, over all but the last
    word, whose r' closes the product. Pivots are the largest d_k.

    Args:
        theta: ``(B, N, N)`` float64 arc scores (-inf allowed).
        valid: ``(B, N, N)`` True at arcs between real words, or None (no padding).
        multiroot: any number of ROOT arcs, or exactly one.
    """
    batch, n, _ = theta.shape
    theta = _clamp_forbidden(theta, n + 1)
    if valid is None:
        valid = torch.ones_like(theta, dtype=torch.bool)
    low = torch.finfo(theta.dtype).min / (4 * n)  # exp(low) is 0 next to any real weight
    eye = torch.eye(n, dtype=torch.bool, device=theta.device)
    remaining = valid.diagonal(0, -2, -1).clone()  # (B, N): words not yet eliminated
    arcs = torch.where(valid & ~eye, theta, low)
    root = torch.where(remaining, theta.diagonal(0, -2, -1), low)
    log_z = theta.new_zeros(batch)
    for _ in range(n):
        heads = torch.where(remaining.unsqueeze(-1) & ~eye, arcs, low)
        pivots = torch.logsumexp(heads, -2)  # (B, N): Σ_i W[i, k]
        if multiroot:
            pivots = _logaddexp(pivots, root)
        active = remaining.sum(-1) > (0 if multiroot else 1)  # (B,)
        k = torch.where(remaining, pivots, -torch.inf).argmax(-1)  # (B,)
        pivot = pivots.gather(-1, k.unsqueeze(-1))  # (B, 1)
        into_k = arcs.gather(-1, k.view(-1, 1, 1).expand(batch, n, 1))  # (B, N, 1): W[i, k]
        from_k = arcs.gather(-2, k.view(-1, 1, 1).expand(batch, 1, n))  # (B, 1, N): W[k, j]
        root_k = root.gather(-1, k.unsqueeze(-1))  # (B, 1)
        # Finished sentences keep their values (their pivots are meaningless).
        step = active.view(-1, 1, 1)
        arcs = torch.where(step, _logaddexp(arcs, into_k + from_k - pivot.unsqueeze(-1)), arcs)
        root = torch.where(
            step.squeeze(-1), _logaddexp(root, from_k.squeeze(-2) + root_k - pivot), root
        )
        log_z = log_z + torch.where(active, pivot.squeeze(-1), 0.0)
        remaining = remaining & ~(F.one_hot(k, n).bool() & active.unsqueeze(-1))
    if not multiroot:
        log_z = log_z + torch.where(remaining, root, low).logsumexp(-1)
    return log_z


def _max_arborescence(scores: Tensor) -> Tensor:
    """Chu–Liu/Edmonds maximum spanning arborescence, batched.

    Each round every node takes its best incoming arc; all cycles of that
    graph are found by pointer doubling and contracted at once (arcs entering
    a cycle at v reweighted by -best[v]); rounds repeat until no cycle is left,
    and the contractions are undone in reverse: in every cycle, all arcs are
    kept but the one into the node that the outside arc enters. Sentences
    leave the working batch as soon as they have no cycle.

    Args:
        scores: ``(B, M, M)`` float64, ``scores[b, m, h]`` the score of arc
            h → m (one row of incoming arcs per node), node 0 the root; -inf
            where there is no arc (row 0, the diagonal). Every other node
            needs a finite incoming arc.

    Returns:
        ``(B, M)`` the head of every node (0 for the root itself).
    """
    batch, size, _ = scores.shape
    ids = torch.arange(size, device=scores.device)
    # code[b, v, u]: the original arc h * M + m behind the current arc u → v.
    code = (ids * size + ids.unsqueeze(-1)).expand(batch, size, size).contiguous()
    comp = ids.expand(batch, size).clone()  # original node → current (super)node id
    rows = torch.arange(batch, device=scores.device)  # the sentences still contracting
    chosen = torch.zeros(batch, size, dtype=torch.long, device=scores.device)
    alive_at_end = torch.zeros(batch, size, dtype=torch.bool, device=scores.device)
    levels = []
    doublings = max(1, (size - 1).bit_length())  # 2^doublings ≥ M steps reach every cycle
    while True:
        nodes = ids.expand(rows.shape[0], size)
        best, parent = scores.max(-1)  # (b, M)
        alive = torch.isfinite(best)  # current non-root nodes
        parent = torch.where(alive, parent, nodes)
        # After ≥ M steps every walk is on a cycle; track each orbit's smallest id.
        jump, smallest = parent, nodes
        for _ in range(doublings):
            smallest = torch.minimum(smallest, smallest.gather(-1, jump))
            jump = jump.gather(-1, jump)
        on_cycle = torch.zeros_like(alive).scatter_(-1, jump, True) & (parent != nodes)
        incoming = code.gather(-1, parent.unsqueeze(-1)).squeeze(-1)  # (b, M): arc into each node
        done = ~on_cycle.any(-1)
        if bool(done.any()):
            chosen[rows[done]] = incoming[done]
            alive_at_end[rows[done]] = alive[done]
            if bool(done.all()):
                break
            left = ~done
            rows, scores, code, comp = rows[left], scores[left], code[left], comp[left]
            best, on_cycle, smallest = best[left], on_cycle[left], smallest[left]
            incoming, nodes = incoming[left], nodes[left]
        cycle = torch.where(on_cycle, smallest, nodes)  # (b, M): new id of each node
        levels.append((rows, comp, on_cycle, incoming))
        reweighted = scores - torch.where(on_cycle, best, 0.0).unsqueeze(-1)
        reweighted = reweighted.masked_fill(cycle.unsqueeze(-1) == cycle.unsqueeze(-2), -torch.inf)
        target = (cycle.unsqueeze(-1) * size + cycle.unsqueeze(-2)).flatten(1)
        flat = reweighted.flatten(1)
        merged = torch.full_like(flat, -torch.inf).scatter_reduce(-1, target, flat, "amax")
        hit = (flat == merged.gather(-1, target)) & torch.isfinite(flat)
        origin = torch.where(hit, code.flatten(1), -1)
        code = torch.full_like(origin, -1).scatter_reduce(-1, target, origin, "amax")
        code = code.view(-1, size, size)
        scores = merged.view(-1, size, size)
        comp = cycle.gather(-1, comp)
    heads = torch.zeros_like(chosen)
    entered = torch.zeros_like(alive_at_end)

    def keep(heads: Tensor, entered: Tensor, arc: Tensor, take: Tensor) -> None:
        # Writes of rows not taken go to node 0 (the root), whose head is 0.
        child = torch.where(take, arc % size, 0)
        heads.scatter_(-1, child, torch.where(take, arc // size, 0))
        entered.scatter_(-1, child, take)

    keep(heads, entered, chosen, alive_at_end)
    for rows, comp, on_cycle, incoming in reversed(levels):
        sub_heads, sub_entered = heads[rows], entered[rows]
        inside = torch.zeros_like(on_cycle).scatter_reduce(-1, comp, sub_entered, "amax")
        keep(sub_heads, sub_entered, incoming, on_cycle & ~inside)
        heads[rows], entered[rows] = sub_heads, sub_entered
    return heads


class NonProjectiveDependencyCRF(_Dependency):
    """Non-projective dependency trees: spanning arborescences (matrix-tree theorem).

    Args:
        log_potentials: ``(*batch, N, N)`` arc scores θ[h, m] of head h → child
            m, with θ[m, m] the score of ROOT → m (torch-struct's layout).
        lengths: optional ``(*batch)`` sentence lengths in [1, N]; words at or
            past a length are padding, with no arcs in any z, marginal or gradient.
        multiroot: False (torch-struct's default for this class): exactly one
            ROOT arc; True: any number.
        validate_args: check θ for NaN and lengths for range.

    Raises:
        ValueError: θ not of shape ``(*batch, N, N)``, NaN in θ, lengths out of
            range, a ``multiroot`` that is not a bool.

    Example:
        >>> q = NonProjectiveDependencyCRF(torch.zeros(3, 3))
        >>> q.log_partition().exp().round()  # 3^(3-1) = 9 single-root trees over 3 words
        tensor(9.)
        >>> q.sample(2).shape
        torch.Size([2, 3, 3])
    """

    _projective = False

    def __init__(
        self,
        log_potentials: Tensor,
        lengths: Tensor | None = None,
        multiroot: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(log_potentials, lengths, multiroot, validate_args)

    def log_partition(self) -> Tensor:
        theta, lengths = self._flat()
        valid = None if lengths is None else self._valid(lengths, theta.shape[0], theta.device)
        return self._unflat(_MatrixTree.apply(theta, valid, self.multiroot))

    def marginals(self) -> Tensor:
        theta, lengths = self._flat()
        valid = None if lengths is None else self._valid(lengths, theta.shape[0], theta.device)
        return self._unflat(_marginals(theta, valid, self.multiroot).to(theta.dtype))

    def argmax(self) -> Tensor:
        theta, lengths = self._flat()
        theta = theta.detach().to(torch.float64)
        batch, n, _ = theta.shape
        valid = self._valid(lengths, batch, theta.device)
        word = valid.diagonal(0, -2, -1)
        eye = torch.eye(n, dtype=torch.bool, device=theta.device)
        scores = torch.where(valid, theta, -torch.inf)
        root = scores.diagonal(0, -2, -1)
        if not self.multiroot:
            # A ROOT-arc penalty larger than any two trees' score difference
            # makes the best arborescence the best one with a single ROOT arc.
            finite = torch.isfinite(scores)
            spread = torch.where(finite, scores, -torch.inf).amax(-2) - torch.where(
                finite, scores, torch.inf
            ).amin(-2)
            penalty = 1.0 + torch.where(torch.isfinite(spread), spread, 0.0).sum(-1)
            root = root - penalty.unsqueeze(-1)
        # Padded words hang from ROOT at no cost and take no part otherwise.
        root = torch.where(word, root, 0.0)
        # One row of incoming arcs per node: graph[b, m+1, h+1] = θ[h, m], ROOT in column 0.
        incoming = scores.masked_fill(eye, -torch.inf).transpose(-2, -1)
        graph = torch.cat([root.unsqueeze(-1), incoming], -1)  # (B, N, M)
        graph = F.pad(graph, (0, 0, 1, 0), value=-torch.inf)  # (B, M, M): nothing enters ROOT
        heads = _max_arborescence(graph)[:, 1:] - 1  # (B, N): word index, -1 for ROOT
        return self._unflat(self._heads_to_arcs(heads, word))

    def _heads_to_arcs(self, heads: Tensor, word: Tensor) -> Tensor:
        """Head indices ``(B, N)`` (-1 = ROOT) → arc indicators ``(B, N, N)`` in θ's dtype."""
        child = torch.arange(heads.shape[-1], device=heads.device).expand_as(heads)
        row = torch.where(heads < 0, child, heads)
        z = F.one_hot(row, heads.shape[-1]).transpose(-2, -1).contiguous()  # z[b, row[m], m]
        return (z * word.unsqueeze(-2)).to(self.log_potentials.dtype)

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        shape = _as_size(sample_shape)
        num = max(shape.numel(), 1)
        theta, lengths = self._flat()
        theta = theta.detach().to(torch.float64)
        valid = self._valid(lengths, theta.shape[0], theta.device)
        theta = theta.expand(num, *theta.shape).reshape(-1, *theta.shape[1:])  # (S·B, N, N)
        valid = valid.expand(num, *valid.shape).reshape(-1, *valid.shape[1:])
        heads, fine = self._sample_fast(theta, valid)
        if not bool(fine.all()):
            bad = ~fine
            heads[bad] = self._sample_exact(theta[bad], valid[bad])
        z = self._heads_to_arcs(heads, valid.diagonal(0, -2, -1))
        return z.reshape(*shape, *self.batch_shape, *self.event_shape)

    def _head_probs(self, weights: Tensor, row: Tensor, m: int) -> Tensor:
        """P(head of word m = h) ``(B, N)`` (ROOT at index m) from row m of L̂⁻¹.

        ∂ log det L̂ / ∂L̂[i, m] = L̂⁻¹[m, i], and arc h → m enters L̂ at [m, m]
        (+w) and [h, m] (-w), the ROOT arc at [m, m] (multi-root) or [0, m].
        """
        into = weights[:, :, m]  # (B, N)
        diagonal = row[:, m : m + 1]
        if self.multiroot:
            probs = into * (diagonal - row)
            root = into[:, m] * diagonal.squeeze(-1)
        else:
            # Row 0 of L̂ holds the ROOT weights, so entries 0 of the Laplacian are gone.
            off = row.clone()
            off[:, 0] = 0.0
            probs = into * ((diagonal if m != 0 else 0.0) - off)
            root = into[:, m] * row[:, 0]
        probs = probs.clone()
        probs[:, m] = root
        return probs

    def _sample_fast(self, theta: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Word-by-word sampling with Sherman–Morrison updates of L̂⁻¹.

        Conditioning word m on head h replaces column m of L̂ by that of a
        single arc of weight 1, a rank-one change. Returns the heads ``(B, N)``
        (-1 = ROOT) and which sentences stayed numerically sound (determinant
        condition, probabilities summing to 1); the others need `_sample_exact`.
        """
        batch, n, _ = theta.shape
        matrix, weights, _ = _laplacian(theta, valid, self.multiroot)
        lu, pivots, _, fine = _factor(matrix)
        if fine is None:
            fine = torch.ones(batch, dtype=torch.bool, device=theta.device)
        inverse = _inverse(lu, pivots)
        word = valid.diagonal(0, -2, -1)
        heads = torch.full((batch, n), -1, dtype=torch.long, device=theta.device)
        for m in range(n):
            row = inverse[:, m]  # (B, N)
            probs = self._head_probs(weights, row, m)
            sound = ((probs.sum(-1) - 1).abs() < 1e-6) & (probs.min(-1).values > -1e-6)
            fine = fine & (sound | ~word[:, m])
            probs = torch.where(torch.isfinite(probs), probs, 0.0).clamp(min=0.0)
            pick = (probs.log() + _gumbel_like(probs)).argmax(-1)  # (B,)
            heads[:, m] = torch.where(pick == m, -1, pick)
            column = self._unit_column(pick, m, n, matrix.dtype)  # (B, N)
            change = (column - matrix[:, :, m]) * word[:, m : m + 1]
            scale = 1.0 + (row * change).sum(-1)  # det ratio: P(h) / w[h, m] > 0
            fine = fine & (scale > 0)
            moved = torch.einsum("bij,bj->bi", inverse, change)  # L̂⁻¹ u
            scale = torch.where(scale > 0, scale, 1.0)
            inverse = inverse - moved.unsqueeze(-1) * row.unsqueeze(-2) / scale.view(-1, 1, 1)
        return heads, fine

    def _unit_column(self, pick: Tensor, m: int, n: int, dtype: torch.dtype) -> Tensor:
        """Column m of L̂ for the single arc pick → m of weight 1 (pick == m: ROOT)."""
        rows = torch.arange(n, device=pick.device)
        is_root = (pick == m).unsqueeze(-1)
        if self.multiroot:
            column = (rows == m).to(dtype) - ((rows == pick.unsqueeze(-1)) & ~is_root).to(dtype)
        else:
            word_arc = ((rows == m) & (m != 0)).to(dtype) - (
                (rows == pick.unsqueeze(-1)) & (rows != 0)
            ).to(dtype)
            column = torch.where(is_root, (rows == 0).to(dtype), word_arc)
        return column

    def _sample_exact(self, theta: Tensor, valid: Tensor) -> Tensor:
        """Word-by-word sampling with marginals from the log-space elimination (any scale)."""
        batch, n, _ = theta.shape
        low = torch.finfo(theta.dtype).min / (4 * n)
        rows = torch.arange(n, device=theta.device)
        heads = torch.full((batch, n), -1, dtype=torch.long, device=theta.device)
        for m in range(n):
            probs = _chart_indicator(
                lambda t: _log_partition_elimination(t, valid, self.multiroot), theta
            )[:, :, m]
            pick = (probs.clamp(min=0.0).log() + _gumbel_like(probs)).argmax(-1)
            heads[:, m] = torch.where(pick == m, -1, pick)
            keep = rows.unsqueeze(0) == pick.unsqueeze(-1)  # (B, N): the drawn head only
            theta = theta.clone()
            theta[:, :, m] = torch.where(keep, theta[:, :, m], low)
        return heads


def _gumbel_like(x: Tensor) -> Tensor:
    return gumbel_noise(x.shape, dtype=x.dtype, device=x.device)
