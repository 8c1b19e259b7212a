"""The example of ``docs/new-estimator.md`` runs, joins the contract suite and is short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.cases import STRUCTURE_CASES, StructureCase
from tests.estimators.test_contract import NonlinearCost
from zoo.estimators import StraightThrough
from zoo.testing import exact_gradient

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "new-estimator.md").read_text()
ESTIMATOR, CHECK = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)


def _build() -> type:
    namespace: dict = {"__name__": "new_estimator_doc"}
    exec(compile(ESTIMATOR, "docs/new-estimator.md", "exec"), namespace)
    return namespace["SlopeAnnealedStraightThrough"]


def test_the_estimator_and_its_check_run_as_written() -> None:
    namespace: dict = {"__name__": "new_estimator_doc"}
    exec(compile(ESTIMATOR, "docs/new-estimator.md", "exec"), namespace)
    torch.manual_seed(0)
    exec(compile(CHECK, "docs/new-estimator.md", "exec"), namespace)
    assert namespace["theta"].grad.abs().sum() > 0


@pytest.mark.parametrize("case", STRUCTURE_CASES, ids=str)
def test_it_is_straight_through_at_temperature_one_and_differs_below(case: StructureCase) -> None:
    kind = _build()
    q = case.build(torch.float64)
    cost = NonlinearCost(q)
    grads = {}
    for name, estimator in [
        ("st", StraightThrough(num_samples=3)),
        ("1", kind(1.0, num_samples=3)),
        ("0.5", kind(0.5, num_samples=3)),
    ]:
        torch.manual_seed(4)
        theta = q.log_potentials.clone().requires_grad_(True)
        est = estimator(q.with_potentials(theta), cost)
        est.objective.sum().backward()
        grads[name] = theta.grad
        assert est.z.shape == (3, *q.batch_shape, *q.event_shape)
    torch.testing.assert_close(grads["1"], grads["st"])
    if case.build(torch.float64).marginals().abs().sum() > 0:
        assert not torch.allclose(grads["0.5"], grads["1"])


def test_below_temperature_one_it_is_biased_even_for_a_linear_cost() -> None:
    q = STRUCTURE_CASES[0].build(torch.float64)
    linear = NonlinearCost(q)
    exact = exact_gradient(q, lambda z: (z * linear.a).sum(linear.dims))
    theta = q.log_potentials.clone().requires_grad_(True)
    _build()(0.5)(
        q.with_potentials(theta), lambda z: (z * linear.a).sum(linear.dims)
    ).objective.sum().backward()
    assert not torch.allclose(theta.grad, exact)


def test_the_line_count_in_the_heading_is_the_code_shown() -> None:
    source = re.sub(r'r?"""(.*?)"""', "", ESTIMATOR, flags=re.S)
    lines = [
        line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")
    ]
    (count,) = re.findall(r"## Example: .*\((\d+) lines of code\)", DOC)
    assert len(lines) == int(count)
