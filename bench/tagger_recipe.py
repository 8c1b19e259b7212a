r"""The tagger's training recipe, measured: KL and H(q) per token and dev M-1 along training.

Each run is a `NeuralHMMTagger` with one estimator and one recipe (warm-up steps,
what trains the HMM after it, a pull of q toward the HMM's posterior, τ),
trained through Lightning for ``--steps`` steps (or ``--budget`` seconds) on one
thread; every ``--eval-every`` steps the dev split is scored: M-1 of q's Viterbi
tags against the gold tags (XPOS with 45 clusters on EWT, the true states on
the synthetic HMM), KL(q ‖ p(z)) and H(q) per token, and −log p(x) per token.

A run is ``estimator[:key=value,...]`` with keys ``warmup`` (steps),
``gen`` (elbo | marginal | both), ``pkl`` (posterior_kl_weight), ``tau``,
``post`` (distill | frozen), ``S`` (REINFORCE samples), ``feat`` (emission_features
buckets), ``char`` (1: char_emission)::

    OMP_NUM_THREADS=1 python bench/tagger_recipe.py --data synthetic --steps 600 \
        gumbel-crf gumbel-crf:warmup=200,gen=marginal,tau=0.5 reinforce-loo:warmup=200,gen=marginal
    OMP_NUM_THREADS=1 python bench/tagger_recipe.py --data ewt --budget 300 --eval-every 250 \
        gumbel-crf:warmup=1000,gen=marginal,tau=0.5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.data.hmm import SyntheticHMMDataModule
from zoo.data.ud import UDTaggingDataModule
from zoo.estimators import (
    GumbelCRF,
    LeaveOneOutBaseline,
    MarginalExpectation,
    Reinforce,
    StraightThrough,
)
from zoo.metrics.clustering import many_to_one
from zoo.models.tagger import (
    HMMPosterior,
    NeuralHMMTagger,
    chain_tags,
)


def estimator(name: str, opts: dict):
    tau = float(opts.get("tau", 1.0))
    samples = int(opts.get("S", 4))
    return {
        "exact": MarginalExpectation,
        "gumbel-crf": lambda: GumbelCRF(temperature=tau),
        "st-gumbel-crf": lambda: GumbelCRF(temperature=tau, straight_through=True),
        "straight-through": StraightThrough,
        "reinforce-loo": lambda: Reinforce(samples, LeaveOneOutBaseline()),
    }[name]()


def parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    opts = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, opts


def build(spec: str, clusters: int, vocab: int, gold: str, args) -> L.LightningModule:
    name, opts = parse(spec)
    sizes = {"num_tags": clusters, "input_dim": vocab, "embedding_dim": args.dim,
             "hidden_size": args.dim, "lr": args.lr,
             "gold_tags": (gold,)}  # fmt: skip
    sizes["emission_features"] = int(opts.get("feat", 0))
    sizes["char_emission"] = bool(int(opts.get("char", 0)))
    if name == "marginal-likelihood":
        return NeuralHMMTagger(MarginalExpectation(), HMMPosterior(), **sizes)
    return NeuralHMMTagger(
        estimator(name, opts),
        warmup_steps=int(opts.get("warmup", 0)),
        warmup_posterior=opts.get("post", "distill"),
        generative_objective=opts.get("gen", "elbo"),
        posterior_kl_weight=float(opts.get("pkl", 0.0)),
        **sizes,
    )


@torch.no_grad()
def evaluate(model, loader, gold: str, clusters: int) -> dict:
    was = model.training
    model.eval()
    confusion = torch.zeros(clusters, 64)
    kl = entropy = nll = tokens = 0.0
    for batch in loader:
        q = model.posterior(batch)
        mask = model.mask(batch)
        tags = chain_tags(q.argmax()).argmax(-1)[mask]
        confusion.index_put_((tags, batch[gold][mask]), torch.ones(len(tags)), accumulate=True)
        kl += float(model.regularizer(q, batch).sum())
        entropy += float(q.entropy().sum())
        nll -= float(model.log_likelihood(q, batch, 0).sum())
        tokens += int(batch["lengths"].sum())
    model.train(was)
    used = int((confusion.sum(1) > 0).sum())
    return {"m1": 100 * float(many_to_one(confusion)), "kl_token": kl / tokens,
            "entropy_token": entropy / tokens, "nll_token": nll / tokens, "clusters_used": used}  # fmt: skip


class Probe(L.Callback):
    def __init__(self, loader, every: int, gold: str, clusters: int) -> None:
        self.loader, self.every, self.gold, self.clusters = loader, every, gold, clusters
        self.points: list[dict] = []
        self.start = time.perf_counter()
        self.paused = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0:
            t0 = time.perf_counter()
            point = {"step": step, "train_s": round(t0 - self.start - self.paused, 1)}
            point.update(evaluate(pl_module, self.loader, self.gold, self.clusters))
            self.points.append(point)
            print("  " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                     for k, v in point.items()}), flush=True)  # fmt: skip
            self.paused += time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", choices=["synthetic", "ewt"], default="synthetic")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--budget", type=float, default=None, help="training seconds per run")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument(
        "--dim", type=int, default=None, help="width (default 64 synthetic, 128 EWT)"
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dev-limit", type=int, default=800, help="dev sentences scored along the way"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.data == "synthetic":
        data = SyntheticHMMDataModule(num_states=5, vocab_size=50, max_length=12, num_train=2000,
                                      num_val=200, batch_size=32, seed=0)  # fmt: skip
        clusters, gold, args.dim = 5, "states", args.dim or 64
        data.setup("fit")
        print(f"synthetic HMM, oracle dev M-1 {100 * data.oracle_scores('dev')['m1']:.1f}")
    else:
        data = UDTaggingDataModule(max_train_length=40, batch_size=32,
                                   data_dir=os.environ.get("ZOO_DATA_DIR"))  # fmt: skip
        clusters, gold, args.dim = 45, "xpos", args.dim or 128
        data.setup("fit")
    dev = list(data.val_dataloader())
    dev = dev if args.data == "synthetic" else dev[:: max(1, len(dev) // (args.dev_limit // 32))]
    results = {}
    for spec in args.runs:
        print(spec, flush=True)
        L.seed_everything(args.seed, verbose=False)
        model = build(spec, clusters, data.input_dim, gold, args)
        probe = Probe(dev, args.eval_every, gold, clusters)
        trainer = L.Trainer(
            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=5.0,
            max_steps=args.steps if args.budget is None else -1, max_epochs=-1,
            max_time=None if args.budget is None else timedelta(seconds=args.budget),
            limit_val_batches=0, num_sanity_val_steps=0, callbacks=[probe],
        )  # fmt: skip
        trainer.fit(model, data)
        final = {"step": trainer.global_step, "train_s": round(time.perf_counter() - probe.start
                 - probe.paused, 1)}  # fmt: skip
        final.update(evaluate(model, dev, gold, clusters))
        probe.points.append(final)
        print("  final " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                       for k, v in final.items()}), flush=True)  # fmt: skip
        results[spec] = probe.points
    print(
        "\n| run | steps | train s | M-1 | KL/token | H(q)/token | -log p(x)/token | clusters used |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for spec, points in results.items():
        p = points[-1]
        print(f"| {spec} | {p['step']} | {p['train_s']:.0f} | {p['m1']:.1f} | {p['kl_token']:.3f} "
              f"| {p['entropy_token']:.3f} | {p['nll_token']:.3f} | {p['clusters_used']} |")  # fmt: skip


if __name__ == "__main__":
    main()
