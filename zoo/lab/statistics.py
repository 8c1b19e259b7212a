r"""Gradient statistics of an estimator on a model: variance, signal-to-noise ratio, cosine, bias.

For a structure q_θ(z) built from a fixed batch and the model's cost f, the
estimator's gradient ĝ = ∇_θ surrogate is a random vector whose mean should be
g = ∇_θ E_{z∼q_θ}[f(z)] (θ: the ``(B, *event)`` log-potentials of the batch,
flattened to one vector of D = B × parts). From K independent estimates
ĝ_1 … ĝ_K and a reference ĝ* of g:

* ``variance``: tr Cov[ĝ] ≈ 1/(K−1) Σ_k ‖ĝ_k − ḡ‖², the trace of the covariance of one
  estimate (the quantity SGD's noise scales with);
* ``snr``: ‖E ĝ‖ / √tr Cov[ĝ], with ‖E ĝ‖² estimated without bias as
  ‖ḡ‖² − tr Cov/K (clipped at 0); the signal-to-noise ratio of Rainforth et
  al. (2018), summarised over all dimensions at once;
* ``cosine``: 1/K Σ_k cos(ĝ_k, ĝ*), how well one estimate points where the
  gradient does;
* ``bias``: ‖E ĝ − g‖ / ‖g‖, the relative bias, with ‖E ĝ − g‖² estimated as
  ‖ḡ − ĝ*‖² − tr Cov/K − tr Cov[ĝ*] (the noise of both means removed, clipped at
  0): about 0 for an unbiased estimator; ``bias_floor``, the noise of ḡ − ĝ*
  relative to ‖ĝ*‖, says what size of bias K probes resolve.

The reference ĝ* is, in this order of preference:

1. ``"closed_form"``: the model's ``expected_cost(q, batch)`` ``(B,)``, the exact
   E_q[f(z)] as a differentiable function of q's potentials, where the model
   has one (a cost linear in the parts, e.g. the HMM tagger:
   E_q[⟨w, z⟩] = ⟨w, μ(θ)⟩ by the marginals);
2. ``"exact"``: `Exact` enumeration of the support, when every batch element
   has at most ``max_support`` structures (for a cost with noise of its own,
   such as the SBN's inner estimate, the mean of ``reference_chunks``
   enumerations, with their standard error);
3. ``"reinforce"``: REINFORCE with ``reference_samples`` samples per batch
   element and leave-one-out baselines (Kool et al. 2019), drawn as
   ``reference_chunks`` independent estimates whose spread gives the
   reference's standard error (logged as ``reference_se``, relative to ‖ĝ*‖).

An estimator of a multi-sample bound (`VIMCO`) estimates the gradient of
E[L̂_S] rather than of E_q[f(z)], so it is measured against that target:
``"bound"`` (what ``"auto"`` picks for it) averages ``reference_samples / S``
of its own estimates, in ``reference_chunks`` independent chunks for the
standard error. Its unbiasedness for that target is proven by the tests
(tests/estimators/test_new_estimators.py); the variance, SNR and cosine are
what the measurement adds. The probes of every estimator get the cost the
model gives it in training (``cost_for``: ``joint_nll`` for a bound).

The K probes run in one call of the estimator on the batch replicated K
times (chunked by ``chunk_size``), so their cost is one forward and one
backward pass over a K-times larger batch. Measured by
``bench/gradient_statistics.py`` on the categorical VAE of Jang et al. (one
thread, K = 16 on 16 examples), a call costs about 4–6 training steps of a
100-image batch with the default 256-sample REINFORCE reference (14–26 with
1,024 samples): 2–6 % of the training time at ``every_n_steps=100``. Encoder parameters φ (those θ is
computed from) are an option: ∇_φ E_q[f] = (∂θ/∂φ)ᵀ ∇_θ E_q[f], one
vector-Jacobian product per estimate, logged as ``encoder_variance`` and so on.

`GradientStatistics` is the Lightning callback that measures this every
``every_n_steps`` training steps on the first training batch it sees, and
logs ``grad/variance``, ``grad/snr``, ``grad/cosine``, ``grad/bias``,
``grad/reference_se``, ``grad/bias_floor`` and ``grad/seconds`` (its own
cost) to every logger.
It leaves the training run as it was: torch's RNG state is forked, the
model's buffers (moving-average baselines, say) are restored, and nothing is
written into ``.grad``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import lightning as L
import torch
from torch import Tensor, nn

from zoo.estimators import Estimator, Exact, LeaveOneOutBaseline, Reinforce
from zoo.estimators.support import support_size
from zoo.structures import Structure

__all__ = [
    "GradientStatistics",
    "Reference",
    "ReferenceKind",
    "gradient_statistics",
    "probe_gradients",
    "reference_gradient",
    "summarize",
]

log = logging.getLogger(__name__)

ReferenceKind = Literal["auto", "closed_form", "exact", "reinforce", "bound"]
Batch = Mapping[str, Tensor]


@dataclass(frozen=True)
class Reference:
    """A reference gradient and how it was obtained.

    Attributes:
        gradient: ``(B, *event)``, ĝ* ≈ ∇_θ E_q[f(z)] (∇_θ E[L̂_S] for ``"bound"``).
        noise: tr Cov[ĝ*], the squared standard error of the reference (0 when exact).
        kind: ``"closed_form"``, ``"exact"``, ``"reinforce"`` or ``"bound"``.
        estimates: ``(R, B, *event)``, the independent chunks averaged into ``gradient``
            (sampled references only; None otherwise).
    """

    gradient: Tensor
    noise: float
    kind: str
    estimates: Tensor | None = None


# ------------------------------------------------------------------ helpers
def _replicate(batch: Batch, copies: int) -> dict[str, Any]:
    """Every entry of the batch repeated ``copies`` times along dim 0: ``(copies · B, ...)``.

    Tensors and lists (a tagger's words, say) are repeated whole, ``[b_1 … b_B, b_1 …]``.
    """
    out: dict[str, Any] = {}
    for name, value in batch.items():
        if isinstance(value, list):
            out[name] = value * copies
            continue
        if not isinstance(value, Tensor) or value.dim() == 0:
            raise TypeError(
                f"gradient statistics replicate the batch along its first dimension; batch[{name!r}] "
                f"is {type(value).__name__}{'' if not isinstance(value, Tensor) else ' of dim 0'}"
            )
        out[name] = value.repeat(copies, *([1] * (value.dim() - 1)))
    return out


def _first(value: Any, count: int) -> Any:
    """The first ``count`` examples of a batch entry: a detached tensor copy, or a list slice."""
    return value[:count].detach().clone() if isinstance(value, Tensor) else list(value[:count])


def _leaf_structure(q: Structure, copies: int) -> tuple[Tensor, Structure]:
    """θ as a leaf ``(copies, *batch, *event)`` and the structure on it, batch flattened."""
    theta = q.log_potentials.detach()
    leaf = theta.unsqueeze(0).expand(copies, *theta.shape).clone().requires_grad_(True)
    flat = q.with_potentials(leaf, validate_args=False).reshape_batch((-1,))
    return leaf, flat


def _grad(output: Tensor, leaf: Tensor) -> Tensor:
    """∂ output.sum() / ∂ leaf; zeros where the output does not depend on the leaf."""
    if not output.requires_grad:
        return torch.zeros_like(leaf)
    (grad,) = torch.autograd.grad(output.sum(), leaf, allow_unused=True)
    grad = torch.zeros_like(leaf) if grad is None else grad
    # Forbidden parts (θ = −inf) may give NaN·0 products; they carry no gradient.
    return torch.where(torch.isfinite(leaf.detach()), grad, 0.0)


# -------------------------------------------------------------- estimates
def probe_gradients(
    model: nn.Module,
    batch: Batch,
    q: Structure,
    estimator: Estimator,
    num_probes: int,
    chunk_size: int | None = None,
    differentiable_cost: bool = True,
) -> Tensor:
    """K independent estimates of ∇_θ E_q[f(z)] by ``estimator``, on one batch.

    Args:
        model: has ``cost(z, batch) -> (S, B)``; the estimator gets ``model.cost_for(estimator)``
            where the model has it (``joint_nll`` for `VIMCO`).
        batch: the batch q was built from (tensors with the batch first).
        q: the structure, batch shape ``(B,)``.
        estimator: the estimator probed (in its current mode and state).
        num_probes: K ≥ 1.
        chunk_size: probes per call of the estimator (the batch is replicated that many
            times); None: all K at once.
        differentiable_cost: False evaluates the cost without a graph (enough for
            estimators whose θ-gradient only needs cost values: `Exact`, `Reinforce`).

    Returns:
        ``(K, B, *event)``.
    """
    if len(q.batch_shape) != 1:
        raise ValueError(
            f"q must have one batch dimension (B,), got batch shape {tuple(q.batch_shape)}"
        )
    chunk = num_probes if chunk_size is None else max(1, min(chunk_size, num_probes))
    cost_for = getattr(model, "cost_for", None)
    cost = cost_for(estimator) if callable(cost_for) else model.cost
    grads = []
    for start in range(0, num_probes, chunk):
        copies = min(chunk, num_probes - start)
        leaf, flat = _leaf_structure(q, copies)
        replicated = _replicate(batch, copies)

        def cost_fn(z: Tensor, replicated: dict[str, Tensor] = replicated) -> Tensor:
            if differentiable_cost:
                return cost(z, replicated)
            with torch.no_grad():
                return cost(z, replicated)

        estimate = estimator(flat, cost_fn)
        grads.append(_grad(estimate.surrogate, leaf))
    return torch.cat(grads)


def reference_gradient(
    model: nn.Module,
    batch: Batch,
    q: Structure,
    kind: ReferenceKind = "auto",
    max_support: int = 1024,
    reference_samples: int = 256,
    reference_chunks: int = 8,
    estimator: Estimator | None = None,
) -> Reference:
    """A reference for ∇_θ E_q[f(z)]: closed form, exact enumeration or many-sample REINFORCE.

    For an ``estimator`` of a multi-sample bound (`VIMCO`), a reference for its own
    target ∇_θ E[L̂_S] instead: the mean of many of its estimates (``"bound"``).

    Args:
        model: has ``cost(z, batch)``, and optionally ``expected_cost(q, batch) -> (B,)``.
        batch: the batch q was built from.
        q: the structure, batch shape ``(B,)``.
        kind: ``"auto"`` takes the first that applies of closed form, exact, reinforce
            (``"bound"`` for an estimator of a multi-sample bound).
        max_support: the largest support per batch element that ``"exact"`` enumerates.
        reference_samples: samples per batch element of the REINFORCE reference (all chunks).
        reference_chunks: R ≥ 2 independent REINFORCE estimates; their spread is the
            standard error.
        estimator: the estimator measured; only a multi-sample bound changes the target.

    Raises:
        ValueError: a kind that does not apply (no ``expected_cost``, a support too
            large to enumerate, ``"bound"`` for an estimator of E_q[f] or another kind
            for a bound), or too few samples for R chunks of ≥ 2.
    """
    expected_cost = getattr(model, "expected_cost", None)
    if estimator is not None:
        _check_target(model, estimator, kind)
    elif kind == "bound":
        raise ValueError("reference 'bound' needs the estimator of the bound, got none")
    if kind == "auto" and estimator is not None and estimator.multi_sample_bound:
        kind = "bound"
    if kind == "bound":
        return _bound_reference(model, batch, q, estimator, reference_samples, reference_chunks)
    if kind == "auto":
        size = support_size(q)
        if callable(expected_cost):
            kind = "closed_form"
        elif size is not None and size <= max_support:
            kind = "exact"
        else:
            kind = "reinforce"
    if kind == "closed_form":
        if not callable(expected_cost):
            raise ValueError(f"{type(model).__name__} has no expected_cost(q, batch) method")
        leaf, flat = _leaf_structure(q, 1)
        return Reference(_grad(expected_cost(flat, dict(batch)), leaf)[0], 0.0, kind)
    if kind == "exact":
        size = support_size(q)
        if size is None or size > max_support:
            raise ValueError(
                f"exact reference: {type(q).__name__} has support size {size} per batch element "
                f"(None: unknown), above max_support={max_support}"
            )
        # A cost with noise of its own (the SBN's inner estimate) makes the
        # enumeration an unbiased estimate only: two copies tell, and then
        # reference_chunks copies give its standard error.
        grads = probe_gradients(model, batch, q, Exact(max_support), 2, differentiable_cost=False)
        if torch.equal(grads[0], grads[1]):
            return Reference(grads[0], 0.0, kind)
        grads = probe_gradients(
            model, batch, q, Exact(max_support), max(2, reference_chunks), differentiable_cost=False
        )
        return _averaged(grads, "exact")
    if kind != "reinforce":
        raise ValueError(
            f"reference must be one of {', '.join(get_args(ReferenceKind))}, got {kind!r}"
        )
    per_chunk = reference_samples // reference_chunks
    if reference_chunks < 2 or per_chunk < 2:
        raise ValueError(
            f"the REINFORCE reference needs reference_chunks ≥ 2 and reference_samples ≥ "
            f"2 · reference_chunks, got {reference_samples} samples in {reference_chunks} chunks"
        )
    estimator = Reinforce(num_samples=per_chunk, baseline=LeaveOneOutBaseline())
    estimates = probe_gradients(
        model, batch, q, estimator, reference_chunks, differentiable_cost=False
    )
    return _averaged(estimates, kind)


def _check_target(model: nn.Module, estimator: Estimator, reference: str) -> None:
    """A bound estimator needs the model's joint and the "bound" reference; others not "bound"."""
    name = type(estimator).__name__
    if estimator.multi_sample_bound:
        has_joint = getattr(model, "has_joint_nll", None)
        if not (callable(has_joint) and has_joint()):
            raise TypeError(
                f"{name} estimates a multi-sample bound; gradient statistics need a model with "
                f"joint_nll(z, batch) for it, and {type(model).__name__} has none"
            )
        if reference not in ("auto", "bound"):
            raise ValueError(
                f"{name} estimates the gradient of a multi-sample bound, not of E_q[f(z)]: "
                f"its reference must be 'bound' (or 'auto'), got {reference!r}"
            )
    elif reference == "bound":
        raise ValueError(f"reference 'bound' is for estimators of a multi-sample bound, got {name}")


def _bound_reference(
    model: nn.Module,
    batch: Batch,
    q: Structure,
    estimator: Estimator,
    reference_samples: int,
    reference_chunks: int,
) -> Reference:
    """The mean of ``reference_samples / S`` estimates of the bound, in R chunks (≥ 1 each)."""
    if reference_chunks < 2:
        raise ValueError(f"the bound reference needs reference_chunks ≥ 2, got {reference_chunks}")
    per_chunk = max(1, reference_samples // (estimator.num_samples * reference_chunks))
    # VIMCO's θ-gradient needs only the cost's values (as REINFORCE's does): no graph.
    estimates = probe_gradients(
        model, batch, q, estimator, per_chunk * reference_chunks, differentiable_cost=False
    )
    chunks = estimates.unflatten(0, (reference_chunks, per_chunk)).mean(1)
    return _averaged(chunks, "bound")


def _averaged(estimates: Tensor, kind: str) -> Reference:
    """The mean of R independent estimates ``(R, ...)`` and its squared standard error."""
    noise = float(estimates.flatten(1).double().var(0).sum()) / estimates.shape[0]
    return Reference(estimates.mean(0), noise, kind, estimates)


def summarize(
    estimates: Tensor, reference: Tensor, reference_noise: float = 0.0
) -> dict[str, float]:
    """Variance, SNR, cosine and relative bias of K estimates against a reference.

    Args:
        estimates: ``(K, *shape)``, K ≥ 2 independent estimates.
        reference: ``(*shape)``, the reference gradient.
        reference_noise: tr Cov of the reference (its squared standard error).

    Returns:
        ``variance``, ``snr``, ``cosine``, ``bias``, ``reference_se`` (relative to
        ‖reference‖), ``bias_floor`` (the noise of ḡ − ĝ* relative to ‖reference‖:
        a bias well below it is not resolved) and ``norm`` (‖reference‖), as
        floats; see the module docstring.
    """
    num = estimates.shape[0]
    if num < 2:
        raise ValueError(f"the statistics need at least 2 estimates, got {num}")
    g = estimates.detach().flatten(1).double()  # (K, D)
    ref = reference.detach().flatten().double().to(g.device)
    if ref.shape[0] != g.shape[1]:
        raise ValueError(
            f"reference of shape {tuple(reference.shape)} does not match estimates "
            f"of shape {tuple(estimates.shape[1:])}"
        )
    mean = g.mean(0)
    variance = float(g.var(0).sum())
    signal = max(0.0, float(mean.square().sum()) - variance / num)
    ref_norm = float(ref.norm())
    tiny = torch.finfo(torch.float64).tiny
    cosine = torch.nn.functional.cosine_similarity(g, ref.expand_as(g), dim=1, eps=1e-30)
    bias_sq = float((mean - ref).square().sum()) - variance / num - reference_noise
    nan = float("nan")
    return {
        "variance": variance,
        "snr": math.sqrt(signal / variance) if variance > tiny else float("inf"),
        "cosine": float(cosine.mean()) if ref_norm > tiny else nan,
        "bias": math.sqrt(max(0.0, bias_sq)) / ref_norm if ref_norm > tiny else nan,
        "reference_se": math.sqrt(reference_noise) / ref_norm if ref_norm > tiny else nan,
        "bias_floor": math.sqrt(variance / num + reference_noise) / ref_norm
        if ref_norm > tiny
        else nan,
        "norm": ref_norm,
    }


def _encoder_vjp(theta: Tensor, params: list[Tensor], grads: Tensor) -> Tensor:
    """(∂θ/∂φ)ᵀ g for each of the ``(K, *θ)`` grads: ``(K, |φ|)``."""
    rows = []
    for g in grads:
        parts = torch.autograd.grad(
            theta, params, grad_outputs=g, retain_graph=True, allow_unused=True
        )
        rows.append(
            torch.cat(
                [
                    torch.zeros_like(p).flatten() if d is None else d.flatten()
                    for p, d in zip(params, parts, strict=True)
                ]
            )
        )
    return torch.stack(rows)


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Fork torch's RNG and restore the model's buffers afterwards."""
    devices = sorted({b.device.index or 0 for b in model.parameters() if b.device.type == "cuda"})
    saved = [b.detach().clone() for b in model.buffers()]
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in zip(model.buffers(), saved, strict=True):
                    buffer.copy_(value)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode, every submodule's own mode restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def gradient_statistics(
    model: nn.Module,
    batch: Batch,
    num_probes: int = 16,
    chunk_size: int | None = None,
    reference: ReferenceKind = "auto",
    max_support: int = 1024,
    reference_samples: int = 256,
    reference_chunks: int = 8,
    encoder: bool = False,
    estimator: Estimator | None = None,
) -> dict[str, float]:
    """The statistics of the model's estimator on one batch, model state untouched.

    Args:
        model: a `LatentVariableModel` (``posterior``, ``cost``, ``estimator``).
        batch: the batch (tensors with the batch dimension first).
        num_probes: K ≥ 2 estimates.
        chunk_size: probes per call (memory bound); None: all at once.
        reference: which reference (see `reference_gradient`).
        max_support: largest support enumerated by the exact reference.
        reference_samples: samples per batch element of a REINFORCE reference.
        reference_chunks: independent chunks of a REINFORCE reference.
        encoder: also the statistics of ∇_φ E_q[f] for the parameters φ that θ is
            computed from (``encoder_variance``, ...).
        estimator: the estimator probed; None: ``model.estimator``.

    Returns:
        ``variance``, ``snr``, ``cosine``, ``bias``, ``reference_se``, ``norm``
        (and ``encoder_*``), ``seconds`` (wall time of the call), floats.
    """
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 2:
        raise ValueError(f"num_probes must be an integer ≥ 2, got {num_probes!r}")
    for name in ("posterior", "cost"):
        if not callable(getattr(model, name, None)):
            raise TypeError(
                f"gradient statistics need a model with {name}(); got {type(model).__name__}"
            )
    estimator = getattr(model, "estimator", None) if estimator is None else estimator
    if not isinstance(estimator, Estimator):
        raise TypeError(f"gradient statistics need an Estimator, got {type(estimator).__name__}")
    _check_target(model, estimator, reference)
    start = time.perf_counter()
    with _untouched(model), torch.enable_grad():
        with torch.set_grad_enabled(encoder):
            q = model.posterior(dict(batch))
        probes = probe_gradients(model, batch, q, estimator, num_probes, chunk_size)
        # The reference wants the model's true cost: nested estimators (the SBN's
        # second layer) report exact-sample costs in eval mode, relaxed ones in training.
        with _eval_mode(model):
            ref = reference_gradient(
                model,
                batch,
                q,
                reference,
                max_support,
                reference_samples,
                reference_chunks,
                estimator,
            )
        stats = summarize(probes, ref.gradient, ref.noise)
        if encoder:
            params = [p for p in model.parameters() if p.requires_grad]
            theta = q.log_potentials
            enc = _encoder_vjp(theta, params, probes)
            enc_ref = _encoder_vjp(theta, params, ref.gradient.unsqueeze(0))[0]
            enc_noise = 0.0
            if ref.estimates is not None:
                chunks = _encoder_vjp(theta, params, ref.estimates).double()
                enc_noise = float(chunks.var(0).sum()) / chunks.shape[0]
            stats.update({f"encoder_{k}": v for k, v in summarize(enc, enc_ref, enc_noise).items()})
    stats["seconds"] = time.perf_counter() - start
    return stats


# ------------------------------------------------------------------ callback
class GradientStatistics(L.Callback):
    """Log the estimator's gradient variance, SNR, cosine and bias every n training steps.

    On the first training batch it sees it keeps ``num_examples`` examples;
    every ``every_n_steps`` steps (at step 0 too), before that step's update,
    it runs `gradient_statistics` on them and logs the results as
    ``grad/<name>`` at the global step to every logger of the trainer. The
    values are also kept in ``history`` (a list of dicts with a ``step``).

    Args:
        every_n_steps: measure at the steps divisible by this (≥ 1).
        num_probes: K ≥ 2 estimates per measurement.
        num_examples: examples of the fixed batch (≥ 1); the first training batch is cut to it.
        chunk_size: probes per estimator call (memory bound); None: all K at once.
        reference: ``"auto"``, ``"closed_form"``, ``"exact"``, ``"reinforce"`` or ``"bound"`` (module docstring).
        max_support: largest support per example the exact reference enumerates.
        reference_samples: samples per example of a REINFORCE reference.
        reference_chunks: its independent chunks (for the standard error).
        encoder: also the statistics with respect to the encoder's parameters.

    Raises:
        ValueError: sizes out of range.
        TypeError: a model without ``posterior``, ``cost`` and an `Estimator`.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        num_probes: int = 16,
        num_examples: int = 16,
        chunk_size: int | None = None,
        reference: ReferenceKind = "auto",
        max_support: int = 1024,
        reference_samples: int = 256,
        reference_chunks: int = 8,
        encoder: bool = False,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("every_n_steps", every_n_steps, 1),
            ("num_probes", num_probes, 2),
            ("num_examples", num_examples, 1),
            ("max_support", max_support, 1),
            ("reference_chunks", reference_chunks, 2),
            ("reference_samples", reference_samples, 2 * max(2, reference_chunks)),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
        if reference not in get_args(ReferenceKind):
            raise ValueError(
                f"reference must be one of {', '.join(get_args(ReferenceKind))}, got {reference!r}"
            )
        self.every_n_steps = every_n_steps
        self.num_probes = num_probes
        self.num_examples = num_examples
        self.chunk_size = chunk_size
        self.reference = reference
        self.max_support = max_support
        self.reference_samples = reference_samples
        self.reference_chunks = reference_chunks
        self.encoder = encoder
        self.history: list[dict[str, float]] = []
        self._batch: dict[str, Tensor] | None = None
        self._last_step: int | None = None
        self._said_zero = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name in ("posterior", "cost"):
            if not callable(getattr(pl_module, name, None)):
                raise TypeError(
                    f"GradientStatistics needs a model with {name}(); got {type(pl_module).__name__}"
                )
        if not isinstance(getattr(pl_module, "estimator", None), Estimator):
            raise TypeError(
                f"GradientStatistics: {type(pl_module).__name__}.estimator is no Estimator"
            )
        _check_target(pl_module, pl_module.estimator, self.reference)  # before any training

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._batch is None:
            if not isinstance(batch, Mapping):
                raise TypeError(
                    f"GradientStatistics needs dict batches, got {type(batch).__name__}"
                )
            self._batch = {k: _first(v, self.num_examples) for k, v in batch.items()}
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        stats = self.measure(pl_module)
        self.history.append({"step": float(step), **stats})
        if stats["norm"] == 0.0 and not self._said_zero:
            self._said_zero = True
            log.warning(
                "GradientStatistics at step %d: the reference gradient of the fixed batch is 0 "
                "(each of its examples has one structure, or the cost does not depend on z), "
                "so cosine, bias and their floors are undefined and not logged; a larger "
                "num_examples may hold longer examples",
                step,
            )
        metrics = {f"grad/{k}": v for k, v in stats.items() if k != "norm" and math.isfinite(v)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def measure(self, model: nn.Module) -> dict[str, float]:
        """The statistics on the fixed batch now (`gradient_statistics`)."""
        if self._batch is None:
            raise RuntimeError(
                "GradientStatistics has no batch yet: it keeps the first training batch"
            )
        return gradient_statistics(
            model,
            self._batch,
            num_probes=self.num_probes,
            chunk_size=self.chunk_size,
            reference=self.reference,
            max_support=self.max_support,
            reference_samples=self.reference_samples,
            reference_chunks=self.reference_chunks,
            encoder=self.encoder,
        )
