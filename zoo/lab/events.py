"""Read runs back from their TensorBoard event files, and summarise them over seeds.

A run's directory (``lightning_logs/<family>/version_N``, or what ``zoo.lab.compare``
writes) holds one or more event files (a resumed run, a later ``test``);
`read_scalars` merges them into one `Series` per tag, keeping the last value
logged at each step. `over_seeds` puts several runs of one setting on common
steps and gives their mean and standard deviation there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import (
    SCALARS,
    EventAccumulator,
)

__all__ = ["Band", "Series", "over_seeds", "read_scalars"]

IGNORED_TAGS = ("epoch", "hp_metric")
"""Scalars Lightning writes that are not measurements."""


@dataclass(frozen=True)
class Series:
    """One scalar tag of one run.

    Attributes:
        steps: ``(n,)`` int64, increasing global steps.
        values: ``(n,)`` float64.
        wall: ``(n,)`` float64, seconds since the run's first event.
    """

    steps: np.ndarray
    values: np.ndarray
    wall: np.ndarray

    @property
    def last(self) -> float:
        """The value at the last step."""
        return float(self.values[-1])


@dataclass(frozen=True)
class Band:
    """A tag over seeds on common steps: mean ± standard deviation (0 for one seed).

    Attributes:
        steps: ``(n,)``; values at steps that every seed logged.
        mean: ``(n,)``.
        std: ``(n,)``, the sample standard deviation over seeds (ddof = 1; 0 for one seed).
        wall: ``(n,)``, the mean wall time at each step.
        seeds: the number of runs.
    """

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    wall: np.ndarray
    seeds: int


def read_scalars(run_dir: str | Path) -> dict[str, Series]:
    """Every scalar tag of a run directory, as `Series` (empty when there are no events).

    Raises:
        ValueError: ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"no run directory at {run_dir}")
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    raw: dict[str, dict[int, tuple[float, float]]] = {}
    start = None
    for path in files:
        events = EventAccumulator(str(path), size_guidance={SCALARS: 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag in IGNORED_TAGS:
                continue
            for event in events.Scalars(tag):
                # Later files (a resumed run) overwrite the steps they log again.
                raw.setdefault(tag, {})[event.step] = (event.value, event.wall_time)
                start = event.wall_time if start is None else min(start, event.wall_time)
    out = {}
    for tag, by_step in raw.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        values = np.array([by_step[s][0] for s in steps], dtype=np.float64)
        wall = np.array([by_step[s][1] for s in steps], dtype=np.float64) - start
        out[tag] = Series(steps, values, wall)
    return out


def over_seeds(runs: Sequence[Series]) -> Band:
    """Mean and spread of one tag over runs, at the steps all of them logged.

    Raises:
        ValueError: no runs.
    """
    if not runs:
        raise ValueError("over_seeds needs at least one run")
    common = runs[0].steps
    for series in runs[1:]:
        common = np.intersect1d(common, series.steps)
    values = np.stack([s.values[np.searchsorted(s.steps, common)] for s in runs])
    wall = np.stack([s.wall[np.searchsorted(s.steps, common)] for s in runs])
    std = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(common))
    return Band(common, values.mean(0), std, wall.mean(0), len(runs))
