"""Tree metrics against hand-computed cases and a brute-force count of arcs and spans."""

from __future__ import annotations

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
    out = metric.compute()
    assert float(out[""]) == pytest.approx(2 * both / total)
    # length 2 has no non-trivial span: nothing to get wrong
    assert float(out["1-2"]) == 1.0


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
