"""M2 with 100 labels beside Jang et al. (2017), Table 2 and Fig. 5: test accuracy per estimator, and
the step time of sampling the class against marginalizing it.

**Accuracy** (``--part accuracy``). Each run is the project's own config,
``configs/m2/m2.yaml`` with each estimator swapped in (``ESTIMATORS``), built by `zoo.cli.ZooCLI` (so the model,
Adam at the config's lr, batches of 100 unlabelled + 100 labelled images,
dynamically binarized MNIST with 100 labels, and the schedule
τ = max(0.5, τ₀·exp(−3e-5 t)) every 2000 steps are what ``train.py fit``
runs), with only these overrides: ``Trainer(max_time=--minutes)`` and/or
``max_steps=--steps`` stop training (``max_epochs=-1``, so the budget alone
decides), no validation
(``limit_val_batches=0``: the budget goes to training), no progress bar, logs
under ``bench/results/logs/``, and ``--lr``/``--alpha`` where given. Then
``Trainer.test`` on the 10,000 test images: ``test/accuracy`` (argmax q(y | x))
and ``test/neg_elbo``. Jang et al. report 93.6 % (ST Gumbel-Softmax) and 92.6 %
(marginalization, Kingma et al.'s M2) after full training; the number of steps
is not stated in the paper. A budget of minutes on a shared 2-core CPU is a
small fraction of that: read the accuracies as where training stands, not as
a reproduction. ``--eval-every N`` records the accuracy of argmax q(y | x) on the
10,000 validation images every N steps (the ``curve`` of the result file, plotted
by ``bench/m2_curves.py``); ``--set KEY=VALUE`` passes any ``train.py`` override
(``--set model.init_args.alpha=50``); ``--labelled-per-batch k`` keeps the first k
labelled images of each batch.

**Step time** (``--part speed``). One training step of M2 (forward, backward
and Adam's update of a batch of 100 unlabelled and 100 labelled images) with K
= 10 and K = 100 classes, the class marginalized (`Exact`: K decoder passes per
unlabelled image) or sampled (`GumbelSoftmax`, `STGumbelSoftmax`: one), timed
interleaved with `bench.common.measure` (median of the accepted samples; a
sample is rejected when other processes used more than 0.3 cores during it).
Jang et al.'s Fig. 5: Gumbel-Softmax is 2× faster than marginalization with
K = 10 and 9.9× with K = 100. The images are random bits (the step time does
not depend on them), so this part needs no data.

Run: nice -n 10 python bench/m2.py --part speed --threads 1
     nice -n 10 python bench/m2.py --part accuracy --estimators exact,st-gumbel --minutes 5 --threads 1
     nice -n 5 python bench/m2.py --part accuracy --estimators st-gumbel --steps 4000 --eval-every 250 \
         --set model.init_args.alpha=50 --tag a50
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import _cpu_snapshot, _others_cores, measure  # noqa: E402

GROUP = "configs/estimator"
ESTIMATORS = {
    # name: what follows --config configs/m2/m2.yaml (its own estimator is ST Gumbel-Softmax)
    "exact": ["--model.estimator=Exact"],
    "gumbel": ["--model.estimator", f"{GROUP}/gumbel.yaml"],
    "st-gumbel": [],
    "straight-through": ["--model.estimator", f"{GROUP}/straight-through.yaml"],
    "perturb-and-map": ["--model.estimator", f"{GROUP}/perturb-and-map.yaml"],
    "reinforce-ema": ["--model.estimator", f"{GROUP}/reinforce-ema.yaml"],
    "reinforce-loo": ["--model.estimator", f"{GROUP}/reinforce-loo.yaml"],
    "reinforce-learned": [
        "--model.estimator",
        f"{GROUP}/reinforce-learned.yaml",
        "--model.estimator.baseline.in_features=10",
    ],  # fmt: skip
}
# Jang et al. (2017), Table 2: test accuracy with 100 labels (%).
PAPER = {"exact": ("marginalization (M2)", 92.6), "st-gumbel": ("ST Gumbel-Softmax", 93.6)}
# Jang et al. (2017), Fig. 5: speed-up of Gumbel-Softmax over marginalization.
PAPER_SPEEDUP = {10: 2.0, 100: 9.9}


def _max_time(minutes: float) -> str:
    seconds = max(1, round(60 * minutes))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    mins, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{mins:02d}:{secs:02d}"


# ----------------------------------------------------------------------------- accuracy
class FewerLabelled:
    """``datamodule.on_after_batch_transfer``: keep the first ``count`` labelled images of a batch."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"--labelled-per-batch must be ≥ 1, got {count}")
        self.count = count

    def __call__(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict:
        if "x_labelled" not in batch:  # validation and test batches
            return batch
        return {
            **batch,
            "x_labelled": batch["x_labelled"][: self.count],
            "y_labelled": batch["y_labelled"][: self.count],
        }


class AccuracyCurve(L.Callback):
    """Validation accuracy of argmax q(y | x) on all 10,000 validation images every ``every`` steps.

    ``points`` holds ``(step, training seconds, accuracy)``; the seconds leave out
    the evaluations themselves.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.points: list[tuple[int, float, float]] = []
        self._start = 0.0
        self._spent = 0.0

    @torch.no_grad()
    def _evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        begin = time.perf_counter()
        val = trainer.datamodule.val_set
        x, y = val.images.to(torch.float32), val.labels
        was_training = module.training
        module.eval()
        correct = sum(
            int((module.classify(x[i : i + 2000]) == y[i : i + 2000]).sum())
            for i in range(0, len(y), 2000)
        )
        module.train(was_training)
        seconds = begin - self._start - self._spent
        self.points.append((trainer.global_step, seconds, correct / len(y)))
        self._spent += time.perf_counter() - begin

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._evaluate(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._evaluate(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.points[-1][0] != trainer.global_step:
            self._evaluate(trainer, module)


def run_one(estimator: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one config for the budget, test it, return the numbers."""
    from zoo.cli import main as cli_main

    if estimator not in ESTIMATORS:
        raise ValueError(
            f"--estimators: unknown {estimator!r}; expected one of {', '.join(ESTIMATORS)}"
        )
    swap = [str(ROOT / a) if a.startswith(GROUP) else a for a in ESTIMATORS[estimator]]
    cli_args = [
        "--config",
        str(ROOT / "configs" / "m2" / "m2.yaml"),
        *swap,
        f"--seed_everything={args.seed}",
        f"--trainer.max_steps={getattr(args, 'steps', None) or -1}",
        "--trainer.max_epochs=-1",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={args.log_dir}",
        f"--trainer.logger.init_args.name=m2-{estimator}",
    ]
    if args.minutes is not None:
        cli_args.append(f"--trainer.max_time={_max_time(args.minutes)}")
    if args.lr is not None:
        cli_args.append(f"--model.init_args.lr={args.lr}")
    if args.alpha is not None:
        cli_args.append(f"--model.init_args.alpha={args.alpha}")
    if args.data_dir:
        cli_args.append(f"--data.init_args.data_dir={args.data_dir}")
    cli_args += [f"--{setting}" for setting in getattr(args, "set", None) or []]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both argv and args are set
    try:
        cli = cli_main(cli_args, run=False)
    finally:
        sys.argv = argv
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    labelled = getattr(args, "labelled_per_batch", None)
    if labelled is not None:
        data.on_after_batch_transfer = FewerLabelled(labelled)
    curve = None
    if getattr(args, "eval_every", 0):
        curve = AccuracyCurve(args.eval_every)
        trainer.callbacks.append(curve)

    load = _cpu_snapshot()
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_s = time.perf_counter() - start
    fit_load = _others_cores(load)
    steps = trainer.global_step
    temperature = getattr(module.estimator, "temperature", None)

    # A fresh trainer, as ``train.py test --ckpt_path`` would: the fit's TensorBoard writer is closed.
    tester = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    start = time.perf_counter()
    (metrics,) = tester.test(module, datamodule=data, verbose=False)
    test_s = time.perf_counter() - start
    paper_name, paper = PAPER.get(estimator, (None, None))
    return {
        "estimator": estimator,
        "config": " ".join(["configs/m2/m2.yaml", *ESTIMATORS[estimator]]),
        "estimator_repr": repr(module.estimator).replace("\n", " "),
        "lr": module.lr,
        "alpha": module.alpha,
        "minutes": args.minutes,
        "max_steps": getattr(args, "steps", None),
        "seed": args.seed,
        "steps": steps,
        "epochs": steps / len(data.train_dataloader()),
        "fit_seconds": fit_s,
        "ms_per_step": 1e3 * fit_s / max(steps, 1),
        "other_processes_cores_fit": fit_load,
        "test_seconds": test_s,
        "final_temperature": temperature,
        "threads": torch.get_num_threads(),
        "test_accuracy": metrics.get("test/accuracy"),
        "test_neg_elbo": metrics.get("test/neg_elbo"),
        "test_metrics": metrics,
        "paper_name": paper_name,
        "paper_accuracy": paper,
        "log_dir": trainer.log_dir,
        "settings": list(getattr(args, "set", None) or []),
        "labelled_per_batch": labelled,
        "curve": None if curve is None else curve.points,
    }


def budget(result: dict[str, Any]) -> str:
    """A run's stated budget: its minutes, or its steps."""
    if result["minutes"] is None:
        return f"{result['max_steps']} steps"
    return f"{result['minutes']:g} min"


def accuracy_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| estimator | budget | steps (epochs) | ms/step | final τ | test accuracy | test −ELBO "
        "| Jang et al. Table 2 | ratio to paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        paper = r["paper_accuracy"]
        acc = 100 * r["test_accuracy"]
        tau = "—" if r["final_temperature"] is None else f"{r['final_temperature']:.3f}"
        cited = "—" if paper is None else f"{paper:.1f} % ({r['paper_name']})"
        ratio = "—" if paper is None else f"{acc / paper:.2f}"
        lines.append(
            f"| {r['estimator']} | {budget(r)} | {r['steps']} ({r['epochs']:.1f}) "
            f"| {r['ms_per_step']:.0f} | {tau} | {acc:.1f} % | {r['test_neg_elbo']:.1f} "
            f"| {cited} | {ratio} |"
        )
    return "\n".join(lines)


def seeds_table(results: list[dict[str, Any]]) -> str:
    """Mean ± standard deviation over the seeds of each estimator's test accuracy."""
    lines = [
        "| estimator | budget | seeds | steps (mean) | test accuracy (mean ± std) "
        "| Jang et al. Table 2 |",
        "|---|---|---|---|---|---|",
    ]
    for estimator in dict.fromkeys(r["estimator"] for r in results):
        runs = [r for r in results if r["estimator"] == estimator]
        accuracy = torch.tensor([100 * r["test_accuracy"] for r in runs], dtype=torch.float64)
        steps = sum(r["steps"] for r in runs) / len(runs)
        paper = runs[0]["paper_accuracy"]
        lines.append(
            f"| {estimator} | {budget(runs[0])} | {len(runs)} | {steps:.0f} "
            f"| {accuracy.mean():.1f} ± {accuracy.std():.1f} % "
            f"| {'—' if paper is None else f'{paper:.1f} %'} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- speed
def step_fn(estimator_name: str, num_classes: int, batch_size: int) -> Any:
    """A zero-argument training step of M2 (forward, backward, Adam) on random bits."""
    from zoo.estimators import Exact, GumbelSoftmax, STGumbelSoftmax
    from zoo.models.m2 import M2

    estimator = {"exact": Exact, "gumbel": GumbelSoftmax, "st-gumbel": STGumbelSoftmax}[
        estimator_name
    ]()
    torch.manual_seed(0)
    model = M2(estimator, num_classes=num_classes)
    optimizer = model.configure_optimizers()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "x": torch.bernoulli(torch.full((batch_size, 784), 0.2), generator=generator),
        "x_labelled": torch.bernoulli(torch.full((batch_size, 784), 0.2), generator=generator),
        "y_labelled": torch.randint(0, num_classes, (batch_size,), generator=generator),
    }

    def step() -> None:
        # What M2.training_step minimizes, without a Trainer around it.
        optimizer.zero_grad(set_to_none=True)
        labelled, classification = model.labelled_terms(batch)
        loss = model(batch).mean() + labelled.mean() + model.alpha * classification.mean()
        loss.backward()
        optimizer.step()

    return step


def speed(args: argparse.Namespace) -> str:
    lines = [
        "| K | marginalize (Exact) ms/step | Gumbel-Softmax ms/step | ST Gumbel-Softmax ms/step "
        "| speed-up Gumbel (ST) | Jang et al. Fig. 5 | ratio to paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in (10, 100):
        timings = measure(
            {name: step_fn(name, k, args.batch_size) for name in ("exact", "gumbel", "st-gumbel")},
            repeats=args.repeats,
            min_time=0.3,
            budget=args.speed_budget,
        )
        exact, gumbel, st = (timings[n] for n in ("exact", "gumbel", "st-gumbel"))
        up, up_st = exact.median / gumbel.median, exact.median / st.median
        lines.append(
            f"| {k} | {exact} | {gumbel} | {st} | {up:.2f}× ({up_st:.2f}×) "
            f"| {PAPER_SPEEDUP[k]:.1f}× | {up / PAPER_SPEEDUP[k]:.2f} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("accuracy", "speed", "both"), default="both")
    parser.add_argument(
        "--estimators",
        default="exact,st-gumbel",
        help=f"comma-separated, or 'all': {', '.join(ESTIMATORS)}",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget per run (default 5; none with --steps)",
    )
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: config's)")
    parser.add_argument("--alpha", type=float, default=None, help="α (default: config's)")
    parser.add_argument(
        "--steps", type=int, default=None, help="stop after this many steps (or --minutes)"
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any train.py override without its dashes, e.g. model.init_args.alpha=50 (repeat)",
    )
    parser.add_argument(
        "--labelled-per-batch",
        type=int,
        default=None,
        help="keep only this many of the batch's labelled images (default: all, batch_size)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="record the accuracy on the 10,000 validation images every N steps (0: never)",
    )
    parser.add_argument("--tag", default=None, help="name of the result file: m2-<tag>.json")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument(
        "--seeds", type=int, default=1, help="seeds per estimator: --seed, --seed + 1, ..."
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=100, help="speed part: images a batch")
    parser.add_argument("--repeats", type=int, default=7, help="speed part: samples per estimator")
    parser.add_argument("--speed-budget", type=float, default=6.0, help="speed part: s per cell")
    parser.add_argument("--data-dir", default=None, help="dataset root (default $ZOO_DATA_DIR)")
    parser.add_argument("--log-dir", default=str(ROOT / "bench" / "results" / "logs"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be ≥ 1, got {args.seeds}")
    if args.minutes is None and args.steps is None:
        args.minutes = 5.0
    estimators = (
        list(ESTIMATORS)
        if args.estimators == "all"
        else [e.strip().replace("_", "-") for e in args.estimators.split(",") if e.strip()]
    )
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        parser.error(f"unknown estimators {unknown}; choose from {', '.join(ESTIMATORS)}")

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    if args.part in ("speed", "both"):
        print(f"\nStep time, batch of {args.batch_size} unlabelled + {args.batch_size} labelled:")
        table = speed(args)
        print()
        print(table)
        print("\nJang et al. (2017), Fig. 5: Gumbel-Softmax 2× (K = 10) and 9.9× (K = 100) faster.")

    if args.part in ("accuracy", "both"):
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        first_seed = args.seed
        for estimator in estimators:
            for seed in range(first_seed, first_seed + args.seeds):
                args.seed = seed
                result = run_one(estimator, args)
                results.append(result)
                name = f"{args.tag}-{estimator}" if args.tag else estimator
                suffix = f"-seed{seed}" if args.seeds > 1 else ""
                path = out / f"m2-{name}{suffix}.json"
                path.write_text(json.dumps(result, indent=2))
                print(
                    f"m2/{estimator} seed {seed}: {result['steps']} steps in "
                    f"{result['fit_seconds']:.0f} s (other processes used "
                    f"{result['other_processes_cores_fit']:.2f} of 2 cores); "
                    f"test {result['test_seconds']:.0f} s; saved {path}",
                    flush=True,
                )
        print()
        print(accuracy_table(results))
        if args.seeds > 1:
            print()
            print(seeds_table(results))
        print(
            "\nPaper: Jang et al. (2017), Table 2, test accuracy with 100 labels after full "
            "training (steps not stated); here a budget of minutes."
        )


if __name__ == "__main__":
    main()
