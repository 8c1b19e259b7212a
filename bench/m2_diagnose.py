"""What an M2 checkpoint's classifier and generative model say about the classes.

For each checkpoint, on the 10,000 validation images (and the 100 labelled training images):

* the accuracy of argmax q(y | x) (the classifier) on the validation images and on the
  labelled training images, and the mean entropy of q(y | x) in nats (log 10 = 2.30 is uniform);
* the accuracy of the generative model's own classification, argmin_y L(x, y) (the
  class-conditional negative ELBO, one z per image and class, the same noise for every class),
  and how often it agrees with the classifier;
* the spread of L(x, y) over the classes: the mean over images of max_y L − min_y L (nats).
  Where it is small, the decoder explains x about as well under every class and the
  unlabelled images teach the classifier little.

Run: python bench/m2_diagnose.py bench/results/logs/m2-st-gumbel/version_1/checkpoints/last.ckpt ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zoo.data.semi_supervised import SemiSupervisedMNISTDataModule  # noqa: E402
from zoo.models.m2 import M2  # noqa: E402


@torch.no_grad()
def diagnose(model: M2, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> dict[str, float]:
    """The numbers above for images ``x`` ``(N, D)`` with classes ``y`` ``(N,)``."""
    model.eval()
    k = model.num_classes
    rows = []
    for i in range(0, len(y), chunk):
        xb = x[i : i + chunk]
        logits = model.classifier(xb)
        q = torch.softmax(logits, -1)
        eye = torch.eye(k, dtype=xb.dtype)[:, None].expand(k, len(xb), k)
        torch.manual_seed(0)
        costs = model.neg_elbo_given_y(xb, eye).T  # (n, K): L(x, y) − log K
        rows.append((logits.argmax(-1), -(q * q.clamp_min(1e-30).log()).sum(-1), costs))
    pred, entropy, costs = (torch.cat(parts) for parts in zip(*rows, strict=True))
    generative = costs.argmin(-1)
    return {
        "classifier accuracy": float((pred == y).float().mean()),
        "entropy of q(y|x)": float(entropy.mean()),
        "argmin_y L(x,y) accuracy": float((generative == y).float().mean()),
        "agreement": float((generative == pred).float().mean()),
        "spread of L over y": float((costs.max(-1).values - costs.min(-1).values).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = SemiSupervisedMNISTDataModule(data_dir=args.data_dir)
    data.setup()
    val_x, val_y = data.val_set.images.to(torch.float32), data.val_set.labels
    labelled = data.train_set.labelled
    lab_x = torch.bernoulli(labelled.images.to(torch.float32) / 255.0)
    names = None
    for path in args.checkpoints:
        model = M2.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        val = diagnose(model, val_x, val_y)
        train = diagnose(model, lab_x, labelled.labels)
        if names is None:
            names = list(val)
            print("| checkpoint | labelled train accuracy | " + " | ".join(names) + " |")
            print("|---" * (len(names) + 2) + "|")
        cells = [f"{train['classifier accuracy']:.3f}"] + [f"{val[n]:.3f}" for n in names]
        print(f"| {path} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
