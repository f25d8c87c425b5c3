"""The synthetic shapes datasets, written as COCO-format sets: ``root/{train,val}/NNNNNN.jpg``,
``root/annotations/instances_{train,val}.json`` and the manifest ``root/synthetic.json`` (last). An
object's class is its shape (the first K of :data:`SHAPES`); boxes are ``amodal`` (the whole shape)
or ``visible`` (its pixels left uncovered). How ``ensure_synthetic`` reuses, refuses or atomically
generates a root: docs/architecture.md ("Data").
"""

from __future__ import annotations

import colorsys
import errno
import json
import logging
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# the class shapes, in label order (checked there)
from detector.config import SYNTHETIC_SHAPES as SHAPES

from ..boxes import box_overlap_one_to_many
from .base import DatasetError

logger = logging.getLogger(__name__)
# drawn like objects, of no class: never annotated
DISTRACTORS = ("ring", "frame", "ell", "hourglass")
PARAMS_FILE = "synthetic.json"
# bump when the drawing of existing parameters changes: stored datasets then differ from it
GENERATOR_VERSION = 1


def _draw_shape(shape: str, width: int, height: int) -> Image.Image:
    """An 'L' mask of size (width, height) with the shape filled (255) and touching its extent."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    x1, y1, cx, cy = width - 1, height - 1, (width - 1) / 2, (height - 1) / 2
    tx, ty = width / 3, height / 3  # the bars of the cross and the ell
    fx, fy = max(1.0, 0.22 * width), max(1.0, 0.22 * height)  # the sides of the frame
    # the star's outer and inner points in turn
    angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
    star = [
        (cx + r * cx * math.cos(a), cy + r * cy * math.sin(a))
        for a, r in zip(angles, [1.0, 0.45] * 5)
    ]
    parts = {  # shape -> what draws it, in order: (draw method, xy, fill)
        "circle": [(draw.ellipse, (0, 0, x1, y1), 255)],
        "square": [(draw.rectangle, (0, 0, x1, y1), 255)],
        "triangle": [(draw.polygon, [(0, y1), (x1, y1), (cx, 0)], 255)],
        "diamond": [(draw.polygon, [(cx, 0), (x1, cy), (cx, y1), (0, cy)], 255)],
        "star": [(draw.polygon, star, 255)],
        "cross": [
            (draw.rectangle, (tx, 0, x1 - tx, y1), 255),
            (draw.rectangle, (0, ty, x1, y1 - ty), 255),
        ],
        "ring": [
            (draw.ellipse, (0, 0, x1, y1), 255),
            (draw.ellipse, (0.3 * cx, 0.3 * cy, x1 - 0.3 * cx, y1 - 0.3 * cy), 0),
        ],
        "frame": [
            (draw.rectangle, (0, 0, x1, y1), 255),
            (draw.rectangle, (fx, fy, x1 - fx, y1 - fy), 0),
        ],
        "ell": [(draw.rectangle, (0, 0, tx, y1), 255), (draw.rectangle, (0, y1 - ty, x1, y1), 255)],
        "hourglass": [
            (draw.polygon, [(0, 0), (x1, 0), (cx, cy)], 255),
            (draw.polygon, [(0, y1), (x1, y1), (cx, cy)], 255),
        ],
    }
    for method, xy, fill in parts[shape]:
        method(xy, fill=fill)
    return mask


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H,W,3] float32: a gradient between two muted colours."""
    gray = rng.uniform(70, 185, size=2)
    # [2,3] low saturation
    colors = (gray[:, None] + rng.uniform(-25, 25, size=(2, 3))).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.arange(width, dtype=np.float32)[None, :] * math.cos(angle) + np.arange(
        height, dtype=np.float32
    )[:, None] * math.sin(angle)  # [H,W]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    return colors[0] + (colors[1] - colors[0]) * ramp[..., None]


def _texture(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """[H,W,3] float32: ``base`` plus colour value noise at three scales and patches of stripes
    (edges of no object)."""
    height, width = base.shape[:2]
    out = base.copy()
    for cells, amplitude in ((4, 28.0), (16, 18.0), (64, 10.0)):
        # [3,cells,cells]
        grid = rng.uniform(-amplitude, amplitude, size=(3, cells, cells)).astype(np.float32)
        for c in range(3):
            out[..., c] += np.asarray(
                Image.fromarray(grid[c]).resize((width, height), Image.BILINEAR)
            )
    for _ in range(int(rng.integers(2, 6))):
        x0, x1 = np.sort(rng.integers(0, width + 1, size=2))
        y0, y1 = np.sort(rng.integers(0, height + 1, size=2))
        angle, period, amplitude = rng.uniform(0, math.pi), rng.uniform(4, 20), rng.uniform(15, 40)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)  # [h,w] each
        stripes = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        out[y0:y1, x0:x1] += (amplitude * stripes)[..., None]
    return out


def _clutter(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    height: int,
    width: int,
    count: Sequence[int],
    max_radius: float,
) -> None:
    """Thin lines and small blobs (radius < ``max_radius``) in muted colours: distractors that are
    not objects."""
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        color = tuple(int(c) for c in rng.uniform(50, 210) + rng.uniform(-20, 20, size=3))
        if rng.random() < 0.5:
            x0, x1 = rng.uniform(0, width, size=2)
            y0, y1 = rng.uniform(0, height, size=2)
            draw.line((x0, y0, x1, y1), fill=color, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(2, max_radius)
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)


def _object_color(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A saturated colour far (in RGB) from the mean of the background under the object."""
    mean = background.reshape(-1, 3).mean(axis=0)
    best, best_dist = None, -1.0
    for _ in range(8):
        rgb = (
            np.array(
                colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
            )
            * 255
        )
        dist = float(np.linalg.norm(rgb - mean))
        if dist > best_dist:
            best, best_dist = rgb, dist
        if dist >= 130:
            break
    return tuple(int(c) for c in best)


def _overlap_ok(
    box: np.ndarray, placed: Sequence[np.ndarray], max_iou: float, max_covered: float
) -> bool:
    """Whether ``box`` has IoU <= ``max_iou`` with every placed box and covers <= ``max_covered`` of
    the smaller."""
    inter, area, others_area = box_overlap_one_to_many(box, np.array(placed).reshape(-1, 4))
    iou = inter / (area + others_area - inter)
    return not ((iou > max_iou) | (inter / np.minimum(area, others_area) > max_covered)).any()


def _xywh(box: Sequence[float]) -> list[int]:
    """Exclusive-end pixel extent xyxy -> COCO [x, y, w, h] ints."""
    return [int(box[0]), int(box[1]), int(box[2] - box[0]), int(box[3] - box[1])]


def render_image(
    rng: np.random.Generator, keys: dict
) -> tuple[Image.Image, list[dict], list[tuple]]:
    """One image drawn as the ``data.synthetic`` keys say (configs/base.yaml), its objects
    ``{"iscrowd", "bbox": [x, y, w, h], "category_id": 1..K, "area"}`` and every shape drawn
    ``(name, x, y, w, h, rgb)`` in depth order. A feature off in ``keys`` draws no random numbers
    (so the default set's bytes never change)."""
    height, width = int(keys["image_size"][0]), int(keys["image_size"][1])
    min_size = keys["min_size"]
    background = _background(rng, height, width)
    if keys["background"] == "texture":
        background = _texture(rng, background)
    image = Image.fromarray(np.clip(background.round(), 0, 255).astype(np.uint8))
    _clutter(rng, ImageDraw.Draw(image), height, width, keys["clutter"], min_size / 4)
    is_object = [True] * int(rng.integers(keys["min_objects"], keys["max_objects"] + 1))
    if keys["max_distractors"] > 0:
        is_object += [False] * int(rng.integers(0, keys["max_distractors"] + 1))
        rng.shuffle(is_object)
    visible = keys["boxes"] == "visible"
    # [H,W] 1 + index of the top shape, 0 none
    owner = np.zeros((height, width), dtype=np.int32) if visible else None
    objects, slots, placed, drawn = [], [], [], []  # slots: 1 + the index in drawn of each object
    max_size = max(min_size + 1, int(min(height, width) * keys["max_size"]))
    log_ratio = (math.log(keys["aspect_ratio"][0]), math.log(keys["aspect_ratio"][1]))
    for obj in is_object:
        shape_id = int(rng.integers(keys["num_classes"] if obj else len(DISTRACTORS)))
        shape = (SHAPES if obj else DISTRACTORS)[shape_id]
        size = math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
        ratio = math.exp(rng.uniform(*log_ratio))  # w / h
        w = int(min(width, max(min_size, round(size * math.sqrt(ratio)))))
        h = int(min(height, max(min_size, round(size / math.sqrt(ratio)))))
        mask = _draw_shape(shape, w, h)
        # exclusive end: exactly the xyxy extent in the mask
        extent = np.array(mask.getbbox(), dtype=np.float64)
        for _attempt in range(10):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = extent + [x, y, x, y]
            if _overlap_ok(box, placed, keys["max_iou"], keys["max_covered"]):
                break
        else:
            continue
        color = _object_color(rng, background[y : y + h, x : x + w])
        image.paste(color, (x, y), mask)
        placed.append(box)
        drawn.append((shape, x, y, w, h, color))
        pixels = np.asarray(mask) > 0  # [h,w]
        if visible:
            owner[y : y + h, x : x + w][pixels] = len(drawn)
        if obj:
            objects.append(
                {
                    "iscrowd": 0,
                    "bbox": _xywh(box),
                    "category_id": shape_id + 1,
                    "area": int(pixels.sum()),
                }
            )
            slots.append(len(drawn))
    if visible:
        objects = _visible_objects(objects, slots, drawn, owner, keys["min_visible"])
    noise = keys["noise"] * rng.standard_normal((height, width, 3), dtype=np.float32)  # [H,W,3]
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8)), objects, drawn


def _visible_objects(
    objects: list[dict], slots: list[int], drawn: list[tuple], owner: np.ndarray, min_visible: float
) -> list[dict]:
    """The objects with the box and area of their pixels left visible in ``owner`` ([H,W], 1 + index
    in ``drawn`` of the shape on top, 0 for none); iscrowd below ``min_visible`` of the whole shape;
    fully hidden ones dropped."""
    out = []
    for obj, slot in zip(objects, slots):
        _, x, y, w, h, _ = drawn[slot - 1]
        ys, xs = np.nonzero(owner[y : y + h, x : x + w] == slot)
        if len(xs):
            box = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
            out.append(
                {
                    **obj,
                    "iscrowd": int(len(xs) < min_visible * obj["area"]),
                    "bbox": _xywh(box),
                    "area": int(len(xs)),
                }
            )
    return out


def generate_synthetic(root: str | Path, **keys) -> Path:
    """Write the dataset of the ``data.synthetic`` keys (all of them) into ``root`` (which must not
    exist), the manifest last."""
    num_classes, seed = keys["num_classes"], keys["seed"]
    root = Path(root)
    root.mkdir(parents=True)  # FileExistsError rather than write into a folder that is not ours
    (root / "annotations").mkdir()
    height, width = int(keys["image_size"][0]), int(keys["image_size"][1])
    categories = [
        {"id": k + 1, "name": SHAPES[k], "supercategory": "shape"} for k in range(num_classes)
    ]
    for split_index, split in enumerate(("train", "val")):
        count = keys[f"num_{split}"]
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            image, objects, _ = render_image(rng, keys)
            image_id, file_name = i + 1, f"{i + 1:06d}.jpg"
            image.save(root / split / file_name, format="JPEG", quality=90)
            images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )
            for obj in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
        data = {
            "info": {"description": "detector synthetic shapes"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(data, separators=(",", ":"))
        )
    # the manifest lists the split sizes, image size, classes and seed first
    first = ("num_train", "num_val", "image_size", "num_classes", "seed")
    manifest = synthetic_params({**{k: keys[k] for k in first}, **keys})
    (root / PARAMS_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return root


def synthetic_params(keys: dict) -> dict:
    """What the manifest stores and is compared with: the ``data.synthetic`` keys as JSON, and the
    version."""
    return json.loads(json.dumps({"version": GENERATOR_VERSION, **keys}))


def _ready(root: Path, wanted: dict) -> bool:
    """True when ``root`` holds the dataset of ``wanted``, False when absent or empty; else a
    one-line DatasetError."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    try:
        stored = json.loads((root / PARAMS_FILE).read_text())
        # the manifests written until 2026-12 keep them under "params"
        stored = stored.get("params", stored)
    except (OSError, ValueError, AttributeError):
        raise DatasetError(
            f"{root}: holds other files and no synthetic dataset ({PARAMS_FILE}), so none is "
            f"generated there; set data.root to an absent or empty folder"
        ) from None
    changes = [
        f"{key} {json.dumps(stored.get(key))} -> {json.dumps(wanted.get(key))}"
        for key in sorted(stored.keys() | wanted.keys())
        if stored.get(key) != wanted.get(key)
    ]
    if changes:
        raise DatasetError(
            f"{root}: holds a synthetic dataset made with other data.synthetic keys "
            f"({', '.join(changes)}); it is never regenerated in place: delete the folder or set "
            f"data.root to another folder"
        )
    return True


def _is_leftover(path: Path, prefix: str) -> bool:
    """Whether the pid in a temporary folder's name is no live process on this machine."""
    try:
        os.kill(int(path.name[len(prefix) :].partition("-")[0]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, OSError):  # not a pid, or another user's process
        pass
    return False


def ensure_synthetic(root: str | Path, **keys) -> Path:
    """Make sure ``root`` holds the dataset of these (all) ``data.synthetic`` keys; returns root.
    Another folder's content raises :class:`DatasetError` and is never deleted; a new set is renamed
    onto ``root`` from a temporary sibling ``.<name>.tmp-<pid>-<random>`` (the first rename wins; a
    killed generation's leftover is warned of)."""
    # a link to a folder: rename(2) replaces the folder it names, not the link
    root = Path(root).resolve()
    wanted = synthetic_params(keys)
    if _ready(root, wanted):
        return root
    prefix = f".{root.name}.tmp-"
    tmp = root.parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        generate_synthetic(tmp, **keys)
        try:
            os.rename(tmp, root)
        # ENOTEMPTY/EEXIST: another process renamed first; its set is checked below
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only our own folder, already gone after our rename
    for stale in sorted(
        p for p in root.parent.iterdir() if p.name.startswith(prefix) and _is_leftover(p, prefix)
    ):
        logger.warning(
            f"{stale}: left by a killed generation (its pid is gone, unless it ran on another "
            "machine); delete it"
        )
    _ready(root, wanted)
    return root
