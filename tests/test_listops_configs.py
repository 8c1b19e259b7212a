"""The ListOps catalogue: one model file per structure and baseline, plus the named recipes.

``configs/listops/<structure>.yaml`` with structure ``dependency`` (projective),
``nonprojective`` or ``constituency`` (REINFORCE with the greedy baseline, as
Havrylov et al.); the baselines ``lstm.yaml``, ``gold-tree.yaml``,
``gold-tree-binary.yaml``; the recipe that learns trees, ``dependency-ppo.yaml``,
and its length curriculum. The estimators come from ``configs/estimator/``
(tests/test_catalogue_matrix.py runs every pair). Each file runs
``fast_dev_run`` and a test on tiny generated data.
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
    LeaveOneOutBaseline,
    PerturbAndMAP,
    Reinforce,
)
from zoo.models.listops import (
    GoldTreeClassifier,
    LatentTreeClassifier,
    LSTMClassifier,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "listops"
ESTIMATORS = ROOT / "configs" / "estimator"
PATHS = sorted(CONFIGS.glob("*.yaml"))
STRUCTURES = {
    "dependency": "projective",
    "nonprojective": "nonprojective",
    "constituency": "binary",
}
RECIPES = {"dependency-ppo": "projective", "dependency-ppo-curriculum": "projective"}
"""Named recipes: the dependency model trained as docs/listops.md describes."""
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
def no_pytest_argv(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(tmp_path)


def test_the_catalogue_is_one_file_per_variant() -> None:
    assert {p.stem for p in PATHS} == set(STRUCTURES) | set(BASELINES) | set(RECIPES)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_model_file_builds_what_it_says(path: Path) -> None:
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
    assert type(model) is LatentTreeClassifier
    assert model.structure_name == {**STRUCTURES, **RECIPES}[path.stem]
    # REINFORCE with the greedy self-critical baseline, advantages scaled (Havrylov et al.)
    assert type(model.estimator) is Reinforce
    assert type(model.estimator.baseline) is GreedyBaseline
    assert model.estimator.normalize_advantages
    assert model.estimator.policy_updates == (2 if path.stem in RECIPES else 1)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_the_family_flags_give_its_estimators(structure: str) -> None:
    """REINFORCE-LOO with the advantage scaling, and implicit MLE: a group file and one flag."""
    config = ["--config", str(CONFIGS / f"{structure}.yaml")]
    loo = ["--model.estimator", str(ESTIMATORS / "reinforce-loo.yaml"),
           "--model.estimator.normalize_advantages=true"]  # fmt: skip
    estimator = ZooCLI([*config, *loo], run=False).model.estimator
    assert type(estimator) is Reinforce and type(estimator.baseline) is LeaveOneOutBaseline
    assert estimator.num_samples == 4 and estimator.normalize_advantages
    imle = ["--model.estimator", str(ESTIMATORS / "perturb-and-map.yaml"),
            "--model.estimator.gradient=imle"]  # fmt: skip
    estimator = ZooCLI([*config, *imle], run=False).model.estimator
    assert type(estimator) is PerturbAndMAP
    assert (estimator.gradient, estimator.imle_lambda) == ("imle", 10.0)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_model_file_runs_fast_dev_run_on_tiny_generated_data(path: Path, tmp_path) -> None:
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


def test_a_variant_is_flags_on_one_config() -> None:
    """Structure, roots and composer are arguments: a non-projective multi-root variant with
    a narrower composer is the recipe's config plus three flags, and the checkpoint keeps them."""
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
