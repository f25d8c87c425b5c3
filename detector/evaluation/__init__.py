"""Evaluation: COCO metrics (official pycocotools COCOeval) and PASCAL VOC AP, for any dataset
format, and their text tables (:func:`format_metrics`: percentages with one decimal, -1 "undefined"
as ``-``).

Detections are per-image dicts ``{"image_id", "boxes" [D,4] xyxy float ORIGINAL pixels, "labels" [D]
1..K, "scores" [D]}``; the dataset gives ``classes``, ``label_to_cat_id``, ``get_image_info(i)`` and
``get_target(i)``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from detector.config import COCO_METRIC_NAMES
from detector.evaluation.coco import (
    IOU_THRESHOLDS,
    build_coco_gt,
    coco_metrics,
    coco_results_to_detections,
    dataset_image_ids,
    detections_to_coco_results,
    validate_coco_results,
    validate_detections,
)
from detector.evaluation.voc import voc_metrics


def evaluate(
    dataset,
    detections: Sequence[dict],
    metric: str = "coco",
    backend: str = "pycocotools",
    image_ids: Iterable[int] | None = None,
) -> dict:
    """Score per-image detections against the dataset's ground truth: the images ``image_ids``, else
    those with an entry in ``detections`` (one per image run). Raises ValueError naming the first
    malformed entry. The keys of ``metrics.json``: coco gives COCOeval's 12, ``AP_per_iou``,
    ``AP90``, ``per_class``; voc gives ``mAP_voc07``, ``mAP_voc``, ``per_class_voc``; both gives
    all."""
    validate_detections(dataset, detections)
    image_ids = [int(d["image_id"]) for d in detections] if image_ids is None else image_ids
    return _score(dataset, metric, backend, image_ids, detections=detections)


def evaluate_coco_results(
    dataset,
    results: list[dict],
    metric: str = "coco",
    backend: str = "pycocotools",
    image_ids: Iterable[int] | None = None,
) -> dict:
    """Score COCO-format results (ids of ``dataset``) on ``image_ids``, else every image; keys as
    :func:`evaluate`."""
    validate_coco_results(dataset, results)
    return _score(dataset, metric, backend, image_ids, results=results)


def _score(dataset, metric: str, backend: str, image_ids, detections=None, results=None) -> dict:
    """The metrics of validated per-image ``detections`` or COCO ``results`` (each converted to the
    other as needed)."""
    if image_ids is not None:
        known = set(dataset_image_ids(dataset))
        image_ids = [int(i) for i in image_ids]
        unknown = [i for i in image_ids if i not in known]
        if unknown:
            raise ValueError(
                f"image_ids: {unknown[0]} is not an image of the dataset ({len(known)} images); "
                "pass ids from dataset.get_image_info(i)['image_id']"
            )
    metrics: dict = {}
    if metric in ("coco", "both"):
        results = detections_to_coco_results(dataset, detections) if results is None else results
        metrics.update(coco_metrics(build_coco_gt(dataset), results, backend, image_ids))
    if metric in ("voc", "both"):
        detections = (
            coco_results_to_detections(dataset, results) if detections is None else detections
        )
        metrics.update(voc_metrics(dataset, detections, image_ids=image_ids))
    return metrics


def format_metrics(metrics: dict) -> str:
    """The COCO 12-number table, the AP-per-IoU row, the per-class COCO AP table and the VOC table,
    as text."""
    sections = []
    if all(name in metrics for name in COCO_METRIC_NAMES):
        lines = ["COCO box metrics (pycocotools COCOeval)"]
        # COCOeval.summarize's rows, read off the names (AP50, APs, AR10, ...)
        for key in COCO_METRIC_NAMES:
            kind = "Average Precision" if key.startswith("AP") else "Average Recall"
            iou = {"AP50": "0.50", "AP75": "0.75"}.get(key, "0.50:0.95")
            area = {"s": "small", "m": "medium", "l": "large"}.get(key[-1], "all")
            dets = {"AR1": 1, "AR10": 10}.get(key, 100)
            lines.append(
                f"  {key:<6} {kind:<17} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3} ] = "
                f"{_pct(metrics[key])}"
            )
        sections.append("\n".join(lines))
    if "AP_per_iou" in metrics:
        header = " ".join(f"{f'AP{round(t * 100)}':>6}" for t in IOU_THRESHOLDS)
        values = " ".join(f"{_pct(v):>6}" for v in metrics["AP_per_iou"])
        sections.append(f"AP per IoU threshold\n  {header}\n  {values}")
    if "per_class" in metrics:
        sections.append(
            _class_table(
                "COCO AP per class (IoU 0.50:0.95)",
                ("AP",),
                {name: (ap,) for name, ap in metrics["per_class"].items()},
            )
        )
    if "per_class_voc" in metrics:
        rows = {name: (c["ap07"], c["ap"]) for name, c in metrics["per_class_voc"].items()}
        rows["mAP"] = (metrics["mAP_voc07"], metrics["mAP_voc"])
        sections.append(_class_table("PASCAL VOC AP per class (IoU > 0.5)", ("AP07", "AP"), rows))
    return "\n\n".join(sections)


def _class_table(title: str, columns: tuple[str, ...], rows: dict[str, tuple[float, ...]]) -> str:
    width = max([len("class")] + [len(name) for name in rows])
    lines = [title, "  " + f"{'class':<{width}} " + " ".join(f"{c:>6}" for c in columns)]
    for name, values in rows.items():
        lines.append("  " + f"{name:<{width}} " + " ".join(f"{_pct(v):>6}" for v in values))
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if value < 0 else f"{100 * value:.1f}"
