r"""Dependency trees: the layout shared by `DependencyCRF` and `NonProjectiveDependencyCRF`.

A dependency tree over N words gives every word exactly one head, another
word or the ROOT, with no cycles. z ∈ {0, 1}^{N×N} marks its arcs in
torch-struct's layout: ``z[h, m] = 1`` for the arc head h → child m (h ≠ m),
and ``z[m, m] = 1`` when word m hangs from the ROOT. Arcs factorize:

    q(z) ∝ Π_{(h, m) ∈ z} exp θ[h, m],    A(θ) = log Σ_{trees T} exp Σ_{(h, m) ∈ T} θ[h, m].

``multiroot=False`` admits only trees with exactly one ROOT arc (one word
heads the sentence, as in Universal Dependencies); ``multiroot=True`` admits
any number. The flag belongs to the instance (unlike torch-struct, which sets
it on its ``DepTree`` class).

The algorithms live one family a file: `zoo.structures.projective` (Eisner's
inside pass over `zoo.structures.chart`), `zoo.structures.nonprojective`
(the matrix-tree theorem and its log-space elimination fallback) and
`zoo.structures.arborescence` (Chu–Liu/Edmonds, the non-projective MAP).
This module holds what they share: the layout, the flag, padding masks and
brute-force enumeration.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch import Tensor

from zoo.structures.base import Structure

__all__ = ["DependencyStructure"]


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


class DependencyStructure(Structure):
    """Shared layout, flags, masks and enumeration of the two dependency structures.

    Not a distribution of its own: subclass it with a `log_partition` and an `argmax`.
    """

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
    def event_layout(cls) -> str:
        return "(*batch, N, N): arcs head → child, ROOT arcs on the diagonal"

    def check_event_shape(self, event_shape: torch.Size) -> None:
        n, n2 = event_shape
        if n != n2 or n < 1:
            raise ValueError(
                f"{type(self).__name__}: log_potentials must end with a square (N, N) arc matrix "
                f"{self.event_layout()}, N ≥ 1, got event shape {tuple(event_shape)}"
            )

    @property
    def max_length(self) -> int:
        return self.log_potentials.shape[-1]

    def extra_args(self) -> dict[str, Any]:
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
        length = self.support_length()
        heads = torch.tensor(
            _trees(length, self.multiroot, self._projective),
            dtype=torch.long,
            device=self.log_potentials.device,
        ).reshape(-1, length)
        child = torch.arange(length, device=heads.device).expand_as(heads)
        tree = torch.arange(heads.shape[0], device=heads.device)[:, None].expand_as(heads)
        z = self.log_potentials.new_zeros(heads.shape[0], n, n)
        z[tree, torch.where(heads < 0, child, heads), child] = 1.0
        return self.broadcast_support(z, expand)
