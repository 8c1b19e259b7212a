"""The examples of ``docs/new-model.md`` run: the YAML variant builds, the one-file family trains."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import EWT_FILES, SHARED_DATA_FILES, find_data_dir
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
    (config,) = blocks("yaml")  # the first, plain yaml block
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


VARIANTS = re.findall(r"```yaml variant (\S+)\n(.*?)```", DOC, flags=re.DOTALL)
PARTS = {  # what each overlay changes, as the built model shows it
    "sbn/bernoulli": lambda m: type(m.latent).__name__ == "ChainLatent" and m.latent.num_states == 5,
    "tagger/hmm": lambda m: type(m.encoder).__name__ == "ConvEncoder" and m.encoder.num_layers == 3,
    "listops/dependency": lambda m: m.structure_name == "nonprojective" and m.multiroot,
    "m2/m2": lambda m: m.latent_dim == 10 and type(m.estimator).__name__ == "Reinforce",
}


def test_there_is_a_yaml_variant_of_every_family() -> None:
    assert sorted(name for name, _ in VARIANTS) == sorted(PARTS)


@pytest.mark.parametrize(("base", "overlay"), VARIANTS, ids=[name for name, _ in VARIANTS])
def test_each_yaml_variant_builds_what_the_doc_says(
    base: str, overlay: str, tmp_path, monkeypatch
) -> None:
    path = tmp_path / "variant.yaml"
    path.write_text(overlay)
    model_file = ROOT / "configs" / f"{base}.yaml"
    if base.startswith(("tagger", "m2")):  # their datamodules read the data when built
        data = find_data_dir(EWT_FILES if base.startswith("tagger") else SHARED_DATA_FILES)
        if data is None:
            pytest.skip(f"{base} reads its data when built; none under $ZOO_DATA_DIR or data/")
        monkeypatch.setenv("ZOO_DATA_DIR", str(data))
    model = ZooCLI(["--config", str(model_file), "--config", str(path)], run=False).model
    assert PARTS[base](model)
    lines = [line for line in overlay.splitlines() if line.strip()]
    stated = re.search(rf"\((\d+) lines, over `configs/{re.escape(base)}.yaml`\)", DOC)
    assert stated and int(stated.group(1)) == len(lines)
