"""What every metric checks of its input, and what it says when it has nothing to score.

A metric's ``update`` takes ids (cluster ids, gold tags, classes, lengths) or
scores and indicators; NaN and fractional values are refused with their first
index, before they could be read as ids (``NaN.long()`` is −2⁶³). A metric whose
``compute`` finds nothing to score returns NaN and warns, as torchmetrics' own
metrics do when a denominator is zero: never 0 % or 100 % of nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

__all__ = ["as_ids", "nothing_to_score", "require_finite"]


def _first(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def require_finite(metric: str, name: str, values: Tensor) -> None:
    """Raise ``ValueError`` when a floating tensor holds NaN or ±inf, naming the first index."""
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        bad = ~torch.isfinite(values)
        index = _first(bad)
        raise ValueError(
            f"{metric}: {name} must be finite, got {float(values[index])} at index {index} "
            f"({int(bad.sum())} non-finite value(s) in all)"
        )


def as_ids(metric: str, name: str, values: Tensor) -> Tensor:
    """``values`` as a long tensor of ids; integer, boolean or integral floating input only.

    Raises:
        ValueError: a complex tensor, or a floating one with a NaN, an infinity or
            a fraction (the first one named with its index).
    """
    if values.is_complex():
        raise ValueError(f"{metric}: {name} must hold integer ids, got dtype {values.dtype}")
    if values.is_floating_point():
        require_finite(metric, name, values)
        fractional = values != values.round()
        if bool(fractional.any()):
            index = _first(fractional)
            raise ValueError(
                f"{metric}: {name} must hold integer ids, got {float(values[index])} at "
                f"index {index} (dtype {values.dtype})"
            )
    return values.long()


def nothing_to_score(metric: str, what: str, like: Tensor) -> Tensor:
    """Warn that ``metric`` had nothing to score and return NaN (a 0-d tensor like ``like``)."""
    rank_zero_warn(f"{metric}: {what}; its value is NaN", UserWarning)
    return torch.full((), float("nan"), dtype=like.dtype, device=like.device)
