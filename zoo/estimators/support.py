r"""|Z|, the size of a structure's support, counted without enumerating it.

`Exact` enumerates every z, so it must know how many there are before it
allocates them. The counts follow from a structure's public attributes (its
event shape, its lengths, its flags), for a batch element with L real
positions:

* `Categorical`, N variables of K classes: K^L; `Bernoulli`: 2^L.
* `LinearChainCRF`, C labels: C^L (a chain of length 1 has one z, the zero tensor).
* `NonProjectiveDependencyCRF` (Cayley-type counts of spanning arborescences
  rooted at ROOT): (L + 1)^(L - 1) with any number of ROOT arcs, L^(L - 1)
  with exactly one.
* `DependencyCRF`, projective trees: C(3L, L) / (2L + 1) with any number of
  ROOT arcs (the ternary numbers 1, 3, 12, 55, ...), C(3L - 2, L - 1) / L with
  exactly one (1, 2, 7, 30, 143, ...).
* `TreeCRF` with M labels: Catalan(L - 1) binary bracketings times M^(2L - 1)
  labellings of their 2L - 1 spans.

Python integers keep the counts exact at any size (10^20 is no overflow).
A structure may also define its own ``support_size()`` method returning the
largest support size over its batch; it is used first. This table is the
stand-in until `Structure` itself has such a method (the better home).
"""

from __future__ import annotations

import math

from zoo.structures import (
    Bernoulli,
    Categorical,
    DependencyCRF,
    LinearChainCRF,
    NonProjectiveDependencyCRF,
    Structure,
    TreeCRF,
)

__all__ = ["support_size"]


def _categorical(q: Structure, length: int) -> int:
    return q.event_shape[-1] ** length


def _bernoulli(q: Structure, length: int) -> int:
    return 2**length


def _chain(q: Structure, length: int) -> int:
    return 1 if length == 1 else q.event_shape[-1] ** length


def _projective(q: Structure, length: int) -> int:
    if q.multiroot:
        return math.comb(3 * length, length) // (2 * length + 1)
    return math.comb(3 * length - 2, length - 1) // length


def _nonprojective(q: Structure, length: int) -> int:
    if q.multiroot:
        return (length + 1) ** (length - 1)
    return length ** (length - 1)


def _tree(q: Structure, length: int) -> int:
    catalan = math.comb(2 * (length - 1), length - 1) // length
    return catalan * q.event_shape[-1] ** (2 * length - 1)


# Most specific class first: a subclass of a listed structure gets its parent's count.
_COUNTS = (
    (Categorical, _categorical),
    (Bernoulli, _bernoulli),
    (LinearChainCRF, _chain),
    (NonProjectiveDependencyCRF, _nonprojective),
    (DependencyCRF, _projective),
    (TreeCRF, _tree),
)


def support_size(q: Structure) -> int | None:
    """The largest support size |Z| over the batch elements of ``q``.

    Args:
        q: a structure of any batch shape; with ``lengths``, each element's
            support is counted at its own length and the largest is returned.

    Returns:
        |Z| as an exact Python integer, or None for a structure this table does
        not know (and that has no ``support_size()`` method of its own).

    Example:
        >>> import torch
        >>> support_size(Categorical(torch.zeros(4, 20, 10)))
        100000000000000000000
    """
    own = getattr(q, "support_size", None)
    if callable(own):
        return int(own())
    count = next((count for kind, count in _COUNTS if isinstance(q, kind)), None)
    if count is None:
        return None
    if q.lengths is not None and q.lengths.numel() > 0:
        length = int(q.lengths.max())
    else:
        length = q.max_length
    return count(q, length)
