"""Where every random choice of a stage comes from: its seed and where in the stage the choice is made.

`derive_seed(seed, "sample", step)` gives the seed of one draw (a batch of samples, an epoch's order, a
minibatch order), so a resumed stage that reaches the same place draws the same numbers, and no two places
share a stream by accident (as `seed * 1_000_003 + step` schemes can).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch


def derive_seed(seed: int, *where: int | str) -> int:
    """A 63-bit seed for the draw at `where` (names and counters) of a stage seeded with `seed`."""
    digest = hashlib.sha256(repr((int(seed), *where)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, *where: int | str) -> torch.Generator:
    """A (CPU) torch generator seeded for the draw at `where`: for orders and permutations, not model sampling."""
    return torch.Generator().manual_seed(derive_seed(seed, *where))


def epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of items in one epoch."""
    return torch.randperm(num_items, generator=generator(seed, "epoch", epoch)).tolist()


def batch_stream(sizes: Sequence[int], batch_size: int, seed: int, start: int = 0) -> Iterator[list[int]]:
    """Item indices of each batch, batch after batch, over endless seeded epochs.

    Items are visited epoch by epoch (a fresh permutation each), so each is seen once per epoch; epochs
    follow each other without a break, so a batch may end one epoch and start the next. A batch takes whole
    items until their sizes add up to at least `batch_size` (`sizes` all 1: exactly `batch_size` items; a
    reward model's prompt groups: every pair of a prompt in one batch). `start` skips that many batches, so a
    resumed stage sees exactly the batches it would have seen.
    """
    if not sizes:
        raise ValueError("batch_stream needs at least one item")
    epoch, order, position, number = 0, [], 0, 0
    while True:
        batch, filled = [], 0
        while filled < batch_size:
            if position == len(order):
                order, position = epoch_order(len(sizes), seed, epoch), 0
                epoch += 1
            batch.append(order[position])
            filled += sizes[order[position]]
            position += 1
        if number >= start:
            yield batch
        number += 1
