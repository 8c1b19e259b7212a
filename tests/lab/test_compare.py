"""python -m zoo.lab.compare end to end on tiny synthetic data: CSV, markdown and PNG files; reruns skip."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from zoo.lab.compare import main, parse_settings
from zoo.lab.events import Series, over_seeds

BASE = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  log_every_n_steps: 1
  val_check_interval: 3
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: zoo.models.VAE
  init_args:
    estimator:
      class_path: zoo.estimators.GumbelSoftmax
    latent:
      class_path: zoo.models.CategoricalLatent
      init_args:
        num_variables: 3
        num_classes: 4
    hidden_sizes: [8]
    lr: 1.0e-2
    num_importance_samples: 0
data:
  class_path: zoo.data.SyntheticBinaryDataModule
  init_args:
    dim: 16
    num_train: 64
    num_val: 16
    num_test: 16
    batch_size: 16
    num_prototypes: 3
"""
GUMBEL = "class_path: zoo.estimators.GumbelSoftmax\ninit_args:\n  temperature: 0.7\n"
LOO = (
    "class_path: zoo.estimators.Reinforce\ninit_args:\n  num_samples: 3\n"
    "  baseline:\n    class_path: zoo.estimators.LeaveOneOutBaseline\n"
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"base": BASE, "gumbel": GUMBEL, "loo": LOO}
    for name, text in paths.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return {name: tmp_path / f"{name}.yaml" for name in paths}


def compare(files: dict[str, Path], out: Path, *extra: str) -> int:
    return main(
        [
            "--config", str(files["base"]),
            "--estimators", str(files["gumbel"]), f"loo={files['loo']}",
            "--seeds", "2", "--max_steps", "4", "--out", str(out),
            "--jobs", "0", "--grad_every", "2", "--grad_probes", "4", "--grad_examples", "8",
            *extra,
        ]
    )  # fmt: skip


def test_two_estimators_two_seeds_end_to_end_and_a_rerun_skips(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert compare(files, out) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["setting"], r["seed"], r["status"]) for r in rows] == [
        ("gumbel", "0", "finished"),
        ("gumbel", "1", "finished"),
        ("loo", "0", "finished"),
        ("loo", "1", "finished"),
    ]
    assert all(r["steps"] == "4" for r in rows)
    for row in rows:
        assert float(row["val/neg_elbo"]) > 0
        assert float(row["grad/variance (mean)"]) > 0
        assert float(row["wall_s"]) > 0
    # Seeds differ, so the runs do; the table averages them.
    assert rows[0]["val/neg_elbo"] != rows[1]["val/neg_elbo"]
    table = (out / "results.md").read_text()
    assert "| gumbel | 2 |" in table and "| loo | 2 |" in table and "±" in table
    for name in ("learning_curves", "gradients", "wall_time"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = json.loads((out / "runs" / "loo" / "seed_1" / "done.json").read_text())
    assert "--model.estimator" in done["fit"]

    capsys.readouterr()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("events.out.tfevents.*")}
    assert compare(files, out) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before, skipped") == 4
    assert {
        p: p.stat().st_mtime_ns for p in (out / "runs").rglob("events.out.tfevents.*")
    } == stamps
    assert (
        list(csv.DictReader((out / "results.csv").open()))[0]["val/neg_elbo"]
        == rows[0]["val/neg_elbo"]
    )


def test_a_failing_run_is_reported_and_the_others_finish(files, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("class_path: zoo.estimators.NoSuchEstimator\n")
    out = tmp_path / "out"
    code = main(
        [
            "--config", str(files["base"]), "--estimators", str(bad), str(files["gumbel"]),
            "--max_steps", "2", "--out", str(out), "--jobs", "0", "--grad_every", "0",
        ]
    )  # fmt: skip
    assert code == 1
    assert "bad seed 0: FAILED" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "finished"]
    assert "Not finished: bad seed 0" in (out / "results.md").read_text()


def test_settings_are_read_and_checked(tmp_path, files) -> None:
    overlay = tmp_path / "fixed.yaml"
    overlay.write_text("model:\n  init_args:\n    lr: 0.1\n")
    settings = parse_settings([str(files["gumbel"]), f"hot={overlay}"])
    assert [(s.name, s.kind) for s in settings] == [("gumbel", "estimator"), ("hot", "config")]
    assert settings[1].args() == ["--config", str(overlay)]
    with pytest.raises(ValueError, match="share the names"):
        parse_settings([str(files["gumbel"]), str(files["gumbel"])])
    with pytest.raises(ValueError, match="no file"):
        parse_settings([str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="expected an estimator file"):
        parse_settings([str(tmp_path / "list.yaml")])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "0"], "--seeds must be ≥ 1, got 0"),
        (["--max_steps", "-3"], "--max_steps must be ≥ 1, got -3"),
        (["--max_steps", "abc"], "argument --max_steps: invalid int value: 'abc'"),
        (["--estimators", "missing.yaml"], "setting 'missing.yaml': no file at missing.yaml"),
        (["--config", "missing.yaml"], "--config: no file at missing.yaml"),
    ],
    ids=["seeds-0", "max_steps-negative", "max_steps-abc", "missing-estimator", "missing-config"],
)
def test_bad_arguments_exit_with_a_message(files, tmp_path, capsys, extra, message) -> None:
    """The message first and alone (argparse printed it last, under nine lines of usage)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(files["base"]), "--estimators", str(files["gumbel"]),
              "--out", str(tmp_path), *extra])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {message}", err
    assert len(err) == 2 and "usage:" not in err[1]


def test_bands_over_seeds_on_common_steps() -> None:
    a = Series(
        steps=np.array([0, 1, 2]),
        values=np.array([1.0, 2.0, 3.0]),
        wall=np.array([0.0, 1.0, 2.0]),
    )
    b = Series(
        steps=np.array([1, 2, 3]),
        values=np.array([4.0, 5.0, 6.0]),
        wall=np.array([0.0, 3.0, 4.0]),
    )
    band = over_seeds([a, b])
    assert band.steps.tolist() == [1, 2]
    assert band.mean.tolist() == [3.0, 4.0]
    assert band.std.tolist() == pytest.approx([2**0.5, 2**0.5])
    assert band.wall.tolist() == [0.5, 2.5]


@pytest.mark.slow
def test_subprocess_runs_two_at_a_time_with_test_and_logs(files, tmp_path) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "--config", str(files["base"]), "--estimators", str(files["gumbel"]), str(files["loo"]),
            "--max_steps", "4", "--out", str(out), "--jobs", "2", "--threads", "1",
            "--grad_every", "2", "--grad_probes", "4", "--test",
        ]
    )  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert all(float(r["test/neg_elbo"]) > 0 and r["steps"] == "4" for r in rows)
    log = (out / "runs" / "gumbel" / "seed_0" / "train.log").read_text()
    assert log.startswith("$ python train.py fit --config")
    assert "$ python train.py test --config" in log


def test_a_whole_config_as_a_setting_is_applied_on_top_of_the_base(files, tmp_path) -> None:
    overlay = tmp_path / "hot.yaml"
    overlay.write_text("model:\n  init_args:\n    lr: 0.1\n    hidden_sizes: [5]\n")
    out = tmp_path / "out"
    code = main(
        [
            "--config", str(files["base"]), "--estimators", f"hot={overlay}",
            "--max_steps", "2", "--out", str(out), "--jobs", "0", "--grad_every", "0",
        ]
    )  # fmt: skip
    assert code == 0
    saved = yaml.safe_load((out / "runs" / "hot" / "seed_0" / "config.yaml").read_text())
    model = saved["model"]["init_args"]
    assert model["lr"] == 0.1 and model["hidden_sizes"] == [5]  # the overlay's
    assert model["latent"]["init_args"]["num_classes"] == 4  # the base's, untouched
    assert [r["status"] for r in csv.DictReader((out / "results.csv").open())] == ["finished"]
