"""Speed of the zoo's chain and tree structures against torch-struct 0.5, on the CPU.

For each structure, size and operation the two implementations are timed
interleaved in one run (`bench.common.measure`: warm-up, a fresh order each round, median
of several samples, samples taken while other processes were busy rejected),
and the ratio t_torch-struct / t_zoo is printed. Operations, on float32
potentials that require grad (as in training), the distribution built inside
the timed call:

* ``logZ+grad``: log-partition, summed, and its backward pass;
* ``marginals``: the marginals as a differentiable tensor (torch-struct and
  the zoo's chain both record a graph);
* ``argmax``: the MAP structure;
* ``sample(10)``: 10 exact samples.

Sizes: chain (B, N, C) = (32, 50, 20), (32, 100, 45), (128, 30, 10); trees
N = 20, 40, 80 at B = 32 (TreeCRF with L = 1 label). torch-struct lacks
argmax and sampling for non-projective trees ("n/a"); its chain sampler needs
more than 23 GiB at (32, 100, 45) and is skipped there. A structure that is
not importable yet is skipped with the reason.

Peak memory: log Z + gradient of the chain at (8, 128, 32) and (8, 512, 64),
each in a fresh process (peak RSS growth of the call, after a warm-up call so
that one-time costs are not counted), for the zoo and, where
a size estimate fits under both half the available memory and
``--ts-memory-cap`` (8 GiB: the machine is shared), for torch-struct.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless the
environment says otherwise). With the default policy the second intra-op
thread spins after every parallel region; on this shared, often oversubscribed
machine it then competes with the main thread and other sessions' processes,
and a parallel kernel can stall for a scheduler time slice (~16 ms), which
distorts whichever candidate runs more parallel kernels. Passive waiting
instead costs every parallel region a wake-up of tens of microseconds. That
slows the zoo's chain (many small kernels) more than torch-struct (few large
ones): on a quiet machine the chain's log Z + gradient at (32, 50, 20) took
about 9.5 ms passive against 6.4 ms with the default policy, torch-struct the
same either way, so the ratios printed here are conservative for the zoo.
The matrix-tree operations go the other way: MKL threads each small batched
solve on its own, a wake-up per matrix when waiting passively, which the zoo
avoids by solving small matrices on one thread and torch-struct does not;
``OMP_WAIT_POLICY= python bench/structures.py`` (an empty value: libgomp's
default) measures the default policy.

Columns beyond torch-struct, all timed in the same interleaved round:

* ``before``: the zoo of another revision (``--before REV``, default
  ``7705a4b``, the base of the chart refactor), extracted with ``git archive``
  into a temporary directory and imported in this process under its own
  module names; ``after/before`` > 1 means the current code is faster.
* ``chart`` (chain rows only): the chain's generic paths on the chart core
  (``ChartStructure.log_partition``, its autograd marginals, ``argmax`` by the
  max semiring, ``sample`` by the sampling semiring), which the chain's
  hand-written passes override; ``chart / zoo`` > 1 is what each override
  saves, the reason it is kept (``--no-chart`` leaves the column out).
* ``SuPar`` (``supar.structs``: LinearChainCRF, DependencyCRF, MatrixTree,
  ConstituencyCRF) and ``pytorch-crf`` (``torchcrf.CRF``: chain log-likelihood
  and Viterbi only), each on its own layout of the same sizes; a column is
  skipped cleanly when its package is missing (``pip install -e .[bench]``).
  ``best peer / zoo`` divides the fastest peer's time by the zoo's.

Run: python bench/structures.py [--quick] [--only chain|trees] [--repeats 5] [--verbose]
     [--before REV | --no-before] [--no-chart] [--no-peers] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before torch starts OpenMP: passive waiting (see the module docstring).
# OMP_WAIT_POLICY in the environment takes precedence.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Timing,
    available_memory,
    measure,
    peak_rss_growth,
)

GIB = 2**30
CHAIN_SIZES = [(32, 50, 20), (32, 100, 45), (128, 30, 10)]
TREE_SIZES = [(32, 20), (32, 40), (32, 80)]
MEMORY_SIZE = (8, 512, 64)
QUICK_CHAIN, QUICK_TREE, QUICK_MEMORY = [(16, 20, 10)], [(16, 12)], (8, 128, 32)
OPS = ("logZ+grad", "marginals", "argmax", "sample(10)")
NUM_SAMPLES = 10

# torch-struct's chain sampler materialises (B, N/2, C, C, C)-sized charts per
# sample batch; at (32, 100, 45) that is more than this machine's 23 GiB.
TS_CHAIN_SAMPLE_SKIP = {(32, 100, 45): "OOM >23GiB"}


# ------------------------------------------------------------------ imports
def _torch_struct() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("torch_struct")


def _zoo(name: str) -> tuple[Any, str]:
    """``(class, "")`` from zoo.structures, or ``(None, reason)`` if it cannot be imported."""
    try:
        module = importlib.import_module("zoo.structures")
        return getattr(module, name), ""
    except Exception as error:
        return None, f"{type(error).__name__}: {error}"


ROOT = Path(__file__).resolve().parent.parent
BASE_REVISION = "7705a4b"


def _optional(name: str) -> Any:
    """An optional peer package, or None when it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except ImportError:
        return None


def _before(revision: str) -> Any:
    """``zoo.structures`` of another revision, imported beside the current one.

    The revision's ``zoo/`` is extracted by ``git archive`` into a temporary
    directory (nothing in the working tree or the repository changes), the
    current ``zoo`` modules are set aside while it is imported, and then put
    back: the old classes keep their own module globals.
    """
    archive = subprocess.run(
        ["git", "archive", revision, "zoo"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    folder = tempfile.mkdtemp(prefix="zoo-before-")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    current = {k: m for k, m in sys.modules.items() if k == "zoo" or k.startswith("zoo.")}
    for name in current:
        del sys.modules[name]
    sys.path.insert(0, folder)
    try:
        return importlib.import_module("zoo.structures")
    finally:
        sys.path.remove(folder)
        for name in [k for k in sys.modules if k == "zoo" or k.startswith("zoo.")]:
            del sys.modules[name]
        sys.modules.update(current)
        shutil.rmtree(folder, ignore_errors=True)


def _quiet(make: Callable[[], Any]) -> Any:
    # torch-struct's distributions warn about missing arg_constraints on every construction.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


# --------------------------------------------------------------- operations
def _ops_torch_struct(make: Callable[[torch.Tensor], Any], theta: torch.Tensor) -> dict:
    def log_z_grad() -> None:
        theta.grad = None
        _quiet(lambda: make(theta)).partition.sum().backward()

    return {
        "logZ+grad": log_z_grad,
        "marginals": lambda: _quiet(lambda: make(theta)).marginals,
        "argmax": lambda: _quiet(lambda: make(theta)).argmax,
        "sample(10)": lambda: _quiet(lambda: make(theta)).sample((NUM_SAMPLES,)),
    }


def _ops_zoo(make: Callable[[torch.Tensor], Any], theta: torch.Tensor) -> dict:
    def log_z_grad() -> None:
        theta.grad = None
        make(theta).log_partition().sum().backward()

    return {
        "logZ+grad": log_z_grad,
        "marginals": lambda: make(theta).marginals(),
        "argmax": lambda: make(theta).argmax(),
        "sample(10)": lambda: make(theta).sample(NUM_SAMPLES),
    }


def _ops_chart(make: Callable[[torch.Tensor], Any], theta: torch.Tensor) -> dict:
    """The chain's generic paths on the chart core (`ChartStructure`: its `inside` pass
    over the log, max and sampling semirings), bypassing the hand-written overrides."""
    chart = importlib.import_module("zoo.structures.chart").ChartStructure

    def log_z_grad() -> None:
        theta.grad = None
        chart.log_partition(make(theta)).sum().backward()

    def marginals() -> torch.Tensor:  # ∂A/∂θ with a graph, as Structure.marginals records
        (mu,) = torch.autograd.grad(
            chart.log_partition(make(theta)).sum(), theta, create_graph=True
        )
        return mu

    return {
        "logZ+grad": log_z_grad,
        "marginals": marginals,
        "argmax": lambda: chart.argmax(make(theta)),
        "sample(10)": lambda: chart.sample(make(theta), NUM_SAMPLES),
    }


def _ops_supar(make: Callable[[], Any], leaf: torch.Tensor) -> dict:
    """SuPar's struct built from ``make()`` (its own layout of the scores ``leaf``)."""

    def log_z_grad() -> None:
        leaf.grad = None
        make().log_partition.sum().backward()

    return {
        "logZ+grad": log_z_grad,
        "marginals": lambda: make().marginals,
        "argmax": lambda: make().argmax,
    }


def _ops_pytorch_crf(b: int, n: int, c: int) -> dict:
    """pytorch-crf's CRF: emissions (B, N, C) and one C×C transition matrix."""
    torchcrf = _optional("torchcrf")
    crf = torchcrf.CRF(c, batch_first=True)
    emissions = _potentials((b, n, c))
    tags = torch.zeros(b, n, dtype=torch.long)
    mask = torch.ones(b, n, dtype=torch.bool)  # its default mask is uint8, which torch deprecates

    def log_z_grad() -> None:
        emissions.grad = None
        crf(emissions, tags, mask).backward()  # log-likelihood: one path's score minus log Z

    return {"logZ+grad": log_z_grad, "argmax": lambda: crf.decode(emissions, mask)}


def _potentials(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).requires_grad_(True)


# ------------------------------------------------------------------- tables
Row = tuple[str, str, str, dict[str, Timing]]  # structure, size, op, candidate → timing
PEERS = ("ts", "supar", "pytorch_crf")
COLUMNS = {"ts": "torch-struct", "supar": "SuPar", "pytorch_crf": "pytorch-crf"}


def _ratio(ts: Timing, zoo: Timing) -> float:
    if ts.ok and zoo.ok:
        return ts.median / zoo.median
    return math.nan


def _text(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _print_rows(rows: list[Row]) -> None:
    header = (
        "structure", "size", "op", "torch-struct ms", "SuPar ms", "pytorch-crf ms",
        "before ms", "chart ms", "zoo ms", "ts / zoo", "best peer / zoo", "before / zoo",
        "chart / zoo", "others' load",
    )  # fmt: skip
    cells = []
    for s, size, op, t in rows:
        zoo = t["zoo"]
        peers = [t[p].median for p in PEERS if p in t and t[p].ok]
        best = _ratio(Timing(), zoo) if not peers or not zoo.ok else min(peers) / zoo.median
        before = _ratio(t["before"], zoo) if "before" in t else math.nan
        chart = _ratio(t["chart"], zoo) if "chart" in t else math.nan
        loads = [x.load for x in t.values() if x.ok]
        load = f"{max(loads):.1f} cores" if loads else "-"
        cells.append(
            (
                s, size, op,
                *(str(t[k]) if k in t else "-" for k in ("ts", "supar", "pytorch_crf", "before", "chart")),
                str(zoo), _text(_ratio(t["ts"], zoo) if "ts" in t else math.nan), _text(best),
                _text(before), _text(chart), load,
            )
        )  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for r in cells:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)), flush=True)


def _run_row(
    name: str,
    size: str,
    ops: dict[str, dict],
    skips: dict[str, str],
    args: Any,
) -> list[Row]:
    """Time one structure and size: ``ops`` maps a candidate ("ts", "supar",
    "pytorch_crf", "before", "zoo") to its operations."""
    rows = []
    for op in OPS:
        candidates = {key: ops[key].get(op) for key in ops}
        if op in skips and "ts" in candidates:
            candidates["ts"] = None
        timings = measure(
            candidates, repeats=args.repeats, min_time=args.min_time, budget=args.budget
        )
        if op in skips and "ts" in timings:
            timings["ts"].note = skips[op]
        rows.append((name, size, op, timings))
        if args.verbose:
            _print_rows([rows[-1]])
    return rows


def chain_rows(args: Any) -> list[Row]:
    ts = _torch_struct()
    chain, reason = _zoo("LinearChainCRF")
    if chain is None:
        print(f"chain: skipped (zoo.structures.LinearChainCRF not importable: {reason})")
        return []
    supar = _optional("supar.structs")
    rows = []
    for size in QUICK_CHAIN if args.quick else CHAIN_SIZES:
        b, n, c = size
        theta = _potentials((b, n - 1, c, c))
        ops = {"ts": _ops_torch_struct(ts.LinearChainCRF, theta), "zoo": _ops_zoo(chain, theta)}
        if args.no_peers:
            del ops["ts"]
        if supar is not None and not args.no_peers:
            scores, trans = _potentials((b, n, c)), _potentials((c + 1, c + 1), seed=1)
            ops["supar"] = _ops_supar(lambda s=scores, t=trans: supar.LinearChainCRF(s, t), scores)
        if _optional("torchcrf") is not None and not args.no_peers:
            ops["pytorch_crf"] = _ops_pytorch_crf(b, n, c)
        if args.before_structures is not None:
            ops["before"] = _ops_zoo(args.before_structures.LinearChainCRF, theta)
        if not args.no_chart:
            ops["chart"] = _ops_chart(chain, theta)
        skips = {}
        if size in TS_CHAIN_SAMPLE_SKIP:
            skips["sample(10)"] = TS_CHAIN_SAMPLE_SKIP[size]
        rows += _run_row("chain", str(size), ops, skips, args)
    return rows


def tree_rows(args: Any) -> list[Row]:
    ts = _torch_struct()
    kinds = [
        # name, zoo class, torch-struct constructor, potentials shape, zoo kwargs, ts skips
        ("DependencyCRF", lambda b, n: (b, n, n), {"multiroot": True}, {}),
        ("NonProjectiveDependencyCRF", lambda b, n: (b, n, n), {"multiroot": False},
         {"argmax": "n/a", "sample(10)": "n/a"}),
        ("TreeCRF", lambda b, n: (b, n, n, 1), {}, {}),
    ]  # fmt: skip
    supar = _optional("supar.structs")
    # SuPar's counterpart: scores (B, N+1, N+1) over fenceposts or with ROOT as node 0.
    peers = {
        "DependencyCRF": lambda s: supar.DependencyCRF(s, multiroot=True),
        "NonProjectiveDependencyCRF": lambda s: supar.MatrixTree(s, multiroot=False),
        "TreeCRF": lambda s: supar.ConstituencyCRF(s),
    }
    rows = []
    for name, shape, kwargs, skips in kinds:
        zoo_class, reason = _zoo(name)
        if zoo_class is None:
            print(f"{name}: skipped (zoo.structures.{name} not importable: {reason})")
            continue
        ts_class = getattr(ts, name)
        for b, n in QUICK_TREE if args.quick else TREE_SIZES:
            theta = _potentials(shape(b, n))
            ops = {
                "ts": _ops_torch_struct(lambda t, k=ts_class, kw=kwargs: k(t, **kw), theta),
                "zoo": _ops_zoo(lambda t, k=zoo_class, kw=kwargs: k(t, **kw), theta),
            }
            if args.no_peers:
                del ops["ts"]
            if supar is not None and not args.no_peers:
                scores = _potentials((b, n + 1, n + 1))
                ops["supar"] = _ops_supar(lambda s=scores, k=peers[name]: k(s), scores)
            if args.before_structures is not None:
                old = getattr(args.before_structures, name)
                ops["before"] = _ops_zoo(lambda t, k=old, kw=kwargs: k(t, **kw), theta)
            rows += _run_row(name, f"({b}, {n})", ops, skips, args)
    return rows


# ------------------------------------------------------------------- memory
def _setup_chain_memory(library: str, size: tuple[int, int, int]) -> Callable[[], None]:
    """log Z + gradient of the chain for `peak_rss_growth` (module level: it is pickled)."""
    b, n, c = size
    theta = _potentials((b, n - 1, c, c))
    if library == "zoo":
        from zoo.structures import LinearChainCRF

        def log_z() -> torch.Tensor:
            return LinearChainCRF(theta).log_partition()
    else:
        ts = _torch_struct()

        def log_z() -> torch.Tensor:
            return _quiet(lambda: ts.LinearChainCRF(theta)).partition

    def call() -> None:
        log_z().sum().backward()
        theta.grad = None  # the call runs twice (warm-up first): leave nothing behind

    return call


def _torch_struct_chain_bytes(size: tuple[int, int, int]) -> float:
    """Estimated peak of torch-struct's log Z + gradient: its scan's first level
    broadcasts (B, N'/2, C, C, C) float32 (N' = N-1 rounded up to a power of 2);
    forward and backward hold about 4.2 of those (4.2 fits the 0.27 GiB this
    script measures at (8, 128, 32) and 3.1 GiB measured at (32, 100, 45))."""
    b, n, c = size
    padded = 2 ** math.ceil(math.log2(max(n - 1, 2)))
    return 4.2 * b * (padded // 2) * c**3 * 4


def memory_rows(args: Any) -> tuple[list[tuple[str, str]], int]:
    """Peak memory of the chain's log Z + gradient: the target size, and a small size
    where torch-struct always fits (for a measured ratio)."""
    out, zoo_bytes = [], 0
    start = time.perf_counter()
    sizes = [QUICK_MEMORY] if args.quick else [QUICK_MEMORY, MEMORY_SIZE]
    for size in sizes:
        measured = {"zoo": peak_rss_growth(_setup_chain_memory, "zoo", size)}
        need, free = _torch_struct_chain_bytes(size), available_memory()
        cap = min(0.5 * free, args.ts_memory_cap * GIB)
        if need < cap:
            measured["torch-struct"] = peak_rss_growth(_setup_chain_memory, "torch-struct", size)
            text = f"{measured['torch-struct'] / GIB:.3f} GiB"
        else:
            text = (
                f"skipped (needs > {need / GIB:.1f} GiB by estimate; measured only below "
                f"{cap / GIB:.1f} GiB = min(half of the {free / GIB:.0f} GiB available, "
                f"--ts-memory-cap) on this shared machine)"
            )
        out.append((f"chain {size} zoo", f"{measured['zoo'] / GIB:.3f} GiB"))
        out.append((f"chain {size} torch-struct", text))
        if "torch-struct" in measured:
            ratio = measured["torch-struct"] / max(measured["zoo"], 1)
            out.append((f"chain {size} torch-struct / zoo", f"{ratio:.1f}x"))
        zoo_bytes = measured["zoo"]
    out.append(("memory measurements took", f"{time.perf_counter() - start:.0f} s"))
    return out, zoo_bytes


# ------------------------------------------------------------------- targets
def chain_targets(rows: list[Row], zoo_bytes: int | None) -> list[tuple[str, str]]:
    def ratio(size: tuple, op: str) -> float:
        for s, sz, o, t in rows:
            if s == "chain" and sz == str(size) and o == op and "ts" in t:
                return _ratio(t["ts"], t["zoo"])
        return math.nan

    def verdict(value: float, goal: float) -> str:
        if math.isnan(value):
            return "not measured"
        return f"{value:.1f}x ({'met' if value >= goal else 'NOT met'}, goal ≥{goal:g}x)"

    out = [
        ("logZ+grad (32, 50, 20)", verdict(ratio((32, 50, 20), "logZ+grad"), 10)),
        ("logZ+grad (32, 100, 45)", verdict(ratio((32, 100, 45), "logZ+grad"), 15)),
    ]
    for size in CHAIN_SIZES:
        if size not in TS_CHAIN_SAMPLE_SKIP:
            out.append((f"sample(10) {size}", verdict(ratio(size, "sample(10)"), 100)))
    if zoo_bytes is not None:
        ok = "met" if zoo_bytes < 0.5 * GIB else "NOT met"
        out.append(
            (f"peak memory {MEMORY_SIZE}", f"{zoo_bytes / GIB:.3f} GiB ({ok}, goal < 0.5 GiB)")
        )
    return out


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small size per structure")
    parser.add_argument("--only", choices=("chain", "trees"), help="one family only")
    parser.add_argument("--repeats", type=int, default=5, help="samples per candidate (at most)")
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds per sample")
    parser.add_argument(
        "--budget", type=float, default=4.0, help="seconds of samples per candidate"
    )
    parser.add_argument("--verbose", action="store_true", help="print rows as they finish")
    parser.add_argument(
        "--before", default=BASE_REVISION, help="git revision for the before column"
    )
    parser.add_argument("--no-before", action="store_true", help="no before column")
    parser.add_argument(
        "--no-chart", action="store_true", help="no chart-core column for the chain"
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="time the zoo only (with its before and chart columns): no torch-struct, "
        "SuPar or pytorch-crf",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--ts-memory-cap",
        type=float,
        default=8.0,
        help="GiB: measure torch-struct's peak memory only where its estimate is below this",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.min_time, args.budget = min(args.repeats, 3), 0.02, 1.0
    torch.set_num_threads(args.threads)
    args.before_structures = None if args.no_before else _before(args.before)
    ts_version = getattr(_torch_struct(), "__version__", "0.5")
    print(
        f"torch {torch.__version__}, torch-struct {ts_version}, "
        f"before = {'none' if args.no_before else args.before}, "
        f"{torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"float32, times in ms: median* [min–max] (* = fewer than 3 quiet samples, all used); "
        f"others' load: median cores used by other processes while timing (≤ 0.3 is quiet)"
    )
    start = time.perf_counter()
    rows: list[Row] = []
    zoo_bytes = None
    if args.only in (None, "chain"):
        rows += chain_rows(args)
    if args.only in (None, "trees"):
        rows += tree_rows(args)
    print()
    _print_rows(rows)
    if args.only in (None, "chain") and not args.no_peers:
        print("\npeak memory (fresh process, RSS growth of one call):")
        memory, zoo_bytes = memory_rows(args)
        for name, value in memory:
            print(f"  {name}: {value}")
        if not args.quick:
            print("\nchain targets (torch-struct / zoo, same run):")
            for name, value in chain_targets(rows, zoo_bytes):
                print(f"  {name}: {value}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()
