r"""The dynamic-programming core: one inside pass, three semirings, every exact query.

A structure whose log-partition is a dynamic program (a chain's forward
algorithm, CKY, Eisner) writes that program once, as an *inside pass*
``inside(θ, lengths, semiring) -> (B,)`` in which every "sum over ways to
build an item" is a call ``semiring(x, dim)``. Changing the semiring changes
the query (Goodman 1999, "Semiring parsing"; Eisner 2016, "Inside-outside and
forward-backward algorithms are just backprop"; torch-struct, Rush 2020):

* `logsumexp` (the log semiring): the value is A(θ) = log Σ_z exp⟨θ, z⟩, and
  its gradient ∂A/∂θ is the marginals μ = E_q[z].
* `maximum` (the max semiring): the value is max_z ⟨θ, z⟩, and its gradient
  is the indicator of one best z (``max(dim)`` sends the whole gradient to one
  maximiser, so ties still give one structure: Viterbi back-pointers by
  autograd).
* `sampled_logsumexp(S)`: a logsumexp whose backward pass *draws* one term
  in proportion to its weight, independently for each of S ≤ 16 samples whose
  membership rides on the bits of the gradient (torch-struct's
  MultiSampledSemiring); the gradient of the inside value is then S exact
  samples at once (top-down sampling from the inside chart, the tree
  analogue of forward-filtering backward-sampling).

`ChartStructure` turns an inside pass into `log_partition`, `argmax` and
`sample` (marginals and entropy follow from the `Structure` base); a faster
hand-written path may override any of them and be tested against the
generic one (the linear chain does).

Two traps this module closes, both of which a new dynamic program falls into:

* A logsumexp over only -inf terms has a NaN gradient even where nothing flows
  into it, and charts hold such items wherever a part is forbidden (θ = -inf).
  `clamp_forbidden` raises -inf to a finite *floor*, ``finfo.min / (4 size)``:
  every chart value (a sum of at most ``2 size`` potentials) stays finite,
  while exp of the floor is exactly 0 next to any real score, and the clamp
  passes no gradient to the parts it raised (whose marginal is 0).
* An empty support (every z uses a forbidden part) then gives a finite value
  near the floor instead of -inf, and a "best structure" that is none.
  `ChartStructure` detects it (`is_empty_support`): A(θ) is -inf there with
  zero marginals, and `argmax` / `sample` raise a ValueError naming the batch
  elements.

Half-precision potentials are computed in float32 (`work_dtype`): long
chart sums lose too much in float16/bfloat16, and the sample bits (up to
2^15) must add up exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.structures.base import Structure, _as_size
from zoo.structures.noise import safe_uniform

__all__ = [
    "ChartStructure",
    "Semiring",
    "at_lengths",
    "chart_indicator",
    "chart_samples",
    "clamp_forbidden",
    "forbidden_floor",
    "is_empty_support",
    "logsumexp",
    "maximum",
    "sampled_logsumexp",
    "work_dtype",
]

Semiring = Callable[[Tensor, int], Tensor]
"""A semiring sum ``semiring(x, dim)`` over one dimension: `logsumexp`, `maximum` or sampling."""

Inside = Callable[[Tensor, "Tensor | None", Semiring], Tensor]
"""An inside pass ``inside(θ (B, *event), lengths (B,) or None, semiring) -> (B,)``."""

SAMPLES_PER_PASS = 16
"""Samples drawn by one pass of the chart: their bits 2^0..2^15 add up exactly in float32."""


# ------------------------------------------------------------------ semirings
def logsumexp(x: Tensor, dim: int) -> Tensor:
    """The log semiring's sum: log Σ exp x over ``dim``."""
    return torch.logsumexp(x, dim)


def maximum(x: Tensor, dim: int) -> Tensor:
    """The max semiring's sum; its gradient is the indicator of one maximiser."""
    # max(dim), not amax: amax splits the gradient between tied maximisers.
    return x.max(dim).values


class _SampledLogsumexp(torch.autograd.Function):
    """logsumexp forward; backward draws, for every sample, one term ∝ exp(x).

    The gradient reaching an item is a bitmask: bit k is set when sample k
    uses the item. Backward draws, independently for every sample and item,
    which term builds the item, and sends bit k down to that term.
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
        # Inverse-CDF draws: x is finite (`clamp_forbidden`), the CDF rises
        # from 0 to about 1, and u lies in (0, CDF[-1]].
        cdf = (x - out.unsqueeze(-1)).exp().cumsum(-1)
        u = safe_uniform((*out.shape, ctx.samples), x.dtype, x.device) * cdf[..., -1:]
        choice = torch.searchsorted(cdf, u).clamp_(max=x.shape[-1] - 1)  # (..., S)
        bit = 2 ** torch.arange(ctx.samples, device=x.device)
        used = (grad.to(torch.long).unsqueeze(-1) & bit) != 0  # (..., S): sample k uses the item
        weight = torch.where(used, bit.to(x.dtype), 0.0)
        return torch.zeros_like(x).scatter_add_(-1, choice, weight), None


def sampled_logsumexp(samples: int) -> Semiring:
    """The semiring whose backward pass draws ``samples`` (1 to 16) exact samples at once."""
    if not 1 <= samples <= SAMPLES_PER_PASS:
        raise ValueError(f"sampled_logsumexp: samples must lie in [1, 16], got {samples}")

    def reduce(x: Tensor, dim: int) -> Tensor:
        return _SampledLogsumexp.apply(x.movedim(dim, -1), samples)

    return reduce


# -------------------------------------------------------------------- helpers
def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a chart is computed in: float32 for half precision, else ``dtype``."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def forbidden_floor(dtype: torch.dtype, size: int) -> float:
    """The finite stand-in for -inf in a chart whose values sum at most ``2 size`` parts."""
    return torch.finfo(dtype).min / (4 * max(size, 1))


def clamp_forbidden(theta: Tensor, size: int) -> Tensor:
    """θ with -inf (a forbidden part) raised to `forbidden_floor` (see the module docstring)."""
    return theta.clamp(min=forbidden_floor(theta.dtype, size))


def is_empty_support(value: Tensor, size: int) -> Tensor:
    """Where an inside value computed from `clamp_forbidden` potentials uses a forbidden part.

    Every real structure scores far above half the floor (the potentials would
    need magnitudes near ``finfo.max / size²`` to get there); every structure
    with a forbidden part scores below it.
    """
    return value < forbidden_floor(value.dtype, size) / 2


def at_lengths(chart: Tensor, lengths: Tensor | None) -> Tensor:
    """The whole sentence's value ``chart[b, lengths[b]]`` ``(B,)``, or the last column."""
    if lengths is None:
        return chart[:, -1]
    if lengths.is_inference():
        lengths = lengths.clone()  # autograd cannot save an inference tensor as the index
    return chart.gather(-1, lengths.unsqueeze(-1)).squeeze(-1)


def chart_indicator(
    program: Callable[[Tensor], Tensor], theta: Tensor, seed: float = 1.0
) -> tuple[Tensor, Tensor]:
    """∂ program(θ) / ∂θ, seeded with ``seed`` per batch element, on a detached copy of θ.

    With `maximum` this is the MAP indicator, with `sampled_logsumexp` a
    bitmask of samples (``seed`` = 2^S - 1 starts all S of them). Works in
    any grad mode, ``torch.no_grad`` and ``torch.inference_mode`` included;
    the result carries no gradient.

    Args:
        program: θ ``(B, *event)`` → value ``(B,)``.
        theta: the potentials.
        seed: the gradient fed to every value.

    Returns:
        ``(indicator (B, *event), value (B,))``, both detached.
    """
    with torch.inference_mode(False), torch.enable_grad():
        leaf = theta.detach().clone().requires_grad_(True)
        value = program(leaf)
        (grad,) = torch.autograd.grad(value, leaf, torch.full_like(value, seed))
    return grad.detach(), value.detach()


def chart_samples(
    inside: Inside, theta: Tensor, lengths: Tensor | None, num: int
) -> tuple[Tensor, Tensor]:
    """``num`` exact samples ``(num, *theta.shape)`` from an inside pass, and its value.

    Sixteen samples ride on the bits of one backward pass; more samples take
    ⌈num / 16⌉ copies of θ stacked along the batch, still one pass.

    Args:
        inside: the inside pass.
        theta: ``(B, *event)`` potentials.
        lengths: ``(B,)`` or None.
        num: how many samples (0 gives an empty leading dimension).

    Returns:
        ``(z (num, B, *event), value (B,))``: the samples in θ's work dtype and
        the inside (log-partition) value of each batch element.
    """
    theta = theta.detach().to(work_dtype(theta.dtype))  # bits must add up exactly
    per = max(1, min(num, SAMPLES_PER_PASS))
    copies = max(1, -(-num // per))
    many = theta.expand(copies, *theta.shape).reshape(copies * theta.shape[0], *theta.shape[1:])
    many_lengths = None if lengths is None else lengths.repeat(copies)
    bits, value = chart_indicator(
        lambda t: inside(t, many_lengths, sampled_logsumexp(per)), many, float(2**per - 1)
    )
    bit = 2 ** torch.arange(per, device=theta.device).view(-1, *([1] * many.dim()))
    z = ((bits.to(torch.long).unsqueeze(0) & bit) != 0).to(theta.dtype)  # (per, copies·B, ...)
    z = z.reshape(per, copies, *theta.shape).transpose(0, 1).reshape(per * copies, *theta.shape)
    return z[:num], value[: theta.shape[0]]


def _raise_empty(name: str, empty: Tensor, batch_shape: torch.Size, what: str) -> None:
    """ValueError naming the batch elements whose support is empty."""
    index = empty.nonzero()[:5].tolist()
    where = [tuple(torch.unravel_index(torch.tensor(i[0]), batch_shape)) for i in index]
    where = [tuple(int(k) for k in w) for w in where]
    raise ValueError(
        f"{name}.{what}: the support is empty (every structure uses a forbidden -inf part) "
        f"at batch index {', '.join(map(str, where))}"
        + (f" and {int(empty.sum()) - len(where)} more" if int(empty.sum()) > len(where) else "")
        + "; log_partition() is -inf there"
    )


# ------------------------------------------------------------------ structure
class ChartStructure(Structure):
    """A `Structure` defined by one inside pass.

    A subclass writes `inside` (and `chart_size`, the largest number of parts
    one structure can sum, which sets the forbidden floor) and gets exact
    `log_partition`, `argmax` and `sample`; `marginals`, `entropy`,
    `log_prob`, KL and the relaxed samples then come from the base class.

    Empty supports (every z uses a forbidden part) give A(θ) = -inf, zero
    marginals and entropy, log q(z) = -inf; `argmax` and `sample` raise a
    ValueError there rather than return something that is not a structure.
    """

    def inside(self, theta: Tensor, lengths: Tensor | None, semiring: Semiring) -> Tensor:
        """The inside value ``(B,)`` of flat θ ``(B, *event)`` (lengths ``(B,)`` or None).

        Must call `clamp_forbidden` (with `chart_size`) on θ before summing.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement inside()")

    @property
    def chart_size(self) -> int:
        """An upper bound on half the number of parts one structure sums (sets the floor)."""
        return self.max_length + 1

    def log_partition(self) -> Tensor:
        theta, lengths = self.flatten_batch()
        value = self.inside(theta, lengths, logsumexp)
        value = torch.where(is_empty_support(value, self.chart_size), -math.inf, value)
        return self.unflatten_batch(value.to(theta.dtype))

    def entropy(self) -> Tensor:
        h = super().entropy()
        return torch.where(torch.isnan(h), 0.0, h)  # empty support: -inf - (-inf)

    def argmax(self) -> Tensor:
        theta, lengths = self.flatten_batch()
        z, value = chart_indicator(lambda t: self.inside(t, lengths, maximum), theta)
        empty = is_empty_support(value, self.chart_size)
        if bool(empty.any()):
            _raise_empty(type(self).__name__, empty, self.batch_shape, "argmax")
        return self.unflatten_batch(z.to(theta.dtype))

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        shape = _as_size(sample_shape)
        theta, lengths = self.flatten_batch()
        z, value = chart_samples(self.inside, theta, lengths, shape.numel())
        empty = is_empty_support(value, self.chart_size)
        if bool(empty.any()):
            _raise_empty(type(self).__name__, empty, self.batch_shape, "sample")
        return z.to(theta.dtype).reshape(*shape, *self.batch_shape, *self.event_shape)
