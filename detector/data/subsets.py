"""Subsets of a parsed dataset, for every format (``tools/make_subset.py`` writes what
``build_dataset`` selects)."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import BACKGROUND, DatasetError, Parsed

logger = logging.getLogger(__name__)


def select_classes(parsed: Parsed, names: Sequence[str]) -> Parsed:
    """Keep the annotations of ``names`` only, relabelled 1..len(names) in that order."""
    old = {name: label for label, name in enumerate(parsed.classes) if label > 0}
    for name in names:
        if name not in old:
            close = difflib.get_close_matches(name, list(old), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(old)}"
            raise DatasetError(
                f"{parsed.source}: data.classes has {name!r}, which is not a class of the "
                f"dataset{hint}"
            )
    if len(set(names)) != len(names):
        raise DatasetError(f"{parsed.source}: data.classes lists a class twice: {list(names)}")
    lut = np.zeros(len(parsed.classes), dtype=np.int64)  # old label -> new label (0 = dropped)
    for new, name in enumerate(names, start=1):
        lut[old[name]] = new
    records = [rec.select(lut[rec.labels] > 0, labels=lut[rec.labels]) for rec in parsed.records]
    cat_ids = {new: parsed.label_to_cat_id[old[name]] for new, name in enumerate(names, start=1)}
    return parsed._replace(records=records, classes=[BACKGROUND, *names], label_to_cat_id=cat_ids)


def subset_records(
    parsed: Parsed,
    *,
    keep_classes: Sequence[str] | None = None,
    keep_empty: bool = True,
    image_ids_file: str | None = None,
    fraction: float | None = None,
    seed: int = 0,
    max_images: int | None = None,
    ids_source: str = "data.image_ids_file",
) -> Parsed:
    """The split after, in order: ``keep_classes`` (relabelled 1..K in that order),
    ``keep_empty=False`` (drop images without a non-crowd box), ``image_ids_file`` (a COCO id or VOC
    name a line; blank lines and ``#`` comments ignored), ``fraction`` (``round(fraction * n)``, at
    least 1, drawn with ``seed``, order kept), ``max_images`` (the first ones). ``ids_source`` names
    the setting in messages."""
    if image_ids_file and not Path(image_ids_file).is_file():
        raise DatasetError(f"{image_ids_file}: image id file ({ids_source}) not found")
    if keep_classes:
        parsed = select_classes(parsed, keep_classes)
    records, source = parsed.records, parsed.source
    if not keep_empty:
        records = [r for r in records if (~r.iscrowd).any()]
    if image_ids_file:
        try:
            lines = Path(image_ids_file).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{image_ids_file}: image id file ({ids_source}) is not UTF-8 text "
                f"(byte {exc.start}); "
                f"expected one image id or name a line"
            ) from None
        wanted = {line.split("#")[0].strip() for line in lines} - {""}
        kept = [r for r in records if str(r.image_id) in wanted or Path(r.file_name).stem in wanted]
        found = {str(r.image_id) for r in kept} | {Path(r.file_name).stem for r in kept}
        if not kept:
            raise DatasetError(
                f"{source}: none of the {len(wanted)} ids in {ids_source} is an image of this "
                f"split; check the file and data.train_split/val_split"
            )
        if len(wanted - found):
            logger.warning(
                f"{source}: {len(wanted - found)} ids of {ids_source} are not in this split "
                f"(or were filtered out), e.g. {sorted(wanted - found)[:3]}"
            )
        records = kept
    if fraction is not None and records:
        count = min(len(records), max(1, int(round(fraction * len(records)))))
        records = [
            records[i]
            for i in np.sort(np.random.default_rng(seed).choice(len(records), count, replace=False))
        ]
    if max_images is not None:
        records = records[:max_images]
    return parsed._replace(records=records)


def subset_coco_json(data: dict, image_ids: set[int], cat_ids: Sequence[int] | None) -> dict:
    """A COCO instances dict restricted to ``image_ids`` and (when given) ``cat_ids``, category ids
    unchanged."""
    keep_cats = set(cat_ids) if cat_ids is not None else {c["id"] for c in data["categories"]}
    return {
        **data,
        "images": [im for im in data["images"] if im["id"] in image_ids],
        "annotations": [
            a
            for a in data.get("annotations", [])
            if a["image_id"] in image_ids and a["category_id"] in keep_cats
        ],
        "categories": [c for c in data["categories"] if c["id"] in keep_cats],
    }
