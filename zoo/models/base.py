r"""`LatentVariableModel`: the LightningModule every model of the zoo subclasses.

A model with a discrete latent z minimizes, per example,

    loss = E_{z∼q}[f(z)] + R(q),

with q a `Structure` built from the input (``posterior``), f a per-sample cost
(``cost``, e.g. −log p(x | z)) and R what is exact (``regularizer``, e.g.
KL(q ‖ p)). The injected `Estimator` turns the expectation into
``Estimate.objective`` (value = the cost, gradient = its estimate), so the
loss's value is what is reported and its gradient what is followed. For a VAE
the loss is the negative ELBO.

A subclass writes ``posterior``, ``cost`` and, where it has one,
``regularizer``; for the importance-sampled likelihood it writes
``log_weights``, for pictures ``images``, and for estimators of a
multi-sample bound (`VIMCO`) ``joint_nll``. The base owns one step shared by
training, validation and testing, the logging ("{stage}/{name}"), the
optimizer and the TensorBoard hyperparameter session.

**Multi-sample bounds.** An estimator with ``multi_sample_bound`` (VIMCO)
estimates the gradient of L̂_S = log (1/S) Σ_s p(x, z_s) / q(z_s | x) instead of
E_q[f(z)]. It is given ``joint_nll`` = −log p(x, z) as its cost, and the loss
is −L̂_S alone (the bound holds the KL): it is logged as ``{stage}/neg_bound``,
and the negative ELBO of the same samples under the usual names (``neg_elbo``,
``recon``, ``kl`` for a VAE), so the runs stay comparable with ELBO-trained ones.
A model without ``joint_nll`` refuses such an estimator when it is built.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from zoo.config import Configurable
from zoo.estimators import Estimate, Estimator, as_estimator
from zoo.estimators.compatibility import check_model
from zoo.structures import Structure

__all__ = ["Batch", "LatentVariableModel", "Step"]

Batch = dict[str, Tensor]
"""A batch: ``{"x": (B, D)}``, or ``{"x": (B, D_in), "y": (B, D_out)}`` for prediction tasks."""

# Keeping the estimator in the hyperparameters is deliberate: LightningCLI then
# stores its class_path config in the checkpoint, and load_from_checkpoint
# rebuilds it (buffers come from the state dict). Lightning warns about it.
_MODULE_HPARAM_WARNING = r"Attribute '\w*(estimator|latent)' is an instance of `nn.Module`"

@dataclass
class Step:
    """What a family's `LatentVariableModel.step` returns for one batch.

    Attributes:
        loss: the scalar the optimizer minimizes (in evaluation: the reported loss).
        metrics: logged as ``{stage}/{name}`` by the base: scalars (tensors or floats),
            or torchmetrics objects updated in the step (Lightning computes them at the
            epoch's end); empty on training steps that do not log.
        batch_size: the examples behind the metrics (the weight of their epoch mean).
        outputs: what callbacks receive beside the loss (``outputs`` of
            ``on_validation_batch_end``), e.g. a batch's predictions for a picture.
    """

    loss: Tensor
    metrics: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    outputs: dict[str, Any] = field(default_factory=dict)


RNG_STATES_KEY = "zoo_rng_states"
"""Where checkpoints keep the generator states (see ``on_save_checkpoint``)."""
MODEL_CLASS_KEY = "zoo_model_class"
"""Where checkpoints keep the model's class (``module.Class``), also for models built in Python."""


class LatentVariableModel(L.LightningModule):
    """Base of the zoo's models: one step for all stages, logging and the optimizer.

    Args:
        estimator: the gradient estimator of E_q[f(z)], e.g. ``GumbelSoftmax()``,
            ``Reinforce(num_samples=4, baseline=LeaveOneOutBaseline())``, or its config
            ``{"class_path": "Reinforce", "init_args": {"num_samples": 4, ...}}``.
        lr: learning rate of Adam; None: the family's default (``default_lr``, 1e-3).
        num_importance_samples: m, the samples from q behind the importance-sampled
            negative log-likelihood ``test/nll_iw`` (Jang et al. 2017 use 1000); 0 skips it;
            None: the family's default (``importance_samples``: 1000 for the VAE and SBN).
        val_importance_samples: the same for ``val/nll_iw``; 0 (default) skips it, since it
            costs m decoder passes per example at every validation.
        importance_chunk_size: samples drawn at once for ``nll_iw``; bounds the memory to
            about chunk × batch × output width floats; None: the family's default.

    A family declares its own arguments and passes these on as ``**kwargs``
    (declared once, here; jsonargparse lists them under every family).

    Checkpoints keep the estimator among the hyperparameters as its config
    (``{"class_path": ..., "init_args": {...}}``, what LightningCLI writes; see
    `zoo.config`), whether the model was built by ``train.py`` or in
    Python, so ``VAE.load_from_checkpoint(path)`` rebuilds the model,
    estimator included, with its buffers from the state dict, under
    ``torch.load``'s safe default ``weights_only=True``. An estimator whose
    arguments have no plain form (a function, say) is kept as the object
    itself, and its checkpoints load only with ``weights_only=False``.

    Checkpoints also keep torch's generator states (``on_save_checkpoint``), which
    ``on_train_start`` restores, so a resumed run draws what an uninterrupted one
    would have drawn; a subclass that overrides one of these hooks calls ``super()``.

    Raises:
        ValueError: an estimator that is neither an `Estimator` nor its config, a negative
            number of samples, a chunk size below 1, lr ≤ 0.
    """

    objective_name: ClassVar[str] = "loss"
    """The name the loss is logged under: ``{stage}/{objective_name}``."""
    cost_name: ClassVar[str | None] = None
    """The name of E_q[f(z)] in the logs; None: not logged (it equals the loss)."""
    regularizer_name: ClassVar[str | None] = None
    """The name of the regularizer in the logs; None: not logged."""
    bound_name: ClassVar[str] = "neg_bound"
    """The name of the loss under a multi-sample-bound estimator (−L̂_S, see the module docstring)."""

    default_lr: ClassVar[float] = 1e-3
    """The family's default learning rate (``lr=None``)."""
    importance_samples: ClassVar[int] = 0
    """The family's default m of ``test/nll_iw`` (``num_importance_samples=None``)."""
    importance_chunk: ClassVar[int] = 100
    """The family's default ``importance_chunk_size`` (None)."""

    def __init__(
        self,
        estimator: Estimator,
        lr: float | None = None,
        num_importance_samples: int | None = None,
        val_importance_samples: int = 0,
        importance_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        estimator = as_estimator(estimator, "estimator")
        if lr is None:
            lr = self.default_lr
        if num_importance_samples is None:
            num_importance_samples = self.importance_samples
        if importance_chunk_size is None:
            importance_chunk_size = self.importance_chunk
        if not float(lr) > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        for name, value, low in (
            ("num_importance_samples", num_importance_samples, 0),
            ("val_importance_samples", val_importance_samples, 0),
            ("importance_chunk_size", importance_chunk_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
        if estimator.multi_sample_bound and not self.has_joint_nll():
            raise TypeError(
                f"{type(estimator).__name__} estimates a multi-sample bound and needs the joint "
                f"-log p(x, z) as its cost; {type(self).__name__} has no joint_nll(z, batch) "
                "(the VAE has one)"
            )
        self._save_plain_hyperparameters()
        self.estimator = estimator
        self.lr = float(lr)
        self.num_importance_samples = num_importance_samples
        self.val_importance_samples = val_importance_samples
        self.importance_chunk_size = importance_chunk_size
        self._rng_states_to_load: dict[str, Any] | None = None

    def _save_plain_hyperparameters(self) -> None:
        """The arguments of this class's own constructor, estimators and latents as their configs.

        So checkpoints hold plain values only (LightningCLI gives configs already),
        and ``load_from_checkpoint`` calls exactly this constructor: what a base
        class was given by its subclass (what a family fixes for its base) is left out.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MODULE_HPARAM_WARNING)
            # Lightning collects the arguments of every __init__ up to the subclass's.
            self.save_hyperparameters()
            own = type(self).init_parameter_names()
            # "_class_path" and "_instantiator" are LightningCLI's bookkeeping: kept.
            self.remove_ignored_hparams(
                [k for k in self.hparams if k not in own and not k.startswith("_")]
            )
            plain = dict(self.hparams)
            for name, value in plain.items():
                if isinstance(value, Configurable) and (config := value.init_config()) is not None:
                    plain[name] = config
            if plain:  # again, so that what loggers receive (hparams_initial) is plain too
                self.save_hyperparameters(plain)

    # ------------------------------------------------------- what a subclass writes
    def posterior(self, batch: Batch) -> Structure:
        """q(z | x): a structure of batch shape ``(B,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement posterior(batch)")

    def cost(self, z: Tensor, batch: Batch) -> Tensor:
        """f(z): ``(S, B, *event)`` → per-sample costs ``(S, B)``, e.g. −log p(x | z)."""
        raise NotImplementedError(f"{type(self).__name__} must implement cost(z, batch)")

    def regularizer(self, q: Structure, batch: Batch) -> Tensor:
        """``(B,)`` exact terms added to the loss, e.g. KL(q ‖ p); 0 by default."""
        return q.log_potentials.new_zeros(q.batch_shape)

    def joint_nll(self, z: Tensor, batch: Batch) -> Tensor:
        """−log p(x, z), the prior included: ``(S, B, *event)`` → ``(S, B)``.

        What an estimator of a multi-sample bound (`VIMCO`) is given as its cost.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no joint_nll(z, batch): it cannot train with an "
            "estimator of a multi-sample bound (VIMCO)"
        )

    @classmethod
    def has_joint_nll(cls) -> bool:
        """Whether the class writes ``joint_nll`` (and so can train with `VIMCO`)."""
        return cls.joint_nll is not LatentVariableModel.joint_nll

    def cost_for(self, estimator: Estimator) -> Callable[[Tensor, Batch], Tensor]:
        """The cost ``estimator`` is given: ``joint_nll`` for a multi-sample bound, else ``cost``."""
        return self.joint_nll if estimator.multi_sample_bound else self.cost

    def log_weights(self, q: Structure, batch: Batch, num_samples: int) -> Tensor:
        """``(num_samples, B)`` log importance weights log p(x, z) − log q(z | x), z ∼ q.

        Behind ``nll_iw``; set ``num_importance_samples=0`` for a model without it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no log_weights(); set num_importance_samples=0 "
            "and val_importance_samples=0"
        )

    def diagnostics(
        self, q: Structure, estimate: Estimate, batch: Batch, stage: str
    ) -> dict[str, Tensor]:
        """Detached scalars logged beside the loss on logging steps, ``{stage}/{name}``; none by default."""
        return {}

    def posterior_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters of q's network (the encoder of θ); what proximal updates move.

        Empty by default: then every parameter with a gradient is stepped.
        """
        return []

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: one group at ``lr`` by default."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def images(self, batch: Batch, num_images: int) -> dict[str, Tensor]:
        """Named picture batches ``(n, D)`` with values in [0, 1] (see `zoo.callbacks.SampleImages`)."""
        return {}

    def figures(self, batch: Batch, outputs: dict[str, Any], count: int) -> dict[str, Any]:
        """Named matplotlib figures or markdown texts (or a list of them) about a validation
        batch and what its `step` output (see `zoo.callbacks.ValidationFigures`); none by default.
        """
        return {}

    def gradient_groups(self) -> dict[str, list[torch.nn.Module]]:
        """Named groups of modules whose gradient norms are logged as ``train/grad_norm_{name}``
        on logging steps (before clipping); none by default."""
        return {}

    # ---------------------------------------------------------------- the step
    def terms(self, batch: Batch) -> tuple[Structure, Estimate, Tensor]:
        """q, the estimate of E_q[f(z)] and the ``(B,)`` regularizer of one batch."""
        q = self.posterior(batch)
        cost = self.cost_for(self.estimator)
        estimate = self.estimator(q, lambda z: cost(z, batch))
        if self.estimator.multi_sample_bound:  # the bound holds the KL
            return q, estimate, q.log_potentials.new_zeros(q.batch_shape)
        return q, estimate, self.regularizer(q, batch)

    def forward(self, batch: Batch) -> Tensor:
        """``(B,)`` per-example loss (for a VAE the negative ELBO)."""
        _, estimate, regularizer = self.terms(batch)
        return estimate.objective + regularizer

    def step(self, batch: Batch, stage: str) -> Step:
        """One batch of ``stage`` (``train``, ``val`` or ``test``): its loss and what to log.

        The one hook a family overrides to change what a step computes (it may
        call ``super().step`` and add to the result); the base runs it in
        training, validation and testing and logs every metric it returns (see
        `Step`). This default is the loss of the module docstring with its
        terms (``objective_name``, ``cost_name``, ``regularizer_name``), the
        importance-sampled ``nll_iw`` where asked, the estimator's statistics
        and `diagnostics`. Metrics are computed only on the steps that log
        (`logs_this_step`).
        """
        q, estimate, regularizer = self.terms(batch)
        loss = (estimate.objective + regularizer).mean()
        batch_size = int(estimate.cost.shape[0])
        if not self.logs_this_step(stage):
            return Step(loss, batch_size=batch_size)
        if self.estimator.multi_sample_bound:
            metrics = self._bound_metrics(q, estimate, batch, loss)
        else:
            metrics = {self.objective_name: loss.detach()}
            if self.cost_name is not None:
                metrics[self.cost_name] = estimate.cost.mean()
            if self.regularizer_name is not None:
                metrics[self.regularizer_name] = regularizer.detach().mean()
        samples = {"val": self.val_importance_samples, "test": self.num_importance_samples}
        if samples.get(stage, 0) > 0:
            metrics["nll_iw"] = -self.importance_log_likelihood(q, batch, samples[stage]).mean()
        if stage == "train":
            metrics.update(estimate.stats)
        metrics.update(self.diagnostics(q, estimate, batch, stage))
        return Step(loss, metrics, batch_size)

    def epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        """Values of ``stage``'s accumulated metrics at the end of a validation or test epoch,
        logged as ``{stage}/{name}`` (e.g. accuracies by length bucket); none by default.

        A family that accumulates (torchmetrics objects, updated in `step`) computes and
        resets them here.
        """
        return {}

    def _run(self, batch: Batch, stage: str) -> dict[str, Any]:
        """`step`, then its metrics logged: what Lightning's three step hooks return."""
        result = self.step(batch, stage)
        if result.metrics:
            self._log_metrics(result.metrics, stage, result.batch_size)
        return {"loss": result.loss, **result.outputs}

    def _log_metrics(self, metrics: Mapping[str, Any], stage: str, batch_size: int) -> None:
        """Every metric as ``{stage}/{name}``: per step in training, per epoch (the mean over
        every rank's batches) in validation and testing."""
        metrics = dict(metrics)
        on_step = stage == "train"
        shown = self.bound_name if self.estimator.multi_sample_bound else self.objective_name
        step = self._log_step(stage)
        if step is not None:
            # Lightning's logger reads a logged "step" as the x-axis (documented in its
            # log_metrics). Given explicitly, it is the same in a resumed run as in an
            # uninterrupted one; Lightning's own counter is one ahead after a resume
            # from a checkpoint written at the end of an epoch.
            metrics["step"] = torch.tensor(float(step))
            metrics["epoch"] = torch.tensor(float(self.current_epoch))  # what Lightning adds itself
        for name, value in metrics.items():
            self.log(
                name if name in ("step", "epoch") else f"{stage}/{name}",
                value,
                prog_bar=name == shown,
                logger=True,
                on_step=on_step,
                on_epoch=not on_step,
                batch_size=batch_size,
                # Under DDP the epoch value is the mean over every rank's shard (one
                # all-reduce per metric per epoch); the per-step training values stay local.
                sync_dist=not on_step,
            )

    def _log_epoch_metrics(self, stage: str) -> None:
        for name, value in self.epoch_metrics(stage).items():
            # Values of torchmetrics objects are already reduced over the ranks.
            self.log(f"{stage}/{name}", value, prog_bar=name == "accuracy", sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    @torch.no_grad()
    def _bound_metrics(
        self, q: Structure, estimate: Estimate, batch: Batch, loss: Tensor
    ) -> dict[str, Tensor]:
        """The bound, and the ELBO's terms on the bound's own samples (one more cost pass)."""
        cost = self.cost(estimate.z, batch).mean(0)  # (B,): E_q[f(z)] from the S samples
        regularizer = self.regularizer(q, batch)
        metrics = {self.bound_name: loss.detach(), self.objective_name: (cost + regularizer).mean()}
        if self.cost_name is not None:
            metrics[self.cost_name] = cost.mean()
        if self.regularizer_name is not None:
            metrics[self.regularizer_name] = regularizer.mean()
        return metrics

    def _log_step(self, stage: str) -> int | None:
        """The step a training or in-training validation log belongs to; None: Lightning's own.

        Training logs step t for batch t (0-based); a validation during training
        logs the step of the last training batch before it, as Lightning does.
        """
        try:
            trainer = self.trainer
        except RuntimeError:
            return None
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return None
        if stage == "train":
            return self.global_step
        return max(self.global_step - 1, 0) if stage == "val" else None

    def logs_this_step(self, stage: str = "train") -> bool:
        """Whether this step's metrics are logged: always in validation and testing; in
        training every ``log_every_n_steps`` (as Lightning writes them).

        The training scalars are computed only then (see ``bench/README.md`` for
        what ``self.log`` costs per call).
        """
        if stage != "train":
            return True
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a trainer: a plain call
            return True
        if trainer.fast_dev_run:
            return True
        every = trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self._run(batch, "train")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        groups = self.gradient_groups()
        if not groups or not self.logs_this_step():
            return
        for name, modules in groups.items():
            grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else 0.0
            self.log(f"train/grad_norm_{name}", torch.as_tensor(norm, dtype=torch.float32))

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        """The estimator's proximal steps, after the usual one (see `zoo.estimators.Reinforce`)."""
        updates = getattr(self.estimator, "policy_updates", 1)
        rollout = getattr(self.estimator, "rollout", None)
        if updates > 1 and rollout is not None:
            self.estimator.rollout = None
            self.proximal_updates(batch, updates - 1, rollout)

    def proximal_updates(self, batch: Batch, count: int, rollout: Any) -> None:
        """``count`` optimizer steps of q's parameters on the estimator's clipped surrogate plus R(q).

        Only q's network gets gradients (the cost is not evaluated again), so the
        optimizer leaves every other parameter as it is. The steps clip gradients
        as the trainer does, and under data-parallel training average them over
        the ranks (the posterior is called outside DDP's forward).
        """
        optimizer = self.trainer.optimizers[0]
        parameters = self.posterior_parameters() or [
            p for p in self.parameters() if p.requires_grad
        ]
        world = self.trainer.world_size
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            q = self.posterior(batch)
            loss = (
                self.estimator.clipped_surrogate(q, rollout) + self.regularizer(q, batch)
            ).mean()
            if not loss.requires_grad:  # q's network is frozen (a warm-up): nothing to step
                return
            loss.backward()
            if world > 1:
                for p in parameters:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad.div_(world)
            clip = self.trainer.gradient_clip_val
            if clip:
                torch.nn.utils.clip_grad_norm_(parameters, float(clip))
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self._run(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self._run(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """``(B,)`` per-example loss (negative ELBO or its analogue), for ``predict``."""
        return self(batch)

    # ----------------------------------------------------------- the likelihood
    @torch.no_grad()
    def importance_log_likelihood(self, q: Structure, batch: Batch, num_samples: int) -> Tensor:
        """``(B,)`` log p(x) ≈ log (1/m) Σ_i w_i with w_i = p(x, z_i) / q(z_i | x), z_i ∼ q.

        The m = ``num_samples`` weights are drawn ``importance_chunk_size`` at a
        time and combined by log-sum-exp. The estimate is a stochastic lower
        bound of log p(x) (by Jensen) that tightens as m grows (Burda et al. 2016);
        at m = 1 its expectation is the ELBO.
        """
        parts = []
        for start in range(0, num_samples, self.importance_chunk_size):
            count = min(self.importance_chunk_size, num_samples - start)
            parts.append(torch.logsumexp(self.log_weights(q, batch, count), dim=0))  # (B,)
        return torch.logsumexp(torch.stack(parts), dim=0) - math.log(num_samples)

    # ------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam, with the fused kernel where the device has one (faster; see ``bench/README.md``)."""
        groups = self.parameter_groups()
        try:
            return torch.optim.Adam(groups, lr=self.lr, fused=True)
        except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
            return torch.optim.Adam(groups, lr=self.lr)

    # ------------------------------------------- TensorBoard hyperparameter tab
    def hparams_metric_names(self) -> list[str]:
        """The metrics the TensorBoard hparams tab shows next to the hyperparameters."""
        names = [f"val/{self.objective_name}", f"test/{self.objective_name}"]
        if self.estimator.multi_sample_bound:
            names += [f"val/{self.bound_name}", f"test/{self.bound_name}"]
        if self.val_importance_samples > 0:
            names.append("val/nll_iw")
        if self.num_importance_samples > 0:
            names.append("test/nll_iw")
        return names

    def _write_hparams_session(self) -> None:
        """Open the run's hparams session with the metric *names* only.

        TensorBoard's hparams tab shows, for each metric, the last scalar logged
        under its tag in the run, so the real ``val/…`` and ``test/…`` values
        appear as they are logged. Unlike ``logger.log_hyperparams(params,
        metrics)``, no placeholder value is written into the scalar charts.
        """
        from torch.utils.tensorboard.summary import hparams

        params = _flatten_for_tensorboard(dict(self.hparams))
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and self.global_rank == 0:
                metric_dict = dict.fromkeys(self.hparams_metric_names(), 0.0)
                # The SummaryWriter's public FileWriter (it exists once the writer does).
                writer = logger.experiment.file_writer
                for summary in hparams(params, metric_dict):
                    writer.add_summary(summary)

    def on_fit_start(self) -> None:
        # Before the first step: an estimator that does not apply to this model's structure
        # (or needs a joint likelihood it lacks) is named with the reason (train.py checks
        # the same before anything is built).
        check_model(self)
        self._write_hparams_session()

    # ------------------------------------------------------------ older checkpoints
    @classmethod
    def upgrade_hyperparameters(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments that rebuild a checkpoint written by an older version of the
        class from its ``hparams``; none by default.

        `load_from_checkpoint` passes them on (the older arguments themselves are
        dropped, since the constructor no longer names them).
        """
        return {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, with older checkpoints upgraded first
        (`upgrade_hyperparameters`) and the hyperparameters this class no longer takes
        left out; arguments given here win."""
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        saved = checkpoint.get("hyper_parameters", {})
        hparams = {**saved, **cls.upgrade_hyperparameters(saved)}
        takes = cls.init_parameter_names()
        hparams = {k: v for k, v in hparams.items() if k in takes or k.startswith("_")}
        if hparams == saved:  # a checkpoint of this version: Lightning reads the file itself
            if hasattr(checkpoint_path, "seek"):  # a file object, read once already
                checkpoint_path.seek(0)
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        checkpoint["hyper_parameters"] = hparams
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        buffer.seek(0)
        return super().load_from_checkpoint(buffer, *args, **kwargs)

    @classmethod
    def init_parameter_names(cls) -> set[str]:
        """The arguments the constructor takes: its own, and the base's that it passes on
        as ``**kwargs``."""
        parameters = inspect.signature(cls).parameters
        names = set(parameters)
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            names |= set(inspect.signature(LatentVariableModel.__init__).parameters) - {"self"}
        return names - {"kwargs"}

    # ------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the random-number state, so a resumed run draws what the uninterrupted one drew.

        Every sample the zoo draws (the structures' noise, exact samples, dynamic
        binarization, which `zoo.data` draws when a batch reaches the model)
        comes from torch's global generator (and CUDA's, on a GPU).
        """
        states: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[RNG_STATES_KEY] = states
        checkpoint[MODEL_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied when training starts: after Lightning's sanity check (which
        # runs under its own, isolated, generator state) and before the first batch.
        self._rng_states_to_load = checkpoint.get(RNG_STATES_KEY)

    def on_train_start(self) -> None:
        states, self._rng_states_to_load = self._rng_states_to_load, None
        if states is not None:
            torch.set_rng_state(states["torch"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
        if self.trainer.world_size > 1:
            # seed_everything (and a restored checkpoint, written by rank 0) leave every
            # rank with one generator state: the ranks would draw the same Gumbel,
            # REINFORCE and binarization noise for different images. Each rank goes on
            # from its own seed, drawn from that shared state (reproducible per rank).
            # DDP has already broadcast rank 0's weights, and the data order comes from
            # the DistributedSampler's seed, not from this generator.
            seed = int(torch.randint(0, 2**62, (1,)))
            torch.manual_seed(seed + self.trainer.global_rank)

    def on_test_start(self) -> None:
        self._write_hparams_session()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == TrainerFn.VALIDATING:
            self._write_hparams_session()


def _flatten_for_tensorboard(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as ``{"a/b": value}`` with values TensorBoard accepts."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if key == "_instantiator":  # LightningCLI's bookkeeping, not a hyperparameter
            continue
        name = f"{prefix}{str(key).removeprefix('_')}"  # LightningCLI's "_class_path"
        if isinstance(value, Mapping):
            flat.update(_flatten_for_tensorboard(value, prefix=f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is None:
            flat[name] = "None"
        else:
            flat[name] = str(value)
    return flat
