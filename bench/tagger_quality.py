r"""Unsupervised tagging quality on UD English EWT: every estimator and the two baselines.

For each setting (an estimator with the neural-HMM decoder, the exact mode, the
marginal-likelihood HMM) × number of clusters (45 scored against XPOS, 17
against UPOS) × seed, one model trains for a fixed wall-clock budget on one
thread, then the dev split is scored: many-to-one (M-1), one-to-one (1-1),
V-measure, −log p(x) per token (exact, the forward algorithm), the steps it
took and the wall time. The table prints each M-1 beside the exact mode's of
the same clusters and seed (the reference), and beside the published anchors:
45-tag English M-1 79.5 (Stratos 2019), 79.2 (He et al. 2018, flow HMM, PTB),
76.5 (Gaussian HMM); the target is M-1 ≥ 80 against XPOS with 45 clusters.

``--variance`` also trains an LSTM-decoder tagger with Gumbel-CRF and, every
``--variance-every`` steps, draws ``--variance-draws`` gradient estimates of
the encoder's parameters on one fixed batch with Gumbel-CRF and with
REINFORCE + leave-one-out (both with 4 samples): the log ratio of their total
variances over training is written as a PNG (Fu et al. 2020, Fig. 3B).

    nice -n 10 python bench/tagger_quality.py --budget 180 --clusters 45 \
        --settings exact gumbel-crf reinforce-loo marginal-likelihood --variance
    python bench/tagger_quality.py --help
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.data.ud import UDTaggingDataModule
from zoo.estimators import (
    GreedyBaseline,
    GumbelCRF,
    GumbelSoftmax,
    LeaveOneOutBaseline,
    MarginalExpectation,
    MovingAverageBaseline,
    PerturbAndMAP,
    Reinforce,
    StraightThrough,
)
from zoo.models.tagger import (
    HMMPosterior,
    LSTMTagger,
    NeuralHMMTagger,
)

SETTINGS = {
    "exact": MarginalExpectation,
    "marginal-likelihood": None,
    "gumbel": lambda: GumbelSoftmax(temperature=1.0),
    "gumbel-crf": lambda: GumbelCRF(temperature=1.0),
    "st-gumbel-crf": lambda: GumbelCRF(temperature=1.0, straight_through=True),
    "straight-through": StraightThrough,
    "perturb-and-map": lambda: PerturbAndMAP(temperature=1.0),
    "reinforce-ema": lambda: Reinforce(1, MovingAverageBaseline(0.99)),
    "reinforce-loo": lambda: Reinforce(4, LeaveOneOutBaseline()),
    "reinforce-greedy": lambda: Reinforce(1, GreedyBaseline()),
}
GOLD = {45: "xpos", 17: "upos"}
ANCHORS = "45-tag M-1 anchors: 79.5 (Stratos 2019), 79.2 (He et al. 2018), 76.5 (Gaussian HMM)"


def build(setting: str, clusters: int, vocab: int, args: argparse.Namespace) -> L.LightningModule:
    sizes = {"num_tags": clusters, "input_dim": vocab, "embedding_dim": args.dim,
             "hidden_size": args.dim, "lr": args.lr}  # fmt: skip
    if setting == "marginal-likelihood":
        return NeuralHMMTagger(MarginalExpectation(), HMMPosterior(), **sizes)
    return NeuralHMMTagger(SETTINGS[setting](), **sizes)


def trainer(budget: float, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=5.0,
        max_time=timedelta(seconds=budget),
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **kwargs,
    )


def run(setting: str, clusters: int, seed: int, data: UDTaggingDataModule, args) -> dict:
    L.seed_everything(seed, verbose=False)
    model = build(setting, clusters, data.input_dim, args)
    fit = trainer(args.budget)
    start = time.perf_counter()
    fit.fit(model, data)
    wall = time.perf_counter() - start
    evaluation = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False)  # fmt: skip
    scores = evaluation.validate(model, data, verbose=False)[0]
    gold = GOLD.get(clusters, "xpos")
    return {
        "setting": setting,
        "clusters": clusters,
        "seed": seed,
        "steps": int(fit.global_step),
        "epochs": round(fit.global_step / len(data.train_dataloader()), 2),
        "wall_s": round(wall, 1),
        "m1": 100 * float(scores[f"val/m1_{gold}"]),
        "o1": 100 * float(scores[f"val/o1_{gold}"]),
        "vm": 100 * float(scores[f"val/vm_{gold}"]),
        "m1_upos": 100 * float(scores["val/m1_upos"]),
        "nll_token": float(scores["val/nll_token"]),
        "neg_elbo": float(scores["val/neg_elbo"]),
        "gold": gold,
    }


def table(rows: list[dict]) -> str:
    reference = {(r["clusters"], r["seed"]): r["m1"] for r in rows if r["setting"] == "exact"}
    lines = [
        "| setting | clusters | gold | seed | M-1 | M-1 / exact | 1-1 | VM | -log p(x)/token | steps | epochs | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ref = reference.get((r["clusters"], r["seed"]))
        ratio = f"{r['m1'] / ref:.2f}" if ref else "–"
        lines.append(
            f"| {r['setting']} | {r['clusters']} | {r['gold']} | {r['seed']} | {r['m1']:.1f} | {ratio} "
            f"| {r['o1']:.1f} | {r['vm']:.1f} | {r['nll_token']:.3f} | {r['steps']} | {r['epochs']} "
            f"| {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- variance
def encoder_gradients(model, estimator, batch, draws: int) -> torch.Tensor:
    """``(draws, P)``: estimates of ∇_φ E_q[−log p(x | z)] for the encoder's parameters φ."""
    params = list(model.encoder.parameters())
    out = []
    for _ in range(draws):
        q = model.posterior(batch)
        estimate = estimator(q, lambda z: model.cost(z, batch))
        grads = torch.autograd.grad(estimate.surrogate.mean(), params, allow_unused=True)
        out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                              for g, p in zip(grads, params, strict=True)]))  # fmt: skip
    return torch.stack(out)


class VarianceProbe(L.Callback):
    """Every ``every`` steps: log Var[REINFORCE-LOO] / Var[Gumbel-CRF] of the encoder gradient."""

    def __init__(self, batch: dict, every: int, draws: int, samples: int = 4) -> None:
        self.batch, self.every, self.draws = batch, every, draws
        self.estimators = {
            "gumbel-crf": GumbelCRF(temperature=1.0, num_samples=samples),
            "reinforce-loo": Reinforce(samples, LeaveOneOutBaseline()),
        }
        self.points: list[tuple[int, float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step % self.every:
            return
        with torch.enable_grad():
            var = {name: float(encoder_gradients(pl_module, est, self.batch, self.draws).var(0).sum())
                   for name, est in self.estimators.items()}  # fmt: skip
        self.points.append((trainer.global_step, var["gumbel-crf"], var["reinforce-loo"]))


def variance_experiment(
    data: UDTaggingDataModule, args, out: Path
) -> list[tuple[int, float, float]]:
    L.seed_everything(0, verbose=False)
    model = LSTMTagger(GumbelCRF(temperature=1.0), num_tags=45, input_dim=data.input_dim,
                       embedding_dim=args.dim, hidden_size=args.dim, lr=args.lr,
                       num_importance_samples=0)  # fmt: skip
    middle = list(data.val_dataloader())[len(data.val_dataloader()) // 2]  # typical lengths
    batch = {k: v[:16] if torch.is_tensor(v) else v[:16] for k, v in middle.items()}
    probe = VarianceProbe(batch, args.variance_every, args.variance_draws)
    trainer(args.variance_budget, callbacks=[probe]).fit(model, data)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p[0] for p in probe.points]
    ratio = [math.log(p[2] / p[1]) for p in probe.points]
    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.plot(steps, ratio, marker="o")
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_xlabel("training step (LSTM decoder, Gumbel-CRF training)")
    axes.set_ylabel("log Var[REINFORCE-LOO]\n  / Var[Gumbel-CRF]")
    axes.set_title(
        "encoder-gradient variance, 4 samples each (cf. Fu et al. 2020, Fig. 3B)", fontsize=8
    )
    figure.tight_layout()
    figure.savefig(out / "tagger_variance.png", dpi=120)
    return probe.points


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--settings",
        nargs="*",
        default=list(SETTINGS),
        choices=list(SETTINGS),
        help="none: only the variance plot (with --variance)",
    )
    parser.add_argument("--clusters", nargs="+", type=int, default=[45, 17])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per run")
    parser.add_argument("--dim", type=int, default=128, help="embedding and LSTM width")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-train-length", type=int, default=40,
                        help="drop longer training sentences (dev is scored whole)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="sentences per split (quick runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--variance", action="store_true", help="also the Gumbel-CRF / REINFORCE-LOO variance plot"
    )
    parser.add_argument("--variance-budget", type=float, default=180.0)
    parser.add_argument("--variance-every", type=int, default=50)
    parser.add_argument("--variance-draws", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = UDTaggingDataModule(limit=args.limit, max_train_length=args.max_train_length,
                               batch_size=args.batch_size, data_dir=os.environ.get("ZOO_DATA_DIR"))  # fmt: skip
    data.setup("fit")
    print(f"EWT: {len(data.splits['train'])} training sentences (≤ {args.max_train_length} words), "
          f"{len(data.splits['dev'])} dev, V = {data.input_dim}; budget {args.budget:g} s per run, "
          f"{args.threads} thread(s)", flush=True)  # fmt: skip
    rows = []
    order = sorted(args.settings, key=lambda s: s != "exact")  # the reference first
    for clusters in args.clusters:
        for seed in args.seeds:
            for setting in order:
                rows.append(run(setting, clusters, seed, data, args))
                print(json.dumps(rows[-1]), flush=True)
    if rows:
        print()
        print(table(rows))
        print(f"\n{ANCHORS}; target: M-1 ≥ 80 against XPOS with 45 clusters.")
        (args.out / "tagger_quality.json").write_text(json.dumps(rows, indent=1))
    if args.variance:
        points = variance_experiment(data, args, args.out)
        print(
            "\n| step | Var Gumbel-CRF | Var REINFORCE-LOO | log ratio |\n| --- | --- | --- | --- |"
        )
        for step, gumbel, loo in points:
            print(f"| {step} | {gumbel:.4g} | {loo:.4g} | {math.log(loo / gumbel):.2f} |")
        print(f"\nwrote {args.out / 'tagger_variance.png'}")


if __name__ == "__main__":
    main()
