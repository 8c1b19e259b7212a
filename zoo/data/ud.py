r"""Universal Dependencies treebanks for unsupervised tagging: CoNLL-U, vocabularies, batches.

A sentence is a sequence of word ids x_0, …, x_{L-1} from a vocabulary built on
the training split (words below a frequency cut-off become ``<unk>``,
optionally lower-cased), with the character ids of every word and the gold
UPOS and XPOS tags, which are kept for evaluation only: the models never see
them. Batches are bucketed by length (sentences of similar length together,
the batch order shuffled; ``predict`` keeps the file's order) and padded::

    {"x": (B, N) word ids (0 = <pad>), "lengths": (B,), "chars": (B, N, W) char ids,
     "upos": (B, N), "xpos": (B, N) gold ids (-1 = padding),
     "words": list of B lists of forms, "sentences": list of B `Sentence`}

Files are read locally first (``data_dir`` / ``ZOO_DATA_DIR`` / ``data/``), laid
out as the shared copy of UD English EWT::

    <data_dir>/ud_english_ewt/en_ewt-ud-{train,dev,test}.conllu[.gz]

(any folder directly under the root, or the root itself, holding
``<treebank>-ud-<split>.conllu[.gz]``). Without local files the Hugging Face
``universal_dependencies`` dataset is tried after a short probe of the hub, so
with no network the datamodule fails within seconds, saying where to put the
files. CoNLL-U is specified at https://universaldependencies.org/format.html;
multiword-token lines (``1-2``) and empty nodes (``8.1``) are kept for writing
the file back but are not tokens of the sentence.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from zoo.data.base import (
    DataError,
    DataNotFoundError,
    _check_int,
    describe_data_dir,
    resolve_data_dir,
)
from zoo.data.hub import probe_hub

__all__ = [
    "UPOS_TAGS",
    "BucketBatchSampler",
    "Sentence",
    "TaggedDataset",
    "TaggingDataModule",
    "UDTaggingDataModule",
    "Vocabulary",
    "collate_tagged",
    "read_conllu",
]

UPOS_TAGS: tuple[str, ...] = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
)  # fmt: skip
"""The 17 universal POS tags of UD v2, in the order of their ids."""

PAD, UNK = "<pad>", "<unk>"
SPLITS = ("train", "dev", "test")
HUB_UD = "universal_dependencies"
"""The Hugging Face dataset tried when no local CoNLL-U files are found."""


# ----------------------------------------------------------------------------- CoNLL-U
@dataclass
class Sentence:
    """One CoNLL-U sentence.

    Attributes:
        comments: the ``#`` lines, without their newline.
        rows: every token line as its 10 columns, multiword tokens and empty nodes included.
        words: the FORM of each syntactic word (integer ID), in order.
        upos: its UPOS tag; ``xpos``: its XPOS tag (``"_"`` where the treebank has none).
        word_rows: for each word, the index of its line in ``rows``.
    """

    comments: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    upos: list[str] = field(default_factory=list)
    xpos: list[str] = field(default_factory=list)
    word_rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.words)

    def to_conllu(self, misc: Sequence[str] | None = None) -> str:
        """The sentence as CoNLL-U text (ending with the blank line).

        Args:
            misc: one ``Key=Value`` item per word to add to its MISC column.
        """
        rows = [list(r) for r in self.rows]
        if misc is not None:
            if len(misc) != len(self.words):
                raise ValueError(f"misc needs {len(self.words)} items, got {len(misc)}")
            for row_index, item in zip(self.word_rows, misc, strict=True):
                old = rows[row_index][9]
                rows[row_index][9] = item if old == "_" else f"{old}|{item}"
        lines = [*self.comments, *("\t".join(r) for r in rows)]
        return "\n".join(lines) + "\n\n"


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_conllu(path: str | os.PathLike[str], limit: int | None = None) -> list[Sentence]:
    """Read a CoNLL-U file (``.conllu`` or ``.conllu.gz``).

    Args:
        path: the file.
        limit: stop after this many sentences (None: all).

    Returns:
        The sentences, in order (none for an empty file: the datamodule refuses that).

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``limit`` is not an integer ≥ 1 (0 returned the first sentence).
        DataError: (a ValueError) a malformed line (not 10 tab-separated columns, a bad ID, IDs
            out of order, an empty FORM, a sentence without words), naming the
            file and line number; a file that cannot be read (a truncated or
            corrupt gzip, bytes that are not UTF-8), naming the file and the
            last line read.
    """
    if limit is not None:
        _check_int("read_conllu: limit", limit, minimum=1)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CoNLL-U file at {path}")
    sentences: list[Sentence] = []
    current = Sentence()
    start = 1
    lineno = 0

    def error(lineno: int, message: str) -> DataError:
        return DataError(f"{path}:{lineno}: malformed CoNLL-U: {message}")

    def finish(lineno: int) -> None:
        nonlocal current
        if current.rows or current.comments:
            if not current.words:
                raise error(start, "a sentence without any word line (integer ID)")
            sentences.append(current)
        current = Sentence()

    try:
        with _open_text(path) as handle:
            for lineno, raw in enumerate(handle, start=1):
                line = raw.rstrip("\n").rstrip("\r")
                if not line.strip():
                    finish(lineno)
                    if limit is not None and len(sentences) >= limit:
                        return sentences
                    start = lineno + 1
                    continue
                if line.startswith("#"):
                    if current.rows:
                        raise error(lineno, "a comment line after the token lines of a sentence")
                    current.comments.append(line)
                    continue
                columns = line.split("\t")
                if len(columns) != 10:
                    raise error(lineno, f"expected 10 tab-separated columns, got {len(columns)}")
                ident, form, _, upos, xpos = columns[:5]
                if "-" in ident or "." in ident:
                    low, sep, high = ident.replace(".", "-").partition("-")
                    if not (low.isdigit() and high.isdigit() and sep):
                        raise error(lineno, f"bad ID {ident!r} (expected N, N-M or N.M)")
                    current.rows.append(columns)
                    continue
                if not ident.isdigit():
                    raise error(lineno, f"bad ID {ident!r} (expected N, N-M or N.M)")
                if int(ident) != len(current.words) + 1:
                    raise error(
                        lineno, f"ID {ident} out of order (expected {len(current.words) + 1})"
                    )
                if form == "":
                    raise error(lineno, "empty FORM")
                current.word_rows.append(len(current.rows))
                current.rows.append(columns)
                current.words.append(form)
                current.upos.append(upos)
                current.xpos.append(xpos)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        # gzip reads ahead in blocks: the damage lies at or after the line named. The
        # message holds the low-level error, which would otherwise be shown in its place.
        raise DataError(
            f"{path}:{lineno + 1}: cannot read the CoNLL-U file after line {lineno} "
            f"({type(e).__name__}: {e}); it is truncated, corrupt or not UTF-8 text"
        ) from None
    finish(lineno + 1 if sentences or current.rows else 1)
    return sentences[:limit] if limit is not None else sentences


# ----------------------------------------------------------------------------- vocabulary
class Vocabulary:
    """A map between strings and ids; ``<pad>`` is 0 and ``<unk>`` 1 when given.

    Args:
        items: the strings, in id order.
        unknown: the string unknown items map to (None: unknown items are an error).
    """

    def __init__(self, items: Sequence[str], unknown: str | None = UNK) -> None:
        self.items = list(items)
        self.index = {s: i for i, s in enumerate(self.items)}
        if len(self.index) != len(self.items):
            raise ValueError("Vocabulary: items must be distinct")
        if unknown is not None and unknown not in self.index:
            raise ValueError(f"Vocabulary: the unknown item {unknown!r} is not among the items")
        self.unknown = unknown

    @classmethod
    def from_counts(
        cls, counts: Counter[str], min_count: int = 1, specials: Sequence[str] = (PAD, UNK)
    ) -> Vocabulary:
        """The specials, then items seen ≥ ``min_count`` times, most frequent first (ties by string)."""
        kept = sorted((s for s, c in counts.items() if c >= min_count and s not in specials),
                      key=lambda s: (-counts[s], s))  # fmt: skip
        return cls([*specials, *kept], unknown=UNK if UNK in specials else None)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: str) -> int:
        found = self.index.get(item)
        if found is not None:
            return found
        if self.unknown is None:
            raise KeyError(f"{item!r} is not in the vocabulary and there is no unknown item")
        return self.index[self.unknown]

    def encode(self, items: Sequence[str]) -> list[int]:
        return [self[s] for s in items]


# ----------------------------------------------------------------------------- batches
@dataclass
class _Encoded:
    x: Tensor  # (L,) word ids
    chars: Tensor  # (L, W) char ids
    gold: dict[str, Tensor]  # name -> (L,) gold ids
    words: list[str]
    sentence: Sentence | None


class TaggedDataset(Dataset):
    """Encoded sentences; items are whole examples, batched by `collate_tagged`."""

    def __init__(self, examples: list[_Encoded]) -> None:
        self.examples = examples
        self.lengths = [len(e.words) for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> _Encoded:
        return self.examples[index]


def collate_tagged(examples: Sequence[_Encoded]) -> dict[str, Any]:
    """Pad a list of examples into one batch (see the module docstring for the keys)."""
    lengths = torch.tensor([len(e.words) for e in examples])
    size, width = int(lengths.max()), max(int(e.chars.shape[1]) for e in examples)
    x = torch.zeros(len(examples), size, dtype=torch.long)
    chars = torch.zeros(len(examples), size, width, dtype=torch.long)
    gold = {k: torch.full((len(examples), size), -1, dtype=torch.long) for k in examples[0].gold}
    for i, e in enumerate(examples):
        n = len(e.words)
        x[i, :n] = e.x
        chars[i, :n, : e.chars.shape[1]] = e.chars
        for name, tags in e.gold.items():
            gold[name][i, :n] = tags
    batch: dict[str, Any] = {"x": x, "lengths": lengths, "chars": chars, **gold}
    batch["words"] = [e.words for e in examples]
    batch["sentences"] = [e.sentence for e in examples]
    return batch


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of sentences of similar length, in a shuffled order.

    Indices are shuffled, cut into pools of ``pool_batches`` batches, sorted by
    length inside each pool and cut into batches; the batch order is shuffled
    again. Without ``shuffle`` the batches follow the sorted lengths.

    Args:
        lengths: the length of every example.
        batch_size: examples per batch.
        shuffle: shuffle (training) or not (evaluation).
        generator: the random generator (kept across epochs).
        pool_batches: batches per sorting pool.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        pool_batches: int = 50,
    ) -> None:
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.pool = batch_size * pool_batches

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        count = len(self.lengths)
        if not self.shuffle:
            order = torch.argsort(self.lengths, stable=True)
            yield from (
                order[i : i + self.batch_size].tolist() for i in range(0, count, self.batch_size)
            )
            return
        order = torch.randperm(count, generator=self.generator)
        batches = []
        for start in range(0, count, self.pool):
            pool = order[start : start + self.pool]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            batches.extend(
                pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)
            )
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index].tolist()


class TaggingDataModule(L.LightningDataModule):
    """Base of the tagging datamodules: bucketed loaders, vocabularies, ``input_dim``.

    Subclasses fill ``self.vocabulary``, ``self.characters``, ``self.tag_names``
    (gold name → tag strings) and ``self.splits`` (``"train"``/``"dev"``/``"test"``
    → `TaggedDataset`) in ``setup``.

    Args:
        batch_size: sentences per batch.
        max_word_length: characters kept per word in ``chars``.
        predict_split: the split ``predict`` tags.
        num_workers: DataLoader worker processes.
        seed: seeds the training order.
    """

    def __init__(
        self,
        batch_size: int = 32,
        max_word_length: int = 20,
        predict_split: Literal["train", "dev", "test"] = "test",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("max_word_length", max_word_length, minimum=1)
        _check_int("num_workers", num_workers, minimum=0)
        _check_int("seed", seed, minimum=None)
        if predict_split not in SPLITS:
            raise ValueError(f"predict_split must be one of {SPLITS}, got {predict_split!r}")
        self.batch_size = batch_size
        self.max_word_length = max_word_length
        self.predict_split = predict_split
        self.num_workers = num_workers
        self.seed = seed
        self.vocabulary: Vocabulary | None = None
        self.characters: Vocabulary | None = None
        self.tag_names: dict[str, list[str]] = {}
        self.splits: dict[str, TaggedDataset] = {}
        self._generator: torch.Generator | None = None

    @property
    def input_dim(self) -> int:
        """V, the vocabulary size (``<pad>`` and ``<unk>`` included); known after ``setup``.

        The CLI links it into the model's ``input_dim``, and instantiates the
        model after the data, so this property runs ``setup`` itself when needed.
        """
        if self.vocabulary is None:
            self.prepare_data()
            self.setup("fit")
        return len(self.vocabulary)

    @property
    def word_chars(self) -> Tensor:
        """``(V, max_word_length)`` character ids of every vocabulary word (for character-aware emissions)."""
        if self.vocabulary is None or self.characters is None:
            raise RuntimeError(f"{type(self).__name__}.word_chars needs setup() first")
        return torch.stack([self._chars(w) for w in self.vocabulary.items])

    def _chars(self, word: str) -> Tensor:
        ids = torch.zeros(self.max_word_length, dtype=torch.long)
        if word in (PAD, UNK):
            ids[0] = 1 if word == UNK else 0
            return ids
        codes = self.characters.encode(list(word[: self.max_word_length]))
        ids[: len(codes)] = torch.tensor(codes, dtype=torch.long)
        return ids

    def _encode(self, words: list[str], keys: list[str], gold: dict[str, list[int]],
                sentence: Sentence | None) -> _Encoded:  # fmt: skip
        width = max(1, min(self.max_word_length, max(len(w) for w in words)))
        chars = torch.stack([self._chars(w)[:width] for w in words])
        return _Encoded(
            x=torch.tensor(self.vocabulary.encode(keys), dtype=torch.long),
            chars=chars,
            gold={k: torch.tensor(v, dtype=torch.long) for k, v in gold.items()},
            words=words,
            sentence=sentence,
        )

    def _loader(self, split: str, shuffle: bool, by_length: bool = True) -> DataLoader:
        if split not in self.splits:
            raise RuntimeError(
                f"{type(self).__name__}: the {split!r} split is not loaded; call setup() first "
                f"(a Trainer does this)"
            )
        dataset = self.splits[split]
        if shuffle and self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        if by_length:
            sampler = BucketBatchSampler(
                dataset.lengths, self.batch_size, shuffle=shuffle, generator=self._generator
            )
        else:
            sampler = BatchSampler(SequentialSampler(dataset), self.batch_size, drop_last=False)
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_tagged,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches in the file's order: predictions are written as they come (`InducedTagWriter`)."""
        return self._loader(self.predict_split, shuffle=False, by_length=False)


# ----------------------------------------------------------------------------- UD
class UDTaggingDataModule(TaggingDataModule):
    """A UD treebank (UD English EWT by default) for unsupervised POS induction.

    Args:
        treebank: the treebank's file prefix, e.g. ``"en_ewt"`` (files
            ``en_ewt-ud-train.conllu[.gz]``), also its Hugging Face config name.
        data_dir: the dataset root (None: ``$ZOO_DATA_DIR`` or ``data/``).
        min_count: training-split frequency below which a word becomes ``<unk>``.
        lowercase: lower-case the words before counting and lookup (``words`` keep the forms).
        limit: read at most this many sentences of each split (None: all), for quick runs.
        max_train_length: drop training sentences longer than this (None: keep all);
            dev and test are never filtered.
        batch_size: sentences per batch.
        max_word_length: characters kept per word.
        predict_split: the split ``predict`` tags.
        num_workers: DataLoader worker processes.
        seed: seeds the training order.

    Raises:
        DataNotFoundError: no local files and no reachable hub (the message lists the paths
            tried), or a folder with some of the treebank's split files but not all (named).
        ValueError: bad arguments.
        DataError: a malformed CoNLL-U line or an unreadable file (file and line named); a
            split without sentences, or a ``max_train_length`` that keeps none.
    """

    def __init__(
        self,
        treebank: str = "en_ewt",
        data_dir: str | None = None,
        min_count: int = 2,
        lowercase: bool = True,
        limit: int | None = None,
        max_train_length: int | None = None,
        batch_size: int = 32,
        max_word_length: int = 20,
        predict_split: Literal["train", "dev", "test"] = "test",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, max_word_length, predict_split, num_workers, seed)
        if not isinstance(treebank, str) or not treebank:
            raise ValueError(f"treebank must be a non-empty string, got {treebank!r}")
        _check_int("min_count", min_count, minimum=1)
        if limit is not None:
            _check_int("limit", limit, minimum=1)
        if max_train_length is not None:
            _check_int("max_train_length", max_train_length, minimum=1)
        self.save_hyperparameters()
        self.treebank = treebank
        self.data_dir = data_dir
        self.min_count = min_count
        self.lowercase = lowercase
        self.limit = limit
        self.max_train_length = max_train_length
        self.sentences: dict[str, list[Sentence]] = {}
        self.sources: dict[str, str] = {}

    # ------------------------------------------------------------------ files
    def local_files(self) -> dict[str, Path] | None:
        """The three split files under the dataset root, or None when any is missing."""
        _, found = self._local_candidates()
        return found if len(found) == len(SPLITS) else None

    def _local_candidates(self) -> tuple[Path | None, dict[str, Path]]:
        """The folder (the root or one directly under it) with the most split files, and those."""
        root = resolve_data_dir(self.data_dir)
        folders = [root, *sorted(p for p in root.glob("*") if p.is_dir())] if root.is_dir() else []
        best: tuple[Path | None, dict[str, Path]] = (None, {})
        for folder in folders:
            found = {}
            for split in SPLITS:
                for suffix in (".conllu", ".conllu.gz"):
                    path = folder / f"{self.treebank}-ud-{split}{suffix}"
                    if path.is_file():
                        found[split] = path
                        break
            if len(found) > len(best[1]):
                best = (folder, found)
        return best

    def _read(self) -> dict[str, list[Sentence]]:
        """The three splits, from local files or the hub; ``self.sources`` says where each came from."""
        folder, files = self._local_candidates()
        if len(files) == len(SPLITS):
            self.sources = {split: str(path) for split, path in files.items()}
            return {split: read_conllu(path, self.limit) for split, path in files.items()}
        if files:  # a partial copy: name what is missing rather than go to the hub
            missing = [f"{self.treebank}-ud-{s}.conllu[.gz]" for s in SPLITS if s not in files]
            raise DataNotFoundError(
                f"UD treebank {self.treebank!r}: {folder} holds "
                f"{', '.join(p.name for p in files.values())} but not {', '.join(missing)}; "
                f"the datamodule reads the train, dev and test files of one treebank from one folder"
            )
        root = resolve_data_dir(self.data_dir)
        where = (
            f"{root}/<folder>/{self.treebank}-ud-{{train,dev,test}}.conllu[.gz] "
            f"(the dataset root {root} is {describe_data_dir(self.data_dir)}; "
            f"e.g. {root}/ud_english_ewt/ for en_ewt)"
        )
        reason = probe_hub(dataset=HUB_UD)
        if reason is not None:
            raise DataNotFoundError(
                f"UD treebank {self.treebank!r}: no local CoNLL-U files, and the Hugging Face "
                f"dataset {HUB_UD!r} is unreachable ({reason}). Put the files at {where}, or pass "
                f"--data.data_dir."
            )
        self.sources = {split: f"{HUB_UD}/{self.treebank} ({split})" for split in SPLITS}
        return _load_hub_treebank(self.treebank, self.limit)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Read the three splits, build the vocabularies on train and encode everything (once)."""
        if self.vocabulary is not None:
            return
        self.sentences = self._read()
        for split, sentences in self.sentences.items():
            if not sentences:
                raise DataError(
                    f"{self.sources[split]}: the {split} split of UD treebank {self.treebank!r} "
                    f"has no sentence; expected at least one CoNLL-U sentence (is the file empty?)"
                )
        train = self.sentences["train"]
        if self.max_train_length is not None:
            train = [s for s in train if len(s) <= self.max_train_length]
            if not train:
                shortest = min(len(s) for s in self.sentences["train"])
                raise DataError(
                    f"max_train_length={self.max_train_length} keeps no training sentence of "
                    f"{self.sources['train']} (the shortest has {shortest} words); raise it or "
                    f"set it to null"
                )
            self.sentences["train"] = train
        counts = Counter(self._key(w) for s in train for w in s.words)
        self.vocabulary = Vocabulary.from_counts(counts, self.min_count)
        self.characters = Vocabulary.from_counts(
            Counter(c for s in train for w in s.words for c in w)
        )
        xpos = sorted({t for s in train for t in s.xpos})
        for split in ("dev", "test"):
            xpos += sorted({t for s in self.sentences[split] for t in s.xpos} - set(xpos))
        self.tag_names = {"upos": list(UPOS_TAGS), "xpos": xpos}
        upos_ids = Vocabulary(UPOS_TAGS, unknown=None)
        xpos_ids = Vocabulary(xpos, unknown=None)
        for split, sentences in self.sentences.items():
            examples = []
            for s in sentences:
                bad = [t for t in s.upos if t not in upos_ids.index]
                if bad:
                    raise DataError(
                        f"{self.treebank} {split}: UPOS tag {bad[0]!r} is not one of {UPOS_TAGS}"
                    )
                gold = {"upos": upos_ids.encode(s.upos), "xpos": xpos_ids.encode(s.xpos)}
                examples.append(self._encode(s.words, [self._key(w) for w in s.words], gold, s))
            self.splits[split] = TaggedDataset(examples)

    def _key(self, word: str) -> str:
        return word.lower() if self.lowercase else word


def _load_hub_treebank(treebank: str, limit: int | None) -> dict[str, list[Sentence]]:
    """The treebank from the Hugging Face ``universal_dependencies`` dataset, as `Sentence`s."""
    import datasets

    data = datasets.load_dataset(HUB_UD, treebank)
    upos_names = data["train"].features["upos"].feature.names
    out: dict[str, list[Sentence]] = {}
    for split, name in (("train", "train"), ("dev", "validation"), ("test", "test")):
        rows = (
            data[name] if limit is None else data[name].select(range(min(limit, len(data[name]))))
        )
        sentences = []
        for example in rows:
            words = list(example["tokens"])
            upos = [upos_names[i] for i in example["upos"]]
            xpos = [t if t is not None else "_" for t in example["xpos"]]
            lines = [
                [str(i + 1), w, "_", u, x, "_", "_", "_", "_", "_"]
                for i, (w, u, x) in enumerate(zip(words, upos, xpos, strict=True))
            ]
            sentences.append(
                Sentence(
                    comments=[f"# sent_id = {example.get('idx', len(sentences))}"],
                    rows=lines,
                    words=words,
                    upos=upos,
                    xpos=xpos,
                    word_rows=list(range(len(words))),
                )
            )
        out[split] = sentences
    return out
