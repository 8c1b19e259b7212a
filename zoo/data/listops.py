r"""ListOps (Nangia & Bowman 2018): nested list operations, their values and gold trees.

An expression is a prefix term over the digits 0-9 and four list operators,

    e ::= d | [OP e_1 … e_k ]      (k = 2..5),    OP ∈ {MIN, MAX, MED, SM},

with MED the median rounded down (``int(np.median)`` in the published code)
and SM the sum modulo 10. The label is the value of the expression, one of ten
classes. A model that finds the expression's tree can compute the value; one
that does not, cannot: ListOps is the standard diagnostic of latent tree
learning.

Here:

* `generate`: expressions drawn as in the published generator (``make_data.py``
  of nyu-mll/spinn): at every depth below ``max_depth`` (20) a node is an
  operator with probability 0.25, with 2 to 5 arguments (uniform) and the
  operator uniform, and otherwise a uniform digit; at ``max_depth`` always a
  digit. As there, the set of expressions is deduplicated (the released file
  is a Python ``set`` of trees), which thins out the short expressions;
  optional length and depth limits reject longer or deeper draws.
* `evaluate`: the value of an expression, with or without the parentheses.
* `read_tsv`: the official format ``label \t expression``, where parentheses
  mark the released binary tree and the tokens without them are the input.
* Gold trees in two forms: dependency heads (each argument's head is its
  operator, the closing ``]`` attached to its operator, the outermost
  operator on the ROOT; projective, one root) and binary spans (the released
  left-branching bracketing: ``( ( ( [SM 6 ) 5 ) ] )``).
* `ListOpsDataModule`: generated training and validation sets, the test set
  from a TSV file (by default the shared development half of the official
  test set, ``data/listops/dev_d20s.tsv.gz``).

Batches: ``{"x": (B, N) token ids (0 = padding), "lengths": (B,), "y": (B,),
"heads": (B, N) gold head of each token (its own index for the root, 0 on
padding), "spans": (B, N, N) bool gold binary spans i ≤ j}``.
"""

from __future__ import annotations

import gzip
import os
import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import (
    DataError,
    DataNotFoundError,
    _check_int,
    describe_data_dir,
    resolve_data_dir,
)
from zoo.listops_vocabulary import CLOSE, DIGITS, OPERATORS, PAD, TOKEN_ID, VOCABULARY

__all__ = [
    "CLOSE",
    "DIGITS",
    "OPERATORS",
    "VOCABULARY",
    "ListOpsDataModule",
    "ListOpsDataset",
    "ListOpsExample",
    "binary_spans",
    "collate",
    "dependency_heads",
    "evaluate",
    "generate",
    "parse_line",
    "read_tsv",
    "to_expression",
    "tokenize",
]

DEFAULT_TEST_FILE = "listops/dev_d20s.tsv.gz"
"""The shared development half of the official test set, under the data root."""


@dataclass(frozen=True)
class ListOpsExample:
    """One expression with its value and gold trees.

    Attributes:
        tokens: the N input symbols (no parentheses).
        label: the value, 0-9.
        heads: the gold dependency head of each token, -1 for the ROOT.
        spans: the 2N - 1 spans (i, j), i ≤ j inclusive, of the released binary tree.
        depth: the operator nesting depth (0 for a lone digit).
    """

    tokens: tuple[str, ...]
    label: int
    heads: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    depth: int

    @property
    def expression(self) -> str:
        """The official form: the tokens with the released tree's parentheses."""
        return to_expression(self.tokens)


# ------------------------------------------------------------------ the grammar
def tokenize(expression: str) -> list[str]:
    """The input symbols of an expression: whitespace-split, parentheses dropped.

    Raises:
        ValueError: a symbol that is not a digit, an operator, ``]`` or a parenthesis.
    """
    tokens = [t for t in expression.split() if t not in ("(", ")")]
    for t in tokens:
        if t not in TOKEN_ID or t == PAD:
            raise ValueError(
                f"unknown ListOps symbol {t!r} in {expression[:60]!r}; expected a digit 0-9, "
                f"one of {', '.join(OPERATORS)}, {CLOSE!r} or a parenthesis"
            )
    return tokens


def _apply(operator: str, args: list[int]) -> int:
    if operator == "[MIN":
        return min(args)
    if operator == "[MAX":
        return max(args)
    if operator == "[MED":
        s = sorted(args)
        mid = len(s) // 2
        # int(np.median(...)) of the published code: the mean of the middle two, rounded down.
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2
    return sum(args) % 10


def _structure(tokens: Sequence[str]) -> tuple[int, tuple[int, ...], int]:
    """Value, dependency heads and depth of a token sequence; ValueError if it is not one term."""
    if not tokens:
        raise ValueError("empty ListOps expression")
    heads = [-1] * len(tokens)
    stack: list[tuple[int, str, list[int]]] = []  # (position, operator, argument values)
    value: int | None = None
    depth = 0
    for i, t in enumerate(tokens):
        if value is not None:
            raise ValueError(f"ListOps expression continues after its end at symbol {i} ({t!r})")
        if stack:
            heads[i] = stack[-1][0]
        if t in OPERATORS:
            stack.append((i, t, []))
            depth = max(depth, len(stack))
            continue
        if t == CLOSE:
            if not stack:
                raise ValueError(f"unmatched {CLOSE!r} at symbol {i}")
            _, operator, args = stack.pop()
            if not args:
                raise ValueError(f"operator {operator} closed without arguments at symbol {i}")
            result = _apply(operator, args)
        else:
            result = int(t)
        if stack:
            stack[-1][2].append(result)
        else:
            value = result
    if stack or value is None:
        raise ValueError(f"unclosed operator {stack[-1][1]} at symbol {stack[-1][0]}")
    return value, tuple(heads), depth


def evaluate(expression: str) -> int:
    """The value (0-9) of a ListOps expression, with or without the parentheses.

    Example:
        >>> evaluate("[MAX 1 [MED 9 2 5 ] [SM 6 5 ] ]")
        5
        >>> evaluate("( ( ( [SM 6 ) 5 ) ] )")
        1

    Raises:
        ValueError: an unknown symbol or a malformed expression.
    """
    return _structure(tokenize(expression))[0]


def dependency_heads(tokens: Sequence[str]) -> tuple[int, ...]:
    """Gold heads: each argument and each ``]`` hang from their operator; the outermost on ROOT (-1)."""
    return _structure(tokens)[1]


def _canonical_spans(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """The released bracketing: ``( ( ( OP a1 ) a2 ) … ] )`` for every operator, nested."""
    spans = [(i, i) for i in range(len(tokens))]
    stack: list[int] = []  # positions of the open operators
    for i, t in enumerate(tokens):
        if t in OPERATORS:
            stack.append(i)
        elif t == CLOSE:
            spans.append((stack.pop(), i))  # the operator's whole term
            if stack:  # which is an argument of the enclosing operator
                spans.append((stack[-1], i))
        elif stack:  # a digit argument extends its operator's spine
            spans.append((stack[-1], i))
    return spans


def _read_spans(expression: str, num_tokens: int) -> list[tuple[int, int]]:
    """The spans marked by the parentheses, checked to form one binary tree."""
    spans = [(i, i) for i in range(num_tokens)]
    stack: list[list[int]] = []  # per open parenthesis: [start, number of children]
    position = 0
    for symbol in expression.split():
        if symbol == "(":
            if stack:
                stack[-1][1] += 1
            stack.append([position, 0])
        elif symbol == ")":
            if not stack:
                raise ValueError("unmatched ')'")
            start, children = stack.pop()
            if children != 2:
                raise ValueError(
                    f"the parentheses closing at symbol {position - 1} hold {children} "
                    f"constituents; the released trees are binary (2)"
                )
            spans.append((start, position - 1))
        else:
            if stack:
                stack[-1][1] += 1
            position += 1
    if stack:
        raise ValueError("unclosed '('")
    if num_tokens > 1 and len(spans) != 2 * num_tokens - 1:
        raise ValueError(
            f"the parentheses mark {len(spans) - num_tokens} constituents over {num_tokens} "
            f"symbols; a binary tree has {num_tokens - 1}"
        )
    if num_tokens > 1 and (0, num_tokens - 1) not in spans:
        raise ValueError("the parentheses do not bracket the whole expression")
    return spans


def binary_spans(expression: str) -> tuple[tuple[int, int], ...]:
    """The 2N - 1 spans (i, j) of an expression's binary tree, sorted.

    Read from the parentheses where the expression has them (checked to be a
    binary tree over the symbols); otherwise the released left-branching tree
    ``( ( ( OP a1 ) a2 ) … ] )`` of every operator.

    Raises:
        ValueError: parentheses that are unbalanced or do not form one binary tree.
    """
    tokens = tokenize(expression)
    if "(" in expression.split() or ")" in expression.split():
        spans = _read_spans(expression, len(tokens))
    else:
        _structure(tokens)
        spans = _canonical_spans(tokens)
    return tuple(sorted(set(spans)))


def to_expression(tokens: Sequence[str], parentheses: bool = True) -> str:
    """The official string of a token sequence: with the released tree's parentheses, or without."""
    if not parentheses:
        return " ".join(tokens)
    opens = [0] * len(tokens)
    closes = [0] * len(tokens)
    for i, j in _canonical_spans(tokens):
        if i < j:
            opens[i] += 1
            closes[j] += 1
    return " ".join("( " * opens[i] + t + " )" * closes[i] for i, t in enumerate(tokens))


def _example(
    tokens: Sequence[str], spans: Iterable[tuple[int, int]] | None = None
) -> ListOpsExample:
    value, heads, depth = _structure(tokens)
    spans = _canonical_spans(tokens) if spans is None else spans
    return ListOpsExample(tuple(tokens), value, heads, tuple(sorted(set(spans))), depth)


# --------------------------------------------------------------- the generator
def _draw(
    rng: random.Random,
    depth: int,
    max_depth: int,
    max_args: int,
    operator_prob: float,
    out: list[str],
    limit: int,
) -> None:
    """Append one random term at ``depth`` to ``out``; stop early past ``limit`` symbols."""
    if len(out) > limit:
        return
    if depth < max_depth and rng.random() < operator_prob:
        count = rng.randint(2, max_args)
        operator = rng.choice(OPERATORS)
        out.append(operator)
        for _ in range(count):
            _draw(rng, depth + 1, max_depth, max_args, operator_prob, out, limit)
        out.append(CLOSE)
    else:
        out.append(rng.choice(DIGITS))


def generate(
    num: int,
    seed: int = 0,
    max_depth: int = 20,
    max_args: int = 5,
    operator_prob: float = 0.25,
    min_length: int = 1,
    max_length: int | None = None,
    unique: bool = True,
    exclude: Iterable[Sequence[str]] = (),
) -> list[ListOpsExample]:
    """Draw ``num`` expressions as the published generator does.

    Args:
        num: how many expressions.
        seed: seeds Python's ``random.Random`` (the same seed, the same list).
        max_depth: the depth at which a node is always a digit (the root is at depth 1).
        max_args: operators take 2 to ``max_args`` arguments, uniformly.
        operator_prob: the probability that a node above ``max_depth`` is an operator.
        min_length: draws with fewer symbols are rejected.
        max_length: draws with more symbols are rejected (None: no limit).
        unique: no expression twice (the released data is a set).
        exclude: token sequences never to return (e.g. a test set's).

    Raises:
        ValueError: arguments out of range, or ``unique`` with limits that admit
            fewer than ``num`` expressions (detected after 100·num fruitless draws).
    """
    _check_int("num", num, minimum=0)
    _check_int("max_depth", max_depth, minimum=1)
    _check_int("max_args", max_args, minimum=2)
    _check_int("min_length", min_length, minimum=1)
    if max_length is not None:
        _check_int("max_length", max_length, minimum=min_length)
    if not 0.0 <= float(operator_prob) < 1.0:
        raise ValueError(f"operator_prob must be in [0, 1), got {operator_prob!r}")
    rng = random.Random(seed)
    limit = max_length if max_length is not None else 10**9
    seen = {tuple(t) for t in exclude}
    examples: list[ListOpsExample] = []
    misses = 0
    while len(examples) < num:
        tokens: list[str] = []
        _draw(rng, 1, max_depth, max_args, operator_prob, tokens, limit)
        key = tuple(tokens)
        if len(tokens) < min_length or len(tokens) > limit or key in seen:
            misses += 1
            if misses > 100 * max(num, 100):
                raise DataError(
                    f"generate: found only {len(examples)} of {num} admissible expressions "
                    f"(min_length={min_length}, max_length={max_length}, max_depth={max_depth}, "
                    f"unique={unique}) in {misses} draws; allow longer or deeper expressions "
                    f"(max_length, max_depth) or ask for fewer"
                )
            continue
        if unique:
            seen.add(key)
        examples.append(_example(tokens))
    return examples


# ------------------------------------------------------------------- the reader
def parse_line(line: str) -> ListOpsExample:
    """One TSV line ``label \\t expression`` → an example (label checked against the value).

    Raises:
        ValueError: no tab, a label that is not 0-9, a malformed expression or
            tree, or a label that differs from the expression's value.
    """
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 2:
        raise ValueError(f"expected 'label<TAB>expression', got {len(fields)} tab-separated fields")
    label, expression = fields
    if label.strip() not in DIGITS:
        raise ValueError(f"the label must be a digit 0-9, got {label!r}")
    tokens = tokenize(expression)
    example = _example(tokens, binary_spans(expression))
    if example.label != int(label):
        raise ValueError(f"label {label} but the expression evaluates to {example.label}")
    return example


def read_tsv(path: str | os.PathLike[str]) -> list[ListOpsExample]:
    """Read an official ListOps file (``.tsv`` or ``.tsv.gz``).

    Returns:
        The examples, in the file's order (none for an empty file: the datamodule refuses that).

    Raises:
        FileNotFoundError: no such file.
        DataError: (a ValueError) a malformed line, naming the file and the line number; a file
            that cannot be read (a truncated or corrupt gzip, bytes that are not
            UTF-8), naming the file and the last line read.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no ListOps file at {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    examples = []
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    examples.append(parse_line(line))
                except ValueError as error:
                    raise DataError(f"{path}:{number}: {error}: {line.strip()[:80]!r}") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        # gzip reads ahead in blocks: the damage lies at or after the line named. The
        # message holds the low-level error, which would otherwise be shown in its place.
        raise DataError(
            f"{path}:{number + 1}: cannot read the ListOps file after line {number} "
            f"({type(e).__name__}: {e}); it is truncated, corrupt or not UTF-8 text"
        ) from None
    return examples


# ------------------------------------------------------------- dataset, batches
class ListOpsDataset(Dataset):
    """A list of `ListOpsExample`s; indexing returns the example itself (batched by `collate`)."""

    def __init__(self, examples: Sequence[ListOpsExample]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> ListOpsExample:
        return self.examples[index]


def collate(examples: Sequence[ListOpsExample]) -> dict[str, Tensor]:
    """Pad a list of examples into a batch (see the module docstring for the keys)."""
    batch, longest = len(examples), max(len(e.tokens) for e in examples)
    x = torch.zeros(batch, longest, dtype=torch.long)
    heads = torch.zeros(batch, longest, dtype=torch.long)
    spans = torch.zeros(batch, longest, longest, dtype=torch.bool)
    for b, e in enumerate(examples):
        n = len(e.tokens)
        x[b, :n] = torch.tensor([TOKEN_ID[t] for t in e.tokens])
        heads[b, :n] = torch.tensor([m if h < 0 else h for m, h in enumerate(e.heads)])
        index = torch.tensor(e.spans)
        spans[b, index[:, 0], index[:, 1]] = True
    return {
        "x": x,
        "lengths": torch.tensor([len(e.tokens) for e in examples]),
        "y": torch.tensor([e.label for e in examples]),
        "heads": heads,
        "spans": spans,
    }


class _BucketedBatches(torch.utils.data.Sampler[list[int]]):
    """Random training batches of similar length: shuffle, sort within pools of 50 batches, shuffle batches.

    The cost of a batch grows with its longest expression (cubically for the
    tree programs), and ListOps lengths are spread from 1 to ~1,000: random
    batches are mostly padding. Each epoch draws a new order from ``generator``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        generator: torch.Generator,
        limit: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.lengths = torch.as_tensor(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.limit = limit

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator)
        pool = 50 * self.batch_size
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            chunk = chunk[self.lengths[chunk].argsort(stable=True)].tolist()
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            # The length limit of a curriculum is read as each batch is drawn, so a
            # change made at a validation takes effect within the epoch.
            limit = self.limit()
            batch = (
                batches[i] if limit is None else [j for j in batches[i] if self.lengths[j] <= limit]
            )
            if batch:
                yield batch


class _EvaluationBatches(torch.utils.data.Sampler[list[int]]):
    """Batches in a fixed order (evaluation only): of similar length, or in the file's order.

    Padding a 900-symbol expression with 10-symbol ones multiplies the cubic
    tree programs' work, and metrics do not depend on the order, so
    validation and test batches group similar lengths. Predictions are written
    as they come, so ``predict`` keeps the file's order (``by_length=False``).
    Either way a batch stops growing once batch × N³ (N its longest
    expression) would pass ``max_cubed``: the charts of Eisner's and CKY's
    programs hold O(B N³) numbers, several GB for a batch of 32 expressions of
    900 symbols.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, max_cubed: int, by_length: bool = True
    ) -> None:
        order = range(len(lengths))
        if by_length:
            order = sorted(order, key=lambda i: (lengths[i], i))
        self.batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0
        for i in order:
            longest = max(longest, lengths[i])
            if batch and (len(batch) >= batch_size or (len(batch) + 1) * longest**3 > max_cubed):
                self.batches.append(batch)
                batch = []
                longest = lengths[i]
            batch.append(i)
        if batch:
            self.batches.append(batch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _read_split(path: str | os.PathLike[str], argument: str) -> list[ListOpsExample]:
    """`read_tsv` of a split's file; a file without any expression is an error naming it."""
    examples = read_tsv(path)
    if not examples:
        raise DataError(
            f"{Path(path).expanduser()}: the ListOps file given as {argument} holds no "
            f"expression; expected lines 'label<TAB>expression' (is the file empty?)"
        )
    return examples


class ListOpsDataModule(L.LightningDataModule):
    """ListOps: generated training and validation sets, the test set from a TSV file.

    Args:
        num_train: generated training expressions (90,000, the size of the official
            training file); ignored when ``train_file`` is given. 0 only for a datamodule
            that is tested and never fitted (``fit`` and ``validate`` refuse an empty set).
        num_val: generated validation expressions (1,000); ignored with ``val_file``; 0 as
            ``num_train``.
        train_file: an official-format TSV to train on instead of generated data.
        val_file: the same for validation.
        test_file: the test TSV; None: ``listops/dev_d20s.tsv.gz`` under the data root
            (``data_dir``, ``$ZOO_DATA_DIR`` or ``data/``).
        data_dir: the data root for the default test file.
        max_length: generated expressions longer than this many symbols are redrawn
            (None: no limit, the official distribution, up to ~1,000 symbols).
        min_length: generated expressions shorter than this are redrawn.
        max_depth: the generator's maximum depth (20 in the official data).
        batch_size: expressions per batch; training batches are random but group
            expressions of similar length (sorted within pools of 50 batches).
        eval_batch_size: expressions per validation and test batch (None: ``batch_size``);
            these batches group expressions of similar length.
        test_max_length: test only on the expressions of the test file of at most this many
            symbols (None: all); e.g. 100 for the protocol of Choi et al. (2018).
        max_eval_cubed: an evaluation batch stops growing before batch × N³ passes this
            (N its longest expression; 5·10⁷: one expression of 370 symbols, 50 of 100),
            which bounds the memory of the cubic tree programs on long expressions.
        num_workers: DataLoader worker processes.
        seed: seeds the generator (training and validation sets are drawn as one set,
            so they never share an expression) and the training order.

    The generated sets never contain an expression of the test file when that
    file is readable (the official training and test files are disjoint).

    ``train_length_limit`` (None by default) drops training expressions longer
    than it as batches are drawn: a length curriculum sets it during training
    (`zoo.callbacks.LengthCurriculum`).
    """

    def __init__(
        self,
        num_train: int = 90_000,
        num_val: int = 1_000,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        data_dir: str | None = None,
        max_length: int | None = None,
        min_length: int = 1,
        max_depth: int = 20,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        test_max_length: int | None = None,
        max_eval_cubed: int = 50_000_000,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_int("num_train", num_train, minimum=0)
        _check_int("num_val", num_val, minimum=0)
        _check_int("min_length", min_length, minimum=1)
        if max_length is not None:
            _check_int("max_length", max_length, minimum=min_length)
        _check_int("max_depth", max_depth, minimum=1)
        _check_int("batch_size", batch_size, minimum=1)
        if eval_batch_size is not None:
            _check_int("eval_batch_size", eval_batch_size, minimum=1)
        _check_int("max_eval_cubed", max_eval_cubed, minimum=1)
        if test_max_length is not None:
            _check_int("test_max_length", test_max_length, minimum=1)
        self.test_max_length = test_max_length
        self.train_length_limit: int | None = None
        _check_int("num_workers", num_workers, minimum=0)
        _check_int("seed", seed, minimum=None)
        self.max_eval_cubed = max_eval_cubed
        self.num_train, self.num_val = num_train, num_val
        self.train_file, self.val_file, self.test_file = train_file, val_file, test_file
        self.data_dir = data_dir
        self.max_length, self.min_length, self.max_depth = max_length, min_length, max_depth
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: ListOpsDataset | None = None
        self.val_set: ListOpsDataset | None = None
        self.test_set: ListOpsDataset | None = None
        self._shuffle_generator: torch.Generator | None = None

    @property
    def input_dim(self) -> int:
        """The vocabulary size (16: padding, ten digits, four operators, ``]``)."""
        return len(VOCABULARY)

    def test_path(self) -> Path:
        """The test file: ``test_file``, or the shared development half under the data root."""
        if self.test_file is not None:
            return Path(self.test_file).expanduser()
        return resolve_data_dir(self.data_dir) / DEFAULT_TEST_FILE

    def _test_examples(self) -> list[ListOpsExample]:
        path = self.test_path()
        if not path.is_file():
            where = (
                f"test_file={self.test_file!r}"
                if self.test_file is not None
                else f"{DEFAULT_TEST_FILE} under the data root {describe_data_dir(self.data_dir)}"
            )
            raise DataNotFoundError(
                f"no ListOps test file at {path} ({where}); give --data.test_file PATH to an "
                f"official-format TSV (label<TAB>expression), e.g. test_d20s.tsv of nyu-mll/spinn"
            )
        examples = _read_split(path, "test_file")
        if self.test_max_length is not None:
            examples = [e for e in examples if len(e.tokens) <= self.test_max_length]
            if not examples:
                raise DataError(
                    f"no expression of {path} has at most test_max_length="
                    f"{self.test_max_length} symbols; raise test_max_length or set it to null"
                )
        return examples

    def setup(self, stage: str | None = None) -> None:
        test: list[ListOpsExample] | None = None
        if stage in (None, "test", "predict") or self.test_path().is_file():
            test = self._test_examples()
            self.test_set = ListOpsDataset(test)
        if stage in (None, "fit", "validate") and self.train_set is None:
            for size, count, file, task in (
                ("num_train", self.num_train, "train_file", "train"),
                ("num_val", self.num_val, "val_file", "validate"),
            ):
                if count == 0 and getattr(self, file) is None:
                    raise DataError(
                        f"{size}=0 leaves nothing to {task} on; give {size} ≥ 1 or a {file} "
                        f"(only a datamodule used for testing alone may have {size}=0)"
                    )
            exclude = [e.tokens for e in test] if test is not None else []
            generated_count = (self.num_train if self.train_file is None else 0) + (
                self.num_val if self.val_file is None else 0
            )
            generated = generate(
                generated_count,
                seed=self.seed,
                max_depth=self.max_depth,
                min_length=self.min_length,
                max_length=self.max_length,
                exclude=exclude,
            )
            if self.train_file is None:
                train, generated = generated[: self.num_train], generated[self.num_train :]
            else:
                train = _read_split(self.train_file, "train_file")
            val = generated if self.val_file is None else _read_split(self.val_file, "val_file")
            self.train_set, self.val_set = ListOpsDataset(train), ListOpsDataset(val)

    def _loader(self, dataset: ListOpsDataset | None, stage: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.{stage}_dataloader() called before setup(); "
                f"call setup() first (a Trainer does this)"
            )
        common = {"num_workers": self.num_workers, "collate_fn": collate}
        if stage == "train":
            if self._shuffle_generator is None:
                self._shuffle_generator = torch.Generator().manual_seed(self.seed)
            lengths = [len(e.tokens) for e in dataset.examples]
            sampler = _BucketedBatches(
                lengths, self.batch_size, self._shuffle_generator, lambda: self.train_length_limit
            )
            return DataLoader(dataset, batch_sampler=sampler, **common)
        lengths = [len(e.tokens) for e in dataset.examples]
        sampler = _EvaluationBatches(
            lengths, self.eval_batch_size, self.max_eval_cubed, by_length=stage != "predict"
        )
        return DataLoader(dataset, batch_sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "predict")
