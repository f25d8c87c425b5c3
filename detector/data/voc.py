"""PASCAL VOC datasets: ``root/VOCdevkit/VOC<year>/{Annotations,ImageSets/Main,JPEGImages}``; a
split is ``"<year>/<set>"``, several joined with ``+``. Labels 1..20 follow :data:`VOC_CLASSES`;
``difficult`` becomes ``iscrowd``; VOC's 1-based inclusive pixels become ``(xmin - 1, ymin - 1,
xmax, ymax)`` in :func:`parse_voc_xml` only (detectron2)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .base import BACKGROUND, DatasetError, ImageRecord, Parsed, image_path

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def parse_split(split: str) -> list[tuple[str, str]]:
    """``"2007/trainval+2012/trainval"`` -> [("2007", "trainval"), ("2012", "trainval")]."""
    pairs = []
    for part in split.split("+"):
        year, _, image_set = part.strip().partition("/")
        if not year or not image_set:
            raise DatasetError(
                f"VOC split {split!r}: part {part!r} is not <year>/<set>; "
                f"use e.g. data.train_split=2007/trainval+2012/trainval"
            )
        pairs.append((year, image_set))
    return pairs


def parse_voc_xml(xml_path: Path, class_to_label: dict[str, int], **image) -> ImageRecord:
    """The record of one annotation file (``image``: its ``image_id``, ``path`` and ``file_name``);
    ``area`` is the box area."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DatasetError(
            f"{xml_path}: annotation file not found; the image set lists an image without XML"
        ) from None
    except ET.ParseError as exc:
        raise DatasetError(
            f"{xml_path}: malformed XML ({exc}); re-extract the VOC archive"
        ) from None

    def number(node, field: str, what: str) -> float:
        text = node.findtext(field)
        try:
            return float(text)
        except (TypeError, ValueError):
            raise DatasetError(
                f"{xml_path}: {what} field <{field}> is {text!r}; expected a number"
            ) from None

    size = root.find("size")
    if size is None:
        raise DatasetError(
            f"{xml_path}: missing <size>; expected "
            "<size><width>..</width><height>..</height></size>"
        )
    height, width = int(number(size, "height", "<size>")), int(number(size, "width", "<size>"))
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in class_to_label:
            raise DatasetError(
                f"{xml_path}: object {k} has <name> {name!r}, not one of the VOC classes "
                f"{', '.join(class_to_label)}"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"{xml_path}: object {k} ({name}) has no <bndbox>")
        x1, y1, x2, y2 = (
            number(bndbox, f, f"object {k} <bndbox>") for f in ("xmin", "ymin", "xmax", "ymax")
        )
        boxes.append((x1 - 1.0, y1 - 1.0, x2, y2))
        labels.append(class_to_label[name])
        difficult.append(obj.findtext("difficult", "0").strip() == "1")
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    return ImageRecord(
        height=height,
        width=width,
        boxes=boxes,
        labels=np.array(labels, dtype=np.int64),
        iscrowd=np.array(difficult, dtype=bool),
        area=((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32),
        **image,
    )


def parse_voc(root: str | Path, split: str, source: str) -> Parsed:
    """The records of every (year, set) in ``split``, in list order; label -> label (VOC has no
    ids). ``root`` holds ``VOCdevkit`` or is the devkit itself."""
    devkit = Path(root) / "VOCdevkit" if (Path(root) / "VOCdevkit").is_dir() else Path(root)
    class_to_label = {name: label for label, name in enumerate(VOC_CLASSES, start=1)}
    records, seen = [], set()
    for year, image_set in parse_split(split):
        base = devkit / f"VOC{year}"
        list_path = base / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_path.is_file():
            raise DatasetError(
                f"{list_path}: image set list not found; check data.root (VOCdevkit/VOC<year>) and "
                f"the split"
            )
        for name in (
            line.split()[0] for line in list_path.read_text().splitlines() if line.strip()
        ):
            try:
                # "2008_000123" -> 2008000123, unique over VOC2007 and 2012
                image_id = int(name.replace("_", ""))
            except ValueError:
                raise DatasetError(
                    f"{list_path}: VOC image name {name!r} is not numeric (expected like 000005 or "
                    f"2008_000123)"
                ) from None
            if image_id in seen:
                continue
            seen.add(image_id)
            path = image_path(base / "JPEGImages", f"{name}.jpg", f"{list_path}: image {name!r}")
            records.append(
                parse_voc_xml(
                    base / "Annotations" / f"{name}.xml",
                    class_to_label,
                    image_id=image_id,
                    path=path,
                    file_name=f"{name}.jpg",
                )
            )
    label_to_cat_id = {label: label for label in range(1, len(VOC_CLASSES) + 1)}
    return Parsed(records, [BACKGROUND, *VOC_CLASSES], label_to_cat_id, source)
