r"""The `Structure` base: an exponential family over 0/1 indicator tensors.

A structure is a distribution over discrete objects z ∈ Z ⊆ {0, 1}^E, each
written as an indicator tensor over *parts* (one-hot cells, chain transitions,
arcs, spans), scored by log-potentials θ of the same shape:

    q(z) = exp(⟨θ, z⟩ - A(θ)),    A(θ) = log Σ_{z ∈ Z} exp⟨θ, z⟩.

Everything exact follows from two oracles, the log-partition A(θ) and the MAP
argmax_z ⟨θ, z⟩:

* marginals μ = E_q[z] = ∂A/∂θ (by autograd unless a subclass does better),
* log q(z) = ⟨θ, z⟩ - A(θ),
* entropy H(q) = A(θ) - ⟨θ, μ⟩,
* KL(p ‖ q) = A(θ_q) - A(θ_p) - ⟨μ_p, θ_q - θ_p⟩ (registered with `register_kl`).

**One pass for several queries.** A model that asks one structure for more
than one of A(θ), μ and H (a KL from the entropy and the marginals, an
estimator that also wants the marginals) calls `Structure.cached` once: the
instance then memoizes `log_partition`, `marginals` and `entropy` (for
every structure, the subclasses' own versions included), so μ comes from one
backward of the one A(θ) and H from that A(θ) and μ; a structure with a
joint pass (`LinearChainCRF`: one forward-backward gives all three) fills
all three at once. The memoized tensors keep their autograd graph, gradients
(second order included) are those of the separate calls, and a step that
backpropagates once through them costs one pass. A structure not asked to
cache computes every query afresh, as before.

A subclass sets `event_dim`, writes `log_partition` and `argmax` (and, where it
can, an exact `sample` and `enumerate_support`), and gets the rest. Every
method accepts any number of leading batch dimensions, which is how the
estimators vectorize over samples: S perturbed copies of θ are one structure
of batch shape (S, *batch).

Parts may carry θ = -inf (a forbidden part); every formula here treats
``0 · (-inf)`` as 0, so forbidden parts never produce NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl

from zoo.structures.noise import gumbel_noise

__all__ = ["Structure", "sequence_mask"]

_MEMOIZED = ("log_partition", "marginals", "entropy")
"""The exact queries a `Structure.cached` instance computes once (per grad mode)."""


def _memoized(name: str, method: Any) -> Any:
    """``method`` looked up in, and stored into, the instance's memo when it has one."""

    def wrapper(self: Structure) -> Tensor:
        memo = self._memo
        if memo is None:
            return method(self)
        key = (name, torch.is_grad_enabled())
        if key not in memo:
            memo[key] = method(self)
        return memo[key]

    wrapper.__name__ = method.__name__
    wrapper.__qualname__ = method.__qualname__
    wrapper.__doc__ = method.__doc__
    wrapper.__wrapped__ = method  # type: ignore[attr-defined]
    return wrapper


def sequence_mask(lengths: Tensor, size: int) -> Tensor:
    """Boolean mask ``(*lengths.shape, size)``: True at positions ``< lengths``."""
    return torch.arange(size, device=lengths.device) < lengths.unsqueeze(-1)


def _at_most_zero(x: Tensor) -> Tensor:
    """min(x, 0) in value, the identity in gradient.

    log q(z) ≤ 0 holds exactly, but ``score - A`` of two numbers of magnitude
    1e6 rounds to small positive values in float32; this removes the rounding
    without cutting the gradient (a clamp would zero it).
    """
    return x - x.detach().clamp(min=0)


def _at_least_zero(x: Tensor) -> Tensor:
    """max(x, 0) in value, the identity in gradient (entropies and KLs)."""
    return x - x.detach().clamp(max=0)


def _check_finite_or_forbidden(name: str, theta: Tensor) -> None:
    """ValueError naming the first NaN or +inf of θ; -inf (a forbidden part) is allowed."""
    for bad, what in ((torch.isnan(theta), "NaN"), (torch.isposinf(theta), "+inf")):
        if bool(bad.any()):
            index = tuple(bad.nonzero()[0].tolist())
            raise ValueError(
                f"{name}: log_potentials of shape {tuple(theta.shape)} contain {what} "
                f"(first at index {index}); expected real numbers or -inf (a forbidden part)"
            )


def _is_int(d: Any) -> bool:
    if isinstance(d, Tensor):
        return d.dim() == 0 and not (
            d.is_floating_point() or d.is_complex() or d.dtype == torch.bool
        )
    return isinstance(d, int) and not isinstance(d, bool)


def _as_size(sample_shape: int | Sequence[int] | torch.Size) -> torch.Size:
    """A sample shape as torch.Size; TypeError for non-integers, ValueError for negatives.

    ``0`` (or any zero entry) is allowed and gives an empty leading dimension.
    """
    sequence = isinstance(sample_shape, (Sequence, torch.Size)) and not isinstance(
        sample_shape, str
    )
    dims = sample_shape if sequence else (sample_shape,)
    if not all(_is_int(d) for d in dims):
        raise TypeError(f"sample_shape must be an int or a sequence of ints, got {sample_shape!r}")
    size = torch.Size(int(d) for d in dims)
    if any(d < 0 for d in size):
        raise ValueError(f"sample_shape must be nonnegative, got {tuple(size)}")
    return size


class Structure(Distribution):
    """A distribution q(z) ∝ exp⟨θ, z⟩ over 0/1 indicator tensors z.

    Args:
        log_potentials: θ, shape ``(*batch_shape, *event_shape)``; the last
            `event_dim` dimensions are one event. ``-inf`` forbids a part.
        lengths: optional ``(*batch_shape)`` integer sizes (1 ≤ length ≤ N) for
            padded batches; parts beyond a length are 0 in every z, marginal
            and gradient.
        validate_args: check θ for NaN and lengths for range (default: torch's
            global `Distribution` setting, on unless ``python -O``).

    Raises:
        ValueError: θ of the wrong rank or shape, NaN in θ, lengths of the wrong
            dtype, shape or range. The message names the value.
    """

    event_dim: ClassVar[int] = 1
    """How many trailing dimensions of θ form one event."""

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.boolean
    has_rsample = True
    has_enumerate_support = True

    _memo: dict[tuple[str, bool], Any] | None = None
    """What `cached` keeps: ``{(query, grad enabled): result}``; None: nothing is kept."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Every structure's own exact queries go through the memo (a no-op unless `cached`).
        for name in _MEMOIZED:
            method = cls.__dict__.get(name)
            if method is not None and not hasattr(method, "__wrapped__"):
                setattr(cls, name, _memoized(name, method))

    def __init__(
        self,
        log_potentials: Tensor,
        lengths: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        name = type(self).__name__
        if not isinstance(log_potentials, Tensor) or not log_potentials.is_floating_point():
            raise ValueError(
                f"{name}: log_potentials must be a floating-point tensor, "
                f"got {type(log_potentials).__name__}"
                + (
                    f" of dtype {log_potentials.dtype}"
                    if isinstance(log_potentials, Tensor)
                    else ""
                )
            )
        if log_potentials.dim() < self.event_dim:
            raise ValueError(
                f"{name}: log_potentials must have at least {self.event_dim} dimensions "
                f"{self.event_layout()}, got shape {tuple(log_potentials.shape)}"
            )
        event_shape = log_potentials.shape[log_potentials.dim() - self.event_dim :]
        batch_shape = log_potentials.shape[: log_potentials.dim() - self.event_dim]
        self.check_event_shape(event_shape)
        validate = Distribution._validate_args if validate_args is None else validate_args
        # One reduction finds both NaN and +inf: the sum is then NaN or +inf
        # (a -inf, a forbidden part, alone makes it -inf, which passes). Only
        # then, or on a finite overflow, are the exact tests run. ~15x cheaper
        # than isnan().any() | isposinf().any().
        if validate and log_potentials.numel() > 0:
            total = log_potentials.detach().sum()
            if not bool(total < math.inf):
                _check_finite_or_forbidden(name, log_potentials)
        self.log_potentials = log_potentials
        self.lengths = self._check_lengths(lengths, batch_shape, validate)
        super().__init__(batch_shape, event_shape, validate_args=False)
        self._validate_args = validate

    # ------------------------------------------------------------------ set-up
    @classmethod
    def event_layout(cls) -> str:
        """A few words on the layout of θ, e.g. ``"(*batch, N, K)"``, for error messages.

        Override it in a new structure; the default says nothing.
        """
        return ""

    def check_event_shape(self, event_shape: torch.Size) -> None:
        """Raise ValueError if ``event_shape`` (θ's last `event_dim` sizes) cannot be an event.

        Override it in a new structure whose event has constraints (square
        blocks, at least one position); the message should name the shape and
        what was expected. Called once by the constructor, before anything else
        reads θ. The default accepts every shape.
        """

    @property
    def max_length(self) -> int:
        """N, the size that `lengths` counts in (positions, words, variables)."""
        raise NotImplementedError(f"{type(self).__name__} does not support lengths")

    def _check_lengths(
        self, lengths: Tensor | None, batch_shape: torch.Size, validate: bool
    ) -> Tensor | None:
        if lengths is None:
            return None
        name = type(self).__name__
        lengths = torch.as_tensor(lengths, device=self.log_potentials.device)
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise ValueError(
                f"{name}: lengths must be an integer tensor, got dtype {lengths.dtype}"
            )
        # No broadcasting: lengths (1,) beside a batch of 2 is a mistake, not a shorthand.
        if lengths.shape != batch_shape:
            raise ValueError(
                f"{name}: lengths of shape {tuple(lengths.shape)} do not match the batch shape "
                f"{tuple(batch_shape)} of log_potentials {tuple(self.log_potentials.shape)}; "
                f"expected one length per batch element, shape {tuple(batch_shape)}"
            )
        if validate and lengths.numel() > 0:
            low, high, n = int(lengths.min()), int(lengths.max()), self.max_length
            if low < 1 or high > n:
                raise ValueError(
                    f"{name}: lengths must lie in [1, {n}], got values from {low} to {high}"
                )
        return lengths

    def cached(self) -> Structure:
        """This structure, memoizing `log_partition`, `marginals` and `entropy`; returns ``self``.

        For a model that asks for more than one of them per step (a KL from H and
        μ, an estimator that wants μ as well): each is computed once per grad
        mode, μ from the backward of the memoized A(θ), H from A(θ) and μ, or
        all three from one joint pass where the structure has one
        (`LinearChainCRF`). The memoized tensors keep their graph, so gradients
        are those of separate calls; a graph that has been backpropagated (and
        freed) cannot be reused, so cache a structure for one step, not longer.
        New structures made from this one (`with_potentials`, indexing) start
        uncached.
        """
        if self._memo is None:
            self._memo = {}
        return self

    def _memo_get(self, name: str) -> Tensor | None:
        """The memoized result of ``name`` in the current grad mode, or None."""
        memo = self._memo
        return None if memo is None else memo.get((name, torch.is_grad_enabled()))

    def _memo_put(self, **results: Tensor) -> None:
        """Store results (by query name) for the current grad mode; a no-op uncached."""
        if self._memo is not None:
            grad = torch.is_grad_enabled()
            for name, value in results.items():
                self._memo.setdefault((name, grad), value)

    def extra_args(self) -> dict[str, Any]:
        """Constructor arguments beyond θ and lengths, by name (flags such as ``multiroot``).

        Override it in a structure whose constructor takes more than
        ``(log_potentials, lengths, validate_args)``: `with_potentials`,
        indexing, `reshape_batch` and `expand` rebuild the structure with
        ``type(self)(θ, lengths=..., **self.extra_args())``, and KL compares
        them (two structures of one kind with different flags have no KL).
        """
        return {}

    def with_potentials(self, theta: Tensor, validate_args: bool | None = None) -> Structure:
        """The same kind of structure (same lengths and flags) with new potentials θ.

        θ may carry extra leading batch dimensions, e.g. ``(S, *batch, *event)``
        for S perturbed copies; the lengths broadcast to them.
        """
        lengths = None
        if self.lengths is not None:
            lengths = self.lengths.expand(theta.shape[: theta.dim() - self.event_dim])
        return type(self)(theta, lengths=lengths, validate_args=validate_args, **self.extra_args())

    def _internal(self, theta: Tensor) -> Structure:
        # Structures built from already validated θ (perturbed copies) skip the
        # NaN check: it costs a device synchronisation per call.
        return self.with_potentials(theta, validate_args=False)

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> Structure:
        batch_shape = torch.Size(batch_shape)
        return self.with_potentials(self.log_potentials.expand(batch_shape + self.event_shape))

    def __getitem__(self, index: Any) -> Structure:
        """Index the batch dimensions (never the event ones): ``q[0]``, ``q[1:3]``, ``q[mask]``."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > len(self.batch_shape) or any(i is Ellipsis or i is None for i in index):
            raise ValueError(
                f"{type(self).__name__}: index {index!r} must address only the "
                f"{len(self.batch_shape)} batch dimensions (no Ellipsis or None)"
            )
        lengths = None if self.lengths is None else self.lengths[index]
        return type(self)(
            self.log_potentials[index], lengths=lengths, validate_args=False, **self.extra_args()
        )

    def reshape_batch(self, shape: Sequence[int]) -> Structure:
        """The same structure with the batch dimensions reshaped (e.g. ``(-1,)`` to flatten)."""
        theta = self.log_potentials.reshape(*shape, *self.event_shape)
        lengths = (
            None
            if self.lengths is None
            else self.lengths.reshape(theta.shape[: theta.dim() - self.event_dim])
        )
        return type(self)(theta, lengths=lengths, validate_args=False, **self.extra_args())

    def flatten_batch(self) -> tuple[Tensor, Tensor | None]:
        """θ as ``(B, *event)`` and lengths as ``(B,)`` (or None), B the product of the batch shape.

        For a structure's own computations, which are simplest on one batch
        dimension; `unflatten_batch` restores the batch shape of a result.
        """
        # An explicit B: reshape(-1, ...) is ambiguous for an empty batch or event.
        # One batch dimension already: no reshape (each adds an autograd node).
        if len(self.batch_shape) == 1:
            return self.log_potentials, self.lengths
        size = math.prod(self.batch_shape)
        theta = self.log_potentials.reshape(size, *self.event_shape)
        lengths = None if self.lengths is None else self.lengths.reshape(size)
        return theta, lengths

    def unflatten_batch(self, x: Tensor) -> Tensor:
        """Undo `flatten_batch` on the leading dimension of ``x``: ``(B, ...)`` → ``(*batch, ...)``."""
        # torch.Size concatenation also covers an empty batch shape.
        if len(self.batch_shape) == 1:
            return x
        return x.reshape(self.batch_shape + x.shape[1:])

    # ---------------------------------------------------------- exact oracles
    def log_partition(self) -> Tensor:
        """A(θ) = log Σ_z exp⟨θ, z⟩, shape ``(*batch)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_partition()")

    def argmax(self) -> Tensor:
        """The MAP structure argmax_z ⟨θ, z⟩ as an indicator tensor ``(*batch, *event)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement argmax()")

    def marginals(self) -> Tensor:
        """μ = E_q[z] = ∂A/∂θ, shape ``(*batch, *event)``.

        Differentiable in θ when gradients are on (computed with
        ``create_graph=True``), so a relaxed sample (the marginals of perturbed,
        tempered potentials) carries the gradient of the relaxation. Works under
        ``torch.no_grad`` and ``torch.inference_mode`` too.
        """
        theta = self.log_potentials
        if torch.is_grad_enabled() and theta.requires_grad:
            (mu,) = torch.autograd.grad(
                self.log_partition().sum(), theta, create_graph=True, allow_unused=True
            )
            return torch.zeros_like(theta) if mu is None else mu
        # No graph wanted: differentiate a detached copy. Inference tensors
        # cannot enter autograd, so leave inference mode and clone first.
        with torch.inference_mode(False), torch.enable_grad():
            leaf = theta.detach().clone().requires_grad_(True)
            (mu,) = torch.autograd.grad(
                self._internal(leaf).log_partition().sum(), leaf, allow_unused=True
            )
        return torch.zeros_like(theta) if mu is None else mu.detach()

    def score(self, value: Tensor) -> Tensor:
        """⟨θ, z⟩ summed over the parts: ``(*sample, *batch, *event)`` → ``(*sample, *batch)``.

        ``z`` may be relaxed (fractional); a part with z = 0 contributes 0 even where θ = -inf.
        """
        self._check_value(value)
        theta = torch.where(value != 0, self.log_potentials, 0.0)
        dims = tuple(range(-self.event_dim, 0))
        return (theta * value).sum(dims)

    def _check_value(self, value: Tensor) -> None:
        if value.shape[value.dim() - self.event_dim :] != self.event_shape:
            raise ValueError(
                f"{type(self).__name__}: value of shape {tuple(value.shape)} does not end with "
                f"the event shape {tuple(self.event_shape)}"
            )

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(z) = ⟨θ, z⟩ - A(θ): ``(*sample, *batch, *event)`` → ``(*sample, *batch)``.

        -inf for every z where the support is empty (A(θ) = -inf).
        """
        log_z = self.log_partition()
        log_p = self.score(value) - log_z
        return _at_most_zero(torch.where(log_z == -math.inf, -math.inf, log_p))

    def entropy(self) -> Tensor:
        """H(q) = A(θ) - ⟨θ, μ⟩, shape ``(*batch)``; 0 where the support is empty."""
        log_z = self.log_partition()
        h = _at_least_zero(log_z - self.score(self.marginals()))
        return torch.where(log_z == -math.inf, 0.0, h)

    for _name in _MEMOIZED:
        locals()[_name] = _memoized(_name, locals()[_name])
    del _name

    @property
    def mean(self) -> Tensor:
        return self.marginals()

    @property
    def mode(self) -> Tensor:
        return self.argmax()

    # -------------------------------------------------------------- sampling
    def enumerate_support(self, expand: bool = True) -> Tensor:
        """Every z in the support, ``(|Z|, *batch, *event)``; small spaces only.

        Batch elements must share one support (equal lengths).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot enumerate its support")

    def enumerate_padded_support(self) -> tuple[Tensor, Tensor]:
        """The support of every batch element, padded to one size when lengths differ.

        Returns:
            ``(support, valid)``: support ``(M, *batch, *event)`` with M the
            largest support size in the batch, and ``valid`` ``(M, *batch)``
            marking the rows that are real support elements. Padding rows
            repeat a real element (so any cost is finite on them) and must be
            given weight 0. Without lengths, or with equal ones, this is
            `enumerate_support` with every row valid.
        """
        if (
            self.lengths is None
            or self.lengths.numel() == 0
            or bool((self.lengths == self.lengths.reshape(-1)[0]).all())
        ):
            support = self.enumerate_support()
            return support, support.new_ones(
                support.shape[: 1 + len(self.batch_shape)], dtype=torch.bool
            )
        flat = self.reshape_batch((-1,))
        groups = []
        for value in flat.lengths.unique():
            index = (flat.lengths == value).nonzero().squeeze(1)
            groups.append((index, flat[index].enumerate_support()))  # (Z_g, n_g, *event)
        size = max(support.shape[0] for _, support in groups)
        out = self.log_potentials.new_zeros(size, flat.batch_shape[0], *self.event_shape)
        valid = torch.zeros(size, flat.batch_shape[0], dtype=torch.bool, device=out.device)
        for index, support in groups:
            out[:, index] = support[:1]
            out[: support.shape[0], index] = support
            valid[: support.shape[0], index] = True
        return (
            out.reshape(size, *self.batch_shape, *self.event_shape),
            valid.reshape(size, *self.batch_shape),
        )

    def support_length(self) -> int:
        """The one length every batch element has, for `enumerate_support`.

        `max_length` without lengths (or with an empty batch).

        Raises:
            ValueError: the lengths differ across the batch (enumerate one batch
                element at a time, or use `enumerate_padded_support`).
        """
        if self.lengths is None or self.lengths.numel() == 0:
            return self.max_length
        low, high = int(self.lengths.min()), int(self.lengths.max())
        if low != high:
            raise ValueError(
                f"{type(self).__name__}.enumerate_support needs equal lengths across the batch, "
                f"got values from {low} to {high}; enumerate one batch element at a time"
            )
        return low

    def broadcast_support(self, z: Tensor, expand: bool = True) -> Tensor:
        """One batch element's support ``(|Z|, *event)`` laid over the batch.

        The tail of every `enumerate_support`: a structure lists its support
        once (at `support_length`) and returns ``self.broadcast_support(z, expand)``.

        Returns:
            ``(|Z|, *batch, *event)`` (a view, no copy) with ``expand``, else
            ``(|Z|, 1, …, 1, *event)``, as `torch.distributions` asks.
        """
        z = z.reshape(z.shape[0], *([1] * len(self.batch_shape)), *self.event_shape)
        return z.expand(z.shape[0], *self.batch_shape, *self.event_shape) if expand else z

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        """Exact samples, ``(*sample_shape, *batch, *event)``; never differentiable.

        The generic fallback draws from the enumerated support (exact, small
        spaces only); structures override it with their own exact sampler.
        """
        shape = _as_size(sample_shape)
        if math.prod(shape) == 0 or math.prod(self.batch_shape) == 0:
            return self.log_potentials.new_zeros(shape + self.batch_shape + self.event_shape)
        support = self.enumerate_support()  # (|Z|, *batch, *event)
        probs = self.log_prob(support).exp().reshape(support.shape[0], -1)  # (|Z|, B)
        empty = probs.sum(0) == 0
        if bool(empty.any()):
            raise ValueError(
                f"{type(self).__name__}.sample: the support is empty (every structure uses a "
                f"forbidden -inf part) at flat batch index {empty.nonzero()[:, 0].tolist()}"
            )
        index = torch.multinomial(probs.T, math.prod(shape), replacement=True)  # (B, S)
        flat = support.reshape(support.shape[0], probs.shape[1], -1)  # (|Z|, B, E)
        batch = torch.arange(probs.shape[1], device=index.device)
        z = flat[index.T, batch]  # (S, B, E)
        return z.reshape(*shape, *self.batch_shape, *self.event_shape)

    def perturb_noise(self, sample_shape: int | Sequence[int] | torch.Size = ()) -> Tensor:
        """The structure's perturbation noise G, ``(*sample_shape, *batch, *event)``.

        I.i.d. Gumbel(0, 1) on every part; structures whose parts encode only
        one side of a choice (Bernoulli) override it.
        """
        shape = _as_size(sample_shape) + self.log_potentials.shape
        theta = self.log_potentials
        return gumbel_noise(shape, dtype=theta.dtype, device=theta.device)

    def conditional_perturb_noise(
        self, hard: Tensor, sample_shape: int | Sequence[int] | torch.Size = ()
    ) -> Tensor:
        """Perturbation noise conditioned on its MAP: G ~ `perturb_noise` given argmax(θ + G) = hard.

        An optional hook for estimators that integrate the noise out given a
        sample, such as Gumbel-Rao (Paulus, Maddison & Krause 2021). Drawing
        ``hard ~ q`` and then G with this method gives G distributed exactly as
        `perturb_noise`; every such G reproduces ``hard`` as argmax(θ + G).

        Args:
            hard: exact samples, ``(*S, *batch, *event)`` (S may be empty).
            sample_shape: further leading dimensions, draws of G per ``hard``.

        Returns:
            G, ``(*sample_shape, *S, *batch, *event)``, in θ's dtype.

        Raises:
            NotImplementedError: the structure has no conditional sampler
                (today `Categorical` and `Bernoulli` have one).
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no conditional_perturb_noise: Gumbel noise conditioned "
            f"on a structured MAP has no known exact sampler; it is implemented by Categorical "
            f"and Bernoulli"
        )

    def rsample_with_hard(
        self,
        sample_shape: int | Sequence[int] | torch.Size = (),
        temperature: float | Tensor = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """A hard and a relaxed sample drawn with the same noise G.

        Returns:
            ``(hard, soft)``, each ``(*sample_shape, *batch, *event)``:
            ``hard = argmax(θ + G)`` (not differentiable) and
            ``soft = marginals((θ + G) / τ)`` (differentiable in θ). For one-hot
            and Bernoulli structures ``hard`` is an exact sample and ``soft`` the
            Gumbel-Softmax (Concrete) relaxation; for chains and trees ``soft`` is
            the stochastic softmax trick of Paulus et al. (2020).
        """
        perturbed = self._perturbed(sample_shape)
        hard = self._internal(perturbed.detach()).argmax().to(self.log_potentials.dtype)
        soft = self._internal(perturbed / temperature).marginals()
        return hard, soft.to(self.log_potentials.dtype)

    def _perturbed(self, sample_shape: int | Sequence[int] | torch.Size) -> Tensor:
        """θ + G in at least float32: (θ + G)/τ overflows float16 at |θ| ~ 1e3, τ = 0.01."""
        theta = self.log_potentials
        work = torch.promote_types(theta.dtype, torch.float32)
        return theta.to(work) + self.perturb_noise(sample_shape).to(work)

    def rsample(
        self,
        sample_shape: int | Sequence[int] | torch.Size = (),
        temperature: float | Tensor = 1.0,
    ) -> Tensor:
        """A relaxed, reparameterized sample ``marginals((θ + G) / τ)``.

        Computed in at least float32 and cast back to θ's dtype, so that
        half-precision θ of large magnitude at a small τ gives no NaN.
        """
        perturbed = self._perturbed(sample_shape)
        return self._internal(perturbed / temperature).marginals().to(self.log_potentials.dtype)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.extra_args().items())
        lengths = "" if self.lengths is None else ", lengths=..."
        return (
            f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)}{lengths}{extra})"
        )


@register_kl(Structure, Structure)
def _kl_structure(p: Structure, q: Structure) -> Tensor:
    """KL(p ‖ q) of two structures of one kind, from log-partitions and marginals."""
    if type(p) is not type(q) or p.extra_args() != q.extra_args():
        raise NotImplementedError(
            f"KL is defined between structures of one kind, got {p!r} and {q!r}"
        )
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"KL: event shapes differ: {tuple(p.event_shape)} and {tuple(q.event_shape)}"
        )
    if (p.lengths is None) != (q.lengths is None) or (
        p.lengths is not None and not torch.equal(p.lengths, q.lengths)
    ):
        raise ValueError("KL: both structures must have the same lengths")
    mu = p.marginals()
    diff = torch.where(mu != 0, p.log_potentials - q.log_potentials, 0.0)
    dims = tuple(range(-p.event_dim, 0))
    log_zp, log_zq = p.log_partition(), q.log_partition()
    kl = _at_least_zero((mu * diff).sum(dims) - log_zp + log_zq)
    # An empty p (no z at all) is the empty sum, 0; an empty q beside a real p is +inf.
    kl = torch.where(log_zq == -math.inf, math.inf, kl)
    return torch.where(log_zp == -math.inf, 0.0, kl)
