"""The CoNLL-U reader on the shared EWT files and on malformed input; vocabularies and batches."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest
import torch

from zoo.data.mnist import DataNotFoundError
from zoo.data.ud import UPOS_TAGS, BucketBatchSampler, UDTaggingDataModule, Vocabulary, read_conllu

ROOT = Path(__file__).resolve().parents[2]
EWT = next(
    (p for p in (ROOT / "data" / "ud_english_ewt", ROOT.parent / "shared" / "data" / "ud_english_ewt")
     if (p / "en_ewt-ud-dev.conllu.gz").is_file()),
    None,
)  # fmt: skip
needs_ewt = pytest.mark.skipif(EWT is None, reason="UD English EWT not found under data/")

GOOD = """# sent_id = a
# text = Don't go.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t0:root\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = b
1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def write(tmp_path: Path, text: str, name: str = "x.conllu") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_words_tags_and_skips_multiword_and_empty_nodes(tmp_path: Path) -> None:
    sentences = read_conllu(write(tmp_path, GOOD))
    assert [s.words for s in sentences] == [["Do", "n't", "go", "."], ["Hi"]]
    assert sentences[0].upos == ["AUX", "PART", "VERB", "PUNCT"]
    assert sentences[0].xpos == ["VBP", "RB", "VB", "."]
    assert sentences[0].comments == ["# sent_id = a", "# text = Don't go."]
    # Writing back keeps every line and adds the MISC items to the words only.
    text = sentences[0].to_conllu(["Tag=1", "Tag=2", "Tag=3", "Tag=4"])
    lines = text.splitlines()
    assert lines[2].endswith("\t_") and lines[2].startswith("1-2\t")
    assert lines[5].endswith("SpaceAfter=No|Tag=3")
    assert read_conllu(write(tmp_path, text, "y.conllu"))[0].words == sentences[0].words


def test_gzip_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "x.conllu.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(GOOD)
    assert len(read_conllu(path)) == 2
    assert len(read_conllu(path, limit=1)) == 1


@pytest.mark.parametrize(
    ("line", "lineno", "message"),
    [
        ("1\tDo\tdo\tAUX", 2, "expected 10 tab-separated columns, got 4"),
        ("x\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_", 2, "bad ID 'x'"),
        ("2\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_", 2, "ID 2 out of order"),
        ("1\t\tdo\tAUX\tVBP\t_\t3\taux\t_\t_", 2, "empty FORM"),
        ("1-a\tDo\t_\t_\t_\t_\t_\t_\t_\t_", 2, "bad ID '1-a'"),
    ],
)
def test_malformed_lines_name_file_and_line(
    tmp_path: Path, line: str, lineno: int, message: str
) -> None:
    path = write(tmp_path, f"# sent_id = a\n{line}\n\n")
    with pytest.raises(ValueError, match=rf"x\.conllu:{lineno}: malformed CoNLL-U: .*{message}"):
        read_conllu(path)


def test_comment_inside_a_sentence_and_sentence_without_words(tmp_path: Path) -> None:
    row = "1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_"
    with pytest.raises(ValueError, match=r"x\.conllu:3: .*comment line after"):
        read_conllu(write(tmp_path, f"{row}\n{row.replace('1', '2', 1)}\n# late\n\n"))
    with pytest.raises(ValueError, match=r"x\.conllu:1: .*without any word"):
        read_conllu(write(tmp_path, "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_\n\n"))


def test_vocabulary() -> None:
    vocab = Vocabulary.from_counts(Counter({"a": 3, "b": 1, "c": 3}), min_count=2)
    assert vocab.items == ["<pad>", "<unk>", "a", "c"]
    assert vocab.encode(["c", "b", "zzz"]) == [3, 1, 1]
    with pytest.raises(KeyError, match="'q'"):
        Vocabulary(["x"], unknown=None)["q"]


def test_bucketing_covers_every_example_once_with_similar_lengths() -> None:
    lengths = torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = BucketBatchSampler(
        lengths, 32, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(
        batches
    )
    assert spread < 10  # unbucketed batches of 32 span about 55
    assert list(BucketBatchSampler(lengths, 32, shuffle=False)) == list(
        BucketBatchSampler(lengths, 32, shuffle=False)
    )


@needs_ewt
def test_shared_ewt_files() -> None:
    dev = read_conllu(EWT / "en_ewt-ud-dev.conllu.gz")
    assert len(dev) == 2001  # the counts of the data README
    assert sum(len(s) for s in dev) == 25147
    assert {t for s in dev for t in s.upos} == set(UPOS_TAGS)


@needs_ewt
def test_datamodule_on_a_limited_ewt() -> None:
    dm = UDTaggingDataModule(data_dir=str(EWT.parent), limit=200, batch_size=16)
    dm.setup("fit")
    assert dm.input_dim == len(dm.vocabulary)
    assert dm.vocabulary.items[:2] == ["<pad>", "<unk>"]
    batch = next(iter(dm.train_dataloader()))
    size = int(batch["lengths"].max())
    assert batch["x"].shape == batch["upos"].shape == batch["xpos"].shape == (16, size)
    assert batch["chars"].shape[:2] == (16, size)
    pad = torch.arange(size) >= batch["lengths"].unsqueeze(-1)
    assert (batch["x"][pad] == 0).all() and (batch["upos"][pad] == -1).all()
    assert (batch["x"][~pad] > 0).all() and (batch["upos"][~pad] >= 0).all()
    # Gold tags decode to the words' own tags.
    i = 0
    sentence = batch["sentences"][i]
    n = len(sentence)
    assert [UPOS_TAGS[t] for t in batch["upos"][i, :n]] == sentence.upos
    assert [dm.tag_names["xpos"][t] for t in batch["xpos"][i, :n]] == sentence.xpos
    assert dm.word_chars.shape == (len(dm.vocabulary), dm.max_word_length)


def test_missing_files_fail_fast_saying_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zoo.data.ud as ud

    monkeypatch.setattr(ud, "probe_hub", lambda: "no network here")
    dm = UDTaggingDataModule(treebank="xx_none", data_dir=str(tmp_path))
    with pytest.raises(DataNotFoundError, match=r"xx_none-ud-\{train,dev,test\}\.conllu"):
        dm.setup()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="min_count"):
        UDTaggingDataModule(min_count=0)
    with pytest.raises(ValueError, match="predict_split"):
        UDTaggingDataModule(predict_split="valid")
