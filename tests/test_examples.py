"""The examples under `examples/` run, pass the structure checks, and match their docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.cases.examples import _PATH, load_example
from zoo.estimators import Exact, LeaveOneOutBaseline, Reinforce
from zoo.testing import brute_force, check_estimator, check_structure, sample_test

ROOT = Path(__file__).resolve().parents[1]
KSubsets = load_example().KSubsets


def test_the_tutorial_shows_the_example_file() -> None:
    doc = (ROOT / "docs" / "new-structure.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert blocks[0] == _PATH.read_text()


def test_the_tutorial_structure_is_under_40_lines_of_code() -> None:
    code = [
        line
        for line in re.sub(r'r?"""(.*?)"""', "", _PATH.read_text(), flags=re.S).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert len(code) < 40, len(code)


@pytest.mark.parametrize(("n", "k"), [(5, 2), (4, 4), (6, 0), (6, 3)])
def test_k_subsets_pass_check_structure(n: int, k: int) -> None:
    theta = torch.randn(3, n, generator=torch.Generator().manual_seed(n + k), dtype=torch.float64)
    theta[0, 1] = -torch.inf  # a forbidden item
    q = KSubsets(theta, k=k)
    check_structure(q)
    exact = brute_force(q)
    assert torch.allclose(
        q.marginals().sum(-1)[1:], torch.full((2,), float(k), dtype=q.log_potentials.dtype)
    )
    if k > 0 and k < n:
        torch.manual_seed(0)
        assert (sample_test(q, q.sample(6000)) > 1e-3).all()
    torch.testing.assert_close(q.log_partition(), exact.log_partition)


def test_k_subsets_empty_support_and_bad_k() -> None:
    theta = torch.zeros(2, 4, dtype=torch.float64)
    theta[:, 1:] = -torch.inf  # only one item allowed, two wanted
    q = KSubsets(theta, k=2)
    assert (q.log_partition() == -torch.inf).all()
    with pytest.raises(ValueError, match="support is empty"):
        q.argmax()
    with pytest.raises(ValueError, match="k=5"):
        KSubsets(theta, k=5)


def test_k_subsets_with_estimators() -> None:
    q = KSubsets(
        torch.randn(2, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64), k=2
    )
    weights = torch.arange(5.0, dtype=torch.float64)

    def cost(z: torch.Tensor) -> torch.Tensor:
        return torch.sin((z * weights).sum(-1))

    support = q.enumerate_support()
    want = (q.log_prob(support).exp() * cost(support)).sum(0)
    torch.testing.assert_close(Exact()(q, cost).cost, want)
    torch.manual_seed(0)
    report = check_estimator(Reinforce(3, LeaveOneOutBaseline()), q, cost, draws=3000)
    assert report.max_abs_z < 5, report
