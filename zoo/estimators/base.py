"""The estimator interface: E_{z∼q}[f(z)] → a differentiable surrogate.

An `Estimator` takes a structure q and a cost function f and returns an
`Estimate`: the cost to report, and a surrogate whose gradient is the
estimator's estimate of ∇ E_q[f(z)] (with respect to θ and to the cost's own
parameters). ``Estimate.objective`` joins the two: its value is the cost and
its gradient the estimate, which is what a model adds to its loss and what
lets estimators nest (the cost of an outer latent can be an inner objective).

Estimators use only the `Structure` interface (`sample`, `log_prob`,
`marginals`, `argmax`, `rsample`, `rsample_with_hard`, `perturb_noise`,
`enumerate_support`, `with_potentials`), so each one works unchanged on
factorized variables, chains and trees. They are vectorized over the S
samples: ``cost_fn`` is called once, on z of shape ``(S, *batch, *event)``.

A new estimator subclasses `Estimator` and writes ``forward``; one that
differentiates through z subclasses `zoo.estimators.PathwiseEstimator` and
returns its ``estimate(q, cost_fn, z, stats)`` (``docs/new-estimator.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from zoo.config import Configurable, from_config
from zoo.structures import Structure

__all__ = ["CostFn", "Estimate", "Estimator", "TemperedEstimator", "as_estimator"]

CostFn = Callable[[Tensor], Tensor]
"""f: z ``(S, *batch, *event)`` → per-sample costs ``(S, *batch)``."""


@dataclass(frozen=True)
class Estimate:
    """What an estimator returns.

    Attributes:
        z: ``(S, *batch, *event)``, what ``cost_fn`` was evaluated on.
        cost: ``(*batch)``, the detached mean of the cost over the samples: report this.
        surrogate: ``(*batch)``, backpropagate this: its gradient is the estimate,
            its value means nothing.
        stats: detached scalars for logging (temperature, baseline, cost variance, ...).
    """

    z: Tensor
    cost: Tensor
    surrogate: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)

    @property
    def objective(self) -> Tensor:
        """``(*batch)``: value = cost, gradient = the estimate."""
        return self.cost + self.surrogate - self.surrogate.detach()


class Estimator(Configurable, nn.Module):
    """Estimates ∇ E_{z∼q}[f(z)] for a structure q.

    ``init_config()`` describes it as a ``class_path`` / ``init_args`` config
    (`zoo.config`), which `from_config` builds again.

    Args:
        num_samples: S, the number of samples per batch element (≥ 1).

    Raises:
        ValueError: num_samples < 1.
    """

    multi_sample_bound: ClassVar[bool] = False
    """True for an estimator of a multi-sample bound (`VIMCO`) rather than of E_q[f(z)]:
    its ``cost_fn`` returns −log p(x, z), the prior included, and the model adds no
    KL term (`zoo.models.base.LatentVariableModel` gives it ``joint_nll``)."""

    def __init__(self, num_samples: int = 1) -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer ≥ 1, got {num_samples!r}")
        self.num_samples = num_samples

    def forward(self, q: Structure, cost_fn: CostFn) -> Estimate:
        """Evaluate ``cost_fn`` on samples of ``q`` and build the surrogate."""
        raise NotImplementedError

    def evaluate(self, cost_fn: CostFn, z: Tensor, q: Structure) -> Tensor:
        """``cost_fn(z)``, checked to be ``(S, *batch)``, real and finite.

        Integer and boolean costs (a count, a 0/1 loss) are cast to θ's
        floating dtype. A NaN or infinite cost raises before any estimator
        state (a baseline's running average) is touched: one NaN in a moving
        average would turn every later gradient into NaN. The check is one
        reduction and one read of a scalar per call.

        Raises:
            ValueError: a cost of the wrong shape, a complex cost, or non-finite costs
                (the message names the estimator and counts the bad values).
        """
        cost = cost_fn(z)
        expected = z.shape[: z.dim() - q.event_dim]
        if not isinstance(cost, Tensor) or cost.shape != expected:
            got = tuple(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
            raise ValueError(
                f"{type(self).__name__}: cost_fn must map z of shape {tuple(z.shape)} to costs of "
                f"shape {tuple(expected)} (samples, *batch), got {got}"
            )
        if cost.is_complex():
            raise ValueError(
                f"{type(self).__name__}: cost_fn returned complex costs ({cost.dtype})"
            )
        if not cost.is_floating_point():
            cost = cost.to(q.log_potentials.dtype)
        self.check_finite(cost)
        return cost

    def check_finite(self, cost: Tensor) -> None:
        """Raise ValueError if ``cost`` holds a NaN or an infinity, with how many it holds."""
        # amax propagates NaN and never overflows (a sum of large costs could):
        # one reduction, one scalar read; the count is computed only on failure.
        if cost.numel() and not bool(torch.isfinite(cost.detach().abs().amax())):
            bad = cost.detach()
            count = int((~torch.isfinite(bad)).sum())
            nans = int(torch.isnan(bad).sum())
            raise ValueError(
                f"{type(self).__name__}: cost_fn returned {count} non-finite value(s) "
                f"({nans} NaN, {count - nans} ±inf) among {bad.numel()} costs of shape "
                f"{tuple(bad.shape)}; expected finite costs (no estimator state was updated)"
            )

    @staticmethod
    def spread(cost: Tensor) -> dict[str, Tensor]:
        """The variance of the cost over samples, averaged over the batch (S ≥ 2)."""
        if cost.shape[0] < 2:
            return {}
        return {"cost_var": cost.detach().var(0).mean()}

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"


class TemperedEstimator(Estimator):
    """An estimator with a temperature τ > 0, kept in a buffer so it reaches checkpoints.

    ``estimator.temperature`` reads and writes it as a plain float, which is
    how an annealing callback sets it. Under data-parallel training it needs
    no synchronization: the callback computes it from the global step, which
    every rank shares, so every rank sets the same value.

    Args:
        temperature: τ > 0.
        num_samples: S ≥ 1.

    Raises:
        ValueError: τ ≤ 0 or not finite.
    """

    def __init__(self, temperature: float = 1.0, num_samples: int = 1) -> None:
        super().__init__(num_samples)
        self.register_buffer("_temperature", torch.tensor(self._check(temperature)))

    @staticmethod
    def _check(temperature: float) -> float:
        t = float(temperature)
        if not t > 0 or t == float("inf"):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        return t

    @property
    def temperature(self) -> float:
        return float(self._temperature)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature.fill_(self._check(value))

    def temperature_stats(self) -> dict[str, Tensor]:
        return {"temperature": self._temperature.detach().clone()}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, {super().extra_repr()}"


def as_estimator(value: Estimator | Mapping[str, Any], name: str = "estimator") -> Estimator:
    """``value`` if it is an `Estimator`, the estimator its config describes if it is a config.

    Models take either: an object in Python, a config from YAML or from a
    checkpoint's hyperparameters (`zoo.config.from_config` builds it).

    Raises:
        ValueError: anything else, or a config of something else (the message names
            ``name`` and what it got).
    """
    if isinstance(value, Estimator):
        return value
    if isinstance(value, Mapping):
        return from_config(value, Estimator, name)
    raise ValueError(
        f"{name} must be a zoo.estimators.Estimator or its config "
        f"{{'class_path': ..., 'init_args': {{...}}}}, got {type(value).__name__}"
    )
