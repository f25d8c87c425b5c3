"""Batch samplers: training's infinite seeded stream of ``(index, sample_seed)`` batches, grouped by
aspect ratio as detectron2's ``AspectRatioGroupedDataset``; evaluation's contiguous, ordered,
disjoint slice per rank."""

from __future__ import annotations

from itertools import count, islice
from typing import Iterator, Sequence

import torch


class GroupedInfiniteBatchSampler(torch.utils.data.Sampler):
    """Yields ``[(index, sample_seed), ...]`` lists of ``batch_size`` (per rank) forever;
    ``group_ids``: per index its aspect-ratio group. Epoch ``e`` is a permutation and a sample seed
    per position drawn from ``(seed, e)``; each rank takes every ``world_size``-th from ``rank`` on;
    ``start_iter=k`` skips k batches without loading data, so a resumed run sees the batches of an
    uninterrupted one."""

    def __init__(
        self,
        group_ids: Sequence[int],
        *,
        batch_size: int,
        seed: int,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if world_size > len(group_ids):  # an empty dataset too: it would never yield a batch
            raise ValueError(
                f"{len(group_ids)} images cannot be split over {world_size} ranks; use more images "
                f"(check the data.* subset settings)"
            )
        self.group_ids = [int(g) for g in group_ids]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_iter = int(start_iter)
        self.rank = rank
        self.world_size = world_size

    def _batches(self) -> Iterator[list[tuple[int, int]]]:
        n = len(self.group_ids)
        buffers: dict[int, list[tuple[int, int]]] = {}
        for epoch in count():
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63 - 1))
            order = torch.randperm(n, generator=generator).tolist()
            seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
            for sample in zip(
                order[self.rank :: self.world_size], seeds[self.rank :: self.world_size]
            ):
                buffer = buffers.setdefault(self.group_ids[sample[0]], [])
                buffer.append(sample)
                if len(buffer) == self.batch_size:
                    yield buffer[:]
                    buffer.clear()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return islice(self._batches(), self.start_iter, None)


def inference_indices(num_images: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Rank ``rank``'s contiguous slice of ``range(num_images)``; slices are disjoint and cover
    everything."""
    return torch.tensor_split(torch.arange(num_images), world_size)[rank].tolist()
