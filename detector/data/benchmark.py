"""Loader throughput: images per second delivered by the real loader (decode + transforms + collate).

Called by ``tools/benchmark.py``. The first batch (worker start-up) is timed separately and not counted.
"""
from __future__ import annotations

import time

from .build import build_dataset, make_dataloader


def loader_throughput(cfg, split: str = "train", num_workers: int = 0, num_batches: int = 50) -> dict:
    """Time ``num_batches`` batches of ``cfg.train.batch_size`` images of ``split`` with ``num_workers`` workers.

    Returns ``{"split", "num_workers", "batch_size", "num_batches", "images", "seconds", "images_per_s",
    "batches_per_s", "first_batch_s", "dataset_images"}``; a finite (val) loader may end before ``num_batches``.
    """
    dataset = build_dataset(cfg, split)
    loader = make_dataloader(dataset, train=split == "train", batch_size=cfg.train.batch_size,
                             num_workers=num_workers, seed=cfg.seed,
                             group_by_aspect_ratio=cfg.data.loader.aspect_ratio_grouping,
                             pin_memory=cfg.data.loader.pin_memory)
    iterator = iter(loader)
    start = time.perf_counter()
    next(iterator)
    first_batch_s = time.perf_counter() - start
    batches = images = 0
    start = time.perf_counter()
    for images_batch, _targets in iterator:
        batches += 1
        images += len(images_batch)
        if batches == num_batches:
            break
    seconds = time.perf_counter() - start
    del iterator, loader  # stop persistent workers
    return {"split": split, "num_workers": num_workers, "batch_size": cfg.train.batch_size, "num_batches": batches,
            "images": images, "seconds": seconds, "images_per_s": images / max(seconds, 1e-9),
            "batches_per_s": batches / max(seconds, 1e-9), "first_batch_s": first_batch_s,
            "dataset_images": len(dataset)}
