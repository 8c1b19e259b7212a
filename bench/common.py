"""Timing and memory helpers shared by the benchmarks on a shared 2-core CPU.

Method:

* **Interleaved timing** (`measure`): every candidate of one table row is
  warmed up, then the candidates are timed one sample each per round, in a
  fresh seeded random order each round (in a fixed cyclic order a candidate
  nearly always follows the same one, and the one right after torch-struct's
  chain, which frees gigabytes, paid up to 8 % for faulting memory back in).
  A sample loops its candidate for at
  least ``min_time`` seconds (one call if it is slower) and records the time
  per call. Before each sample the script waits (briefly) for other
  processes to go quiet; a sample during which other processes used more
  than ``busy`` cores is rejected. The result is the median of the accepted
  samples, or of all samples where fewer than 3 were accepted (marked ``*``).
  Slow candidates get fewer samples so that each row stays within a budget.
* **Peak memory** (`peak_rss_growth`): the call runs in a fresh spawned
  process, once to warm up and once measured; the growth is the peak resident
  set during the measured call (VmHWM, reset just before it) minus the
  resident set just before it, so torch's allocations (which tracemalloc
  cannot see) count and one-time costs do not.

Ratios measured inside one interleaved run are the reliable quantity; the
machine's absolute speed drifts by up to 2x between runs.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Timing",
    "available_memory",
    "format_ms",
    "measure",
    "peak_rss_growth",
    "wait_for_quiet",
]

_HZ = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ CPU load
def _cpu_snapshot() -> tuple[float, float, float]:
    """(busy CPU seconds of the machine, CPU seconds of this process, wall seconds)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    own = os.times()
    return (sum(ticks) - idle) / _HZ, own.user + own.system, time.perf_counter()


def _others_cores(start: tuple[float, float, float]) -> float:
    """Cores used by other processes since ``start`` (a `_cpu_snapshot`)."""
    end = _cpu_snapshot()
    wall = max(end[2] - start[2], 1e-9)
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / wall)


def wait_for_quiet(threshold: float, max_wait: float = 1.0, window: float = 0.1) -> float:
    """Sleep until other processes use < ``threshold`` cores or ``max_wait`` passes.

    Returns:
        The load (cores used by others) of the last window.
    """
    deadline = time.perf_counter() + max_wait
    while True:
        start = _cpu_snapshot()
        time.sleep(window)
        load = _others_cores(start)
        if load < threshold or time.perf_counter() > deadline:
            return load


# -------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds per call of one candidate: accepted samples and all samples."""

    accepted: list[float] = field(default_factory=list)
    everything: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # others' cores during each sample
    note: str = ""  # why there is no time ("n/a", "OOM", ...)

    @property
    def ok(self) -> bool:
        return bool(self.everything)

    @property
    def fallback(self) -> bool:
        """True when fewer than 3 samples were accepted and all samples are used."""
        return len(self.accepted) < 3

    @property
    def samples(self) -> list[float]:
        return self.everything if self.fallback else self.accepted

    @property
    def load(self) -> float:
        """Median number of cores other processes used while this candidate was timed."""
        return statistics.median(self.loads) if self.loads else math.nan

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.ok else math.nan

    def __str__(self) -> str:
        if not self.ok:
            return self.note or "-"
        low, high = min(self.samples), max(self.samples)
        star = "*" if self.fallback else ""
        return f"{format_ms(self.median)}{star} [{format_ms(low)}–{format_ms(high)}]"


def format_ms(seconds: float) -> str:
    """Milliseconds with three significant digits."""
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _sample(fn: Callable[[], Any], min_time: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def measure(
    candidates: dict[str, Callable[[], Any] | None],
    repeats: int = 7,
    min_time: float = 0.1,
    budget: float = 4.0,
    busy: float = 0.3,
    quiet_wait: float = 1.0,
) -> dict[str, Timing]:
    """Time candidates interleaved: one sample each per round, in a fresh seeded order each round.

    Args:
        candidates: name → zero-argument callable (None: not available, no time).
        repeats: samples per candidate (at most).
        min_time: seconds each sample loops its candidate for (at least one call).
        budget: seconds of samples per candidate; a slow candidate gets
            ``max(2, budget / t_call)`` samples instead of ``repeats``.
        busy: a sample during which other processes used more cores is rejected.
        quiet_wait: at most this long is spent waiting for quiet before a sample.

    Returns:
        name → `Timing`. A candidate that raises keeps the exception's class
        name as its note (e.g. "OutOfMemoryError").
    """
    timings = {name: Timing() for name in candidates}
    wanted: dict[str, int] = {}
    for name, fn in candidates.items():
        if fn is None:
            timings[name].note = "n/a"
            continue
        try:
            start = time.perf_counter()
            fn()  # warm-up: allocator, caches, lazy imports
            first = time.perf_counter() - start
            if first < min_time:
                fn()
        except Exception as error:
            timings[name].note = type(error).__name__
            continue
        wanted[name] = max(2, min(repeats, int(budget / max(first, 1e-9))))
    names = list(wanted)
    for round_ in range(max(wanted.values(), default=0)):
        # A fresh (seeded) order each round: in a fixed cyclic order a candidate
        # nearly always follows the same one, and the one right after a candidate
        # that frees gigabytes (torch-struct's chain) pays for faulting memory back in.
        order = random.Random(round_).sample(names, len(names))
        for name in order:
            timing = timings[name]
            if len(timing.everything) >= wanted[name]:
                continue
            wait_for_quiet(busy, max_wait=quiet_wait)
            start = _cpu_snapshot()
            seconds = _sample(candidates[name], min_time)
            load = _others_cores(start)
            timing.everything.append(seconds)
            timing.loads.append(load)
            if load <= busy:
                timing.accepted.append(seconds)
    return timings


# -------------------------------------------------------------------- memory
def available_memory() -> int:
    """Bytes of MemAvailable (Linux), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# A fixed glibc mmap threshold: blocks of 64 KiB and more are mapped and unmapped
# one by one, so the resident set follows the live tensors. (By default glibc
# raises the threshold after the first free of a large block, and the freed
# warm-up memory would then be reused unseen.)
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _status_bytes(key: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset the peak resident set (VmHWM) to the current one; False where Linux refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(setup: Callable[..., Callable[[], Any]], args: tuple) -> int:
    import gc

    import torch

    torch.set_num_threads(2)
    fn = setup(*args)  # the inputs are built first: they are not the call's growth
    fn()  # warm-up: kernels paged in, thread pools and allocator arenas are one-time costs
    gc.collect()
    if _reset_peak():
        before = _status_bytes("VmRSS")
        fn()
        return max(0, _status_bytes("VmHWM") - before)
    # Without clear_refs the peak so far may stand above this call's: an overestimate.
    before = _status_bytes("VmRSS")
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return max(0, peak - before)


def peak_rss_growth(setup: Callable[..., Callable[[], Any]], *args: Any) -> int:
    """Peak RSS growth in bytes of one call, measured in a fresh spawned process.

    Args:
        setup: a picklable (module-level) function; ``setup(*args)`` builds the
            inputs and returns the zero-argument call to measure. The call must
            leave nothing alive that it allocated (e.g. set ``theta.grad = None``
            at its end), since it runs twice.

    The call runs once to warm up, the peak resident set is reset
    (``/proc/self/clear_refs``), and the growth is the peak during the second
    call minus the resident set just before it. Where the reset is refused,
    ``ru_maxrss`` stands in for the peak (an overestimate). The child runs
    with a fixed glibc mmap threshold (64 KiB) so that freed blocks leave the
    resident set and reused ones are counted again.
    """
    context = multiprocessing.get_context("spawn")
    saved = {key: os.environ.get(key) for key in _MALLOC_ENV}
    os.environ.update(_MALLOC_ENV)  # read by glibc when the child starts
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(_child, setup, args).result()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
