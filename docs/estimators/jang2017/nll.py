"""The importance-sampled test −log p(x) (``test/nll_iw``) of the finished runs of run.sh.

run.sh turns ``nll_iw`` off for time, and ``train.py test --ckpt_path`` takes
the model's arguments from the checkpoint (LightningCLI's rule), so a
``--model.num_importance_samples`` given there is not used. This script loads
each run's final checkpoint with m samples and tests it on the 10,000 test
images. It is the one metric that ranks a VIMCO run (trained for the
5-sample bound) against the ELBO-trained ones. Finished runs keep their value
in ``nll_iw_<m>.json`` next to the checkpoint and are not tested again.

    python docs/estimators/jang2017/nll.py lightning_logs/compare/jang2017-vae-5000 --samples 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import yaml

import zoo.models  # noqa: F401  (the classes a checkpoint may name)
from zoo.config import from_config


def test_nll(run: Path, samples: int) -> float:
    """``test/nll_iw`` of ``run``'s last checkpoint with ``samples`` importance samples."""
    cached = run / f"nll_iw_{samples}.json"
    if cached.exists():
        return json.loads(cached.read_text())["test/nll_iw"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    # The checkpoint names its class (LightningCLI's _class_path); m replaces its own.
    model = L.LightningModule.load_from_checkpoint(
        run / "checkpoints" / "last.ckpt", map_location="cpu", num_importance_samples=samples
    )
    data = from_config(config["data"], L.LightningDataModule)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    torch.manual_seed(0)  # the same importance samples on every call
    (metrics,) = trainer.test(model, datamodule=data, verbose=False)
    value = float(metrics["test/nll_iw"])
    cached.write_text(json.dumps({"test/nll_iw": value, "samples": samples}) + "\n")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the --out folder of a zoo.lab.compare run")
    parser.add_argument("--samples", type=int, default=100, help="m, importance samples")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = sorted(p for p in (args.out / "runs").iterdir() if p.is_dir())
    rows = []
    for setting in settings:
        values = []
        for run in sorted(setting.glob("seed_*")):
            if not (run / "done.json").exists():
                continue
            start = time.perf_counter()
            values.append(test_nll(run, args.samples))
            print(
                f"{setting.name} {run.name}: {values[-1]:.2f} ({time.perf_counter() - start:.0f} s)"
            )
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(
                f"| {setting.name} | {len(values)} | {statistics.mean(values):.1f} ± {spread:.1f} |"
            )
    table = "\n".join(
        [f"| setting | seeds | test/nll_iw (m = {args.samples}) |", "| --- | --- | --- |", *rows]
    )
    (args.out / f"nll_iw_{args.samples}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
