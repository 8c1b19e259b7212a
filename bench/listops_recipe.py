"""The ListOps recipe and its ablation: which of its parts make latent trees learnable.

Each row trains ``configs/listops/dependency-ppo.yaml`` through `zoo.cli.ZooCLI`
(what ``train.py fit`` runs) with one part of the recipe switched off, for a
wall-clock budget on one thread, then tests the final weights on the
development half of the official test set filtered as the config says (≤ 30
symbols by default). The table gives test accuracy and UAS, the validation
curve's first step at UAS ≥ 90, and the signs of a collapsed parser at the end
of training: the entropy of q per token and the share of samples equal to the
MAP tree. Anchors: the flat tree (every symbol on the first operator) and the
gold tree's UAS of 100, measured on the same test set in the same run.

On a loaded machine ``--steps`` gives every row the same work (the time
budget then measures the load as much as the recipe).

Run (about ``len(rows) × seeds × minutes``):
    nice -n 10 python bench/listops_recipe.py --rows recipe --seeds 0 1 2 --minutes 15
    nice -n 10 python bench/listops_recipe.py --rows all --seeds 0 --steps 1500
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
M = "--model.init_args."
E = "--model.init_args.estimator.init_args."
ROWS: dict[str, list[str]] = {
    "recipe": [],
    "fixed entropy weight 0.1": [f"{M}target_entropy=null"],
    "no warm-up": [f"{M}parser_warmup_steps=0"],
    "one learning rate": [f"{M}parser_lr=null"],
    "no entropy bonus": [f"{M}entropy_weight=0.0", f"{M}target_entropy=null"],
    "no advantage normalisation": [f"{E}normalize_advantages=false"],
    "no proximal steps": [f"{E}policy_updates=1"],
    "shipped before (one Adam 1e-3, none of the above)": [
        f"{M}parser_warmup_steps=0",
        f"{M}parser_lr=null",
        f"{M}entropy_weight=0.0",
        f"{M}target_entropy=null",
        f"{E}normalize_advantages=false",
        f"{E}policy_updates=1",
    ],
}


def _max_time(minutes: float) -> str:
    seconds = max(1, round(60 * minutes))
    hours, rest = divmod(seconds, 3600)
    mins, secs = divmod(rest, 60)
    return f"00:{hours:02d}:{mins:02d}:{secs:02d}"


def flat_uas(data: Any) -> float:
    """UAS of the flat tree (every symbol on the first one, the first on ROOT) on the test set."""
    right = total = 0
    for e in data.test_set.examples:
        heads = [-1] + [0] * (len(e.tokens) - 1)
        right += sum(h == g for h, g in zip(heads, e.heads, strict=True))
        total += len(e.tokens)
    return 100 * right / total


def run_one(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from zoo.cli import main as cli_main
    from zoo.lab.events import read_scalars

    label = name.split(" (")[0].replace(" ", "-").replace("/", "-per-")
    log_name = f"{args.config}-{label}-seed{seed}"
    cli_args = [
        "--config",
        str(CONFIGS / f"{args.config}.yaml"),
        f"--seed_everything={seed}",
        *(
            [f"--trainer.max_steps={args.steps}", "--trainer.max_time=null"]
            if args.steps
            else [f"--trainer.max_time={_max_time(args.minutes)}"]
        ),
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={args.log_dir}",
        f"--trainer.logger.init_args.save_dir={args.log_dir}",
        f"--trainer.logger.init_args.name={log_name}",
        *ROWS[name],
        *args.extra,
    ]
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli = cli_main(cli_args, run=False)
    finally:
        sys.argv = argv
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    start = time.perf_counter()
    trainer.fit(module, data)
    train_s = time.perf_counter() - start
    scalars = read_scalars(trainer.logger.log_dir)
    tester = L.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    (tested,) = tester.test(module, data, verbose=False)
    test_s = time.perf_counter() - start

    def curve(tag: str) -> list[tuple[int, float]]:
        series = scalars.get(tag)
        return (
            []
            if series is None
            else [(int(s), float(v)) for s, v in zip(series.steps, series.values, strict=True)]
        )

    def last(tag: str) -> float | None:
        points = curve(tag)
        return points[-1][1] if points else None

    uas_curve = curve("val/uas")
    reached = next((s for s, v in uas_curve if v >= 0.9), None)
    return {
        "row": name,
        "seed": seed,
        "steps": int(trainer.global_step),
        "train_min": train_s / 60,
        "test_s": test_s,
        "accuracy": 100 * float(tested["test/accuracy"]),
        "uas": 100 * float(tested["test/uas"]),
        "flat_uas": flat_uas(data),
        "uas90_step": reached,
        "entropy": last("train/entropy"),
        "map_share": last("train/map_share"),
        "curves": {
            tag: curve(tag)
            for tag in (
                "val/accuracy",
                "val/uas",
                "train/entropy",
                "train/map_share",
                "train/grad_norm_parser",
            )
        },
    }


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    flat = rows[0]["flat_uas"] if rows else float("nan")
    print(
        f"\nListOps, {args.config} ablation: "
        f"{f'{args.steps} steps' if args.steps else f'{args.minutes:g} min'} per run on 1 thread; test: the "
        f"development half filtered by the config; flat-tree UAS {flat:.1f}, gold 100\n"
    )
    print(
        "| row | seed | steps | accuracy % | UAS | UAS / flat | first val step UAS ≥ 90 | entropy/token at end | samples = MAP at end |"
    )
    print("| --- " * 9 + "|")
    for r in rows:
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        print(
            f"| {r['row']} | {r['seed']} | {r['steps']} | {r['accuracy']:.1f} | {r['uas']:.1f} | "
            f"{r['uas'] / r['flat_uas']:.2f} | {fmt(r['uas90_step'], 'd')} | {fmt(r['entropy'], '.3f')} | "
            f"{fmt(None if r['map_share'] is None else 100 * r['map_share'], '.0f')} % |"
        )


def plot(paths: list[str], out: str) -> None:
    """Validation accuracy, UAS and the training entropy per token against steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for p in paths for r in json.loads(Path(p).read_text())]
    tags = (("val/accuracy", "validation accuracy"), ("val/uas", "validation UAS"),
            ("train/entropy", "entropy of q per token (training)"))  # fmt: skip
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in rows:
        for ax, (tag, _) in zip(axes, tags, strict=True):
            points = r["curves"].get(tag) or []
            if points:
                ax.plot(*zip(*points, strict=True), label=f"{r['row']}, seed {r['seed']}", lw=1)
    for ax, (_, title) in zip(axes, tags, strict=True):
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", nargs="+", default=["recipe"], help=f"'all' or any of: {'; '.join(ROWS)}"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--config", default="dependency-ppo", help="a config of configs/listops/ (the recipe's)"
    )
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument(
        "--steps", type=int, default=0,
        help="a budget of training steps instead of minutes (equal work whatever the machine's load)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--log-dir", default=str(ROOT / "bench" / "results" / "logs" / "listops_recipe")
    )
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "listops_recipe.json"))
    parser.add_argument(
        "--plot", nargs=2, metavar=("JSONS", "PNG"),
        help="draw the curves of earlier runs (comma-separated JSON files) to PNG, train nothing",
    )  # fmt: skip
    parser.add_argument("extra", nargs="*", help="more CLI overrides for every row, after --")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot[0].split(","), args.plot[1])
        return
    names = list(ROWS) if args.rows == ["all"] else args.rows
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*have no logger configured.*")
    rows = []
    for name in names:
        for seed in args.seeds:
            rows.append(run_one(name, seed, args))
            summary = {k: v for k, v in rows[-1].items() if k != "curves"}
            print(json.dumps(summary), flush=True)
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print_table(rows, args)


if __name__ == "__main__":
    main()
