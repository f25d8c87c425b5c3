"""Detection transforms on ``(image uint8 [3,H,W], target)`` pairs; boxes (absolute xyxy) move with the image.

Images stay uint8 (the model converts to float and normalises on the device). Every random choice draws from the
``torch.Generator`` passed in, which the dataset seeds per sample, so a sample's augmentation is a pure function of
its seed. Training: drop crowd/difficult boxes, label noise, multi-scale resize, horizontal flip. Evaluation: one
resize. Both add ``"orig_size"`` (H0, W0) so detections can be mapped back to the original pixels. Labels are
untouched (1..K, 0 is background).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision.transforms.functional as TF

from ..boxes import flip_boxes_horizontal, scale_boxes


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(H', W') with the short side ``min_size``, unless that makes the long side exceed ``max_size`` (detectron2)."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def padded_size(height: int, width: int, divisibility: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``divisibility`` (the model pads batches to this on the device)."""
    return int(math.ceil(height / divisibility) * divisibility), int(math.ceil(width / divisibility) * divisibility)


def resize(image: torch.Tensor, target: dict, size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """Resize to ``size`` (H', W') with antialiasing; boxes and areas scaled to match."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image, target
    image = TF.resize(image, list(size), antialias=True)
    sx, sy = size[1] / width, size[0] / height
    target = dict(target, boxes=scale_boxes(target["boxes"], sx, sy), area=target["area"] * (sx * sy))
    if "proposals" in target:  # precomputed proposals move with the image like the GT boxes
        target["proposals"] = scale_boxes(target["proposals"], sx, sy)
    return image, target


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Left-right flip of the image, its boxes and its precomputed proposals (if any)."""
    width = image.shape[-1]
    target = dict(target, boxes=flip_boxes_horizontal(target["boxes"], width))
    if "proposals" in target:
        target["proposals"] = flip_boxes_horizontal(target["proposals"], width)
    return image.flip(-1), target


def drop_crowd(target: dict) -> dict:
    """Remove crowd (COCO) / difficult (VOC) boxes: they are ignored in training."""
    keep = ~target["iscrowd"]
    return dict(target, **{k: target[k][keep] for k in ("boxes", "labels", "iscrowd", "area")})


def jitter_boxes(boxes: torch.Tensor, fraction: float, scale: float, image_size: tuple[int, int],
                 generator: torch.Generator) -> torch.Tensor:
    """[N,4] xyxy -> [N,4]: a random ``fraction`` of the boxes get each coordinate moved by up to ``scale`` × w or h.

    Jittered boxes are clipped to the image; a jitter that would leave a box under 1 px wide or high is not applied.
    """
    if len(boxes) == 0 or fraction <= 0 or scale <= 0:
        return boxes
    chosen = torch.rand(len(boxes), generator=generator) < fraction  # [N]
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # [N,4] (w, h, w, h)
    offsets = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * scale * wh
    height, width = image_size
    noisy = (boxes + offsets).clamp(min=0)
    noisy = torch.minimum(noisy, boxes.new_tensor([width, height, width, height]))
    valid = (noisy[:, 2] - noisy[:, 0] >= 1) & (noisy[:, 3] - noisy[:, 1] >= 1)
    return torch.where((chosen & valid)[:, None], noisy, boxes)


class DetectionTransform:
    """The training or evaluation pipeline.

    Args:
        min_sizes: short-side sizes; training picks one per image (multi-scale), evaluation passes one.
        max_size: cap on the long side.
        flip_prob: probability of a horizontal flip.
        train: drop crowd boxes (and apply label noise) when True.
        label_noise: fraction of GT boxes jittered (training only).
        label_noise_scale: jitter size as a fraction of the box width/height.
    """

    def __init__(self, *, min_sizes: Sequence[int], max_size: int, flip_prob: float = 0.0, train: bool = False,
                 label_noise: float = 0.0, label_noise_scale: float = 0.0):
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)
        self.train = train
        self.label_noise = float(label_noise)
        self.label_noise_scale = float(label_noise_scale)

    def __repr__(self) -> str:
        return (f"DetectionTransform(min_sizes={self.min_sizes}, max_size={self.max_size}, flip_prob={self.flip_prob}, "
                f"train={self.train}, label_noise={self.label_noise}, label_noise_scale={self.label_noise_scale})")

    def __call__(self, image: torch.Tensor, target: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        height, width = image.shape[-2:]
        target = dict(target, orig_size=(int(height), int(width)))
        if self.train:
            target = drop_crowd(target)
            if self.label_noise > 0:
                boxes = jitter_boxes(target["boxes"], self.label_noise, self.label_noise_scale, (height, width),
                                     generator)
                target = dict(target, boxes=boxes)
        pick = int(torch.randint(len(self.min_sizes), (1,), generator=generator)) if len(self.min_sizes) > 1 else 0
        image, target = resize(image, target, resized_size(height, width, self.min_sizes[pick], self.max_size))
        if self.flip_prob > 0 and float(torch.rand((), generator=generator)) < self.flip_prob:
            image, target = hflip(image, target)
        return image, target


def build_transforms(cfg, split: str) -> DetectionTransform:
    """The pipeline for ``split`` ("train" or "val") from ``cfg.data.input`` and the label-noise keys."""
    inp = cfg.data.input
    if split == "train":
        return DetectionTransform(min_sizes=inp.min_size_train, max_size=inp.max_size_train, flip_prob=inp.flip_prob,
                                  train=True, label_noise=cfg.data.label_noise,
                                  label_noise_scale=cfg.data.label_noise_scale)
    return DetectionTransform(min_sizes=(inp.min_size_test,), max_size=inp.max_size_test)
