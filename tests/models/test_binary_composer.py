"""`BinaryComposer`: the hard-tree path, the chart path and the CKY definition agree, values and gradients."""

from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor

from zoo.data.listops import collate, generate
from zoo.models.listops import BinaryComposer, gold_spans, multiset_features

VOCABULARY_SIZE = 16


def _composer(seed: int = 0) -> BinaryComposer:
    torch.manual_seed(seed)
    return BinaryComposer(VOCABULARY_SIZE, 6, 10)


def _cky(composer: BinaryComposer, x: Tensor, z: Tensor, lengths: Tensor) -> Tensor:
    """The CKY evaluation as it was written before the two fast paths: the whole chart re-concatenated per width."""
    d, n = composer.hidden_dim, x.shape[-1]
    h = composer.leaf(composer.embedding(x))

    def state(h: Tensor, counts: Tensor) -> Tensor:
        return torch.cat([h, counts, composer.value(h).softmax(-1)[..., :10]], -1)

    s = state(h, h.new_zeros(*x.shape, 10))
    literal = composer.literals[x][..., :10]
    is_digit = literal.sum(-1, keepdim=True)
    values = is_digit * literal + (1 - is_digit) * s[..., d + 10 :]
    s = torch.cat([s[..., : d + 10], values], -1)
    starts = ends = s.unsqueeze(2)
    root = [s[:, 0]]
    index = torch.arange(n)
    for w in range(2, n + 1):
        m = n - w + 1
        left, right = starts[:, :m], ends[:, 1:]
        i, a = index[:m, None], index[None, 1:w]
        weight = z[:, i, i + a - 1] * z[:, i + a, i + w - 1]
        weight = weight / (weight.sum(-1, keepdim=True) + 1e-6)
        counts = torch.einsum("bmk,bmkf->bmf", weight, left[..., d : d + 10]) + torch.einsum(
            "bmk,bmkf->bmf", weight, right[..., d + 10 :]
        )
        h_left = torch.einsum("bmk,bmkf->bmf", weight, left[..., :d])
        h_right = torch.einsum("bmk,bmkf->bmf", weight, right[..., :d])
        h = composer.combine(torch.cat([h_left, h_right, multiset_features(counts)], -1))
        span = state(h, counts)
        starts = torch.cat([left, span.unsqueeze(2)], 2)
        ends = torch.cat([span.unsqueeze(2), right], 2)
        root.append(span[:, 0])
    top = torch.stack(root, 1)[torch.arange(x.shape[0]), lengths - 1]
    return composer.value(top[:, :d])[:, :10].log_softmax(-1)


def _span_by_span(composer: BinaryComposer, tokens: list[int], z: Tensor) -> Tensor:
    """The definition, one span at a time: ω_k ∝ z[i, k] z[k+1, j], h = combine(Σ ω h_l, Σ ω h_r, c)."""
    n = len(tokens)
    e = composer.embedding(torch.tensor(tokens))
    h, counts, values = {}, {}, {}
    for i, t in enumerate(tokens):
        h[i, i] = composer.leaf(e[i])
        counts[i, i] = torch.zeros(10)
        literal = composer.literals[t][:10]
        values[i, i] = literal if literal.sum() > 0 else composer.value(h[i, i]).softmax(-1)[:10]
    for w in range(2, n + 1):
        for i in range(n - w + 1):
            j = i + w - 1
            raw = torch.stack([z[i, k] * z[k + 1, j] for k in range(i, j)])
            weight = raw / (raw.sum() + 1e-6)
            mix = [
                sum(weight[k - i] * part[(i, k) if side == 0 else (k + 1, j)] for k in range(i, j))
                for side, part in ((0, h), (1, h), (0, counts), (1, values))
            ]
            counts[i, j] = mix[2] + mix[3]
            h[i, j] = composer.combine(torch.cat([mix[0], mix[1], multiset_features(counts[i, j])]))
            values[i, j] = composer.value(h[i, j]).softmax(-1)[:10]
    return composer.value(h[0, n - 1])[:10].log_softmax(-1)


def _random_tree(i: int, j: int, rng: random.Random, out: set[tuple[int, int]]) -> None:
    out.add((i, j))
    if i < j:
        k = rng.randrange(i, j)
        _random_tree(i, k, rng, out)
        _random_tree(k + 1, j, rng, out)


def _hard_batch(lengths: list[int], n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Random tokens and random binary trees; the lower triangle and the padding hold 0/1 noise."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(1, VOCABULARY_SIZE, (len(lengths), n), generator=gen)
    z = (torch.rand(len(lengths), n, n, generator=gen) < 0.3).float()
    for b, length in enumerate(lengths):
        x[b, length:] = 0
        z[b, :length, :length] = torch.rand(length, length, generator=gen).tril(-1).round()
        spans: set[tuple[int, int]] = set()
        _random_tree(0, length - 1, rng, spans)
        for i, j in spans:
            z[b, i, j] = 1.0
    return x, z, torch.tensor(lengths)


def _grads(composer: BinaryComposer, out: Tensor, *extra: Tensor) -> list[Tensor]:
    loss = (out.exp() * torch.linspace(-1, 1, 10)).sum() + out[:, 3].sum()
    return list(torch.autograd.grad(loss, [*extra, *composer.parameters()], retain_graph=True))


def _assert_all_close(actual: list[Tensor], expected: list[Tensor], tol: float = 1e-5) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


# ------------------------------------------------------------------ hard trees
def test_hard_trees_take_the_tree_path_and_match_the_chart() -> None:
    composer = _composer()
    x, z, lengths = _hard_batch([1, 2, 7, 12, 12, 5, 9], 12, seed=1)
    assert composer._tree_plan(z, lengths) is not None
    tree = composer(x, z, lengths)  # the tree path: z carries no gradient
    chart = composer._compose(x, z, lengths)
    torch.testing.assert_close(tree, chart, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tree, _cky(composer, x, z, lengths), rtol=1e-5, atol=1e-5)
    _assert_all_close(_grads(composer, tree), _grads(composer, chart))


def test_hard_trees_of_deep_expressions_match_the_chart() -> None:
    # Left-branching gold trees, about as high as they are long: one level per token.
    composer = _composer(1)
    batch = collate(generate(4, seed=5, min_length=20, max_length=30))
    x, z, lengths = batch["x"], gold_spans(batch), batch["lengths"]
    plan = composer._tree_plan(z, lengths)
    assert plan is not None and plan["top"] > 10
    tree = composer(x, z, lengths)
    chart = composer._compose(x, z, lengths)
    torch.testing.assert_close(tree, chart, rtol=1e-5, atol=1e-5)
    _assert_all_close(_grads(composer, tree), _grads(composer, chart))


@pytest.mark.parametrize(
    "spoil",
    ["half", "missing_leaf", "extra_span", "no_root", "crossing"],
)
def test_what_is_not_a_hard_tree_goes_to_the_chart(spoil: str) -> None:
    composer = _composer()
    x, z, lengths = _hard_batch([6, 6, 4], 6, seed=2)
    if spoil == "half":
        z[1, 0, 2] = 0.5
    elif spoil == "missing_leaf":
        z[0, 3, 3] = 0.0
    elif spoil == "extra_span":
        z[2, :4, :4] = torch.ones(4, 4).triu()
    elif spoil == "no_root":
        z[1, 0, 5] = 0.0
    else:  # the right count, but (0, 1), (1, 2) cross
        z[0] = 0.0
        for i, j in [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (0, 1), (1, 2)]:
            z[0, i, j] = 1.0
        z[0, 0, 5] = z[0, 3, 5] = z[0, 4, 5] = 1.0
    assert composer._tree_plan(z, lengths) is None
    torch.testing.assert_close(composer(x, z, lengths), _cky(composer, x, z, lengths))


def test_straight_through_trees_take_the_chart_with_the_old_gradient() -> None:
    composer = _composer(2)
    x, hard, lengths = _hard_batch([8, 3, 8, 6], 8, seed=3)
    soft = torch.rand(hard.shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    z = hard + soft - soft.detach()  # a hard value with the gradient of the soft one
    out = composer(x, z, lengths)
    torch.testing.assert_close(out, composer(x, hard, lengths), rtol=1e-5, atol=1e-5)
    expected = _cky(composer, x, z, lengths)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    _assert_all_close(_grads(composer, out, soft), _grads(composer, expected, soft))


# --------------------------------------------------------------- relaxed trees
def test_the_chart_is_the_definition_on_relaxed_trees() -> None:
    composer = _composer(3)
    gen = torch.Generator().manual_seed(4)
    lengths = torch.tensor([5, 2, 4])
    x = torch.randint(1, VOCABULARY_SIZE, (3, 5), generator=gen)
    x[0, 0], x[2, 1] = 5, 7  # digits: their values are literal
    z = torch.rand(3, 5, 5, generator=gen).requires_grad_()
    out = composer(x, z, lengths)
    for b, length in enumerate(lengths.tolist()):
        tokens = x[b, :length].tolist()
        expected = _span_by_span(composer, tokens, z[b, :length, :length])
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-5)
        _assert_all_close(_grads(composer, out[b : b + 1], z), _grads(composer, expected[None], z))


def test_the_chart_matches_the_old_cky_with_padding_and_chunks() -> None:
    composer = _composer(4)
    gen = torch.Generator().manual_seed(5)
    lengths = torch.tensor([9, 1, 4, 9, 7])
    x = torch.randint(0, VOCABULARY_SIZE, (5, 9), generator=gen)
    z = torch.rand(5, 9, 9, generator=gen).pow(3).requires_grad_()
    out = composer(x, z, lengths)
    expected = _cky(composer, x, z, lengths)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    _assert_all_close(_grads(composer, out, z), _grads(composer, expected, z))
    with torch.no_grad():
        composer.max_cells = 2 * 81  # evaluation in chunks of two examples
        torch.testing.assert_close(composer(x, z, lengths), out, rtol=1e-5, atol=1e-5)


def test_a_retained_graph_gives_the_same_gradient_twice() -> None:
    composer = _composer(5)
    x, _, lengths = _hard_batch([6, 4], 6, seed=6)
    z = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(7)).requires_grad_()
    out = composer(x, z, lengths)
    first = _grads(composer, out, z)
    _assert_all_close(_grads(composer, out, z), first, tol=0.0)
    _assert_all_close(
        _grads(composer, out[1:], z), _grads(composer, _cky(composer, x, z, lengths)[1:], z)
    )


def test_straight_through_trees_of_long_expressions_read_only_the_weighted_splits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    composer = _composer(6)
    x, hard, lengths = _hard_batch([24, 17, 24], 24, seed=8)
    soft = torch.rand(hard.shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    z = hard + soft - soft.detach()
    mix, sparse = BinaryComposer._Mix, []

    class Recording:
        @staticmethod
        def apply(*args):
            sparse.append(args[-1] is not None)
            return mix.apply(*args)

    monkeypatch.setattr(composer, "_Mix", Recording)
    out = composer(x, z, lengths)
    assert sum(sparse) > len(sparse) // 2  # most widths: one weighted split per span at most
    expected = _cky(composer, x, z, lengths)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    _assert_all_close(_grads(composer, out, soft), _grads(composer, expected, soft))


@pytest.mark.parametrize("kind", ["tokens only", "random ones", "tree times noise"])
def test_sparse_z_that_carries_a_gradient_is_the_definition(kind: str) -> None:
    # Only "tree times noise" lets spans without a weighted split share one state: elsewhere
    # such a span (the root of "tokens only") has a gradient, amplified by the 1e-6.
    composer = _composer(7)
    x, hard, lengths = _hard_batch([12, 9, 12], 12, seed=9)
    gen = torch.Generator().manual_seed(2)
    if kind == "tokens only":
        z = torch.eye(12).expand(3, 12, 12).clone()
    elif kind == "random ones":
        z = (torch.rand(3, 12, 12, generator=gen) < 0.3).float()
    else:
        z = hard * torch.rand(3, 12, 12, generator=gen)
    z.requires_grad_()
    out = composer(x, z, lengths)
    expected = _cky(composer, x, z, lengths)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for a, e in zip(_grads(composer, out, z), _grads(composer, expected, z), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * max(1.0, float(e.abs().max())))
