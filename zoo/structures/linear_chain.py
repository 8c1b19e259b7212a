r"""Linear-chain CRF: label sequences as indicator tensors over transitions.

The set Z holds the label sequences y_0, …, y_{L-1} ∈ {0, …, C-1} of a chain
of L positions, each written as the 0/1 indicator of the transitions it uses,
in torch-struct's layout: z ∈ {0, 1}^{(N-1)×C×C} with

    z[n, c', c] = 1  ⟺  y_{n+1} = c' and y_n = c        (n < L - 1),

and θ of the same shape, θ[n, c', c] = φ(n, y_{n+1} = c', y_n = c). Unary
(emission) scores are folded into the transitions, the first position's into
θ[0] as in `torch_struct.LinearChain.hmm`. The distribution factorizes over
the transitions:

    q(y) ∝ Π_{n < L-1} exp θ[n, y_{n+1}, y_n],
    A(θ) = log Σ_c α_{L-1}(c),   α_0 = 0,   α_{n+1}(c') = log Σ_c exp(α_n(c) + θ[n, c', c]).

Everything is the O(N·C²) forward algorithm above (Rabiner 1989; Lafferty
et al. 2001), written as a sequential loop over `unbind` slices, never
torch-struct's O(N·C³) parallel scan (Rush 2020), which on CPU costs C times
the work and memory. The forward algorithm is the chain's `inside` pass over
`zoo.structures.chart`'s semirings, which alone would give every exact query
(`ChartStructure`); the hand-written paths below are faster and override it
(the tests compare each with the generic one):

* `log_partition`: the forward recursion, with an explicit backward pass.
  The gradient at transition n is q(y_{n+1} = c') · q(y_n = c | y_{n+1} = c'),
  and the backward conditionals q(y_n = c | y_{n+1} = c') = exp(α_n(c) +
  θ[n, c', c] - α_{n+1}(c')) come out of the stored α in one vectorized step,
  so the backward sweep is one small mat-vec per position.
* `marginals`: the same sweep, written with differentiable operations, so
  relaxed samples carry gradients without double backward.
* `argmax`: Viterbi with back-pointers.
* `sample`: exact forward-filtering backward-sampling (FFBS; Carter & Kohn
  1994; Frühwirth-Schnatter 1994), inverse-CDF sampling at every backward
  step, all S samples in one sweep of batch (B, S).
* `gumbel_crf`: the Gumbel-CRF of Fu et al. (2020, "Latent Template
  Induction with Gumbel-CRFs"): relaxed FFBS, whose hard path is an exact
  sample and whose soft path replaces every Gumbel-max by a tempered softmax
  (details in `LinearChainCRF`). `rsample` and `rsample_with_hard` stay the
  base class's (Gumbel noise on every transition: argmax(θ + G), a
  perturb-and-MAP sample, and the stochastic softmax trick, marginals of
  (θ + G)/τ); which relaxation to train with is the estimator's choice
  (`zoo.estimators.GumbelCRF` uses relaxed FFBS, `STGumbelSoftmax` and
  `GumbelSoftmax` the base class's pair).
* `entropy`: the chain rule H(y) = H(y_{L-1}) + Σ_n H(y_n | y_{n+1}), as
  accurate as the conditionals; A(θ) - ⟨θ, μ⟩ cancels catastrophically at
  large |θ| (with ties at |θ| ~ 1e4 in float32 it is off by hundreds).

**Building a chain from scores.** Models describe a chain by unary scores
(a label at a position), transition scores and start scores;
`LinearChainCRF.from_scores` turns them into θ, always in one layout: a
chain of L labels becomes L + 1 positions whose last is a virtual end (label
0, score 0), so θ has one transition per label, ``(*batch, N, C, C)`` for N
labels, every label's unary score sits in the transition that enters it
(the first label's, with the start score, in θ[0]), and the labels of z are
``z.sum(-2)`` at positions n < L. A one-label chain then keeps its C
outcomes (the fold of the first unary into θ[0] alone would lose them, see
below).

**Lengths.** With ``lengths`` (*batch) in [1, N], positions n ≥ L are
padding: transitions n ≥ L - 1 are 0 in every z, marginal and gradient, and
padded steps carry the forward state unchanged. A chain of length 1 has no
transitions at all: its only z is the zero tensor, so q is a point mass with
A(θ) = 0, zero marginals, zero entropy and log q(0) = 0. (torch-struct
returns log C there: it counts the C labels of the lone position as separate
outcomes although they share one z, which would make log q(0) = -log C for
the only z there is. The first position's unary score lives in θ[0], a
padded transition at L = 1, so there is nothing to sum over.) For L ≥ 2
sequences and indicator tensors are in one-to-one correspondence and A(θ)
equals torch-struct's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from zoo.structures.base import _as_size, _at_least_zero
from zoo.structures.chart import ChartStructure, Semiring, clamp_forbidden, work_dtype
from zoo.structures.noise import gumbel_noise, safe_uniform

__all__ = ["LinearChainCRF"]

# --------------------------------------------------------------------------- kernels
# All kernels take flat tensors: θ (B, M, C, C) with M = N - 1 transitions,
# α (B, N, C), and ``pad`` (B, M) True at padded transitions (or None).


def _pad_mask(lengths: Tensor | None, num_transitions: int) -> Tensor | None:
    """``(B, M)`` True at transitions n ≥ length - 1, None without lengths."""
    if lengths is None:
        return None
    steps = torch.arange(num_transitions, device=lengths.device)
    return steps >= (lengths - 1).unsqueeze(-1)


_LOG2_E = 1.4426950408889634


def _logsumexp_(x: Tensor) -> Tensor:
    """logsumexp over the last dimension, overwriting the temporary ``x``.

    The forward loop is bound by per-kernel overhead, not arithmetic. On
    contiguous tensors ``exp`` and ``log`` (and ``torch.logsumexp``) enter an
    OpenMP parallel region at any size: with a sleeping (passive) worker thread
    each call then waits tens of microseconds for it, and on a busy machine a
    spinning one can stall a step for a scheduler time slice. ``exp2`` and
    ``log1p`` stay in the calling thread below torch's parallel grain.
    """
    # An all -inf row has max -inf and -inf - (-inf) = NaN: the lowest float instead.
    top = x.amax(-1, keepdim=True).clamp_(min=torch.finfo(x.dtype).min)
    total = x.sub_(top).mul_(_LOG2_E).exp2_().sum(-1)
    # total ≥ 1 (the largest term is exp(0) = 1), or 0 for an all -inf row, where
    # log1p(total - 1) = log(total) is -inf as it should be.
    return total.sub_(1.0).log1p_().add_(top.squeeze(-1))


def _forward_alpha(theta: Tensor, pad: Tensor | None) -> Tensor:
    """The forward recursion α ``(B, N, C)``, never recording a graph (its callers
    either need none or differentiate it with `_ForwardFilter`); padded steps carry
    α unchanged."""
    batch, _, size, _ = theta.shape
    alpha = theta.new_zeros(batch, size)
    out = [alpha]
    # Slices from unbind: theta[:, n] in the loop would make the backward O(N²),
    # each select's backward filling a full-size zero gradient.
    steps = theta.unbind(1)
    pads = pad.unsqueeze(-1).unbind(1) if pad is not None else (None,) * len(steps)
    for step, padded in zip(steps, pads, strict=True):
        nxt = _logsumexp_(alpha.unsqueeze(-2) + step)
        alpha = nxt if padded is None else torch.where(padded, alpha, nxt)
        out.append(alpha)
    return torch.stack(out, dim=1)


def _log_conditionals(theta: Tensor, alpha: Tensor, pad: Tensor | None) -> Tensor:
    """log q(y_n = c | y_{n+1} = c') = α_n(c) + θ[n, c', c] - α_{n+1}(c'), ``(B, M, C, C)``.

    Unreachable states (α_{n+1}(c') = -inf) get -inf rows instead of NaN, and
    padded transitions are -inf throughout (their conditionals are unused).
    """
    inplace = not torch.is_grad_enabled()
    nxt = alpha[:, 1:]
    # -inf - (-inf) is NaN; any finite stand-in gives the right -inf row.
    nxt = nxt.masked_fill(nxt == -math.inf, 0.0).unsqueeze(-1)
    log_w = theta + alpha[:, :-1].unsqueeze(-2)
    log_w = log_w.sub_(nxt) if inplace else log_w - nxt
    if pad is not None:
        mask = pad[..., None, None]
        log_w = (
            log_w.masked_fill_(mask, -math.inf) if inplace else log_w.masked_fill(mask, -math.inf)
        )
    return log_w


def _backward_sweep(
    cond: Tensor, grad_last: Tensor, grad_alpha: Tensor | None, pad: Tensor | None
) -> Tensor:
    """Back-propagate through the forward recursion given the conditionals.

    Args:
        cond: q(y_n = c | y_{n+1} = c'), ``(B, M, C, C)``, 0 at padded transitions.
        grad_last: ``(B, C)`` gradient with respect to α_{N-1}.
        grad_alpha: optional ``(B, N, C)`` gradient with respect to every α_n
            (its last row is ignored in favour of ``grad_last``).
        pad: ``(B, M)`` padded transitions or None.

    Returns:
        ``(B, M, C)``: the total gradient with respect to α_{n+1} for every
        transition n; the gradient of θ[n, c', c] is this times ``cond``.
        With ``grad_last`` the posterior of the last position (and no
        ``grad_alpha``), row n is the marginal q(y_{n+1} = c').
    """
    num = cond.shape[1]
    acc = grad_last
    accs: list[Tensor] = [acc] * num
    conds = cond.unbind(1)
    pads = pad.unsqueeze(-1).unbind(1) if pad is not None else (None,) * num
    grads = grad_alpha.unbind(1) if grad_alpha is not None else None
    for n in range(num - 1, -1, -1):
        accs[n] = acc
        # Σ_c' acc[c'] cond[c', c] as a product and a sum: torch.bmm goes to a
        # multi-threaded BLAS call, whose hand-off costs more than this mat-vec.
        back = (acc.unsqueeze(-1) * conds[n]).sum(-2)
        if pads[n] is not None:
            back = torch.where(pads[n], acc, back)  # padded steps copy α_n to α_{n+1}
        acc = back if grads is None else back + grads[n]
    return torch.stack(accs, dim=1)


def _transition_grad(cond: Tensor, accs: Tensor) -> Tensor:
    """``accs[..., c'] · cond[..., c', c]``, in place when no graph is recorded."""
    if torch.is_grad_enabled():
        return accs.unsqueeze(-1) * cond
    return cond.mul_(accs.unsqueeze(-1))


class _ForwardFilter(torch.autograd.Function):
    """α = forward recursion of θ, with the conditional-probability backward pass.

    The backward pass is written with differentiable operations on θ and the
    saved output α, so double backward works as well.
    """

    @staticmethod
    def forward(ctx: Any, theta: Tensor, pad: Tensor | None) -> Tensor:
        alpha = _forward_alpha(theta, pad)
        ctx.save_for_backward(theta, alpha, pad)
        return alpha

    @staticmethod
    def backward(ctx: Any, grad_alpha: Tensor) -> tuple[Tensor, None]:
        theta, alpha, pad = ctx.saved_tensors
        cond = _log_conditionals(theta, alpha, pad)
        cond = cond.exp_() if not torch.is_grad_enabled() else cond.exp()
        accs = _backward_sweep(cond, grad_alpha[:, -1], grad_alpha, pad)
        return _transition_grad(cond, accs), None


def _filter(theta: Tensor, pad: Tensor | None) -> Tensor:
    """α ``(B, N, C)``, recording a graph only where one is wanted."""
    if torch.is_grad_enabled() and theta.requires_grad:
        return _ForwardFilter.apply(theta, pad)
    return _forward_alpha(theta, pad)


def _indicators(states: Tensor, pad: Tensor | None, size: int, dtype: torch.dtype) -> Tensor:
    """Label sequences ``(K, N)`` → transition indicators ``(K, N-1, C, C)``, padding 0."""
    count, length = states.shape
    cells = size * size
    # The flat position of cell (y_{n+1}, y_n) of transition n of sequence k.
    start = torch.arange(count * (length - 1), device=states.device).view(count, length - 1)
    start = start * cells
    index = (start + states[:, 1:] * size + states[:, :-1]).view(-1)
    z = torch.zeros(count * (length - 1) * cells, dtype=dtype, device=states.device)
    if pad is None:
        z.index_fill_(0, index, 1.0)
    else:
        z.index_put_((index,), (~pad).reshape(-1).to(dtype))
    return z.view(count, length - 1, size, size)


def _safe_last(alpha: Tensor, single: Tensor) -> tuple[Tensor, Tensor]:
    """α_{N-1} with rows of an empty support set to 0 (so no NaN enters a softmax), and those rows.

    Returns:
        ``(last (B, C), empty (B,))``; ``empty`` is False at L = 1 (one z, the zero tensor).
    """
    last = alpha[:, -1]
    empty = (last == -math.inf).all(-1) & ~single
    return torch.where(empty.unsqueeze(-1), 0.0, last), empty


def _check_support(q: ChartStructure, empty: Tensor, what: str) -> None:
    """ValueError for batch elements whose every path uses a forbidden transition."""
    if bool(empty.any()):
        index = empty.nonzero()[:5, 0].tolist()
        raise ValueError(
            f"{type(q).__name__}.{what}: the support is empty (every path uses a forbidden "
            f"-inf transition) at flat batch index {index}; log_partition() is -inf there"
        )


def _check_scores(
    unary: Tensor,
    transition: Tensor,
    start: Tensor | None,
    lengths: Tensor | None,
    validate_args: bool | None,
) -> None:
    """ValueError naming the first of `LinearChainCRF.from_scores`' arguments that does not fit."""
    name = "LinearChainCRF.from_scores"
    if not isinstance(unary, Tensor) or not unary.is_floating_point() or unary.dim() < 2:
        got = tuple(unary.shape) if isinstance(unary, Tensor) else type(unary).__name__
        raise ValueError(f"{name}: unary must be a floating-point (*batch, N, C) tensor, got {got}")
    *batch, size, labels = unary.shape
    per_step = (*batch, size - 1, labels, labels)
    allowed = [(labels, labels), (*batch, labels, labels), per_step]
    if not isinstance(transition, Tensor) or tuple(transition.shape) not in allowed:
        got = tuple(transition.shape) if isinstance(transition, Tensor) else transition
        raise ValueError(
            f"{name}: transition must have shape (C, C) = {allowed[0]}, (*batch, C, C) = "
            f"{allowed[1]} or (*batch, N-1, C, C) = {per_step} for unary {tuple(unary.shape)}, "
            f"got {got}"
        )
    if start is not None and tuple(start.shape) not in [(labels,), (*batch, labels)]:
        raise ValueError(
            f"{name}: start must have shape (C,) = ({labels},) or (*batch, C) = "
            f"{(*batch, labels)} for unary {tuple(unary.shape)}, got {tuple(start.shape)}"
        )
    if lengths is None:
        return
    if tuple(lengths.shape) != tuple(batch):
        raise ValueError(
            f"{name}: lengths of shape {tuple(lengths.shape)} (batch size "
            f"{lengths.shape[0] if lengths.dim() else 'none'}) do not match unary "
            f"{tuple(unary.shape)} (batch shape {tuple(batch)}); expected one length per chain"
        )
    validate = Distribution._validate_args if validate_args is None else validate_args
    if validate and lengths.numel() > 0:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > size:
            raise ValueError(
                f"{name}: lengths must lie in [1, {size}] (labels per chain, unary "
                f"{tuple(unary.shape)}), got values from {low} to {high}"
            )


# --------------------------------------------------------------------------- structure
class LinearChainCRF(ChartStructure):
    r"""A linear-chain CRF over label sequences, in torch-struct's transition layout.

    ``z[..., n, c', c] = 1`` iff the sequence moves from label c at position n
    to label c' at position n + 1 (one 1 per real transition), and θ has the
    same layout (torch-struct's ``LinearChainCRF`` event format). Lengths count
    positions; a length-1 chain has no transitions, so its only z is zero and
    A(θ) = 0 (see the module docstring).

    Two relaxations of a sample are available, and the distribution stores
    neither as a policy (the estimator picks one):

    * `rsample`: the marginals of (θ + G)/τ with i.i.d. Gumbel G on every
      transition, the stochastic softmax trick of Paulus et al. (2020) (the
      base-class relaxation).
    * `gumbel_crf`: the soft path of the Gumbel-CRF (Fu et al. 2020), relaxed
      forward-filtering backward-sampling with Gumbel noise G_n ∈ R^C on every
      position's label, together with its hard path.

    The Gumbel-CRF pair, drawn backwards from the last position with
    log q(y_n = c | y_{n+1} = c') = α_n(c) + θ[n, c', c] - α_{n+1}(c'):

    * hard: y_{L-1} = argmax(α_{L-1} + G_{L-1}), then
      y_n = argmax_c(log q(y_n = c | y_{n+1}) + G_n(c)): Gumbel-max at every
      step, an exact FFBS sample;
    * soft: s_{L-1} = softmax((α_{L-1} + G_{L-1})/τ), and for every candidate
      c' the relaxed row R_n[c', ·] = softmax((log q(y_n = · | y_{n+1} = c') +
      G_n)/τ) with the same noise; the relaxed transitions are
      ``soft[n, c', c] = s_{n+1}(c') R_n[c', c]`` and s_n = s_{n+1} R_n.

    Fu et al. condition position n's relaxed label on the *hard* label at n + 1
    (s_n = R_n[y_{n+1}]); conditioning on the relaxed one instead makes the
    soft transitions the pairwise marginals of a Markov chain, i.e. a point of
    the marginal polytope: nonnegative, mass 1 per real transition, the mass
    entering each position equal to the mass leaving it, exactly 0 on
    forbidden (-inf) transitions, and equal to the hard path as τ → 0 (as
    Fu et al.'s). It costs O(S·B·N·C²), the size of the output.

    `rsample_with_hard` is the base class's (argmax and marginals of θ + G with
    noise on every transition), not this pair: straight-through on the
    Gumbel-CRF is ``GumbelCRF(straight_through=True)``, an estimator's choice.

    Models build chains with `from_scores` (unary, transition and start
    scores, one layout).

    Args:
        log_potentials: θ, ``(*batch, N-1, C, C)``, θ[n, c', c] = φ(n, y_{n+1}=c',
            y_n=c); ``-inf`` forbids a transition.
        lengths: optional ``(*batch)`` integer number of positions, in [1, N].
        validate_args: check θ for NaN and lengths for range.

    Raises:
        ValueError: θ not of shape ``(*batch, N-1, C, C)`` with square C×C
            blocks and C ≥ 1, NaN in θ, lengths out of [1, N].

    Example:
        >>> q = LinearChainCRF(torch.zeros(2, 3, 2, 2), lengths=torch.tensor([4, 2]))
        >>> q.log_partition()  # 2^4 and 2^2 sequences
        tensor([2.7726, 1.3863])
        >>> q.sample(5).shape
        torch.Size([5, 2, 3, 2, 2])
    """

    event_dim = 3

    @classmethod
    def from_scores(
        cls,
        unary: Tensor,
        transition: Tensor,
        start: Tensor | None = None,
        lengths: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> LinearChainCRF:
        r"""The chain over label sequences y_0, …, y_{L-1} with the score

            s(y) = start[y_0] + Σ_{n<L} unary[n, y_n] + Σ_{n<L-1} transition[n, y_{n+1}, y_n].

        The one layout in which the zoo builds chains (torch-struct's
        ``LinearChain.hmm`` folds the first unary into θ[0] and so cannot hold a
        one-label chain): L labels become L + 1 positions, the last a virtual
        end that must take label 0 at score 0, so

            θ[n, c', c] = transition[n, c', c] + unary[n+1, c']   (n < L - 1),
            θ[L-1, c', c] = 0 if c' = 0 else -inf                  (the end),
            θ[0, c', c] += start[c] + unary[0, c],

        and transitions n ≥ L are padding. The labels of a z (a sample, the
        MAP, or the marginals μ) are ``z.sum(-2)``, ``(…, N, C)``: one-hot (or
        the label marginals) at n < L, 0 at padding.

        Args:
            unary: ``(*batch, N, C)``, unary[n, c] the score of label c at position n.
            transition: transition[c', c] the score of label c' following c:
                ``(C, C)`` shared, ``(*batch, C, C)`` one per chain, or
                ``(*batch, N-1, C, C)`` one per step n → n + 1.
            start: ``(C,)`` or ``(*batch, C)``, the score of the first label;
                None: 0.
            lengths: ``(*batch)`` labels per chain, in [1, N]; None: all N.
            validate_args: check the scores for NaN and the lengths for range.

        Returns:
            A `LinearChainCRF` of θ ``(*batch, N, C, C)`` and lengths ``lengths + 1``.

        Raises:
            ValueError: scores of mismatched shapes, lengths of another batch
                shape or out of [1, N]; each message names the shapes or values.

        Example:
            >>> q = LinearChainCRF.from_scores(torch.zeros(2, 3, 4), torch.zeros(4, 4),
            ...                                lengths=torch.tensor([3, 1]))
            >>> q.log_partition().exp().round()  # 4^3 and 4 label sequences
            tensor([64.,  4.])
        """
        _check_scores(unary, transition, start, lengths, validate_args)
        *batch, size, labels = unary.shape
        steps = torch.arange(size, device=unary.device)
        last = size - 1 if lengths is None else (lengths - 1).unsqueeze(-1)  # (*batch, 1)
        if transition.dim() == unary.dim() + 1:  # one per step: (*batch, N-1, C, C)
            step = torch.nn.functional.pad(transition, (0, 0, 0, 0, 0, 1))
        else:
            step = transition.unsqueeze(-3)
        start = unary.new_zeros(labels) if start is None else start
        # Three full-size (*batch, N, C, C) operations; everything else is (*batch, N, C).
        following = torch.nn.functional.pad(unary[..., 1:, :], (0, 0, 0, 1))  # unary[n + 1]
        first = torch.nn.functional.pad(
            (unary[..., 0, :] + start).unsqueeze(-2), (0, 0, 0, size - 1)
        )  # (*batch, N, C): nonzero at n = 0
        end = torch.full((labels, 1), -math.inf, dtype=unary.dtype, device=unary.device)
        end[0] = 0.0
        tail = torch.where((steps == last)[..., None, None], end, 0.0)  # (*batch, N, C, 1)
        inner = step + following.unsqueeze(-1)  # (*batch, N, C', C)
        theta = torch.where((steps < last)[..., None, None], inner, tail)
        theta = theta + first.unsqueeze(-2)
        positions = None if lengths is None else lengths + 1
        return cls(theta, lengths=positions, validate_args=validate_args)

    # ------------------------------------------------------------------ set-up
    @classmethod
    def event_layout(cls) -> str:
        return "(*batch, N-1, C, C)"

    def check_event_shape(self, event_shape: torch.Size) -> None:
        _, size, size2 = event_shape
        if size != size2 or size < 1:
            raise ValueError(
                f"LinearChainCRF: log_potentials must end with square transition blocks "
                f"(*batch, N-1, C, C) with C ≥ 1, got event shape {tuple(event_shape)} "
                f"({size}×{size2} blocks)"
            )

    @property
    def max_length(self) -> int:
        """N: the number of positions, one more than the number of transitions."""
        return self.log_potentials.shape[-3] + 1

    @property
    def num_states(self) -> int:
        """C, the number of labels."""
        return self.log_potentials.shape[-1]

    def _setup(self) -> tuple[Tensor, Tensor | None, Tensor]:
        """Flat θ ``(B, M, C, C)``, the padding mask ``(B, M)`` and ``(B,)`` True at L = 1."""
        theta, lengths = self.flatten_batch()
        num = theta.shape[1]
        if lengths is None:
            single = torch.full((theta.shape[0],), num == 0, device=theta.device)
        else:
            single = lengths == 1
        return theta, _pad_mask(lengths, num), single

    # ---------------------------------------------------------- exact oracles
    def inside(self, theta: Tensor, lengths: Tensor | None, semiring: Semiring) -> Tensor:
        """The forward algorithm over a semiring, ``(B,)``; the generic path of every query.

        Overridden by the faster `log_partition`, `marginals`, `argmax` and
        `sample` below; kept as their reference.
        """
        theta = clamp_forbidden(theta.to(work_dtype(theta.dtype)), self.chart_size)
        batch, num, size, _ = theta.shape
        pad = _pad_mask(lengths, num)
        alpha = theta.new_zeros(batch, size)
        for n, step in enumerate(theta.unbind(1)):
            nxt = semiring(alpha.unsqueeze(-2) + step, -1)
            alpha = nxt if pad is None else torch.where(pad[:, n : n + 1], alpha, nxt)
        value = semiring(alpha, -1)
        single = (lengths == 1) if lengths is not None else torch.tensor(num == 0)
        return torch.where(single.to(theta.device), 0.0, value)  # L = 1: the only z is 0

    def _alpha(self, theta: Tensor, pad: Tensor | None) -> Tensor:
        """The forward recursion of flat θ, memoized on a `cached` structure.

        Only for θ as `_setup` gives it (the memo belongs to the instance's own θ);
        without gradients a memoized differentiable α is reused detached.
        """
        if self._memo is None:
            return _filter(theta, pad)
        alpha = self._memo_get("alpha")
        if alpha is None and not torch.is_grad_enabled():
            alpha = self._memo.get(("alpha", True))
            alpha = None if alpha is None else alpha.detach()
        if alpha is None:
            alpha = _filter(theta, pad)
            self._memo_put(alpha=alpha)
        return alpha

    def _log_partition_from(self, alpha: Tensor, single: Tensor) -> Tensor:
        last, empty = _safe_last(alpha, single)
        log_z = torch.where(empty, -math.inf, torch.logsumexp(last, dim=-1))
        return self.unflatten_batch(torch.where(single, 0.0, log_z))

    def log_partition(self) -> Tensor:
        """A(θ) ``(*batch)``: 0 at L = 1, -inf where every path uses a forbidden transition."""
        theta, pad, single = self._setup()
        # N = 1 (no transitions) is a single chain of length 1
        return self._log_partition_from(self._alpha(theta, pad), single)

    def _forward_backward(
        self, theta: Tensor, pad: Tensor | None, single: Tensor, keep: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The forward-backward pass on flat θ.

        Returns:
            ``(μ, log_w, log_last)``: marginals ``(B, M, C, C)``, log
            conditionals log q(y_n = c | y_{n+1} = c') ``(B, M, C, C)`` (None
            unless ``keep``) and the last position's log posterior ``(B, C)``.
        """
        alpha = self._alpha(theta, pad)
        safe, empty = _safe_last(alpha, single)
        log_last = torch.log_softmax(safe, dim=-1)
        # A length-1 chain has no transitions, an empty support no mass: zero
        # flow keeps their marginals 0.
        last = torch.where((single | empty).unsqueeze(-1), 0.0, log_last.exp())
        log_w = _log_conditionals(theta, alpha, pad)
        cond = log_w.exp() if keep or torch.is_grad_enabled() else log_w.exp_()
        flow = _backward_sweep(cond, last, None, pad)  # (B, M, C): q(y_{n+1} = c')
        if keep:
            return flow.unsqueeze(-1) * cond, log_w, log_last
        return _transition_grad(cond, flow), None, log_last

    def marginals(self) -> Tensor:
        """μ[..., n, c', c] = q(y_{n+1} = c', y_n = c), ``(*batch, N-1, C, C)``.

        Differentiable in θ when gradients are on; 0 at padded transitions.
        """
        theta, pad, single = self._setup()
        if theta.shape[1] == 0:
            return torch.zeros_like(self.log_potentials)
        if self._memo is not None:
            return self.unflatten_batch(self._shared_pass()[0])
        return self.unflatten_batch(self._forward_backward(theta, pad, single, keep=False)[0])

    def entropy(self) -> Tensor:
        """H(q) = H(y_{L-1}) + Σ_n H(y_n | y_{n+1}), ``(*batch)``; 0 at L = 1."""
        theta, pad, single = self._setup()
        if theta.shape[1] == 0:
            return self.unflatten_batch(theta.new_zeros(theta.shape[0]) + theta.sum((1, 2, 3)))
        if self._memo is not None:
            return self.unflatten_batch(self._entropy_from(*self._shared_pass()))
        mu, log_w, log_last = self._forward_backward(theta, pad, single, keep=True)
        return self.unflatten_batch(self._entropy_from(mu, log_w, log_last, single))

    @staticmethod
    def _entropy_from(mu: Tensor, log_w: Tensor, log_last: Tensor, single: Tensor) -> Tensor:
        """The chain-rule entropy ``(B,)`` from flat marginals, log conditionals and last posterior."""
        # 0 · log 0 = 0 (padded, forbidden and unreachable cells) without NaN gradients.
        log_w = torch.where(log_w > -math.inf, log_w, 0.0)
        log_last = torch.where(log_last > -math.inf, log_last, 0.0)
        # An empty support has no mass (μ = 0) and so no last-position entropy either.
        last = torch.where((mu.sum((1, 2, 3)) > 0).unsqueeze(-1), log_last.exp(), 0.0)
        h = -(mu * log_w).sum((1, 2, 3)) - (last * log_last).sum(-1)
        return _at_least_zero(torch.where(single, 0.0, h))

    def _shared_pass(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The forward-backward pass of a `cached` structure, memoized: flat μ, log
        conditionals, last-position log posterior (`_forward_backward`) and L = 1 flags.

        `marginals` and `entropy` both read it, `log_partition` its forward half,
        so a step that asks for all three runs one forward and one backward sweep.
        """
        theta, pad, single = self._setup()
        parts = self._memo_get("forward_backward")
        if parts is None:
            parts = self._forward_backward(theta, pad, single, keep=True)
            self._memo_put(forward_backward=parts)
        return (*parts, single)

    @torch.no_grad()
    def argmax(self) -> Tensor:
        """The Viterbi path as transition indicators ``(*batch, N-1, C, C)``."""
        theta, pad, _ = self._setup()
        theta = theta.detach()
        batch, num, size, _ = theta.shape
        if num == 0:
            return torch.zeros_like(self.log_potentials)
        score = theta.new_zeros(batch, size)
        pointers = []
        pads = pad.unsqueeze(-1).unbind(1) if pad is not None else (None,) * num
        for step, padded in zip(theta.unbind(1), pads, strict=True):
            best, pointer = (score.unsqueeze(-2) + step).max(dim=-1)
            score = best if padded is None else torch.where(padded, score, best)
            pointers.append(pointer)
        best, state = score.max(-1)
        _check_support(self, best == -math.inf, "argmax")
        states = [state]
        for n in range(num - 1, -1, -1):
            prev = pointers[n].gather(1, state.unsqueeze(-1)).squeeze(-1)
            state = prev if pad is None else torch.where(pad[:, n], state, prev)
            states.append(state)
        path = torch.stack(states[::-1], dim=1)  # (B, N)
        return self.unflatten_batch(_indicators(path, pad, size, theta.dtype))

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        """Exact samples by forward-filtering backward-sampling, ``(*sample, *batch, *event)``.

        Inverse-CDF sampling of every backward step from the cumulative
        conditionals, computed once for all steps: one uniform per sample and
        position (C times fewer random numbers than Gumbel-max).
        """
        shape = _as_size(sample_shape)
        count = math.prod(shape)
        theta, pad, _ = self._setup()
        theta = theta.detach()
        batch, num, size, _ = theta.shape
        out_shape = (*shape, *self.batch_shape, *self.event_shape)
        if num == 0:
            return theta.new_zeros(out_shape)
        alpha = self._alpha(theta, pad).detach() if self._memo is not None else None
        alpha = _forward_alpha(theta, pad) if alpha is None else alpha
        _check_support(self, (alpha[:, -1] == -math.inf).all(-1), "sample")
        # cdf[n, b, c', c] = q(y_n ≤ c | y_{n+1} = c'), laid out so that step n is one
        # contiguous (B·C, C) block to pick rows from. Dividing by the row's own last
        # entry makes that entry exactly 1 > u; unused rows (unreachable c', padded
        # steps) are 0/0 = NaN and never picked.
        cdf = _log_conditionals(theta, alpha, pad).exp_().transpose(0, 1).cumsum(-1)
        cdf = cdf.div_(cdf[..., -1:].clone())  # the divisor copied: in place over a view of itself
        last = torch.softmax(alpha[:, -1], dim=-1).cumsum(-1)
        last = last.div_(last[:, -1:].clone())
        uniform = safe_uniform((num + 1, batch, count, 1), dtype=theta.dtype, device=theta.device)
        uniform = uniform.unbind(0)
        # The label is the number of cdf entries below u (u ≤ 1 - eps < 1 = the last).
        state = (last.unsqueeze(1) < uniform[num]).sum(-1)  # (B, S)
        states = [state]
        offset = (torch.arange(batch, device=theta.device) * size).unsqueeze(-1)  # (B, 1)
        pads = pad.unsqueeze(-1).unbind(1) if pad is not None else (None,) * num  # (B, 1)
        for n in range(num - 1, -1, -1):
            rows = cdf[n].view(batch * size, size).index_select(0, (offset + state).view(-1))
            prev = (rows.view(batch, count, size) < uniform[n]).sum(-1)
            if pads[n] is not None:
                prev = torch.where(pads[n], state, prev)  # padded steps repeat the label
            state = prev
            states.append(state)
        full_pad = pad.repeat(count, 1) if pad is not None else None  # (S·B, M)
        path = torch.stack(states[::-1], dim=-1).transpose(0, 1).reshape(count * batch, num + 1)
        return _indicators(path, full_pad, size, theta.dtype).reshape(out_shape)

    def gumbel_crf(
        self,
        sample_shape: int | Sequence[int] | torch.Size = (),
        temperature: float | Tensor = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """The Gumbel-CRF pair of Fu et al. (2020): relaxed FFBS with one noise draw.

        All samples are drawn in one backward sweep (details in the class
        docstring).

        Args:
            sample_shape: leading sample dimensions S.
            temperature: τ > 0 of the tempered softmaxes.

        Returns:
            ``(hard, soft)``, each ``(*S, *batch, N-1, C, C)``: ``hard`` an exact
            FFBS sample (not differentiable) and ``soft`` the relaxed FFBS
            transition indicators (differentiable in θ), a point of the marginal
            polytope that tends to ``hard`` as τ → 0.
        """
        shape = _as_size(sample_shape)
        count = math.prod(shape)
        theta, pad, _ = self._setup()
        dtype = theta.dtype
        # Half precision overflows in (α + G)/τ: work in float32 and cast back.
        theta = theta.to(work_dtype(dtype))
        batch, num, size, _ = theta.shape
        out_shape = (*shape, *self.batch_shape, *self.event_shape)
        if num == 0:
            zeros = self.log_potentials.new_zeros(out_shape)
            return zeros, zeros
        # The forward pass is shared with the exact queries of a `cached` structure.
        alpha = self._alpha(theta, pad) if theta.dtype == dtype else _filter(theta, pad)
        _check_support(self, (alpha[:, -1] == -math.inf).all(-1), "gumbel_crf")
        # Row c' of step n holds the unnormalized log q(y_n = · | y_{n+1} = c');
        # softmax and argmax ignore the normalizer α_{n+1}(c').
        rows = theta + alpha[:, :-1].unsqueeze(-2)
        # Rows that are never used (padded steps, unreachable c') are set to 0:
        # finite, so no softmax of an all -inf row turns into NaN values or gradients.
        unused = (alpha[:, 1:] == -math.inf).unsqueeze(-1)
        if pad is not None:
            unused = unused | pad[..., None, None]
        rows = rows.masked_fill(unused, 0.0)
        # Samples ride along a second batch dimension, (B, S), and `unbind`
        # avoids the O(N²) backward of rows[:, n].
        rows = rows.unbind(1)
        noise = gumbel_noise((num + 1, batch, count, size), dtype=theta.dtype, device=theta.device)
        noise = noise.unbind(0)
        pads = pad.unsqueeze(-1).unbind(1) if pad is not None else (None,) * num  # (B, 1)
        logits = alpha[:, -1].unsqueeze(1) + noise[num]  # (B, S, C)
        state = logits.argmax(-1)  # (B, S)
        states = [state]
        soft = torch.softmax(logits / temperature, dim=-1)
        steps: list[Tensor] = []
        for n in range(num - 1, -1, -1):
            # Every candidate row c' with the same noise: (B, S, C', C).
            perturbed = rows[n].unsqueeze(1) + noise[n].unsqueeze(2)
            index = state[..., None, None].expand(batch, count, 1, size)
            prev = perturbed.detach().gather(2, index).squeeze(2).argmax(-1)
            relaxed = torch.softmax(perturbed / temperature, dim=-1)
            step = soft.unsqueeze(-1) * relaxed  # soft[n+1, c'] · R[c', c]
            steps.append(step)
            nxt = step.sum(-2)  # soft[n] = soft[n+1] R
            if pads[n] is not None:
                prev = torch.where(pads[n], state, prev)  # padded steps repeat the label
                nxt = torch.where(pads[n].unsqueeze(-1), soft, nxt)
            state, soft = prev, nxt
            states.append(state)
        full_pad = pad.repeat(count, 1) if pad is not None else None  # (S·B, M)
        path = torch.stack(states[::-1], dim=-1).transpose(0, 1).reshape(count * batch, num + 1)
        hard = _indicators(path, full_pad, size, theta.dtype).reshape(out_shape)
        relaxed = torch.stack(steps[::-1], dim=2).transpose(0, 1)  # (S, B, M, C, C)
        relaxed = relaxed.reshape(count * batch, num, size, size)
        if full_pad is not None:
            relaxed = relaxed.masked_fill(full_pad[..., None, None], 0.0)
        return hard.to(dtype), relaxed.reshape(out_shape).to(dtype)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """Every label sequence as indicators, ``(C^L, *batch, N-1, C, C)`` (one z at L = 1)."""
        length = self.support_length()
        size, num = self.num_states, self.max_length - 1
        theta = self.log_potentials
        if length == 1:
            rows = [(0,) * (num + 1)]
        else:
            rows = [
                seq + (seq[-1],) * (num + 1 - length)
                for seq in itertools.product(range(size), repeat=length)
            ]
        path = torch.tensor(rows, dtype=torch.long, device=theta.device).reshape(-1, num + 1)
        pad = None
        if length < num + 1:
            pad = _pad_mask(torch.full((path.shape[0],), length, device=theta.device), num)
        z = _indicators(path, pad, size, theta.dtype)
        return self.broadcast_support(z, expand)
