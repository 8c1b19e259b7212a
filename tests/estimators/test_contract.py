"""The estimator contract: every estimator × every structure case.

* Every estimator: shapes, finite values, one vectorized ``cost_fn`` call, a
  gradient that reaches both θ and the cost's own parameters, seeded
  reproducibility, buffers through ``state_dict``.
* Every REINFORCE variant: unbiased against `Exact` on a nonlinear cost. The
  mean of D independent gradient draws must lie within 5 standard errors of
  the exact gradient in every coordinate (a false alarm has probability
  ≈ 6e-7 per coordinate under unbiasedness; seeds are fixed).
* Relaxed and straight-through estimators are biased by design; only their
  documented behaviour is asserted here (valid hard z, the relaxation tending
  to the hard sample as τ → 0, a bias that shows against `Exact` while the
  direction stays right). Their measured bias is printed by
  ``python bench/estimators.py``.
* Estimators made for one kind of structure (ARM and DisARM for Bernoulli,
  Gumbel-CRF for chains, Gumbel-Rao where conditional noise exists) run on
  the cases they apply to and raise a TypeError naming any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from tests.cases import STRUCTURE_CASES, StructureCase
from zoo.estimators import (
    ARM,
    VIMCO,
    DisARM,
    Estimator,
    Exact,
    GappedStraightThrough,
    GreedyBaseline,
    GumbelCRF,
    GumbelRao,
    GumbelSoftmax,
    LearnedBaseline,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    PerturbAndMAP,
    Reinforce,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
    UnorderedSetReinforce,
)
from zoo.structures import Bernoulli, Categorical, LinearChainCRF, Structure
from zoo.testing import check_estimator, sample_test


@dataclass(frozen=True)
class EstimatorCase:
    """A row of the estimator table.

    Attributes:
        name: test id.
        make: builds the estimator for a structure (some need its size).
        kind: "exact", "unbiased" (score function), "relaxed" (cost sees
            relaxed z), "hard" (cost sees discrete z, biased gradient), or
            "bound" (VIMCO: unbiased for its own multi-sample objective, tested
            in test_new_estimators).
        applies: the structures it is made for (the others must raise TypeError).
        rows_per_sample: cost evaluations per sample (2 for antithetic pairs).
    """

    name: str
    make: Callable[[Structure], Estimator]
    kind: str
    applies: Callable[[Structure], bool] = lambda q: True
    rows_per_sample: int = 1

    def __str__(self) -> str:
        return self.name


def _parts(q: Structure) -> int:
    return q.event_shape.numel()


def _is_bernoulli(q: Structure) -> bool:
    return isinstance(q, Bernoulli)


def _is_chain(q: Structure) -> bool:
    return isinstance(q, LinearChainCRF)


def _is_factorized(q: Structure) -> bool:
    return isinstance(q, (Bernoulli, Categorical))


ESTIMATORS = [
    EstimatorCase("exact", lambda q: Exact(), "exact"),
    EstimatorCase("gumbel_softmax", lambda q: GumbelSoftmax(0.5, num_samples=2), "relaxed"),
    EstimatorCase("st_gumbel_softmax", lambda q: STGumbelSoftmax(0.5, num_samples=2), "hard"),
    EstimatorCase("straight_through", lambda q: StraightThrough(num_samples=2), "hard"),
    EstimatorCase("perturb_and_map", lambda q: PerturbAndMAP(0.5, num_samples=2), "hard"),
    EstimatorCase(
        "perturb_and_map_imle",
        lambda q: PerturbAndMAP(gradient="imle", imle_lambda=1.0, num_samples=4),
        "hard",
    ),
    EstimatorCase("reinforce", lambda q: Reinforce(), "unbiased"),
    EstimatorCase("reinforce_ema", lambda q: Reinforce(2, MovingAverageBaseline(0.9)), "unbiased"),
    EstimatorCase("reinforce_loo", lambda q: Reinforce(3, LeaveOneOutBaseline()), "unbiased"),
    EstimatorCase(
        "reinforce_learned", lambda q: Reinforce(1, LearnedBaseline(_parts(q), 16)), "unbiased"
    ),
    EstimatorCase("reinforce_greedy", lambda q: Reinforce(2, GreedyBaseline()), "unbiased"),
    EstimatorCase("vimco", lambda q: VIMCO(3), "bound"),
    EstimatorCase("unordered_set", lambda q: UnorderedSetReinforce(3), "unbiased", _is_factorized),
    EstimatorCase("arm", lambda q: ARM(2), "unbiased", _is_bernoulli, rows_per_sample=2),
    EstimatorCase("disarm", lambda q: DisARM(2), "unbiased", _is_bernoulli, rows_per_sample=2),
    EstimatorCase(
        "gumbel_rao", lambda q: GumbelRao(0.5, num_rao=4, num_samples=2), "hard", _is_factorized
    ),
    EstimatorCase("reinmax", lambda q: ReinMax(1.3, num_samples=2), "hard"),
    EstimatorCase("gapped_st", lambda q: GappedStraightThrough(0.5, num_samples=2), "hard"),
    EstimatorCase("gumbel_crf", lambda q: GumbelCRF(0.5, num_samples=2), "relaxed", _is_chain),
    EstimatorCase(
        "st_gumbel_crf",
        lambda q: GumbelCRF(0.5, straight_through=True, num_samples=2),
        "hard",
        _is_chain,
    ),
]
UNBIASED = [e for e in ESTIMATORS if e.kind == "unbiased"]


def _pairs(estimators: list[EstimatorCase], applicable: bool = True) -> list:
    return [
        pytest.param(e, c, id=f"{e}-{c}")
        for e in estimators
        for c in STRUCTURE_CASES
        if e.applies(c.build()) == applicable
    ]


ALL = pytest.mark.parametrize("case", STRUCTURE_CASES, ids=str)


def _first_case(est_case: EstimatorCase) -> Structure:
    """The first structure case the estimator applies to, in float64."""
    return next(q for q in (c.build(torch.float64) for c in STRUCTURE_CASES) if est_case.applies(q))


class NonlinearCost(torch.nn.Module):
    """f(z) = sin(3⟨a, z⟩) + ⟨b, z⟩² + c, over the event dims; broadcasts over leading dims."""

    def __init__(self, q: Structure, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        shape = (*q.batch_shape, *q.event_shape)
        dtype = q.log_potentials.dtype
        self.a = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype))
        self.b = torch.nn.Parameter(
            0.5 * torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        )
        self.c = torch.nn.Parameter(torch.zeros((), dtype=dtype))
        self.dims = tuple(range(-q.event_dim, 0))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(z.shape))
        a = (z * self.a).sum(self.dims)
        b = (z * self.b).sum(self.dims)
        return torch.sin(3 * a) + b**2 + self.c


def _in_support(q: Structure, z: torch.Tensor) -> bool:
    """Every z[s, b] is an element of q's support (hard structures only)."""
    support, valid = q.enumerate_padded_support()  # (M, *batch, *event)
    # Straight-through values are hard + soft - soft, exact only up to rounding.
    close = (z.unsqueeze(1) - support.unsqueeze(0)).abs() < 1e-6  # (S, M, *batch, *event)
    match = close.flatten(2 + len(q.batch_shape)).all(-1) & valid.unsqueeze(0)  # (S, M, *batch)
    return bool(match.any(1).all())


@pytest.mark.parametrize(("est_case", "case"), _pairs(ESTIMATORS))
def test_shapes_values_and_gradients(est_case: EstimatorCase, case: StructureCase) -> None:
    torch.manual_seed(0)
    q0 = case.build(torch.float64)
    theta = q0.log_potentials.clone().requires_grad_(True)
    q = q0.with_potentials(theta)
    cost = NonlinearCost(q)
    estimator = est_case.make(q)
    est = estimator(q, cost)

    assert len(cost.calls) == 1, "cost_fn must be called once, vectorized over samples"
    num = est.z.shape[0]
    assert est.z.shape == (num, *q.batch_shape, *q.event_shape)
    if est_case.kind != "exact":
        extra = 1 if isinstance(getattr(estimator, "baseline", None), GreedyBaseline) else 0
        assert num == estimator.num_samples * est_case.rows_per_sample
        assert cost.calls[0][0] == num + extra
    assert est.cost.shape == est.surrogate.shape == est.objective.shape == q.batch_shape
    assert not est.cost.requires_grad
    torch.testing.assert_close(est.objective.detach(), est.cost)
    for value in (est.z, est.cost, est.surrogate, *est.stats.values()):
        assert torch.isfinite(value).all()
    if est_case.kind in ("hard", "unbiased", "bound"):
        assert _in_support(q0, est.z.detach()), "hard estimators evaluate valid structures"

    est.objective.sum().backward()
    assert torch.isfinite(theta.grad).all()
    assert theta.grad.abs().sum() > 0, "the gradient must reach the potentials"
    for name, p in cost.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert cost.a.grad.abs().sum() > 0, "the gradient must reach the cost's parameters"


@pytest.mark.parametrize(("est_case", "case"), _pairs(ESTIMATORS, applicable=False))
def test_an_estimator_made_for_other_structures_says_so(
    est_case: EstimatorCase, case: StructureCase
) -> None:
    q = case.build(torch.float64)
    with pytest.raises(TypeError, match=type(q).__name__):
        est_case.make(q)(q, NonlinearCost(q))


@pytest.mark.parametrize(("est_case", "case"), _pairs(UNBIASED))
def test_score_function_estimators_are_unbiased(
    est_case: EstimatorCase, case: StructureCase
) -> None:
    torch.manual_seed(0)
    q = case.build(torch.float64)
    report = check_estimator(est_case.make(q), q, NonlinearCost(q), draws=4000, warmup=2)
    assert report.max_abs_z < 5, f"biased: {report}"


BIASED = [e for e in ESTIMATORS if e.name in ("gumbel_rao", "gumbel_crf", "st_gumbel_crf")]


@pytest.mark.parametrize(("est_case", "case"), _pairs(BIASED))
def test_relaxed_estimators_show_their_bias_against_exact(
    est_case: EstimatorCase, case: StructureCase
) -> None:
    # Documented as biased for E_q[f]: the mean of 4000 draws sits more than 5
    # standard errors from the exact gradient in some coordinate. The bias
    # itself is tabulated by bench/estimators.py.
    torch.manual_seed(0)
    q = case.build(torch.float64)
    report = check_estimator(est_case.make(q), q, NonlinearCost(q), draws=4000)
    assert report.max_abs_z > 5, f"no measurable bias: {report}"


@ALL
def test_exact_is_the_enumerated_expectation(case: StructureCase) -> None:
    q = case.build(torch.float64)
    cost = NonlinearCost(q)
    support, valid = q.enumerate_padded_support()
    want = torch.where(valid, q.log_prob(support).exp() * cost(support), 0.0).sum(0)
    torch.testing.assert_close(Exact()(q, cost).cost, want.detach())


@ALL
@pytest.mark.parametrize("kind", [GumbelSoftmax, STGumbelSoftmax, PerturbAndMAP])
def test_relaxation_tends_to_the_hard_sample(case: StructureCase, kind: type) -> None:
    # As τ → 0 the relaxed sample marginals((θ + G)/τ) approaches argmax(θ + G).
    torch.manual_seed(0)
    q = case.build(torch.float64)
    gaps = []
    for tau in (1.0, 0.01):
        torch.manual_seed(1)
        hard, soft = q.rsample_with_hard(200, tau)
        gaps.append((hard - soft).abs().amax(tuple(range(-q.event_dim, 0))).median())
        assert (soft >= -1e-12).all() and (soft <= 1 + 1e-12).all()
    assert gaps[1] < 0.05 < gaps[0], f"median max-gap at τ=1 and τ=0.01: {gaps}"
    est = kind(temperature=0.01)
    assert est.temperature == pytest.approx(0.01)


@pytest.mark.parametrize("est_case", ESTIMATORS, ids=str)
def test_seeded_runs_are_reproducible(est_case: EstimatorCase) -> None:
    q = _first_case(est_case)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        theta = q.log_potentials.clone().requires_grad_(True)
        est = est_case.make(q)(q.with_potentials(theta), NonlinearCost(q))
        est.surrogate.sum().backward()
        runs.append((est.z.detach(), est.cost, theta.grad))
    for first, second in zip(*runs, strict=True):
        torch.testing.assert_close(first, second)


@pytest.mark.parametrize("est_case", ESTIMATORS, ids=str)
def test_state_dict_round_trip(est_case: EstimatorCase) -> None:
    q = _first_case(est_case)
    trained = est_case.make(q)
    if hasattr(trained, "temperature"):
        trained.temperature = 0.37
    for _ in range(3):
        trained(q, NonlinearCost(q))
    fresh = est_case.make(q)
    fresh.load_state_dict(trained.state_dict())
    for (name, a), (_, b) in zip(
        trained.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    if hasattr(trained, "temperature"):
        assert fresh.temperature == pytest.approx(0.37)


def test_moving_average_baseline_never_sees_the_current_cost() -> None:
    baseline = MovingAverageBaseline(decay=0.5)
    q = STRUCTURE_CASES[0].build(torch.float64)
    est = Reinforce(1, baseline)
    values = []
    for level in (10.0, 20.0, 30.0):
        out = est(q, lambda z, level=level: torch.full(z.shape[:2], level, dtype=z.dtype))
        values.append(out.stats["baseline"].item())
    # Bias-corrected EMA of the *earlier* costs: none, then 10, then (0.25·10 + 0.5·20)/0.75.
    assert values == pytest.approx([0.0, 10.0, (0.25 * 10 + 0.5 * 20) / 0.75])
    est.eval()
    est(q, lambda z: torch.full(z.shape[:2], 99.0, dtype=z.dtype))
    assert baseline.steps.item() == 3, "evaluation must not update the average"


def test_gumbel_softmax_evaluates_discrete_samples_in_eval_mode() -> None:
    q = STRUCTURE_CASES[0].build(torch.float64)
    est = GumbelSoftmax(0.5, num_samples=8)
    est.eval()
    with torch.inference_mode():
        z = est(q, NonlinearCost(q)).z
    assert _in_support(q, z)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: GumbelSoftmax(temperature=0.0), "temperature"),
        (lambda: STGumbelSoftmax(temperature=-1.0), "temperature"),
        (lambda: PerturbAndMAP(temperature=float("inf")), "temperature"),
        (lambda: PerturbAndMAP(gradient="sgd"), "gradient"),
        (lambda: PerturbAndMAP(gradient="imle", imle_lambda=0.0), "imle_lambda"),
        (lambda: Reinforce(num_samples=1, baseline=LeaveOneOutBaseline()), "num_samples ≥ 2"),
        (lambda: Reinforce(num_samples=0), "num_samples"),
        (lambda: StraightThrough(num_samples=2.5), "num_samples"),
        (lambda: MovingAverageBaseline(decay=1.0), "decay"),
        (lambda: LearnedBaseline(in_features=0), "in_features"),
    ],
)
def test_impossible_settings_raise_at_construction(factory: Callable, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_temperature_setter_rejects_non_positive_values() -> None:
    est = GumbelSoftmax(1.0)
    with pytest.raises(ValueError, match="temperature"):
        est.temperature = 0.0
    est.temperature = 0.25
    assert est._temperature.item() == pytest.approx(0.25)


def test_cost_of_wrong_shape_is_a_clear_error() -> None:
    q = STRUCTURE_CASES[0].build(torch.float64)
    with pytest.raises(ValueError, match="cost_fn must map z of shape"):
        Reinforce(2)(q, lambda z: z.sum(-1))


def test_learned_baseline_checks_its_input_size() -> None:
    q = STRUCTURE_CASES[0].build(torch.float64)
    with pytest.raises(ValueError, match="in_features=5"):
        Reinforce(1, LearnedBaseline(5))(q, NonlinearCost(q))


def test_st_gumbel_softmax_and_st_gumbel_crf_differ_on_a_chain() -> None:
    # The relaxation is the estimator's choice, not the chain's: STGumbelSoftmax
    # evaluates argmax(θ + G) with noise on every transition (perturb-and-MAP, the
    # very z of PerturbAndMAP under the same seed, not an exact sample of a
    # chain), GumbelCRF(straight_through=True) the exact FFBS sample.
    q = LinearChainCRF(torch.randn(1, 3, 3, 3, generator=torch.Generator().manual_seed(12)))
    q = q.with_potentials(q.log_potentials.double())

    def draw(estimator: Estimator, seed: int = 0) -> torch.Tensor:
        torch.manual_seed(seed)
        return estimator(q, lambda z: z.sum((-3, -2, -1))).z.detach()

    st_gumbel = draw(STGumbelSoftmax(0.5, num_samples=20000))
    torch.testing.assert_close(st_gumbel, draw(PerturbAndMAP(0.5, num_samples=20000)))
    st_crf = draw(GumbelCRF(0.5, straight_through=True, num_samples=20000))
    assert (sample_test(q, st_gumbel) < 1e-6).all(), "perturb-and-MAP is not exact on a chain"
    assert (sample_test(q, st_crf) > 1e-3).all(), "the Gumbel-CRF hard path is an exact sample"
    # On a one-hot structure the two notions agree: argmax(θ + G) is exact.
    cat = Categorical(torch.randn(2, 3, generator=torch.Generator().manual_seed(1)).double())
    torch.manual_seed(0)
    z = STGumbelSoftmax(0.5, num_samples=20000)(cat, lambda z: z.sum((-2, -1))).z.detach()
    assert (sample_test(cat, z) > 1e-3).all()
