"""The newcomer probe's command-line inputs that had no test of their own.

Each test is a row of ``docs/reliability.md`` ("The newcomer probe, rerun"):
bad values give their message first, alone, exit status 2; edge values run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.models.cases import quiet_trainer_args
from tests.test_cli_reliability import TINY_TAGGER, VAE, enter_tmp, one_line_error
from zoo.cli import ZooCLI

ROOT = Path(__file__).resolve().parents[1]
TAGGER = ROOT / "configs" / "tagger" / "hmm.yaml"
LISTOPS = ROOT / "configs" / "listops" / "dependency.yaml"
TAGGER_ARGS = TINY_TAGGER
LISTOPS_ARGS = [
    "--config", str(LISTOPS), "--data.num_train=8", "--data.num_val=8", "--data.batch_size=4",
    "--model.embedding_dim=8", "--model.hidden_dim=8", "--model.score_dim=8", *quiet_trainer_args(),
]  # fmt: skip


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch) -> Path:
    return enter_tmp(tmp_path, monkeypatch)


# -------------------------------------------------------------- bad values: one line each
BAD_VALUES = {
    "unknown-estimator": (
        ["fit", *VAE, "--model.estimator=NoSuchEstimator"],
        "error: model.estimator: Expected a dot import path string: NoSuchEstimator",
    ),
    "unknown-baseline": (
        ["fit", *VAE, "--model.estimator=Reinforce", "--model.estimator.baseline=NoSuchBaseline"],
        "error: model.estimator.baseline: Expected a dot import path string: NoSuchBaseline",
    ),
    "unknown-key": (
        ["fit", *VAE, "--model.no_such_key=1"],
        "error: model: Option 'no_such_key' is not accepted",
    ),
    "lr-abc": (
        ["fit", *VAE, "--model.lr=abc"],
        "error: model.lr: Expected a <class 'float'>. Got value: abc",
    ),
    "max_epochs-abc": (
        ["fit", *VAE, "--trainer.max_epochs=abc"],
        "error: trainer.max_epochs: Expected a <class 'int'>. Got value: abc",
    ),
    "batch_size-0": (
        ["fit", *VAE, "--data.batch_size=0"],
        "error: batch_size must be >= 1, got 0",
    ),
    "num_tags-0": (
        ["fit", *TAGGER_ARGS, "--model.num_tags=0"],
        "error: num_tags must be an integer ≥ 1, got 0",
    ),
    "temperature-negative": (
        ["fit", *VAE, "--model.estimator.temperature=-1"],
        "error: temperature must be a finite number > 0, got -1.0",
    ),
    "missing-config": (
        ["fit", "--config", "no_such.yaml"],
        "error: config: File does not exist: ",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_is_one_line_naming_it(in_tmp, capsys, case: str) -> None:
    args, message = BAD_VALUES[case]
    line = one_line_error(capsys, [*args, "--trainer.max_steps=1"])
    assert line.startswith(message), line
    assert not list(in_tmp.rglob("*.ckpt"))


def test_listops_max_length_one_says_what_to_change(in_tmp, capsys) -> None:
    line = one_line_error(capsys, ["fit", *LISTOPS_ARGS, "--data.max_length=1"])
    assert "max_length=1" in line and "allow longer or deeper expressions" in line, line


def test_vimco_on_m2_says_it_has_no_joint(in_tmp, capsys, monkeypatch) -> None:
    """It said "VIMCO needs num_samples ≥ 2" (the config's estimator has one sample).
    The check comes before the data is read: no MNIST needed."""
    monkeypatch.setenv("ZOO_DATA_DIR", str(in_tmp / "nowhere"))
    args = ["fit", "--config", str(ROOT / "configs" / "m2" / "m2.yaml"),
            "--model.estimator=VIMCO", *quiet_trainer_args()]  # fmt: skip
    line = one_line_error(capsys, args)
    assert "this model has no joint likelihood (M2 writes no joint_nll" in line, line


# ------------------------------------------------------------------------- edge values
def test_a_tagger_with_one_tag_trains(in_tmp) -> None:
    """One tag: q is a point mass, so its entropy and KL are 0 and the bound is the likelihood."""
    cli = ZooCLI(
        ["fit", *TAGGER_ARGS, "--model.num_tags=1", "--trainer.max_steps=2",
         "--trainer.log_every_n_steps=1"]
    )  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 2 and torch.isfinite(metrics["train/loss"])
    assert torch.isfinite(metrics["val/nll"]) and float(metrics["val/nll"]) > 0
    assert abs(float(metrics["val/entropy_token"])) < 1e-5 and abs(float(metrics["val/kl"])) < 1e-4
    torch.testing.assert_close(metrics["val/neg_elbo"], metrics["val/nll"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("given", "train", "val"),
    [("1", 1, 1), ("3", 3, 3), ("1.0", 8, 4), ("0.5", 4, 2)],
    ids=["int-1", "int-3", "float-1.0", "float-0.5"],
)
def test_an_integer_batch_limit_counts_batches(in_tmp, given: str, train: int, val: int) -> None:
    """``--trainer.limit_val_batches=1`` meant 1.0, every batch (jsonargparse tried
    ``float`` before ``int``); an integer is a number of batches, as Lightning documents."""
    cli = ZooCLI(
        ["fit", *VAE, "--data.batch_size=8", "--trainer.max_epochs=1",  # 8 train, 4 val batches
         "--trainer.num_sanity_val_steps=0", f"--trainer.limit_train_batches={given}",
         f"--trainer.limit_val_batches={given}", f"--trainer.limit_test_batches={given}"]
    )  # fmt: skip
    assert cli.trainer.global_step == train
    assert cli.trainer.num_val_batches == [val]
    assert isinstance(cli.trainer.limit_test_batches, int if "." not in given else float)


def test_an_integer_batch_limit_in_a_config_file_counts_batches(in_tmp) -> None:
    (in_tmp / "limits.yaml").write_text("trainer:\n  limit_val_batches: 1\n")
    cli = ZooCLI(
        ["fit", *VAE, "--config", "limits.yaml", "--data.batch_size=8", "--trainer.max_steps=1",
         "--trainer.num_sanity_val_steps=0", "--trainer.val_check_interval=1"]
    )  # fmt: skip
    assert cli.trainer.limit_val_batches == 1 and cli.trainer.num_val_batches == [1]


@pytest.mark.parametrize("sanity_check", [True, False], ids=["sanity-check", "first-step"])
def test_a_learned_baseline_on_the_tagger_is_one_line(in_tmp, capsys, sanity_check) -> None:
    """It was the right message at the end of a 70-line traceback, exit status 1."""
    args = ["fit", *TAGGER_ARGS, "--model.estimator=Reinforce", "--trainer.max_steps=2",
            "--model.estimator.baseline=LearnedBaseline"]  # fmt: skip
    if not sanity_check:
        args.append("--trainer.num_sanity_val_steps=0")
    line = one_line_error(capsys, args)
    assert line.startswith("error: LearnedBaseline(in_features=None) cannot apply: these events")
    assert "vary in size with the input" in line and "LeaveOneOutBaseline" in line
    assert "set in_features" not in line  # no size would do
    assert not list(in_tmp.rglob("*.ckpt"))  # nothing to resume
