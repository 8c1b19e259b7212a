r"""Clustering scores of induced tags against gold tags, from one contingency matrix.

An unsupervised tagger assigns each token a cluster k ∈ {0, …, K-1}; the gold
tag is g ∈ {0, …, G-1}. Every score here is a function of the contingency
matrix M[k, g] = #tokens with cluster k and gold tag g (T = Σ M tokens):

* many-to-one accuracy (Johnson 2007): each cluster is mapped to its most
  frequent gold tag, M-1 = Σ_k max_g M[k, g] / T;
* one-to-one accuracy: clusters and gold tags are matched one to one (each
  used at most once) to maximize agreement, 1-1 = max_σ Σ_k M[k, σ(k)] / T,
  solved by the Hungarian method (Kuhn 1955; `scipy.optimize.linear_sum_assignment`,
  rectangular when K ≠ G);
* V-measure (Rosenberg & Hirschberg 2007): the harmonic mean of homogeneity
  h = 1 - H(G | K) / H(G) and completeness c = 1 - H(K | G) / H(K), with
  h = 1 when H(G) = 0 and c = 1 when H(K) = 0 (scikit-learn's convention).

With no token scored (T = 0) every score is NaN, and the metrics warn: an
empty evaluation is neither 0 % nor 100 %.

The metrics keep M as their only state (summed across processes), so they
cost O(K·G) memory whatever the number of tokens. torchmetrics' own
`VMeasureScore` keeps every token and `ClusterAccuracy` needs square matrices
and an optional package; the tests check these scores against torchmetrics'
and scikit-learn's on the same labels. Gold ids need only be below
``num_gold``: unused columns (a generous ``num_gold``) change no score.
"""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric

from zoo.metrics.inputs import as_ids, nothing_to_score

__all__ = [
    "ContingencyMetric",
    "ManyToOneAccuracy",
    "OneToOneAccuracy",
    "VMeasure",
    "many_to_one",
    "one_to_one",
    "v_measure",
]


def many_to_one(confusion: Tensor) -> Tensor:
    """Σ_k max_g M[k, g] / Σ M from a ``(K, G)`` contingency matrix; NaN when it is empty."""
    total = confusion.sum()
    if total == 0:
        return torch.full((), float("nan"), dtype=torch.float64, device=confusion.device)
    return confusion.max(dim=1).values.sum().double() / total


def one_to_one(confusion: Tensor) -> Tensor:
    """max over one-to-one maps σ of Σ_k M[k, σ(k)] / Σ M (Hungarian matching); NaN when empty."""
    total = confusion.sum()
    if total == 0:
        return torch.full((), float("nan"), dtype=torch.float64, device=confusion.device)
    matrix = confusion.detach().cpu().double().numpy()
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    return torch.tensor(matrix[rows, cols].sum() / float(total), dtype=torch.float64)


def _entropy(counts: Tensor) -> Tensor:
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log()).sum()


def _conditional_entropy(confusion: Tensor) -> Tensor:
    """H(columns | rows) of a joint count matrix, in nats."""
    total = confusion.sum()
    joint = confusion[confusion > 0] / total
    rows = confusion.sum(1, keepdim=True).expand_as(confusion)[confusion > 0] / total
    return -(joint * (joint / rows).log()).sum()


def v_measure(confusion: Tensor, beta: float = 1.0) -> Tensor:
    """V-measure (Rosenberg & Hirschberg 2007) of a ``(K, G)`` contingency matrix.

    ``beta`` weighs completeness against homogeneity as in scikit-learn's
    ``v_measure_score``: V = (1 + β) h c / (β h + c). NaN when the matrix is empty.
    """
    m = confusion.double()
    if m.sum() == 0:
        return m.new_full((), float("nan"))
    h_gold, h_cluster = _entropy(m.sum(0)), _entropy(m.sum(1))
    homogeneity = 1.0 - _conditional_entropy(m) / h_gold if h_gold > 0 else m.new_ones(())
    completeness = 1.0 - _conditional_entropy(m.T) / h_cluster if h_cluster > 0 else m.new_ones(())
    if homogeneity + completeness == 0:
        return m.new_zeros(())
    return (1 + beta) * homogeneity * completeness / (beta * homogeneity + completeness)


class ContingencyMetric(Metric):
    """Accumulates the contingency matrix of cluster ids against gold ids.

    ``update(preds, target)`` takes tensors of ids of one shape (integer, or
    floating with integral values); entries where ``target < 0`` (padding) are
    skipped. ``compute()`` returns the ``(K, G)`` matrix; subclasses turn it
    into a score, NaN with a warning when no token was counted.

    Args:
        num_clusters: K, clusters ids lie in [0, K).
        num_gold: G, gold ids lie in [0, G) (an upper bound is fine).

    Raises:
        ValueError: K or G below 1; at ``update``, ids out of range, NaN or
            fractional ids, or shapes that differ.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confusion: Tensor

    def __init__(self, num_clusters: int, num_gold: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("num_clusters", num_clusters), ("num_gold", num_gold)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        self.num_clusters = num_clusters
        self.num_gold = num_gold
        self.add_state(
            "confusion",
            default=torch.zeros(num_clusters, num_gold, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__}: preds and target must have one shape, "
                f"got {tuple(preds.shape)} and {tuple(target.shape)}"
            )
        name = type(self).__name__
        preds, target = as_ids(name, "preds", preds), as_ids(name, "target", target)
        keep = target >= 0
        preds, target = preds[keep], target[keep]
        if preds.numel() == 0:
            return
        for name, ids, bound in (
            ("cluster", preds, self.num_clusters),
            ("gold", target, self.num_gold),
        ):
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= bound:
                raise ValueError(
                    f"{type(self).__name__}: {name} ids must lie in [0, {bound}), got ids in "
                    f"[{low}, {high}]"
                )
        counts = torch.bincount(preds * self.num_gold + target, minlength=self.confusion.numel())
        self.confusion += counts.view_as(self.confusion)

    def compute(self) -> Tensor:
        return self.confusion.clone()

    def _score(self, score: Tensor) -> Tensor:
        if int(self.confusion.sum()) == 0:
            return nothing_to_score(
                type(self).__name__,
                "no token was counted (update() never saw a non-padding token)",
                score.float(),
            )
        return score.float()


class ManyToOneAccuracy(ContingencyMetric):
    """Many-to-one accuracy: each cluster counts as its most frequent gold tag."""

    def compute(self) -> Tensor:
        return self._score(many_to_one(self.confusion))


class OneToOneAccuracy(ContingencyMetric):
    """One-to-one accuracy: the best one-to-one map of clusters to gold tags (Hungarian)."""

    def compute(self) -> Tensor:
        return self._score(one_to_one(self.confusion))


class VMeasure(ContingencyMetric):
    """V-measure: harmonic mean of homogeneity and completeness (β = 1)."""

    def compute(self) -> Tensor:
        return self._score(v_measure(self.confusion))
