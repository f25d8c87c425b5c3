"""Evaluation: COCO metrics (official pycocotools COCOeval) and PASCAL VOC AP, for any dataset format.

Conventions: detections are per-image dicts ``{"image_id", "boxes" [D,4] xyxy float ORIGINAL image pixels,
"labels" [D] int64 in 1..K (0 = background), "scores" [D]}`` as :func:`inference_on_dataset` returns them; the
dataset gives ``classes``, ``label_to_cat_id``, ``get_image_info(i)`` and ``get_target(i)`` (no image decoding).
:func:`evaluate` returns the keys of ``metrics.json``:

- ``metric="coco"``: ``AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl`` (0..1, -1 where undefined, exactly
  ``COCOeval.stats``), ``AP_per_iou`` (10 floats, IoU 0.50..0.95) and ``per_class`` (class name -> AP);
- ``metric="voc"``: ``mAP_voc07`` (11-point), ``mAP_voc`` (area) and ``per_class_voc``
  (class name -> ``{"ap07", "ap", "num_gt"}``);
- ``metric="both"``: all of them.

Nothing is cached on the dataset: each call builds the ground truth of the dataset's images as they are then.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from detector.evaluation.coco import (BACKENDS, COCO_METRIC_NAMES, IOU_THRESHOLDS,
                                      build_coco_gt, coco_metrics, coco_results_to_detections, dataset_image_ids,
                                      detections_to_coco_results, load_coco_results,
                                      validate_coco_results, validate_detections)
from detector.config import metric_names
from detector.evaluation.inference import inference_on_dataset
from detector.evaluation.report import format_metrics
from detector.evaluation.voc import VOC_METRIC_NAMES, voc_ap, voc_metrics

METRICS = ("coco", "voc", "both")

__all__ = ["BACKENDS", "COCO_METRIC_NAMES", "IOU_THRESHOLDS", "METRICS", "VOC_METRIC_NAMES", "metric_names",
           "build_coco_gt", "coco_metrics", "coco_results_to_detections", "dataset_image_ids",
           "detections_to_coco_results", "evaluate", "evaluate_coco_results", "format_metrics",
           "inference_on_dataset", "load_coco_results", "validate_coco_results", "validate_detections", "voc_ap",
           "voc_metrics"]


def evaluate(dataset, detections: Sequence[dict], metric: str = "coco", backend: str = "pycocotools",
             image_ids: Iterable[int] | None = None) -> dict:
    """Score per-image detections against the dataset's ground truth.

    The images scored are ``image_ids`` when given, else the images that have an entry in ``detections`` (one per
    image run, empty ones included, as :func:`inference_on_dataset` returns; so ``max_images`` evaluation scores
    only the images that were run). Raises ValueError naming the first malformed entry.
    """
    _check_choices(metric, backend)
    validate_detections(dataset, detections)
    image_ids = [int(d["image_id"]) for d in detections] if image_ids is None else _known_ids(dataset, image_ids)
    metrics: dict = {}
    if metric in ("coco", "both"):
        results = detections_to_coco_results(dataset, detections)
        metrics.update(coco_metrics(build_coco_gt(dataset), results, backend, image_ids)[0])
    if metric in ("voc", "both"):
        metrics.update(voc_metrics(dataset, detections, image_ids=image_ids))
    return metrics


def evaluate_coco_results(dataset, results: list[dict], metric: str = "coco", backend: str = "pycocotools",
                          image_ids: Iterable[int] | None = None) -> dict:
    """Score COCO-format results (``{"image_id", "category_id", "bbox" xywh, "score"}``, ids of ``dataset``).

    The images scored are ``image_ids`` when given, else every image of the dataset (a results file has no entry for
    an image without detections). Same keys as :func:`evaluate`.
    """
    _check_choices(metric, backend)
    validate_coco_results(dataset, results)
    image_ids = None if image_ids is None else _known_ids(dataset, image_ids)
    metrics: dict = {}
    if metric in ("coco", "both"):
        metrics.update(coco_metrics(build_coco_gt(dataset), results, backend, image_ids)[0])
    if metric in ("voc", "both"):
        metrics.update(voc_metrics(dataset, coco_results_to_detections(dataset, results), image_ids=image_ids))
    return metrics


def _check_choices(metric: str, backend: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (eval.metric); expected one of {METRICS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (eval.backend); expected one of {BACKENDS}")


def _known_ids(dataset, image_ids: Iterable[int]) -> list[int]:
    known = set(dataset_image_ids(dataset))
    image_ids = [int(i) for i in image_ids]
    unknown = [i for i in image_ids if i not in known]
    if unknown:
        raise ValueError(f"image_ids: {unknown[0]} is not an image of the dataset ({len(known)} images); pass ids "
                         f"from dataset.get_image_info(i)['image_id']")
    return image_ids
