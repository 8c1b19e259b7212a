"""Objects as plain configs: ``{"class_path": ..., "init_args": {...}}``.

A `Configurable` object remembers the arguments it was built with, so
``init_config()`` can describe it in the form LightningCLI writes (and reads)
and `from_config` can build it again. Nothing here is specific to
estimators: estimators and baselines are the configurables of the zoo today.
Models store their estimators' configs among their hyperparameters: a
checkpoint then holds only plain values and loads with ``torch.load``'s safe
default (``weights_only=True``), and the state (buffers, learned baselines)
comes back from the state dict. This module imports no other part of the zoo
at import time (`as_estimator` imports `zoo.estimators` when called).

    >>> from zoo.estimators import Reinforce, LeaveOneOutBaseline
    >>> config = Reinforce(4, baseline=LeaveOneOutBaseline()).init_config()
    >>> config["init_args"]["baseline"]["class_path"]
    'zoo.estimators.baselines.LeaveOneOutBaseline'
    >>> type(from_config(config)).__name__
    'Reinforce'
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["Configurable", "as_estimator", "from_config"]

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


def from_config(config: Mapping[str, Any], expected: type[T] = Configurable) -> T:  # type: ignore[assignment]
    """Build the object a config describes; nested configs are built first.

    Args:
        config: ``{"class_path": "zoo.estimators.Reinforce", "init_args": {...}}``; a
            bare class name (``"GumbelSoftmax"``) is looked up in `zoo.estimators`
            (imported then, not when this module is).
        expected: the class the object must be an instance of (e.g. `Estimator`).

    Raises:
        ValueError: not such a mapping, a class path that does not resolve, a class
            that is not ``expected``, or arguments its constructor rejects.
    """
    if not isinstance(config, Mapping) or "class_path" not in config or set(config) - _KEYS:
        raise ValueError(
            "expected a config {'class_path': ..., 'init_args': {...}} of a subclass of "
            f"{expected.__name__}, got {config!r}"
        )
    path = config["class_path"]
    cls = _resolve(path)
    if not (isinstance(cls, type) and issubclass(cls, expected)):
        raise ValueError(f"class_path {path!r} is not a subclass of {expected.__name__}")
    init_args = config.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ValueError(f"init_args of {path!r} must be a mapping, got {init_args!r}")
    kwargs = {name: _built(value) for name, value in init_args.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"{path}: {error}") from error


def _built(value: Any) -> Any:
    """The inverse of `_plain`: configs, also inside lists and mappings, become objects."""
    if isinstance(value, Mapping):
        if "class_path" in value:
            return from_config(value)
        return {k: _built(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_built(v) for v in value)
    return value


def _resolve(path: Any) -> Any:
    """The object at a dotted path (``module.Class`` or ``module.Outer.Inner``)."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"class_path must be a non-empty string, got {path!r}")
    parts = path.split(".")
    if len(parts) == 1:
        parts = ["zoo", "estimators", *parts]
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue  # not a module: try a shorter prefix
            raise ValueError(
                f"class_path {path!r}: importing {module_name} failed ({error})"
            ) from error
        for attribute in parts[split:]:
            if not hasattr(obj, attribute):
                raise ValueError(f"class_path {path!r}: {module_name} has no {attribute!r}")
            obj = getattr(obj, attribute)
        return obj
    raise ValueError(f"class_path {path!r}: no module {parts[0]!r}")


def as_estimator(value: Any, name: str = "estimator") -> Any:
    """``value`` if it is an `Estimator`, the estimator its config describes if it is a config.

    Raises:
        ValueError: anything else (the message names ``name`` and what it got).
    """
    from zoo.estimators.base import Estimator

    if isinstance(value, Estimator):
        return value
    if isinstance(value, Mapping):
        return from_config(value, Estimator)
    raise ValueError(
        f"{name} must be a zoo.estimators.Estimator or its config "
        f"{{'class_path': ..., 'init_args': {{...}}}}, got {type(value).__name__}"
    )
