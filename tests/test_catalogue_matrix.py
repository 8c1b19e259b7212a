"""The catalogue composes: every tagger and ListOps model file × every estimator group file.

A model file (``configs/<family>/<variant>.yaml``) carries one model with its own
estimator; ``--model.estimator configs/estimator/<x>.yaml`` swaps in any group
file. For each pair this suite builds the command with ``ZooCLI(..., run=False)``
on tiny synthetic data:

* where `zoo.estimators.compatibility.check_estimator` says the estimator
  applies to the structure the model builds, the model gets the group file's
  estimator with the file's settings, and everything else of the model file;
* where it does not, the command is refused with the compatibility rule's message.

A cross-section (the model file's own estimator and one sampled, one relaxed
and one exact estimator) trains two steps; ``-m slow`` trains every applicable
pair, and builds the named ListOps recipes (the dependency model trained
otherwise) with every file. ``LearnedBaseline`` (``reinforce-learned.yaml``) passes the check but
reads a fixed number of parts, and chains and trees vary with the input: the
first step refuses it, saying why.
"""

from __future__ import annotations

import copy
import importlib
import math
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml

from tests.models.cases import quiet_trainer_args
from zoo.cli import ConfigError, ZooCLI
from zoo.estimators import Estimator
from zoo.estimators.compatibility import IncompatibleEstimatorError, check_estimator, structure_of

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ESTIMATOR_FILES = sorted((CONFIGS / "estimator").rglob("*.yaml"))

TAGGER_DATA = [
    "--config", str(CONFIGS / "data" / "hmm-synthetic.yaml"), "--data.num_train=16",
    "--data.num_val=8", "--data.num_test=8", "--data.min_length=2", "--data.max_length=4",
    "--data.batch_size=8",
    "--model.num_tags=3", "--model.gold_tags=[states]", "--model.embedding_dim=8",
    "--model.hidden_size=8",
]  # fmt: skip
"""Sentences of a random 5-state HMM, 2 to 4 words (≤ 3^4 tag paths: `Exact` enumerates them)."""
LISTOPS_DATA = [
    "--data.num_train=16", "--data.num_val=8", "--data.min_length=4", "--data.max_length=5",
    "--data.batch_size=4",
    "--model.init_args.hidden_dim=8", "--model.init_args.embedding_dim=8",
]  # fmt: skip
"""Generated expressions of 4 or 5 symbols (≤ 5^4 trees: `Exact` enumerates them)."""
TINY = {"tagger": TAGGER_DATA, "listops": LISTOPS_DATA}
NO_WARMUP = {
    "tagger/hmm": ["--model.warmup_steps=0"],
    **{
        f"listops/{name}": ["--model.init_args.parser_warmup_steps=0"]
        for name in ("dependency", "nonprojective", "constituency", "dependency-ppo",
                     "dependency-ppo-curriculum")
    },
}  # fmt: skip
"""The model files that train q on another objective or not at all in a warm-up: for two
steps, the estimator trains q from the first one."""

NO_LATENT = {"tagger/hmm-marginal-likelihood", "listops/lstm", "listops/gold-tree",
             "listops/gold-tree-binary"}  # fmt: skip
"""Model files with nothing to estimate (q is the HMM's own posterior, or has one outcome)."""
MODEL_FILES = sorted(
    f"{family}/{p.stem}" for family in TINY for p in (CONFIGS / family).glob("*.yaml")
)
LATENT_FILES = [m for m in MODEL_FILES if m not in NO_LATENT]

OWN = []
SAMPLED = ["--model.estimator", str(CONFIGS / "estimator" / "reinforce-loo.yaml")]
RELAXED = {
    "tagger": [
        "--model.estimator", str(CONFIGS / "estimator" / "chain" / "gumbel-crf.yaml"),
        "--model.estimator.temperature=0.5",
    ],
    "listops": ["--model.estimator", str(CONFIGS / "estimator" / "gumbel.yaml")],
}  # fmt: skip
EXACT = ["--model.estimator=Exact"]  # by class name: no group file (small supports only)
CROSS_SECTION = {
    "tagger/hmm": [OWN, SAMPLED, RELAXED["tagger"]],  # its own: MarginalExpectation, exact
    "tagger/lstm": [OWN, SAMPLED, EXACT],  # its own: Gumbel-CRF, relaxed
    **{
        f"listops/{name}": [OWN, RELAXED["listops"], SAMPLED, EXACT]
        for name in ("dependency", "nonprojective", "constituency")  # own: REINFORCE, greedy
    },
    "listops/dependency-ppo": [OWN, RELAXED["listops"]],
    "listops/dependency-ppo-curriculum": [OWN],
    **{name: [OWN] for name in NO_LATENT},
}


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not the CLI's
    monkeypatch.chdir(tmp_path)


def estimator_class(path: Path) -> type[Estimator]:
    module, name = yaml.safe_load(path.read_text())["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def command(model_file: str, *extra: str) -> list[str]:
    family = model_file.split("/")[0]
    return ["--config", str(CONFIGS / f"{model_file}.yaml"), *TINY[family], *extra]


@cache
def built(model_file: str):
    """The model file's model, as the CLI builds it (with its own estimator)."""
    argv, sys.argv = sys.argv, ["train.py"]
    try:
        return ZooCLI(command(model_file), run=False).model
    finally:
        sys.argv = argv


def incompatibility(model_file: str, estimator_file: Path) -> str | None:
    """`check_estimator`'s message for this pair, None where the estimator applies."""
    model = built(model_file)
    try:
        check_estimator(
            estimator_class(estimator_file), structure_of(model), type(model), model.has_joint_nll()
        )
    except IncompatibleEstimatorError as error:
        return str(error)
    return None


def test_every_model_file_is_in_the_cross_section() -> None:
    assert set(CROSS_SECTION) == set(MODEL_FILES)
    assert {"tagger/hmm", "tagger/lstm", "listops/dependency", "listops/constituency"} <= set(
        LATENT_FILES
    )


def test_the_catalogue_refuses_some_pairs_and_takes_most() -> None:
    """The rules are not vacuous here: chains take Gumbel-CRF and trees refuse it, no
    model of these families takes ARM or VIMCO, every model takes ST Gumbel-Softmax."""
    folder = CONFIGS / "estimator"
    by_name = {p.relative_to(folder).with_suffix("").as_posix(): p for p in ESTIMATOR_FILES}
    gumbel_crf = by_name["chain/gumbel-crf"]
    assert incompatibility("tagger/hmm", gumbel_crf) is None
    assert "builds a DependencyCRF" in incompatibility("listops/dependency", gumbel_crf)
    assert "builds a TreeCRF" in incompatibility("listops/constituency", gumbel_crf)
    for model_file in LATENT_FILES:
        assert incompatibility(model_file, by_name["bernoulli/arm"]) is not None
        assert "no joint likelihood" in incompatibility(model_file, by_name["joint-nll/vimco"])
        assert incompatibility(model_file, by_name["st-gumbel"]) is None


def agrees(built: object, written: object) -> bool:
    """Whether every value ``written`` in a config is in ``built`` (which adds the defaults);
    class paths compare by class name (``zoo.estimators.X`` is built as ``zoo.estimators.y.X``)."""
    if isinstance(written, dict):
        return isinstance(built, dict) and all(
            agrees(built.get(key), value) for key, value in written.items()
        )
    if isinstance(written, str) and isinstance(built, str) and written.startswith("zoo."):
        return written.rsplit(".", 1)[1] == built.rsplit(".", 1)[1]
    return built == written


RECIPES = {"listops/dependency-ppo", "listops/dependency-ppo-curriculum"}
"""The named recipes: the model of ``listops/dependency`` trained otherwise; the default suite
builds them with their own estimator and a relaxed one (the cross-section), ``-m slow`` with all."""


@pytest.mark.parametrize("estimator_file", ESTIMATOR_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize(
    "model_file",
    [pytest.param(m, marks=pytest.mark.slow) if m in RECIPES else m for m in LATENT_FILES],
)
def test_every_model_file_takes_every_applicable_estimator_file(
    model_file: str, estimator_file: Path
) -> None:
    args = command(model_file, "--model.estimator", str(estimator_file))
    refused = incompatibility(model_file, estimator_file)
    if refused is not None:
        with pytest.raises(ConfigError) as error:
            ZooCLI(args, run=False)
        assert str(error.value) == refused
        return
    model = ZooCLI(args, run=False).model
    assert type(model) is type(built(model_file))
    assert type(model.estimator) is estimator_class(estimator_file)
    assert agrees(model.estimator.init_config(), yaml.safe_load(estimator_file.read_text()))
    own = dict(built(model_file).hparams)
    for key, value in model.hparams.items():  # the rest of the model file, unchanged
        if key != "estimator":
            assert value == own[key], key


def header(model_file: str) -> str:
    """The comment that opens a model file."""
    lines = (CONFIGS / f"{model_file}.yaml").read_text().splitlines()
    return "\n".join(
        line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))]
    )


def header_commands(model_file: str) -> list[list[str]]:
    """The ``train.py fit`` commands of a header (continuation lines joined), and each
    line of flags alone as flags on the model file's own fit command."""
    text = header(model_file).replace("\\\n#", " ")
    commands = []
    for line in text.splitlines():
        words = line.lstrip("# ").split()
        if words[:3] == ["python", "train.py", "fit"]:
            commands.append(words[3:])
        elif words and words[0].startswith("--model.estimator"):
            commands.append(["--config", f"configs/{model_file}.yaml", *words])
    return commands


@pytest.mark.parametrize("model_file", MODEL_FILES)
def test_every_header_shows_its_commands_and_how_to_swap_the_estimator(model_file: str) -> None:
    text = header(model_file)
    for command_line in (f"python train.py fit --config configs/{model_file}.yaml",
                         f"python train.py test --config configs/{model_file}.yaml --ckpt_path last"):  # fmt: skip
        assert command_line in text
    if model_file in NO_LATENT:
        assert "No estimator to swap" in text
    else:
        assert any("--model.estimator" in words for words in header_commands(model_file))


@pytest.mark.parametrize("model_file", MODEL_FILES)
def test_every_fit_command_of_a_header_builds_what_it_names(model_file: str, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the commands name configs/ from the repository's root
    family = model_file.split("/")[0]
    commands = header_commands(model_file)
    assert commands
    for words in commands:
        model = ZooCLI([*words, *TINY[family]], run=False).model
        flags = [w for w in words if w.startswith("--model.estimator") and "=" in w]
        if "--model.estimator" in words:  # a group file's settings, but for the flags after it
            written = yaml.safe_load(Path(words[words.index("--model.estimator") + 1]).read_text())
            for flag in flags:
                written.get("init_args", {}).pop(flag.split("=")[0].split(".")[-1], None)
            assert agrees(model.estimator.init_config(), written), words
        for word in flags:
            if word.startswith("--model.estimator="):
                assert type(model.estimator).__name__ == word.split("=")[1], words
            else:
                key, value = word.removeprefix("--model.estimator.").split("=")
                setting = getattr(model.estimator, key)
                if isinstance(setting, torch.nn.Module):  # a class given by name
                    setting = type(setting).__name__
                assert str(setting).lower() == value.lower(), words


DOCUMENTS = ["README.md", "configs/README.md", "docs/tagger.md", "docs/listops.md"]


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every ``train.py fit`` command of the documents that names a tagger or ListOps file."""
    found = []
    for document in DOCUMENTS:
        text = (ROOT / document).read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0].strip().strip("`")
            if line.startswith("python train.py fit") and any(
                f"configs/{family}/" in line for family in TINY
            ):
                found.append((document, line.split()[3:]))
    return found


@pytest.mark.parametrize(("document", "words"), documented_commands(), ids=" ".join)
def test_every_documented_command_builds(document: str, words: list[str], monkeypatch) -> None:
    """The commands of the README and the family pages name files and flags that exist (on
    tiny synthetic data, so the test needs no treebank)."""
    monkeypatch.chdir(ROOT)
    family = next(f for f in TINY if f"configs/{f}/" in " ".join(words))
    model = ZooCLI([*words, *TINY[family]], run=False).model
    for word in words:
        if word.startswith("--model.estimator.") and "=" in word:
            key, value = word.removeprefix("--model.estimator.").split("=")
            assert str(getattr(model.estimator, key)).lower() == value.lower()


def finite_where_defined(theta: torch.Tensor) -> bool:
    """θ may hold −∞ on parts that cannot occur (padding); nothing else is non-finite."""
    return bool(torch.isfinite(theta[theta != -math.inf]).all())


def train_two_steps(model_file: str, estimator_args: list[str]) -> None:
    two_steps = ["--trainer.max_steps=2", "--trainer.log_every_n_steps=1",
                 "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
                 "--trainer.logger=false"]  # fmt: skip
    no_warmup = NO_WARMUP.get(model_file, [])
    args = command(model_file, *estimator_args, *no_warmup, *two_steps, *quiet_trainer_args())
    cli = ZooCLI(args, run=False)
    initial = copy.deepcopy(cli.model)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 2
    loss = float(cli.trainer.callback_metrics["train/loss"])
    assert math.isfinite(loss)
    batch = next(iter(cli.datamodule.train_dataloader()))  # ≥ 2 tag paths or trees each
    with torch.no_grad():
        before = initial.eval().posterior(batch).log_potentials
        after = cli.model.eval().posterior(batch).log_potentials
    assert finite_where_defined(after)
    if model_file not in NO_LATENT:  # the estimator's gradient moved q
        assert not torch.equal(before, after)


def name(estimator_args: list[str]) -> str:
    """A test id: ``own``, a group file's stem, or the class named on the command line."""
    if not estimator_args:
        return "own"
    if estimator_args[0] == "--model.estimator":
        return Path(estimator_args[1]).stem
    return estimator_args[0].split("=")[1]


@pytest.mark.parametrize(
    ("model_file", "estimator_args"),
    [(m, e) for m, section in CROSS_SECTION.items() for e in section],
    ids=lambda v: v if isinstance(v, str) else name(v),
)
def test_a_cross_section_trains_two_steps(model_file: str, estimator_args: list[str]) -> None:
    train_two_steps(model_file, estimator_args)


@pytest.mark.slow
@pytest.mark.parametrize("estimator_file", ESTIMATOR_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("model_file", LATENT_FILES)
def test_every_applicable_pair_trains_two_steps(model_file: str, estimator_file: Path) -> None:
    refused = incompatibility(model_file, estimator_file) is not None
    if refused or estimator_file.stem == "reinforce-learned":
        pytest.skip("not applicable (the refusal is tested above)")
    train_two_steps(model_file, ["--model.estimator", str(estimator_file)])


@pytest.mark.parametrize("model_file", ["tagger/hmm", "listops/dependency"])
def test_a_learned_baseline_is_refused_at_the_first_step_with_why(model_file: str) -> None:
    learned = ["--model.estimator", str(CONFIGS / "estimator" / "reinforce-learned.yaml")]
    with pytest.raises(ValueError, match="vary in size with the input"):
        train_two_steps(model_file, learned)
