"""The command line: ``python train.py {fit,validate,test,predict} --config configs/...``.

`ZooCLI` is a `LightningCLI` over any `LatentVariableModel` and any
`LightningDataModule` (subclass mode: ``class_path`` picks them; after the
imports below, class names work as shorthand: ``--model.estimator=Reinforce``).
On top of Lightning's defaults it

* links the data's width into the model (``data.input_dim`` → ``model.input_dim``;
  every model of the zoo takes ``input_dim``, and a datamodule used with this
  CLI must have an ``input_dim`` property),
* logs to TensorBoard under ``lightning_logs/<family>`` (the model's module:
  ``vae``, ``sbn``) unless a logger is configured,
* always keeps a ``ModelCheckpoint`` (options under ``--checkpoint.*``) that saves
  ``last.ckpt`` and a checkpoint when training stops on an exception,
* puts those logs, and so the checkpoints, under ``--trainer.default_root_dir``
  (``DIR/lightning_logs/<family>/version_N``; the working directory by default),
* always has a `TemperatureAnnealing` callback whose knobs are flags:
  ``--annealing.rate``, ``--annealing.min_temperature``, ``--annealing.every_n_steps``,
  ``--annealing.initial_temperature`` (rate 0, the default, keeps τ fixed),
* draws the training progress bar every ``--progress_bar_refresh_rate`` steps
  (default 20) and the validation and test bars after every batch, with their
  time left (see `zoo.callbacks.ZooProgressBar`),
* runs with `NullProfiler` (a no-op) unless ``--trainer.profiler`` names another
  (``simple``, ``advanced``, ...),
* reads ``--ckpt_path last`` as "the newest ``last.ckpt`` of this experiment":
  the run continues in that run's log directory, so an interrupted ``fit``
  resumes with the same command plus ``--ckpt_path last`` (and starts afresh
  when there is none yet); the resumed run draws the same random numbers and
  batches as an uninterrupted one (`LatentVariableModel.on_save_checkpoint`,
  `zoo.data.base.ResumableBatchSampler`),
* says what is wrong with a command line in one line: a bad value, or the
  message of the ``ValueError``/``TypeError`` a constructor raised, without the
  usage or the traceback through jsonargparse (``ZOO_TRACEBACK=1`` shows them), and
* keeps Lightning's advertising tips and a deprecation warning of Lightning's
  own code off the terminal.

Timings behind the defaults (the refresh rate, the profiler) are in ``bench/README.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.profilers import PassThroughProfiler

# Imported for their side effect as well: class-name shorthand on the command
# line resolves among the imported subclasses.
import zoo.callbacks
import zoo.data
import zoo.estimators
import zoo.models
from zoo.callbacks import TemperatureAnnealing, ZooProgressBar
from zoo.models import LatentVariableModel

__all__ = ["ConfigError", "NullProfiler", "ZooCLI", "main"]

log = logging.getLogger(__name__)

_ = (zoo.callbacks, zoo.data, zoo.estimators)

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
PROFILER = "zoo.cli.NullProfiler"
PROGRESS_BAR_REFRESH_RATE = 20
LOG_DIR = "lightning_logs"
DEFAULT_LOGGER = {
    "class_path": TENSORBOARD,
    "init_args": {"save_dir": LOG_DIR, "name": None, "default_hp_metric": False},
}
ANNEALING_DEFAULTS = {
    "rate": 0.0,
    "min_temperature": 0.5,
    "every_n_steps": 500,
    "initial_temperature": None,
}
"""The ``--annealing.*`` defaults: rate 0, τ stays what the estimator says."""

TRACEBACK_ENV = "ZOO_TRACEBACK"
"""Set to 1 to see the full usage and traceback of a command-line error."""

_NO_OP = contextlib.nullcontext()


class ConfigError(ValueError):
    """A command line or config the zoo cannot run: the message says what and where."""


class NullProfiler(PassThroughProfiler):
    """Lightning's no-op profiler, with one shared no-op context for every action."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return _NO_OP


def _full_errors() -> bool:
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


# What jsonargparse adds around the one line that says what is wrong.
_NOISE = re.compile(
    r"^(Expected a <class 'NoneType'>|Given value type:|Given value:|Subtypes:|Errors:|"
    r"Does not validate against any of the Union subtypes|Problem with given class_path)"
)


def essence(message: str) -> str:
    """The line of a jsonargparse error that says what is wrong, after the keys it is under.

    ``Parser key "lr": Expected a <class 'float'>. Got value: abc`` nested in three
    union errors becomes ``lr: Expected a <class 'float'>. Got value: abc``.
    """
    keys: list[str] = []
    reasons: list[str] = []
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or _NOISE.match(line):
            continue
        key = re.match(r'^Parser key "([^"]+)":\s*(.*)$', line)
        if key:
            keys.append(key.group(1))
            if key.group(2):
                reasons.append(key.group(2))
            continue
        reasons.append(line)
    if not reasons:
        return message.strip()
    where = ".".join(keys)
    return f"{where}: {reasons[0]}" if where else reasons[0]


class ZooArgumentParser(LightningArgumentParser):
    """Lightning's parser, whose errors are one line (``ZOO_TRACEBACK=1``: jsonargparse's own)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if _full_errors() or not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(
            f"error: {essence(message)}\n"
            f"({prog} --help lists the options; {TRACEBACK_ENV}=1 shows the full message)\n"
        )
        raise SystemExit(2)


class ZooCLI(LightningCLI):
    """LightningCLI for the zoo: see the module docstring.

    Args:
        args: command-line arguments (a list, as after ``train.py``); None reads ``sys.argv``.
        run: run the subcommand (``fit``, ``test``, ...); False only instantiates the classes.

    Raises:
        ConfigError: a constructor rejected a value (its message, and the key it came from),
            or ``--ckpt_path last`` found no run to go on with.
    """

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        quiet_lightning()
        super().__init__(
            LatentVariableModel,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=ZooArgumentParser,
            # A resumed run writes its config.yaml again, into the same log directory.
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Not among Lightning's callback groups: added in instantiate_trainer, unless
        # trainer.callbacks has a schedule of its own (a config written before this group).
        parser.add_class_arguments(TemperatureAnnealing, "annealing")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.save_on_exception": True,
                "trainer.logger": DEFAULT_LOGGER,
                "trainer.profiler": {"class_path": PROFILER},
                **{f"annealing.{k}": v for k, v in ANNEALING_DEFAULTS.items()},
            }
        )
        parser.link_arguments("data.input_dim", "model.init_args.input_dim", apply_on="instantiate")
        parser.add_argument(
            "--progress_bar_refresh_rate",
            type=int,
            default=PROGRESS_BAR_REFRESH_RATE,
            help="Redraw the training progress bar every this many steps (1: every step); "
            "validation and test bars are redrawn after every batch. A progress bar given in "
            "trainer.callbacks keeps its own rate.",
        )

    def _section(self, config: Namespace) -> Namespace:
        """The part of a parsed config that belongs to the subcommand being run."""
        return config[self.subcommand] if self.subcommand else config

    # --------------------------------------------------------------- instantiation
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(_constructor_message(error)) from error

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self._section(self.config_init)
        rate = config.get("progress_bar_refresh_rate", PROGRESS_BAR_REFRESH_RATE)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise ConfigError(f"--progress_bar_refresh_rate must be an integer ≥ 1, got {rate!r}")
        configured = (config.get("trainer") or {}).get("callbacks") or []
        configured = list(configured) if isinstance(configured, list) else [configured]
        annealing = self._annealing(configured, config)
        trainer = super().instantiate_trainer(**kwargs, callbacks=configured + annealing)
        bar = trainer.progress_bar_callback
        # Only the bar Lightning added itself (none was configured) is replaced.
        if type(bar) in (TQDMProgressBar, RichProgressBar) and all(
            bar is not c for c in configured
        ):
            trainer.callbacks[trainer.callbacks.index(bar)] = ZooProgressBar(refresh_rate=rate)
        return trainer

    def _annealing(self, configured: list[Any], config: Namespace) -> list[TemperatureAnnealing]:
        """The ``annealing`` schedule, or none when ``trainer.callbacks`` has one (an older config)."""
        ours = config.get("annealing")
        if ours is None:
            return []
        if not any(isinstance(c, TemperatureAnnealing) for c in configured):
            return [ours]
        given = {k: getattr(ours, k) for k in ANNEALING_DEFAULTS}
        if given != ANNEALING_DEFAULTS:
            raise ConfigError(
                "the temperature schedule is given twice: as a TemperatureAnnealing in "
                "trainer.callbacks and as annealing.* ("
                + ", ".join(f"{k}={v}" for k, v in given.items() if ANNEALING_DEFAULTS[k] != v)
                + "); keep one (the annealing.* flags are the documented way)"
            )
        return []

    # ----------------------------------------------------------- before instantiation
    def before_instantiate_classes(self) -> None:
        config = self._section(self.config)
        logger = _tensorboard_config(config)
        if logger is not None:
            if logger.init_args.get("name") is None:
                logger.init_args.name = _family(config.model.class_path)
            root = config.get("trainer", Namespace()).get("default_root_dir")
            save_dir = Path(str(logger.init_args.save_dir))
            if root is not None and not save_dir.is_absolute():
                # Lightning's promise: default_root_dir is the root of logs and checkpoints.
                logger.init_args.save_dir = str(Path(root) / save_dir)
        if self.subcommand and config.get("ckpt_path") == "last":
            self._resolve_last(config, logger)

    def _resolve_last(self, config: Namespace, logger: Namespace | None) -> None:
        """Point the logger at the newest run of this experiment that has a ``last.ckpt``.

        "This experiment" means the same model class and estimator(s), read from
        the ``config.yaml`` each run saves next to its checkpoints; Lightning then
        finds ``last.ckpt`` in that run's checkpoint folder, and the run goes on
        logging into the same directory.
        """
        if config.checkpoint.dirpath is not None:
            return  # Lightning looks for last.ckpt in the fixed dirpath itself
        if logger is None or logger.init_args.get("version") is not None:
            return
        root = Path(logger.init_args.save_dir) / str(logger.init_args.name)
        dumped = yaml.safe_load(self.parser.dump(self.config, skip_check=True))
        wanted = _experiment(dumped.get(self.subcommand, dumped))
        runs = sorted(root.glob("*/checkpoints/last*.ckpt"), key=os.path.getmtime, reverse=True)
        for ckpt in runs:
            saved = ckpt.parent.parent / "config.yaml"
            if saved.is_file() and _experiment(yaml.safe_load(saved.read_text())) == wanted:
                run = ckpt.parent.parent.name
                version = run.removeprefix("version_")
                logger.init_args.version = int(version) if version.isdigit() else run
                return
        if self.subcommand != "fit":  # anything but fit would run on random weights
            raise ConfigError(
                f"--ckpt_path last: no run of this model and estimator with a last.ckpt under "
                f"{root}/*/checkpoints/; train it first or give the checkpoint's path"
            )
        log.info(
            "--ckpt_path last: no earlier run of this experiment under %s; starting afresh", root
        )
        config.ckpt_path = None


def _constructor_message(error: BaseException) -> str:
    """The message of the error a constructor raised, found inside jsonargparse's wrapping."""
    # The constructor's own exception, when jsonargparse kept it in the chain.
    seen: set[int] = set()
    inner: BaseException | None = error
    deepest = error
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        deepest = inner
        inner = inner.__cause__ or inner.__context__
    if deepest is not error and isinstance(deepest, (ValueError, TypeError)):
        return str(deepest)
    return essence(str(error))


def quiet_lightning() -> None:
    """Keep what is not the user's concern off the terminal (public means only).

    Lightning's tips that advertise its cloud products, a deprecation warning
    that Lightning's own code triggers in torch (``isinstance(treespec, LeafSpec)``)
    and those LightningCLI's calls trigger in jsonargparse.
    """
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # jsonargparse's documented switch for the deprecations LightningCLI's own calls trigger.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in rank_zero.filters):
        rank_zero.addFilter(_NoTips())


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _experiment(config: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two runs the same experiment: the model's class, its estimators and latent."""
    model = config.get("model") or {}
    init = model.get("init_args") or {}
    return (
        model.get("class_path"),
        init.get("estimator"),
        init.get("inner_estimator"),
        init.get("latent"),
    )


def _tensorboard_config(config: Namespace) -> Namespace | None:
    logger = config.get("trainer", Namespace()).get("logger")
    if isinstance(logger, Namespace) and logger.get("class_path") == TENSORBOARD:
        return logger
    return None


def _family(class_path: str) -> str:
    """The module that defines the model (``zoo.models.vae`` → ``vae``): its log folder."""
    module, name = class_path.rsplit(".", 1)
    defined_in = getattr(importlib.import_module(module), name).__module__
    return defined_in.rsplit(".", 1)[-1]


def main(args: ArgsType = None, run: bool = True) -> ZooCLI | None:
    """Run the zoo's command line; ``args`` as after ``train.py`` (None: ``sys.argv``).

    A `ConfigError` (a value a constructor rejected, say
    ``--model.estimator.temperature=0``) ends the program with its message
    alone and exit status 2; ``ZOO_TRACEBACK=1`` raises it with its traceback.

    Args:
        args: the command-line arguments; None reads ``sys.argv``.
        run: run the subcommand; False parses and instantiates only (no subcommand).

    Returns:
        None after running a subcommand (so that ``main`` can be a console-script
        entry point, whose return value becomes the exit status); the `ZooCLI`,
        with its model, datamodule and trainer, when ``run`` is False. Use
        ``ZooCLI(args)`` to keep them after a run.
    """
    try:
        cli = ZooCLI(args=args, run=run)
    except ConfigError as error:
        if _full_errors():
            raise
        sys.stderr.write(f"error: {error}\n({TRACEBACK_ENV}=1 shows the traceback)\n")
        raise SystemExit(2) from None
    if run:
        _close_process_group()
    return None if run else cli


def _close_process_group() -> None:
    """After a multi-process run, close the process group Lightning opened (and left open):
    its threads, left to the interpreter's exit, can abort a finished rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
