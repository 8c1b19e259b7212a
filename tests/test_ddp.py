"""Training on two processes with Lightning's DDP (gloo, CPU): what the zoo keeps in state agrees.

Each test launches this file as a script on two ranks (``torchrun
--nproc_per_node=2``, or Lightning's own launcher through ``train.py``); each
rank trains with ``strategy="ddp"`` and saves its parameters, buffers, logged
metrics and batches under a temporary folder, which the test compares:

* the ranks' parameters and estimator buffers (the moving-average baseline,
  updated from the all-reduced mean cost; the temperature, set from the global
  step) are identical after training;
* the ranks trained on different images and, over one epoch, on all of them
  together (Lightning's `DistributedSampler` shards the zoo's datamodules);
* the logged accuracy (a torchmetrics metric) equals the single-process
  accuracy of the same weights on the same validation set;
* TensorBoard events (pictures, hparams) and checkpoints are written once, by
  rank 0;
* the logged −ELBO (``self.log`` with ``sync_dist`` at the epoch level) equals
  the single-process value on the same validation set;
* the ranks draw different noise (each goes on from its own seed).

Run by hand: ``torchrun --standalone --nproc_per_node=2 tests/test_ddp.py OUT DATA [scenario ...]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script by torchrun: the repository on the path
    sys.path.insert(0, str(ROOT))

from tests.data.test_semi_supervised import write_tiny_mnist  # noqa: E402

STEPS = 4
BATCH = 8  # per process; the single-process comparisons use the same images


# ----------------------------------------------------------------------------- the ranks' side
def _model(scenario: str):
    from zoo.estimators import Exact, GumbelSoftmax, MovingAverageBaseline, Reinforce
    from zoo.models import VAE, CategoricalLatent
    from zoo.models.m2 import M2

    torch.manual_seed(0)
    if scenario == "m2-reinforce-ema":
        estimator = Reinforce(baseline=MovingAverageBaseline(0.5))
        return M2(estimator, latent_dim=4, hidden_sizes=(16,), alpha=5.0, lr=3e-2)
    if scenario == "m2-gumbel":
        return M2(GumbelSoftmax(), latent_dim=4, hidden_sizes=(16,), lr=1e-2)
    if scenario == "vae-exact":
        return VAE(Exact(), CategoricalLatent(2, 3), input_dim=16, hidden_sizes=(8,), lr=1e-2)
    raise ValueError(f"unknown scenario {scenario!r}")


def _data(scenario: str, data_dir: Path):
    from zoo.data import SyntheticBinaryDataModule
    from zoo.data.semi_supervised import SemiSupervisedMNISTDataModule

    if scenario.startswith("m2"):
        return SemiSupervisedMNISTDataModule(
            data_dir=str(data_dir), num_labels=20, val_size=48, batch_size=BATCH
        )
    return SyntheticBinaryDataModule(
        num_train=64, num_val=48, num_test=48, dim=16, num_prototypes=3, batch_size=BATCH
    )


def _rank_main(out: Path, data_dir: Path, scenarios: list[str]) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from zoo.callbacks import SampleImages, TemperatureAnnealing

    class Batches(L.Callback):
        def __init__(self) -> None:
            self.batches: list[dict[str, torch.Tensor]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                self.rng = torch.get_rng_state()  # the stream the estimator's noise comes from
            self.batches.append({k: v.clone() for k, v in batch.items()})

    torch.set_num_threads(1)
    for scenario in scenarios:
        L.seed_everything(0, verbose=False)
        model, data, seen = _model(scenario), _data(scenario, data_dir), Batches()
        callbacks = [seen, SampleImages(num_images=4), ModelCheckpoint(dirpath=out / scenario)]
        if scenario == "m2-gumbel":  # τ from the global step: 1, 0.9, 0.81, ...
            callbacks.append(TemperatureAnnealing(rate=-torch.log(torch.tensor(0.9)).item(),
                                                  min_temperature=0.1, every_n_steps=1))  # fmt: skip
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            max_steps=STEPS,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            logger=TensorBoardLogger(out / "logs", name=scenario),
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        try:
            trainer.fit(model, datamodule=data)
            (validated,) = trainer.validate(model, datamodule=data, verbose=False)
        except Exception as error:  # every rank fails alike here (before any collective)
            result = {"error": f"{type(error).__name__}: {error}"}
        else:
            result = {
                "error": None,
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "temperature": getattr(model.estimator, "temperature", None),
                "global_step": trainer.global_step,
                "validated": validated,
                "batches": seen.batches,
                "rng": seen.rng,
                "pid": os.getpid(),
            }
        torch.save(result, out / f"{scenario}-rank{trainer.global_rank}.pt")


# ----------------------------------------------------------------------------- the tests' side
def _launch(command: list[str], cwd: Path, timeout: float = 240) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )


def _run_ranks(tmp_path: Path, scenarios: list[str]) -> tuple[Path, Path]:
    data_dir = write_tiny_mnist(tmp_path / "data", num_train=400, num_test=48)
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__)), str(out), str(data_dir), *scenarios]  # fmt: skip
    _launch(command, cwd=tmp_path)
    return out, data_dir


def _ranks(out: Path, scenario: str) -> tuple[dict, dict]:
    ranks = tuple(torch.load(out / f"{scenario}-rank{r}.pt", weights_only=False) for r in (0, 1))
    for rank, saved in enumerate(ranks):
        assert saved["error"] is None, f"{scenario} failed on rank {rank}: {saved['error']}"
    return ranks


def _single_process_validation(scenario: str, state: dict, data_dir: Path) -> dict[str, float]:
    """The weights of rank 0 validated in this process on the whole validation set."""
    from tests.models.cases import quiet_trainer

    model = _model(scenario)
    model.load_state_dict(state)
    (metrics,) = quiet_trainer().validate(
        model, datamodule=_data(scenario, data_dir), verbose=False
    )
    return metrics


def _check_agreement(out: Path, scenario: str) -> tuple[dict, dict]:
    zero, one = _ranks(out, scenario)
    assert zero["global_step"] == one["global_step"] == STEPS
    assert zero["state"].keys() == one["state"].keys()
    for name, value in zero["state"].items():
        assert torch.equal(value, one["state"][name]), f"{scenario}: {name} differs between ranks"
    # Different shards of the training set.
    assert not torch.equal(zero["batches"][0]["x"], one["batches"][0]["x"])
    return zero, one


def _written_by_rank_zero(logs: Path, checkpoints: Path, pid: int) -> None:
    """TensorBoard files (scalars, pictures, the hparams session) and checkpoints: rank 0's only.

    An event file is named ``events.out.tfevents.<time>.<host>.<pid>.<n>``.
    """
    events = list(logs.rglob("events.out.tfevents.*"))
    assert events and {e.name.split(".")[-2] for e in events} == {str(pid)}, events
    assert len(list(checkpoints.glob("*.ckpt"))) == 1


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, Path]:
    """One launch: M2 with REINFORCE and a moving-average baseline; a VAE with `Exact` on
    `SyntheticBinaryDataModule` (a `ZooDataModule`, deterministic, one epoch in 4 steps)."""
    return _run_ranks(tmp_path_factory.mktemp("ddp"), ["m2-reinforce-ema", "vae-exact"])


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory) -> tuple[Path, Path]:
    """One launch for the slow tests: M2 with an annealed Gumbel-Softmax."""
    return _run_ranks(tmp_path_factory.mktemp("ddp"), ["m2-gumbel"])


def test_two_processes_agree_on_m2_with_a_moving_average_baseline(default_run) -> None:
    out, data_dir = default_run
    zero, one = _check_agreement(out, "m2-reinforce-ema")
    # The baseline moved, from the all-reduced mean cost: the same on both ranks.
    assert int(zero["state"]["estimator.baseline.steps"]) == STEPS
    assert float(zero["state"]["estimator.baseline.average"]) > 0
    # torchmetrics syncs the accuracy: both ranks log that of the whole validation set.
    single = _single_process_validation("m2-reinforce-ema", zero["state"], data_dir)
    assert zero["validated"]["val/accuracy"] == one["validated"]["val/accuracy"]
    assert zero["validated"]["val/accuracy"] == pytest.approx(single["val/accuracy"], abs=1e-6)
    assert 0 < zero["validated"]["val/accuracy"] < 1
    scenario = "m2-reinforce-ema"
    _written_by_rank_zero(out / "logs" / scenario, out / scenario, zero["pid"])


def test_the_zoo_datamodules_shard_between_the_processes(default_run) -> None:
    out, _ = default_run
    zero, one = _check_agreement(out, "vae-exact")
    data = _data("vae-exact", Path())
    data.setup()
    seen = [torch.cat([b["x"] for b in rank["batches"]]) for rank in (zero, one)]
    assert seen[0].shape == seen[1].shape == (32, 16)  # half of the 64 images each
    rows = sorted(map(bytes, torch.cat(seen).to(torch.uint8).numpy()))
    assert rows == sorted(map(bytes, data.train_set.data.numpy()))  # together: the epoch
    _written_by_rank_zero(out / "logs" / "vae-exact", out / "vae-exact", zero["pid"])


def test_the_logged_elbo_is_that_of_the_whole_validation_set(default_run) -> None:
    out, data_dir = default_run
    zero, one = _check_agreement(out, "vae-exact")
    single = _single_process_validation("vae-exact", zero["state"], data_dir)
    for rank in (zero, one):
        assert rank["validated"]["val/neg_elbo"] == pytest.approx(single["val/neg_elbo"], rel=1e-5)


@pytest.mark.slow
def test_two_processes_agree_on_the_temperature(slow_run) -> None:
    out, _ = slow_run
    zero, one = _check_agreement(out, "m2-gumbel")
    # Set by TemperatureAnnealing from the global step, the same on every rank: 0.9^3 at step 3.
    assert zero["temperature"] == one["temperature"] == pytest.approx(0.9 ** (STEPS - 1))


@pytest.mark.slow
def test_the_ranks_draw_different_noise(slow_run) -> None:
    out, _ = slow_run
    zero, one = _ranks(out, "m2-gumbel")
    assert not torch.equal(zero["rng"], one["rng"])


@pytest.mark.slow
def test_train_py_on_two_processes_with_lightnings_launcher(tmp_path) -> None:
    # What a user runs: Lightning starts the second process itself (no torchrun).
    data_dir = write_tiny_mnist(tmp_path / "data", num_train=400, num_test=48)
    command = [sys.executable, str(ROOT / "train.py"), "fit",
               "--config", str(ROOT / "configs" / "m2" / "m2.yaml"),
               "--model.estimator", str(ROOT / "configs" / "estimator" / "reinforce-ema.yaml"),
               f"--data.data_dir={data_dir}", "--data.num_labels=20", "--data.val_size=48",
               "--data.batch_size=8", "--model.hidden_sizes=[16]", "--model.latent_dim=4",
               "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
               "--trainer.max_steps=3", "--trainer.enable_progress_bar=false"]  # fmt: skip
    _launch(command, cwd=tmp_path)
    (run,) = (tmp_path / "lightning_logs" / "m2").iterdir()  # one run directory
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("*.ckpt"))) == 2  # last.ckpt and the epoch's
    pids = {e.name.split(".")[-2] for e in run.glob("events.out.tfevents.*")}
    assert len(pids) == 1  # one process wrote the TensorBoard files
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["estimator.baseline.steps"]) == 3


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
    # Close the gloo group before the interpreter exits: left to the exit-time destructors,
    # its threads can end a finished rank with "terminate called without an active exception".
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
