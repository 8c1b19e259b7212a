"""Which estimator applies to which structure and model, checked when the model is built.

Most estimators take any `Structure`. A few are defined for some structures
only, or need something of the model:

* `ARM`, `DisARM`: `Bernoulli` (their identities hold for independent bits
  with P(z_n = 1) = σ(θ_n));
* `GumbelCRF`: a structure with relaxed forward-filtering backward-sampling
  (``gumbel_crf``: `LinearChainCRF`);
* `GumbelRao`: a structure with noise conditioned on a sample
  (``conditional_perturb_noise``: `Categorical`, `Bernoulli`);
* `UnorderedSetReinforce`: `Categorical` or `Bernoulli`;
* `VIMCO` (any estimator of a multi-sample bound): a model with a joint
  likelihood −log p(x, z) (``joint_nll``).

`check_estimator` says which of these fails, in words, before the first step;
`compatibility_table` is the table of ``docs/estimator-reference.md``, made
from the same rules.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from zoo.estimators.arm import ARM
from zoo.estimators.base import Estimator
from zoo.estimators.relaxed import GumbelCRF, GumbelRao
from zoo.estimators.unordered_set import UnorderedSetReinforce
from zoo.structures import Bernoulli, Categorical, Structure

__all__ = [
    "IncompatibleEstimatorError",
    "applies_to",
    "check_estimator",
    "check_model",
    "compatibility_table",
]


class IncompatibleEstimatorError(TypeError):
    """An estimator used where it does not apply: the message says what it needs."""


def _overrides(structure: type[Structure], name: str) -> bool:
    return getattr(structure, name, None) is not getattr(Structure, name, None)


# estimator class → (does it apply to this structure class?, what it needs, in words)
STRUCTURE_RULES: dict[type[Estimator], tuple[Callable[[type[Structure]], bool], str]] = {
    ARM: (lambda s: issubclass(s, Bernoulli), "a Bernoulli structure (independent bits)"),
    GumbelCRF: (
        lambda s: callable(getattr(s, "gumbel_crf", None)),
        "a structure with relaxed forward-filtering backward-sampling (gumbel_crf: "
        "LinearChainCRF); GumbelSoftmax relaxes any structure",
    ),
    GumbelRao: (
        lambda s: _overrides(s, "conditional_perturb_noise"),
        "noise conditioned on a sample (Categorical, Bernoulli); STGumbelSoftmax works on any "
        "structure",
    ),
    UnorderedSetReinforce: (
        lambda s: issubclass(s, (Categorical, Bernoulli)),
        "a Categorical or Bernoulli structure",
    ),
}
"""The estimators defined for some structures only (subclasses follow their parent: DisARM)."""


def _rule(estimator: type[Estimator]) -> tuple[Callable[[type[Structure]], bool], str] | None:
    for kind in estimator.__mro__:
        if kind in STRUCTURE_RULES:
            return STRUCTURE_RULES[kind]
    return None


def applies_to(estimator: type[Estimator], structure: type[Structure]) -> bool:
    """Whether ``estimator`` is defined for structures of class ``structure``."""
    rule = _rule(estimator)
    return rule is None or rule[0](structure)


def check_estimator(
    estimator: type[Estimator] | Estimator,
    structure: type[Structure] | None,
    model: type | None = None,
    joint_likelihood: bool = True,
) -> None:
    """Raise `IncompatibleEstimatorError` when ``estimator`` does not apply.

    Args:
        estimator: the estimator or its class.
        structure: the class of the structures it is given (None: not known, not checked).
        model: the model's class, named in the message.
        joint_likelihood: whether the model has a joint likelihood (``joint_nll``).
    """
    kind = estimator if isinstance(estimator, type) else type(estimator)
    model_name = model.__name__ if model is not None else "the model"
    if getattr(kind, "multi_sample_bound", False) and not joint_likelihood:
        raise IncompatibleEstimatorError(
            f"{kind.__name__} estimates a multi-sample bound whose cost is the joint "
            f"-log p(x, z), but this model has no joint likelihood ({model_name} writes no "
            "joint_nll; the VAEs have one)"
        )
    rule = _rule(kind)
    if structure is not None and rule is not None and not rule[0](structure):
        raise IncompatibleEstimatorError(
            f"{kind.__name__} needs {rule[1]}; {model_name} builds a {structure.__name__}"
        )


def structure_of(model: Any) -> type[Structure] | None:
    """The class of the structures ``model.posterior`` builds, where the code says it.

    A model's ``structure_type`` attribute first, then the return annotation of
    its ``posterior`` and of its injected latent's; None when neither names a
    concrete structure.
    """
    declared = getattr(model, "structure_type", None)
    if isinstance(declared, type) and issubclass(declared, Structure):
        return declared
    for owner in (model, getattr(model, "latent", None)):
        posterior = getattr(type(owner), "posterior", None) if owner is not None else None
        if posterior is None:
            continue
        try:
            hint = typing.get_type_hints(posterior).get("return")
        except (NameError, TypeError):
            continue
        if inspect.isclass(hint) and issubclass(hint, Structure) and hint is not Structure:
            return hint
    return None


def estimators_in(module: nn.Module) -> Iterable[Estimator]:
    """Every estimator inside ``module`` (outer and nested ones)."""
    return [m for m in module.modules() if isinstance(m, Estimator)]


def check_model(model: nn.Module) -> None:
    """Check every estimator of a built model against its structure and likelihood.

    Raises:
        IncompatibleEstimatorError: the first estimator that does not apply, and why.
    """
    has_joint = getattr(model, "has_joint_nll", None)
    joint = bool(has_joint()) if callable(has_joint) else True
    structure = structure_of(model)
    for estimator in estimators_in(model):
        check_estimator(estimator, structure, type(model), joint)


def compatibility_table(
    estimators: Iterable[type[Estimator]], structures: Iterable[type[Structure]]
) -> str:
    """A Markdown table: ✓ where the estimator applies to the structure, – where not."""
    structures = list(structures)
    lines = [
        "| estimator | " + " | ".join(s.__name__ for s in structures) + " | needs |",
        "| --- | " + " | ".join("---" for _ in structures) + " | --- |",
    ]
    for estimator in estimators:
        marks = " | ".join("✓" if applies_to(estimator, s) else "–" for s in structures)
        rule = _rule(estimator)
        needs = rule[1].split(";")[0] if rule is not None else "any structure"
        if getattr(estimator, "multi_sample_bound", False):
            needs += "; a model with a joint likelihood (joint_nll)"
        lines.append(f"| `{estimator.__name__}` | {marks} | {needs} |")
    return "\n".join(lines)
