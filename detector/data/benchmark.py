"""Data-side measurements for ``tools/benchmark.py``: the loader's throughput (:func:`loader_throughput`, images
per second through decode + transforms + collate; the first batch, worker start-up, is timed apart and not
counted) and the padded batch shapes a run meets (:func:`padded_shapes`, simulated from the annotations).
"""
from __future__ import annotations

import math
import time
from collections import Counter

import torch

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


def padded_shapes(cfg, split: str = "train", num_batches: int = 1000, pad_buckets: tuple[int, ...] = (0,)) -> dict:
    """The padded batch shapes a run of ``cfg`` would see, simulated from the annotation sizes alone.

    Replays the loader's batch stream (the seeded, aspect-ratio grouped training sampler, or the ordered val
    batches) and each sample's transform decisions (:meth:`DetectionTransform.plan`, drawn from the sample's seed
    as the dataset does), without decoding an image, then pads every batch as the model would
    (:func:`batch_padded_size`) for each ``data.input.pad_buckets`` value in ``pad_buckets`` (0 = off).

    Returns ``{"split", "batches", "batch_size", "num_classes", "rows": [{"pad_buckets", "bucket_sides",
    "distinct_shapes", "shape_counts", "padded_over_real", "padded_over_unbucketed"}, ...]}``: ``padded_over_real`` is
    sum(N·H·W) / sum(h_i·w_i), the backbone's FLOPs per real pixel (convolutions scale with the padded area);
    ``padded_over_unbucketed`` is that area against the same batches padded to ``size_divisibility`` only.
    """
    from .transforms import batch_padded_size, build_pad_buckets

    dataset = build_dataset(cfg, split)
    train = split == "train"
    loader = make_dataloader(dataset, train=train, batch_size=cfg.train.batch_size, num_workers=0, seed=cfg.seed,
                             group_by_aspect_ratio=cfg.data.loader.aspect_ratio_grouping)
    sizes = []  # per batch: [(h_i, w_i), ...] after the transforms
    for batch in loader.batch_sampler:  # the sampler only: nothing is loaded
        batch_sizes = []
        for key in batch:
            index, sample_seed = key if isinstance(key, (tuple, list)) else (key, key)  # as DetectionDataset does
            record = dataset.records[index]
            generator = torch.Generator().manual_seed(int(sample_seed))
            _, size, _ = dataset.transforms.plan(record.height, record.width, dataset.get_target(index), generator)
            batch_sizes.append(size)
        sizes.append(batch_sizes)
        if len(sizes) == num_batches:
            break
    div = cfg.data.input.size_divisibility
    real = sum(h * w for batch in sizes for h, w in batch)
    unbucketed = sum(len(b) * math.prod(batch_padded_size(b, div)) for b in sizes)
    rows = []
    for n in pad_buckets:
        buckets = build_pad_buckets(cfg, n)
        shapes = [batch_padded_size(b, div, buckets) for b in sizes]
        counts = Counter(shapes)
        padded = sum(len(b) * h * w for b, (h, w) in zip(sizes, shapes))
        rows.append({"pad_buckets": n, "bucket_sides": list(buckets), "distinct_shapes": len(counts),
                     "shape_counts": {f"{h}x{w}": c for (h, w), c in counts.most_common()},
                     "padded_over_real": padded / real, "padded_over_unbucketed": padded / unbucketed})
    return {"split": split, "batches": len(sizes), "batch_size": cfg.train.batch_size,
            "num_classes": len(dataset.classes) - 1, "rows": rows}
