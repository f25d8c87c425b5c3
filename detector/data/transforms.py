"""Detection transforms on ``(image uint8 [3,H,W], target)`` pairs; boxes (absolute xyxy) move with
the image, every random choice draws from the ``torch.Generator`` passed in, and ``"orig_size"``
(H0, W0) is added. The padded batch size arithmetic (``data.input.pad_buckets``) lives here too."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torchvision.transforms.functional as TF

from ..boxes import flip_boxes_horizontal, scale_boxes


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(H', W') with the short side ``min_size``, unless that makes the long side exceed
    ``max_size`` (detectron2)."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def padded_size(height: int, width: int, divisibility: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``divisibility`` (the model pads batches to this on the
    device)."""
    return tuple(int(math.ceil(side / divisibility) * divisibility) for side in (height, width))


def bucket_sides(
    max_short: int, max_long: int, divisibility: int, num_buckets: int
) -> tuple[int, ...]:
    """``num_buckets`` multiples of ``divisibility`` evenly spaced from ``max_short`` to
    ``max_long`` (both rounded up): the sides padded batches snap to (``data.input.pad_buckets``; ()
    when 0), <= ``num_buckets ** 2`` shapes."""
    if num_buckets <= 0:
        return ()
    low, high = padded_size(max_short, max_long, divisibility)
    low = min(low, high)
    if num_buckets == 1:
        return (high,)
    steps = [low + (high - low) * i / (num_buckets - 1) for i in range(num_buckets)]
    return tuple(sorted({padded_size(int(math.ceil(s)), 1, divisibility)[0] for s in steps}))


def batch_padded_size(
    sizes: Sequence[tuple[int, int]], divisibility: int, buckets: Sequence[int] = ()
) -> tuple[int, int]:
    """(H, W) a batch of images of ``sizes`` [(h_i, w_i), ...] is padded to (bottom and right): each
    side the largest, rounded up to ``divisibility``, then to the smallest bucket that holds it (if
    any)."""
    padded = padded_size(max(h for h, _ in sizes), max(w for _, w in sizes), divisibility)
    return tuple(next((b for b in sorted(buckets) if b >= side), side) for side in padded)


def build_pad_buckets(cfg, num_buckets: int | None = None) -> tuple[int, ...]:
    """``bucket_sides`` of ``cfg.data.input`` (``num_buckets`` overrides ``pad_buckets``), shared by
    train and test."""
    inp = cfg.data.input
    return bucket_sides(
        max(max(inp.min_size_train), inp.min_size_test),
        max(inp.max_size_train, inp.max_size_test),
        inp.size_divisibility,
        inp.pad_buckets if num_buckets is None else num_buckets,
    )


def resize(image: torch.Tensor, target: dict, size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """Resize to ``size`` (H', W') with antialiasing; boxes and areas scaled to match."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image, target
    image = TF.resize(image, list(size), antialias=True)
    sx, sy = size[1] / width, size[0] / height
    target = dict(target, area=target["area"] * (sx * sy))
    # precomputed proposals move with the image like the GT boxes
    for key in {"boxes", "proposals"} & target.keys():
        target[key] = scale_boxes(target[key], sx, sy)
    return image, target


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Left-right flip of the image, its boxes and its precomputed proposals (if any)."""
    target = dict(target)
    for key in {"boxes", "proposals"} & target.keys():
        target[key] = flip_boxes_horizontal(target[key], image.shape[-1])
    return image.flip(-1), target


@dataclass(frozen=True)
class DetectionTransform:
    """The training (``train``: drop crowd boxes, random size of ``min_sizes``, flip) or evaluation
    pipeline."""

    min_sizes: tuple[int, ...]
    max_size: int
    flip_prob: float = 0.0
    train: bool = False

    def plan(
        self, height: int, width: int, target: dict, generator: torch.Generator
    ) -> tuple[dict, tuple[int, int], bool]:
        """The random decisions for an image, without its pixels: (target after crowd removal,
        resized (H', W'), flip); the padded-shape benchmark calls it alone."""
        target = dict(target, orig_size=(int(height), int(width)))
        if self.train:  # crowd (COCO) / difficult (VOC) boxes are ignored in training
            keep = ~target["iscrowd"]
            target = dict(
                target, **{k: target[k][keep] for k in ("boxes", "labels", "iscrowd", "area")}
            )
        pick = 0
        if len(self.min_sizes) > 1:
            pick = int(torch.randint(len(self.min_sizes), (1,), generator=generator))
        size = resized_size(height, width, self.min_sizes[pick], self.max_size)
        flip = self.flip_prob > 0 and float(torch.rand((), generator=generator)) < self.flip_prob
        return target, size, flip

    def __call__(
        self, image: torch.Tensor, target: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict]:
        target, size, flip = self.plan(image.shape[-2], image.shape[-1], target, generator)
        image, target = resize(image, target, size)
        if flip:
            image, target = hflip(image, target)
        return image, target


def build_transforms(cfg, split: str) -> DetectionTransform:
    """The pipeline for ``split`` ("train" or "val") from ``cfg.data.input``."""
    inp = cfg.data.input
    if split == "train":
        return DetectionTransform(
            min_sizes=tuple(inp.min_size_train),
            max_size=inp.max_size_train,
            flip_prob=inp.flip_prob,
            train=True,
        )
    return DetectionTransform(min_sizes=(inp.min_size_test,), max_size=inp.max_size_test)
