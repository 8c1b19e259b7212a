r"""Milliseconds per tagger training step, with and without one shared forward-backward.

One step is what training does: the posterior, the estimator, the KL, backward,
gradient clipping and Adam, on real EWT batches (batch 32, ≤ 40 words). Each
setting runs twice in one process, in alternating blocks: ``shared`` (the
tagger's posterior memoizes log Z, marginals and entropy, `Structure.cached`,
so one forward-backward serves the estimator and the KL, and the KL's prior
term is summed from the pair marginals) and ``separate`` (no memoization: every
query runs its own pass, and the KL builds the prior's chain potentials in full,
the behaviour before; `chain_potentials`, rewritten with fewer full-size
operations, is the new one in both). The table
gives the fastest block (the least disturbed by other processes) of the mean step time, and the ratio.

    OMP_NUM_THREADS=1 python bench/tagger_step.py
    OMP_NUM_THREADS=1 python bench/tagger_step.py --settings exact gumbel-crf --steps 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.data.ud import UDTaggingDataModule
from zoo.estimators import GumbelCRF, LeaveOneOutBaseline, MarginalExpectation, Reinforce
from zoo.models.tagger import HMMPosterior, NeuralHMMTagger

SETTINGS = {
    "marginal-likelihood": None,
    "exact": MarginalExpectation,
    "gumbel-crf": lambda: GumbelCRF(temperature=1.0),
    "reinforce-loo": lambda: Reinforce(4, LeaveOneOutBaseline()),
}


def build(setting: str, vocab: int, dim: int) -> L.LightningModule:
    sizes = {"num_tags": 45, "input_dim": vocab, "embedding_dim": dim, "hidden_size": dim,
             "gold_tags": ()}  # fmt: skip
    if setting == "marginal-likelihood":
        return NeuralHMMTagger(MarginalExpectation(), HMMPosterior(), **sizes)
    return NeuralHMMTagger(SETTINGS[setting](), **sizes)


def block(model, optimizer, batches) -> float:
    """Mean seconds per step over ``batches``."""
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = model(batch).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks per mode")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = UDTaggingDataModule(max_train_length=40, batch_size=args.batch_size,
                               data_dir=os.environ.get("ZOO_DATA_DIR"))  # fmt: skip
    data.setup("fit")
    L.seed_everything(0, verbose=False)
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(args.steps)]
    tokens = sum(int(b["lengths"].sum()) for b in batches) / len(batches)
    print(f"EWT batches of {args.batch_size} (≤ 40 words, {tokens:.0f} tokens per batch on "
          f"average), {args.threads} thread(s), {args.steps} steps × {args.blocks} blocks per mode")  # fmt: skip
    rows = []
    for setting in args.settings:
        L.seed_everything(0, verbose=False)
        model = build(setting, data.input_dim, args.dim)
        model.train()
        optimizer = model.configure_optimizers()  # fused Adam, as in training
        times: dict[bool, list[float]] = {True: [], False: []}
        for shared in (True, False):  # warm-up of both paths
            model.share_inference = shared
            block(model, optimizer, batches[:2])
        for _ in range(args.blocks):
            for shared in (False, True):
                model.share_inference = shared
                times[shared].append(block(model, optimizer, batches))
        before = 1000 * min(times[False])
        after = 1000 * min(times[True])
        rows.append((setting, before, after))
        print(f"{setting}: separate {before:.0f} ms, shared {after:.0f} ms", flush=True)
    print("\n| setting | ms/step separate passes (before) | ms/step one pass (after) | speed-up |")
    print("| --- | --- | --- | --- |")
    for setting, before, after in rows:
        print(f"| {setting} | {before:.0f} | {after:.0f} | {before / after:.2f}× |")


if __name__ == "__main__":
    main()
