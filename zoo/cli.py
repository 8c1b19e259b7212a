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
  resumes with the same command plus ``--ckpt_path last``, and says so when
  there is nothing to resume; the resumed run draws the same random numbers and
  batches as an uninterrupted one (`LatentVariableModel.on_save_checkpoint`,
  `zoo.data.base.ResumableBatchSampler`),
* builds the model of ``--ckpt_path`` from the checkpoint (LightningCLI's rule)
  and its data from the data settings the checkpoint was trained with (which
  the CLI stores in every checkpoint under ``"zoo_data"``), with the command
  line's and config's data settings on top (``train.py test --ckpt_path
  run.ckpt`` needs no config at all); a checkpoint of another model
  class, or a file that is no checkpoint, is a one-line error,
* checks, once the model is built, that its estimator applies to its structure
  and model (`zoo.estimators.compatibility`),
* writes no checkpoint under ``--trainer.fast_dev_run``,
* reads an integer ``--trainer.limit_{train,val,test,predict}_batches`` as a number
  of batches and a float as a fraction, as Lightning documents (``1`` is one
  batch, ``1.0`` all of them),
* says what is wrong with a command line in one line: a bad value, the message
  of the ``ValueError``/``TypeError`` a constructor raised, missing data or a
  trainer setting Lightning refuses, without the usage or the traceback
  (``ZOO_TRACEBACK=1`` shows them), and
* keeps Lightning's advertising tips and a deprecation warning of Lightning's
  own code off the terminal.

Timings behind the defaults (the refresh rate, the profiler) are in ``bench/README.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
import yaml
from jsonargparse import Namespace, dict_to_namespace
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

# Imported for their side effect as well: class-name shorthand on the command
# line resolves among the imported subclasses.
import zoo.callbacks
import zoo.data
import zoo.estimators
import zoo.models
from zoo.callbacks import TemperatureAnnealing, ZooCheckpoint, ZooProgressBar
from zoo.data import DataError, DataNotFoundError
from zoo.estimators.baselines import BaselineSizeError
from zoo.estimators.compatibility import (
    IncompatibleEstimatorError,
    check_estimator,
    check_model,
    structure_of,
)
from zoo.models import LatentVariableModel
from zoo.models.base import MODEL_CLASS_KEY

__all__ = ["ConfigError", "DataSettings", "NullProfiler", "ZooCLI", "main", "read_checkpoint"]

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

DATA_KEY = "zoo_data"
"""Where checkpoints keep the data's config (see `DataSettings`)."""
LINKED = ("input_dim",)
"""The model's arguments the data decides (``link_arguments`` below)."""

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


def essence(error: BaseException | None, message: str) -> str:
    """What a jsonargparse error says is wrong, after the keys it is under.

    jsonargparse chains its errors (``raise ... from``): each level prefixes the
    key it parsed, and the innermost error is the reason. ``model.lr: Expected a
    <class 'float'>. Got value: abc`` comes from three such levels.
    """
    keys: list[str] = []
    deepest: BaseException | None = None
    while error is not None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        key = first[len(_KEY_PREFIX) :].split('"', 1)[0] if first.startswith(_KEY_PREFIX) else ""
        if key and key not in keys[-1:]:  # a level may repeat its parent's key
            keys.append(key)
        deepest, error = error, error.__cause__
    reason = str(deepest).strip().splitlines()[-1] if deepest is not None else message.strip()
    reason = reason.strip().removeprefix("- ") or message.strip()
    where = ".".join(k for k in keys if k)
    return f"{where}: {reason}" if where and not reason.startswith(_KEY_PREFIX) else reason


_KEY_PREFIX = 'Parser key "'


class ZooArgumentParser(LightningArgumentParser):
    """Lightning's parser, whose errors are one line (``ZOO_TRACEBACK=1``: jsonargparse's own)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if _full_errors() or not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(
            f"error: {essence(ex, message)}\n"
            f"({prog} --help lists the options; {TRACEBACK_ENV}=1 shows the full message)\n"
        )
        raise SystemExit(2)


class ZooTrainer(L.Trainer):
    """Lightning's `Trainer`, whose batch limits read an integer as a number of batches.

    ``limit_{train,val,test,predict}_batches``: an int is a number of batches, a
    float a fraction, as Lightning documents (``1`` is one batch, ``1.0`` all of
    them). Read from the `Trainer` class itself, jsonargparse tried ``float``
    first, so ``--trainer.limit_val_batches=1`` (or ``1`` in a config) meant
    every batch; declared here, ``int`` comes first. Everything else is the
    `Trainer`'s.
    """

    def __init__(
        self,
        *args: Any,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            **kwargs,
        )


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
            trainer_class=ZooTrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=ZooArgumentParser,
            # A resumed run writes its config.yaml again, into the same log directory.
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    @staticmethod
    def configure_optimizers(
        lightning_module: L.LightningModule, optimizer: Any, lr_scheduler: Any = None
    ) -> Any:
        """LightningCLI's ``--optimizer`` (and ``--lr_scheduler``), over the model's
        ``parameter_groups()``: a family's groups (the ListOps parser's own learning
        rate) survive another optimizer; the group settings win over ``--optimizer``'s.

        Raises:
            ConfigError: ``--lr_scheduler`` with a model of several parameter groups (the
                scheduler LightningCLI builds knows one group only).
        """
        groups_fn = getattr(lightning_module, "parameter_groups", None)
        groups = groups_fn() if callable(groups_fn) else []
        if len(groups) > 1:
            if lr_scheduler is not None:
                raise ConfigError(
                    f"--lr_scheduler: {type(lightning_module).__name__} trains "
                    f"{len(groups)} parameter groups with their own settings; a scheduler "
                    "from the command line would see one. Drop --lr_scheduler, or give one "
                    "group (e.g. leave parser_lr unset)."
                )
            optimizer = type(optimizer)(groups, **optimizer.defaults)
        return LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ZooCheckpoint, "checkpoint")
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
        for key in LINKED:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
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

    # ------------------------------------------------------------------ parsing
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; then name the logs, find ``--ckpt_path last`` and take the checkpoint's data.

        LightningCLI itself then builds the model from the checkpoint's hyperparameters.
        """
        if args is None:  # the program's own command line, completed in place
            sys.argv[1:] = _complete_from_checkpoint(sys.argv[1:])
        elif isinstance(args, list):
            args = _complete_from_checkpoint(args)
        super().parse_arguments(parser, args)
        self.subcommand = self.config.get("subcommand")
        if not self.subcommand:
            return
        section = self._section(self.config)
        _name_the_logs(section)
        checkpoint = self._checkpoint()
        if checkpoint is None:
            return
        _check_model_class(checkpoint, section.model.class_path, section.ckpt_path)
        self.checkpoint_hparams = checkpoint.get("hyper_parameters", {})
        data = checkpoint.get(DATA_KEY)
        if data is None:
            return
        # Again, on top of the checkpoint's data settings: what the command line and config
        # say still wins.
        base = dict_to_namespace({self.subcommand: {"data": data}})
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args, namespace=base)
        else:
            self.config = parser.parse_args(sys.argv[1:] if args is None else args, base)
        again = self._section(self.config)
        again.ckpt_path = section.ckpt_path
        if _tensorboard_config(again) is not None:
            again.trainer.logger = section.trainer.logger

    def _checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint of ``--ckpt_path`` (``last`` resolved to its file), or None."""
        section = self._section(self.config)
        path = section.get("ckpt_path")
        if path == "last":
            path = section.ckpt_path = self._find_last(section)
        if path is None or path in ("best", "hpc", "last") or str(path).startswith("registry"):
            return None
        return read_checkpoint(path)

    def _find_last(self, config: Namespace) -> str:
        """The newest ``last.ckpt`` of this experiment; the logger then goes on in its run.

        "This experiment" means the same model class and estimator(s), read from
        the ``config.yaml`` each run saves next to its checkpoints.

        Raises:
            ConfigError: there is none (``fit`` would start afresh, anything else
                would run on random weights).
        """
        logger = _tensorboard_config(config)
        if config.checkpoint.dirpath is not None:
            where = Path(config.checkpoint.dirpath)
            runs = sorted(where.glob("last*.ckpt"), key=os.path.getmtime, reverse=True)
            if runs:
                return str(runs[0])
        elif logger is None:
            return "last"  # another logger: Lightning looks for it
        else:
            root = Path(logger.init_args.save_dir) / str(logger.init_args.name)
            version = logger.init_args.get("version")
            where = root if version is None else root / _version_folder(version)
            dumped = yaml.safe_load(self.parser.dump(self.config, skip_check=True))
            wanted = _experiment(dumped.get(self.subcommand, dumped))
            runs = sorted(where.glob("**/checkpoints/last*.ckpt"), key=os.path.getmtime)
            for ckpt in reversed(runs):
                saved = ckpt.parent.parent / "config.yaml"
                if saved.is_file() and _experiment(yaml.safe_load(saved.read_text())) == wanted:
                    run = ckpt.parent.parent.name
                    number = run.removeprefix("version_")
                    logger.init_args.version = int(number) if number.isdigit() else run
                    return str(ckpt)
            where = where / "*" / "checkpoints" if version is None else where / "checkpoints"
        raise ConfigError(
            f"--ckpt_path last: no run of this model and estimator with a last.ckpt under "
            f"{where}/; leave --ckpt_path out to start a new run, or give a checkpoint's path"
        )

    # ------------------------------------------------- evaluation stops at SIGTERM at once
    def before_validate(self) -> None:
        self._stop_at_once_on_sigterm()

    before_test = before_predict = before_validate

    def after_validate(self) -> None:
        signal.signal(signal.SIGTERM, self._sigterm_before)

    after_test = after_predict = after_validate

    def _stop_at_once_on_sigterm(self) -> None:
        """``validate``, ``test`` and ``predict`` stop at once on SIGTERM, exit status 143.

        Lightning only notes the signal and stops at the next batch boundary, with
        exit status 0; one batch of long ListOps expressions takes tens of seconds.
        An evaluation has nothing to save, so it stops where it is (a prediction
        writer removes its unfinished file). Lightning's own handler still runs
        first (it composes with the handler found); ``fit`` keeps its behaviour:
        it stops at the end of the step and saves its checkpoint.
        """
        subcommand = self.subcommand

        def stop(signum: int, frame: Any) -> NoReturn:
            sys.stderr.write(f"\n{subcommand} stopped by SIGTERM (signal {signum})\n")
            raise SIGTERMException(128 + signum)

        self._sigterm_before = signal.signal(signal.SIGTERM, stop)

    # --------------------------------------------------------------- instantiation
    def before_instantiate_classes(self) -> None:
        """Check the estimator against the model's class before anything is built.

        So the reason comes first (VIMCO on a model without a joint likelihood),
        not an argument the estimator would reject on the way.
        """
        model = self._section(self.config).model
        model_class = _import_class(model.class_path)
        estimator = model.get("init_args", Namespace()).get("estimator")
        if not isinstance(model_class, type) or not isinstance(estimator, Namespace):
            return
        estimator_class = _import_class(estimator.get("class_path", ""))
        if isinstance(estimator_class, type):
            joint = getattr(model_class, "has_joint_nll", lambda: True)()
            try:
                check_estimator(estimator_class, structure_of(model_class), model_class, joint)
            except IncompatibleEstimatorError as error:
                raise ConfigError(str(error)) from error

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(_constructor_message(error)) from error

    def after_instantiate_classes(self) -> None:
        """Check the built model: its estimator, and the sizes its checkpoint was trained with."""
        try:
            check_model(self.model)
        except IncompatibleEstimatorError as error:
            raise ConfigError(str(error)) from error
        trained = getattr(self, "checkpoint_hparams", {})
        for key in LINKED:
            if key in trained and trained[key] != self.model.hparams.get(key):
                raise ConfigError(
                    f"the data gives {key}={self.model.hparams.get(key)}, but the checkpoint's model "
                    f"was trained with {key}={trained[key]}: these data settings differ from the "
                    f"ones it was trained with (leave the --data flags out to use those)"
                )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self._section(self.config_init)
        rate = config.get("progress_bar_refresh_rate", PROGRESS_BAR_REFRESH_RATE)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise ConfigError(f"--progress_bar_refresh_rate must be an integer ≥ 1, got {rate!r}")
        configured = (config.get("trainer") or {}).get("callbacks") or []
        configured = list(configured) if isinstance(configured, list) else [configured]
        annealing = self._annealing(configured, config)
        data = DataSettings(_plain(self.parser, self.config, self.subcommand, "data"))
        trainer = super().instantiate_trainer(**kwargs, callbacks=[*configured, *annealing, data])
        if trainer.fast_dev_run:  # Lightning still writes last.ckpt at the end
            for callback in [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]:
                trainer.callbacks.remove(callback)
        bar = trainer.progress_bar_callback
        # Only the bar Lightning added itself (none was configured) is replaced.
        if type(bar) in (TQDMProgressBar, RichProgressBar) and all(
            bar is not c for c in configured
        ):
            trainer.callbacks[trainer.callbacks.index(bar)] = ZooProgressBar(refresh_rate=rate)
        return trainer

    def _annealing(self, configured: list[Any], config: Namespace) -> list[TemperatureAnnealing]:
        """The ``annealing`` schedule: the one way a config anneals τ."""
        if any(isinstance(c, TemperatureAnnealing) for c in configured):
            raise ConfigError(
                "trainer.callbacks holds a TemperatureAnnealing: the command line anneals τ "
                "through the annealing: block (annealing.rate, annealing.min_temperature, "
                "annealing.every_n_steps, annealing.initial_temperature); move it there"
            )
        ours = config.get("annealing")
        return [] if ours is None else [ours]


class DataSettings(L.Callback):
    """Keeps the data's config in every checkpoint (``checkpoint["zoo_data"]``).

    So ``train.py test|predict --ckpt_path`` rebuilds the data the model was
    trained on (vocabulary, sizes, label sets all follow from it).

    Args:
        config: the datamodule's ``class_path``/``init_args``, plain values only.
    """

    def __init__(self, config: dict[str, Any] | None) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.config is not None:
            checkpoint[DATA_KEY] = self.config


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint at ``path``, read with ``torch.load``'s safe default.

    Raises:
        ConfigError: no such file, or a file that is no Lightning checkpoint.
    """
    if not Path(path).is_file():
        raise ConfigError(f"--ckpt_path {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is none
        raise ConfigError(
            f"--ckpt_path {path} is not a checkpoint (torch.load failed: {type(error).__name__})"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(
            f"--ckpt_path {path} is not a Lightning checkpoint (it has no state_dict)"
        )
    return checkpoint


EVALUATING = ("validate", "test", "predict")


def _complete_from_checkpoint(args: list[str]) -> list[str]:
    """``train.py test --ckpt_path run.ckpt`` alone: the model and data are the checkpoint's.

    When ``validate``, ``test`` or ``predict`` names a checkpoint file and no
    ``--config`` and no class for ``--model`` or ``--data``, the checkpoint's model class with its
    hyperparameters (upgraded, as `LatentVariableModel.load_from_checkpoint` does)
    and its data settings become ``--model`` and ``--data``. Anything else after
    them on the command line still applies.
    """
    if not args or args[0] not in EVALUATING:
        return args
    rest = args[1:]

    def given(*flags: str) -> bool:  # --data.batch_size=4 still goes on top of the checkpoint's
        return any(a == f or a.startswith(f"{f}=") for a in rest for f in flags)

    if given("--config", "-c", "--model", "--data"):
        return args
    path = None
    for i, arg in enumerate(rest):
        if arg.startswith("--ckpt_path="):
            path = arg.split("=", 1)[1]
        elif arg == "--ckpt_path" and i + 1 < len(rest):
            path = rest[i + 1]
    if path is None or not Path(path).is_file():
        return args  # none, or "last" (which needs the model to find its run)
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    class_path = checkpoint.get(MODEL_CLASS_KEY) or hparams.get("_class_path")
    model_class = _import_class(class_path) if class_path else None
    data = checkpoint.get(DATA_KEY)
    if model_class is None or data is None:
        return args  # the parser then asks for --model and --data
    if isinstance(model_class, type) and issubclass(model_class, LatentVariableModel):
        hparams.update(model_class.upgrade_hyperparameters(hparams))
        hparams = {k: v for k, v in hparams.items() if k in model_class.init_parameter_names()}
    else:
        hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
    model = {"class_path": class_path, "init_args": hparams}
    return [args[0], f"--model={json.dumps(model)}", f"--data={json.dumps(data)}", *rest]


def _check_model_class(checkpoint: dict[str, Any], asked: str | None, path: str) -> None:
    """A checkpoint of another model class than the command's is an error."""
    saved = checkpoint.get(MODEL_CLASS_KEY) or checkpoint.get("hyper_parameters", {}).get(
        "_class_path"
    )
    if saved is None or asked is None:
        return
    saved_class, asked_class = _import_class(saved), _import_class(asked)
    if saved_class is None or asked_class is None or saved_class is asked_class:
        return
    raise ConfigError(
        f"--ckpt_path {path} holds a {saved_class.__name__} ({saved}), but the command builds a "
        f"{asked_class.__name__}: give the config it was trained with"
    )


def _import_class(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _name_the_logs(config: Namespace) -> None:
    """TensorBoard logs go under ``<default_root_dir>/lightning_logs/<family>``."""
    logger = _tensorboard_config(config)
    if logger is None:
        return
    if logger.init_args.get("name") is None:
        logger.init_args.name = _family(config.model.class_path)
    root = config.get("trainer", Namespace()).get("default_root_dir")
    save_dir = Path(str(logger.init_args.save_dir))
    if root is not None and not save_dir.is_absolute() and not save_dir.is_relative_to(root):
        # Lightning's promise: default_root_dir is the root of logs and checkpoints.
        logger.init_args.save_dir = str(Path(root) / save_dir)


def _version_folder(version: Any) -> str:
    return f"version_{version}" if isinstance(version, int) else str(version)


def _plain(parser: LightningArgumentParser, config: Namespace, subcommand: str | None, key: str):
    """The ``key`` section of the config as plain values (what YAML would hold), or None."""
    try:
        dumped = yaml.safe_load(parser.dump(config, skip_check=True))
    except Exception:  # a value without a plain form: the section is not kept
        return None
    section = dumped.get(subcommand, dumped) if subcommand else dumped
    return section.get(key)


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
    return essence(error, str(error))


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
    """Drops Lightning's tips and its stop message (`ZooCheckpoint` says it in words)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("💡 Tip") or " was raised with message: " in message)


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
    ``--model.estimator.temperature=0``), a `zoo.data.DataNotFoundError`, a `zoo.data.DataError` (an empty or malformed file),
    a `zoo.estimators.BaselineSizeError` (a ``LearnedBaseline`` that cannot read the
    model's events, found at the first step) or a
    trainer setting Lightning refuses ends the program with its message alone
    and exit status 2; ``ZOO_TRACEBACK=1`` raises it with its traceback. A run
    stopped by SIGTERM ends with exit status 143 (128 + 15), as a shell expects.

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
    except (
        ConfigError,
        DataError,
        DataNotFoundError,
        MisconfigurationException,
        BaselineSizeError,
    ) as error:
        if _full_errors():
            raise
        sys.stderr.write(f"error: {error}\n({TRACEBACK_ENV}=1 shows the traceback)\n")
        raise SystemExit(2) from None
    except SIGTERMException as stop:  # Lightning's, after fit saved its checkpoint: status 0
        raise SystemExit(stop.code if stop.code else 128 + signal.SIGTERM) from None
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
