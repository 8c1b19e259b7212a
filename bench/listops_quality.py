"""ListOps test accuracy and tree agreement of every structure × estimator after a wall-clock budget.

Each setting is a model file of ``configs/listops/`` (``dependency``,
``nonprojective``, ``constituency``: REINFORCE with the greedy baseline; the
baselines ``lstm``, ``gold-tree``, ``gold-tree-binary``; the recipes), or a
structure's model file with an estimator, ``<structure>-<estimator>``, composed
as ``train.py`` composes it (`ESTIMATORS`: ``dependency-st-gumbel`` is
``--config configs/listops/dependency.yaml --model.estimator
configs/estimator/st-gumbel.yaml``). It is built by `zoo.cli.ZooCLI` (so the
model, Adam at lr 1e-3, batch 64 and the generated training data are what
``train.py fit`` runs), with only these
overrides: ``Trainer(max_time=--minutes)`` stops training (``max_epochs=-1``:
the budget alone decides), ``--num-train`` generated training expressions of at
most ``--max-length`` symbols, no progress bar, logs and checkpoints under
``bench/results/logs/``. Then ``Trainer.test`` with the final weights on the
shared development half of the official test set
(``data/listops/dev_d20s.tsv.gz``, 5,000 expressions of 1 to 939 symbols, or
``--test-file``): ``test/accuracy`` of the prediction from the MAP tree, and
``test/uas`` (dependency trees) or ``test/tree_f1`` (binary trees) against the
released trees, plus accuracy by length bucket.

Anchors (Nangia & Bowman 2018; Havrylov et al. 2019), test accuracy in %:
LSTM 74.4, ST-Gumbel Tree-LSTM (Choi et al. 2018, as reimplemented) 61.0,
gold-tree Tree-LSTM 98.7, cooperative REINFORCE/PPO latent trees 99.2 ± 0.5;
each row shows its ratio to the anchor of its kind. Their models trained for
hours to days on GPUs; here a setting gets minutes on one thread of a shared
2-core CPU, so the table measures how far each gets in that budget.

On a shared machine a step budget (``--steps``) trains every setting equally
whatever the load; the table gives wall and CPU time either way.

Run: nice -n 10 python bench/listops_quality.py --settings gold-tree lstm --minutes 5
     nice -n 10 python bench/listops_quality.py --settings gold-tree --steps 600
     python bench/listops_quality.py --settings all --minutes 30     # hours
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

CONFIGS = ROOT / "configs" / "listops"
ESTIMATOR_FILES = ROOT / "configs" / "estimator"
STRUCTURES = ("dependency", "nonprojective", "constituency")
ESTIMATORS = {
    "reinforce-greedy": [None],  # the structures' model files' own
    "reinforce-loo": ["reinforce-loo.yaml", "--model.estimator.normalize_advantages=true"],
    "sst": ["gumbel.yaml"],
    "st-gumbel": ["st-gumbel.yaml"],
    "straight-through": ["straight-through.yaml"],
    "perturb-and-map": ["perturb-and-map.yaml", "--model.estimator.gradient=imle"],
    "reinmax": ["reinmax.yaml"],
    "gapped-st": ["gapped-st.yaml"],
}
"""The estimators of a ``<structure>-<estimator>`` setting: a group file and the family's flags
(the model files' headers list the same)."""
SETTINGS = tuple(
    sorted(
        [p.stem for p in CONFIGS.glob("*.yaml")]
        + [f"{s}-{e}" for s in STRUCTURES for e in ESTIMATORS]
    )
)


def config_args(setting: str) -> list[str]:
    """The ``train.py`` arguments of a setting: its model file, and its estimator."""
    if (CONFIGS / f"{setting}.yaml").is_file():
        return ["--config", str(CONFIGS / f"{setting}.yaml")]
    structure, estimator = setting.split("-", 1)
    group, *flags = ESTIMATORS[estimator]
    model = ["--config", str(CONFIGS / f"{structure}.yaml")]
    return (
        model
        if group is None
        else [*model, "--model.estimator", str(ESTIMATOR_FILES / group), *flags]
    )


ANCHORS = {
    # kind: (anchor name, test accuracy %)
    "lstm": ("LSTM (Nangia & Bowman)", 74.4),
    "gold": ("gold-tree Tree-LSTM (Nangia & Bowman)", 98.7),
    "st-gumbel": ("ST-Gumbel Tree-LSTM (Havrylov et al.)", 61.0),
    "latent": ("REINFORCE/PPO latent tree (Havrylov et al.)", 99.2),
}


def anchor_of(setting: str) -> tuple[str, float]:
    if setting == "lstm":
        return ANCHORS["lstm"]
    if setting.startswith("gold-tree"):
        return ANCHORS["gold"]
    if setting.endswith("st-gumbel"):
        return ANCHORS["st-gumbel"]
    return ANCHORS["latent"]


def _max_time(minutes: float) -> str:
    seconds = max(1, round(60 * minutes))
    hours, rest = divmod(seconds, 3600)
    mins, secs = divmod(rest, 60)
    return f"00:{hours:02d}:{mins:02d}:{secs:02d}"


def run_one(setting: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one config for the budget, test it on the development half, return the numbers."""
    from zoo.cli import main as cli_main

    cli_args = [
        *config_args(setting),
        f"--seed_everything={args.seed}",
        *(
            [f"--trainer.max_steps={args.steps}"]
            if args.steps
            else [f"--trainer.max_time={_max_time(args.minutes)}"]
        ),
        "--trainer.max_epochs=-1",
        f"--trainer.val_check_interval={args.val_every}",
        "--trainer.check_val_every_n_epoch=null",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={args.log_dir}",
        f"--trainer.logger.init_args.name={setting}",
        f"--data.init_args.num_train={args.num_train}",
        f"--data.init_args.num_val={args.num_val}",
        f"--data.init_args.max_length={args.max_length}",
        f"--data.init_args.eval_batch_size={args.eval_batch_size}",
    ]
    if args.test_file:
        cli_args.append(f"--data.init_args.test_file={args.test_file}")
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both argv and args are set
    try:
        cli = cli_main(cli_args, run=False)
    finally:
        sys.argv = argv
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(module, data)
    train_time, train_cpu = time.perf_counter() - start, time.process_time() - cpu
    # A fresh trainer without a logger for the test: after fit the run's TensorBoard
    # writer is closed, and the scalars that matter are returned here anyway.
    tester = L.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    start, cpu = time.perf_counter(), time.process_time()
    (tested,) = tester.test(module, data, verbose=False)
    test_time, test_cpu = time.perf_counter() - start, time.process_time() - cpu
    tree_name = getattr(module, "tree_metric", None)
    return {
        "setting": setting,
        "steps": int(trainer.global_step),
        "train_s": train_time,
        "test_s": test_time,
        "train_cpu_s": train_cpu,
        "test_cpu_s": test_cpu,
        "accuracy": 100 * float(tested["test/accuracy"]),
        "tree_name": tree_name,
        "tree": None if tree_name is None else 100 * float(tested[f"test/{tree_name}"]),
        "buckets": {
            k.removeprefix("test/accuracy_"): 100 * float(v)
            for k, v in tested.items()
            if k.startswith("test/accuracy_")
        },
    }


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nListOps, dev half of the official test set; training: "
        f"{f'{args.steps} steps' if args.steps else f'{args.minutes:g} min'} per setting, "
        f"{args.num_train} generated expressions of ≤ {args.max_length} symbols, 1 thread\n"
    )
    head = (
        "| setting | steps | train min | test s | accuracy % | tree % | anchor | anchor % | ratio |"
    )
    print(head)
    print("| --- " * 9 + "|")
    for r in rows:
        name, value = anchor_of(r["setting"])
        tree = "–" if r["tree"] is None else f"{r['tree']:.1f} ({r['tree_name']})"
        print(
            f"| {r['setting']} | {r['steps']} | {r['train_s'] / 60:.1f} ({r['train_cpu_s'] / 60:.1f}) | "
            f"{r['test_s'] / 60:.1f} ({r['test_cpu_s'] / 60:.1f}) | "
            f"{r['accuracy']:.1f} | {tree} | {name} | {value:.1f} | {r['accuracy'] / value:.2f} |"
        )
    buckets = sorted(
        {b for r in rows for b in r["buckets"]}, key=lambda b: int(b.split("-")[0].rstrip("+"))
    )
    print("\naccuracy % by expression length (symbols)\n")
    print("| setting | " + " | ".join(buckets) + " |")
    print("| --- " * (len(buckets) + 1) + "|")
    for r in rows:
        cells = [f"{r['buckets'][b]:.1f}" if b in r["buckets"] else "–" for b in buckets]
        print(f"| {r['setting']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["gold-tree", "lstm"],
                        help=f"settings, or 'all': {', '.join(SETTINGS)}")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per setting")
    parser.add_argument(
        "--steps", type=int, default=0, help="a budget of training steps instead of minutes"
    )
    parser.add_argument("--num-train", type=int, default=90_000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=100, help="longest training expression")
    parser.add_argument("--val-every", type=int, default=500, help="validate every this many steps")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--test-file", default=None, help="default: data/listops/dev_d20s.tsv.gz")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default=str(ROOT / "bench" / "results" / "logs"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "listops_quality.json"))
    args = parser.parse_args()
    settings = list(SETTINGS) if args.settings == ["all"] else args.settings
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*have no logger configured.*")
    rows = []
    for setting in settings:
        rows.append(run_one(setting, args))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print_table(rows, args)


if __name__ == "__main__":
    main()
