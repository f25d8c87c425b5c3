"""Evaluation: COCO metrics (official pycocotools COCOeval) and PASCAL VOC AP, for any dataset format.

Detections are per-image dicts ``{"image_id", "boxes" [D,4] xyxy float ORIGINAL pixels, "labels" [D] 1..K,
"scores" [D]}``; the dataset gives ``classes``, ``label_to_cat_id``, ``get_image_info(i)`` and ``get_target(i)``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from detector.evaluation.coco import (COCO_METRIC_NAMES, IOU_THRESHOLDS, build_coco_gt, coco_metrics,
                                      coco_results_to_detections, dataset_image_ids, detections_to_coco_results,
                                      load_coco_results, validate_coco_results, validate_detections)
from detector.config import METRIC_NAMES
from detector.evaluation.inference import inference_on_dataset
from detector.evaluation.report import format_metrics
from detector.evaluation.voc import VOC_METRIC_NAMES, voc_ap, voc_metrics

__all__ = ["COCO_METRIC_NAMES", "IOU_THRESHOLDS", "METRIC_NAMES", "VOC_METRIC_NAMES",
           "build_coco_gt", "coco_metrics", "coco_results_to_detections", "dataset_image_ids",
           "detections_to_coco_results", "evaluate", "evaluate_coco_results", "format_metrics",
           "inference_on_dataset", "load_coco_results", "validate_coco_results", "validate_detections", "voc_ap",
           "voc_metrics"]


def evaluate(dataset, detections: Sequence[dict], metric: str = "coco", backend: str = "pycocotools",
             image_ids: Iterable[int] | None = None) -> dict:
    """Score per-image detections against the dataset's ground truth: the images ``image_ids``, else those with an
    entry in ``detections`` (one per image run). Raises ValueError naming the first malformed entry. The keys of
    ``metrics.json``: coco gives COCOeval's 12, ``AP_per_iou``, ``AP90``, ``per_class``; voc gives ``mAP_voc07``,
    ``mAP_voc``, ``per_class_voc``; both gives all."""
    validate_detections(dataset, detections)
    image_ids = [int(d["image_id"]) for d in detections] if image_ids is None else image_ids
    return _score(dataset, metric, backend, image_ids, detections=detections)


def evaluate_coco_results(dataset, results: list[dict], metric: str = "coco", backend: str = "pycocotools",
                          image_ids: Iterable[int] | None = None) -> dict:
    """Score COCO-format results (ids of ``dataset``) on ``image_ids``, else every image; keys as :func:`evaluate`."""
    validate_coco_results(dataset, results)
    return _score(dataset, metric, backend, image_ids, results=results)


def _score(dataset, metric: str, backend: str, image_ids, detections=None, results=None) -> dict:
    """The metrics of validated per-image ``detections`` or COCO ``results`` (each converted to the other as needed)."""
    if metric not in METRIC_NAMES:  # the backend is checked where COCOeval is built
        raise ValueError(f"unknown metric {metric!r} (eval.metric); expected one of {tuple(METRIC_NAMES)}")
    if image_ids is not None:
        known = set(dataset_image_ids(dataset))
        image_ids = [int(i) for i in image_ids]
        unknown = [i for i in image_ids if i not in known]
        if unknown:
            raise ValueError(f"image_ids: {unknown[0]} is not an image of the dataset ({len(known)} images); pass "
                             f"ids from dataset.get_image_info(i)['image_id']")
    metrics: dict = {}
    if metric in ("coco", "both"):
        results = detections_to_coco_results(dataset, detections) if results is None else results
        metrics.update(coco_metrics(build_coco_gt(dataset), results, backend, image_ids)[0])
    if metric in ("voc", "both"):
        detections = coco_results_to_detections(dataset, results) if detections is None else detections
        metrics.update(voc_metrics(dataset, detections, image_ids=image_ids))
    return metrics
