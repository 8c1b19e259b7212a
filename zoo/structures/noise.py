"""Numerically safe perturbation noise shared by every structure and estimator.

Gumbel(0, 1) noise is ``-log(-log U)`` and Logistic(0, 1) noise is
``log U - log(1 - U)`` with ``U ~ Uniform(0, 1)``. Both blow up when ``U`` hits
0 or 1, which a float generator does return. We draw ``U`` in float32 (or
float64 when asked for float64), clamp it to ``[tiny, 1 - eps]`` of that dtype
and only then cast the noise to the requested dtype: the result is finite in
float16, bfloat16, float32 and float64 alike (|G| < 90, well inside float16's
range of 65504).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gumbel_noise", "logistic_noise", "safe_uniform"]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Reduced-precision floats have too few mantissa bits near 1 for a uniform
    # draw (float16's 1 - eps is 0.9995): draw in float32 and cast at the end.
    return torch.float64 if dtype == torch.float64 else torch.float32


def safe_uniform(
    shape: torch.Size | tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform(0, 1) draws that are never exactly 0 or 1.

    Args:
        shape: shape of the result.
        dtype: floating dtype the draws are made in (float32 or float64).
        device: device of the result.
        generator: optional random generator.

    Returns:
        Tensor of ``shape`` with values in ``[tiny, 1 - eps]`` of ``dtype``.
    """
    finfo = torch.finfo(dtype)
    u = torch.rand(shape, dtype=dtype, device=device, generator=generator)
    return u.clamp_(min=finfo.tiny, max=1.0 - finfo.eps)


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """I.i.d. Gumbel(0, 1) noise, finite in every floating dtype.

    Example:
        >>> g = gumbel_noise((1000,), dtype=torch.float16)
        >>> bool(torch.isfinite(g).all())
        True
    """
    u = safe_uniform(shape, _work_dtype(dtype), device, generator)
    return (-torch.log(-torch.log(u))).to(dtype)


def logistic_noise(
    shape: torch.Size | tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """I.i.d. Logistic(0, 1) noise (the difference of two Gumbels), finite in every dtype.

    ``1[θ + L > 0]`` with ``L ~ Logistic(0, 1)`` is an exact Bernoulli(sigmoid(θ)) sample.
    """
    u = safe_uniform(shape, _work_dtype(dtype), device, generator)
    return (torch.log(u) - torch.log1p(-u)).to(dtype)
