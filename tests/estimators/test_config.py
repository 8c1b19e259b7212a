"""Estimators and baselines as ``class_path`` / ``init_args`` configs, and back."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT
from tests.models.cases import ESTIMATORS
from zoo.estimators import (
    ARM,
    VIMCO,
    Baseline,
    DisARM,
    Estimator,
    Exact,
    GumbelCRF,
    GumbelRao,
    GumbelSoftmax,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    Reinforce,
    UnorderedSetReinforce,
    as_estimator,
    from_config,
)
from zoo.structures import Bernoulli, Categorical, LinearChainCRF, Structure

PARTS = 6


@pytest.mark.parametrize("name", [*ESTIMATORS, "exact"])
def test_every_estimator_rebuilds_from_its_config(name: str) -> None:
    estimator = Exact() if name == "exact" else ESTIMATORS[name](PARTS)
    config = estimator.init_config()
    assert config is not None
    # Plain values only: what torch.load(weights_only=True) and YAML both take.
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    rebuilt = from_config(config, Estimator)
    assert type(rebuilt) is type(estimator)
    assert rebuilt.init_config() == config
    assert repr(rebuilt) == repr(estimator)
    assert rebuilt.state_dict().keys() == estimator.state_dict().keys()


def test_config_holds_every_argument_nested_baselines_included() -> None:
    config = Reinforce(4, baseline=MovingAverageBaseline(0.5)).init_config()
    assert config == {
        "class_path": "zoo.estimators.reinforce.Reinforce",
        "init_args": {
            "num_samples": 4,
            "baseline": {
                "class_path": "zoo.estimators.baselines.MovingAverageBaseline",
                "init_args": {"decay": 0.5},
            },
            "normalize_advantages": False,
            "normalization_decay": 0.9,
            "policy_updates": 1,
            "clip_ratio": 0.2,
        },
    }


GROUP_DIR = REPO_ROOT / "configs" / "estimator"
GROUP_FILES = sorted(GROUP_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: str(p.relative_to(GROUP_DIR)))
def test_the_estimator_group_files_are_such_configs(path) -> None:
    config = yaml.safe_load(path.read_text())
    estimator = from_config(config, Estimator)
    assert (
        estimator.init_config()["init_args"].items()
        >= {k: v for k, v in config["init_args"].items() if not isinstance(v, dict)}.items()
    )


def test_a_bare_class_name_is_looked_up_in_zoo_estimators() -> None:
    estimator = from_config({"class_path": "GumbelSoftmax", "init_args": {"temperature": 0.3}})
    assert isinstance(estimator, GumbelSoftmax)
    assert estimator.temperature == pytest.approx(0.3)


def test_an_estimator_without_a_plain_config_says_so() -> None:
    class Local(GumbelSoftmax):  # not importable by its path
        pass

    assert Local().init_config() is None
    assert Reinforce(baseline=_Opaque(lambda c: c)).init_config() is None


class _Opaque(MovingAverageBaseline):
    """A baseline with an argument that has no plain form."""

    def __init__(self, transform: object) -> None:
        super().__init__()
        self.transform = transform


class _Composite(MovingAverageBaseline):
    """A baseline whose argument nests configurables inside a mapping and a list
    (built back because the type hint names their class, as in LightningCLI)."""

    def __init__(self, parts: dict[str, Baseline | list[Baseline]]) -> None:
        super().__init__()
        self.parts = parts


def test_configurables_nested_in_mappings_and_lists_round_trip() -> None:
    composite = _Composite({"ema": MovingAverageBaseline(0.3), "more": [LeaveOneOutBaseline()]})
    config = composite.init_config()
    assert config["init_args"]["parts"]["ema"]["init_args"] == {"decay": 0.3}
    rebuilt = from_config(config)
    assert type(rebuilt.parts["ema"]) is MovingAverageBaseline
    assert type(rebuilt.parts["more"][0]) is LeaveOneOutBaseline
    assert rebuilt.init_config() == config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"class_path": "os.path.join"}, "os.path.join does not correspond to a subclass of Est"),
        ({"class_path": "zoo.estimators.Nope"}, "zoo.estimators' has no attribute 'Nope'"),
        ({"class_path": "no_such_package.Thing"}, "No module named 'no_such_package'"),
        (
            {"class_path": "GumbelSoftmax", "init_args": {"temp": 1}},
            "Option 'temp' is not accepted",
        ),
        ({"class_path": "GumbelSoftmax", "init_args": [1]}, r"init_args of estimator .* \[1\]"),
        ({"clas_path": "GumbelSoftmax"}, "estimator must be a config .* got {'clas_path'"),
        ({"class_path": "Exact", "init_args": {"max_support": "many"}}, "int.* Got value: many"),
        ({"class_path": "Exact", "init_args": {"max_support": 0}}, "max_support must be .* got 0"),
        (
            {"class_path": "zoo.estimators.MovingAverageBaseline"},
            "MovingAverageBaseline does not correspond to a subclass of Estimator",
        ),
    ],
)
def test_bad_configs_name_what_is_wrong(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_config(config, Estimator, "estimator")


def test_as_estimator_takes_an_estimator_or_a_config_and_nothing_else() -> None:
    estimator = GumbelSoftmax()
    assert as_estimator(estimator) is estimator
    assert isinstance(as_estimator({"class_path": "StraightThrough"}), Estimator)
    with pytest.raises(ValueError, match="inner_estimator must be .* got Linear"):
        as_estimator(torch.nn.Linear(1, 1), "inner_estimator")


def test_zoo_config_imports_no_other_part_of_the_zoo() -> None:
    # The serializer is generic: importing it pulls in neither zoo.estimators nor
    # jsonargparse (loaded when a config is first built).
    code = (
        "import sys, zoo.config; "
        "print(sorted(m for m in sys.modules if m.startswith(('zoo.', 'jsonargparse'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "['zoo.config']"
    import zoo.config

    # Checkpoints name estimators, not the serializer: their class paths resolve.
    built = zoo.config.from_config(
        {"class_path": "zoo.estimators.reinforce.Reinforce", "init_args": {"num_samples": 2}}
    )
    assert isinstance(built, Reinforce)


NEW_ESTIMATORS = [
    lambda: GumbelCRF(0.7, straight_through=True, num_samples=2),
    lambda: GumbelRao(0.5, num_rao=6),
    lambda: VIMCO(4),
    lambda: ARM(3),
    lambda: DisARM(),
    lambda: UnorderedSetReinforce(5),
    lambda: Exact(max_support=1000),
]


@pytest.mark.parametrize("make", NEW_ESTIMATORS, ids=lambda m: type(m()).__name__)
def test_the_newer_estimators_rebuild_from_their_configs(make) -> None:
    estimator = make()
    config = estimator.init_config()
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    rebuilt = from_config(config, Estimator)
    assert type(rebuilt) is type(estimator)
    assert repr(rebuilt) == repr(estimator)
    assert rebuilt.init_config() == config


def _latents() -> dict[str, Structure]:
    g = torch.Generator().manual_seed(0)
    return {
        "categorical": Categorical(torch.randn(2, 3, 4, generator=g)),
        "bernoulli": Bernoulli(torch.randn(2, 5, generator=g)),
        "chain": LinearChainCRF(torch.randn(2, 3, 3, 3, generator=g)),
    }


# What the files of each folder of configs/estimator/ run on (README.md there).
FOLDER_LATENTS = {
    ".": {"categorical", "bernoulli", "chain"},
    "chain": {"chain"},
    "factorized": {"categorical", "bernoulli"},
    "bernoulli": {"bernoulli"},
    "joint-nll": {"categorical", "bernoulli", "chain"},
}


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: str(p.relative_to(GROUP_DIR)))
def test_a_group_file_runs_on_the_latents_of_its_folder_and_names_the_others(path) -> None:
    folder = str(path.parent.relative_to(GROUP_DIR))
    assert folder in FOLDER_LATENTS, f"configs/estimator/{folder}/ is not described"
    config = yaml.safe_load(path.read_text())
    for name, q in _latents().items():
        if "LearnedBaseline" in str(config):
            config["init_args"]["baseline"]["init_args"]["in_features"] = q.event_shape.numel()
        estimator = from_config(config, Estimator)
        cost = lambda z: z.flatten(2).sum(-1).pow(2)  # noqa: E731
        if name in FOLDER_LATENTS[folder]:
            out = estimator(q, cost)
            assert torch.isfinite(out.objective).all()
        else:
            with pytest.raises(TypeError, match=type(q).__name__):
                estimator(q, cost)
