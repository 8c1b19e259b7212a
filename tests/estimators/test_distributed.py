"""Estimator state agrees across data-parallel ranks: a real 2-process gloo group."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo.estimators import MovingAverageBaseline, Reinforce
from zoo.estimators.baselines import global_mean
from zoo.structures import Categorical


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_costs(rank: int, step: int) -> torch.Tensor:
    # Different data on each rank, and batches of different sizes (3 and 5).
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.rand(2, 3 + 2 * rank, generator=g, dtype=torch.float64) * (1 + rank)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        baseline = MovingAverageBaseline(0.5)
        est = Reinforce(2, baseline)
        for step in range(3):
            costs = _rank_costs(rank, step)
            q = Categorical(torch.zeros(costs.shape[1], 2, 3, dtype=torch.float64))
            est(q, lambda z, c=costs: c)
        torch.save({k: v.clone() for k, v in baseline.state_dict().items()}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_moving_average_baseline_agrees_across_two_gloo_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.testing.assert_close(states[0], states[1], rtol=0, atol=0)
    # The same as one process that sees both ranks' costs as one global batch.
    single = MovingAverageBaseline(0.5)
    for step in range(3):
        single.update(torch.cat([_rank_costs(r, step) for r in range(2)], dim=1))
    torch.testing.assert_close(states[0]["average"], single.average)
    assert states[0]["steps"].item() == 3
    # And not what either rank alone would hold.
    alone = MovingAverageBaseline(0.5)
    for step in range(3):
        alone.update(_rank_costs(0, step))
    assert not torch.allclose(alone.average, single.average)


def test_global_mean_is_the_plain_mean_without_a_process_group() -> None:
    assert not dist.is_initialized()
    x = torch.arange(6.0).reshape(2, 3)
    assert global_mean(x).item() == pytest.approx(2.5)
