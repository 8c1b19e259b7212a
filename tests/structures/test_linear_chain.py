"""LinearChainCRF beyond the shared contract: torch-struct agreement, padding, numerics, Gumbel-CRF.

Statistical tests use fixed seeds and a chi-square test at α = 1e-3 per batch
element (`zoo.testing.sample_test`): with a correct sampler a seed fails with
probability ≤ 1e-3 per element, and since seeds are fixed the outcome is
reproducible.
"""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch_struct

from zoo.structures import LinearChainCRF
from zoo.testing import brute_force, sample_test

ALPHA = 1e-3
INF = math.inf


def _theta(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _reference(theta: torch.Tensor, lengths: torch.Tensor | None) -> torch_struct.LinearChainCRF:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-struct's own missing-arg_constraints warning
        return torch_struct.LinearChainCRF(theta, lengths=lengths)


def _forbidden(shape: tuple[int, ...], seed: int = 3) -> torch.Tensor:
    """A random set of forbidden transitions that always leaves self-loops allowed."""
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.4
    size = shape[-1]
    return mask & ~torch.eye(size, dtype=torch.bool)


# ----------------------------------------------------------------- torch-struct
@pytest.mark.parametrize("lengths", [None, [12, 7, 2]], ids=["full", "lengths"])
def test_agrees_with_torch_struct(lengths: list[int] | None) -> None:
    theta = _theta(3, 11, 5, 5)
    lengths = None if lengths is None else torch.tensor(lengths)
    q, ref = LinearChainCRF(theta, lengths=lengths), _reference(theta, lengths)
    torch.testing.assert_close(q.log_partition(), ref.partition, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(q.marginals(), ref.marginals, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(q.argmax(), ref.argmax.to(theta.dtype))
    torch.testing.assert_close(q.entropy(), ref.entropy, atol=1e-9, rtol=1e-9)
    z = q.sample(4)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z), atol=1e-9, rtol=1e-9)


def test_event_format_is_torch_struct_to_parts() -> None:
    sequences = torch.tensor([[0, 2, 1, 1, 2], [1, 0, 0, 2, 2]])
    lengths = torch.tensor([5, 3])
    z = torch_struct.LinearChainCRF.struct.to_parts(sequences, 3, lengths=lengths).double()
    q = LinearChainCRF(_theta(2, 4, 3, 3), lengths=lengths)
    support = q[1:].enumerate_support()  # length 3: 27 sequences
    assert (support == z[1]).flatten(1).all(1).sum() == 1
    # log q(z) sums the potentials of exactly the transitions the sequence uses.
    theta = q.log_potentials
    score = theta[0, 0, 2, 0] + theta[0, 1, 1, 2] + theta[0, 2, 1, 1] + theta[0, 3, 2, 1]
    torch.testing.assert_close(q.score(z)[0], score)


def test_double_backward_of_log_partition() -> None:
    theta = _theta(2, 4, 3, 3).requires_grad_(True)
    lengths = torch.tensor([5, 3])
    f = lambda t: LinearChainCRF(t, lengths=lengths).log_partition()  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (theta,))


# --------------------------------------------------------------------- lengths
def test_lengths_never_leak() -> None:
    theta = _theta(3, 11, 5, 5)
    lengths = torch.tensor([12, 6, 1])
    pad = torch.arange(11) >= (lengths - 1).unsqueeze(-1)  # (B, N-1)
    # Whatever stands in the padding, including -inf and huge values, changes nothing.
    junk = torch.where(pad[..., None, None], 1e30 * _theta(3, 11, 5, 5, seed=1), theta)
    junk[2, 0, 0] = -INF
    leaf = junk.clone().requires_grad_(True)
    q = LinearChainCRF(leaf, lengths=lengths)
    log_z = q.log_partition()
    log_z.sum().backward()
    assert (leaf.grad[pad] == 0).all()
    assert (q.marginals()[pad] == 0).all()
    assert (q.argmax()[pad] == 0).all()
    assert (q.sample(20)[:, pad] == 0).all()
    hard, soft = q.rsample_with_hard(5, 0.5)
    assert (hard[:, pad] == 0).all() and (soft[:, pad] == 0).all()
    (soft * _theta(*soft.shape, seed=2)).sum().backward()
    assert (leaf.grad[pad] == 0).all() and torch.isfinite(leaf.grad).all()
    for b, length in enumerate(lengths.tolist()):
        if length > 1:  # the truncated problem, built without lengths
            alone = LinearChainCRF(theta[b, : length - 1])
            torch.testing.assert_close(log_z[b], alone.log_partition())
            torch.testing.assert_close(q.entropy()[b], alone.entropy())
            torch.testing.assert_close(q.marginals()[b, : length - 1], alone.marginals())


def test_length_one_is_a_point_mass_on_zero() -> None:
    theta = _theta(2, 3, 4, 4).requires_grad_(True)
    q = LinearChainCRF(theta, lengths=torch.tensor([1, 4]))
    zero = torch.zeros(3, 4, 4, dtype=theta.dtype)
    assert q.log_partition()[0] == 0 and q.entropy()[0] == 0
    assert (q.marginals()[0] == 0).all() and (q.argmax()[0] == 0).all()
    assert (q.sample(3)[:, 0] == 0).all()
    assert q.log_prob(zero.expand(2, 3, 4, 4))[0] == 0
    support = q[:1].enumerate_support()
    assert support.shape == (1, 1, 3, 4, 4) and (support == 0).all()
    q.log_partition()[0].backward()
    assert (theta.grad == 0).all()


def test_no_transitions_at_all() -> None:
    theta = torch.zeros(2, 0, 3, 3, requires_grad=True)
    q = LinearChainCRF(theta)
    assert q.max_length == 1
    assert (q.log_partition() == 0).all() and (q.entropy() == 0).all()
    assert q.marginals().shape == q.argmax().shape == (2, 0, 3, 3)
    assert q.sample(5).shape == (5, 2, 0, 3, 3)
    assert q.enumerate_support().shape == (1, 2, 0, 3, 3)


# ------------------------------------------------------------------ grad modes
OPS = {
    "log_partition": lambda q: q.log_partition(),
    "marginals": lambda q: q.marginals(),
    "argmax": lambda q: q.argmax(),
    "sample": lambda q: q.sample(3),
    "entropy": lambda q: q.entropy(),
    "log_prob": lambda q: q.log_prob(q.argmax()),
    "rsample_with_hard": lambda q: torch.cat(q.rsample_with_hard(3, 0.7)),
    "rsample": lambda q: q.with_potentials(q.log_potentials).rsample(2, 0.7),
    "gumbel_crf": lambda q: torch.cat(q.gumbel_crf(2, 0.7)),
}


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
@pytest.mark.parametrize("op", list(OPS))
def test_every_grad_mode_on_leaf_tensors(op: str, mode: str) -> None:
    lengths = torch.tensor([5, 3, 1])
    torch.manual_seed(7)
    want = OPS[op](LinearChainCRF(_theta(3, 4, 3, 3), lengths)).detach()
    context = {
        "grad": torch.enable_grad(),
        "no_grad": torch.no_grad(),
        "inference_mode": torch.inference_mode(),
    }[mode]
    torch.manual_seed(7)
    with context:
        leaf = _theta(3, 4, 3, 3).requires_grad_(mode != "inference_mode")
        got = OPS[op](LinearChainCRF(leaf, lengths))
    assert got.requires_grad == (mode == "grad" and op not in ("argmax", "sample"))
    torch.testing.assert_close(got.detach().clone(), want)


# -------------------------------------------------------------------- numerics
def test_large_magnitude_stays_finite_and_exact() -> None:
    theta = 1e6 * _theta(3, 11, 5, 5, dtype=torch.float32)
    lengths = torch.tensor([12, 5, 2])
    leaf = theta.clone().requires_grad_(True)
    q = LinearChainCRF(leaf, lengths=lengths)
    log_z = q.log_partition()
    log_z.sum().backward()
    assert torch.isfinite(log_z).all() and torch.isfinite(leaf.grad).all()
    mu, best = q.marginals(), q.argmax()
    # At this scale q is a point mass on the MAP path: marginals = argmax, entropy = 0.
    torch.testing.assert_close(mu, best)
    torch.testing.assert_close(q.entropy(), torch.zeros(3), atol=1e-4, rtol=0)
    for z in (best, q.sample(10), q.rsample_with_hard(10, 0.5)[0]):
        lp = q.log_prob(z)
        assert torch.isfinite(lp).all() and (lp <= 0).all(), lp
    soft = q.rsample_with_hard(4, 0.5)[1]
    assert torch.isfinite(soft).all()


def test_entropy_survives_large_potentials_with_ties() -> None:
    # Integer multiples of 1e4 tie many paths: H is O(1) while A(θ) and ⟨θ, μ⟩
    # are O(1e5), beyond float32's resolution for their difference.
    pattern = torch.randint(-1, 2, (3, 11, 5, 5), generator=torch.Generator().manual_seed(0))
    want = LinearChainCRF(1e4 * pattern.double()).entropy()
    got = LinearChainCRF(1e4 * pattern.float()).entropy()
    torch.testing.assert_close(got.double(), want, atol=0.05, rtol=0)


def test_forbidden_transitions() -> None:
    theta = _theta(2, 3, 3, 3)
    forbidden = _forbidden(theta.shape)
    forbidden[:, :, 1, :] = True  # label 1 can never be entered after position 0 ...
    forbidden[:, 2, 1, 1] = False  # ... except by a self-loop at the last step (unreachable)
    theta = theta.masked_fill(forbidden, -INF)
    q = LinearChainCRF(theta.clone().requires_grad_(True), lengths=torch.tensor([4, 3]))
    exact = brute_force(q)
    torch.testing.assert_close(q.log_partition(), exact.log_partition)
    torch.testing.assert_close(q.marginals(), exact.marginals)
    support, valid = q.enumerate_padded_support()
    p = q.log_prob(support).exp()  # brute_force's entropy is 0 · (-inf) = NaN here
    entropy = -torch.where(valid & (p > 0), p * p.log(), 0.0).sum(0)
    torch.testing.assert_close(q.entropy(), entropy)
    q.log_partition().sum().backward()
    grad = q.log_potentials.grad
    assert torch.isfinite(grad).all() and (grad[forbidden] == 0).all()
    assert (q.argmax()[forbidden] == 0).all() and (q.sample(200)[:, forbidden] == 0).all()
    hard, soft = q.rsample_with_hard(50, 0.5)
    assert (hard[:, forbidden] == 0).all() and (soft[:, forbidden] == 0).all()
    q.log_potentials.grad = None
    (soft * _theta(*soft.shape, seed=5)).sum().backward()
    assert torch.isfinite(q.log_potentials.grad).all()
    q.log_potentials.grad = None
    q.entropy().sum().backward()
    assert torch.isfinite(q.log_potentials.grad).all()


# ---------------------------------------------------------------------- errors
def test_invalid_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match=r"square.*\(3, 4, 5\)"):
        LinearChainCRF(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"at least 3 dimensions"):
        LinearChainCRF(torch.zeros(4, 4))
    theta = torch.zeros(2, 3, 4, 4)
    theta[1, 2, 0, 3] = math.nan
    with pytest.raises(ValueError, match=r"NaN.*\(1, 2, 0, 3\)"):
        LinearChainCRF(theta)
    for bad in ([0, 2], [5, 2]):
        with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\], got values from"):
            LinearChainCRF(torch.zeros(2, 3, 4, 4), lengths=torch.tensor(bad))
    with pytest.raises(TypeError, match="relaxation"):
        LinearChainCRF(torch.zeros(2, 3, 4, 4), relaxation="ffbs")  # the estimator's choice now
    with pytest.raises(ValueError, match="equal lengths"):
        LinearChainCRF(torch.zeros(2, 3, 4, 4), lengths=torch.tensor([4, 2])).enumerate_support()


def test_construction_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = LinearChainCRF(_theta(2, 3, 4, 4), lengths=torch.tensor([4, 2]))
        q.with_potentials(q.log_potentials + 1).expand((3, 2)).log_partition()


# -------------------------------------------------------------------- sampling
@pytest.mark.parametrize("forbidden", [False, True], ids=["dense", "forbidden-lengths"])
def test_ffbs_sample_frequencies(forbidden: bool) -> None:
    theta = _theta(2, 3, 3, 3, seed=11)
    if forbidden:
        theta = theta.masked_fill(_forbidden((2, 3, 3, 3)), -INF)
    q = LinearChainCRF(theta, lengths=torch.tensor([4, 3]) if forbidden else None)
    torch.manual_seed(0)
    p_values = sample_test(q, q.sample(20000))
    assert (p_values > ALPHA).all(), p_values


def test_gumbel_crf_hard_path_is_an_exact_sample() -> None:
    theta = _theta(2, 3, 3, 3, seed=12).masked_fill(_forbidden((2, 3, 3, 3), seed=4), -INF)
    q = LinearChainCRF(theta, lengths=torch.tensor([3, 4]))
    torch.manual_seed(0)
    hard, _ = q.gumbel_crf(20000, 0.5)
    p_values = sample_test(q, hard)
    assert (p_values > ALPHA).all(), p_values


def test_gumbel_crf_soft_path_is_a_relaxed_chain() -> None:
    lengths = torch.tensor([6, 4])
    theta = _theta(2, 5, 4, 4, seed=13)
    q = LinearChainCRF(theta, lengths=lengths)
    real = torch.arange(5) < (lengths - 1).unsqueeze(-1)  # (B, N-1) real transitions
    torch.manual_seed(2)
    hard, soft = q.gumbel_crf(100, 1.0)
    assert (soft >= 0).all()
    torch.testing.assert_close(soft.sum((-2, -1)), real.double().expand(100, 2, 5))
    # Mass entering position n+1 (sum over its predecessor) = mass leaving it.
    into = soft[..., :-1, :, :].sum(-1)  # (S, B, N-2, C): label of position n+1
    out = soft[..., 1:, :, :].sum(-2)
    both = real[:, 1:].unsqueeze(-1).expand(2, 4, 4)
    torch.testing.assert_close(into[:, both], out[:, both])
    # The soft path tends to the hard one as τ → 0.
    gap = {}
    for tau in (1.0, 0.1, 1e-4):
        torch.manual_seed(3)
        hard, soft = q.gumbel_crf(100, tau)
        gap[tau] = (soft - hard).abs().mean().item()  # the max is set by rare near-ties
    assert gap[1e-4] < 1e-4 < gap[0.1] < gap[1.0], gap


def test_gumbel_crf_soft_path_gradient() -> None:
    theta = _theta(2, 3, 3, 3, seed=14).requires_grad_(True)
    lengths = torch.tensor([4, 2])
    weights = _theta(3, 2, 3, 3, 3, seed=15)

    def soft(t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(4)  # the same noise, so the same hard path, on every call
        z = LinearChainCRF(t, lengths=lengths).gumbel_crf(3, 0.7)[1]
        return (z * weights).sum((-3, -2, -1))  # (S, B): a few outputs keep gradcheck fast

    assert torch.autograd.gradcheck(soft, (theta,))


def test_relaxed_samples_are_the_base_class_pair_and_gumbel_crf_is_separate() -> None:
    # The chain offers perturbed potentials and their marginals (the base class's
    # rsample and rsample_with_hard) and the Gumbel-CRF pair as a separate method;
    # which one a gradient goes through is the estimator's choice.
    q = LinearChainCRF(_theta(2, 3, 3, 3), lengths=torch.tensor([4, 3]))
    torch.manual_seed(5)
    got = q.rsample(4, 0.5)
    torch.manual_seed(5)
    perturbed = q.log_potentials + q.perturb_noise(4)
    torch.testing.assert_close(got, q.with_potentials(perturbed / 0.5).marginals())
    torch.manual_seed(5)
    hard, soft = q.rsample_with_hard(4, 0.5)
    torch.testing.assert_close(hard, q.with_potentials(perturbed).argmax())
    torch.testing.assert_close(soft, got)
    torch.manual_seed(5)
    crf_hard, crf_soft = q.gumbel_crf(4, 0.5)
    assert crf_hard.shape == crf_soft.shape == hard.shape == (4, 2, 3, 3, 3)
    assert not torch.allclose(crf_soft, soft)


def test_perturb_and_map_hard_sample_is_not_exact_but_ffbs_is() -> None:
    # Gumbel noise on every transition makes argmax(θ + G) a biased sample of a
    # chain (unlike one-hot structures); the Gumbel-CRF's hard path is exact.
    q = LinearChainCRF(_theta(1, 3, 3, 3, seed=12))
    torch.manual_seed(0)
    biased = sample_test(q, q.rsample_with_hard(20000, 0.5)[0])
    exact = sample_test(q, q.gumbel_crf(20000, 0.5)[0])
    assert (biased < 1e-6).all(), biased
    assert (exact > ALPHA).all(), exact


def test_kl_between_equal_chains_is_zero() -> None:
    # A sampling policy stored on the distribution used to make this raise.
    theta = _theta(2, 3, 3, 3)
    p = LinearChainCRF(theta, lengths=torch.tensor([4, 2]))
    q = LinearChainCRF(theta.clone(), lengths=torch.tensor([4, 2]))
    kl = torch.distributions.kl_divergence(p, q)
    torch.testing.assert_close(kl, torch.zeros(2, dtype=kl.dtype), atol=1e-12, rtol=0)


# ----------------------------------------------------------------- from_scores
def _score(y: list[int], unary: torch.Tensor, transition: torch.Tensor, start: torch.Tensor):
    """s(y) = start[y_0] + Σ unary[n, y_n] + Σ transition[n, y_{n+1}, y_n], by hand."""
    total = start[y[0]] + sum(unary[n, c] for n, c in enumerate(y))
    return total + sum(transition[n, y[n + 1], y[n]] for n in range(len(y) - 1))


@pytest.mark.parametrize("per_step", [False, True], ids=["shared", "per-step"])
def test_from_scores_is_the_sum_of_its_scores(per_step: bool) -> None:
    unary, start = _theta(3, 4, 3, seed=20), _theta(3, 3, seed=21)
    transition = _theta(3, 3, 3, 3, seed=22) if per_step else _theta(3, 3, seed=22)
    lengths = torch.tensor([4, 2, 1])
    q = LinearChainCRF.from_scores(unary, transition, start, lengths)
    assert q.event_shape == (4, 3, 3) and q.lengths.tolist() == [5, 3, 2]
    support, valid = q.enumerate_padded_support()
    log_p = q.log_prob(support)
    for b, length in enumerate(lengths.tolist()):
        step = transition[b] if per_step else transition.expand(3, 3, 3)
        scores = {}
        for y in itertools.product(range(3), repeat=length):
            scores[y] = _score(list(y), unary[b], step, start[b])
        log_z = torch.logsumexp(torch.stack(list(scores.values())), 0)
        torch.testing.assert_close(q.log_partition()[b], log_z)
        # Every z with mass is one label sequence, read off as z.sum(-2).
        seen = 0
        for z, lp, ok in zip(support[:, b], log_p[:, b], valid[:, b], strict=True):
            if ok and lp > -INF:
                labels = z.sum(-2)[:length].argmax(-1).tolist()
                torch.testing.assert_close(lp, scores[tuple(labels)] - log_z)
                assert (z.sum(-2)[length:] == 0).all()
                seen += 1
        assert seen == 3**length  # a one-label chain keeps its three outcomes


def test_from_scores_matches_the_fold_into_the_first_transition() -> None:
    # torch-struct's hmm layout (the first unary folded into θ[0], N-1 transitions)
    # gives the same distribution wherever it can hold the chain (N ≥ 2).
    unary, transition, start = _theta(2, 5, 4, seed=23), _theta(4, 4, seed=24), _theta(4, seed=25)
    fold = transition + unary[:, 1:, :, None]
    fold[:, 0] += (start + unary[:, 0])[:, None, :]
    q, ref = LinearChainCRF.from_scores(unary, transition, start), LinearChainCRF(fold)
    torch.testing.assert_close(q.log_partition(), ref.log_partition())
    torch.testing.assert_close(q.marginals().sum(-2)[:, 1:], ref.marginals().sum(-1))
    torch.testing.assert_close(q.argmax().sum(-2)[:, 1:], ref.argmax().sum(-1))


def test_from_scores_rejects_mismatched_arguments() -> None:
    unary = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"lengths of shape \(1,\) \(batch size 1\).*\(2,\)"):
        LinearChainCRF.from_scores(unary, torch.zeros(4, 4), lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\].*from 0 to 3"):
        LinearChainCRF.from_scores(unary, torch.zeros(4, 4), lengths=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"transition must have shape.*got \(3, 3\)"):
        LinearChainCRF.from_scores(unary, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"start must have shape.*got \(3,\)"):
        LinearChainCRF.from_scores(unary, torch.zeros(4, 4), torch.zeros(3))


def test_lengths_never_broadcast_over_the_batch() -> None:
    with pytest.raises(ValueError, match=r"lengths of shape \(1,\).*batch shape \(2,\)"):
        LinearChainCRF(torch.zeros(2, 3, 4, 4), lengths=torch.tensor([4]))
