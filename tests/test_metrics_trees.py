"""Tree metrics against hand-computed cases and a brute-force count of arcs and spans."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.metrics.trees import AttachmentScore, BucketedAccuracy, SpanF1, bucket_names
from zoo.structures import NonProjectiveDependencyCRF, TreeCRF


def test_bucket_names() -> None:
    assert bucket_names((10, 50)) == ["1-10", "11-50", "51+"]
    assert bucket_names(()) == ["1+"]
    with pytest.raises(ValueError, match="increasing"):
        BucketedAccuracy((10, 10))
    with pytest.raises(ValueError, match="increasing"):
        BucketedAccuracy((0, 5))


def test_accuracy_by_bucket_by_hand() -> None:
    metric = BucketedAccuracy((10, 50))
    # lengths 3, 10 (bucket 1-10), 11 (11-50), 60, 70 (51+); correct: yes, no, yes, yes, no
    metric.update(
        torch.tensor([1, 2, 3, 4, 5]),
        torch.tensor([1, 0, 3, 4, 0]),
        torch.tensor([3, 10, 11, 60, 70]),
    )
    metric.update(
        torch.tensor([[0.1, 0.9]]), torch.tensor([1]), torch.tensor([12])
    )  # scores: argmax
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out == pytest.approx({"": 4 / 6, "1-10": 0.5, "11-50": 1.0, "51+": 0.5})
    metric.reset()
    metric.update(torch.tensor([1]), torch.tensor([1]), torch.tensor([5]))
    assert set(metric.compute()) == {"", "1-10"}  # empty buckets are left out
    with pytest.raises(ValueError, match="one shape"):
        metric.update(torch.tensor([1, 2]), torch.tensor([1]), torch.tensor([5]))


def _heads(z: torch.Tensor, n: int) -> list[int]:
    return [int(z[:, m].argmax()) for m in range(n)]


def test_attachment_score_against_counting_heads() -> None:
    torch.manual_seed(0)
    n, lengths = 6, torch.tensor([6, 4, 1, 5])
    pred = NonProjectiveDependencyCRF(
        torch.randn(4, n, n), lengths=lengths, multiroot=False
    ).sample()
    gold = NonProjectiveDependencyCRF(
        torch.randn(4, n, n), lengths=lengths, multiroot=False
    ).sample()
    metric = AttachmentScore((4,))
    metric.update(pred, gold, lengths)
    same = [
        sum(a == b for a, b in zip(_heads(p, k), _heads(g, k), strict=True))
        for p, g, k in zip(pred, gold, lengths.tolist(), strict=True)
    ]
    out = metric.compute()
    assert float(out[""]) == pytest.approx(sum(same) / 16)
    assert float(out["1-4"]) == pytest.approx((same[1] + same[2]) / 5)
    assert float(out["5+"]) == pytest.approx((same[0] + same[3]) / 11)
    metric.update(gold, gold, lengths)  # a perfect batch moves the score towards 1
    assert float(metric.compute()[""]) == pytest.approx((sum(same) + 16) / 32)


def _spans(z: torch.Tensor, n: int) -> set[tuple[int, int]]:
    return {
        (i, j) for i in range(n) for j in range(i + 1, n) if z[i, j] > 0.5 and (i, j) != (0, n - 1)
    }


def test_span_f1_against_counting_spans() -> None:
    torch.manual_seed(1)
    n, lengths = 7, torch.tensor([7, 5, 3, 2])
    pred = TreeCRF(torch.randn(4, n, n, 1), lengths=lengths).sample()
    gold = TreeCRF(torch.randn(4, n, n, 1), lengths=lengths).sample()
    metric = SpanF1((2,))
    metric.update(pred, gold, lengths)
    both = total = 0
    for p, g, k in zip(pred.sum(-1), gold.sum(-1), lengths.tolist(), strict=True):
        a, b = _spans(p, k), _spans(g, k)
        both, total = both + len(a & b), total + len(a) + len(b)
    with pytest.warns(UserWarning, match=r"SpanF1: 1 example\(s\) but nothing to score in .* 1-2"):
        out = metric.compute()
    assert float(out[""]) == pytest.approx(2 * both / total)
    # length 2 has no non-trivial span: nothing to score, neither right nor wrong
    assert math.isnan(float(out["1-2"]))


def test_span_f1_by_hand() -> None:
    def tree(spans, n=5):
        z = torch.zeros(1, n, n)
        for i, j in spans:
            z[0, i, j] = 1
        return z

    leaves = [(i, i) for i in range(5)] + [(0, 4)]
    gold = tree(leaves + [(0, 1), (0, 2), (0, 3)])  # (((0 1) 2) 3) 4
    pred = tree(leaves + [(0, 1), (2, 3), (2, 4)])  # (0 1) ((2 3) 4)
    metric = SpanF1((10,))
    metric.update(pred, gold, torch.tensor([5]))
    assert float(metric.compute()[""]) == pytest.approx(2 * 1 / 6)
    with pytest.raises(ValueError, match="SpanF1"):
        metric.update(pred, gold[:, :4, :4], torch.tensor([5]))


def _trees(n: int = 3) -> torch.Tensor:
    z = torch.zeros(2, n, n)
    z[:, 0, 0] = 1  # token 0 on ROOT
    z[:, 0, 1:] = 1  # the others hang from it
    return z


@pytest.mark.parametrize("metric", [AttachmentScore, SpanF1, BucketedAccuracy])
def test_a_metric_updated_with_nothing_is_nan_with_a_warning(metric) -> None:
    """It said {'': 1.0}: 100 % of nothing."""
    with pytest.warns(UserWarning, match=rf"{metric.__name__}: no example was scored.*NaN"):
        out = metric().compute()
    assert set(out) == {""} and math.isnan(float(out[""]))


def test_span_f1_of_trivial_trees_only_is_nan_overall() -> None:
    z = torch.zeros(2, 2, 2)
    z[:, 0, 0] = z[:, 1, 1] = z[:, 0, 1] = 1
    metric = SpanF1((10,))
    metric.update(z, z, torch.tensor([1, 2]))
    with pytest.warns(UserWarning, match=r"2 example\(s\) but nothing to score overall"):
        out = metric.compute()
    assert math.isnan(float(out[""])) and math.isnan(float(out["1-10"]))


@pytest.mark.parametrize("metric", [AttachmentScore, SpanF1])
def test_nan_trees_and_bad_lengths_are_named(metric) -> None:
    name = metric.__name__
    gold, nan = _trees(), _trees()
    nan[1, 2, 2] = float("nan")
    lengths = torch.tensor([3, 3])
    with pytest.raises(
        ValueError, match=rf"{name}: preds must be finite, got nan at index \(1, 2, 2\)"
    ):
        metric().update(nan, gold, lengths)
    with pytest.raises(ValueError, match=rf"{name}: target must be finite"):
        metric().update(gold, nan, lengths)
    with pytest.raises(ValueError, match=rf"{name}: lengths must hold integer ids, got 2.5"):
        metric().update(gold, gold, torch.tensor([3.0, 2.5]))
    with pytest.raises(
        ValueError, match=rf"{name}: lengths must lie in \[1, 3\], got values from 0 to 4"
    ):
        metric().update(gold, gold, torch.tensor([0, 4]))


def test_accuracy_refuses_nan_scores_and_fractional_classes() -> None:
    lengths = torch.tensor([3, 4])
    with pytest.raises(
        ValueError, match=r"BucketedAccuracy: preds must be finite, got nan at index \(0, 1\)"
    ):
        BucketedAccuracy().update(
            torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), torch.tensor([1, 0]), lengths
        )
    with pytest.raises(ValueError, match="BucketedAccuracy: preds must hold integer ids, got 0.5"):
        BucketedAccuracy().update(torch.tensor([0.5, 1.0]), torch.tensor([1, 0]), lengths)
    with pytest.raises(ValueError, match="BucketedAccuracy: target must be finite"):
        BucketedAccuracy().update(torch.tensor([1, 0]), torch.tensor([float("nan"), 0.0]), lengths)
