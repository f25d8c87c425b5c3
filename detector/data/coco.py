"""COCO-format datasets (COCO 2017 and the generated synthetic set):
``root/annotations/instances_<split>.json``, images under ``root/<split>/``. Labels 1..K follow the
sorted category ids (``label_to_cat_id`` maps back); xywh becomes xyxy in :func:`parse_coco` only.
Crowd annotations are kept as ``iscrowd``; ``area`` is the annotation's."""

from __future__ import annotations

import contextlib
import io
import math
import numbers
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from ..boxes import box_xywh_to_xyxy
from ..errors import read_json
from .base import BACKGROUND, DatasetError, ImageRecord, Parsed, image_path


def is_finite(value: object) -> bool:
    """A finite int or float, Python's or numpy's: true/false and text are not numbers here, and
    JSON's NaN and Infinity are no sizes or coordinates."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# each list of a COCO file: (what an entry is called, the fields it needs, those that are numbers)
ENTRY_FIELDS = {
    "images": ("image", ("id", "file_name", "height", "width"), ("id", "height", "width")),
    "categories": ("category", ("id", "name"), ("id",)),
    "annotations": (
        "annotation",
        ("id", "image_id", "category_id", "bbox"),
        ("bbox", "area", "iscrowd"),
    ),
}


def load_coco_json(ann_file: str | Path) -> COCO:
    """The annotation file as a pycocotools ``COCO`` (its prints silenced), checked once for
    :func:`parse_coco` (required fields, numeric fields, unique image ids): each error is one
    DatasetError line naming the entry."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DatasetError(
            f"{ann_file}: annotation file not found; check data.root and the split name "
            f"(expected <root>/annotations/instances_<split>.json)"
        )
    data = read_json(ann_file, DatasetError, "re-download or regenerate the file")
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: expected a JSON object with images/annotations/categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(
                f"{ann_file}: field {key!r} is missing or not a list; not a COCO instances file"
            )
    data.setdefault("annotations", [])
    for key, (where, fields, numeric) in ENTRY_FIELDS.items():
        for k, item in enumerate(data[key]):
            if not isinstance(item, dict):
                raise DatasetError(
                    f"{ann_file}: entry {k} of the {where}s is a {type(item).__name__}, not a JSON "
                    f"object; fix or remove that entry"
                )
            missing = [f for f in fields if f not in item]
            if missing:
                raise DatasetError(
                    f"{ann_file}: {where} {item.get('id', '?')} lacks field {missing[0]!r}; "
                    f"fix or remove that entry"
                )
            for field in (f for f in numeric if f in item):
                value = item[field]
                if field == "bbox":
                    ok = isinstance(value, list) and len(value) == 4 and all(map(is_finite, value))
                    want = "[x, y, w, h], 4 numbers"
                else:
                    ok, want = is_finite(value), "a number"
                if not ok:
                    raise DatasetError(
                        f"{ann_file}: {where} {item['id']} field {field!r} is {value!r}; expected "
                        f"{want} (not text, null, true/false, NaN or Infinity)"
                    )
    # image id -> its entry in "images"; pycocotools would keep only the last
    first: dict[int | float, int] = {}
    for k, image in enumerate(data["images"]):
        j = first.setdefault(image["id"], k)
        if j != k:
            raise DatasetError(
                f"{ann_file}: image id {image['id']} is used twice in 'images': entry {j} "
                f"(file_name {data['images'][j]['file_name']!r}) and entry {k} (file_name "
                f"{image['file_name']!r}); give each image its own id or remove the copy"
            )
    return coco_from_dict(data)


def coco_from_dict(data: dict, coco_cls: type = COCO) -> COCO:
    """A ``COCO`` of ``coco_cls`` (pycocotools' or faster_coco_eval's) indexing an instances dict,
    without its prints."""
    coco = coco_cls()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def parse_coco(coco: COCO, image_dir: str | Path, source: str) -> Parsed:
    """The split of a :func:`load_coco_json` file (records sorted by image id, labels 1..K the
    sorted category ids); an unknown id or a file_name outside ``image_dir`` raises
    :class:`DatasetError`."""
    cat_ids = sorted(coco.cats)
    cat_to_label = {cat_id: label for label, cat_id in enumerate(cat_ids, start=1)}
    classes = [BACKGROUND] + [coco.cats[c]["name"] for c in cat_ids]
    for ann in coco.dataset["annotations"]:
        if ann["category_id"] not in cat_to_label:
            raise DatasetError(
                f"{source}: annotation {ann['id']} has category_id {ann['category_id']}, which is "
                f"not in 'categories' (ids {cat_ids[:10]}{' ...' if len(cat_ids) > 10 else ''}); "
                "fix the annotation or add the category"
            )
        if ann["image_id"] not in coco.imgs:
            raise DatasetError(
                f"{source}: annotation {ann['id']} refers to image_id {ann['image_id']}, which is "
                "not in 'images'; remove the annotation or add the image"
            )
    records = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        anns = coco.imgToAnns.get(image_id, [])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = box_xywh_to_xyxy(xywh).numpy()  # [N,4]
        box_area = (xywh[:, 2] * xywh[:, 3]).numpy()
        area = np.array([a.get("area", b) for a, b in zip(anns, box_area)], dtype=np.float32)
        records.append(
            ImageRecord(
                image_id=int(image_id),
                file_name=info["file_name"],
                path=image_path(image_dir, info["file_name"], f"{source}: image {image_id}"),
                height=int(info["height"]),
                width=int(info["width"]),
                boxes=boxes,
                labels=np.array([cat_to_label[a["category_id"]] for a in anns], dtype=np.int64),
                iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
                area=area,
            )
        )
    return Parsed(records, classes, dict(enumerate(cat_ids, start=1)), source)
