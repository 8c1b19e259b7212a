"""Clustering scores: a hand-computed case, scikit-learn and torchmetrics on random labels, accumulation."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.clustering import VMeasureScore

from zoo.metrics.clustering import (
    ContingencyMetric,
    ManyToOneAccuracy,
    OneToOneAccuracy,
    VMeasure,
    many_to_one,
    one_to_one,
    v_measure,
)

# 6 tokens, clusters 0,0,0,1,1,2 against gold A,A,B,B,B,A (ids 0, 1).
PREDS = torch.tensor([0, 0, 0, 1, 1, 2])
GOLD = torch.tensor([0, 0, 1, 1, 1, 0])


def test_hand_computed_example() -> None:
    # M = [[2, 1], [0, 2], [1, 0]]: M-1 maps 0→A, 1→B, 2→A: (2 + 2 + 1) / 6.
    assert float(ManyToOneAccuracy(3, 2)(PREDS, GOLD)) == pytest.approx(5 / 6)
    # 1-1: 0→A, 1→B, 2 unmatched: (2 + 2) / 6.
    assert float(OneToOneAccuracy(3, 2)(PREDS, GOLD)) == pytest.approx(4 / 6)
    # H(G) = log 2; H(G|K) = 3/6 H(2/3, 1/3); H(K) = H(1/2, 1/3, 1/6); H(K|G) = 2 · 3/6 · H(2/3, 1/3).
    h23 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    homogeneity = 1 - 0.5 * h23 / math.log(2)
    h_k = -(0.5 * math.log(0.5) + 1 / 3 * math.log(1 / 3) + 1 / 6 * math.log(1 / 6))
    completeness = 1 - h23 / h_k
    want = 2 * homogeneity * completeness / (homogeneity + completeness)
    assert float(VMeasure(3, 2)(PREDS, GOLD)) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_against_scikit_learn_and_torchmetrics(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(seed)
    preds = torch.randint(0, 7, (500,), generator=g)
    gold = (preds + torch.randint(0, 3, (500,), generator=g)) % 5
    confusion = metrics.confusion_matrix(gold.numpy(), preds.numpy(), labels=range(7)).T
    rows, cols = linear_sum_assignment(-confusion)
    # Extra unused gold columns (max_gold = 12) change nothing.
    assert float(VMeasure(7, 12)(preds, gold)) == pytest.approx(
        metrics.v_measure_score(gold.numpy(), preds.numpy()), abs=1e-6
    )
    assert float(VMeasure(7, 5)(preds, gold)) == pytest.approx(
        float(VMeasureScore()(preds, gold)), abs=1e-5
    )
    assert float(ManyToOneAccuracy(7, 12)(preds, gold)) == pytest.approx(
        confusion.max(1).sum() / 500
    )
    assert float(OneToOneAccuracy(7, 12)(preds, gold)) == pytest.approx(
        confusion[rows, cols].sum() / 500
    )


def test_accumulates_over_batches_and_skips_padding() -> None:
    metric = ManyToOneAccuracy(3, 2)
    metric.update(PREDS[:4].view(2, 2), GOLD[:4].view(2, 2))
    metric.update(torch.tensor([1, 2, 0]), torch.tensor([1, 0, -1]))  # the last is padding
    assert float(metric.compute()) == pytest.approx(5 / 6)
    assert int(ContingencyMetric(3, 2).confusion.sum()) == 0


def test_degenerate_cases() -> None:
    one = torch.zeros(4, dtype=torch.long)
    assert float(v_measure(torch.tensor([[4]]))) == 1.0  # one cluster, one gold tag
    assert float(VMeasure(2, 2)(one, one)) == 1.0


@pytest.mark.parametrize("score", [many_to_one, one_to_one, v_measure])
def test_an_empty_contingency_matrix_scores_nan(score) -> None:
    assert math.isnan(float(score(torch.zeros(2, 3, dtype=torch.long))))


@pytest.mark.parametrize("metric", [ManyToOneAccuracy, OneToOneAccuracy, VMeasure])
def test_a_metric_with_nothing_counted_is_nan_with_a_warning(metric) -> None:
    """Never updated, or updated with padding only: NaN and a warning, not 0 %."""
    with pytest.warns(UserWarning, match=rf"{metric.__name__}: no token was counted.*NaN"):
        assert math.isnan(float(metric(3, 2).compute()))
    padded = metric(3, 2)
    padded.update(torch.tensor([[0, 1]]), torch.tensor([[-1, -1]]))
    with pytest.warns(UserWarning, match="no token was counted"):
        assert math.isnan(float(padded.compute()))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="num_clusters"):
        ManyToOneAccuracy(0, 3)
    with pytest.raises(ValueError, match=r"cluster ids must lie in \[0, 3\)"):
        ManyToOneAccuracy(3, 2).update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"gold ids must lie in \[0, 2\)"):
        ManyToOneAccuracy(3, 2).update(torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="one shape"):
        ManyToOneAccuracy(3, 2).update(torch.tensor([0, 1]), torch.tensor([0]))


@pytest.mark.parametrize(
    ("preds", "target", "message"),
    [
        ([0.0, float("nan")], [0, 1], r"preds must be finite, got nan at index \(1,\)"),
        ([0.0, 1.5], [0, 1], r"preds must hold integer ids, got 1.5 at index \(1,\)"),
        ([0, 1], [0.0, float("nan")], r"target must be finite, got nan at index \(1,\)"),
        ([0, 1], [float("inf"), 0.0], r"target must be finite, got inf at index \(0,\)"),
    ],
)
def test_nan_or_fractional_ids_are_named(preds, target, message) -> None:
    """A NaN was read as the id -2**63 ('ids in [-9223372036854775808, 0]'), a NaN target as padding."""
    with pytest.raises(ValueError, match=rf"ManyToOneAccuracy: {message}"):
        ManyToOneAccuracy(3, 2).update(torch.tensor(preds), torch.tensor(target))


def test_integral_float_ids_are_counted_as_ids() -> None:
    metric = ManyToOneAccuracy(3, 2)
    metric.update(PREDS.double(), GOLD.float())
    assert float(metric.compute()) == pytest.approx(float(ManyToOneAccuracy(3, 2)(PREDS, GOLD)))
