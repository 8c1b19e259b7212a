"""Objects as plain configs: ``{"class_path": ..., "init_args": {...}}``.

A `Configurable` object remembers the arguments it was built with, so
``init_config()`` can describe it in the form LightningCLI writes (and reads)
and `from_config` builds it again, with jsonargparse, the parser LightningCLI
uses: the same class-path resolution (a bare class name names an imported
subclass of the expected type), the same type checks and the same nested
configs as a YAML file given to ``train.py``. Estimators, baselines, latents
and model parts are configurables. Models store their parts' configs among
their hyperparameters: a checkpoint then holds only plain values and loads
with ``torch.load``'s safe default (``weights_only=True``), and the state
(buffers, learned baselines) comes back from the state dict.

This module imports no other part of the zoo.

    >>> from zoo.estimators import Estimator, LeaveOneOutBaseline, Reinforce
    >>> config = Reinforce(4, baseline=LeaveOneOutBaseline()).init_config()
    >>> config["init_args"]["baseline"]["class_path"]
    'zoo.estimators.baselines.LeaveOneOutBaseline'
    >>> type(from_config(config, Estimator)).__name__
    'Reinforce'
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["Configurable", "from_config"]

T = TypeVar("T")

_PLAIN = (type(None), bool, int, float, str)
_KEYS = {"class_path", "init_args"}


class _NoPlainFormError(Exception):
    """An argument that has no plain form (a function, a tensor, ...)."""


class Configurable:
    """Mixin: remembers its constructor's arguments; ``init_config()`` gives them back as a config."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        # Before any __init__ runs (nn.Module's included), so plain __dict__ access.
        obj.__dict__["_init_arguments"] = (args, kwargs)
        return obj

    def init_config(self) -> dict[str, Any] | None:
        """``{"class_path": ..., "init_args": {...}}`` with every argument of ``__init__``.

        Nested configurables (a baseline inside `Reinforce`) become configs too.
        None when an argument has no plain form (a function, a tensor, an
        arbitrary object) or the class cannot be imported by its path (defined
        inside a function).
        """
        cls = type(self)
        if "<locals>" in cls.__qualname__:
            return None
        args, kwargs = self.__dict__.get("_init_arguments", ((), {}))
        try:
            bound = inspect.signature(cls).bind(*args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        init_args: dict[str, Any] = {}
        try:
            for name, value in bound.arguments.items():
                kind = bound.signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    if value:
                        return None  # positional-only extras have no names
                elif kind is inspect.Parameter.VAR_KEYWORD:
                    init_args.update({k: _plain(v) for k, v in value.items()})
                else:
                    init_args[name] = _plain(value)
        except _NoPlainFormError:
            return None
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _plain(value: Any) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Configurable):
        config = value.init_config()
        if config is None:
            raise _NoPlainFormError
        return config
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    raise _NoPlainFormError


def from_config(
    config: Mapping[str, Any],
    expected: type[T] = Configurable,  # type: ignore[assignment]
    name: str = "config",
) -> T:
    """Build the object a config describes, as LightningCLI builds a part from YAML.

    Nested configs (a baseline inside `Reinforce`) are built first, wherever the
    constructor's type hints name a class. Defaults fill missing arguments.

    Args:
        config: ``{"class_path": "zoo.estimators.Reinforce", "init_args": {...}}``; a
            bare class name (``"GumbelSoftmax"``) names an imported subclass of
            ``expected``.
        expected: the class the object must be an instance of (e.g. `Estimator`).
        name: what the config is, for the error message (``"estimator"``).

    Raises:
        ValueError: not such a mapping, a class path that does not resolve, a class
            that is not ``expected``, or arguments its constructor does not accept
            (jsonargparse's message, which names the key, the value and the type).
    """
    if not isinstance(config, Mapping) or "class_path" not in config or set(config) - _KEYS:
        raise ValueError(
            f"{name} must be a config {{'class_path': ..., 'init_args': {{...}}}} of a "
            f"subclass of {expected.__name__}, got {config!r}"
        )
    if not isinstance(config.get("init_args") or {}, Mapping):
        raise ValueError(f"init_args of {name} must be a mapping, got {config['init_args']!r}")
    from jsonargparse import ArgumentError, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument(f"--{name}", type=expected, required=True)
    try:
        # A copy: jsonargparse turns the nested mappings it is given into namespaces.
        namespace = parser.parse_object({name: copy.deepcopy(dict(config))})
    except ArgumentError as error:
        raise ValueError(str(error)) from error
    return parser.instantiate(namespace)[name]
