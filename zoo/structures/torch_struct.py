r"""torch-struct as a backend: any torch-struct distribution as a zoo `Structure`.

torch-struct (Rush 2020, "Torch-Struct: Deep structured prediction library")
writes many structured distributions as dynamic programs over semirings, in
the same indicator-tensor layout as the zoo: q(z) ∝ exp⟨θ, z⟩ with z a 0/1
tensor of parts. `TorchStructAdapter` wraps one of its distribution classes
so that every zoo estimator and check applies: `log_partition` is
torch-struct's ``partition`` (log semiring), `marginals` its autograd (the
zoo base, which also gives differentiable relaxed samples), `argmax` its max
semiring and `sample` its multi-sampled semiring.

The adapter smooths torch-struct's quirks, so the wrapped structure keeps
the zoo's conventions:

* **-inf.** torch-struct's log semiring takes logsumexp over all -inf terms
  and returns NaN gradients there; the adapter raises -inf to
  `zoo.structures.chart.clamp_forbidden`'s finite floor first. torch-struct
  fills its charts with its semiring zero, -1e9, so an empty support comes
  back as log Z ≈ -1e9: the adapter maps log Z < -5e8 to -inf (zero
  marginals, a ValueError from `argmax` / `sample`). Structures scoring below
  -5e8 cannot be represented by torch-struct in any case.
* **Fill values.** torch-struct fills padded parts with its semiring zero
  (-1e9, not -inf). Real structures never use them, and the adapter never
  reads them back: padded parts are 0 in every z, marginal and gradient.
* **Lengths.** torch-struct counts positions, as the zoo does, but its
  semi-Markov pass gives wrong values to the longer elements of a batch of
  mixed lengths (its initialisation uses the shortest length for all), and it
  asserts that one element has the full length. The adapter runs every
  distinct length as its own batch, cut to that length (one torch-struct call
  per distinct length). A length-1 sequence there has log Z = log C (every label of the lone position
  counted, although all give the same z: the zero tensor). The zoo has one z
  there: the adapter runs torch-struct on length 2 and then sets log Z = 0,
  zero marginals and all-zero samples for those elements.
* **In-place writes.** torch-struct sets ``requires_grad_`` on the
  potentials it is given; the adapter hands it a fresh copy.
* **Empty batches and sample(0)** are answered without calling torch-struct.
* **Half precision** is computed in float32 and cast back.

`SemiMarkovCRF` is the first structure shipped this way.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from zoo.structures.base import Structure, _as_size
from zoo.structures.chart import clamp_forbidden, is_empty_support, work_dtype

__all__ = ["SemiMarkovCRF", "TorchStructAdapter"]

_TORCH_STRUCT_ZERO = -1e9
"""torch-struct's log-semiring zero (``LogSemiring.zero``): charts are filled with it."""


class TorchStructAdapter(Structure):
    """A zoo `Structure` computed by a torch-struct distribution class.

    A subclass sets `torch_struct_class` (e.g. ``torch_struct.SemiMarkovCRF``),
    `event_dim`, `max_length` and `chart_size` (at most half the number of
    parts one structure has: it sets the forbidden floor), and, to be
    checked by enumeration, `enumerate_support`.
    """

    torch_struct_class: ClassVar[type]
    """The torch-struct distribution (a ``torch_struct.StructDistribution`` subclass)."""

    @property
    def chart_size(self) -> int:
        return self.max_length + 1

    def _groups(self, copies: int = 1) -> Iterator[tuple[Tensor, object, bool, int]]:
        """One torch-struct distribution per distinct length in the flat batch.

        Yields:
            ``(index, dist, single, steps)``: the flat batch indices ``(B_g,)``
            of the group, the torch-struct distribution of their floored θ cut
            to its ``steps`` = length - 1 real steps (the first event
            dimension), and whether the length is 1 (run as 2, then zeroed).
            With ``copies`` > 1 the distribution's batch is ``copies`` stacked
            copies of the group (copy-major).
        """
        theta, lengths = self.flatten_batch()
        theta = clamp_forbidden(theta.to(work_dtype(theta.dtype)), self.chart_size)
        if lengths is None:
            lengths = torch.full((theta.shape[0],), self.max_length, device=theta.device)
        # torch-struct gives wrong values to the longer elements of a batch of
        # mixed lengths (its semi-Markov init uses min(lengths) for all), and
        # insists that one element has the full length: run equal lengths only.
        for length in lengths.unique().tolist():
            index = (lengths == length).nonzero().squeeze(1)
            steps = max(length, 2) - 1
            # A fresh tensor: torch-struct calls requires_grad_ on what it is given.
            # (made outside inference mode, where requires_grad_ is refused).
            with torch.inference_mode(False):
                part = theta[index, :steps]
                part = part.clone() if part.requires_grad else part.detach().clone()
            if copies > 1:
                part = part.repeat(copies, *[1] * (part.dim() - 1))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*arg_constraints")
                dist = self.torch_struct_class(part)
            yield index, dist, length == 1, steps

    def _place(self, out: Tensor, index: Tensor, z: Tensor, single: bool, steps: int) -> Tensor:
        """Write a group's ``z`` ``(..., B_g, steps, *rest)`` into ``out`` ``(..., B, N-1, *rest)``."""
        if single:
            return out  # already 0
        dim = out.dim() - self.event_dim - 1  # the batch dimension
        # torch-struct drops a batch dimension of size 1: restore it.
        z = z.reshape(*out.shape[:dim], index.shape[0], steps, *self.event_shape[1:])
        index = (slice(None),) * dim + (index, slice(0, steps))
        out[index] = z.to(out.dtype)
        return out

    def log_partition(self) -> Tensor:
        if math.prod(self.batch_shape) == 0 or self.max_length == 1:
            # No parts at all (N = 1) or no elements: A = 0, connected to θ for autograd.
            return 0.0 * self.log_potentials.sum(tuple(range(-self.event_dim, 0)))
        theta, _ = self.flatten_batch()
        # Zeros connected to θ: length-1 elements (A = 0) keep a (zero) gradient.
        value = 0.0 * theta.sum(tuple(range(1, theta.dim()))).to(work_dtype(theta.dtype))
        for index, dist, single, _ in self._groups():
            if not single:
                with torch.inference_mode(False):
                    part = dist.partition.reshape(index.shape[0]).to(value.dtype)
                value = value.index_put((index,), part)
        empty = is_empty_support(value, self.chart_size) | (value < _TORCH_STRUCT_ZERO / 2)
        value = torch.where(empty, -math.inf, value)
        return self.unflatten_batch(value.to(self.log_potentials.dtype))

    def _check_support(self, what: str) -> None:
        empty = self.log_partition().detach() == -math.inf
        if bool(empty.any()):
            raise ValueError(
                f"{type(self).__name__}.{what}: the support is empty (every structure uses a "
                f"forbidden -inf part) at flat batch index "
                f"{empty.reshape(-1).nonzero()[:5, 0].tolist()}"
            )

    @torch.no_grad()
    def argmax(self) -> Tensor:
        if math.prod(self.batch_shape) == 0 or self.max_length == 1:
            return torch.zeros_like(self.log_potentials)
        self._check_support("argmax")
        theta, _ = self.flatten_batch()
        out = torch.zeros_like(theta)
        for index, dist, single, steps in self._groups():
            with torch.enable_grad(), torch.inference_mode(False):
                z = dist.argmax.detach()
            out = self._place(out, index, z, single, steps)
        return self.unflatten_batch(out)

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        shape = _as_size(sample_shape)
        count = shape.numel()
        if count == 0 or math.prod(self.batch_shape) == 0 or self.max_length == 1:
            return self.log_potentials.new_zeros(shape + self.batch_shape + self.event_shape)
        self._check_support("sample")
        theta, _ = self.flatten_batch()
        out = theta.new_zeros(count, *theta.shape)
        # torch-struct draws 10 samples per pass and loops in Python over the
        # samples: draw 10 from each of ⌈S / 10⌉ stacked copies in one pass.
        per = min(count, 10)
        copies = -(-count // per)
        for index, dist, single, steps in self._groups(copies):
            with torch.enable_grad(), torch.inference_mode(False):
                z = dist.sample((per,)).detach()  # (per, copies·B_g, steps, *rest)
            z = z.reshape(per, copies, index.shape[0], *z.shape[-self.event_dim :])
            z = z.transpose(0, 1).reshape(per * copies, *z.shape[2:])[:count]
            out = self._place(out, index, z, single, steps)
        return out.reshape(shape + self.batch_shape + self.event_shape)


class SemiMarkovCRF(TorchStructAdapter):
    r"""Semi-Markov CRF: labelled segmentations (Sarawagi & Cohen 2004), by torch-struct.

    A z segments positions 0..L-1 at boundaries 0 = b_0 < b_1 < … < b_m = L - 1
    with gaps b_{i+1} - b_i ∈ [1, K - 1], each boundary with a label c_i, in
    torch-struct's layout ``(*batch, N-1, K, C, C)``:

        z[n, k, c', c] = 1  ⟺  boundaries n and n + k are consecutive, labelled c and c',

    and q(z) ∝ Π exp θ[n, k, c', c] over the parts of z. Index k = 0 is never
    part of a segmentation. A linear-chain CRF is the special case K = 2.

    Args:
        log_potentials: θ ``(*batch, N-1, K, C, C)``, K ≥ 2; -inf forbids a part.
        lengths: optional ``(*batch)`` number of positions in [1, N]; a length-1
            sequence has no parts (its only z is 0, so A(θ) = 0).
        validate_args: check θ for NaN and +inf, lengths for range.

    Example:
        >>> q = SemiMarkovCRF(torch.zeros(1, 3, 3, 2, 2))  # N = 4, segments of 1 or 2
        >>> q.log_partition().exp().round()  # 3 segmentations of 3 steps, 2 labels per boundary
        tensor([40.])
    """

    event_dim = 4

    @property
    def torch_struct_class(self) -> type:  # imported lazily: torch-struct is heavy to import
        import torch_struct

        return torch_struct.SemiMarkovCRF

    @classmethod
    def event_layout(cls) -> str:
        return "(*batch, N-1, K, C, C)"

    def check_event_shape(self, event_shape: torch.Size) -> None:
        _, k, c, c2 = event_shape
        if c != c2 or c < 1 or k < 2:
            raise ValueError(
                f"SemiMarkovCRF: log_potentials must end with (N-1, K, C, C), K ≥ 2 segment "
                f"sizes and square C×C label blocks, got event shape {tuple(event_shape)}"
            )

    @property
    def max_length(self) -> int:
        return self.log_potentials.shape[-4] + 1

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """Every labelled segmentation, ``(|Z|, *batch, N-1, K, C, C)``."""
        length = self.support_length()
        _, k_max, c, _ = self.event_shape
        rows = [[]] if length == 1 else []  # length 1: no parts, one z (the zero tensor)
        for gaps in _compositions(length - 1, k_max - 1) if length > 1 else []:
            bounds = list(itertools.accumulate(gaps, initial=0))
            for labels in itertools.product(range(c), repeat=len(bounds)):
                rows.append(
                    [
                        (b, g, labels[i + 1], labels[i])
                        for i, (b, g) in enumerate(zip(bounds, gaps, strict=False))
                    ]
                )
        z = self.log_potentials.new_zeros(len(rows), *self.event_shape)
        for i, parts in enumerate(rows):
            for part in parts:
                z[(i, *part)] = 1.0
        return self.broadcast_support(z, expand)


def _compositions(total: int, largest: int) -> list[tuple[int, ...]]:
    """Ordered ways to write ``total`` as a sum of parts in [1, largest] (one, empty, for 0)."""
    if total == 0:
        return [()]
    return [
        (first, *rest)
        for first in range(1, min(largest, total) + 1)
        for rest in _compositions(total - first, largest)
    ]
