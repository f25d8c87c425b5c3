"""The detection dataset shared by every format. Boxes are absolute xyxy float32 pixels of the
stored image; label 0 is background (``classes[0] == "__background__"``), 1..K foreground. A format
reader converts its box format only where it makes :class:`ImageRecord` s; ``dataset[(index,
sample_seed)]`` seeds the sample's transforms."""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

from detector.boxes import degenerate_box_mask, min_size_mask
from detector.errors import DetectorError

logger = logging.getLogger(__name__)

BACKGROUND = "__background__"


class DatasetError(DetectorError, ValueError):
    """A dataset file, field or value is wrong; the message names the file, the field and the
    fix."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and its annotations as parsed from disk (no pixels)."""

    image_id: int
    path: str  # absolute or root-relative path of the image file
    file_name: str  # the name as the annotation file gives it
    height: int
    width: int
    boxes: np.ndarray  # [N,4] float32 xyxy
    labels: np.ndarray  # [N] int64, 1..K
    iscrowd: np.ndarray  # [N] bool (COCO crowd, VOC difficult)
    area: np.ndarray  # [N] float32

    def select(
        self, keep: np.ndarray, labels: np.ndarray | None = None, boxes: np.ndarray | None = None
    ) -> "ImageRecord":
        """The record with only the annotations in ``keep`` (bool [N]), optionally new labels/boxes
        for them."""
        return replace(
            self,
            boxes=(self.boxes if boxes is None else boxes)[keep],
            labels=(self.labels if labels is None else labels)[keep],
            iscrowd=self.iscrowd[keep],
            area=self.area[keep],
        )


class Parsed(NamedTuple):
    """A split as a format's parser reads it: its records, the class names (index 0 background),
    label -> the source's category id, and the source that messages name."""

    records: list[ImageRecord]
    classes: list[str]
    label_to_cat_id: dict[int, int]
    source: str


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to uint8 [3,H,W] RGB, whatever its mode (torchvision's decoder, else
    PIL); 16-bit images are scaled by round(v / 257). An undecodable file or 32-bit pixels raise
    :class:`DatasetError` naming it (skipping it mid-epoch would make the training stream depend on
    which files are readable)."""
    try:
        # torchvision>=0.29 deprecates its decoders in favour of torchcodec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # uint8, or uint16 for 16-bit PNG
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as tv_exc:
        try:
            with Image.open(path) as im:
                mode = im.mode
                if mode.startswith("I;16"):  # PIL's convert("RGB") would clip these at 255
                    array = np.repeat(np.asarray(im).astype(np.uint16)[:, :, None], 3, axis=2)
                elif mode not in ("I", "F"):
                    array = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as pil_exc:
            raise DatasetError(
                f"{path}: cannot decode image ({str(tv_exc).splitlines()[-1].strip()}; PIL: "
                f"{pil_exc}); replace the file or remove the image from the annotation file / "
                f"image list"
            ) from None
        if mode in ("I", "F"):
            raise DatasetError(
                f"{path}: PIL mode {mode} image (32-bit integer or float pixels) has no "
                f"standard 8-bit scale; convert it to 8-bit RGB (or a 16-bit PNG/TIFF)"
            )
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
    if image.dtype == torch.uint16:
        # round(v/257)
        image = torch.div(image.to(torch.int32) + 128, 257, rounding_mode="floor").to(torch.uint8)
    return image


def image_path(image_dir: str | Path, file_name: object, where: str) -> str:
    """``image_dir/file_name``; a :class:`DatasetError` for an absolute name or one whose ``..``
    leaves ``image_dir`` (symbolic links are not followed)."""
    if not isinstance(file_name, str) or not file_name:
        raise DatasetError(
            f"{where} has file_name {file_name!r}; expected a path relative to the image folder "
            f"{image_dir}"
        )
    normal = os.path.normpath(file_name)
    if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
        raise DatasetError(
            f"{where} has file_name {file_name!r}, which is outside the image folder {image_dir}; "
            f"give a path relative to that folder (no leading / or ..)"
        )
    return str(Path(image_dir) / file_name)


def sanitize_records(parsed: Parsed) -> Parsed:
    """Clip boxes to their image, drop degenerate (non-finite, width/height <= 0) and fully-outside
    ones; log counts."""
    out, degenerate, outside, clipped = [], {}, {}, 0
    for rec in parsed.records:
        boxes = rec.boxes  # [N,4]
        bad = degenerate_box_mask(torch.tensor(boxes)).numpy()
        limits = np.array([rec.width, rec.height, rec.width, rec.height], dtype=np.float32)
        clip = np.clip(np.nan_to_num(boxes), 0, limits)
        gone = ~bad & degenerate_box_mask(torch.tensor(clip)).numpy()
        clipped += int((~bad & ~gone & (clip != boxes).any(axis=1)).sum())
        if bad.any():
            degenerate[rec.image_id] = int(bad.sum())
        if gone.any():
            outside[rec.image_id] = int(gone.sum())
        out.append(rec.select(~bad & ~gone, boxes=clip.astype(np.float32)))
    for name, counts in (
        ("degenerate (non-positive width/height)", degenerate),
        ("fully outside the image", outside),
    ):
        if counts:
            ids = ", ".join(map(str, list(counts)[:10])) + (" ..." if len(counts) > 10 else "")
            logger.warning(
                f"{parsed.source}: dropped {sum(counts.values())} {name} boxes in {len(counts)} "
                f"images: ids {ids}"
            )
    if clipped:
        logger.info(
            f"{parsed.source}: clipped {clipped} boxes that were partly outside their image"
        )
    return parsed._replace(records=out)


# draws of an outlier before its box stays clean (it never had room in the image)
OUTLIER_TRIES = 100


def _outliers(boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N,4] xyxy -> one outlier draw of each box: shifted, resized or both (configs/base.yaml)."""
    n, wh = len(boxes), boxes[:, 2:] - boxes[:, :2]  # [N,2]
    mode = rng.integers(3, size=n)  # 0 shift, 1 resize, 2 both
    angle, step = rng.uniform(0, 2 * np.pi, n), rng.uniform(1, 3, n)
    factor = 2.0 ** (rng.uniform(1, 2, (n, 2)) * rng.choice([-1, 1], (n, 2)))
    direction = np.stack([np.cos(angle), np.sin(angle)], 1)
    shift = np.where((mode != 1)[:, None], step[:, None] * direction * wh, 0)
    size = np.where((mode != 0)[:, None], factor, 1.0) * wh
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + shift
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def corrupt_records(
    records: Sequence[ImageRecord],
    fraction: float,
    kind: str = "jitter",
    scale: float = 0.2,
    seed: int = 0,
) -> list[ImageRecord]:
    """The records with a fixed random ``fraction`` of their non-crowd boxes corrupted as
    configs/base.yaml describes (``data.label_noise*``). Each image draws from
    ``np.random.default_rng([seed, image_id])``, independent of the other records; a box is chosen
    when its first draw u ~ U[0, 1) < fraction (nested across fractions). An outlier clipped to
    under 1 px (moved off the image) is drawn again, so the realised rate stays near ``fraction``
    for small boxes too; a jittered box under 1 px keeps its clean box. Labels, iscrowd and area
    are unchanged. ``kind``: jitter or outlier (the config's choices check it)."""
    if fraction <= 0:
        return list(records)
    out = []
    for rec in records:
        n = len(rec.boxes)
        rng = np.random.default_rng([seed, int(rec.image_id) % 2**64])
        chosen = (rng.random(n) < fraction) & ~rec.iscrowd  # [N]
        if not chosen.any():
            out.append(rec)
            continue
        boxes = rec.boxes.astype(np.float64)
        limits = [rec.width, rec.height, rec.width, rec.height]
        if kind == "jitter":
            wh = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
            noisy = np.clip(boxes + rng.uniform(-scale, scale, (n, 4)) * wh, 0, limits)
        else:
            noisy = np.clip(_outliers(boxes, rng), 0, limits)
            for _ in range(OUTLIER_TRIES):
                lost = chosen & ~min_size_mask(torch.tensor(noisy), 1).numpy()
                if not lost.any():
                    break
                noisy[lost] = np.clip(_outliers(boxes[lost], rng), 0, limits)
        chosen &= min_size_mask(torch.tensor(noisy), 1).numpy()
        out.append(replace(rec, boxes=np.where(chosen[:, None], noisy, boxes).astype(np.float32)))
    corrupted, total = realised_noise(records, out)
    logger.info(
        f"label noise ({kind}, seed {seed}): corrupted {corrupted} of {total} non-crowd training "
        "boxes"
    )
    return out


def realised_noise(clean: Sequence[ImageRecord], noisy: Sequence[ImageRecord]) -> tuple[int, int]:
    """(boxes that differ, non-crowd boxes) between the same records clean and corrupted: the label
    noise realised over the boxes it may corrupt (crowd boxes never are)."""
    pairs = list(zip(clean, noisy))
    moved = sum(int((a.boxes != b.boxes).any(axis=1).sum()) for a, b in pairs)
    return moved, sum(int((~a.iscrowd).sum()) for a, _ in pairs)


@dataclass(kw_only=True, eq=False, repr=False)
class DetectionDataset(torch.utils.data.Dataset):
    """A list of :class:`ImageRecord` with ``classes`` (index 0 background) and ``label_to_cat_id``
    (label -> the source's category id); returns ``(image uint8 [3,H,W], target)``. ``transforms``:
    ``f(image, target, generator)`` or None; ``proposals``: image id -> precomputed [P,4] original
    pixels, added to targets; ``name``: for messages."""

    records: list[ImageRecord]
    classes: list[str]
    label_to_cat_id: dict[int, int]
    transforms: Callable | None = None
    name: str = "dataset"
    # image_id -> [P,4] xyxy original pixels (model.proposals: precomputed)
    proposals: dict[int, torch.Tensor] | None = None

    def __post_init__(self):
        self.records = list(self.records)
        self.classes = list(self.classes)
        self.label_to_cat_id = dict(self.label_to_cat_id)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        boxes = sum(len(r.boxes) for r in self.records)
        size = f"{len(self)} images, {boxes} boxes, {len(self.classes) - 1} classes"
        return f"{type(self).__name__}({self.name}: {size})"

    def get_image_info(self, i: int) -> dict:
        """``{"image_id", "file_name", "height", "width"}`` of image i, without decoding it."""
        return {
            k: getattr(self.records[i], k) for k in ("image_id", "file_name", "height", "width")
        }

    def get_target(self, i: int) -> dict:
        """Raw target of image i, without decoding: boxes [N,4], labels [N], image_id, iscrowd [N],
        area [N]."""
        rec = self.records[i]
        target = {
            key: torch.from_numpy(getattr(rec, key).copy())
            for key in ("boxes", "labels", "iscrowd", "area")
        }
        if self.proposals is not None:
            target["proposals"] = self.proposals[rec.image_id].clone()
        return {**target, "image_id": rec.image_id}

    def subset(self, indices: Sequence[int], name: str | None = None) -> "DetectionDataset":
        """A new dataset of the images at ``indices`` (in that order), with the same classes,
        category ids and transforms; ``self`` is left unchanged (its evaluation ground truth, its
        loaders stay valid)."""
        out = copy.copy(self)
        out.records = [self.records[int(i)] for i in indices]
        out.name = self.name if name is None else name
        if self.proposals is not None:
            out.proposals = {r.image_id: self.proposals[r.image_id] for r in out.records}
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, sample_seed = key if isinstance(key, (tuple, list)) else (key, key)
        index = int(index)
        rec = self.records[index]
        image = read_image(rec.path)  # [3,H,W] uint8
        if tuple(image.shape[1:]) != (rec.height, rec.width):
            raise DatasetError(
                f"{rec.path}: image is {image.shape[2]}x{image.shape[1]} (WxH) but {self.name} "
                f"says {rec.width}x{rec.height} (image_id {rec.image_id}); fix the width/height "
                "fields"
            )
        target = self.get_target(index)
        if self.transforms is not None:
            generator = torch.Generator().manual_seed(int(sample_seed))
            image, target = self.transforms(image, target, generator)
        return image, target
