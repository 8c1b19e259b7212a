r"""Non-projective dependency trees (`NonProjectiveDependencyCRF`): the matrix-tree theorem.

The set is every spanning arborescence rooted at ROOT, in the layout of
`zoo.structures.dependency`. A(θ) by the matrix-tree theorem (Koo et al.
2007, "Structured prediction models via the matrix-tree theorem"; McDonald &
Satta 2007; Smith & Smith 2007), A = log det L̂(θ) for the root-augmented
Laplacian L̂ (or, for a single root, the Laplacian with its first row replaced
by the ROOT weights), and the marginals in closed form from L̂⁻¹: one float64
LU serves both. The determinant is taken after a per-word shift of θ (every
word has exactly one head, so subtracting c_m from column m shifts every
tree's score by Σ c_m). Where the shifted matrix is too close to singular
(log det < -11: potentials of large magnitude whose best heads form cycles),
A and the marginals come instead from Gaussian elimination of the Laplacian in
log space, which for these diagonally dominant M-matrices needs only sums of
positive terms (as in the elimination of Grassmann, Taksar & Heyman 1985) and
so is exact at any scale.

The MAP tree is the maximum spanning arborescence (`zoo.structures.arborescence`);
the single-root constraint is exact by penalizing ROOT arcs by more than any
two trees' scores can differ (the standard reduction; Gabow & Tarjan 1984,
Zmigrod et al. 2020 give asymptotically faster ones). Samples are drawn word
by word: each word's head from its marginal given the heads already drawn
(exact, since every word has exactly one head), with Sherman–Morrison
updates of L̂⁻¹, O(N³) per sample.

θ = -inf forbids an arc; forbidden arcs get no mass and no NaN. An empty
support (no arborescence avoids every forbidden arc) has A(θ) = -inf and zero
marginals, and `argmax` / `sample` raise a ValueError there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.structures.arborescence import max_arborescence
from zoo.structures.base import _as_size
from zoo.structures.chart import chart_indicator, clamp_forbidden, is_empty_support
from zoo.structures.dependency import DependencyStructure
from zoo.structures.noise import gumbel_noise

__all__ = ["NonProjectiveDependencyCRF"]


_CONDITION = 11.0
"""The float64 determinant is trusted while log det ≥ -11 in the shifted
frame, where every column's best head has weight 1: the inverse then loses at
most about e^11 · 1e-16 ≈ 6e-12 to rounding, and marginals stay within 1e-11
(at -16 they were already off by 1e-9). Below it, the exact elimination."""


def _inverse_of_laplacian(lu: Tensor, pivots: Tensor) -> Tensor:
    """L̂⁻¹ ``(B, N, N)`` (column-major) from the in-place LU of -L̂ᵀ of `_MatrixTree`.

    The adjoint solve with -I: (-L̂ᵀ)ᵀ X = -I.
    """
    eye = torch.eye(lu.shape[-1], dtype=lu.dtype, device=lu.device).neg_()
    return torch.linalg.lu_solve(lu, pivots, eye.expand_as(lu), adjoint=True)


def _inverse(lu: Tensor, pivots: Tensor) -> Tensor:
    """The inverse ``(B, N, N)`` of the matrices whose LU factorization is given."""
    eye = torch.eye(lu.shape[-1], dtype=lu.dtype, device=lu.device)
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
) -> tuple[Tensor, Tensor, Tensor]:
    """-L̂ of `_laplacian` in one fresh float64 buffer, and the weights it was built from (no autograd).

    The forward pass of `_MatrixTree` and `_Marginals`, in fewer passes over
    B·N² numbers than the differentiable build. Returns ``(-L̂, weights, best
    (B, N))``: the weights exp(θ[h, m] - c_m) in θ's working dtype (ROOT weights
    on the diagonal), with c_m = best[m] the shift of column m.
    """
    theta = theta.detach().to(_working_dtype(theta))
    if valid is not None:
        theta = theta.masked_fill(~valid, -torch.inf)
    best = theta.amax(-2).nan_to_num_(0.0, 0.0, 0.0)  # 0: no real head
    weights = (theta - best.unsqueeze(-2)).exp_()
    padding = None if valid is None else ~valid.diagonal(0, -2, -1)
    return _negated_laplacian_of(weights, padding, multiroot), weights, best.to(torch.float64)


def _negated_laplacian_of(weights: Tensor, padding: Tensor | None, multiroot: bool) -> Tensor:
    """-L̂ ``(B, N, N)`` float64 of arc weights ``(B, N, N)`` (ROOT weights on the diagonal).

    Linear in the weights but for the identity at the ``(B, N)`` padded words.
    """
    matrix = weights.to(torch.float64, copy=True)
    diagonal = matrix.diagonal(0, -2, -1)
    if not multiroot:
        diagonal.zero_()
    into = matrix.sum(-2)  # (B, N): with ROOT for multiroot, without for a single root
    if padding is not None:
        into += padding
    diagonal.copy_(into.neg_())
    if not multiroot:
        matrix[:, 0] = weights.diagonal(0, -2, -1).neg()  # row 0 of L̂ holds ROOT
    return matrix


def _factor(
    matrix: Tensor, negated: bool = False, overwrite: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """LU of L̂ (or of -L̂) with log |det| and where the float64 determinant can be trusted.

    Args:
        matrix: ``(B, N, N)`` L̂, or -L̂ with ``negated=True`` (det L̂ = (-1)^N det(-L̂)),
            or the transpose of either (same determinant).
        overwrite: factor in ``matrix``'s memory (no graph; it should be
            column-major, ``buffer.mT``, or LAPACK works on a copy anyway).

    Returns:
        ``(lu, pivots, log_det (B,), fine)``: ``fine`` is None where every
        determinant can be trusted, else the ``(B,)`` mask of those that can;
        where it is False (a non-positive or too small determinant) the LU is
        that of ∓identity, so that everything computed from it stays finite.
    """
    n = matrix.shape[-1]
    if overwrite:
        pivots = matrix.new_empty(matrix.shape[:-1], dtype=torch.int32)
        info = matrix.new_empty(matrix.shape[:-2], dtype=torch.int32)
        lu, pivots, _ = torch.linalg.lu_factor_ex(matrix, out=(matrix, pivots, info))
    else:
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
    if torch.is_grad_enabled() and matrix.requires_grad:
        # Traced: factor ∓I itself, or the LU's backward meets the singular pivots (0/0).
        lu, pivots, _ = torch.linalg.lu_factor_ex(torch.where(fine.view(-1, 1, 1), matrix, eye))
    else:
        lu = torch.where(fine.view(-1, 1, 1), lu, eye)  # the LU of ∓I is ∓I
        pivots = torch.where(fine.unsqueeze(-1), pivots, steps)
    return lu, pivots, torch.where(fine, log_det, 0.0), fine


def _arc_marginals(weights: Tensor, inverse: Tensor, multiroot: bool) -> Tensor:
    """μ[h, m] = w[h, m] ∂ log det L̂ / ∂w[h, m] (Koo et al. 2007), ``(B, N, N)``, from L̂⁻¹.

    Args:
        weights: ``(B, N, N)`` arc weights, ROOT weights on the diagonal.
        inverse: ``(B, N, N)`` L̂⁻¹.
        multiroot: which L̂.
    """
    return weights * _head_differences(inverse, multiroot)


def _head_differences(inverse: Tensor, multiroot: bool, overwrite: bool = False) -> Tensor:
    """∂ log det L̂ / ∂w[h, m] at [h, m], ``(B, N, N)``, from L̂⁻¹ (negated from -L̂⁻¹).

    Arc h → m enters L̂ at [m, m] (+w) and [h, m] (-w), and ∂ log det / ∂L̂[i, j]
    = L̂⁻¹[j, i]: L̂⁻¹[m, m] - L̂⁻¹[m, h]. The ROOT arcs (the diagonal) enter at
    [m, m] for multiroot; for a single root row 0 of L̂ holds the ROOT weights,
    so they enter at [0, m], and word 0's diagonal entry and the arcs from word
    0 are not in the Laplacian.

    Args:
        overwrite: compute in ``inverse``'s memory (no graph; ``inverse`` is
            lost): every fresh (B, N, N) float64 buffer costs about a pass over it.
    """
    into = inverse.diagonal(0, -2, -1)  # (B, N): L̂⁻¹[m, m]
    if multiroot:
        root = into = into.clone() if overwrite else into
    else:
        into = into.clone()
        into[:, 0] = 0.0
        root = inverse[..., 0].clone() if overwrite else inverse[..., 0]  # L̂⁻¹[m, 0]
    back = inverse.mT  # [h, m] = L̂⁻¹[m, h]
    # The edits below touch one row and the diagonal of a fresh tensor, which
    # autograd allows (subtraction does not save its output).
    difference = torch.sub(into.unsqueeze(-2), back, out=back if overwrite else None)
    if not multiroot:
        difference[:, 0] = into
    difference.diagonal(0, -2, -1).copy_(root)
    return difference


def _matrix_tree_marginals(
    theta: Tensor, valid: Tensor | None, multiroot: bool
) -> tuple[Tensor, Tensor | None]:
    """Closed-form arc marginals ``(B, N, N)`` and the ``fine`` mask of `_factor`, differentiable in θ."""
    matrix, weights, _ = _laplacian(theta, valid, multiroot)
    lu, pivots, _, fine = _factor(matrix)
    inverse = _inverse(lu, pivots)
    return _arc_marginals(weights, inverse, multiroot), fine


def _untrusted(
    fine: Tensor, theta: Tensor, valid: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The sentences whose float64 determinant `_factor` does not trust, for the elimination.

    Returns ``(mask (B,), their θ in float64, their valid mask or None)``.
    """
    bad = ~fine
    return bad, theta[bad].to(torch.float64), None if valid is None else valid[bad]


def _exact_marginals(theta: Tensor, valid: Tensor | None, multiroot: bool) -> Tensor:
    """Arc marginals by autograd of `_log_partition_elimination`; a graph only if θ needs one."""

    def program(t: Tensor) -> Tensor:
        return _log_partition_elimination(t, valid, multiroot)

    if torch.is_grad_enabled() and theta.requires_grad:
        log_z = program(theta)
        (marginals,) = torch.autograd.grad(log_z.sum(), theta, create_graph=True)
    else:
        marginals, log_z = chart_indicator(program, theta)
    # An empty support has no mass: zero marginals (the clamped floor's derivative is not).
    empty = is_empty_support(log_z.detach(), theta.shape[-1] + 1)
    return marginals.masked_fill(empty.view(-1, 1, 1), 0.0)


def _traced_marginals(theta: Tensor, valid: Tensor | None, multiroot: bool) -> Tensor:
    """Float64 arc marginals ``(B, N, N)`` of θ (any dtype) at any scale, differentiable in θ by autograd."""
    marginals, fine = _matrix_tree_marginals(theta, valid, multiroot)
    if fine is not None:
        bad, sub_theta, sub_valid = _untrusted(fine, theta, valid)
        exact = _exact_marginals(sub_theta, sub_valid, multiroot)
        marginals = marginals.masked_scatter(bad.view(-1, 1, 1), exact)
    return marginals


class _MatrixTree(torch.autograd.Function):
    """log Z of θ (any dtype) by the matrix-tree theorem, with closed-form marginals as backward.

    One float64 LU, taken in place, serves both passes (autograd through the
    matrix build and slogdet costs more than the whole closed form); the
    elementwise work stays in θ's working dtype. Sentences whose shifted
    determinant cannot be trusted in float64 take log Z and marginals from the
    log-space elimination instead. A second-order backward (a gradient taken
    with ``create_graph=True``) is `_Marginals`, whose own backward is the
    closed-form Hessian-vector product.
    """

    @staticmethod
    def forward(ctx: Any, theta: Tensor, valid: Tensor | None, multiroot: bool) -> Tensor:
        matrix, weights, best = _negated_laplacian(theta, valid, multiroot)
        # det(-L̂ᵀ) = det(-L̂), and the row-major buffer's transpose is the
        # column-major matrix LAPACK factors in place.
        lu, pivots, log_det, fine = _factor(matrix.mT, negated=True, overwrite=True)
        log_z = log_det + best.sum(-1)
        empty = None
        if fine is not None:
            bad, sub_theta, sub_valid = _untrusted(fine, theta, valid)
            exact = _log_partition_elimination(sub_theta, sub_valid, multiroot)
            log_z = log_z.masked_scatter(bad, exact)
            # The elimination's forbidden floor stands in for -inf: map it back.
            empty = is_empty_support(log_z, theta.shape[-1] + 1)
            log_z = log_z.masked_fill(empty, -torch.inf)
        ctx.save_for_backward(theta, weights, lu, pivots, fine, empty)
        ctx.valid, ctx.multiroot = valid, multiroot
        return log_z.to(theta.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        theta, weights, lu, pivots, fine, empty = ctx.saved_tensors
        if empty is not None:
            grad = grad.masked_fill(empty, 0.0)  # A = -inf: no gradient
        if torch.is_grad_enabled():
            marginals = _Marginals.apply(theta, ctx.valid, ctx.multiroot)
            return grad.view(-1, 1, 1) * marginals, None, None
        difference = _head_differences(_inverse_of_laplacian(lu, pivots), ctx.multiroot, True)
        # The rest in the weights' (θ's working) dtype: one cast, then in place.
        marginals = difference.to(weights.dtype).mul_(weights)
        marginals.mul_(grad.view(-1, 1, 1).to(weights.dtype))
        if fine is not None:
            bad, sub_theta, sub_valid = _untrusted(fine, theta, ctx.valid)
            exact = _exact_marginals(sub_theta, sub_valid, ctx.multiroot)
            exact = exact * grad[bad].to(torch.float64).view(-1, 1, 1)
            marginals = marginals.masked_scatter(bad.view(-1, 1, 1), exact.to(weights.dtype))
        return marginals.to(theta.dtype), None, None


class _Marginals(torch.autograd.Function):
    """Arc marginals of θ (any dtype) by the closed form, with a closed-form backward.

    The backward is the Hessian-vector product of log Z. With μ = w ⊙ D, D =
    ∂ log det L̂ / ∂w and X = L̂⁻¹, a perturbation dL̂ = L(v) of the weights
    gives dX = -X L(v) X, so the derivative of ⟨G, μ⟩ is

        G ⊙ μ + w ⊙ D'(X (-L(v)) X),   v = G ⊙ w,

    with D'(Y) the head differences of Y (`_head_differences`): two batched
    matrix products. Sentences whose determinant cannot be trusted in float64
    take both passes from the log-space elimination, and a backward under
    ``create_graph=True`` differentiates the traced closed form.
    """

    @staticmethod
    def forward(ctx: Any, theta: Tensor, valid: Tensor | None, multiroot: bool) -> Tensor:
        matrix, weights, _ = _negated_laplacian(theta, valid, multiroot)
        lu, pivots, _, fine = _factor(matrix.mT, negated=True, overwrite=True)
        inverse = _inverse_of_laplacian(lu, pivots)
        # A fresh difference (the inverse is kept for the backward), then in place.
        # The output is not saved: a caller may edit it in place.
        marginals = _head_differences(inverse, multiroot).to(weights.dtype).mul_(weights)
        if fine is not None:
            bad, sub_theta, sub_valid = _untrusted(fine, theta, valid)
            exact = _exact_marginals(sub_theta, sub_valid, multiroot)
            marginals = marginals.masked_scatter(bad.view(-1, 1, 1), exact.to(weights.dtype))
        ctx.save_for_backward(theta, weights, inverse, fine)
        ctx.valid, ctx.multiroot = valid, multiroot
        return marginals.to(theta.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        theta, weights, inverse, fine = ctx.saved_tensors
        valid, multiroot = ctx.valid, ctx.multiroot
        if torch.is_grad_enabled():
            traced = _traced_marginals(theta, valid, multiroot)
            (result,) = torch.autograd.grad(traced, theta, grad, create_graph=True)
            return result, None, None
        grad = grad.to(weights.dtype)
        change = _negated_laplacian_of(grad * weights, None, multiroot)  # -L(v)
        moved = torch.matmul(torch.matmul(inverse, change), inverse)  # X (-L(v)) X
        result = _head_differences(moved, multiroot, overwrite=True).to(weights.dtype)
        difference = _head_differences(inverse, multiroot).to(weights.dtype)  # inverse: saved, kept
        result = result.addcmul_(grad, difference).mul_(weights)  # w ⊙ (D'(…) + G ⊙ D)
        if fine is not None:
            bad, leaf, sub_valid = _untrusted(fine, theta, valid)
            with torch.enable_grad():
                leaf.requires_grad_(True)
                exact = _exact_marginals(leaf, sub_valid, multiroot)
                (exact,) = torch.autograd.grad(exact, leaf, grad[bad].to(torch.float64))
            result = result.masked_scatter(bad.view(-1, 1, 1), exact.to(result.dtype))
        return result.to(theta.dtype), None, None


def _logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """log(e^a + e^b), twice differentiable where one side is the floor of `zoo.structures.chart.clamp_forbidden`.

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
    theta = clamp_forbidden(theta, n + 1)
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


class NonProjectiveDependencyCRF(DependencyStructure):
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
        """A(θ) ``(*batch)``; -inf where no arborescence avoids every forbidden arc."""
        theta, lengths = self.flatten_batch()
        valid = None if lengths is None else self._valid(lengths, theta.shape[0], theta.device)
        return self.unflatten_batch(_MatrixTree.apply(theta, valid, self.multiroot))

    def _check_support(self, empty: Tensor, what: str) -> None:
        if bool(empty.any()):
            raise ValueError(
                f"NonProjectiveDependencyCRF.{what}: the support is empty (every tree uses a "
                f"forbidden -inf arc) at flat batch index {empty.nonzero()[:5, 0].tolist()}; "
                f"log_partition() is -inf there"
            )

    def marginals(self) -> Tensor:
        theta, lengths = self.flatten_batch()
        valid = None if lengths is None else self._valid(lengths, theta.shape[0], theta.device)
        return self.unflatten_batch(_Marginals.apply(theta, valid, self.multiroot))

    def argmax(self) -> Tensor:
        theta, lengths = self.flatten_batch()
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
        heads = max_arborescence(graph)[:, 1:] - 1  # (B, N): word index, -1 for ROOT
        z = self._heads_to_arcs(heads, word)
        # The best tree uses a forbidden arc only if every tree does.
        used = torch.where(z != 0, scores, 0.0).sum((-2, -1))
        self._check_support(used == -torch.inf, "argmax")
        return self.unflatten_batch(z)

    def _heads_to_arcs(self, heads: Tensor, word: Tensor) -> Tensor:
        """Head indices ``(B, N)`` (-1 = ROOT) → arc indicators ``(B, N, N)`` in θ's dtype."""
        child = torch.arange(heads.shape[-1], device=heads.device).expand_as(heads)
        row = torch.where(heads < 0, child, heads)
        z = F.one_hot(row, heads.shape[-1]).transpose(-2, -1).contiguous()  # z[b, row[m], m]
        return (z * word.unsqueeze(-2)).to(self.log_potentials.dtype)

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        shape = _as_size(sample_shape)
        num = shape.numel()
        if num == 0 or math.prod(self.batch_shape) == 0:
            return self.log_potentials.new_zeros(shape + self.batch_shape + self.event_shape)
        theta, lengths = self.flatten_batch()
        theta = theta.detach().to(torch.float64)
        valid = self._valid(lengths, theta.shape[0], theta.device)
        theta = theta.expand(num, *theta.shape).reshape(-1, *theta.shape[1:])  # (S·B, N, N)
        valid = valid.expand(num, *valid.shape).reshape(-1, *valid.shape[1:])
        heads, fine = self._sample_fast(theta, valid)
        if not bool(fine.all()):
            bad = ~fine
            # Only sentences the float64 determinant cannot handle can have an empty support.
            log_z = _log_partition_elimination(theta[bad], valid[bad], self.multiroot)
            self._check_support(is_empty_support(log_z, theta.shape[-1] + 1), "sample")
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
            probs = chart_indicator(
                lambda t: _log_partition_elimination(t, valid, self.multiroot), theta
            )[0][:, :, m]
            pick = (probs.clamp(min=0.0).log() + _gumbel_like(probs)).argmax(-1)
            heads[:, m] = torch.where(pick == m, -1, pick)
            keep = rows.unsqueeze(0) == pick.unsqueeze(-1)  # (B, N): the drawn head only
            theta = theta.clone()
            theta[:, :, m] = torch.where(keep, theta[:, :, m], low)
        return heads


def _gumbel_like(x: Tensor) -> Tensor:
    return gumbel_noise(x.shape, dtype=x.dtype, device=x.device)
