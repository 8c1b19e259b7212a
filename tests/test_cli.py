"""The command line end to end: shorthand, help, checkpoints, resuming, TensorBoard.

Every run goes through ``zoo.cli.main`` (what ``train.py`` calls) on tiny
synthetic data, inside a temporary working directory, so ``lightning_logs/``
lands there.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.profilers import SimpleProfiler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.models.cases import quiet_trainer_args, synthetic_args
from zoo.callbacks import TemperatureAnnealing, ZooProgressBar
from zoo.cli import (
    PROGRESS_BAR_REFRESH_RATE,
    TRACEBACK_ENV,
    ConfigError,
    NullProfiler,
    ZooCLI,
    main,
)
from zoo.estimators import (
    GumbelSoftmax,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    Reinforce,
)
from zoo.models import SBN

ROOT = Path(__file__).resolve().parents[1]
VAE_CONFIG = str(ROOT / "configs" / "vae" / "categorical.yaml")

TINY_VAE = [
    "--model=VAE",
    "--model.latent=CategoricalLatent",
    "--model.latent.num_variables=3",
    "--model.latent.num_classes=4",
    "--model.hidden_sizes=[8]",
    "--model.num_importance_samples=8",
    "--model.lr=0.01",
]
# An SBN whose outer estimator is annealed and whose inner one keeps a moving average:
# both kinds of estimator state must survive checkpoints.
TINY_SBN = [
    "--model=SBN",
    "--model.latent=BernoulliLatent",
    "--model.latent.num_variables=4",
    "--model.num_importance_samples=8",
    "--model.estimator=GumbelSoftmax",
    "--model.inner_estimator=Reinforce",
    "--model.inner_estimator.baseline=MovingAverageBaseline",
    "--annealing.rate=0.1",
    "--annealing.every_n_steps=2",
    "--annealing.min_temperature=0.05",
]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not the CLI's
    return tmp_path


def fit_sbn(*extra: str, max_steps: int = 6):
    args = ["fit", *TINY_SBN, *synthetic_args("halves"), *quiet_trainer_args()]
    return ZooCLI(
        [*args, f"--trainer.max_steps={max_steps}", "--trainer.log_every_n_steps=1", *extra]
    )


def annealing(trainer: L.Trainer) -> TemperatureAnnealing:
    (callback,) = [c for c in trainer.callbacks if isinstance(c, TemperatureAnnealing)]
    return callback


def test_class_name_shorthand_swaps_the_estimator() -> None:
    args = [
        "--config",
        VAE_CONFIG,
        "--model.estimator=Reinforce",
        "--model.estimator.num_samples=4",
        "--model.estimator.baseline=LeaveOneOutBaseline",
    ]
    estimator = ZooCLI(args, run=False).model.estimator
    assert type(estimator) is Reinforce
    assert estimator.num_samples == 4
    assert type(estimator.baseline) is LeaveOneOutBaseline


@pytest.mark.parametrize(
    ("extra", "rate"),
    [
        ([], PROGRESS_BAR_REFRESH_RATE),
        (["--progress_bar_refresh_rate=1"], 1),
        (["--trainer.enable_progress_bar=false"], None),
        # A bar given in the callbacks keeps its own rate.
        (["--trainer.callbacks+=TQDMProgressBar", "--trainer.callbacks.refresh_rate=3"], 3),
    ],
    ids=["default", "every-step", "off", "configured"],
)
def test_progress_bar_refresh_rate(extra: list[str], rate: int | None) -> None:
    trainer = ZooCLI(["--config", VAE_CONFIG, *extra], run=False).trainer
    bars = [c for c in trainer.callbacks if isinstance(c, TQDMProgressBar)]
    assert [bar.refresh_rate for bar in bars] == ([] if rate is None else [rate])


def test_progress_bar_refresh_rate_below_one_is_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"--progress_bar_refresh_rate must be an integer ≥ 1, got 0"
    ):
        ZooCLI(["--config", VAE_CONFIG, "--progress_bar_refresh_rate=0"], run=False)


def test_null_profiler_by_default_and_any_other_on_request(in_tmp) -> None:
    profiler = ZooCLI(["--config", VAE_CONFIG], run=False).trainer.profiler
    assert type(profiler) is NullProfiler
    # One shared context, entered and left like any other.
    assert profiler.profile("a") is profiler.profile("b")
    with profiler.profile("[LightningModule]VAE.training_step"):
        pass
    args = ["--config", VAE_CONFIG, "--trainer.profiler=simple"]
    assert type(ZooCLI(args, run=False).trainer.profiler) is SimpleProfiler


def test_main_returns_nothing_after_a_run_so_it_can_be_a_console_script(in_tmp) -> None:
    args = ["fit", *TINY_VAE, "--model.estimator=StraightThrough", *synthetic_args()]
    assert main([*args, *quiet_trainer_args(), "--trainer.fast_dev_run=1"]) is None
    cli = main(["--config", VAE_CONFIG], run=False)
    assert type(cli.model.estimator) is GumbelSoftmax


def test_train_py_runs_as_a_script(in_tmp) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", VAE_CONFIG]
    shorthand = ["--model.estimator=StraightThrough", "--print_config"]
    result = subprocess.run(
        [*command, *shorthand], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: zoo.estimators.StraightThrough" in result.stdout


def test_help_comes_from_the_docstrings(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "VAE"])
    text = capsys.readouterr().out
    assert "the gradient estimator of E_q[−log p(x | z)]" in text
    assert "--model.num_importance_samples" in text


def test_fit_checkpoint_test_round_trip_rebuilds_the_estimators(in_tmp) -> None:
    trained = fit_sbn().model
    temperature = trained.estimator.temperature
    average = trained.inner_estimator.baseline.average.clone()
    assert temperature == pytest.approx(math.exp(-0.1 * 4))  # annealed at step 4
    assert int(trained.inner_estimator.baseline.steps) == 6
    ckpt = in_tmp / "lightning_logs" / "sbn" / "version_0" / "checkpoints" / "last.ckpt"

    # A different estimator on the command line: the checkpoint's own config wins.
    args = ["test", "--model=SBN", "--model.latent=BernoulliLatent", "--model.estimator=StraightThrough"]
    tested = ZooCLI(
        [*args, *synthetic_args("halves"), *quiet_trainer_args(), "--ckpt_path", str(ckpt)]
    )
    model = tested.model
    assert type(model.estimator) is GumbelSoftmax
    assert type(model.inner_estimator) is Reinforce
    assert type(model.inner_estimator.baseline) is MovingAverageBaseline
    assert model.estimator.temperature == pytest.approx(temperature)
    torch.testing.assert_close(model.inner_estimator.baseline.average, average)
    assert int(model.inner_estimator.baseline.steps) == 6
    assert math.isfinite(float(tested.trainer.callback_metrics["test/nll_iw"]))

    # Plain Python rebuilds it too (the default weights_only=True: only plain values inside).
    loaded = SBN.load_from_checkpoint(ckpt)
    assert loaded.estimator.temperature == pytest.approx(temperature)
    torch.testing.assert_close(loaded.inner_estimator.baseline.average, average)


def test_resume_from_last_continues_the_temperature_schedule(in_tmp) -> None:
    fit_sbn(max_steps=5)  # τ set at steps 0, 2, 4
    resumed = fit_sbn("--ckpt_path", "last", max_steps=9)
    assert resumed.trainer.global_step == 9
    callback = annealing(resumed.trainer)
    assert callback.initial_temperature == 1.0  # from the checkpoint, not the annealed τ
    assert callback.last_update_step == 8
    assert resumed.model.estimator.temperature == pytest.approx(math.exp(-0.1 * 8))
    assert resumed.model.inner_estimator.baseline.steps == 9
    # It went on in the same run directory.
    assert [p.name for p in (in_tmp / "lightning_logs" / "sbn").iterdir()] == ["version_0"]


def test_fit_with_last_and_nothing_to_resume_is_an_error(in_tmp) -> None:
    with pytest.raises(ValueError, match="leave --ckpt_path out to start a new run"):
        fit_sbn("--ckpt_path", "last", max_steps=2)


def test_test_with_last_and_no_run_is_an_error(capsys) -> None:
    args = ["test", *TINY_SBN, *synthetic_args("halves"), *quiet_trainer_args()]
    with pytest.raises(ValueError, match="no run of this model and estimator"):
        ZooCLI([*args, "--ckpt_path", "last"])
    with pytest.raises(SystemExit) as exit_info:  # train.py says it in one line
        main([*args, "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    assert "error: --ckpt_path last: no run of this model" in capsys.readouterr().err


def test_last_picks_the_run_of_the_same_experiment(in_tmp) -> None:
    fit_sbn(max_steps=3)  # version_0: Gumbel outer estimator
    other = [a for a in TINY_SBN if "estimator=GumbelSoftmax" not in a]
    args = ["fit", *other, "--model.estimator=StraightThrough", *synthetic_args("halves")]
    main([*args, *quiet_trainer_args(), "--trainer.max_steps=2"])  # version_1, newer
    resumed = fit_sbn("--ckpt_path", "last", max_steps=4)
    assert resumed.trainer.logger.version == 0
    assert resumed.trainer.global_step == 4


class FailAt(L.Callback):
    """Raise in the middle of training (for the checkpoint-on-exception test).

    Args:
        step: the global step at which to raise.
        ctrl_c: raise KeyboardInterrupt (what Ctrl-C does) instead of RuntimeError.
    """

    def __init__(self, step: int = 3, ctrl_c: bool = False) -> None:
        self.step = step
        self.ctrl_c = ctrl_c

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt if self.ctrl_c else RuntimeError("interrupted")


@pytest.mark.parametrize("ctrl_c", [False, True], ids=["exception", "ctrl-c"])
def test_an_interrupted_run_resumes_from_its_exception_checkpoint(in_tmp, ctrl_c: bool) -> None:
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl-C
    fail = ["--trainer.callbacks+=tests.test_cli.FailAt", f"--trainer.callbacks.ctrl_c={ctrl_c}"]
    try:
        with pytest.raises(SystemExit if ctrl_c else RuntimeError):
            fit_sbn(*fail, max_steps=100)
    finally:
        signal.signal(signal.SIGINT, handler)
    last = in_tmp / "lightning_logs" / "sbn" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    resumed = fit_sbn("--ckpt_path", "last", max_steps=6)
    assert resumed.trainer.global_step == 6
    assert resumed.model.inner_estimator.baseline.steps == 6  # 3 before, 3 after


def test_validate_and_predict_subcommands(in_tmp) -> None:
    fit_sbn(max_steps=2)
    common = [*TINY_SBN, *synthetic_args("halves"), *quiet_trainer_args(), "--ckpt_path", "last"]
    validated = ZooCLI(["validate", *common])
    assert math.isfinite(float(validated.trainer.callback_metrics["val/neg_elbo"]))
    predicted = ZooCLI(["predict", *common])
    assert predicted.trainer.predict_loop.predictions  # per-example losses, one tensor a batch


def test_tensorboard_shows_the_real_metrics_in_the_hparams_tab(in_tmp) -> None:
    args = ["fit", *TINY_VAE, "--model.estimator=GumbelSoftmax", *synthetic_args()]
    cli = ZooCLI(
        [*args, *quiet_trainer_args(), "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1"]
    )
    main(
        [
            "test",
            *TINY_VAE,
            "--model.estimator=GumbelSoftmax",
            *synthetic_args(),
            "--ckpt_path",
            "last",
        ]
    )
    run = in_tmp / "lightning_logs" / "vae" / "version_0"
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "hp_metric" not in scalars  # no -1 placeholder
    # The hparams session names the metrics and holds the hyperparameters.
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    names = {m.name.tag for m in experiment.experiment.metric_infos}
    assert names == {"val/neg_elbo", "test/neg_elbo", "test/nll_iw"}
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["class_path"].string_value.endswith(".VAE")
    # Each metric's series holds only real values, the last being the final one.
    val = [e.value for e in events.Scalars("val/neg_elbo")]
    assert len(val) == 2
    assert val[-1] == pytest.approx(float(cli.trainer.callback_metrics["val/neg_elbo"]))
    for name in names:
        assert all(math.isfinite(e.value) and e.value > 1 for e in events.Scalars(name)), name
    for name in ("train/neg_elbo", "train/recon", "train/kl", "train/temperature"):
        assert name in scalars


# ---------------------------------------------------------------- exact resume
RESUME_VAE = [
    "fit",
    *TINY_VAE,
    "--model.estimator=GumbelSoftmax",
    "--model.val_importance_samples=4",
    "--annealing.rate=0.05",
    "--annealing.every_n_steps=3",
    "--annealing.min_temperature=0.1",
    *synthetic_args(),
    *quiet_trainer_args(),
    "--trainer.log_every_n_steps=1",
    "--seed_everything=7",
]


def scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the one run under ``root``: tag → [(step, value)], by step."""
    (run,) = (root / "lightning_logs" / "vae").iterdir()
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    series = {}
    for tag in events.Tags()["scalars"]:
        # A resumed run logs the steps after the checkpoint again: the last value of a step wins.
        by_step = {e.step: e.value for e in events.Scalars(tag)}
        series[tag] = sorted(by_step.items())
    return series


@pytest.mark.parametrize("first", [6, 4], ids=["mid-epoch", "epoch-boundary"])
def test_a_resumed_run_equals_the_uninterrupted_one(in_tmp, first: int) -> None:
    # 4 batches an epoch: 6 steps stop in the middle of the second epoch, 4 at its start.
    total = 10
    straight = ZooCLI(
        [*RESUME_VAE, f"--trainer.max_steps={total}", f"--trainer.default_root_dir={in_tmp / 'a'}"]
    )
    root = f"--trainer.default_root_dir={in_tmp / 'b'}"
    ZooCLI([*RESUME_VAE, f"--trainer.max_steps={first}", root])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not resumable")  # Lightning's warning
        resumed = ZooCLI([*RESUME_VAE, f"--trainer.max_steps={total}", root, "--ckpt_path", "last"])
    assert resumed.trainer.global_step == straight.trainer.global_step == total
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    a, b = scalars(in_tmp / "a"), scalars(in_tmp / "b")
    assert a.keys() == b.keys()
    for tag in a:  # train/neg_elbo, train/temperature, val/neg_elbo, val/nll_iw, epoch, ...
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        torch.testing.assert_close(
            torch.tensor([v for _, v in b[tag]]), torch.tensor([v for _, v in a[tag]]), msg=tag
        )


# ---------------------------------------------------------------- command line
def run_train_py(
    *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != TRACEBACK_ENV}
    env.update({"PYTHONPATH": str(ROOT), **(extra_env or {})})
    command = [sys.executable, str(ROOT / "train.py"), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_default_root_dir_is_the_root_of_logs_and_checkpoints(in_tmp) -> None:
    root = f"--trainer.default_root_dir={in_tmp / 'runs'}"
    fit_sbn(root, max_steps=2)
    run = in_tmp / "runs" / "lightning_logs" / "sbn" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert not (in_tmp / "lightning_logs").exists()
    # --ckpt_path last looks there too, and goes on in the same run.
    resumed = fit_sbn(root, "--ckpt_path", "last", max_steps=4)
    assert resumed.trainer.global_step == 4
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]


def test_a_constructors_error_is_shown_first_and_alone(in_tmp) -> None:
    bad = ["fit", *TINY_VAE, "--model.estimator=GumbelSoftmax", "--model.estimator.temperature=0"]
    result = run_train_py(*bad, *synthetic_args())
    assert result.returncode == 2
    # Lightning's "Seed set to 0" comes before the models are built; then the error.
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Seed set" not in line]
    assert lines[0] == "error: temperature must be a finite number > 0, got 0.0", lines
    assert len(lines) <= 4 and "Traceback" not in result.stderr
    # ZOO_TRACEBACK=1 shows the whole story.
    full = run_train_py(*bad, *synthetic_args(), extra_env={TRACEBACK_ENV: "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr
    assert "temperature must be a finite number > 0" in full.stderr


def test_a_type_error_is_one_line_not_the_usage(in_tmp) -> None:
    result = run_train_py("fit", *TINY_VAE, "--model.lr=abc", *synthetic_args())
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0] == "error: model.lr: Expected a <class 'float'>. Got value: abc", lines
    assert len(lines) <= 4 and "usage:" not in result.stderr


def test_every_run_is_free_of_lightnings_tips_and_deprecations(in_tmp) -> None:
    args = ["fit", *TINY_VAE, "--model.estimator=GumbelSoftmax", *synthetic_args()]
    result = run_train_py(*args, *quiet_trainer_args(), "--trainer.max_steps=2")
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    for noise in ("💡 Tip", "litlogger", "LeafSpec", "JsonargparseDeprecationWarning"):
        assert noise not in output, noise


def test_the_annealing_schedule_has_flags(in_tmp) -> None:
    flags = [
        "--annealing.rate=0.01",
        "--annealing.min_temperature=0.2",
        "--annealing.every_n_steps=7",
        "--annealing.initial_temperature=2.0",
    ]
    cli = ZooCLI(["--config", VAE_CONFIG, *flags], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, TemperatureAnnealing)]
    assert (callback.rate, callback.min_temperature) == (0.01, 0.2)
    assert (callback.every_n_steps, callback.initial_temperature) == (7, 2.0)


def test_a_fixed_temperature_below_the_default_floor_stays_fixed(in_tmp) -> None:
    args = [*TINY_VAE, "--model.estimator=GumbelSoftmax", "--model.estimator.temperature=0.1"]
    cli = ZooCLI(["fit", *args, *synthetic_args(), *quiet_trainer_args(), "--trainer.max_steps=2"])
    assert cli.model.estimator.temperature == pytest.approx(0.1)


def test_a_schedule_in_trainer_callbacks_is_refused_with_the_way_to_give_it(in_tmp) -> None:
    older = ["--trainer.callbacks+=TemperatureAnnealing", "--trainer.callbacks.rate=0.3"]
    with pytest.raises(ValueError, match="anneals τ through the annealing: block"):
        ZooCLI(
            [*TINY_VAE, "--model.estimator=GumbelSoftmax", *synthetic_args(), *older], run=False
        )


def test_the_test_bar_moves_after_every_batch(in_tmp) -> None:
    seen: list[int] = []

    class Record(L.Callback):
        def on_test_batch_end(self, trainer, *args) -> None:
            seen.append(trainer.progress_bar_callback.test_progress_bar.n)

    cli = ZooCLI([*TINY_VAE, "--model.estimator=GumbelSoftmax", *synthetic_args()], run=False)
    bar = cli.trainer.progress_bar_callback
    assert type(bar) is ZooProgressBar and bar.refresh_rate == PROGRESS_BAR_REFRESH_RATE
    trainer = L.Trainer(callbacks=[ZooProgressBar(refresh_rate=50), Record()], logger=False)
    trainer.test(cli.model, cli.datamodule)
    assert seen == [1, 2]  # 32 test examples in batches of 16; TQDMProgressBar(50): [0, 2]


def test_val_nll_iw_is_logged_when_asked_and_the_hparams_tab_has_its_final_value(in_tmp) -> None:
    args = ["fit", *TINY_VAE, "--model.estimator=GumbelSoftmax", *synthetic_args()]
    cli = ZooCLI([*args, *quiet_trainer_args(), "--trainer.max_epochs=2"])
    assert "val/nll_iw" not in cli.trainer.callback_metrics  # the default: m = 0 in validation
    cli = ZooCLI(
        [*args, *quiet_trainer_args(), "--trainer.max_epochs=2", "--model.val_importance_samples=4"]
    )
    run = Path(cli.trainer.logger.log_dir)
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert "val/nll_iw" in {m.name.tag for m in experiment.experiment.metric_infos}
    series = events.Scalars("val/nll_iw")
    assert len(series) == 2  # one per epoch, no placeholder
    assert series[-1].value == pytest.approx(float(cli.trainer.callback_metrics["val/nll_iw"]))


def test_an_optimizer_from_the_command_line_keeps_the_models_parameter_groups(in_tmp) -> None:
    config = str(ROOT / "configs" / "listops" / "dependency.yaml")
    args = ["--config", config, "--optimizer=SGD", "--optimizer.lr=0.05", "--model.parser_lr=0.001",
            "--data.num_train=8", "--data.num_val=8"]  # fmt: skip
    cli = ZooCLI(args, run=False)
    optimizer = cli.model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert type(optimizer) is torch.optim.SGD
    parser = {id(p) for p in cli.model.posterior_parameters()}
    lrs = {g["lr"] for g in optimizer.param_groups if {id(p) for p in g["params"]} <= parser}
    rest = [g["lr"] for g in optimizer.param_groups if not {id(p) for p in g["params"]} & parser]
    assert lrs == {0.001} and rest == [0.05]  # the parser's own rate; --optimizer.lr elsewhere
    scheduled = [*args, "--lr_scheduler=StepLR", "--lr_scheduler.step_size=10"]
    with pytest.raises(ConfigError, match="parameter groups with their own settings"):
        ZooCLI(scheduled, run=False).model.configure_optimizers()
