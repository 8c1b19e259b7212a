"""Tree structures beyond the shared contract: torch-struct agreement, scale, flags, exactness.

Statistical tests use fixed seeds and a chi-square test at α = 1e-3 per batch
element (`zoo.testing.sample_test`): with a correct sampler a given seed fails
with probability ≤ 1e-3 per element, and the seed makes the outcome
reproducible.
"""

from __future__ import annotations

import pytest
import torch
import torch_struct
from torch_struct.deptree import deptree_nonproj, deptree_part

from zoo.structures import DependencyCRF, NonProjectiveDependencyCRF, Structure, TreeCRF
from zoo.structures.nonprojective import _log_partition_elimination
from zoo.testing import brute_force, check_structure, sample_test

ALPHA = 1e-3
TORCH_STRUCT_WARNING = pytest.mark.filterwarnings("ignore:.*does not define `arg_constraints`")

# (kind, multiroot or None, event shape after the batch) of moderate size.
KINDS = [
    (DependencyCRF, False),
    (DependencyCRF, True),
    (NonProjectiveDependencyCRF, False),
    (NonProjectiveDependencyCRF, True),
    (TreeCRF, None),
]
KIND_IDS = ["projective-single", "projective-multi", "nonprojective-single", "nonprojective-multi"]
KIND_IDS.append("tree")
ALL_KINDS = pytest.mark.parametrize(("kind", "multiroot"), KINDS, ids=KIND_IDS)


def build(
    kind: type,
    multiroot: bool | None,
    theta: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> Structure:
    flags = {} if multiroot is None else {"multiroot": multiroot}
    return kind(theta, lengths=lengths, **flags)


def potentials(kind: type, batch: tuple[int, ...], n: int, seed: int = 0, labels: int = 2):
    shape = (*batch, n, n, labels) if kind is TreeCRF else (*batch, n, n)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def non_leaf(theta: torch.Tensor) -> torch.Tensor:
    """torch-struct writes into its input in place, which a leaf tensor refuses."""
    return theta.clone().requires_grad_(True) * 1.0


# -------------------------------------------------------------- torch-struct
@TORCH_STRUCT_WARNING
@pytest.mark.parametrize("multiroot", [False, True])
def test_projective_agrees_with_torch_struct(multiroot: bool) -> None:
    theta = potentials(DependencyCRF, (4,), 9, seed=1)
    lengths = torch.tensor([9, 7, 2, 1])
    ours = DependencyCRF(theta, lengths=lengths, multiroot=multiroot)
    theirs = torch_struct.DependencyCRF(non_leaf(theta), lengths=lengths, multiroot=multiroot)
    torch.testing.assert_close(ours.log_partition(), theirs.partition.detach())
    torch.testing.assert_close(ours.marginals(), theirs.marginals.detach())
    torch.testing.assert_close(ours.argmax(), theirs.argmax.detach())


@TORCH_STRUCT_WARNING
def test_tree_agrees_with_torch_struct() -> None:
    theta = potentials(TreeCRF, (4,), 8, seed=2, labels=3)
    lengths = torch.tensor([8, 5, 2, 1])
    ours = TreeCRF(theta, lengths=lengths)
    theirs = torch_struct.TreeCRF(non_leaf(theta), lengths=lengths)
    torch.testing.assert_close(ours.log_partition(), theirs.partition.detach())
    torch.testing.assert_close(ours.marginals(), theirs.marginals.detach())
    torch.testing.assert_close(ours.argmax(), theirs.argmax.detach())


@pytest.mark.parametrize("multiroot", [False, True])
def test_nonprojective_agrees_with_torch_struct_matrix_tree(multiroot: bool) -> None:
    # torch-struct adds eps = 1e-5 to every weight; with eps = 0 it is exact.
    theta = potentials(NonProjectiveDependencyCRF, (4,), 10, seed=3)
    lengths = torch.tensor([10, 6, 2, 1])
    ours = NonProjectiveDependencyCRF(theta, lengths=lengths, multiroot=multiroot)
    torch.testing.assert_close(
        ours.log_partition(), deptree_part(theta, multiroot, lengths, eps=0.0)
    )
    torch.testing.assert_close(
        ours.marginals(), deptree_nonproj(theta, multiroot, lengths, eps=0.0)
    )


@TORCH_STRUCT_WARNING
def test_layout_is_torch_structs() -> None:
    # θ[h, m] is the arc h → m and θ[m, m] hangs m from ROOT: one strong arc
    # each must show up where torch-struct puts it.
    theta = torch.zeros(1, 3, 3, dtype=torch.float64)
    theta[0, 0, 0] = 20.0  # ROOT → word 0
    theta[0, 0, 1] = 20.0  # word 0 → word 1
    theta[0, 1, 2] = 20.0  # word 1 → word 2
    want = (theta > 0).double()
    for kind in (DependencyCRF, NonProjectiveDependencyCRF):
        assert torch.equal(kind(theta, multiroot=False).argmax(), want), kind.__name__
    theirs = torch_struct.DependencyCRF(non_leaf(theta), multiroot=False)
    assert torch.equal(theirs.argmax.detach(), want)
    # TreeCRF: θ[i, j, l] is the span i..j inclusive with label l.
    spans = torch.zeros(1, 3, 3, 2, dtype=torch.float64)
    spans[0, 1, 2, 1] = 20.0  # words 1..2, label 1
    best = TreeCRF(spans).argmax()
    assert best[0, 1, 2, 1] == 1 and best[0, 0, 1].sum() == 0
    assert torch.equal(best, torch_struct.TreeCRF(non_leaf(spans)).argmax.detach())


# ----------------------------------------------------------------- grad modes
def _operations(q: Structure) -> dict[str, torch.Tensor]:
    best = q.argmax()
    torch.manual_seed(5)
    sample = q.sample(4)
    torch.manual_seed(6)
    hard, soft = q.rsample_with_hard(2, 0.5)
    return {
        "log_partition": q.log_partition(),
        "marginals": q.marginals(),
        "argmax": best,
        "entropy": q.entropy(),
        "log_prob": q.log_prob(best),
        "sample": sample,
        "hard": hard,
        "soft": soft,
        "kl": torch.distributions.kl_divergence(q, q.with_potentials(q.log_potentials * 0.5)),
    }


@ALL_KINDS
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_every_operation_in_every_grad_mode(kind: type, multiroot: bool | None, mode: str) -> None:
    theta = potentials(kind, (3,), 6, seed=7)
    lengths = torch.tensor([6, 4, 1])
    leaf = theta.clone().requires_grad_(True)
    normal = _operations(build(kind, multiroot, leaf, lengths))
    assert normal["marginals"].requires_grad and normal["soft"].requires_grad
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        # Built inside: inference tensors under inference mode.
        got = _operations(build(kind, multiroot, theta.clone(), lengths.clone()))
    for name, value in normal.items():
        assert not got[name].requires_grad, name
        torch.testing.assert_close(got[name].clone(), value.detach(), msg=name)


@ALL_KINDS
def test_second_derivatives(kind: type, multiroot: bool | None) -> None:
    # Relaxed estimators differentiate marginals, i.e. log Z twice.
    theta = potentials(kind, (2,), 3, seed=8, labels=1).requires_grad_(True)
    lengths = torch.tensor([3, 2])
    assert torch.autograd.gradgradcheck(
        lambda t: build(kind, multiroot, t, lengths).log_partition(), (theta,), fast_mode=True
    )


# ----------------------------------------------------------------- magnitude
@ALL_KINDS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_potentials(kind: type, multiroot: bool | None, dtype: torch.dtype) -> None:
    theta = (potentials(kind, (4,), 7, seed=9) * 1e6).to(dtype).requires_grad_(True)
    lengths = torch.tensor([7, 5, 2, 1])
    q = build(kind, multiroot, theta, lengths)
    log_z, marginals = q.log_partition(), q.marginals()
    (grad,) = torch.autograd.grad(log_z.sum(), theta)
    for name, value in {"log_z": log_z, "marginals": marginals, "grad": grad}.items():
        assert torch.isfinite(value).all(), name
    parts = (2 * lengths - 1) if kind is TreeCRF else lengths  # spans / arcs of a tree
    torch.testing.assert_close(
        marginals.sum(tuple(range(1, marginals.dim()))).double(), parts.double()
    )
    for z in (q.argmax(), q.sample(8)):
        log_prob = q.log_prob(z)
        assert torch.isfinite(log_prob).all() and (log_prob <= 0).all()
    entropy = q.entropy()
    assert torch.isfinite(entropy).all() and (entropy >= 0).all()


@pytest.mark.parametrize("multiroot", [False, True])
def test_nonprojective_exact_where_the_determinant_is_not(multiroot: bool) -> None:
    # Best heads in a 2-cycle with a large margin: the shifted determinant is
    # e^-30, beyond float64; the log-space elimination must take over, exactly.
    theta = potentials(NonProjectiveDependencyCRF, (2,), 4, seed=10)
    theta[:, 0, 1] = theta[:, 1, 0] = 30.0
    q = NonProjectiveDependencyCRF(theta, multiroot=multiroot)
    check_structure(q, atol=1e-9, rtol=1e-9)
    elimination = _log_partition_elimination(theta, None, multiroot)
    torch.testing.assert_close(elimination, brute_force(q).log_partition)


@pytest.mark.parametrize("multiroot", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonprojective_marginals_backward_is_the_exact_hessian_product(
    multiroot: bool, dtype: torch.dtype
) -> None:
    # The marginals' closed-form backward (two matrix products) against autograd
    # of enumeration, with padding and one sentence (a 2-cycle of weight 30)
    # beyond the float64 determinant, which takes the elimination instead.
    theta = potentials(NonProjectiveDependencyCRF, (3,), 4, seed=11)
    theta[2, 0, 1] = theta[2, 1, 0] = 30.0
    lengths = torch.tensor([4, 3, 4])
    upstream = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(12), dtype=theta.dtype)
    leaf = theta.to(dtype).requires_grad_(True)
    (got,) = torch.autograd.grad(
        (
            NonProjectiveDependencyCRF(leaf, lengths, multiroot).marginals() * upstream.to(dtype)
        ).sum(),
        leaf,
    )
    exact = theta.clone().requires_grad_(True)
    q = NonProjectiveDependencyCRF(exact, lengths, multiroot)
    (want,) = torch.autograd.grad((brute_force(q).marginals * upstream).sum(), exact)
    assert got.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got.double(), want, atol=tolerance, rtol=tolerance)
    # Under create_graph the backward is itself differentiable (third derivatives of log Z).
    assert torch.autograd.gradgradcheck(
        lambda t: NonProjectiveDependencyCRF(t, lengths[:2], multiroot).marginals(),
        (theta[:2].clone().requires_grad_(True),),
        fast_mode=True,
    )


@pytest.mark.parametrize("multiroot", [False, True])
def test_nonprojective_higher_derivatives_stay_finite_where_the_laplacian_is_singular(
    multiroot: bool,
) -> None:
    # An empty support, a sentence whose arc weights underflow to exactly 0 in
    # the shifted frame, and an ordinary one: second and third derivatives of
    # log Z through the traced closed form, with no NaN anywhere.
    theta = torch.zeros(3, 2, 2, dtype=torch.float64)
    theta[0] = -torch.inf
    theta[1] = torch.tensor([[0.0, -1000.0], [-1000.0, 0.0]])
    theta[2] = torch.tensor([[0.3, -0.2], [0.5, 0.1]])
    theta.requires_grad_(True)
    (first,) = torch.autograd.grad(
        NonProjectiveDependencyCRF(theta, multiroot=multiroot).log_partition()[1:].sum(),
        theta,
        create_graph=True,
    )
    probe = torch.arange(12.0, dtype=torch.float64).view(3, 2, 2)
    (second,) = torch.autograd.grad((first * probe).sum(), theta, create_graph=True)
    (third,) = torch.autograd.grad((second * probe).sum(), theta)
    for name, value in {"first": first, "second": second, "third": third}.items():
        assert torch.isfinite(value).all(), name
    assert second[0].abs().max() == 0  # nothing flows into the empty sentence
    # The well-scaled sentence's second derivative matches enumeration's.
    exact = theta.detach()[2:].clone().requires_grad_(True)
    q = NonProjectiveDependencyCRF(exact, multiroot=multiroot)
    (want,) = torch.autograd.grad((brute_force(q).marginals * probe[2:]).sum(), exact)
    torch.testing.assert_close(second[2:], want)


@pytest.mark.parametrize("multiroot", [False, True])
def test_nonprojective_empty_support_without_root_arcs_has_zero_marginals(multiroot: bool) -> None:
    theta = torch.zeros(2, 3, 3, dtype=torch.float64)
    theta[0].diagonal().fill_(-torch.inf)  # no arc from ROOT: no tree at all
    q = NonProjectiveDependencyCRF(theta, multiroot=multiroot)
    assert q.log_partition()[0] == -torch.inf
    assert q.marginals()[0].abs().max() == 0
    torch.testing.assert_close(q.marginals()[1], brute_force(q[1:]).marginals[0])


def test_nonprojective_marginals_may_be_edited_in_place_before_backward() -> None:
    theta = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    mu = NonProjectiveDependencyCRF(theta).marginals()
    mu.mul_(2.0)  # the output is not saved for the backward pass
    (got,) = torch.autograd.grad(mu.sum(), theta)
    (want,) = torch.autograd.grad(2 * NonProjectiveDependencyCRF(theta).marginals().sum(), theta)
    torch.testing.assert_close(got, want)


# -------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kind", [DependencyCRF, NonProjectiveDependencyCRF])
def test_dependency_value_errors(kind: type) -> None:
    with pytest.raises(ValueError, match="square"):
        kind(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="dimensions"):
        kind(torch.zeros(3))
    with pytest.raises(ValueError, match="square"):
        kind(torch.zeros(2, 0, 0))
    with pytest.raises(ValueError, match="NaN"):
        kind(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\]"):
        kind(torch.zeros(2, 3, 3), lengths=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\]"):
        kind(torch.zeros(2, 3, 3), lengths=torch.tensor([4, 3]))
    with pytest.raises(ValueError, match="multiroot must be a bool"):
        kind(torch.zeros(3, 3), multiroot="yes")


def test_tree_value_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N, N, L\)"):
        TreeCRF(torch.zeros(2, 3, 4, 1))
    with pytest.raises(ValueError, match=r"\(N, N, L\)"):
        TreeCRF(torch.zeros(3, 3, 0))
    with pytest.raises(ValueError, match="dimensions"):
        TreeCRF(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        TreeCRF(torch.full((2, 2, 1), float("nan")))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 2\]"):
        TreeCRF(torch.zeros(1, 2, 2, 1), lengths=torch.tensor([3]))


# ---------------------------------------------------------------- lengths
@ALL_KINDS
def test_padding_never_leaks(kind: type, multiroot: bool | None) -> None:
    n, lengths = 6, torch.tensor([6, 3, 1])
    theta = potentials(kind, (3,), n, seed=11)
    q = build(kind, multiroot, theta, lengths)
    word = torch.arange(n) < lengths[:, None]  # (B, N)
    real = word[:, :, None] & word[:, None, :]  # parts among real words
    if kind is TreeCRF:
        real = real.unsqueeze(-1).expand_as(theta)
    leaf = theta.clone().requires_grad_(True)
    build(kind, multiroot, leaf, lengths).log_partition().sum().backward()
    torch.manual_seed(0)
    for name, value in {
        "grad": leaf.grad,
        "marginals": q.marginals(),
        "argmax": q.argmax(),
        "sample": q.sample(20),
        "soft": q.rsample(3, 0.5),
    }.items():
        assert (value[..., ~real] == 0).all(), name
    # Garbage (huge, -inf) in the padding changes nothing; each sentence
    # equals the same sentence built on its own.
    garbage = torch.where(real, theta, torch.full_like(theta, -torch.inf))
    garbage[..., 0] = torch.where(real[..., 0], garbage[..., 0], 1e4)
    noisy = build(kind, multiroot, garbage, lengths)
    torch.testing.assert_close(noisy.log_partition(), q.log_partition())
    torch.testing.assert_close(noisy.marginals(), q.marginals())
    torch.testing.assert_close(noisy.argmax(), q.argmax())
    for b, m in enumerate(lengths.tolist()):
        alone = build(kind, multiroot, theta[b, :m, :m])
        torch.testing.assert_close(q.log_partition()[b], alone.log_partition())
        torch.testing.assert_close(q.marginals()[b, :m, :m], alone.marginals())


# ----------------------------------------------------------------- multiroot
@pytest.mark.parametrize("kind", [DependencyCRF, NonProjectiveDependencyCRF])
def test_multiroot_belongs_to_the_instance(kind: type) -> None:
    theta = potentials(kind, (2,), 4, seed=12)
    single = kind(theta, multiroot=False)
    before = single.log_partition().clone()
    multi = kind(theta, multiroot=True)  # torch-struct would flip the flag for both
    torch.testing.assert_close(single.log_partition(), before)
    assert multi.log_partition().gt(before).all()  # strictly more trees
    assert single.with_potentials(theta * 2).multiroot is False
    assert single.expand((3, 2)).multiroot is False
    assert single[0].multiroot is False
    assert "multiroot=False" in repr(single)
    roots = single.sample(200).diagonal(0, -2, -1).sum(-1)
    assert (roots == 1).all()
    assert (single.argmax().diagonal(0, -2, -1).sum(-1) == 1).all()
    assert (brute_force(single).log_partition - before).abs().max() < 1e-10


def test_torch_struct_default_flags() -> None:
    # The defaults follow torch-struct: projective multi-root, non-projective single-root.
    assert DependencyCRF(torch.zeros(3, 3)).multiroot is True
    assert NonProjectiveDependencyCRF(torch.zeros(3, 3)).multiroot is False


# ---------------------------------------------------------- non-projective
@pytest.mark.parametrize("multiroot", [False, True])
def test_nonprojective_argmax_is_the_best_tree(multiroot: bool) -> None:
    generator = torch.Generator().manual_seed(13)
    for n in (1, 2, 3, 4, 5):
        for scale in (0.1, 1.0, 10.0, 1e6):
            theta = torch.randn(12, n, n, generator=generator, dtype=torch.float64) * scale
            q = NonProjectiveDependencyCRF(theta, multiroot=multiroot)
            best = q.argmax()
            support = q.enumerate_support()  # (|Z|, B, N, N)
            assert (support == best).flatten(2).all(-1).any(0).all(), "argmax is not a tree"
            want = q.score(support).max(0).values
            torch.testing.assert_close(q.score(best), want, rtol=1e-12, atol=0.0)


def test_nonprojective_argmax_with_ties_and_forbidden_arcs() -> None:
    # Integer scores tie often; -inf arcs must never be chosen.
    generator = torch.Generator().manual_seed(14)
    theta = torch.randint(-2, 3, (40, 4, 4), generator=generator).double()
    theta[:, 0, 1] = -torch.inf
    theta[:, 2, 2] = -torch.inf
    for multiroot in (False, True):
        q = NonProjectiveDependencyCRF(theta, multiroot=multiroot)
        best = q.argmax()
        assert (best[:, 0, 1] == 0).all() and (best[:, 2, 2] == 0).all()
        torch.testing.assert_close(q.score(best), brute_force(q).max_score)


@pytest.mark.parametrize("multiroot", [False, True])
def test_nonprojective_sample_frequencies(multiroot: bool) -> None:
    torch.manual_seed(15)
    theta = potentials(NonProjectiveDependencyCRF, (2,), 4, seed=16)
    q = NonProjectiveDependencyCRF(theta, lengths=torch.tensor([4, 3]), multiroot=multiroot)
    p_values = sample_test(q, q.sample(8000))
    assert (p_values > ALPHA).all(), p_values.tolist()


def test_nonprojective_sample_frequencies_beyond_the_determinant() -> None:
    # Large-margin cycles send sampling down the exact (elimination) path.
    torch.manual_seed(17)
    theta = potentials(NonProjectiveDependencyCRF, (1,), 4, seed=18)
    theta[:, 0, 1] = theta[:, 1, 0] = 14.0
    theta[:, 2, 3] = theta[:, 3, 2] = 13.0
    q = NonProjectiveDependencyCRF(theta, multiroot=False)
    p_values = sample_test(q, q.sample(1500))
    assert (p_values > ALPHA).all(), p_values.tolist()


def test_nonprojective_leaves_the_thread_count_alone() -> None:
    # The structures never change the process-wide intra-op thread count.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        theta = potentials(NonProjectiveDependencyCRF, (3,), 12, seed=20).requires_grad_(True)
        q = NonProjectiveDependencyCRF(theta, lengths=torch.tensor([12, 7, 1]))
        seen = set()
        real = torch.set_num_threads
        torch.set_num_threads = lambda n: seen.add(n)  # any call would be recorded
        try:
            torch.autograd.grad(q.log_partition().sum(), theta)
            q.marginals(), q.argmax(), q.sample(3)
        finally:
            torch.set_num_threads = real
        assert not seen and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ specials
def test_forbidden_parts() -> None:
    # -inf forbids a part: it gets no mass, and nothing turns NaN.
    arcs = potentials(DependencyCRF, (2,), 4, seed=19)
    arcs[:, 1, 2] = -torch.inf
    arcs[:, 3, :] = -torch.inf  # word 3 heads nothing
    spans = potentials(TreeCRF, (2,), 4, seed=20)
    spans[:, 0, 1] = -torch.inf  # no span over words 0..1
    for q in (
        DependencyCRF(arcs, multiroot=False),
        NonProjectiveDependencyCRF(arcs, multiroot=True),
        TreeCRF(spans),
    ):
        theta = q.log_potentials.clone().requires_grad_(True)
        q.with_potentials(theta).log_partition().sum().backward()
        assert torch.isfinite(theta.grad).all()
        support = q.enumerate_support()
        log_p = q.log_prob(support)  # -inf for trees with a forbidden part
        p = log_p.exp()
        torch.testing.assert_close(p.sum(0), torch.ones(2, dtype=torch.float64))
        torch.testing.assert_close(
            q.marginals(), (p[(...,) + (None,) * q.event_dim] * support).sum(0)
        )
        torch.testing.assert_close(q.entropy(), -torch.where(p > 0, p * log_p, 0.0).sum(0))
        torch.testing.assert_close(q.score(q.argmax()), q.score(support).max(0).values)
        forbidden = torch.isinf(q.log_potentials)
        assert (q.marginals()[forbidden] == 0).all()
        assert (q.sample(50)[:, forbidden] == 0).all()


def test_always_present_spans_have_marginal_exactly_one() -> None:
    # Words and the whole sentence are in every tree; with one label their
    # marginals are exactly 1, so score-function gradients there are exactly 0.
    q = TreeCRF(potentials(TreeCRF, (2,), 5, seed=21, labels=1), lengths=torch.tensor([5, 3]))
    marginals = q.marginals()
    assert (marginals[0].diagonal(0, 0, 1) == 1).all() and (marginals[0, 0, 4] == 1).all()
    assert (marginals[1, :3, :3].diagonal(0, 0, 1) == 1).all() and (marginals[1, 0, 2] == 1).all()


def test_leading_batch_dims_and_empty_batch() -> None:
    for kind, multiroot in KINDS:
        theta = potentials(kind, (2, 3), 4, seed=22)
        q = build(kind, multiroot, theta, torch.tensor([[4, 3, 1], [2, 4, 4]]))
        assert q.log_partition().shape == (2, 3)
        assert q.sample(5).shape == (5, 2, 3, *q.event_shape)
        flat = build(kind, multiroot, theta.reshape(6, *q.event_shape), q.lengths.reshape(6))
        torch.testing.assert_close(q.marginals().reshape(6, *q.event_shape), flat.marginals())
        single = build(kind, multiroot, theta[0, 0])  # no batch dimension at all
        assert single.log_partition().shape == () and single.argmax().shape == q.event_shape
