"""The ListOps catalogue: one config per structure × estimator plus the baselines; each builds and runs.

``configs/listops/<structure>-<estimator>.yaml`` with structure ``dependency``
(projective), ``nonprojective`` or ``constituency``, and ``lstm.yaml``,
``gold-tree.yaml``, ``gold-tree-binary.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from zoo.cli import ZooCLI
from zoo.data.listops import ListOpsDataModule, collate, generate
from zoo.estimators import (
    Exact,
    GreedyBaseline,
    GumbelSoftmax,
    LeaveOneOutBaseline,
    PerturbAndMAP,
    Reinforce,
    STGumbelSoftmax,
    StraightThrough,
)
from zoo.models.listops import (
    GoldTreeClassifier,
    LatentTreeClassifier,
    LSTMClassifier,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "listops"
PATHS = sorted(CONFIGS.glob("*.yaml"))
STRUCTURES = {
    "dependency": "projective",
    "nonprojective": "nonprojective",
    "constituency": "binary",
}
ESTIMATORS = {
    "sst": (GumbelSoftmax, None),
    "st-gumbel": (STGumbelSoftmax, None),
    "straight-through": (StraightThrough, None),
    "perturb-and-map": (PerturbAndMAP, None),
    "reinforce-greedy": (Reinforce, GreedyBaseline),
    "reinforce-loo": (Reinforce, LeaveOneOutBaseline),
}
RECIPES = {
    "dependency-ppo": (Reinforce, GreedyBaseline),
    "dependency-ppo-curriculum": (Reinforce, GreedyBaseline),
}
"""Configs beyond the structure × estimator grid: the recipe that learns trees (docs/listops.md)."""
BASELINES = {
    "lstm": LSTMClassifier,
    "gold-tree": GoldTreeClassifier,
    "gold-tree-binary": GoldTreeClassifier,
}
TINY = [
    "--data.num_train=16",
    "--data.num_val=8",
    "--data.max_length=10",
    "--data.batch_size=4",
    "--model.init_args.hidden_dim=8",
    "--model.init_args.embedding_dim=8",
    "--trainer.fast_dev_run=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])


def test_the_catalogue_is_complete() -> None:
    expected = {f"{s}-{e}" for s in STRUCTURES for e in ESTIMATORS} | set(BASELINES) | set(RECIPES)
    assert {p.stem for p in PATHS} == expected


def _split(stem: str) -> tuple[str, str]:
    structure, estimator = stem.split("-", 1)
    return structure, estimator


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_config_builds_what_its_name_says(path: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = ZooCLI(["--config", str(path)], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(data, ListOpsDataModule) and data.test_file is None
    assert model.input_dim == data.input_dim == 16  # linked from the data
    raw = yaml.safe_load(path.read_text())
    assert raw["seed_everything"] == 0 and not any(
        str(v).startswith("/") for v in raw["data"]["init_args"].values()
    )
    if path.stem in BASELINES:
        assert type(model) is BASELINES[path.stem] and isinstance(model.estimator, Exact)
        if path.stem.startswith("gold"):
            assert model.tree == ("binary" if path.stem.endswith("binary") else "dependency")
        return
    structure, estimator = _split(path.stem)
    assert type(model) is LatentTreeClassifier
    assert model.structure_name == STRUCTURES[structure]
    est, baseline = RECIPES[path.stem] if path.stem in RECIPES else ESTIMATORS[estimator]
    assert type(model.estimator) is est
    if baseline is not None:
        assert type(model.estimator.baseline) is baseline


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_config_runs_fast_dev_run_on_tiny_generated_data(
    path: Path, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    test = tmp_path / "test.tsv"
    test.write_text(
        "1\t( ( ( [SM 6 ) 5 ) ] )\n7\t7\n2\t( ( ( [MAX 1 ) ( ( ( [MIN 9 ) 2 ) ] ) ) ] )\n"
    )
    cli = ZooCLI(["fit", "--config", str(path), f"--data.test_file={test}", *TINY])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/loss"]) > 0
    assert 0.0 <= float(metrics["val/accuracy"]) <= 1.0
    tester = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (tested,) = tester.test(cli.model, cli.datamodule, verbose=False)
    assert 0.0 <= tested["test/accuracy"] <= 1.0


def test_a_variant_is_flags_on_one_config(tmp_path, monkeypatch) -> None:
    """Structure, roots and composer are arguments: a non-projective multi-root variant with
    a narrower composer is the recipe's config plus three flags, and the checkpoint keeps them."""
    monkeypatch.chdir(tmp_path)
    cli = ZooCLI(
        [
            "--config",
            str(CONFIGS / "dependency-ppo.yaml"),
            "--model.init_args.structure=nonprojective",
            "--model.init_args.multiroot=true",
            "--model.init_args.composer=DependencyComposer",
            "--model.init_args.composer.init_args.hidden_dim=32",
        ],
        run=False,
    )
    model = cli.model
    assert type(model) is LatentTreeClassifier
    assert model.structure_name == "nonprojective" and model.multiroot
    assert model.composer.node[0].out_features == 32
    assert model.hparams["composer"]["init_args"]["hidden_dim"] == 32
    q = model.posterior(collate(generate(3, seed=0, min_length=4, max_length=8)))
    assert q.multiroot
