"""The synthetic shapes datasets, generated locally and written as real COCO-format datasets.

``generate_synthetic`` writes ``root/{train,val}/NNNNNN.jpg``, ``root/annotations/instances_{train,val}.json`` and
``root/synthetic.json`` (the manifest: the generator parameters and every file it wrote). The class of an object is
its shape (category ids 1..K, the first K of :data:`SHAPES`; label 0 stays background once loaded). Everything is a
pure function of the parameters (the ``data.synthetic`` keys): the same keys give byte-identical files.

Two presets (see data/README.md):

- the default (quickstart): 1-6 solid shapes, 24 px to half the short side, aspect ratio 0.6-1.7, on gradient
  backgrounds with line/blob clutter; overlap limited (box IoU <= 0.15, at most 30% of the smaller box covered).
  Boxes are ``amodal``: the extent of the whole shape as drawn through its own mask, ``area`` its pixel count.
- ``configs/data/synthetic_hard.yaml``: more and smaller objects with extreme aspect ratios, occluding each other,
  on textured backgrounds with more clutter and *distractors* (shapes of :data:`DISTRACTORS`, of no class, never
  labelled). Boxes are ``visible``: the exact extent of the object's pixels left visible after everything drawn
  later (objects and distractors), ``area`` the visible pixel count. An object with less than ``min_visible`` of its
  pixels visible is kept as ``iscrowd`` (ignored by training and evaluation: finding it is neither required nor a
  false positive); one with no visible pixel is not annotated.

``ensure_synthetic`` is what ``build_dataset`` calls: it reuses ``root`` when its manifest matches the parameters
and lists only files that exist, and (re)generates it otherwise, into a temporary sibling folder renamed into place.
It removes only files a manifest says the generator wrote: a ``root`` holding anything else is refused with a
:class:`DatasetError` naming the files. The manifest is written (``complete: false``) before the first image, so an
interrupted generation still says what it wrote and is cleaned up by the next call.
"""
from __future__ import annotations

import colorsys
import errno
import fcntl
import json
import math
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from detector.config import SYNTHETIC_BACKGROUNDS as BACKGROUNDS  # the choice lists live with the config checks
from detector.config import SYNTHETIC_BOX_MODES as BOX_MODES
from detector.config import ConfigError

from .base import DatasetError

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
DISTRACTORS = ("ring", "frame", "ell", "hourglass")  # drawn like objects, of no class: never annotated
PARAMS_FILE = "synthetic.json"
_MANIFEST_TMP = f".{PARAMS_FILE}.tmp"  # the manifest is written here, then renamed over PARAMS_FILE
GENERATOR_VERSION = 1  # bump when the drawing of existing parameters changes, so stored datasets are regenerated
_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Scene:
    """How each image is drawn: the ``data.synthetic`` keys besides split sizes, image size, classes and seed.

    The defaults are the default preset; each one that differs switches on a harder feature. Sizes are pixels:
    an object's size is sqrt(w * h) of its drawing area, drawn log-uniformly from [min_size, max_size * short side]
    (each side at least ``min_size``); ``aspect_ratio`` bounds w / h (log-uniform). Placement keeps the box IoU with
    every placed shape <= ``max_iou`` and their intersection <= ``max_covered`` of the smaller box.
    """

    min_objects: int = 1
    max_objects: int = 6
    min_size: int = 24
    max_size: float = 0.5
    aspect_ratio: tuple[float, float] = (0.6, 1.7)
    max_iou: float = 0.15
    max_covered: float = 0.3
    boxes: str = "amodal"
    min_visible: float = 0.0
    max_distractors: int = 0
    background: str = "gradient"
    clutter: tuple[int, int] = (3, 8)
    noise: float = 8.0


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
    elif shape == "ring":
        draw.ellipse((0, 0, x1, y1), fill=255)
        draw.ellipse((0.3 * cx, 0.3 * cy, x1 - 0.3 * cx, y1 - 0.3 * cy), fill=0)
    elif shape == "frame":
        tx, ty = max(1.0, 0.22 * width), max(1.0, 0.22 * height)
        draw.rectangle((0, 0, x1, y1), fill=255)
        draw.rectangle((tx, ty, x1 - tx, y1 - ty), fill=0)
    elif shape == "ell":
        draw.rectangle((0, 0, width / 3, y1), fill=255)
        draw.rectangle((0, y1 - height / 3, x1, y1), fill=255)
    elif shape == "hourglass":
        draw.polygon([(0, 0), (x1, 0), (cx, cy)], fill=255)
        draw.polygon([(0, y1), (x1, y1), (cx, cy)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES + DISTRACTORS)}")
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


def _texture(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """[H,W,3] float32: ``base`` plus colour value noise at three scales and patches of stripes.

    The stripes' straight, high-contrast edges bound no object: a detector has to tell texture from shape.
    """
    height, width = base.shape[:2]
    out = base.copy()
    for cells, amplitude in ((4, 28.0), (16, 18.0), (64, 10.0)):
        grid = rng.uniform(-amplitude, amplitude, size=(3, cells, cells)).astype(np.float32)  # [3,cells,cells]
        for c in range(3):
            out[..., c] += np.asarray(Image.fromarray(grid[c]).resize((width, height), Image.BILINEAR))
    for _ in range(int(rng.integers(2, 6))):
        x0, x1 = np.sort(rng.integers(0, width + 1, size=2))
        y0, y1 = np.sort(rng.integers(0, height + 1, size=2))
        angle, period, amplitude = rng.uniform(0, math.pi), rng.uniform(4, 20), rng.uniform(15, 40)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)  # [h,w] each
        stripes = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        out[y0:y1, x0:x1] += (amplitude * stripes)[..., None]
    return out


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, height: int, width: int, count: Sequence[int],
             max_radius: float) -> None:
    """Thin lines and small blobs (radius < ``max_radius``) in muted colours: distractors that are not objects."""
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
        rgb = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))) * 255
        dist = float(np.linalg.norm(rgb - mean))
        if dist > best_dist:
            best, best_dist = rgb, dist
        if dist >= 130:
            break
    return tuple(int(c) for c in best)


def _overlap_ok(box: np.ndarray, placed: Sequence[np.ndarray], max_iou: float, max_covered: float) -> bool:
    for other in placed:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        area_a = (box[2] - box[0]) * (box[3] - box[1])
        area_b = (other[2] - other[0]) * (other[3] - other[1])
        if inter / (area_a + area_b - inter) > max_iou or inter / min(area_a, area_b) > max_covered:
            return False
    return True


def _xywh(box: Sequence[float]) -> list[int]:
    """Exclusive-end pixel extent xyxy -> COCO [x, y, w, h] ints."""
    return [int(box[0]), int(box[1]), int(box[2] - box[0]), int(box[3] - box[1])]


def render_image(rng: np.random.Generator, height: int, width: int, num_classes: int, scene: Scene = Scene()
                 ) -> tuple[Image.Image, list[dict], list[tuple]]:
    """One image, its objects ``{"iscrowd": 0|1, "bbox": [x, y, w, h], "category_id": 1..K, "area": pixels}`` and
    every shape drawn ``(name, x, y, w, h, rgb)`` in depth order (its mask is ``_draw_shape(name, w, h)`` at x, y).

    Shapes are pasted in a random depth order, each over the ones before it. A feature that is off in ``scene``
    draws no random numbers, so the default scene draws exactly what the first generator did (same bytes).
    """
    background = _background(rng, height, width)
    if scene.background == "texture":
        background = _texture(rng, background)
    image = Image.fromarray(np.clip(background.round(), 0, 255).astype(np.uint8))
    _clutter(rng, ImageDraw.Draw(image), height, width, scene.clutter, scene.min_size / 4)
    is_object = [True] * int(rng.integers(scene.min_objects, scene.max_objects + 1))
    if scene.max_distractors > 0:
        is_object += [False] * int(rng.integers(0, scene.max_distractors + 1))
        rng.shuffle(is_object)
    visible = scene.boxes == "visible"
    owner = np.zeros((height, width), dtype=np.int32) if visible else None  # [H,W] 1 + index of the top shape, 0 none
    objects, slots, placed, drawn = [], [], [], []  # slots: 1 + the index in drawn of each object
    max_size = max(scene.min_size + 1, int(min(height, width) * scene.max_size))
    log_ratio = (math.log(scene.aspect_ratio[0]), math.log(scene.aspect_ratio[1]))
    for obj in is_object:
        if obj:
            shape_id = int(rng.integers(num_classes))
            shape = SHAPES[shape_id]
        else:
            shape = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        size = math.exp(rng.uniform(math.log(scene.min_size), math.log(max_size)))
        ratio = math.exp(rng.uniform(*log_ratio))  # w / h
        w = int(min(width, max(scene.min_size, round(size * math.sqrt(ratio)))))
        h = int(min(height, max(scene.min_size, round(size / math.sqrt(ratio)))))
        mask = _draw_shape(shape, w, h)
        extent = np.array(mask.getbbox(), dtype=np.float64)  # exclusive end: exactly the xyxy extent in the mask
        for _attempt in range(10):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = extent + [x, y, x, y]
            if _overlap_ok(box, placed, scene.max_iou, scene.max_covered):
                break
        else:
            continue
        color = _object_color(rng, background[y:y + h, x:x + w])
        image.paste(color, (x, y), mask)
        placed.append(box)
        drawn.append((shape, x, y, w, h, color))
        pixels = np.asarray(mask) > 0  # [h,w]
        if visible:
            owner[y:y + h, x:x + w][pixels] = len(drawn)
        if obj:
            objects.append({"iscrowd": 0, "bbox": _xywh(box), "category_id": shape_id + 1, "area": int(pixels.sum())})
            slots.append(len(drawn))
    if visible:
        objects = _visible_objects(objects, slots, drawn, owner, scene.min_visible)
    noise = scene.noise * rng.standard_normal((height, width, 3), dtype=np.float32)  # [H,W,3]
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8)), objects, drawn


def _visible_objects(objects: list[dict], slots: list[int], drawn: list[tuple], owner: np.ndarray,
                     min_visible: float) -> list[dict]:
    """The objects with the box and area of their pixels left visible in ``owner`` ([H,W], 1 + index in ``drawn``
    of the shape on top, 0 for none); iscrowd below ``min_visible`` of the whole shape; fully hidden ones dropped."""
    out = []
    for obj, slot in zip(objects, slots):
        _, x, y, w, h, _ = drawn[slot - 1]
        ys, xs = np.nonzero(owner[y:y + h, x:x + w] == slot)
        if len(xs):
            box = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
            out.append({**obj, "iscrowd": int(len(xs) < min_visible * obj["area"]), "bbox": _xywh(box),
                        "area": int(len(xs))})
    return out


def _planned_files(num_train: int, num_val: int) -> list[str]:
    """Every file the generator writes for these split sizes, relative to the root, the manifest last."""
    images = [f"{split}/{i + 1:06d}.jpg" for split, count in zip(_SPLITS, (num_train, num_val)) for i in range(count)]
    return [*images, *(f"annotations/instances_{split}.json" for split in _SPLITS), PARAMS_FILE]


def _write_split(root: Path, split: str, split_index: int, count: int, image_size: Sequence[int], num_classes: int,
                 seed: int, scene: Scene) -> None:
    height, width = int(image_size[0]), int(image_size[1])
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, split_index, i])
        image, objects, _ = render_image(rng, height, width, num_classes, scene)
        image_id, file_name = i + 1, f"{i + 1:06d}.jpg"
        image.save(root / split / file_name, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    categories = [{"id": k + 1, "name": SHAPES[k], "supercategory": "shape"} for k in range(num_classes)]
    data = {"info": {"description": "detector synthetic shapes"}, "images": images, "annotations": annotations,
            "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data, separators=(",", ":")))


def synthetic_params(num_train: int, num_val: int, image_size: Sequence[int], num_classes: int, seed: int,
                     **scene) -> dict:
    """The normalised parameters (what the manifest stores and compares); ``scene`` are :class:`Scene` fields.

    Raises :class:`ConfigError` naming the ``data.synthetic`` keys when they do not fit together.
    """
    known = [f.name for f in fields(Scene)]
    unknown = sorted(set(scene) - set(known))
    if unknown:
        raise ConfigError(f"unknown synthetic parameter(s) {', '.join(unknown)}; known: {', '.join(known)}")
    given, spec = Scene(**scene), {}  # spec: each field as the type of its default (JSON-ready: pairs as lists)
    for field in fields(Scene):
        value, default = getattr(given, field.name), field.default
        spec[field.name] = ([type(default[0])(v) for v in value] if isinstance(default, tuple)
                            else type(default)(value))
    params = {"version": GENERATOR_VERSION, "num_train": int(num_train), "num_val": int(num_val),
              "image_size": [int(s) for s in image_size], "num_classes": int(num_classes), "seed": int(seed), **spec}
    problem = _param_problem(params)
    if problem:
        raise ConfigError(f"data.synthetic: {problem}")
    return params


def _param_problem(p: dict) -> str | None:
    if not 1 <= p["num_classes"] <= len(SHAPES):
        return f"num_classes={p['num_classes']} must be in 1..{len(SHAPES)}"
    if p["boxes"] not in BOX_MODES or p["background"] not in BACKGROUNDS:
        return f"boxes must be one of {BOX_MODES} and background one of {BACKGROUNDS}"
    if len(p["image_size"]) != 2 or len(p["aspect_ratio"]) != 2 or len(p["clutter"]) != 2:
        return "image_size, aspect_ratio and clutter must each be a pair [low, high]"
    if p["min_size"] < 4 or min(p["image_size"]) < 2 * p["min_size"]:
        return (f"image_size={p['image_size']} must be at least 2 * min_size on each side, "
                f"and min_size={p['min_size']} at least 4")
    if not 0 <= p["min_objects"] <= p["max_objects"] or p["max_objects"] < 1:
        return f"need 0 <= min_objects ({p['min_objects']}) <= max_objects ({p['max_objects']}), max_objects >= 1"
    if not 0 < p["aspect_ratio"][0] <= p["aspect_ratio"][1] or not 0 <= p["clutter"][0] <= p["clutter"][1]:
        return (f"aspect_ratio={p['aspect_ratio']} needs 0 < low <= high and clutter={p['clutter']} "
                f"0 <= low <= high")
    return None


def _scene_of(params: dict) -> Scene:
    return Scene(**{f.name: tuple(params[f.name]) if isinstance(f.default, tuple) else params[f.name]
                    for f in fields(Scene)})


def _write_manifest(root: Path, params: dict, complete: bool) -> None:
    manifest = {"params": params, "complete": complete,
                "files": _planned_files(params["num_train"], params["num_val"])}
    tmp = root / _MANIFEST_TMP
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, root / PARAMS_FILE)


def generate_synthetic(root: str | Path, num_train: int = 256, num_val: int = 64,
                       image_size: Sequence[int] = (320, 320), num_classes: int = 4, seed: int = 0, **scene) -> Path:
    """Write the dataset into ``root`` (absent or empty: it never overwrites files). Returns root.

    ``image_size`` is [height, width]; ``num_classes`` <= 6 picks the first shapes of :data:`SHAPES`; ``scene``
    holds the other ``data.synthetic`` keys (:class:`Scene` fields). The manifest is written first as incomplete,
    then every file, then the manifest again as complete.
    """
    params = synthetic_params(num_train, num_val, image_size, num_classes, seed, **scene)
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"{root}: not empty; generate_synthetic writes only into an empty folder "
                           f"(ensure_synthetic replaces a stored synthetic dataset)")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    _write_manifest(root, params, complete=False)
    for split_index, (split, count) in enumerate(zip(_SPLITS, (num_train, num_val))):
        _write_split(root, split, split_index, count, params["image_size"], num_classes, seed, _scene_of(params))
    _write_manifest(root, params, complete=True)
    return root


def _read_manifest(root: Path) -> dict | None:
    """``{"params", "complete", "files"}`` from ``root/synthetic.json``; None when there is no readable one.

    A manifest of the first generator (its parameters at the top level, written after its files) lists no files:
    they are the planned files of its split sizes.
    """
    try:
        data = json.loads((root / PARAMS_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if "params" not in data and isinstance(data.get("num_train"), int) and isinstance(data.get("num_val"), int):
        data = {"params": data, "complete": True, "files": _planned_files(data["num_train"], data["num_val"])}
    files = data.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) and _inside(f) for f in files):
        return None  # never trust a list that points outside the folder
    return data


def _inside(relative: str) -> bool:
    path = Path(relative)
    return bool(relative) and not path.is_absolute() and ".." not in path.parts


def _is_ready(root: Path, wanted: dict) -> bool:
    manifest = _read_manifest(root)
    return (manifest is not None and manifest.get("complete") is True and manifest["params"] == wanted
            and all((root / f).is_file() for f in manifest["files"]))


def _foreign_files(root: Path) -> list[str]:
    """Paths under ``root`` (relative, sorted) that no manifest there says the generator wrote."""
    manifest = _read_manifest(root)
    ours = set(manifest["files"]) | {PARAMS_FILE, _MANIFEST_TMP} if manifest else set()
    our_dirs = {str(Path(f).parent) for f in ours | set(_planned_files(1, 1))} - {"."}  # empty ones are no loss
    foreign = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for name in list(dirnames):
            path = str(rel / name)
            if path not in our_dirs or (Path(dirpath) / name).is_symlink():
                foreign.append(path + "/")
                dirnames.remove(name)
        foreign += [str(rel / name) for name in filenames if str(rel / name) not in ours]
    return sorted(foreign)


def _refuse_foreign(root: Path) -> None:
    foreign = _foreign_files(root)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DatasetError(f"{root}: holds {len(foreign)} file(s) the synthetic generator did not write ({shown}), "
                           f"so it cannot be (re)generated there for these data.synthetic keys; move those files out "
                           f"or set data.root to another folder")


def _remove_generated(root: Path) -> None:
    """Delete what the manifest lists (the manifest last), then the emptied folders; refuse anything else."""
    _refuse_foreign(root)
    manifest = _read_manifest(root)
    files = [f for f in (manifest["files"] if manifest else []) if f != PARAMS_FILE]
    for name in files + [_MANIFEST_TMP, PARAMS_FILE]:
        (root / name).unlink(missing_ok=True)
    folders = {Path(f).parent for f in files + _planned_files(1, 1)} - {Path(".")}
    try:
        for folder in sorted(folders, key=lambda p: -len(p.parts)):
            if (root / folder).is_dir():
                (root / folder).rmdir()
        root.rmdir()
    except OSError:  # a file appeared since the check above: it stays, and the error names it
        _refuse_foreign(root)
        raise


@contextmanager
def _turn(path: Path):
    """Hold an exclusive flock on ``path``, a file made for it and removed after; callers take turns.

    The kernel releases the lock when its process dies, so no lock goes stale. A waiter that wakes on a file its
    holder already unlinked sees that ``path`` is another inode (or gone) and locks the new one.
    """
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: nobody can lock this inode and think it current
        os.close(fd)


def _make_parent(root: Path) -> None:
    """Create ``root``'s parent; a file standing where a folder must be is ENOTDIR naming that file.

    ``mkdir(parents=True, exist_ok=True)`` reports that case as "File exists", which reads as if the folder were there.
    """
    ancestor = root.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(ancestor))
    root.parent.mkdir(parents=True, exist_ok=True)


def ensure_synthetic(root: str | Path, num_train: int, num_val: int, image_size: Sequence[int], num_classes: int,
                     seed: int, **scene) -> Path:
    """Generate the dataset in ``root`` unless the one there was made with the same parameters; returns root.

    Only files listed in a manifest in ``root`` are ever deleted: a ``root`` that holds anything else raises
    :class:`DatasetError` (naming the folder, the files and the fix) and is left as it is. Processes that build the
    same root at once (ablation jobs, DDP ranks) take turns (:func:`_turn`): the first generates, the others then
    find the set ready.
    """
    given = Path(root)
    root = given.resolve() if given.is_symlink() else given  # regenerate a linked dataset where it lives
    wanted = synthetic_params(num_train, num_val, image_size, num_classes, seed, **scene)
    if _is_ready(root, wanted):
        return given
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: is a file, not a folder; set data.root to a folder for the synthetic dataset")
    _make_parent(root)
    with _turn(root.parent / f".{root.name}.lock"):
        if _is_ready(root, wanted):  # made by the process we waited for
            return given
        if root.exists():
            _refuse_foreign(root)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"  # not mkdtemp: its mode is 0700
        tmp.mkdir()
        try:
            generate_synthetic(tmp, num_train, num_val, image_size, num_classes, seed, **scene)
            if root.exists():
                _remove_generated(root)
            os.rename(tmp, root)  # the old set stays whole until the new one is
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # our own fresh folder; already gone after the rename
    return given
