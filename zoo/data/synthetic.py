"""Synthetic binary "images": a seeded mixture of noisy random prototypes. Needs no files."""

from __future__ import annotations

import torch

from zoo.data.base import BinaryImageDataset, Split, ZooDataModule, _check_int


def sample_prototype_mixture(
    num: int, dim: int, num_prototypes: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw prototypes, then ``num`` noisy copies of them.

    Each prototype is a uniformly random 0/1 vector of length ``dim``; each
    example picks a prototype uniformly at random and flips every bit with
    probability ``noise``.

    Returns:
        ``(data, components)``: ``(num, dim)`` uint8 0/1 and ``(num,)`` int64.
    """
    prototypes = torch.randint(0, 2, (num_prototypes, dim), generator=generator, dtype=torch.uint8)
    components = torch.randint(0, num_prototypes, (num,), generator=generator)
    flips = (torch.rand(num, dim, generator=generator) < noise).to(torch.uint8)
    return prototypes[components] ^ flips, components


class SyntheticBinaryDataModule(ZooDataModule):
    """Random binary vectors from a fixed, seeded mixture of prototypes.

    The batch format is that of ``MNISTDataModule``: ``{"x": (B, dim)}``, or
    ``{"x": (B, dim // 2), "y": (B, dim - dim // 2)}`` for ``split="halves"``,
    float32 in {0, 1}. The same ``seed`` gives the same data and the same
    training order. Meant for smoke tests and quick experiments.

    Args:
        num_train: Training examples.
        num_val: Validation examples.
        num_test: Test examples.
        dim: Length of each vector (784 mimics MNIST).
        num_prototypes: Components of the mixture.
        noise: Probability that a bit differs from its prototype, in [0, 0.5].
        split: ``"full"``: the whole vector is ``x``. ``"halves"``: the first
            ``dim // 2`` entries are ``x``, the rest ``y``.
        batch_size: Examples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: Seeds the prototypes, the examples and the training order.
    """

    def __init__(
        self,
        num_train: int = 1000,
        num_val: int = 200,
        num_test: int = 200,
        dim: int = 784,
        num_prototypes: int = 10,
        noise: float = 0.1,
        split: Split = "full",
        batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(split=split, batch_size=batch_size, num_workers=num_workers, seed=seed)
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            _check_int(name, value, minimum=1)
        _check_int("dim", dim, minimum=2 if split == "halves" else 1)
        _check_int("num_prototypes", num_prototypes, minimum=1)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 0.5:
            raise ValueError(f"noise must be a float in [0, 0.5], got {noise!r}")
        self.save_hyperparameters()
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self.num_prototypes = num_prototypes
        self.noise = float(noise)
        self._dim = dim

    @property
    def dim(self) -> int:
        """Length of each full vector."""
        return self._dim

    def setup(self, stage: str | None = None) -> None:
        """Generate all three splits (from one seeded generator)."""
        if self.train_set is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        total = self.num_train + self.num_val + self.num_test
        data, _ = sample_prototype_mixture(
            total, self._dim, self.num_prototypes, self.noise, generator
        )
        train, val, test = torch.split(data, [self.num_train, self.num_val, self.num_test])
        self.train_set = BinaryImageDataset(train.contiguous(), split=self.split)
        self.val_set = BinaryImageDataset(val.contiguous(), split=self.split)
        self.test_set = BinaryImageDataset(test.contiguous(), split=self.split)
