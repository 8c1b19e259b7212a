"""Cost of one `CategoricalVAE` training step: Lightning against a bare PyTorch loop,
and REINFORCE with S samples against one sample.

Model: the default `CategoricalVAE` (encoder 784-512-256-(20×10), decoder
200-256-512-784, uniform prior, analytic KL), batch 100, the optimizer its own
``configure_optimizers`` returns (fused Adam). Data: a fixed uint8 tensor of
binary images (the first rows of fixed-binarized MNIST when found under
``--data-dir`` / ``$ZOO_DATA_DIR``, else random bits) in the project's own
`BinaryImageDataset`, read through one ``DataLoader(batch_size=100)`` type by
every loop, so every loop sees the same batches.

Loops (one fresh model per trial, same seed):

* ``bare``: ``loss = model(batch).mean()``, ``zero_grad``, ``backward``,
  ``opt.step()``, ``loss.item()``, the same loss computation as the model's
  ``training_step`` (``forward`` is the per-example loss of ``_step``).
* ``lightning (bare config)``: ``Trainer.fit`` with no logger, no checkpointing,
  no progress bar, no model summary (``log_every_n_steps`` stays 50).
* ``lightning (default logging)``: what ``train.py`` runs for ``configs/vae/*.yaml``:
  TensorBoard logger, ``ModelCheckpoint(save_last=True)``, `zoo.cli.NullProfiler`, progress bar
  (to /dev/null, redrawn every 20 steps), model summary, ``TemperatureAnnealing``,
  ``SampleImages``, ``log_every_n_steps=50``.
* REINFORCE (bare loop) with S = 1 (EMA baseline), 4 and 16 (leave-one-out).

Timing: a timestamp at the start of every step (after the batch is fetched,
where Lightning calls ``on_train_batch_start``); a trial's cost is the mean
step time from step ``--warmup`` to its last step (so the every-50-steps
logging is paid for, not hidden by a median); a trial runs ``--steps`` steps
or ends after ``--trial-seconds``. Next to wall time, the process's CPU time
per step: with ``--threads 1`` it is the work itself, which the time slices
other processes take on a shared machine do not inflate. Candidates are
interleaved round-robin over ``--trials`` rounds, every other round in reverse
order; before each trial the script waits (at most a few
seconds) for other processes to go quiet, and a trial during which other
processes used more than ``--busy`` cores is rejected. Reported: the median of
the accepted trials (all trials where fewer than 3 were accepted, marked *),
and for Lightning the median of the per-round paired ratios. The CPU is
shared: read ratios, not absolute times.

``--blocks N`` adds a tighter comparison: in one ``Trainer.fit`` per Lightning
configuration, a callback runs the bare loop (its own model and optimizer) for
``--block-steps`` steps after every ``--block-steps`` Lightning steps, N times
(`Interleaved`). A pair of blocks takes under a second, so the machine's drift
from second to second, which moves whole trials by ±20 %, falls on both alike.
The first ``--block-skip`` steps of each block are left out (the other loop
cooled the caches); the every-50-steps logging falls inside the timed steps.
Reported: the median of the per-block Lightning/bare ratios with its quartiles,
and the ratio of the means. ``--trials 0 --only lightning --blocks N`` runs
this alone; with ``--tiny`` it times the tiny VAE of ``--profile`` instead, so
Lightning − bare is Lightning's Python.

``--profile`` adds where Lightning's time goes: CPU time per step of a tiny
model (its arithmetic negligible) under each Trainer configuration, and a
cProfile of the Lightning step.

Run: python bench/vae_step.py [--threads 2] [--trials 7] [--only lightning] [--blocks 60] [--profile]
     python bench/vae_step.py --only lightning --trials 0 --blocks 300 --tiny --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import inspect
import json
import logging
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import _cpu_snapshot, _others_cores, wait_for_quiet  # noqa: E402
from zoo.cli import PROGRESS_BAR_REFRESH_RATE  # noqa: E402
from zoo.data.base import BinaryImageDataset, collate_batch, resolve_data_dir  # noqa: E402
from zoo.estimators import (  # noqa: E402
    Estimator,
    GumbelSoftmax,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    Reinforce,
)
from zoo.models import CategoricalVAE  # noqa: E402

BATCH = 100
LIGHTNING_TARGET = 0.05  # overhead ≤ 5 %
REINFORCE_SLOPE = 0.3  # cost(S) ≤ (1 + 0.3 S) × cost(1)
TRIAL_CAP = {"seconds": float("inf"), "min_steps": 50}
"""A trial ends after ``--trial-seconds`` once it has ``min_steps`` steps (set in `main`)."""
QUIET_BARE_MS = 8.82  # bare-loop VAE step on a quiet machine, 2 threads (perf-baseline.md §4)


# ----------------------------------------------------------------------- data
def load_images(rows: int, data_dir: str | None) -> tuple[torch.Tensor, str]:
    """``(rows, 784)`` uint8 0/1 images: fixed-binarized MNIST if found, else random bits."""
    path = resolve_data_dir(data_dir) / "binarized_mnist" / "binarized_mnist.npz"
    if path.is_file():
        import numpy as np

        with np.load(path) as archive:
            train = archive["train"]
        if train.shape[0] >= rows:
            return torch.from_numpy(train[:rows].astype("uint8")), f"fixed-binarized MNIST ({path})"
    g = torch.Generator().manual_seed(0)
    bits = (torch.rand(rows, 784, generator=g) < 0.13).to(torch.uint8)
    return bits, "random bits (fixed-binarized MNIST not found)"


def make_loader(images: torch.Tensor) -> DataLoader:
    return DataLoader(
        BinaryImageDataset(images), batch_size=BATCH, shuffle=False, collate_fn=collate_batch
    )


# --------------------------------------------------------------------- models
def make_model(
    estimator: Callable[[], Estimator], cls: type[CategoricalVAE] = CategoricalVAE
) -> CategoricalVAE:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(estimator(), num_importance_samples=0)


ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "gumbel": lambda: GumbelSoftmax(temperature=1.0),
    "reinforce S=1 (EMA)": lambda: Reinforce(1, baseline=MovingAverageBaseline()),
    "reinforce S=4 (LOO)": lambda: Reinforce(4, baseline=LeaveOneOutBaseline()),
    "reinforce S=16 (LOO)": lambda: Reinforce(16, baseline=LeaveOneOutBaseline()),
}


class PlainVAE(torch.nn.Module):
    """The same network in plain PyTorch: ``F.gumbel_softmax`` and the closed-form KL.

    A reference for the cost of the zoo's abstractions (`Structure`, `Estimator`,
    `LatentVariableModel`) on the same shapes; not part of the zoo.
    """

    def __init__(self, num_variables: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        from zoo.models import MLP

        self.shape = (num_variables, num_classes)
        self.encoder = MLP(784, (512, 256), num_variables * num_classes)
        self.decoder = MLP(num_variables * num_classes, (256, 512), 784)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        logits = self.encoder(x).unflatten(-1, self.shape)  # (B, N, K)
        z = torch.nn.functional.gumbel_softmax(logits, tau=1.0)
        recon = torch.nn.functional.binary_cross_entropy_with_logits(
            self.decoder(z.flatten(-2)), x, reduction="none"
        ).sum(-1)
        log_q = logits.log_softmax(-1)
        kl = (log_q.exp() * (log_q + math.log(self.shape[1]))).sum((-2, -1))
        return recon + kl

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)


# ---------------------------------------------------------------------- loops
Stamps = list[tuple[float, float]]
"""(wall, process CPU) seconds at the start of every step."""


def _stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def mean_step(stamps: Stamps, warmup: int, cpu: bool = False) -> float:
    """Mean seconds (wall, or CPU of the process) per step from step ``warmup`` to the last."""
    window = [s[1 if cpu else 0] for s in stamps[warmup:]]
    return (window[-1] - window[0]) / (len(window) - 1)


PHASES = ("forward", "backward", "optimizer step")
Phases = dict[str, list[float]]
"""Seconds of each phase of each step, in step order."""


class BareSteps:
    """The bare PyTorch loop, resumable: `run` does the next ``steps`` steps.

    ``loss = model(batch).mean()``, ``zero_grad``, ``backward``, ``opt.step()``,
    ``loss.item()``: the same loss computation as the model's ``training_step``
    (``forward`` is the per-example loss of ``_step``). The loader is restarted
    when it runs out. ``phases`` collects the seconds of the forward, the backward
    and the optimizer step of every step.
    """

    def __init__(
        self, estimator: str, loader: DataLoader, model: torch.nn.Module | None = None
    ) -> None:
        self.phases: Phases = {name: [] for name in PHASES}
        if model is None:
            model = PlainVAE() if estimator == "plain" else make_model(ESTIMATORS[estimator])
        self.model = model.train()
        self.optimizer = model.configure_optimizers()
        self.loader = loader
        self.batches: Iterator[dict[str, torch.Tensor]] = iter(loader)
        self.fetched: dict[str, torch.Tensor] | None = None  # by the last `run`, for the next

    def _next_batch(self) -> dict[str, torch.Tensor]:
        if self.fetched is not None:
            batch, self.fetched = self.fetched, None
            return batch
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self, steps: int) -> Stamps:
        """Stamps at the start of each step (after its batch is fetched) and one after the last.

        The last stamp also follows the fetch of a batch (the next block's first), so
        every interval holds one fetch, as a Lightning step does.
        """
        stamps: Stamps = []
        batch = self._next_batch()
        for _ in range(steps):
            stamps.append(_stamp())
            if _time_is_up(stamps):
                return stamps
            self.optimizer.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = self.model(batch).mean()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            self.optimizer.step()
            t3 = time.perf_counter()
            self.phases["forward"].append(t1 - t0)
            self.phases["backward"].append(t2 - t1)
            self.phases["optimizer step"].append(t3 - t2)
            loss.item()
            batch = self._next_batch()
        self.fetched = batch
        stamps.append(_stamp())
        return stamps


def bare_loop(
    estimator: str, loader: DataLoader, steps: int, model: torch.nn.Module | None = None
) -> Stamps:
    return BareSteps(estimator, loader, model).run(steps)


def _time_is_up(stamps: Stamps) -> bool:
    return (
        len(stamps) >= TRIAL_CAP["min_steps"]
        and stamps[-1][0] - stamps[0][0] > TRIAL_CAP["seconds"]
    )


class StepStamps(L.Callback):
    """Timestamps every ``on_train_batch_start``; stops the fit when the trial's time is up."""

    def __init__(self) -> None:
        self.stamps: Stamps = []

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self.stamps.append(_stamp())
        if _time_is_up(self.stamps):
            trainer.should_stop = True


class PhasedVAE(CategoricalVAE):
    """`CategoricalVAE` that times its forward (``training_step``), backward and optimizer step.

    The optimizer step is Lightning's ``optimizer_step`` less the closure it runs
    (forward and backward): the update, with the hooks Lightning calls after the
    closure.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phases: Phases = {name: [] for name in PHASES}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        start = time.perf_counter()
        loss = super().training_step(batch, batch_idx)
        self.phases["forward"].append(time.perf_counter() - start)
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().backward(loss, *args, **kwargs)
        self.phases["backward"].append(time.perf_counter() - start)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        in_closure = 0.0

        def closure() -> Any:
            nonlocal in_closure
            start = time.perf_counter()
            result = optimizer_closure()
            in_closure += time.perf_counter() - start
            return result

        start = time.perf_counter()
        super().optimizer_step(epoch, batch_idx, optimizer, closure)
        self.phases["optimizer step"].append(time.perf_counter() - start - in_closure)


# As for LatentVariableModel.training_step: Lightning inspects the signature every step.
PhasedVAE.training_step.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    PhasedVAE.training_step
)


class Interleaved(StepStamps):
    """Runs the bare loop in blocks between blocks of Lightning steps, inside one fit.

    Lightning steps ``block``-at-a-time, then the bare loop (its own model and
    optimizer) ``block`` steps, and so on, ``blocks`` times: each pair of blocks
    runs within about a second, under the same conditions of a machine whose
    speed drifts from second to second. The first ``skip`` steps of each block
    are left out (caches the other loop cooled).
    """

    def __init__(self, bare: BareSteps, block: int, skip: int, blocks: int) -> None:
        super().__init__()
        self.bare, self.block, self.skip, self.blocks = bare, block, skip, blocks
        self.lightning_means: list[tuple[float, float]] = []  # (wall, CPU) seconds per step
        self.bare_means: list[tuple[float, float]] = []

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self.stamps.append(_stamp())
        if len(self.stamps) <= self.block:
            return
        self.lightning_means.append(_block_means(self.stamps, self.skip))
        self.bare_means.append(_block_means(self.bare.run(self.block), self.skip))
        if len(self.bare_means) >= self.blocks:
            trainer.should_stop = True
        self.stamps = [_stamp()]


def _block_means(stamps: Stamps, skip: int) -> tuple[float, float]:
    return mean_step(stamps, skip), mean_step(stamps, skip, cpu=True)


def lightning_loop(
    config: str,
    loader: DataLoader,
    steps: int,
    model: L.LightningModule | None = None,
    log_every_n_steps: int = 50,
    progress_bar: int = PROGRESS_BAR_REFRESH_RATE,
    stamps: StepStamps | None = None,
) -> Stamps:
    """``Trainer.fit`` for ``steps`` steps; ``config`` is ``"bare"`` or ``"default"``.

    ``progress_bar``: the default config's refresh rate (``train.py``'s default,
    `zoo.cli.PROGRESS_BAR_REFRESH_RATE`; Lightning's own is every step); 0 turns the bar off.
    ``stamps``: the callback that takes the step stamps (a fresh `StepStamps` by default).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from zoo.callbacks import SampleImages, TemperatureAnnealing
    from zoo.cli import NullProfiler

    model = make_model(ESTIMATORS["gumbel"]) if model is None else model
    stamps = StepStamps() if stamps is None else stamps
    common = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": steps,
        "max_epochs": 1,
        "log_every_n_steps": log_every_n_steps,
    }
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if config == "bare":
            trainer = L.Trainer(
                **common,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[stamps],
            )
        else:
            callbacks: list[L.Callback] = [
                stamps,
                ModelCheckpoint(dirpath=tmp, save_last=True),
                TemperatureAnnealing(rate=1e-4, min_temperature=0.5, every_n_steps=500),
                SampleImages(num_images=16),
            ]
            if progress_bar:
                callbacks.append(TQDMProgressBar(refresh_rate=progress_bar))
            trainer = L.Trainer(
                **common,
                logger=TensorBoardLogger(tmp, name="bench", default_hp_metric=False),
                profiler=NullProfiler(),
                enable_progress_bar=progress_bar != 0,
                callbacks=callbacks,
            )
        sink = open(os.devnull, "w")  # noqa: SIM115  (the progress bar and summary)
        with sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            trainer.fit(model, train_dataloaders=loader)
    return stamps.stamps


# ------------------------------------------------------------------ reporting
def summarize(samples: list[tuple[float, bool]]) -> dict[str, Any]:
    accepted = [t for t, ok in samples if ok]
    use = accepted if len(accepted) >= 3 else [t for t, _ in samples]
    return {
        "median_ms": 1e3 * statistics.median(use),
        "min_ms": 1e3 * min(use),
        "max_ms": 1e3 * max(use),
        "accepted": len(accepted),
        "trials": len(samples),
        "all_trials_used": len(accepted) < 3,
    }


def fmt(s: dict[str, Any]) -> str:
    star = "*" if s["all_trials_used"] else ""
    return f"{s['median_ms']:.2f}{star} ({s['min_ms']:.2f}–{s['max_ms']:.2f})"


# ------------------------------------------------- where Lightning's time goes
TINY_DIM = 8


class ManualOptimizationVAE(CategoricalVAE):
    """`CategoricalVAE` with manual optimization: what the step costs without Lightning's closure.

    A sketch of a possible patch to `LatentVariableModel`, measured by ``--profile``
    (`tiny_vae` turns ``automatic_optimization`` off).
    """

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = self._step(batch, "train")
        self.manual_backward(loss)
        optimizer.step()
        return loss


def tiny_vae(manual: bool = False) -> CategoricalVAE:
    """A VAE whose arithmetic costs next to nothing: its step time is Python overhead."""
    torch.manual_seed(0)
    cls = ManualOptimizationVAE if manual else CategoricalVAE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(
            GumbelSoftmax(),
            num_variables=1,
            num_classes=2,
            input_dim=TINY_DIM,
            hidden_sizes=(4,),
            num_importance_samples=0,
        )
    model.automatic_optimization = not manual
    return model


def overhead_breakdown(steps: int, warmup: int, trials: int, vae_step_ms: float) -> dict:
    """CPU time per step of tiny-model loops: Lightning's fixed cost, config by config.

    One torch thread, so the process's CPU time is its work (no OpenMP spin-waiting) and
    the time slices other processes take do not count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    loader = make_loader((torch.rand(steps * BATCH, TINY_DIM, generator=g) < 0.5).to(torch.uint8))
    variants: dict[str, Callable[[], Stamps]] = {
        "bare PyTorch loop": lambda: bare_loop("gumbel", loader, steps, model=tiny_vae()),
        "Lightning, bare config (log_every_n_steps=50)": lambda: lightning_loop(
            "bare", loader, steps, model=tiny_vae()
        ),
        "Lightning, bare config, no training logs": lambda: lightning_loop(
            "bare", loader, steps, model=tiny_vae(), log_every_n_steps=10**9
        ),
        "Lightning, bare config, logs every step": lambda: lightning_loop(
            "bare", loader, steps, model=tiny_vae(), log_every_n_steps=1
        ),
        "Lightning, default logging (log_every_n_steps=50)": lambda: lightning_loop(
            "default", loader, steps, model=tiny_vae()
        ),
        "Lightning, default logging, no progress bar": lambda: lightning_loop(
            "default", loader, steps, model=tiny_vae(), progress_bar=0
        ),
        "Lightning, default logging, progress bar every step (Lightning's default)": lambda: (
            lightning_loop("default", loader, steps, model=tiny_vae(), progress_bar=1)
        ),
        "Lightning, default logging, logs every step": lambda: lightning_loop(
            "default", loader, steps, model=tiny_vae(), log_every_n_steps=1
        ),
        "Lightning, bare config, manual optimization (sketch)": lambda: lightning_loop(
            "bare", loader, steps, model=tiny_vae(manual=True)
        ),
        "Lightning, default logging, manual optimization (sketch)": lambda: lightning_loop(
            "default", loader, steps, model=tiny_vae(manual=True)
        ),
    }
    for run in variants.values():
        run()
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(trials):
        for name, run in variants.items():
            cpu[name].append(mean_step(run(), warmup, cpu=True))
    torch.set_num_threads(threads)
    base = statistics.median(cpu["bare PyTorch loop"])
    print(
        f"\n### Where Lightning's time goes: CPU time per step of a tiny CategoricalVAE "
        f"(8 pixels, 1×2 latent; its arithmetic is negligible, so this is Python overhead), "
        f"{steps} steps, median of {trials} interleaved trials\n"
    )
    print(
        f"| loop | CPU µs/step | overhead vs bare, µs/step "
        f"| as % of the bare VAE step measured above ({vae_step_ms:.2f} ms) "
        f"| as % of the quiet-machine bare step ({QUIET_BARE_MS} ms, perf-baseline §4) |"
    )
    print("|---|---|---|---|---|")
    out = {}
    for name, values in cpu.items():
        med = statistics.median(values)
        extra = med - base
        if name.startswith("bare"):
            print(f"| {name} | {1e6 * med:.0f} | — | — | — |")
        else:
            print(
                f"| {name} | {1e6 * med:.0f} | {1e6 * extra:+.0f} "
                f"| {100 * extra / (1e-3 * vae_step_ms):+.1f} % "
                f"| {100 * extra / (1e-3 * QUIET_BARE_MS):+.1f} % |"
            )
        out[name] = {"cpu_us": 1e6 * med, "overhead_us": 1e6 * extra, "samples": values}

    # Which Lightning functions the bare-config step spends its time in.
    torch.set_num_threads(1)
    profiler = cProfile.Profile()
    profiler.enable()
    lightning_loop("bare", loader, steps, model=tiny_vae())
    profiler.disable()
    torch.set_num_threads(threads)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        if ("lightning" in path or "/zoo/" in path) and ncalls >= steps:
            short = path.split("site-packages/")[-1].split("/work/main/")[-1]
            rows.append((cumtime, tottime, ncalls, f"{short}:{line}({func})"))
    rows.sort(reverse=True)
    print(
        "\ncProfile of the bare-config Lightning fit of the tiny model: functions called at "
        "least once per step, by cumulative time (cProfile inflates Python calls, so read "
        "the shares, not the µs)\n"
    )
    print("| function | calls/step | cumulative µs/step | own µs/step |")
    print("|---|---|---|---|")
    for cumtime, tottime, ncalls, name in rows[:30]:
        print(
            f"| `{name}` | {ncalls / steps:.0f} | {1e6 * cumtime / steps:.0f} "
            f"| {1e6 * tottime / steps:.0f} |"
        )
    return out


def run_trials(
    args: argparse.Namespace, loader: DataLoader, source: str
) -> tuple[dict[str, Any], float]:
    """The interleaved trials: every loop a whole ``Trainer.fit`` (or bare run) per round.

    Returns the results and the bare loop's median step in ms.
    """
    candidates: dict[str, Callable[[], Stamps]] = {
        "bare PyTorch loop": lambda: bare_loop("gumbel", loader, args.steps),
        "Lightning, bare config": lambda: lightning_loop("bare", loader, args.steps),
        "Lightning, default logging": lambda: lightning_loop("default", loader, args.steps),
    }
    if args.only == "all":
        candidates["plain PyTorch VAE (not zoo)"] = lambda: bare_loop("plain", loader, args.steps)
        for name in ESTIMATORS:
            if name.startswith("reinforce"):
                candidates[name] = lambda name=name: bare_loop(name, loader, args.steps)

    # Warm-up: one short run of each (imports, allocator, oneDNN primitives).
    seconds = TRIAL_CAP["seconds"]
    TRIAL_CAP["seconds"] = 0.0
    for run in candidates.values():
        run()
    TRIAL_CAP["seconds"] = seconds

    samples: dict[str, list[tuple[float, bool]]] = {name: [] for name in candidates}
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    loads: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(args.trials):
        # Every other round in reverse order, so that a machine slowing down or
        # speeding up during a round does not always favour the same loop.
        order = list(candidates.items())
        for name, run in order if round_ % 2 == 0 else order[::-1]:
            wait_for_quiet(args.busy, max_wait=8.0, window=0.25)
            start = _cpu_snapshot()
            stamps = run()
            load = _others_cores(start)
            samples[name].append((mean_step(stamps, args.warmup), load <= args.busy))
            cpu[name].append(mean_step(stamps, args.warmup, cpu=True))
            loads[name].append(load)
            print(
                f"round {round_ + 1}/{args.trials}: {name}: {len(stamps)} steps, "
                f"{1e3 * samples[name][-1][0]:.2f} ms/step, others {load:.2f} cores",
                file=sys.stderr,
                flush=True,
            )

    stats = {name: summarize(s) for name, s in samples.items()}
    bare = stats["bare PyTorch loop"]["median_ms"]

    print(
        f"\nCategoricalVAE step, batch {BATCH}, up to {args.steps} steps per trial "
        f"(ended after {args.trial_seconds:g} s; first {args.warmup} left out), "
        f"{args.trials} interleaved trials, "
        f"torch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} threads; "
        f"data: {source}.\n"
    )
    cpu_ms = {name: 1e3 * statistics.median(v) for name, v in cpu.items()}
    print(
        "| loop | mean step ms, median of trials (min–max) | overhead vs bare (ratio of medians) "
        "| paired per-trial overhead, median (range) | CPU ms/step of the process (overhead) "
        "| target ≤ 5 % |"
    )
    print("|---|---|---|---|---|---|")
    results: dict[str, Any] = {"lightning": {}, "reinforce": {}}
    for name in ("bare PyTorch loop", "Lightning, bare config", "Lightning, default logging"):
        s = stats[name]
        if name == "bare PyTorch loop":
            print(f"| {name} | {fmt(s)} | — | — | {cpu_ms[name]:.2f} | |")
            results["lightning"][name] = {**s, "cpu_ms": cpu_ms[name]}
            continue
        overhead = s["median_ms"] / bare - 1
        paired = [
            t / b - 1
            for (t, _), (b, _) in zip(samples[name], samples["bare PyTorch loop"], strict=True)
        ]
        met = "yes" if overhead <= LIGHTNING_TARGET else "**no**"
        print(
            f"| {name} | {fmt(s)} | {100 * overhead:+.1f} % ({s['median_ms'] - bare:+.2f} ms) "
            f"| {100 * statistics.median(paired):+.1f} % ({100 * min(paired):+.1f} to "
            f"{100 * max(paired):+.1f}) | {cpu_ms[name]:.2f} "
            f"({100 * (cpu_ms[name] / cpu_ms['bare PyTorch loop'] - 1):+.1f} %) | {met} |"
        )
        results["lightning"][name] = {
            **s,
            "cpu_ms": cpu_ms[name],
            "overhead": overhead,
            "paired_overheads": paired,
            "target_met": overhead <= LIGHTNING_TARGET,
        }
    if args.only == "all":  # the plain-PyTorch reference and REINFORCE
        plain = stats["plain PyTorch VAE (not zoo)"]
        plain_ratio = bare / plain["median_ms"] - 1
        print(
            f"| reference: plain PyTorch VAE, same shapes (F.gumbel_softmax, closed-form KL; "
            f"not zoo), bare loop | {fmt(plain)} | zoo bare loop is {100 * plain_ratio:+.1f} % "
            f"over it | | {cpu_ms['plain PyTorch VAE (not zoo)']:.2f} | |"
        )
        results["plain"] = {**plain, "cpu_ms": cpu_ms["plain PyTorch VAE (not zoo)"]}

        one = stats["reinforce S=1 (EMA)"]["median_ms"]
        print(
            "\n| estimator (bare loop) | mean step ms, median of trials (min–max) | × one sample "
            "| CPU ms/step (× one sample) | target ≤ 1 + 0.3·S | met |"
        )
        print("|---|---|---|---|---|---|")
        gumbel = stats["bare PyTorch loop"]
        cpu_one = cpu_ms["reinforce S=1 (EMA)"]
        print(
            f"| gumbel (reference) | {fmt(gumbel)} | {gumbel['median_ms'] / one:.2f} "
            f"| {cpu_ms['bare PyTorch loop']:.2f} ({cpu_ms['bare PyTorch loop'] / cpu_one:.2f}) | — | |"
        )
        for name in ESTIMATORS:
            if not name.startswith("reinforce"):
                continue
            s = stats[name]
            num = int(name.split("S=")[1].split()[0])
            ratio = s["median_ms"] / one
            target = 1 + REINFORCE_SLOPE * num
            paired = [
                t / b
                for (t, _), (b, _) in zip(
                    samples[name], samples["reinforce S=1 (EMA)"], strict=True
                )
            ]
            met = "yes" if ratio <= target else "**no**"
            target_text = "—" if num == 1 else f"{target:.1f}"
            print(
                f"| {name} | {fmt(s)} | {ratio:.2f} | {cpu_ms[name]:.2f} ({cpu_ms[name] / cpu_one:.2f}) "
                f"| {target_text} | {met if num > 1 else ''} |"
            )
            results["reinforce"][name] = {
                **s,
                "cpu_ms": cpu_ms[name],
                "ratio": ratio,
                "paired_ratios": paired,
                "target": target,
                "target_met": ratio <= target,
            }

    print(
        f"\n* = fewer than 3 of the trials ran while other processes used ≤ {args.busy} cores; "
        "the median is over all trials. CPU ms: the process's CPU time per step, median of "
        "trials; time slices taken by other processes do not count, but with more than one "
        "thread it includes OpenMP spin-waiting. Loads of other processes per trial (cores): "
        + "; ".join(
            f"{name}: {statistics.median(v):.2f} median, {max(v):.2f} max"
            for name, v in loads.items()
        )
    )
    results["loads"] = loads
    return results, bare


def run_blocks(args: argparse.Namespace, images: torch.Tensor, source: str) -> dict[str, Any]:
    """Lightning against the bare loop in alternating blocks inside one fit (`Interleaved`).

    One fit per Lightning configuration, its data one epoch long (the images
    repeated), so no epoch boundary falls among the timed steps.
    """
    block, skip = args.block_steps, args.block_skip
    steps = (args.blocks + 2) * (block + 1)
    make: Callable[[], CategoricalVAE] = functools.partial(
        make_model, ESTIMATORS["gumbel"], PhasedVAE
    )
    if args.tiny:
        make = tiny_vae
        g = torch.Generator().manual_seed(0)
        images = (torch.rand(steps * BATCH, TINY_DIM, generator=g) < 0.5).to(torch.uint8)
        source = f"random bits for the tiny VAE of --profile ({TINY_DIM} pixels, 1×2 latent)"
    repeats = -(-steps * BATCH // images.shape[0])
    lightning_loader = make_loader(images.repeat(repeats, 1))
    print(
        f"\n{'Tiny ' if args.tiny else ''}CategoricalVAE step, batch {BATCH}: Lightning and the bare loop in alternating blocks "
        f"of {block} steps inside "
        f"one fit ({args.blocks} blocks each, first {skip} steps of each block left out), "
        f"{torch.get_num_threads()} threads; data: {source}.\n"
    )
    print(
        "| Lightning config | bare ms/step, median of blocks | Lightning ms/step "
        "| Lightning − bare ms/step, median of blocks (IQR) "
        "| overhead: median of per-block ratios (IQR) | ratio of the means "
        "| CPU overhead, median of per-block ratios | target ≤ 5 % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    out: dict[str, Any] = {}
    phase_rows: dict[str, dict[str, tuple[float, float, list[float]]]] = {}
    loads: list[str] = []
    for config in ("bare", "default"):
        name = f"Lightning, {'bare config' if config == 'bare' else 'default logging'}"
        bare_steps = BareSteps("gumbel", make_loader(images), model=make())
        timer = Interleaved(bare_steps, block, skip, args.blocks)
        model = make()
        wait_for_quiet(args.busy, max_wait=8.0, window=0.25)
        start = _cpu_snapshot()
        lightning_loop(config, lightning_loader, steps, model=model, stamps=timer)
        loads.append(f"{name}: {_others_cores(start):.2f}")
        # The first pair of blocks warms both loops up.
        light, bare = timer.lightning_means[1:], timer.bare_means[1:]
        pairs = list(zip(light, bare, strict=True))
        low, median, high = statistics.quantiles([t / b - 1 for (t, _), (b, _) in pairs], n=4)
        extra_low, extra, extra_high = statistics.quantiles(
            [1e3 * (t - b) for (t, _), (b, _) in pairs], n=4
        )
        cpu_ratio = statistics.median(t / b - 1 for (_, t), (_, b) in pairs)
        of_means = statistics.mean(t for t, _ in light) / statistics.mean(b for b, _ in bare) - 1
        bare_ms = 1e3 * statistics.median(b for b, _ in bare)
        met = "yes" if median <= LIGHTNING_TARGET else "**no**"
        print(
            f"| {name} | {bare_ms:.2f} | {1e3 * statistics.median(t for t, _ in light):.2f} "
            f"| {extra:+.2f} ({extra_low:+.2f} to {extra_high:+.2f}) "
            f"| {100 * median:+.1f} % ({100 * low:+.1f} to {100 * high:+.1f}) "
            f"| {100 * of_means:+.1f} % | {100 * cpu_ratio:+.1f} % "
            f"| {'—' if args.tiny else met} |"
        )
        if isinstance(model, PhasedVAE):
            phase_rows[name] = _phase_rows(model.phases, bare_steps.phases, light, bare, args)
        out[name] = {
            "bare_ms": bare_ms,
            "lightning_means": light,
            "bare_means": bare,
            "extra_ms": extra,
            "overhead": median,
            "overhead_of_means": of_means,
            "target_met": median <= LIGHTNING_TARGET,
        }
    print(f"\nCores used by other processes during each fit: {'; '.join(loads)}.")
    if phase_rows:
        print(
            "\nThe phases of a step, ms, medians of the per-block means "
            "(forward: Lightning's `training_step`; optimizer step: Lightning's "
            "`optimizer_step` less its closure):\n"
        )
        print(
            "| Lightning config | phase | Lightning | bare loop | Lightning − bare, median of blocks (IQR) |"
        )
        print("|---|---|---|---|---|")
        for name, rows in phase_rows.items():
            for phase, (light_ms, bare_ms, diffs) in rows.items():
                low, median, high = statistics.quantiles(diffs, n=4)
                print(
                    f"| {name} | {phase} | {light_ms:.2f} | {bare_ms:.2f} "
                    f"| {median:+.3f} ({low:+.3f} to {high:+.3f}) |"
                )
            out[name]["phases"] = rows
    return out


def _phase_rows(
    light_phases: Phases,
    bare_phases: Phases,
    light_steps: list[tuple[float, float]],
    bare_steps: list[tuple[float, float]],
    args: argparse.Namespace,
) -> dict[str, tuple[float, float, list[float]]]:
    """Per phase: Lightning's and the bare loop's ms (medians of block means), per-block diffs.

    Blocks are ``--block-steps`` consecutive steps in both loops (the first pair of
    blocks left out, as for the steps); "between the phases" is the step less them.
    """
    block, skip = args.block_steps, args.block_skip

    def block_means(seconds: list[float]) -> list[float]:
        count = len(seconds) // block
        return [
            1e3 * statistics.mean(seconds[b * block + skip : (b + 1) * block])
            for b in range(1, count)
        ]

    n = len(light_steps)
    light = {phase: block_means(light_phases[phase])[:n] for phase in PHASES}
    bare = {phase: block_means(bare_phases[phase])[:n] for phase in PHASES}
    light["between the phases"] = [
        1e3 * t - sum(light[phase][i] for phase in PHASES) for i, (t, _) in enumerate(light_steps)
    ]
    bare["between the phases"] = [
        1e3 * t - sum(bare[phase][i] for phase in PHASES) for i, (t, _) in enumerate(bare_steps)
    ]
    return {
        phase: (
            statistics.median(light[phase]),
            statistics.median(bare[phase]),
            [a - b for a, b in zip(light[phase], bare[phase], strict=True)],
        )
        for phase in light
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per trial")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of each trial")
    parser.add_argument("--trials", type=int, default=7, help="interleaved rounds")
    parser.add_argument(
        "--trial-seconds",
        type=float,
        default=8.0,
        help="end a trial after this long (once it has --warmup + 30 steps)",
    )
    parser.add_argument("--busy", type=float, default=0.3, help="reject above this many cores")
    parser.add_argument(
        "--only",
        choices=("all", "lightning"),
        default="all",
        help="lightning: only the bare loop and the two Lightning loops (more rounds per minute)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=0,
        help="also time Lightning and the bare loop in this many alternating blocks inside "
        "one fit per Lightning config (0: not)",
    )
    parser.add_argument("--block-steps", type=int, default=25, help="steps per block")
    parser.add_argument(
        "--block-skip", type=int, default=3, help="steps left out at the start of each block"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="--blocks with the tiny VAE of --profile: Lightning − bare is then its Python",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--data-dir", default=None, help="dataset root (default $ZOO_DATA_DIR)")
    parser.add_argument(
        "--profile", action="store_true", help="also break Lightning's overhead down (tiny model)"
    )
    parser.add_argument(
        "--profile-steps", type=int, default=1000, help="steps per tiny-model trial"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vae_step.json"))
    args = parser.parse_args()
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")
    if args.trials < 0 or args.blocks < 0 or (args.trials == 0 and args.blocks < 3):
        parser.error("need --trials ≥ 1, or --trials 0 with --blocks ≥ 3")
    if args.trials == 0 and args.only == "all":
        parser.error("--trials 0 times the Lightning loops only: add --only lightning")
    if args.tiny and (args.trials or not args.blocks):
        parser.error("--tiny times the blocks only: use it with --trials 0 --blocks N")
    if args.profile and args.trials == 0:
        parser.error("--profile compares with the bare step of the trials: needs --trials ≥ 1")
    if args.block_steps <= args.block_skip + 1:
        parser.error("--block-steps must exceed --block-skip + 1")

    TRIAL_CAP.update(seconds=args.trial_seconds, min_steps=args.warmup + 30)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    images, source = load_images(args.steps * BATCH, args.data_dir)
    loader = make_loader(images)

    results: dict[str, Any] = {"source": source, "args": vars(args)}
    if args.trials > 0:
        trial_results, bare = run_trials(args, loader, source)
        results.update(trial_results)
    if args.blocks > 0:
        results["blocks"] = run_blocks(args, images, source)

    if args.profile:
        results["breakdown"] = overhead_breakdown(
            args.profile_steps, args.warmup, args.trials, bare
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
