"""PASCAL VOC box AP for any dataset format: the VOC2007 11-point metric and the area (VOC2010+)
metric.

Per class as the devkit's ``voc_eval`` (py-faster-rcnn), except that IoU has no +1 pixel (continuous
xyxy boxes); ``difficult`` (our ``iscrowd``) GT is neither TP nor FP. A class without non-difficult
GT has AP -1, out of the mean.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from detector.boxes import box_overlap_one_to_many
from detector.config import VOC_METRIC_NAMES
from detector.evaluation.coco import mean_defined


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from the cumulative recall/precision curve [D]: VOC2007's 11-point mean
    (``use_07_metric``), else the area under the precision envelope (VOC2010+)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = np.max(precision[recall >= t]) if np.any(recall >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # precision envelope: max precision at any recall >= r
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def voc_metrics(
    dataset,
    detections: Sequence[dict],
    image_ids: Iterable[int] | None = None,
) -> dict:
    """VOC AP of validated per-image detections on ``image_ids`` (default all): ``mAP_voc07``,
    ``mAP_voc`` (means over the defined classes, -1 when none) and ``per_class_voc`` ``{name:
    {"ap07", "ap", "num_gt"}}``."""
    wanted = None if image_ids is None else {int(i) for i in image_ids}
    num_classes = len(dataset.classes) - 1
    # label -> image_id -> (boxes [G,4], difficult [G])
    gt: list[dict[int, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(num_classes + 1)]
    for index in range(len(dataset)):
        image_id = int(dataset.get_image_info(index)["image_id"])
        if wanted is not None and image_id not in wanted:
            continue
        target = dataset.get_target(index)
        boxes = torch.as_tensor(target["boxes"]).reshape(-1, 4).double().numpy()
        labels = torch.as_tensor(target["labels"]).numpy()
        difficult = torch.as_tensor(target["iscrowd"]).bool().numpy()
        for label in np.unique(labels):
            gt[label][image_id] = (boxes[labels == label], difficult[labels == label])

    dets = [d for d in detections if wanted is None or int(d["image_id"]) in wanted]

    def column(key: str, dtype: torch.dtype, *shape: int) -> np.ndarray:
        """Every detection's ``key`` values, concatenated: [D, *shape]."""
        values = [torch.as_tensor(d[key]).to(dtype).reshape(-1, *shape).cpu() for d in dets]
        return torch.cat([torch.zeros(0, *shape, dtype=dtype), *values]).numpy()

    det_labels = column("labels", torch.int64)
    det_image_ids = np.repeat(
        [int(d["image_id"]) for d in dets], [torch.as_tensor(d["labels"]).numel() for d in dets]
    )
    det_scores = column("scores", torch.float64)
    det_boxes = column("boxes", torch.float64, 4)

    per_class = {}
    for label in range(1, num_classes + 1):
        mask = det_labels == label
        tp, fp, npos = _match_class(
            gt[label], det_image_ids[mask], det_scores[mask], det_boxes[mask]
        )
        if npos == 0:
            ap07 = ap = -1.0
        else:
            recall = tp / npos
            precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            ap07, ap = voc_ap(recall, precision, use_07_metric=True), voc_ap(recall, precision)
        per_class[dataset.classes[label]] = {"ap07": ap07, "ap": ap, "num_gt": npos}
    mean_ap07, mean_ap = VOC_METRIC_NAMES
    return {
        mean_ap07: mean_defined([c["ap07"] for c in per_class.values()]),
        mean_ap: mean_defined([c["ap"] for c in per_class.values()]),
        "per_class_voc": per_class,
    }


def _match_class(
    gt: dict[int, tuple[np.ndarray, np.ndarray]],
    image_ids: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy devkit matching of one class (``gt``: image_id -> (boxes [G,4], difficult [G])), by
    descending score (stable): each detection to its image's GT of largest IoU, TP when IoU >
    0.5 and the GT is free, else FP -> cumulative TP [D], cumulative FP [D], npos."""
    npos = int(sum(int((~difficult).sum()) for _, difficult in gt.values()))
    taken = {image_id: np.zeros(len(b), dtype=bool) for image_id, (b, _) in gt.items()}
    order = np.argsort(-scores, kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, d in enumerate(order):
        image_id = int(image_ids[d])
        if image_id not in gt:
            fp[rank] = 1
            continue
        gt_boxes, difficult = gt[image_id]
        inter, area, gt_areas = box_overlap_one_to_many(boxes[d], gt_boxes)
        ious = inter / (area + gt_areas - inter)  # [G]
        best = int(np.argmax(ious))
        if ious[best] > 0.5 and difficult[best]:
            continue  # a match with a difficult GT is neither TP nor FP
        if ious[best] > 0.5 and not taken[image_id][best]:
            tp[rank] = 1
            taken[image_id][best] = True
        else:
            fp[rank] = 1
    return np.cumsum(tp), np.cumsum(fp), npos
