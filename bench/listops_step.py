"""What one ListOps latent-tree training step costs: binary (constituency) trees against dependency trees.

A step is the forward and backward pass of the model's loss, ``model(batch).mean().backward()``
(the parser, the structure's sampling, the estimator, the composer), on a batch of 64
generated expressions of ``N − 5`` to ``N`` symbols (`zoo.data.listops.generate`; one
admissible draw per seed where a single call finds too few), one thread. Rows:

* dependency trees (``structure="projective"``, `DependencyComposer`) and binary trees
  (``structure="binary"``, `BinaryComposer`), each with REINFORCE (2 samples, the greedy
  self-critical baseline: the composer sees hard trees without gradient) and
  straight-through Gumbel-Softmax (hard trees whose gradient reaches every span
  indicator, so the composer runs its full chart);
* ``--compare-reference``: binary trees again with the composer's CKY evaluation as it
  was before its hard-tree path and chart (`reference_forward`, kept here), at the sizes
  of ``--reference-sizes`` (about 100 s a step at N = 100 on one thread).

Each row gives its ratio to the dependency row of the same estimator and N (the target:
binary REINFORCE within 2x of dependency REINFORCE at N = 100), and reference rows their
ratio to the current binary row. Timing is `bench.common.measure`: candidates of one N
interleaved, the median of the samples (``*``: taken while other processes were busy).

Run: python bench/listops_step.py                        # N = 30, 60, 100
     python bench/listops_step.py --compare-reference    # plus the old composer at N = 30, 60
     python bench/listops_step.py --sizes 30 --compare-reference --reference-sizes 30
     python bench/listops_step.py --test-half dependency binary   # testing the whole half
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import format_ms, measure  # noqa: E402
from zoo.data.listops import collate, generate  # noqa: E402
from zoo.estimators import Estimator, GreedyBaseline, Reinforce, STGumbelSoftmax  # noqa: E402
from zoo.models.listops import NUM_CLASSES, multiset_features  # noqa: E402

BATCH = 64
ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "REINFORCE-greedy": lambda: Reinforce(2, baseline=GreedyBaseline()),
    "ST-Gumbel": lambda: STGumbelSoftmax(),
}


def build_model(estimator: Estimator, structure: str) -> torch.nn.Module:
    """The classifier of one row: ``structure`` is ``"dependency"`` or ``"binary"``."""
    from zoo.models.listops import LatentTreeClassifier

    return LatentTreeClassifier(
        estimator, structure="projective" if structure == "dependency" else "binary"
    )


# ----------------------------------------------------- the composer as it was
def reference_forward(self: torch.nn.Module, x: Tensor, z: Tensor, lengths: Tensor) -> Tensor:
    """`BinaryComposer.forward` before the hard-tree path: the chart re-concatenated per width."""
    n = x.shape[-1]
    chunk = max(1, self.max_cells // (n * n))
    if torch.is_grad_enabled() or x.shape[0] <= chunk:
        return _reference_compose(self, x, z, lengths)
    return torch.cat(
        [
            _reference_compose(self, x[i : i + chunk], z[i : i + chunk], lengths[i : i + chunk])
            for i in range(0, x.shape[0], chunk)
        ]
    )


def _reference_state(self: torch.nn.Module, h: Tensor, counts: Tensor) -> Tensor:
    values = self.value(h).softmax(-1)[..., :NUM_CLASSES]
    return torch.cat([h, counts, values], -1)


def _reference_compose(self: torch.nn.Module, x: Tensor, z: Tensor, lengths: Tensor) -> Tensor:
    d, n = self.hidden_dim, x.shape[-1]
    h = self.leaf(self.embedding(x))  # (B, N, d)
    state = _reference_state(self, h, h.new_zeros(*x.shape, NUM_CLASSES))  # (B, N, d + 20)
    literal = self.literals[x][..., :NUM_CLASSES]  # a digit's value is the digit
    is_digit = literal.sum(-1, keepdim=True)
    values = is_digit * literal + (1 - is_digit) * state[..., d + NUM_CLASSES :]
    state = torch.cat([state[..., : d + NUM_CLASSES], values], -1)
    starts = ends = state.unsqueeze(2)
    root = [state[:, 0]]  # the span (0, w - 1) for every width w
    index = torch.arange(n, device=x.device)
    for w in range(2, n + 1):
        m = n - w + 1
        left, right = starts[:, :m], ends[:, 1:]  # (B, m, w-1, ·)
        i = index[:m, None]
        a = index[None, 1:w]  # left widths 1..w-1
        weight = z[:, i, i + a - 1] * z[:, i + a, i + w - 1]  # (B, m, w-1)
        weight = weight / (weight.sum(-1, keepdim=True) + 1e-6)
        counts = torch.einsum("bmk,bmkf->bmf", weight, left[..., d : d + NUM_CLASSES]) + (
            torch.einsum("bmk,bmkf->bmf", weight, right[..., d + NUM_CLASSES :])
        )
        h_left = torch.einsum("bmk,bmkf->bmf", weight, left[..., :d])
        h_right = torch.einsum("bmk,bmkf->bmf", weight, right[..., :d])
        h = self.combine(torch.cat([h_left, h_right, multiset_features(counts)], -1))
        span = _reference_state(self, h, counts)  # (B, m, d + 20)
        starts = torch.cat([left, span.unsqueeze(2)], 2)
        ends = torch.cat([span.unsqueeze(2), right], 2)
        root.append(span[:, 0])
    top = torch.stack(root, 1)[torch.arange(x.shape[0], device=x.device), lengths - 1]
    return self.value(top[:, :d])[:, :NUM_CLASSES].log_softmax(-1)


# ------------------------------------------------------------------ the rows
def make_batch(n: int, size: int = BATCH) -> dict[str, Tensor]:
    """``size`` generated expressions of ``n − 5`` to ``n`` symbols."""
    low = max(1, n - 5)
    try:
        examples = generate(size, seed=n, min_length=low, max_length=n)
    except ValueError:  # long expressions are rare draws: one per seed
        examples = [
            generate(1, seed=1000 * n + s, min_length=low, max_length=n)[0] for s in range(size)
        ]
    return collate(examples)


def step_fn(structure: str, estimator: str, batch: dict[str, Tensor], reference: bool = False):
    """A zero-argument training step (forward and backward) of a fresh, seeded model."""
    torch.manual_seed(0)
    model = build_model(ESTIMATORS[estimator](), structure)
    if reference:
        model.composer.forward = types.MethodType(reference_forward, model.composer)
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(batch).mean().backward()

    return step


def test_half(structures: list[str]) -> None:
    """Seconds to test an (untrained) model on the whole 5,000-line development half, one thread.

    `Trainer.test` as ``train.py test`` runs it (length-sorted batches of 64 under
    ``max_eval_cubed``), with the slowest batch.
    """
    import logging
    import warnings

    import lightning as L

    from zoo.data.listops import ListOpsDataModule

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    class Slowest(L.Callback):
        def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            self.start = time.perf_counter()

        def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            elapsed = time.perf_counter() - self.start
            if elapsed > self.worst[0]:
                self.worst = (elapsed, int(batch["x"].shape[0]), int(batch["lengths"].max()))

    print(
        "\n| model | test of the 5,000-line half, s | slowest batch, s (size, longest) | accuracy |"
    )
    print("|---|---|---|---|")
    for structure in structures:
        torch.manual_seed(0)
        model = build_model(Reinforce(2, baseline=GreedyBaseline()), structure)
        slowest = Slowest()
        slowest.worst = (0.0, 0, 0)
        trainer = L.Trainer(
            logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[slowest]
        )
        data = ListOpsDataModule(num_train=0, num_val=0)
        start = time.perf_counter()
        (tested,) = trainer.test(model, data, verbose=False)
        seconds, (worst, size, longest) = time.perf_counter() - start, slowest.worst
        print(
            f"| {structure} | {seconds:.0f} | {worst:.1f} ({size}, {longest}) | "
            f"{100 * tested['test/accuracy']:.1f} % |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 60, 100])
    parser.add_argument(
        "--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS)
    )
    parser.add_argument(
        "--compare-reference", action="store_true", help="also time the old composer"
    )
    parser.add_argument("--reference-sizes", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="samples per row (at most)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of samples per row")
    parser.add_argument(
        "--test-half", nargs="*", choices=["dependency", "binary"], default=None,
        help="instead: time testing on the whole development half (default: dependency)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.test_half is not None:
        test_half(args.test_half or ["dependency"])
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {BATCH}\n")
    print("| N | tree | estimator | ms per step [min–max] | × dependency | × binary |")
    print("|---|---|---|---|---|---|")
    start = time.perf_counter()
    for n in args.sizes:
        batch = make_batch(n)
        lengths = batch["lengths"]
        candidates = {}
        for estimator in args.estimators:
            candidates["dependency", estimator] = step_fn("dependency", estimator, batch)
            candidates["binary", estimator] = step_fn("binary", estimator, batch)
            if args.compare_reference and n in args.reference_sizes:
                candidates["binary, old CKY", estimator] = step_fn(
                    "binary", estimator, batch, reference=True
                )
        timings = measure(
            candidates, repeats=args.repeats, min_time=0.0, budget=args.budget, quiet_wait=0.5
        )
        for (tree, estimator), timing in timings.items():
            dependency = timings["dependency", estimator].median
            versus = f"{timing.median / dependency:.2f}"
            binary = timings["binary", estimator].median
            new = f"{timing.median / binary:.1f}" if tree == "binary, old CKY" else ""
            print(
                f"| {n} ({int(lengths.min())}–{int(lengths.max())}) | {tree} | {estimator} "
                f"| {timing} | {versus} | {new} |",
                flush=True,
            )
    print(f"\n{format_ms(time.perf_counter() - start)} ms in all")


if __name__ == "__main__":
    main()
