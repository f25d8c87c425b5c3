"""How well a run's true-positive detections are localised, from ``eval/detections.json`` and the
val ground truth of its stored ``config.yaml``: each detection with score >= :data:`SCORE_THRESHOLD`
is matched the COCO way (per image and category by descending score, to the unmatched non-crowd box
it overlaps most, at IoU >= :data:`MATCH_IOU`); the matched IoUs are summarised (:func:`summarise`),
with TIDE's localisation-error dAP when ``tidecv`` imports.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Mapping

import torch

SCORE_THRESHOLD = 0.05
MATCH_IOU = 0.5
TIDE_METRIC = "tide_loc_dap"
TIDE_HIGH_IOU = 0.75
TIDE_HIGH_METRIC = "tide_loc75_dap"

# image id -> (boxes [N,4] xyxy in original pixels, category ids [N], crowd [N] bool)
GroundTruth = Mapping[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def load_ground_truth(cfg) -> GroundTruth:
    from detector.data.build import build_dataset

    dataset = build_dataset(cfg, "val", transforms=False)
    gt = {}
    for i in range(len(dataset)):
        target = dataset.get_target(i)
        cats = torch.tensor(
            [dataset.label_to_cat_id[int(label)] for label in target["labels"]], dtype=torch.long
        )
        gt[int(target["image_id"])] = (target["boxes"].float(), cats, target["iscrowd"].bool())
    return gt


def tp_ious(gt: GroundTruth, detections: list[dict]) -> torch.Tensor:
    """The IoU of every true positive of ``detections`` (COCO results) with its matched ground
    truth."""
    from torchvision.ops import box_iou

    by_key: dict[tuple[int, int], list[dict]] = {}
    for det in detections:
        if det["score"] >= SCORE_THRESHOLD:
            by_key.setdefault((int(det["image_id"]), int(det["category_id"])), []).append(det)
    ious = []
    for (image_id, cat), dets in by_key.items():
        if image_id not in gt:
            continue
        boxes, cats, crowd = gt[image_id]
        keep = (cats == cat) & ~crowd
        if not keep.any():
            continue
        # stable: ties keep the file's order, as COCOeval's mergesort
        dets.sort(key=lambda d: -d["score"])
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)]
        overlaps = box_iou(torch.tensor(xyxy, dtype=torch.float32), boxes[keep])
        matched = torch.zeros(overlaps.shape[1], dtype=torch.bool)
        for row in overlaps:
            row = row.masked_fill(matched, -1.0)
            best = int(row.argmax())
            if row[best] >= MATCH_IOU:
                matched[best] = True
                ious.append(float(row[best]))
    return torch.tensor(ious, dtype=torch.float32)


def summarise(ious: torch.Tensor) -> dict[str, float | None]:
    if not len(ious):
        return {"tp_count": 0, "tp_iou_median": None, "tp_iou_ge75": None, "tp_iou_ge90": None}
    return {
        "tp_count": len(ious),
        "tp_iou_median": float(ious.quantile(0.5)),
        "tp_iou_ge75": float((ious >= 0.75).float().mean()),
        "tp_iou_ge90": float((ious >= 0.9).float().mean()),
    }


def tide_available() -> bool:
    try:
        import tidecv  # noqa: F401
    except Exception:  # not installed, or broken by its dependencies (opencv, numpy)
        return False
    return True


def tide_loc_dap(gt: GroundTruth, detections: list[dict]) -> dict[str, float] | None:
    """TIDE's localisation-error dAP at its default (a TP at IoU >= 0.5; an error at 0.1 to 0.5:
    :data:`TIDE_METRIC`) and at :data:`TIDE_HIGH_IOU` (an error at 0.1 to 0.75, where box losses
    differ: :data:`TIDE_HIGH_METRIC`); None without ``tidecv`` or detections. Built from ``gt``:
    tidecv's COCO reader needs segmentations."""
    if not tide_available() or not detections:  # tidecv divides by zero without detections
        return None
    from tidecv import TIDE, Data

    truth, preds = Data("gt"), Data("dets")
    for image_id, (boxes, cats, crowd) in gt.items():
        truth.add_image(image_id, str(image_id))
        for (x1, y1, x2, y2), cat, is_crowd in zip(boxes.tolist(), cats.tolist(), crowd.tolist()):
            (truth.add_ignore_region if is_crowd else truth.add_ground_truth)(
                image_id, cat, [x1, y1, x2 - x1, y2 - y1]
            )
    for det in detections:
        preds.add_detection(
            int(det["image_id"]), int(det["category_id"]), float(det["score"]), list(det["bbox"])
        )
    tide = TIDE()
    names = {TIDE_METRIC: 0.5, TIDE_HIGH_METRIC: TIDE_HIGH_IOU}
    with contextlib.redirect_stdout(io.StringIO()):
        for name, threshold in names.items():
            tide.evaluate(truth, preds, pos_threshold=threshold, mode=TIDE.BOX, name=name)
        errors = tide.get_main_errors()
    return {name: float(errors[name]["Loc"]) for name in names}


def run_localisation(
    run_dir: Path, ground_truth: dict
) -> tuple[dict[str, float | None], torch.Tensor | None]:
    """(the :func:`summarise` and TIDE values, the TP IoUs) of one run; ({}, None) without
    ``eval/detections.json``. ``ground_truth``: the caller's cache of the val ground truth per data
    config."""
    path = run_dir / "eval" / "detections.json"
    if not path.is_file():
        return {}, None
    from detector.config import load_config

    cfg = load_config([run_dir / "config.yaml"])
    key = json.dumps(cfg.data.to_dict(), sort_keys=True)
    if key not in ground_truth:
        ground_truth[key] = load_ground_truth(cfg)
    gt = ground_truth[key]
    detections = json.loads(path.read_text())
    ious = tp_ious(gt, detections)
    tide = tide_loc_dap(gt, detections) or dict.fromkeys((TIDE_METRIC, TIDE_HIGH_METRIC))
    return {**summarise(ious), **tide}, ious
