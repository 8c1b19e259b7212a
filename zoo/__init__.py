"""zoo: discrete and structured latent-variable models with interchangeable gradient estimators.

Three words carry the design (``docs/architecture.md``):

* `Structure` (`zoo.structures`): a distribution q(z) ∝ exp(⟨θ, z⟩) over discrete
  objects z (one-hot cells, chains, trees) with exact inference.
* `Estimator` (`zoo.estimators`): turns E_{z∼q}[f(z)] into a differentiable
  surrogate whose gradient is its estimate of ∇ E_q[f].
* `LatentVariableModel` (`zoo.models`): a LightningModule that builds q from its
  input, gives the estimator its f, and adds what is exact.

    >>> import zoo
    >>> zoo.Structure is zoo.structures.Structure
    True

Each word is imported when first used, so ``import zoo.structures`` does not
load Lightning and ``import zoo`` alone loads nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.estimators import Estimator
    from zoo.models import LatentVariableModel
    from zoo.structures import Structure

__version__ = "0.1.0"

__all__ = ["Estimator", "LatentVariableModel", "Structure"]

_HOMES = {
    "Estimator": "zoo.estimators",
    "LatentVariableModel": "zoo.models",
    "Structure": "zoo.structures",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
