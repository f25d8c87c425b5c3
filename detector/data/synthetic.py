"""The default dataset: solid shapes on cluttered, noisy backgrounds, written as a real COCO-format dataset.

``generate_synthetic`` writes ``root/{train,val}/NNNNNN.jpg``, ``root/annotations/instances_{train,val}.json`` and
``root/synthetic.json`` (the generator parameters). The class of an object is its shape (category ids 1..K, the
first K of :data:`SHAPES`; label 0 stays background once loaded). Boxes are exact: each shape is drawn through
its own mask and the box is the mask's pixel extent (xyxy, written to the JSON as COCO xywh), ``area`` is the
mask's pixel count as in COCO. Scale (24 px to half the short side), aspect ratio (0.6-1.7) and colour vary;
overlap is limited (IoU <= 0.15 and at most 30% of the smaller box covered) so every box stays identifiable.
Everything is a pure function of the parameters: the same seed gives byte-identical files.

``ensure_synthetic`` is what ``build_dataset`` calls: it reuses ``root`` when its ``synthetic.json`` matches the
config and (re)generates it otherwise, writing to a temporary sibling folder that is renamed into place.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .base import DatasetError

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
PARAMS_FILE = "synthetic.json"
GENERATOR_VERSION = 1  # bump when the drawing changes, so stored datasets are regenerated
MIN_OBJECT_SIZE = 24
MAX_IOU = 0.15
MAX_COVERED = 0.3


def _draw_shape(shape: str, width: int, height: int) -> Image.Image:
    """An 'L' mask of size (width, height) with the shape filled (255) and touching its extent."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    x1, y1, cx, cy = width - 1, height - 1, (width - 1) / 2, (height - 1) / 2
    if shape == "circle":
        draw.ellipse((0, 0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, x1, y1), fill=255)
    elif shape == "triangle":
        draw.polygon([(0, y1), (x1, y1), (cx, 0)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, 0), (x1, cy), (cx, y1), (0, cy)], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = 1.0 if k % 2 == 0 else 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * cx * math.cos(angle), cy + radius * cy * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif shape == "cross":
        tx, ty = width / 3, height / 3
        draw.rectangle((tx, 0, x1 - tx, y1), fill=255)
        draw.rectangle((0, ty, x1, y1 - ty), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    return mask


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H,W,3] float32: a gradient between two muted colours."""
    gray = rng.uniform(70, 185, size=2)
    colors = (gray[:, None] + rng.uniform(-25, 25, size=(2, 3))).astype(np.float32)  # [2,3] low saturation
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.arange(width, dtype=np.float32)[None, :] * math.cos(angle)
            + np.arange(height, dtype=np.float32)[:, None] * math.sin(angle))  # [H,W]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    return colors[0] + (colors[1] - colors[0]) * ramp[..., None]


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, height: int, width: int) -> None:
    """Thin lines and small blobs (< MIN_OBJECT_SIZE / 2) in muted colours: distractors that are not objects."""
    for _ in range(int(rng.integers(3, 9))):
        color = tuple(int(c) for c in rng.uniform(50, 210) + rng.uniform(-20, 20, size=3))
        if rng.random() < 0.5:
            x0, x1 = rng.uniform(0, width, size=2)
            y0, y1 = rng.uniform(0, height, size=2)
            draw.line((x0, y0, x1, y1), fill=color, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(2, MIN_OBJECT_SIZE / 4)
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)


def _object_color(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A saturated colour far (in RGB) from the mean of the background under the object."""
    mean = background.reshape(-1, 3).mean(axis=0)
    best, best_dist = None, -1.0
    for _ in range(8):
        rgb = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))) * 255
        dist = float(np.linalg.norm(rgb - mean))
        if dist > best_dist:
            best, best_dist = rgb, dist
        if dist >= 130:
            break
    return tuple(int(c) for c in best)


def _overlap_ok(box: np.ndarray, placed: Sequence[np.ndarray]) -> bool:
    for other in placed:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        area_a = (box[2] - box[0]) * (box[3] - box[1])
        area_b = (other[2] - other[0]) * (other[3] - other[1])
        if inter / (area_a + area_b - inter) > MAX_IOU or inter / min(area_a, area_b) > MAX_COVERED:
            return False
    return True


def render_image(rng: np.random.Generator, height: int, width: int, num_classes: int, max_objects: int
                 ) -> tuple[Image.Image, list[dict]]:
    """One image and its objects ``{"bbox": [x, y, w, h], "category_id": 1..K, "area": pixels}``."""
    background = _background(rng, height, width)
    image = Image.fromarray(background.round().astype(np.uint8))
    _clutter(rng, ImageDraw.Draw(image), height, width)
    objects, placed = [], []
    max_size = max(MIN_OBJECT_SIZE + 1, min(height, width) // 2)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        shape_id = int(rng.integers(num_classes))
        size = math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(max_size)))
        ratio = math.exp(rng.uniform(math.log(0.6), math.log(1.7)))  # w / h
        w = int(min(width, max(MIN_OBJECT_SIZE, round(size * math.sqrt(ratio)))))
        h = int(min(height, max(MIN_OBJECT_SIZE, round(size / math.sqrt(ratio)))))
        mask = _draw_shape(SHAPES[shape_id], w, h)
        extent = np.array(mask.getbbox(), dtype=np.float64)  # exclusive end: exactly the xyxy extent in the mask
        for _attempt in range(10):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = extent + [x, y, x, y]
            if _overlap_ok(box, placed):
                break
        else:
            continue
        color = _object_color(rng, background[y:y + h, x:x + w])
        image.paste(color, (x, y), mask)
        placed.append(box)
        objects.append({"bbox": [int(box[0]), int(box[1]), int(box[2] - box[0]), int(box[3] - box[1])],
                        "category_id": shape_id + 1, "area": int((np.asarray(mask) > 0).sum())})
    pixels = np.asarray(image, dtype=np.float32) + 8 * rng.standard_normal((height, width, 3), dtype=np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)), objects


def _write_split(root: Path, split: str, split_index: int, count: int, image_size: Sequence[int], num_classes: int,
                 max_objects: int, seed: int) -> None:
    height, width = int(image_size[0]), int(image_size[1])
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, split_index, i])
        image, objects = render_image(rng, height, width, num_classes, max_objects)
        image_id, file_name = i + 1, f"{i + 1:06d}.jpg"
        image.save(root / split / file_name, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})
    categories = [{"id": k + 1, "name": SHAPES[k], "supercategory": "shape"} for k in range(num_classes)]
    data = {"info": {"description": "detector synthetic shapes"}, "images": images, "annotations": annotations,
            "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data, separators=(",", ":")))


def synthetic_params(num_train: int, num_val: int, image_size: Sequence[int], num_classes: int, max_objects: int,
                     seed: int) -> dict:
    return {"version": GENERATOR_VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "image_size": [int(s) for s in image_size], "num_classes": int(num_classes),
            "max_objects": int(max_objects), "seed": int(seed)}


def generate_synthetic(root: str | Path, num_train: int = 256, num_val: int = 64,
                       image_size: Sequence[int] = (320, 320), num_classes: int = 4, max_objects: int = 6,
                       seed: int = 0) -> Path:
    """Write the dataset to ``root`` (created; existing files of the same names are overwritten). Returns root.

    ``image_size`` is [height, width]; ``num_classes`` <= 6 picks the first shapes of :data:`SHAPES`.
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes={num_classes} must be in 1..{len(SHAPES)}")
    if min(image_size) < 2 * MIN_OBJECT_SIZE:
        raise ValueError(f"image_size={list(image_size)} must be at least {2 * MIN_OBJECT_SIZE} px on each side")
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    params = synthetic_params(num_train, num_val, image_size, num_classes, max_objects, seed)
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        _write_split(root, split, split_index, count, image_size, num_classes, max_objects, seed)
    (root / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
    return root


def _stored_params(root: Path) -> dict | None:
    try:
        return json.loads((root / PARAMS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure_synthetic(root: str | Path, **params) -> Path:
    """Generate the dataset in ``root`` unless the one there was made with the same parameters; returns root.

    A ``root`` that exists but holds something other than a synthetic dataset is an error (it is never deleted).
    """
    root = Path(root)
    wanted = synthetic_params(**params)
    if _stored_params(root) == wanted:
        return root
    if root.exists() and any(root.iterdir()) and _stored_params(root) is None:
        raise DatasetError(f"{root}: data.format=synthetic but this folder holds other files and no {PARAMS_FILE}; "
                           f"point data.root at an empty or synthetic folder")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    generate_synthetic(tmp, **params)
    if _stored_params(root) == wanted:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    shutil.rmtree(root, ignore_errors=True)
    try:
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _stored_params(root) != wanted:
            raise
    return root
