r"""Agreement of predictions and induced trees with the gold ones, overall and by length bucket.

Each metric is a ratio of two counts, accumulated per sequence-length bucket
(buckets by the upper edges ``boundaries``, inclusive: ``(10, 50)`` makes
1-10, 11-50 and 51+):

* `BucketedAccuracy`: correct predictions / examples.
* `AttachmentScore` (unlabelled attachment score, UAS): tokens whose
  predicted head is their gold head / tokens. Trees are arc indicators in
  the layout of `zoo.structures.DependencyCRF`, ``z[h, m] = 1`` for the arc
  h → m and ``z[m, m] = 1`` for a ROOT arc, so a token's head is the row of
  its column's one.
* `SpanF1` (unlabelled span F1): 2·|P ∩ G| / (|P| + |G|) over the spans of
  the predicted (P) and gold (G) trees, summed over the corpus (micro F1).
  As in Klein & Manning (2002) and Kim et al. (2019) the trivial spans are
  left out: single tokens and the whole sequence, which every binary tree
  has. Spans are ``(B, N, N)`` indicators, i ≤ j inclusive, as `TreeCRF`'s
  ``(B, N, N, L)`` with the labels summed.

``compute()`` returns ``{"": overall, "1-10": …, "11-50": …, "51+": …}``;
buckets without examples are left out. A ratio with nothing to score (no
update at all, or only sequences of one or two tokens, which have no
non-trivial span) is NaN, with a warning: neither 0 % nor 100 % of nothing.
``update`` refuses NaN scores and indicators and fractional classes or
lengths, naming the first. The states are sums, so the metrics synchronize
across processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from zoo.metrics.inputs import as_ids, nothing_to_score, require_finite

__all__ = ["AttachmentScore", "BucketedAccuracy", "BucketedRatio", "SpanF1", "bucket_names"]


def bucket_names(boundaries: Sequence[int]) -> list[str]:
    """``(10, 50)`` → ``["1-10", "11-50", "51+"]``."""
    names, low = [], 1
    for edge in boundaries:
        names.append(f"{low}-{edge}")
        low = edge + 1
    return [*names, f"{low}+"]


class BucketedRatio(Metric):
    """Σ numerator / Σ denominator, overall and per length bucket; subclasses write ``update``.

    Args:
        boundaries: increasing inclusive upper edges of the length buckets.

    Raises:
        ValueError: boundaries that are not increasing positive integers.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, boundaries: Sequence[int] = (10, 25, 50, 100, 200)) -> None:
        super().__init__()
        edges = list(boundaries)
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in edges) or any(
            a >= b for a, b in zip(edges[:-1], edges[1:], strict=False)
        ):
            raise ValueError(f"boundaries must be increasing integers ≥ 1, got {boundaries!r}")
        self.names = bucket_names(edges)
        self.register_buffer("edges", torch.tensor(edges, dtype=torch.long), persistent=False)
        size = len(edges) + 1
        self.add_state("numerator", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, numerator: Tensor, denominator: Tensor, lengths: Tensor) -> None:
        """Add per-example counts ``(B,)`` into the buckets of ``lengths`` ``(B,)``."""
        bucket = torch.bucketize(lengths.to(self.edges.device), self.edges, right=False)
        self.numerator.index_add_(0, bucket, numerator.to(torch.float64))
        self.denominator.index_add_(0, bucket, denominator.to(torch.float64))
        self.count.index_add_(0, bucket, torch.ones_like(bucket, dtype=torch.float64))

    def _ratio(self, num: Tensor, den: Tensor, count: Tensor, bucket: str) -> Tensor:
        if den > 0:
            return num / den
        where = "overall" if bucket == "" else f"in the length bucket {bucket}"
        what = (
            f"{int(count)} example(s) but nothing to score {where}"
            if count > 0
            else "no example was scored (update() was never called with data)"
        )
        return nothing_to_score(type(self).__name__, what, den)

    def compute(self) -> dict[str, Tensor]:
        total = self.count.sum()
        out = {"": self._ratio(self.numerator.sum(), self.denominator.sum(), total, "")}
        for name, num, den, count in zip(
            self.names, self.numerator, self.denominator, self.count, strict=True
        ):
            if count > 0:
                out[name] = out[""] if total == count else self._ratio(num, den, count, name)
        return out


class BucketedAccuracy(BucketedRatio):
    """Accuracy of class predictions, overall and by sequence length.

    Example:
        >>> metric = BucketedAccuracy(boundaries=(10,))
        >>> metric.update(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3]), torch.tensor([5, 5, 20]))
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'': 0.667, '1-10': 0.5, '11+': 1.0}
    """

    def update(self, preds: Tensor, target: Tensor, lengths: Tensor) -> None:
        """Args: ``preds`` ``(B,)`` classes (or ``(B, C)`` scores), ``target`` ``(B,)``, ``lengths`` ``(B,)``."""
        if preds.dim() == target.dim() + 1:
            require_finite("BucketedAccuracy", "preds", preds)
            preds = preds.argmax(-1)
        if preds.shape != target.shape or target.shape != lengths.shape:
            raise ValueError(
                f"BucketedAccuracy: preds, target and lengths must have one shape (B,), got "
                f"{tuple(preds.shape)}, {tuple(target.shape)} and {tuple(lengths.shape)}"
            )
        preds = as_ids("BucketedAccuracy", "preds", preds)
        target = as_ids("BucketedAccuracy", "target", target)
        lengths = _lengths(lengths, None, "BucketedAccuracy")
        correct = (preds == target).to(torch.float64)
        self._add(correct, torch.ones_like(correct), lengths)


def _lengths(lengths: Tensor, size: int | None, name: str) -> Tensor:
    """Lengths as longs, each in [1, size] (``size`` None: no upper bound)."""
    lengths = as_ids(name, "lengths", lengths)
    if lengths.numel() == 0:
        return lengths
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or (size is not None and high > size):
        bound = "" if size is None else f", {size}"
        raise ValueError(f"{name}: lengths must lie in [1{bound}], got values from {low} to {high}")
    return lengths


def _check_trees(preds: Tensor, target: Tensor, lengths: Tensor, name: str) -> Tensor:
    """Check the shapes and values of a batch of trees; return the lengths as longs."""
    if preds.shape != target.shape or preds.dim() != 3 or preds.shape[-1] != preds.shape[-2]:
        raise ValueError(
            f"{name}: preds and target must both be (B, N, N), got {tuple(preds.shape)} "
            f"and {tuple(target.shape)}"
        )
    if lengths.shape != preds.shape[:1]:
        raise ValueError(f"{name}: lengths must be (B,), got {tuple(lengths.shape)}")
    require_finite(name, "preds", preds)
    require_finite(name, "target", target)
    return _lengths(lengths, preds.shape[-1], name)


class AttachmentScore(BucketedRatio):
    """Unlabelled attachment score of dependency trees (``z[h, m]``, ROOT arcs on the diagonal).

    Example:
        >>> gold = torch.tensor([[[1., 1., 0.], [0., 0., 0.], [0., 0., 1.]]])  # 0 → 1; 0, 2 on ROOT
        >>> pred = torch.tensor([[[1., 0., 0.], [0., 0., 0.], [0., 1., 1.]]])  # 2 → 1
        >>> metric = AttachmentScore(boundaries=(5,))
        >>> metric.update(pred, gold, torch.tensor([3]))
        >>> round(float(metric.compute()[""]), 3)
        0.667
    """

    def update(self, preds: Tensor, target: Tensor, lengths: Tensor) -> None:
        """Args: ``preds``, ``target`` ``(B, N, N)`` arc indicators; ``lengths`` ``(B,)``."""
        lengths = _check_trees(preds, target, lengths, "AttachmentScore")
        n = preds.shape[-1]
        valid = torch.arange(n, device=lengths.device) < lengths[:, None]  # (B, N) real tokens
        same = (preds.argmax(-2) == target.argmax(-2)) & valid.to(preds.device)
        self._add(same.sum(-1), lengths.to(torch.float64), lengths)


class SpanF1(BucketedRatio):
    """Unlabelled span F1 of binary trees, trivial spans left out (micro-averaged).

    Example:
        >>> def tree(spans, n=4):
        ...     z = torch.zeros(1, n, n)
        ...     for i, j in spans:
        ...         z[0, i, j] = 1
        ...     return z
        >>> leaves = [(0, 0), (1, 1), (2, 2), (3, 3), (0, 3)]
        >>> gold = tree(leaves + [(0, 1), (0, 2)])  # ((0 1) 2) 3
        >>> pred = tree(leaves + [(0, 1), (2, 3)])  # (0 1) (2 3)
        >>> metric = SpanF1(boundaries=(5,))
        >>> metric.update(pred, gold, torch.tensor([4]))
        >>> round(float(metric.compute()[""]), 3)
        0.5
    """

    def update(self, preds: Tensor, target: Tensor, lengths: Tensor) -> None:
        """Args: ``preds``, ``target`` ``(B, N, N)`` span indicators (or ``(B, N, N, L)``); ``lengths`` ``(B,)``."""
        if preds.dim() == 4:
            preds = preds.sum(-1)
        if target.dim() == 4:
            target = target.sum(-1)
        lengths = _check_trees(preds, target, lengths, "SpanF1")
        n = preds.shape[-1]
        index = torch.arange(n, device=preds.device)
        lengths = lengths.to(preds.device)
        end = index < lengths[:, None]
        # Spans i < j inside the sequence, the whole sequence (0, length - 1) excluded.
        keep = (index[:, None] < index[None, :]) & end[:, None, :] & end[:, :, None]
        whole = (index[:, None] == 0) & (index[None, :] == (lengths - 1)[:, None, None])
        keep = keep & ~whole
        p, g = (preds > 0.5) & keep, (target > 0.5) & keep
        both = (p & g).sum((-2, -1))
        self._add(2 * both, p.sum((-2, -1)) + g.sum((-2, -1)), lengths)
