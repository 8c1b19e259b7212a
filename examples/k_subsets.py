r"""k-of-N subsets: z ∈ {0, 1}^N with exactly k ones, q(z) ∝ exp⟨θ, z⟩.

A(θ) is the k-th elementary symmetric polynomial of exp θ, computed by the
inside pass β_n(j) = β_{n-1}(j) ⊕ (β_{n-1}(j-1) ⊗ θ_n) over items n and counts
j (Xie & Ermon 2019, "Reparameterizable subset sampling"). `ChartStructure`
turns it into log Z, marginals, the MAP (the top k) and exact samples.
"""

import itertools

import torch
from torch import Tensor

from zoo.structures.chart import ChartStructure, Semiring, clamp_forbidden, forbidden_floor


class KSubsets(ChartStructure):
    """Subsets of exactly ``k`` of N items; θ ``(*batch, N)`` scores each item."""

    event_dim = 1

    def __init__(
        self,
        log_potentials: Tensor,
        k: int,
        lengths: None = None,
        validate_args: bool | None = None,
    ) -> None:
        self.k = k
        super().__init__(log_potentials, validate_args=validate_args)
        if lengths is not None or not 0 <= k <= self.max_length:
            raise ValueError(f"KSubsets: need 0 ≤ k ≤ N = {self.max_length}, no lengths; k={k}")

    def extra_args(self) -> dict:
        return {"k": self.k}

    @property
    def max_length(self) -> int:
        return self.log_potentials.shape[-1]

    def inside(self, theta: Tensor, lengths: None, semiring: Semiring) -> Tensor:
        theta = clamp_forbidden(theta, self.chart_size)
        none = theta.new_full((theta.shape[0], 1), forbidden_floor(theta.dtype, self.chart_size))
        beta = torch.cat([torch.zeros_like(none), none.expand(-1, self.k)], -1)  # β_0(j)
        for item in theta.unbind(-1):  # skip item n, or take it
            take = torch.cat([none, beta[:, :-1] + item.unsqueeze(-1)], -1)
            beta = semiring(torch.stack([beta, take], -1), -1)
        return beta[:, -1]

    def enumerate_support(self, expand: bool = True) -> Tensor:
        n, theta = self.max_length, self.log_potentials
        rows = [[float(i in s) for i in range(n)] for s in itertools.combinations(range(n), self.k)]
        z = torch.tensor(rows, dtype=theta.dtype, device=theta.device).reshape(-1, n)
        return self.broadcast_support(z, expand)
