"""Deprecated location of the config serializer: use `zoo.config`.

The serializer is generic, so it moved to `zoo.config`; this module re-exports
it for one release. Checkpoints store the ``class_path`` of estimators and
baselines, never of the serializer, so they load either way.
"""

from zoo.config import Configurable, as_estimator, from_config

__all__ = ["Configurable", "as_estimator", "from_config"]
