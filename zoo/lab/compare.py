"""Compare estimators on one experiment: ``python -m zoo.lab.compare``.

One base config × a list of settings × seeds × a step or time budget:

    python -m zoo.lab.compare --config configs/vae/categorical.yaml \\
        --estimators configs/estimator/gumbel.yaml configs/estimator/reinforce-loo.yaml \\
        --seeds 3 --max_steps 2000 --out comparisons/vae -- --trainer.val_check_interval=500

Each (setting, seed) is one ``train.py fit`` run of the zoo's CLI in a
subprocess (``--jobs`` at a time; 0 runs them in this process), logging to
TensorBoard under ``OUT/runs/<setting>/seed_<s>/``, with the
`zoo.lab.GradientStatistics` callback added (``--grad_every``; 0: off). A
setting is

* an estimator group file (a YAML with a top-level ``class_path``, as in
  ``configs/estimator/``): passed as ``--model.estimator FILE``, or
* a config overlay (a YAML with ``model``, ``annealing``, ``trainer``, ... keys):
  passed as one more ``--config FILE`` after the base, e.g. an estimator with
  its own temperature schedule (``annealing:``);

named by its file's stem, or ``NAME=FILE``. Anything after ``--`` goes to every
run. Afterwards the runs are read back from their event files and written as

* ``results.csv``: one row per run: final value of each ``val/``/``test/`` tag,
  the mean over the run of each ``grad/`` tag, wall time and steps per second;
* ``results.md``: per setting, mean ± standard deviation over seeds;
* ``learning_curves.png``, ``gradients.png`` (variance, cosine, SNR, bias and
  its floor vs step) and ``wall_time.png`` (the metrics against wall time).

Resumable: a finished run (``done.json`` next to its logs, written with the
command it ran) is not run again with the same command; an interrupted one
continues from its ``last.ckpt``. ``--test`` also runs ``train.py test`` on
the last checkpoint of each run (``test/`` tags); ``--report`` runs nothing
and writes the results of the runs finished so far.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import yaml

from zoo.lab.events import Band, Series, over_seeds, read_scalars
from zoo.lab.plots import plot_bands

__all__ = ["Run", "Setting", "main", "parse_settings"]

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
GRAD_TAGS = ("grad/variance", "grad/cosine", "grad/snr", "grad/bias", "grad/bias_floor")
"""The gradient statistics plotted and tabulated (means over the run); a bias well below
its floor (the noise of the two means compared) is not resolved."""


@dataclass(frozen=True)
class Setting:
    """One compared setting: an estimator group file or a config overlay.

    Attributes:
        name: the label in tables and plots (the file's stem unless given).
        path: the YAML file.
        kind: ``"estimator"`` (``--model.estimator FILE``) or ``"config"`` (``--config FILE``).
    """

    name: str
    path: Path
    kind: str

    def args(self) -> list[str]:
        flag = "--model.estimator" if self.kind == "estimator" else "--config"
        return [flag, str(self.path)]


def parse_settings(specs: Sequence[str]) -> list[Setting]:
    """``FILE`` or ``NAME=FILE`` → settings, each file read to tell its kind.

    Raises:
        ValueError: a missing file, a YAML that is neither an estimator nor a config,
            or two settings of one name.
    """
    settings = []
    for spec in specs:
        name, sep, file = spec.partition("=")
        path = Path(file if sep else name)
        name = name if sep else path.stem
        if not path.is_file():
            raise ValueError(f"setting {spec!r}: no file at {path}")
        content = yaml.safe_load(path.read_text())
        if isinstance(content, dict) and "class_path" in content:
            kind = "estimator"
        elif isinstance(content, dict) and content:
            kind = "config"
        else:
            raise ValueError(
                f"setting {spec!r}: expected an estimator file (a top-level class_path) or a "
                f"config overlay (a mapping such as model:, trainer:), got {content!r:.80}"
            )
        settings.append(Setting(name, path, kind))
    names = [s.name for s in settings]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"settings share the names {duplicates}; name them with NAME=FILE")
    return settings


@dataclass
class Run:
    """One (setting, seed) run and its directory ``OUT/runs/<setting>/seed_<seed>``."""

    setting: Setting
    seed: int
    root: Path
    fit_args: list[str] = field(default_factory=list)
    test_args: list[str] | None = None

    @property
    def dir(self) -> Path:
        return self.root / "runs" / self.setting.name / f"seed_{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.setting.name} seed {self.seed}"

    @property
    def done_file(self) -> Path:
        return self.dir / "done.json"

    @property
    def last_checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"

    def finished(self) -> bool:
        """Whether this very run (the same commands) has finished."""
        if not self.done_file.is_file():
            return False
        done = json.loads(self.done_file.read_text())
        return done.get("fit") == self.fit_args and done.get("test") == self.test_args

    def commands(self) -> list[list[str]]:
        """The ``train.py`` argument lists to run now (fit resumes from ``last.ckpt``)."""
        fit = list(self.fit_args)
        if self.last_checkpoint.is_file():
            fit += ["--ckpt_path", str(self.last_checkpoint)]
        return [fit] if self.test_args is None else [fit, self.test_args]


def _budget_args(max_steps: int | None, max_time: float | None) -> list[str]:
    if max_steps is None and max_time is None:
        return []
    args = ["--trainer.max_epochs=-1"]
    if max_steps is not None:
        args.append(f"--trainer.max_steps={max_steps}")
    if max_time is not None:
        seconds = round(max_time * 60)
        days, rest = divmod(seconds, 86400)
        args.append(
            f"--trainer.max_time={days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
        )
    return args


def _has_gradient_statistics(config: Path) -> bool:
    callbacks = ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("callbacks")
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return any(
        isinstance(c, dict) and str(c.get("class_path", "")).endswith("GradientStatistics")
        for c in callbacks
    )


def plan(args: argparse.Namespace, overrides: list[str]) -> list[Run]:
    """The runs of a comparison, with their command lines."""
    settings = parse_settings(args.estimators)
    root = Path(args.out)
    grad = []
    if args.grad_every > 0 and not _has_gradient_statistics(Path(args.config)):
        grad = [
            "--trainer.callbacks+=zoo.lab.GradientStatistics",
            f"--trainer.callbacks.every_n_steps={args.grad_every}",
            f"--trainer.callbacks.num_probes={args.grad_probes}",
            f"--trainer.callbacks.num_examples={args.grad_examples}",
        ]
    runs = []
    for setting in settings:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run = Run(setting, seed, root)
            logger = {
                "class_path": TENSORBOARD,
                "init_args": {
                    "save_dir": str(root / "runs"),
                    "name": setting.name,
                    "version": f"seed_{seed}",
                    "default_hp_metric": False,
                },
            }
            run.fit_args = [
                "fit",
                "--config",
                str(args.config),
                *setting.args(),
                f"--seed_everything={seed}",
                *_budget_args(args.max_steps, args.max_time),
                f"--trainer.logger={json.dumps(logger)}",
                "--trainer.callbacks+=zoo.lab.FinalCheckpoint",
                *grad,
                *overrides,
            ]
            if args.test:
                run.test_args = [
                    "test",
                    "--config",
                    str(run.dir / "config.yaml"),
                    "--ckpt_path",
                    str(run.last_checkpoint),
                ]
            runs.append(run)
    return runs


# ------------------------------------------------------------------ running
def _train_command(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from zoo.cli import main; main()", *args]


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _prepare(run: Run) -> None:
    if run.done_file.is_file():  # finished with other commands: start again
        shutil.rmtree(run.dir)
    run.dir.mkdir(parents=True, exist_ok=True)


def _finish(run: Run, wall: float) -> None:
    done = {"fit": run.fit_args, "test": run.test_args, "wall_s": wall}
    run.done_file.write_text(json.dumps(done, indent=1))


def _run_in_process(run: Run) -> int:
    """The run's commands through `zoo.cli.main` here; its output goes to this terminal."""
    from zoo.cli import main

    try:
        for command in run.commands():
            main(command)
    except (Exception, SystemExit) as error:  # the run failed; the others go on
        with open(run.dir / "train.log", "a") as log:
            print(f"{type(error).__name__}: {error}", file=log)
        return 1
    return 0


def run_all(runs: list[Run], jobs: int, threads: int | None) -> dict[str, str]:
    """Run what is not finished, ``jobs`` at a time (0: in this process); print progress.

    Returns:
        run label → ``"finished"``, ``"skipped"`` or ``"failed"``.
    """
    status: dict[str, str] = {}
    todo = []
    for i, run in enumerate(runs, 1):
        if run.finished():
            status[run.label] = "skipped"
            print(f"[{i}/{len(runs)}] {run.label}: finished before, skipped", flush=True)
        else:
            todo.append((i, run))
    if jobs == 0:
        for i, run in todo:
            _prepare(run)
            print(f"[{i}/{len(runs)}] {run.label}: running", flush=True)
            start = time.perf_counter()
            code = _run_in_process(run)
            _report(i, len(runs), run, code, time.perf_counter() - start, status)
        return status
    env = _child_env(threads)
    running: list[tuple[int, Run, subprocess.Popen, float, list[list[str]]]] = []
    while todo or running:
        while todo and len(running) < jobs:
            i, run = todo.pop(0)
            _prepare(run)
            commands = run.commands()
            print(f"[{i}/{len(runs)}] {run.label}: running", flush=True)
            process = _spawn(run, commands.pop(0), env)
            running.append((i, run, process, time.perf_counter(), commands))
        time.sleep(0.2)
        for entry in list(running):
            i, run, process, start, commands = entry
            code = process.poll()
            if code is None:
                continue
            if code == 0 and commands:  # the test after the fit
                running[running.index(entry)] = (
                    i,
                    run,
                    _spawn(run, commands.pop(0), env),
                    start,
                    commands,
                )
                continue
            running.remove(entry)
            _report(i, len(runs), run, code, time.perf_counter() - start, status)
    return status


def _spawn(run: Run, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = open(run.dir / "train.log", "a")  # noqa: SIM115 (closed with the process)
    log.write(f"$ python train.py {shlex.join(args)}\n")
    log.flush()
    process = subprocess.Popen(_train_command(args), stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()  # the child holds its own descriptor
    return process


def _report(i: int, n: int, run: Run, code: int, wall: float, status: dict[str, str]) -> None:
    if code == 0:
        _finish(run, wall)
        status[run.label] = "finished"
        print(f"[{i}/{n}] {run.label}: finished in {wall:.1f} s", flush=True)
    else:
        status[run.label] = "failed"
        tail = (run.dir / "train.log").read_text().splitlines()[-15:]
        print(
            f"[{i}/{n}] {run.label}: FAILED (exit {code}); {run.dir / 'train.log'} ends:",
            flush=True,
        )
        print("\n".join("    " + line for line in tail), flush=True)


# ----------------------------------------------------------------- results
def _steps(run: Run) -> int | None:
    """The global step of the run's ``last.ckpt`` (None without one)."""
    if not run.last_checkpoint.is_file():
        return None
    import torch

    checkpoint = torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)
    return int(checkpoint["global_step"])


def _train_speed(scalars: dict[str, Series]) -> float:
    """Steps per second between the first and the last training log of a run."""
    train = [s for tag, s in scalars.items() if tag.startswith(("train/", "grad/"))]
    if not train:
        return float("nan")
    first = min(train, key=lambda s: s.steps[0])
    last = max(train, key=lambda s: s.steps[-1])
    steps = int(last.steps[-1] - first.steps[0])
    seconds = float(last.wall[-1] - first.wall[0])
    return steps / seconds if seconds > 0 else float("nan")


def collect(
    runs: list[Run], status: dict[str, str]
) -> tuple[list[dict], dict[str, dict[str, Band]]]:
    """One row per run (final metrics, grad means, timing) and the bands over seeds."""
    rows = []
    per_setting: dict[str, list[dict[str, Series]]] = {}
    for run in runs:
        row: dict[str, object] = {
            "setting": run.setting.name,
            "seed": run.seed,
            "status": status.get(run.label, "missing"),
        }
        if row["status"] in ("finished", "skipped") and run.dir.is_dir():
            scalars = read_scalars(run.dir)
            per_setting.setdefault(run.setting.name, []).append(scalars)
            done = json.loads(run.done_file.read_text())
            row.update(
                {
                    "steps": _steps(run),
                    "wall_s": done["wall_s"],
                    "steps_per_s": _train_speed(scalars),
                }
            )
            for tag, series in sorted(scalars.items()):
                if tag.startswith(("val/", "test/")):
                    row[tag] = series.last
                elif tag.startswith("grad/"):
                    row[f"{tag} (mean)"] = float(np.mean(series.values))
        rows.append(row)
    bands = {
        name: {
            tag: over_seeds([s[tag] for s in scalars])
            for tag in set.intersection(*(set(s) for s in scalars))
        }
        for name, scalars in per_setting.items()
    }
    return rows, bands


def write_csv(rows: list[dict], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    if not values:
        return "–"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {float(np.std(values, ddof=1)):.2g}"


def write_markdown(rows: list[dict], path: Path, metrics: list[str], command: str) -> None:
    """Per setting, mean ± std over seeds of ``metrics``, wall time and steps/s."""
    columns = [*metrics, "wall_s", "steps_per_s"]
    lines = [
        "| setting | seeds | " + " | ".join(columns) + " |",
        "| --- | --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    failed = []
    for name in settings:
        ok = [r for r in rows if r["setting"] == name and r["status"] in ("finished", "skipped")]
        failed += [f"{name} seed {r['seed']}" for r in rows if r["setting"] == name and r not in ok]
        cells = [_fmt([float(r[c]) for r in ok if c in r]) for c in columns]
        lines.append(f"| {name} | {len(ok)} | " + " | ".join(cells) + " |")
    text = [
        "# Comparison",
        "",
        f"`{command}`",
        "",
        "Final values of the metrics, the gradient statistics averaged over the run, "
        "mean ± standard deviation over seeds; wall time of each whole run (start-up "
        "included), steps per second between its first and last training log.",
        "",
        *lines,
    ]
    if failed:
        text += ["", "Not finished: " + ", ".join(failed)]
    path.write_text("\n".join(text) + "\n")


def _default_metrics(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    evals = [c for c in columns if c.startswith(("val/", "test/"))]
    grads = [f"{t} (mean)" for t in GRAD_TAGS if f"{t} (mean)" in columns]
    return evals + grads


def _curve_tags(bands: dict[str, dict[str, Band]]) -> list[str]:
    """The learning curves drawn by default: the ``val/`` tags, else the ``train/`` ones."""
    tags = {t for by_tag in bands.values() for t in by_tag}
    val = sorted(t for t in tags if t.startswith("val/"))
    return val or sorted(t for t in tags if t.startswith("train/") and t != "train/temperature")


# -------------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    """argparse, with an error's message first and alone (argparse put it under the usage)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message}\n({self.prog} --help lists the options)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m zoo.lab.compare",
        description="Compare estimators (or config overlays) on one experiment over seeds; "
        "arguments after -- go to every train.py run.",
    )
    parser.add_argument("--config", required=True, help="the base experiment config (YAML)")
    parser.add_argument(
        "--estimators",
        nargs="+",
        required=True,
        metavar="[NAME=]FILE",
        help="estimator group files (configs/estimator/*.yaml) or config overlays",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per setting (default 1)")
    parser.add_argument("--first_seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--out", required=True, help="output directory")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max_steps", type=int, help="training steps per run")
    budget.add_argument("--max_time", type=float, help="training minutes per run")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process with its output in OUT/runs/.../train.log "
        "(default 1); 0: one after another in this process, output to the terminal",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads per run (default: cores / jobs when jobs > 1)"
    )
    parser.add_argument(
        "--grad_every", type=int, default=100, help="GradientStatistics every n steps (0: off)"
    )
    parser.add_argument("--grad_probes", type=int, default=16, help="estimates per measurement")
    parser.add_argument(
        "--grad_examples", type=int, default=16, help="examples of the fixed batch measured"
    )
    parser.add_argument("--test", action="store_true", help="also run train.py test on each run")
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: write the results of the runs finished so far",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        help="tags for the table and the learning curves (default: val/, test/)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a comparison; the exit status is 1 when a run failed, 0 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m zoo.lab.compare " + " ".join(argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, low in (("seeds", 1), ("jobs", 0), ("grad_every", 0), ("grad_probes", 2)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be ≥ {low}, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max_steps must be ≥ 1, got {args.max_steps}")
    if args.max_time is not None and not args.max_time > 0:
        parser.error(f"--max_time must be > 0 minutes, got {args.max_time}")
    if not Path(args.config).is_file():
        parser.error(f"--config: no file at {args.config}")
    try:
        runs = plan(args, overrides)
    except ValueError as error:
        parser.error(str(error))
    threads = args.threads
    if threads is None and args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        status = {r.label: "finished" if r.finished() else "not run" for r in runs}
    else:
        status = run_all(runs, args.jobs, threads)
    rows, bands = collect(runs, status)
    metrics = args.metrics or _default_metrics(rows)
    write_csv(rows, out / "results.csv")
    write_markdown(rows, out / "results.md", metrics, command)
    curves = [m for m in (args.metrics or []) if not m.startswith("grad/")] or _curve_tags(bands)
    written = [
        plot_bands(bands, curves, out / "learning_curves.png"),
        plot_bands(
            bands,
            GRAD_TAGS,
            out / "gradients.png",
            log_tags=("grad/variance", "grad/snr", "grad/bias_floor"),
        ),
        plot_bands(bands, curves, out / "wall_time.png", x="wall"),
    ]
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}", flush=True)
    for path in written:
        if path is not None:
            print(f"wrote {path}", flush=True)
    return 1 if "failed" in status.values() else 0


if __name__ == "__main__":
    sys.exit(main())
