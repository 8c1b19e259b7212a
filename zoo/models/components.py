"""Plain ``nn.Module`` parts of the models: multilayer perceptrons and image grids.

Nothing here knows about Lightning, structures or estimators, so these parts
can be reused (and benchmarked) in a bare PyTorch loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "bernoulli_nll", "image_grid"]


class MLP(nn.Sequential):
    """Linear layers with ReLU between them (none after the last).

    Args:
        in_features: width of the input.
        hidden_sizes: widths of the hidden layers, in order; empty for one linear map.
        out_features: width of the output.

    Raises:
        ValueError: a width below 1.

    Example:
        >>> import torch
        >>> MLP(784, (512, 256), 200)(torch.zeros(3, 784)).shape
        torch.Size([3, 200])
    """

    def __init__(self, in_features: int, hidden_sizes: Sequence[int], out_features: int) -> None:
        sizes = [in_features, *hidden_sizes, out_features]
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"MLP widths must be integers ≥ 1, got {sizes}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i > 0:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(a, b))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """−log p(target | logits) of independent Bernoulli pixels, summed over the last dimension.

    Args:
        logits: ``(*sample, B, D)`` logits of p(pixel = 1).
        target: ``(B, D)`` 0/1 values; broadcast over the leading sample dimensions.

    Returns:
        ``(*sample, B)`` negative log-likelihoods in nats.
    """
    return F.binary_cross_entropy_with_logits(
        logits, target.expand_as(logits), reduction="none"
    ).sum(-1)


def image_grid(images: Tensor, ncol: int = 8, padding: int = 2) -> Tensor:
    """Tile grey images into one ``(1, H', W')`` picture, as TensorBoard's ``add_image`` takes.

    Args:
        images: ``(n, H, W)`` values in [0, 1].
        ncol: images per row.
        padding: pixels of black border between images.

    Returns:
        ``(1, rows·(H + padding) + padding, ncol·(W + padding) + padding)``.
    """
    n, height, width = images.shape
    ncol = max(1, min(ncol, n))
    rows = -(-n // ncol)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_zeros(rows * cell_h + padding, ncol * cell_w + padding)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = padding + r * cell_h, padding + c * cell_w
        grid[top : top + height, left : left + width] = images[i]
    return grid.unsqueeze(0)
