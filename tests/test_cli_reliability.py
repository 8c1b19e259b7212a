"""The command line on bad and edge inputs: checkpoints that carry their data, one-line errors.

Each test is one row of ``docs/reliability.md`` ("Command line and checkpoints").
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.models.cases import quiet_trainer_args, synthetic_args
from tests.test_cli import TINY_VAE, FailAt, run_train_py
from zoo.cli import ConfigError, ZooCLI, main
from zoo.estimators import (
    ARM,
    VIMCO,
    DisARM,
    Exact,
    GappedStraightThrough,
    GumbelCRF,
    GumbelRao,
    GumbelSoftmax,
    PerturbAndMAP,
    Reinforce,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
    UnorderedSetReinforce,
)
from zoo.estimators.compatibility import (
    IncompatibleEstimatorError,
    applies_to,
    check_estimator,
    compatibility_table,
)
from zoo.structures import (
    Bernoulli,
    Categorical,
    DependencyCRF,
    LinearChainCRF,
    NonProjectiveDependencyCRF,
    TreeCRF,
)

ROOT = Path(__file__).resolve().parents[1]
TAGGER = ROOT / "configs" / "tagger" / "hmm.yaml"
# A tagger config whose data block has the class the run uses (as every tagger config does).
TINY_DATA = {
    "class_path": "zoo.data.SyntheticHMMDataModule",
    "init_args": {
        "num_states": 4,
        "num_train": 32,
        "num_val": 16,
        "num_test": 16,
        "batch_size": 16,
    },
}
TINY_TAGGER = [
    "--config", "tagger.yaml", "--model.num_tags=4",
    "--model.gold_tags=[states]", "--model.embedding_dim=8", "--model.hidden_size=8",
    *quiet_trainer_args(),
]  # fmt: skip
VAE = ["--model.estimator=GumbelSoftmax", *TINY_VAE, *synthetic_args(), *quiet_trainer_args()]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch) -> Path:
    return enter_tmp(tmp_path, monkeypatch)


def enter_tmp(tmp_path: Path, monkeypatch) -> Path:
    """Run in ``tmp_path``, with a tiny tagger config there and no traceback switch set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py"])  # pytest's own arguments are not the CLI's
    config = {**yaml.safe_load(TAGGER.read_text()), "data": TINY_DATA}
    (tmp_path / "tagger.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.delenv("ZOO_TRACEBACK", raising=False)
    return tmp_path


def one_line_error(capsys, args: list[str]) -> str:
    """The error ``train.py`` prints for ``args``: exit status 2, the message first, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[0].startswith("error: ") and "Traceback" not in "\n".join(err), err
    assert "ZOO_TRACEBACK=1" in err[-1], err  # the message, then the hint
    return err[0]


# ------------------------------------------------------------- checkpoints carry their data
def test_test_from_a_checkpoint_uses_the_data_it_was_trained_on(in_tmp) -> None:
    # fit on a 30-word vocabulary; test without repeating --data.vocab_size
    ZooCLI(["fit", *TINY_TAGGER, "--data.vocab_size=30", "--trainer.max_steps=2"])
    ckpt = next(in_tmp.glob("lightning_logs/tagger/version_0/checkpoints/last.ckpt"))
    tested = ZooCLI(["test", *TINY_TAGGER, f"--ckpt_path={ckpt}"])
    assert tested.datamodule.vocab_size == 30
    assert tested.model.input_dim == 32  # 30 words, <pad> and <unk>
    assert float(tested.trainer.callback_metrics["test/nll"]) > 0
    # What the command line says still wins over the checkpoint's data settings...
    again = ZooCLI(["test", *TINY_TAGGER, f"--ckpt_path={ckpt}", "--data.batch_size=4"])
    assert again.datamodule.batch_size == 4 and again.datamodule.vocab_size == 30


@pytest.mark.parametrize("family", ["vae", "tagger"])
def test_a_checkpoint_alone_is_enough_to_test_and_predict(in_tmp, family: str) -> None:
    """``train.py test --ckpt_path run.ckpt`` without the config: "test.model and test.data
    are required"; now the checkpoint gives both, and the result is the full command's."""
    args = TINY_TAGGER if family == "tagger" else VAE
    ZooCLI(["fit", *args, "--trainer.max_steps=2"])
    ckpt = next(in_tmp.glob(f"lightning_logs/{family}/version_0/checkpoints/last.ckpt"))
    full = ZooCLI(["test", *args, f"--ckpt_path={ckpt}"])
    alone = ZooCLI(["test", "--ckpt_path", str(ckpt), *quiet_trainer_args()])
    assert type(alone.model) is type(full.model)
    assert alone.model.hparams == full.model.hparams
    key = "test/nll" if family == "tagger" else "test/neg_elbo"
    assert float(alone.trainer.callback_metrics[key]) == float(full.trainer.callback_metrics[key])
    # the command line still applies on top
    alone = ZooCLI(["test", f"--ckpt_path={ckpt}", "--data.batch_size=4", *quiet_trainer_args()])
    assert alone.datamodule.batch_size == 4
    predicted = ZooCLI(["predict", f"--ckpt_path={ckpt}", *quiet_trainer_args()])
    assert predicted.trainer.predict_loop.predictions


def test_data_that_does_not_fit_the_checkpoint_is_one_line(in_tmp, capsys) -> None:
    ZooCLI(["fit", *TINY_TAGGER, "--data.vocab_size=30", "--trainer.max_steps=1"])
    ckpt = next(in_tmp.glob("lightning_logs/tagger/version_0/checkpoints/last.ckpt"))
    line = one_line_error(
        capsys, ["test", *TINY_TAGGER, f"--ckpt_path={ckpt}", "--data.vocab_size=40"]
    )
    assert (
        "the data gives input_dim=42, but the checkpoint's model was trained with input_dim=32"
        in line
    )


def test_test_with_last_builds_the_model_from_the_checkpoint(in_tmp) -> None:
    ZooCLI(["fit", *VAE, "--model.hidden_sizes=[8]", "--trainer.max_steps=2"])
    # Another hidden size on the command line: the checkpoint's wins, with --ckpt_path last too.
    tested = ZooCLI(["test", *VAE, "--model.hidden_sizes=[5]", "--ckpt_path", "last"])
    assert tested.model.hparams.hidden_sizes == [8]


def test_a_checkpoint_of_another_model_class_is_one_line(in_tmp, capsys) -> None:
    ZooCLI(["fit", *TINY_TAGGER, "--trainer.max_steps=1"])
    ckpt = next(in_tmp.glob("lightning_logs/tagger/version_0/checkpoints/last.ckpt"))
    line = one_line_error(capsys, ["test", *VAE, f"--ckpt_path={ckpt}"])
    assert "holds a NeuralHMMTagger" in line and "the command builds a VAE" in line


@pytest.mark.parametrize("content", [b"not a checkpoint\n", None], ids=["text", "missing"])
def test_a_file_that_is_no_checkpoint_is_one_line(in_tmp, capsys, content) -> None:
    path = in_tmp / "model.ckpt"
    if content is not None:
        path.write_bytes(content)
    line = one_line_error(capsys, ["test", *VAE, f"--ckpt_path={path}"])
    expected = "is not a checkpoint" if content is not None else "no such file"
    assert line.startswith(f"error: --ckpt_path {path}") and expected in line


# ------------------------------------------------------------------ resume and interrupt
@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_last_with_nothing_to_resume_is_an_error(in_tmp, capsys, subcommand: str) -> None:
    line = one_line_error(
        capsys, [subcommand, *VAE, "--trainer.max_steps=1", "--ckpt_path", "last"]
    )
    assert "--ckpt_path last: no run of this model and estimator" in line
    assert not (in_tmp / "lightning_logs").exists() or not list(in_tmp.rglob("*.ckpt"))


def test_the_interrupt_checkpoint_is_named_after_its_step_and_says_why(in_tmp) -> None:
    fail = ["--trainer.callbacks+=tests.test_cli.FailAt", "--trainer.callbacks.ctrl_c=true",
            "--trainer.callbacks.step=7", "--trainer.log_every_n_steps=5"]  # fmt: skip
    result = run_train_py("fit", *VAE, *fail, "--trainer.max_steps=100")
    assert result.returncode == 1  # Lightning's exit status after Ctrl-C
    folder = in_tmp / "lightning_logs" / "vae" / "version_0" / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    # Lightning named it after the last logged step (4); it holds step 7.
    assert "epoch=1-step=7.ckpt" in names, names
    assert torch.load(folder / "epoch=1-step=7.ckpt", weights_only=True)["global_step"] == 7
    text = result.stdout + result.stderr
    assert "Training stopped by Ctrl-C at step 7; saved lightning_logs/vae/version_0" in text
    assert "--ckpt_path last" in text and "was raised with message" not in text
    assert FailAt  # the callback the command line names


def test_fast_dev_run_writes_nothing(in_tmp) -> None:
    ZooCLI(["fit", *VAE, "--trainer.fast_dev_run=true"])
    assert not list(in_tmp.rglob("*.ckpt")), list(in_tmp.rglob("*"))


# ---------------------------------------------------------------- one-line errors
def test_missing_data_is_one_line(in_tmp, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ZOO_DATA_DIR", str(in_tmp / "nowhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["fit", "--config", str(ROOT / "configs" / "vae" / "categorical.yaml")]
    line = one_line_error(capsys, [*args, "--trainer.max_steps=1", *quiet_trainer_args()])
    assert "nowhere" in line or "MNIST" in line


def test_a_trainer_setting_lightning_refuses_is_one_line(in_tmp, capsys) -> None:
    line = one_line_error(capsys, ["fit", *VAE, "--trainer.max_steps=-5"])
    assert "max_steps" in line and "-5" in line


def test_traceback_on_request(in_tmp) -> None:
    result = run_train_py("fit", *VAE, "--trainer.max_steps=-5", extra_env={"ZOO_TRACEBACK": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


# ------------------------------------------------ estimator × structure × model
STRUCTURES = {
    Categorical: lambda: Categorical(torch.randn(2, 3, 4)),
    Bernoulli: lambda: Bernoulli(torch.randn(2, 3)),
    LinearChainCRF: lambda: LinearChainCRF(torch.randn(2, 3, 3, 3)),
    DependencyCRF: lambda: DependencyCRF(torch.randn(2, 4, 4)),
    NonProjectiveDependencyCRF: lambda: NonProjectiveDependencyCRF(torch.randn(2, 4, 4)),
    TreeCRF: lambda: TreeCRF(torch.randn(2, 4, 4, 1)),
}
ESTIMATORS = {
    Exact: Exact,
    GumbelSoftmax: GumbelSoftmax,
    STGumbelSoftmax: STGumbelSoftmax,
    StraightThrough: StraightThrough,
    PerturbAndMAP: PerturbAndMAP,
    ReinMax: ReinMax,
    GappedStraightThrough: GappedStraightThrough,
    Reinforce: lambda: Reinforce(num_samples=2),
    ARM: ARM,
    DisARM: DisARM,
    GumbelCRF: GumbelCRF,
    GumbelRao: lambda: GumbelRao(num_rao=2),
    UnorderedSetReinforce: lambda: UnorderedSetReinforce(num_samples=2),
    VIMCO: lambda: VIMCO(num_samples=2),
}


@pytest.mark.parametrize("structure", list(STRUCTURES), ids=lambda s: s.__name__)
@pytest.mark.parametrize("estimator", list(ESTIMATORS), ids=lambda e: e.__name__)
def test_the_compatibility_table_is_what_the_code_does(estimator, structure) -> None:
    """Where the table says ✓ the estimator runs; where –, it raises at call time and at build."""
    q = STRUCTURES[structure]().with_potentials(
        STRUCTURES[structure]().log_potentials.requires_grad_()
    )
    est = ESTIMATORS[estimator]().train()

    def run() -> None:
        out = est(q, lambda z: z.flatten(2).sum(-1))
        out.objective.sum().backward()

    if applies_to(estimator, structure):
        check_estimator(est, structure)
        run()
    else:
        with pytest.raises(IncompatibleEstimatorError, match=f"{estimator.__name__} needs"):
            check_estimator(est, structure)
        with pytest.raises(TypeError):
            run()


def test_the_documented_table_is_the_generated_one() -> None:
    table = compatibility_table(ESTIMATORS, STRUCTURES)
    assert table in (ROOT / "docs" / "estimator-reference.md").read_text()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.estimator=GumbelCRF"], "GumbelCRF needs a structure with relaxed forward-filtering"),
        (["--model.estimator=DisARM"], "DisARM needs a Bernoulli structure (independent bits); VAE builds a Categorical"),
    ],
    ids=["gumbel-crf-on-categorical", "disarm-on-categorical"],
)  # fmt: skip
def test_an_estimator_that_does_not_apply_is_one_line(in_tmp, capsys, args, expected) -> None:
    line = one_line_error(
        capsys, ["fit", *TINY_VAE, *args, *synthetic_args(), "--trainer.max_steps=1"]
    )
    assert expected in line


def test_vimco_on_a_model_without_a_joint_says_so(in_tmp, capsys) -> None:
    # The config's estimator has num_samples: 1, which VIMCO would reject first.
    line = one_line_error(capsys, ["fit", *TINY_TAGGER, "--model.estimator=VIMCO"])
    assert "this model has no joint likelihood (NeuralHMMTagger writes no joint_nll" in line


def test_gumbel_crf_on_a_dependency_tree_is_one_line(in_tmp, capsys) -> None:
    config = ROOT / "configs" / "listops" / "dependency.yaml"
    args = ["fit", "--config", str(config), "--model.estimator=GumbelCRF", "--data.num_train=8",
            "--data.num_val=8", "--trainer.max_steps=1", *quiet_trainer_args()]  # fmt: skip
    line = one_line_error(capsys, args)
    assert "GumbelCRF needs" in line and "builds a DependencyCRF" in line


def test_vimco_still_trains_the_vae(in_tmp) -> None:
    cli = ZooCLI(["fit", *TINY_VAE, "--model.estimator=VIMCO", *synthetic_args(),
                  *quiet_trainer_args(), "--trainer.max_steps=1"])  # fmt: skip
    assert isinstance(cli.model.estimator, VIMCO)
    assert isinstance(cli.trainer, L.Trainer) and ConfigError


def test_an_empty_listops_file_is_one_line(in_tmp, capsys) -> None:
    empty = in_tmp / "empty.tsv"
    empty.write_text("")
    config = ROOT / "configs" / "listops" / "dependency.yaml"
    args = ["fit", "--config", str(config), f"--data.val_file={empty}", "--data.num_train=8",
            "--trainer.max_steps=1", *quiet_trainer_args()]  # fmt: skip
    line = one_line_error(capsys, args)
    assert "empty.tsv" in line


# ------------------------------------------------------------- SIGTERM during evaluation
class SigtermAt(L.Callback):
    """Sends SIGTERM to its own process ``seconds`` into test or predict batch ``batch`` (or
    training step ``batch``);
    writes ``finished_<i>`` when batch ``i`` ends (for the SIGTERM tests).
    """

    def __init__(self, batch: int = 0, seconds: float = 0.0) -> None:
        self.batch = batch
        self.seconds = seconds

    def _start(self, batch_idx: int) -> None:
        if batch_idx == self.batch:
            kill = threading.Timer(self.seconds, os.kill, (os.getpid(), signal.SIGTERM))
            kill.daemon = True
            kill.start()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._start(batch_idx)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start(batch_idx)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start(trainer.global_step)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        Path(f"finished_{batch_idx}").touch()

    on_predict_batch_end = on_test_batch_end


def test_sigterm_stops_a_test_inside_its_batch(in_tmp) -> None:
    """A 900-symbol expression is one batch of many seconds: Lightning finished it, then
    exited 0 as if the test had run; SIGTERM now stops it where it is, exit status 143."""
    digits = " ".join(str(i % 10) for i in range(898))
    (in_tmp / "long.tsv").write_text(f"9\t[MAX {digits} ]\n")
    config = ROOT / "configs" / "listops" / "dependency.yaml"
    result = run_train_py(
        "test", "--config", str(config), "--data.test_file=long.tsv", "--data.num_train=8",
        "--trainer.callbacks+=tests.test_cli_reliability.SigtermAt",
        "--trainer.callbacks.seconds=0.5", *quiet_trainer_args(),
    )  # fmt: skip
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert "test stopped by SIGTERM" in result.stderr
    assert not (in_tmp / "finished_0").exists()  # stopped inside the batch


def test_sigterm_during_predict_leaves_no_half_written_file(in_tmp) -> None:
    out = in_tmp / "tags.conllu"
    result = run_train_py(
        "predict", *TINY_TAGGER, "--data.num_test=64",
        "--trainer.callbacks+=zoo.callbacks.InducedTagWriter",
        f"--trainer.callbacks.output_path={out}",
        "--trainer.callbacks+=tests.test_cli_reliability.SigtermAt", "--trainer.callbacks.batch=1",
    )  # fmt: skip
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert "predict stopped by SIGTERM" in result.stderr
    assert (in_tmp / "finished_0").exists()  # the first batch had been written...
    assert not out.exists() and not Path(f"{out}.part").exists()  # ...and nothing is left


def test_sigterm_during_fit_saves_and_exits_143(in_tmp) -> None:
    """Lightning stops fit at the end of the step and saves; the exit status was 0."""
    result = run_train_py(
        "fit", *VAE, "--trainer.max_steps=200",
        "--trainer.callbacks+=tests.test_cli_reliability.SigtermAt", "--trainer.callbacks.batch=3",
    )  # fmt: skip
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    text = result.stdout + result.stderr
    assert "Training stopped by SIGTERM at step" in text and "--ckpt_path last" in text
    assert list(in_tmp.glob("lightning_logs/vae/version_0/checkpoints/last.ckpt"))
