"""The examples of ``docs/new-model.md`` run: the YAML variant builds, the one-file family trains."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

from zoo.cli import ZooCLI
from zoo.models import VAE, ChainLatent

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "new-model.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.DOTALL)


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(tmp_path)


def test_the_variant_is_a_config(tmp_path) -> None:
    (config,) = blocks("yaml")
    path = tmp_path / "my-chain-vae.yaml"
    path.write_text(config)
    model = ZooCLI(["--config", str(path)], run=False).model
    assert type(model) is VAE and type(model.latent) is ChainLatent
    assert (model.latent.num_variables, model.latent.num_states) == (8, 5)
    # The command-line form of the same change.
    chain = str(ROOT / "configs" / "vae" / "chain.yaml")
    flag = "--model.latent.init_args.num_states=5"
    assert ZooCLI(["--config", chain, flag], run=False).model.latent.num_states == 5


def test_the_new_family_is_one_file_and_trains(capsys) -> None:
    family, usage = blocks("python")
    namespace: dict = {"__name__": "new_model_doc"}
    exec(compile(family, "docs/new-model.md", "exec"), namespace)
    exec(compile(usage, "docs/new-model.md", "exec"), namespace)
    neg_elbo = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(neg_elbo) and 0 < neg_elbo < 16 * math.log(2) + math.log(3) + 1
    code = [line for line in family.splitlines() if line.strip() and not line.startswith("#")]
    assert len(code) < 40
