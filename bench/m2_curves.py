"""Plot M2's accuracy curves written by ``bench/m2.py --eval-every N``: validation accuracy of
argmax q(y | x) on the 10,000 validation images against training steps and against training
seconds (the evaluations left out), one line per result file.

Run: python bench/m2_curves.py --out docs/m2/ablation.png \\
         bench/results/m2-base-st-gumbel.json:"α = 0.1 (old configs)" ...

Each argument is ``PATH`` or ``PATH:LABEL`` (the label defaults to the file's tag and
estimator). The table printed below the plot gives each curve's accuracy at its last step,
its best accuracy and the step of the best, and ms per step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read(spec: str) -> tuple[str, dict]:
    path, _, label = spec.partition(":")
    result = json.loads(Path(path).read_text())
    if not result.get("curve"):
        raise ValueError(f"{path} has no accuracy curve; run bench/m2.py with --eval-every N")
    return label or Path(path).stem.removeprefix("m2-"), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="PATH or PATH:LABEL of bench/m2.py results")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="M2, 100 labels, one CPU thread")
    args = parser.parse_args()

    curves = [read(spec) for spec in args.results]
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    print("| run | steps | ms/step | final val. accuracy | best (step) | test accuracy |")
    print("|---|---|---|---|---|---|")
    for label, result in curves:
        steps, seconds, accuracy = zip(*result["curve"], strict=True)
        percent = [100 * a for a in accuracy]
        (line,) = by_step.plot(steps, percent, label=label)
        by_time.plot([s / 60 for s in seconds], percent, color=line.get_color())
        best = max(range(len(percent)), key=percent.__getitem__)
        print(
            f"| {label} | {steps[-1]} | {result['ms_per_step']:.0f} | {percent[-1]:.1f} % "
            f"| {percent[best]:.1f} % ({steps[best]}) | {100 * result['test_accuracy']:.1f} % |"
        )
    by_step.set_xlabel("training steps")
    by_time.set_xlabel("training minutes (one thread)")
    by_step.set_ylabel("validation accuracy (%)")
    for axes in (by_step, by_time):
        axes.grid(alpha=0.3)
        axes.axhline(90, color="grey", linestyle=":", linewidth=1)
    by_step.legend(fontsize=8, loc="lower right")
    fig.suptitle(args.title)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
