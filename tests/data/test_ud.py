"""The CoNLL-U reader on the shared EWT files and on malformed input; vocabularies and batches."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.conftest import EWT_FILES, find_data_dir
from zoo.data import DataError, DataNotFoundError
from zoo.data.ud import UPOS_TAGS, BucketBatchSampler, UDTaggingDataModule, Vocabulary, read_conllu

DATA = find_data_dir(EWT_FILES)
EWT = None if DATA is None else DATA / "ud_english_ewt"
needs_ewt = pytest.mark.skipif(
    EWT is None, reason="UD English EWT not found under $ZOO_DATA_DIR or data/"
)

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
    with pytest.raises(DataError, match=rf"x\.conllu:{lineno}: malformed CoNLL-U: .*{message}"):
        read_conllu(path)


def test_comment_inside_a_sentence_and_sentence_without_words(tmp_path: Path) -> None:
    row = "1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_"
    with pytest.raises(DataError, match=r"x\.conllu:3: .*comment line after"):
        read_conllu(write(tmp_path, f"{row}\n{row.replace('1', '2', 1)}\n# late\n\n"))
    with pytest.raises(DataError, match=r"x\.conllu:1: .*without any word"):
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
    """The hub probe asks for the UD dataset; its failure was worded as 'ylecun/mnist is unreachable'."""
    import zoo.data.hub as hub

    monkeypatch.setattr(hub, "_hub_endpoint", lambda: "http://127.0.0.1:9")  # nothing listens
    for proxy in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
        monkeypatch.delenv(proxy.upper(), raising=False)
    dm = UDTaggingDataModule(treebank="xx_none", data_dir=str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert message.startswith("UD treebank 'xx_none': no local CoNLL-U files")
    assert "xx_none-ud-{train,dev,test}.conllu" in message
    assert "127.0.0.1:9/api/datasets/universal_dependencies is unreachable" in message
    assert "mnist" not in message


def sentence(ident: int, length: int) -> str:
    """A CoNLL-U sentence ``# sent_id = <ident>`` of ``length`` words."""
    rows = [
        f"{n}\tw{(ident + n) % 7}\t_\t{UPOS_TAGS[n % 17]}\tX{n % 3}\t_\t0\tdep\t_\t_"
        for n in range(1, length + 1)
    ]
    return "\n".join([f"# sent_id = {ident}", *rows]) + "\n\n"


def write_treebank(
    root: Path, lengths: list[int], splits: tuple[str, ...] = ("train", "dev", "test")
) -> Path:
    """``root/xx_tiny/xx-ud-{split}.conllu``, sentences of the given lengths in each; the folder."""
    folder = root / "xx_tiny"
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        text = "".join(sentence(i, n) for i, n in enumerate(lengths))
        (folder / f"xx-ud-{split}.conllu").write_text(text, encoding="utf-8")
    return folder


LENGTHS = [5, 1, 9, 3, 7, 2, 8, 4, 6, 1, 9, 2, 5]


def test_missing_dev_and_test_files_name_the_treebank_not_the_hub(tmp_path: Path) -> None:
    folder = write_treebank(tmp_path, LENGTHS, splits=("train",))
    dm = UDTaggingDataModule(treebank="xx", data_dir=str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert message.startswith(f"UD treebank 'xx': {folder} holds xx-ud-train.conllu but not ")
    assert "xx-ud-dev.conllu[.gz], xx-ud-test.conllu[.gz]" in message
    assert "mnist" not in message and "hub" not in message


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_an_empty_split_file_is_an_error_naming_it(tmp_path: Path, split: str) -> None:
    """It ran with no metrics and exit code 0."""
    folder = write_treebank(tmp_path, LENGTHS)
    (folder / f"xx-ud-{split}.conllu").write_text("", encoding="utf-8")
    dm = UDTaggingDataModule(treebank="xx", data_dir=str(tmp_path))
    with pytest.raises(
        DataError,
        match=rf"xx-ud-{split}\.conllu: the {split} split of UD treebank 'xx' has no sentence",
    ):
        dm.setup()


def test_a_length_cut_that_keeps_no_training_sentence_is_an_error(tmp_path: Path) -> None:
    write_treebank(tmp_path, [4, 6, 5])
    dm = UDTaggingDataModule(treebank="xx", data_dir=str(tmp_path), max_train_length=3)
    with pytest.raises(
        DataError,
        match=r"max_train_length=3 keeps no training sentence of .*xx-ud-train\.conllu \(the shortest has 4 words\)",
    ):
        dm.setup()


def test_a_corrupt_or_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    """A truncated .conllu.gz gave a bare EOFError with no file name."""
    whole = gzip.compress("".join(sentence(i, 8) for i in range(400)).encode())
    truncated = tmp_path / "cut.conllu.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        DataError,
        match=r"cut\.conllu\.gz:\d+: cannot read the CoNLL-U file after line \d+ \(EOFError",
    ):
        read_conllu(truncated)
    not_gzip = tmp_path / "plain.conllu.gz"
    not_gzip.write_text(GOOD, encoding="utf-8")
    with pytest.raises(DataError, match=r"plain\.conllu\.gz:1: cannot read .*BadGzipFile"):
        read_conllu(not_gzip)
    latin = tmp_path / "latin.conllu"
    latin.write_bytes(GOOD.replace("Hi", "H\u00e9").encode("latin-1"))
    with pytest.raises(
        DataError, match=r"latin\.conllu:\d+: cannot read .*UnicodeDecodeError.*not UTF-8"
    ):
        read_conllu(latin)
    with pytest.raises(FileNotFoundError, match="no CoNLL-U file at .*absent.conllu"):
        read_conllu(tmp_path / "absent.conllu")


def test_predict_batches_keep_the_file_order(tmp_path: Path) -> None:
    write_treebank(tmp_path, LENGTHS)
    dm = UDTaggingDataModule(treebank="xx", data_dir=str(tmp_path), min_count=1, batch_size=4)
    dm.setup("predict")
    ids = [s.comments[0] for b in dm.predict_dataloader() for s in b["sentences"]]
    assert ids == [f"# sent_id = {i}" for i in range(len(LENGTHS))]
    # test batches still group similar lengths (their order does not matter)
    test_lengths = [int(n) for b in dm.test_dataloader() for n in b["lengths"]]
    assert test_lengths == sorted(LENGTHS)


def test_train_py_predict_writes_the_sentences_in_file_order(tmp_path: Path, monkeypatch) -> None:
    """``train.py predict`` with `InducedTagWriter` wrote them in length-bucket order."""
    import sys

    from tests.models.cases import quiet_trainer_args
    from zoo.cli import ZooCLI

    write_treebank(tmp_path, LENGTHS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    out = tmp_path / "tags.conllu"
    config = Path(__file__).resolve().parents[2] / "configs" / "tagger" / "hmm.yaml"
    ZooCLI([
        "predict", "--config", str(config), "--data.treebank=xx", f"--data.data_dir={tmp_path}",
        "--data.min_count=1", "--data.batch_size=4", "--model.num_tags=3",
        "--model.embedding_dim=8", "--model.hidden_size=8", *quiet_trainer_args(),
        "--trainer.callbacks+=zoo.callbacks.InducedTagWriter",
        f"--trainer.callbacks.output_path={out}",
    ])  # fmt: skip
    written = read_conllu(out)
    assert [s.comments[0] for s in written] == [f"# sent_id = {i}" for i in range(len(LENGTHS))]
    assert [len(s) for s in written] == LENGTHS
    assert all(row[9].startswith("Tag=") for s in written for row in s.rows)


def test_the_tests_find_the_data_where_the_datamodule_does(tmp_path: Path, monkeypatch) -> None:
    """With the data only under $ZOO_DATA_DIR, 20 UD tests skipped: they looked in data/ alone."""
    for name in EWT_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(tmp_path / name, "wt", encoding="utf-8") as handle:
            handle.write(GOOD)
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    assert find_data_dir(EWT_FILES) == tmp_path.resolve()
    found = UDTaggingDataModule().local_files()
    assert found is not None and {p.parent.parent.resolve() for p in found.values()} == {
        tmp_path.resolve()
    }


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="min_count"):
        UDTaggingDataModule(min_count=0)
    with pytest.raises(ValueError, match="predict_split"):
        UDTaggingDataModule(predict_split="valid")
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        UDTaggingDataModule(limit=0)


@pytest.mark.parametrize("limit", [0, -1, 1.5])
def test_read_conllu_refuses_a_limit_below_one(tmp_path: Path, limit) -> None:
    """``read_conllu(path, limit=0)`` (or -1) returned the first sentence, ``limit=1.5`` two."""
    path = write(tmp_path, GOOD)
    with pytest.raises(ValueError, match=rf"read_conllu: limit must be (>= 1|an int), got {limit}"):
        read_conllu(path, limit=limit)
    assert len(read_conllu(path, limit=1)) == 1


def test_crlf_line_ends_and_no_final_blank_line_read_the_same(tmp_path: Path) -> None:
    crlf = write(tmp_path, GOOD.rstrip("\n").replace("\n", "\r\n"), "crlf.conllu")
    expected = read_conllu(write(tmp_path, GOOD))
    got = read_conllu(crlf)
    assert [s.words for s in got] == [s.words for s in expected]
    assert [s.rows for s in got] == [s.rows for s in expected]
