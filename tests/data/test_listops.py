"""ListOps data: the evaluator on the real file, the generator against it, the reader, gold trees, the datamodule."""

from __future__ import annotations

import collections
import gzip
import statistics
from pathlib import Path

import pytest
import torch

from tests.conftest import shared_data_candidates
from zoo.data import DataError
from zoo.data.listops import (
    VOCABULARY,
    ListOpsDataModule,
    binary_spans,
    collate,
    dependency_heads,
    evaluate,
    generate,
    parse_line,
    read_tsv,
    to_expression,
    tokenize,
)
from zoo.models.listops import gold_arcs, gold_spans
from zoo.structures import DependencyCRF, NonProjectiveDependencyCRF, TreeCRF

DEV = "listops/dev_d20s.tsv.gz"


@pytest.fixture(scope="module")
def dev_file() -> Path:
    for root in shared_data_candidates():
        if (root / DEV).is_file():
            return root / DEV
    pytest.skip(f"{DEV} not found under any data root")


@pytest.fixture(scope="module")
def dev_lines(dev_file) -> list[tuple[int, str]]:
    with gzip.open(dev_file, "rt") as handle:
        return [
            (int(label), expr) for label, expr in (ln.rstrip("\n").split("\t") for ln in handle)
        ]


@pytest.fixture(scope="module")
def dev_examples(dev_file):
    return read_tsv(dev_file)


# ---------------------------------------------------------------- the evaluator
def test_the_evaluator_gives_every_label_of_the_real_file(dev_lines) -> None:
    assert len(dev_lines) == 5000
    wrong = [(i, label) for i, (label, expr) in enumerate(dev_lines) if evaluate(expr) != label]
    assert wrong == []
    # without the parentheses too
    assert all(evaluate(" ".join(tokenize(e))) == label for label, e in dev_lines[:500])


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("7", 7),
        ("[MIN 3 9 1 ]", 1),
        ("[MAX 3 9 1 ]", 9),
        ("[MED 3 9 1 ]", 3),
        ("[MED 3 8 ]", 5),  # int(np.median([3, 8])) = int(5.5)
        ("[MED 1 2 3 4 ]", 2),  # 2.5 rounded down
        ("[SM 9 8 7 ]", 4),  # 24 mod 10
        ("[MAX 1 [MED 9 2 5 ] [SM 6 5 ] ]", 5),
    ],
)
def test_the_evaluator_on_hand_computed_cases(expression: str, value: int) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("[MIN 3 4", "unclosed"),
        ("[MIN 3 4 ] ]", "after its end"),
        ("[MIN ]", "without arguments"),
        ("3 4", "after its end"),
        ("[FOO 3 ]", "unknown ListOps symbol '\\[FOO'"),
        ("", "empty"),
    ],
)
def test_the_evaluator_refuses_malformed_expressions(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(expression)


# ------------------------------------------------------------------- the trees
def test_the_released_parentheses_are_the_canonical_tree(dev_lines, dev_examples) -> None:
    """Writing the tokens with the left-branching tree reproduces every expression of the file."""
    assert [to_expression(e.tokens) for e in dev_examples] == [expr for _, expr in dev_lines]
    for (_, expr), e in zip(dev_lines[:300], dev_examples[:300], strict=True):
        assert binary_spans(" ".join(e.tokens)) == binary_spans(expr) == e.spans


def test_gold_trees_of_a_hand_example() -> None:
    tokens = tokenize("[MAX 1 [MIN 9 2 ] ]")
    assert dependency_heads(tokens) == (-1, 0, 0, 2, 2, 2, 0)
    # ( ( ( [MAX 1 ) ( ( ( [MIN 9 ) 2 ) ] ) ) ] )
    assert binary_spans("[MAX 1 [MIN 9 2 ] ]") == tuple(
        sorted([(i, i) for i in range(7)] + [(0, 1), (0, 5), (0, 6), (2, 3), (2, 4), (2, 5)])
    )


def _short(examples, limit: int = 30, count: int = 32):
    return [e for e in examples if 2 <= len(e.tokens) <= limit][:count]


@pytest.mark.parametrize("kind", [DependencyCRF, NonProjectiveDependencyCRF])
def test_gold_dependency_trees_are_trees_of_the_structure(dev_examples, kind) -> None:
    batch = collate(_short(dev_examples))
    gold = gold_arcs(batch).double()
    lengths = batch["lengths"]
    q = kind(torch.randn(gold.shape, dtype=torch.float64), lengths=lengths, multiroot=False)
    assert torch.isfinite(q.log_prob(gold)).all()
    # a point mass on the gold tree: its argmax is the gold tree
    point = kind(gold.masked_fill(gold == 0, float("-inf")), lengths=lengths, multiroot=False)
    assert torch.equal(point.argmax(), gold)
    assert torch.equal(gold.sum((-2, -1)), lengths.double())  # one head per token
    assert torch.equal(
        gold.diagonal(0, -2, -1).sum(-1), torch.ones(len(lengths), dtype=torch.float64)
    )


def test_gold_binary_trees_are_trees_of_the_structure(dev_examples) -> None:
    batch = collate(_short(dev_examples))
    gold = gold_spans(batch).double().unsqueeze(-1)
    lengths = batch["lengths"]
    q = TreeCRF(torch.randn(gold.shape, dtype=torch.float64), lengths=lengths)
    assert torch.isfinite(q.log_prob(gold)).all()
    point = TreeCRF(gold.masked_fill(gold == 0, float("-inf")), lengths=lengths)
    assert torch.equal(point.argmax(), gold)
    assert torch.equal(gold.sum((-3, -2, -1)), 2 * lengths.double() - 1)


# --------------------------------------------------------------- the generator
def _stats(examples):
    labels = collections.Counter(e.label for e in examples)
    depths = collections.Counter(e.depth for e in examples)
    lengths = [len(e.tokens) for e in examples]
    return (
        [labels[k] / len(examples) for k in range(10)],
        depths,
        statistics.mean(lengths),
        statistics.median(lengths),
    )


def test_the_generator_matches_the_real_file(dev_examples) -> None:
    """Label shares within 2 points, depth shares within 7 points, the depth-19 pile-up, lengths."""
    generated = generate(20_000, seed=1)
    real_labels, real_depths, real_mean, real_median = _stats(dev_examples)
    labels, depths, mean, median = _stats(generated)
    assert max(abs(a - b) for a, b in zip(labels, real_labels, strict=True)) < 0.02
    for d in range(20):
        assert abs(depths[d] / 20_000 - real_depths[d] / 5000) < 0.07, d
    # digits only at depth 20: operators nest 19 deep at most, and the truncated tail piles up there
    assert max(depths) == max(real_depths) == 19
    assert abs(depths[19] / 20_000 - real_depths[19] / 5000) < 0.01
    assert 0.8 < mean / real_mean < 1.2 and abs(median - real_median) <= 3


def test_the_generator_is_seeded_unique_and_respects_its_limits() -> None:
    a, b = generate(300, seed=3), generate(300, seed=3)
    assert [e.tokens for e in a] == [e.tokens for e in b]
    assert [e.tokens for e in generate(300, seed=4)] != [e.tokens for e in a]
    assert len({e.tokens for e in a}) == 300
    short = generate(200, seed=0, min_length=4, max_length=12, max_depth=3)
    assert all(4 <= len(e.tokens) <= 12 and e.depth <= 2 for e in short)
    assert all(e.label == evaluate(e.expression) for e in short)
    excluded = generate(50, seed=5, max_length=5, exclude=[e.tokens for e in short])
    assert not {e.tokens for e in excluded} & {e.tokens for e in short}
    # only ten digits exist; the message says what to change
    with pytest.raises(DataError, match=r"only 10 of 20 admissible.*max_length=1.*allow longer"):
        generate(20, seed=0, max_length=1)
    with pytest.raises(ValueError, match="operator_prob"):
        generate(5, operator_prob=1.0)


# ------------------------------------------------------------------ the reader
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("3 [MIN 3 4 ]", "tab-separated"),
        ("x\t( ( [MIN 3 ) ] )", "label must be a digit"),
        ("4\t( ( [MIN 3 ) ] )", "evaluates to 3"),
        ("3\t( ( [MIN 3 ) ]", "unclosed '\\('"),
        ("3\t( [MIN 3 ] )", "hold 3 constituents"),
        ("3\t( ( [MIN 3 ) ] ) )", "unmatched"),
        ("3\t( ( [MIN 3 ) ] ] )", "hold 3 constituents"),
        ("3\t[MIN 3 ] ]", "after its end"),
    ],
)
def test_the_reader_names_the_bad_line(tmp_path, line: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(f"1\t( ( ( [SM 6 ) 5 ) ] )\n\n{line}\n")
    with pytest.raises(DataError, match=f"bad.tsv:3: .*{message}"):
        read_tsv(path)


def test_the_reader_reads_plain_and_gzipped_files(tmp_path) -> None:
    text = "1\t( ( ( [SM 6 ) 5 ) ] )\n1\t( ( [MIN 1 ) ] )\n"
    (tmp_path / "a.tsv").write_text(text)
    with gzip.open(tmp_path / "a.tsv.gz", "wt") as handle:
        handle.write(text)
    for name in ("a.tsv", "a.tsv.gz"):
        examples = read_tsv(tmp_path / name)
        assert [e.label for e in examples] == [1, 1]
        assert [e.tokens for e in examples] == [("[SM", "6", "5", "]"), ("[MIN", "1", "]")]
    assert parse_line("1\t( ( ( [SM 6 ) 5 ) ] )").label == 1
    with pytest.raises(FileNotFoundError, match="no ListOps file"):
        read_tsv(tmp_path / "missing.tsv")


# -------------------------------------------------------------- the datamodule
def test_the_datamodule_batches(tmp_path) -> None:
    test = tmp_path / "test.tsv"
    test.write_text("1\t( ( ( [SM 6 ) 5 ) ] )\n7\t7\n")
    dm = ListOpsDataModule(
        num_train=40, num_val=10, test_file=str(test), max_length=20, batch_size=8
    )
    assert dm.input_dim == len(VOCABULARY) == 16
    dm.setup("fit")
    assert len(dm.train_set) == 40 and len(dm.val_set) == 10
    assert not {e.tokens for e in dm.train_set.examples} & {e.tokens for e in dm.val_set.examples}
    assert ("[SM", "6", "5", "]") not in {e.tokens for e in dm.train_set.examples}  # test excluded
    batch = next(iter(dm.train_dataloader()))
    n = int(batch["lengths"].max())
    assert batch["x"].shape == (8, n) and batch["spans"].shape == (8, n, n)
    assert torch.equal((batch["x"] > 0).sum(-1), batch["lengths"])
    val = list(dm.val_dataloader())
    lengths = torch.cat([b["lengths"] for b in val])
    assert torch.equal(lengths, lengths.sort().values)  # evaluation batches sorted by length
    dm.setup("test")
    (tb,) = list(dm.test_dataloader())
    assert sorted(tb["y"].tolist()) == [1, 7]


def test_the_datamodule_says_where_the_test_file_should_be(tmp_path) -> None:
    dm = ListOpsDataModule(num_train=4, num_val=2, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dev_d20s.tsv.gz under the data root"):
        dm.setup("test")
    dm.setup("fit")  # training needs no file
    assert len(dm.train_set) == 4
    with pytest.raises(ValueError, match="batch_size"):
        ListOpsDataModule(batch_size=0)


def test_a_corrupt_or_truncated_gzip_names_the_file(tmp_path) -> None:
    whole = gzip.compress(("1\t( ( ( [SM 6 ) 5 ) ] )\n" * 2000).encode())
    cut = tmp_path / "cut.tsv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        DataError,
        match=r"cut\.tsv\.gz:\d+: cannot read the ListOps file after line \d+ \(EOFError",
    ):
        read_tsv(cut)
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("1\t( ( ( [SM 6 ) 5 ) ] )\n\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.tsv:\d+: cannot read .*not UTF-8"):
        read_tsv(latin)


@pytest.mark.parametrize("argument", ["test_file", "train_file", "val_file"])
def test_an_empty_file_is_an_error_naming_it_and_its_argument(tmp_path, argument: str) -> None:
    """An empty test TSV ran with exit code 0 and no metrics."""
    good, empty = tmp_path / "good.tsv", tmp_path / "empty.tsv"
    good.write_text("1\t( ( ( [SM 6 ) 5 ) ] )\n7\t7\n")
    empty.write_text("\n\n")
    files = {"test_file": str(good), "train_file": str(good), "val_file": str(good)}
    dm = ListOpsDataModule(**{**files, argument: str(empty)}, batch_size=2)
    with pytest.raises(
        DataError, match=rf"empty\.tsv: the ListOps file given as {argument} holds no expression"
    ):
        dm.setup(None)


@pytest.mark.parametrize("size", ["num_train", "num_val"])
def test_an_empty_generated_set_is_refused_for_fitting_only(tmp_path, size: str) -> None:
    """num_train=0 exited 0 after Lightning's 'No training batches'."""
    test = tmp_path / "test.tsv"
    test.write_text("1\t( ( ( [SM 6 ) 5 ) ] )\n")
    dm = ListOpsDataModule(test_file=str(test), **{"num_train": 4, "num_val": 2, size: 0})
    for stage in ("fit", "validate"):
        with pytest.raises(DataError, match=rf"{size}=0 leaves nothing to (train|validate) on"):
            dm.setup(stage)
    dm.setup("test")  # a datamodule for testing alone needs no generated set
    assert len(dm.test_set) == 1


def test_predict_batches_keep_the_file_order_and_the_memory_bound(tmp_path) -> None:
    lines = ["7\t7", "1\t( ( ( [SM 6 ) 5 ) ] )", "3\t3", "1\t( ( [MIN 1 ) ] )", "2\t2"]
    test = tmp_path / "test.tsv"
    test.write_text("\n".join(lines) + "\n")
    dm = ListOpsDataModule(num_train=0, num_val=0, test_file=str(test), batch_size=2)
    dm.setup("predict")
    assert [y for b in dm.predict_dataloader() for y in b["y"].tolist()] == [7, 1, 3, 1, 2]
    assert [y for b in dm.test_dataloader() for y in b["y"].tolist()] == [7, 3, 2, 1, 1]
    # batch × longest³ ≤ max_eval_cubed holds in the file's order too
    dm = ListOpsDataModule(test_file=str(test), batch_size=8, max_eval_cubed=2 * 4**3)
    dm.setup("predict")
    assert [b["y"].tolist() for b in dm.predict_dataloader()] == [[7, 1], [3, 1, 2]]
