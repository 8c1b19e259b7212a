"""Baselines (control variates) for the score-function estimator.

A baseline b is subtracted from the cost in REINFORCE's (f - b) ∇ log q(z). It
keeps the estimator unbiased as long as b does not depend on the sample it is
used with:

* `MovingAverageBaseline`: an exponential moving average of past costs,
  updated only *after* it was used (Williams 1992).
* `LeaveOneOutBaseline`: the mean cost of the other S - 1 samples
  (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free").
* `LearnedBaseline`: an MLP of the (detached) log-potentials, trained by
  regression on the cost (NVIL, Mnih & Gregor 2014).
* `GreedyBaseline`: the cost of the MAP structure (self-critical training,
  Rennie et al. 2017).

Baselines are modules injected into `Reinforce`; their state lives in buffers
and parameters, so it reaches checkpoints. Under data-parallel training the
state agrees across ranks: `MovingAverageBaseline` updates from the mean
cost all-reduced over the ranks (`global_mean`), `LearnedBaseline`'s weights
are parameters that DDP's gradient all-reduce keeps equal, and the other two
hold no state.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from zoo.config import Configurable
from zoo.structures import Structure

__all__ = [
    "Baseline",
    "BaselineSizeError",
    "global_mean",
    "GreedyBaseline",
    "LearnedBaseline",
    "LeaveOneOutBaseline",
    "MovingAverageBaseline",
]


def global_mean(values: Tensor) -> Tensor:
    """The mean of ``values`` over every element on every process, a 0-dim tensor.

    Without ``torch.distributed`` (or with one process) this is ``values.mean()``.
    Otherwise the sum and the count are all-reduced together, so ranks with
    batches of different sizes still get the mean of the global batch. Every
    rank must call it at the same step (as every rank of a DDP step does).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values.mean()
    # float64 so the sum of many costs stays exact enough; MPS has no float64.
    work = torch.float32 if values.device.type == "mps" else torch.float64
    total = torch.stack([values.sum().to(work), values.new_tensor(values.numel(), dtype=work)])
    dist.all_reduce(total)
    return (total[0] / total[1]).to(values.dtype)


class Baseline(Configurable, nn.Module):
    """The baseline interface used by `Reinforce`.

    Per call, `Reinforce` asks for ``extra_samples(q)`` (structures whose cost
    the baseline needs, evaluated in the same single ``cost_fn`` call as the
    samples), then ``forward`` for b, then ``loss`` (added to the surrogate,
    for baselines that learn), then ``update`` with the detached costs.
    """

    min_samples: ClassVar[int] = 1
    """The fewest samples per batch element the baseline works with."""

    def extra_samples(self, q: Structure) -> Tensor | None:
        """Structures ``(k, *batch, *event)`` whose costs ``forward`` receives; None for none."""
        return None

    def forward(self, q: Structure, cost: Tensor, extra_cost: Tensor | None) -> Tensor:
        """The baseline b, broadcastable to the detached costs ``cost`` ``(S, *batch)``."""
        raise NotImplementedError

    def loss(self, baseline: Tensor, cost: Tensor) -> Tensor:
        """``(*batch)`` training loss of the baseline itself; 0 for baselines that do not learn."""
        return cost.new_zeros(cost.shape[1:])

    def update(self, cost: Tensor) -> None:
        """Take in the detached costs ``(S, *batch)`` after b was used."""


class MovingAverageBaseline(Baseline):
    """b = exponential moving average of the mean cost of earlier calls.

    The average is bias-corrected (as in Adam), so it starts at the first
    cost rather than at 0, and it is updated after use in training mode only.

    Under data-parallel training (``torch.distributed`` initialized with more
    than one process, as Lightning's DDP does) every rank updates from the
    mean cost over all ranks (`global_mean`, one all-reduce of two numbers
    per step), so the buffers agree across ranks and equal those of one
    process that sees the whole global batch.

    Args:
        decay: weight of the old average, in [0, 1).

    Raises:
        ValueError: decay outside [0, 1).
    """

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.register_buffer("average", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, q: Structure, cost: Tensor, extra_cost: Tensor | None) -> Tensor:
        correction = 1.0 - self.decay ** self.steps.to(self.average.dtype)
        value = torch.where(self.steps > 0, self.average / correction.clamp(min=1e-12), 0.0)
        return value.to(cost.dtype)

    @torch.no_grad()
    def update(self, cost: Tensor) -> None:
        if self.training:
            mean = global_mean(cost).to(self.average)
            self.average.mul_(self.decay).add_((1.0 - self.decay) * mean)
            self.steps.add_(1)

    def extra_repr(self) -> str:
        return f"decay={self.decay:g}"


class LeaveOneOutBaseline(Baseline):
    """b_s = mean cost of the other S - 1 samples of the same batch element; needs S ≥ 2."""

    min_samples = 2

    def forward(self, q: Structure, cost: Tensor, extra_cost: Tensor | None) -> Tensor:
        num = cost.shape[0]
        return (cost.sum(0, keepdim=True) - cost) / (num - 1)


class BaselineSizeError(ValueError):
    """`LearnedBaseline` given events it cannot read (another number of parts than
    ``in_features``, or events whose size varies with the input).

    A setting to change, found at the first step: ``train.py`` prints the message
    alone (exit status 2), and no checkpoint is written for it.
    """


class LearnedBaseline(Baseline):
    """b = MLP(θ), an input-dependent baseline trained by regression on the cost (NVIL).

    The log-potentials summarize the input the posterior was built from; they
    enter detached, so the regression trains only the baseline's own weights.

    Args:
        in_features: the number of parts of one event (e.g. N·K = 200 for 20 ten-way
            variables); None: not given, and the first step says the number the model's
            events have. Models whose events vary in size (a tagger's chains, a parser's
            trees) cannot use this baseline.
        hidden_features: width of the hidden layer.

    Raises:
        ValueError: non-positive sizes.
        BaselineSizeError: (a ValueError) at a step, events whose size is not ``in_features``.
    """

    def __init__(self, in_features: int | None = None, hidden_features: int = 64) -> None:
        super().__init__()
        if (in_features is not None and in_features < 1) or hidden_features < 1:
            raise ValueError(
                f"in_features and hidden_features must be ≥ 1, got {in_features} and {hidden_features}"
            )
        self.in_features = in_features
        self.net = (
            None
            if in_features is None
            else nn.Sequential(
                nn.Linear(in_features, hidden_features), nn.Tanh(), nn.Linear(hidden_features, 1)
            )
        )

    def forward(self, q: Structure, cost: Tensor, extra_cost: Tensor | None) -> Tensor:
        theta = q.log_potentials.detach()
        features = theta.reshape(*q.batch_shape, -1)  # (*batch, parts)
        if features.shape[-1] != self.in_features or self.net is None:
            if q.lengths is not None:  # no in_features fits: the batch's longest decides
                raise BaselineSizeError(
                    f"LearnedBaseline(in_features={self.in_features}) cannot apply: these "
                    f"events vary in size with the input (lengths; {features.shape[-1]} parts "
                    f"in this batch, event shape {tuple(q.event_shape)}), and a regression on "
                    "a fixed number of parts cannot read them: use LeaveOneOutBaseline, "
                    "GreedyBaseline or MovingAverageBaseline"
                )
            raise BaselineSizeError(
                f"LearnedBaseline(in_features={self.in_features}) got events with "
                f"{features.shape[-1]} parts (event shape {tuple(q.event_shape)}): set "
                f"in_features={features.shape[-1]}"
            )
        # Forbidden parts (θ = -inf) would poison the regression: read them as 0.
        features = torch.nan_to_num(features, neginf=0.0, posinf=0.0).to(self.net[0].weight.dtype)
        return self.net(features).squeeze(-1).unsqueeze(0).to(cost.dtype)  # (1, *batch)

    def loss(self, baseline: Tensor, cost: Tensor) -> Tensor:
        return (baseline - cost).pow(2).mean(0)


class GreedyBaseline(Baseline):
    """b = f(argmax q), the cost of the MAP structure (self-critical)."""

    def extra_samples(self, q: Structure) -> Tensor:
        return q.argmax().unsqueeze(0)  # (1, *batch, *event)

    def forward(self, q: Structure, cost: Tensor, extra_cost: Tensor | None) -> Tensor:
        if extra_cost is None:
            raise ValueError("GreedyBaseline needs the cost of the MAP structure")
        return extra_cost
