"""COCO box metrics through the official COCOeval, for any dataset format (COCO, VOC, synthetic).

Boxes cross from the package's xyxy ORIGINAL pixels with labels 1..K to COCO's xywh with the
dataset's category ids only in :func:`build_coco_gt` (a VOC ``difficult`` object becomes
``iscrowd``) and :func:`detections_to_coco_results`.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.boxes import box_xywh_to_xyxy, box_xyxy_to_xywh, degenerate_box_mask
from detector.config import COCO_METRIC_NAMES
from detector.data.coco import coco_from_dict, is_finite
from detector.errors import read_json

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def dataset_image_ids(dataset) -> list[int]:
    """The image ids of the dataset, in its order (no image decoding)."""
    return [int(dataset.get_image_info(i)["image_id"]) for i in range(len(dataset))]


def build_coco_gt(dataset) -> COCO:
    """The dataset's ground truth as a pycocotools ``COCO`` (no decoding, nothing cached).
    Annotation ids start at 1 (COCOeval's 0 is "unmatched")."""
    categories = [
        {"id": int(cat_id), "name": dataset.classes[label], "supercategory": ""}
        for label, cat_id in sorted(dataset.label_to_cat_id.items())
    ]
    images, annotations = [], []
    for index in range(len(dataset)):
        info = dataset.get_image_info(index)
        target = dataset.get_target(index)
        image_id = int(info["image_id"])
        images.append(
            {
                "id": image_id,
                "file_name": info["file_name"],
                "height": int(info["height"]),
                "width": int(info["width"]),
            }
        )
        entries = _coco_entries(
            dataset,
            image_id,
            torch.as_tensor(target["boxes"]),
            target["labels"],
            area=torch.as_tensor(target["area"]).double(),
            iscrowd=torch.as_tensor(target["iscrowd"]).int(),
        )
        annotations += [{"id": len(annotations) + k, **a} for k, a in enumerate(entries, 1)]
    return coco_from_dict(
        {
            "info": {"description": f"ground truth of {type(dataset).__name__}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
    )


def detections_to_coco_results(dataset, detections: Sequence[dict]) -> list[dict]:
    """Per-image detections ``{"image_id", "boxes" [D,4] xyxy, "labels" [D] 1..K, "scores" [D]}`` ->
    COCO result dicts ``{"image_id", "category_id", "bbox" [x,y,w,h], "score"}`` (boxes keep their
    float32 values)."""
    results = []
    for det in detections:
        results += _coco_entries(
            dataset,
            int(det["image_id"]),
            torch.as_tensor(det["boxes"], dtype=torch.float32),
            det["labels"],
            score=torch.as_tensor(det["scores"], dtype=torch.float32),
        )
    return results


def _coco_entries(dataset, image_id: int, boxes, labels, **columns) -> list[dict]:
    """One COCO dict per box of an image: ``image_id``, ``category_id`` (the label's), ``bbox``
    [x,y,w,h] from ``boxes`` [N,4] xyxy, then each of ``columns`` (name -> [N] values)."""
    xywh = box_xyxy_to_xywh(boxes.reshape(-1, 4)).tolist()
    cat_ids = [int(dataset.label_to_cat_id[label]) for label in torch.as_tensor(labels).tolist()]
    values = [torch.as_tensor(column).tolist() for column in columns.values()]
    return [
        {"image_id": image_id, "category_id": cat_id, "bbox": box, **dict(zip(columns, row))}
        for box, cat_id, *row in zip(xywh, cat_ids, *values)
    ]


def coco_results_to_detections(dataset, results: Sequence[dict]) -> list[dict]:
    """COCO result dicts -> per-image detections (xyxy, labels 1..K), one entry per image id that
    has a result."""
    cat_id_to_label = {int(cat_id): label for label, cat_id in dataset.label_to_cat_id.items()}
    grouped: dict[int, list[dict]] = {}
    for result in results:
        grouped.setdefault(int(result["image_id"]), []).append(result)
    detections = []
    for image_id, items in grouped.items():
        boxes_xywh = torch.tensor([r["bbox"] for r in items], dtype=torch.float32).reshape(-1, 4)
        detections.append(
            {
                "image_id": image_id,
                "boxes": box_xywh_to_xyxy(boxes_xywh),
                "labels": torch.tensor([cat_id_to_label[int(r["category_id"])] for r in items]),
                "scores": torch.tensor([float(r["score"]) for r in items], dtype=torch.float32),
            }
        )
    return detections


def validate_detections(dataset, detections: Sequence[dict]) -> None:
    """Raise ValueError naming the first bad per-image entry: unknown or repeated image id, label
    outside 1..K, NaN/inf box or score, x2 <= x1 or y2 <= y1, or shapes other than boxes [D,4],
    labels [D], scores [D]."""
    valid_labels = set(dataset.label_to_cat_id)
    seen: set[int] = set()
    if not isinstance(detections, (list, tuple)):
        raise ValueError(
            f"detections: expected a list of per-image dicts, got {type(detections).__name__}"
        )
    for where, det in _entries(
        dataset,
        detections,
        ("image_id", "boxes", "labels", "scores"),
        lambda i: f"detections[{i}]",
        " (boxes [D,4] xyxy, labels [D] in 1..K, scores [D])",
    ):
        if int(det["image_id"]) in seen:
            raise ValueError(
                f"{where}: image_id repeated; give one entry per image with all its detections"
            )
        seen.add(int(det["image_id"]))
        boxes = torch.as_tensor(det["boxes"]).double()
        labels = torch.as_tensor(det["labels"])
        scores = torch.as_tensor(det["scores"]).double()
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"{where}: field 'boxes' has shape {list(boxes.shape)}; expected [D, 4] xyxy"
            )
        num = boxes.shape[0]
        if labels.shape != (num,) or scores.shape != (num,):
            raise ValueError(
                f"{where}: fields 'labels' {list(labels.shape)} and 'scores' {list(scores.shape)} "
                f"must both have shape [{num}] to match 'boxes' [{num}, 4]"
            )
        unknown_label = [label not in valid_labels for label in labels.tolist()]
        checks = (  # (bad [D] bool, what detection j has), the first bad one is reported
            (
                ~torch.isfinite(scores),
                "field 'scores' {score}; expected a finite number (drop or fix that detection)",
            ),
            (
                ~torch.isfinite(boxes).all(dim=1),
                "field 'boxes' {box} with a non-finite coordinate; expected finite xyxy pixels "
                "(drop or fix that detection)",
            ),
            (
                torch.tensor(unknown_label, dtype=torch.bool),
                "field 'labels' {label}; expected a foreground label in 1..{num_labels} (0 is "
                "background, never a detection)",
            ),
            (
                # every box is finite by now (the check above)
                degenerate_box_mask(boxes),
                "field 'boxes' {box} with width or height <= 0; expected xyxy with x2 > x1 and "
                "y2 > y1 (drop degenerate boxes, e.g. torchvision.ops.remove_small_boxes)",
            ),
        )
        for bad, what in checks:
            if bad.any():
                j = int(bad.nonzero()[0])
                what = what.format(
                    score=scores[j].item(),
                    box=boxes[j].tolist(),
                    label=labels[j].item(),
                    num_labels=len(valid_labels),
                )
                raise ValueError(f"{where}: detection {j} has {what}")


def validate_coco_results(dataset, results: Any, source: str = "detections") -> None:
    """Raise ValueError naming the first bad COCO result (keys, image id, category id, finite score
    and bbox)."""
    known_cats = {int(cat_id) for cat_id in dataset.label_to_cat_id.values()}
    if not isinstance(results, list):
        raise ValueError(
            f"{source}: expected a JSON list of COCO results {{'image_id', 'category_id', 'bbox', "
            f"'score'}}, got {type(results).__name__}"
        )
    keys = ("image_id", "category_id", "bbox", "score")
    for where, result in _entries(dataset, results, keys, lambda i: f"{source}: entry {i}"):
        category_id = result["category_id"]
        if not _is_int(category_id) or int(category_id) not in known_cats:
            raise ValueError(
                f"{where}: field 'category_id' {category_id!r} is not a category of the dataset; "
                f"expected an original category id, one of {sorted(known_cats)}"
            )
        score = result["score"]
        if not is_finite(score):
            raise ValueError(
                f"{where}: field 'score' {score!r}; expected a finite "
                "number (drop or fix that entry)"
            )
        bbox = result["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(
                f"{where}: field 'bbox' {bbox!r}; expected a list [x, y, w, h] of 4 numbers"
            )
        if not all(map(is_finite, bbox)):
            raise ValueError(
                f"{where}: field 'bbox' {bbox!r} has a non-finite or non-numeric value; expected "
                f"[x, y, w, h] of finite pixels (drop or fix that entry)"
            )
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise ValueError(
                f"{where}: field 'bbox' {bbox!r} has width {bbox[2]} and height {bbox[3]}; "
                "expected COCO [x, y, w, h] with w > 0 and h > 0 (xyxy boxes must be "
                "converted; drop degenerate boxes)"
            )


def load_coco_results(path: str | Path, dataset) -> list[dict]:
    """Read and validate a COCO-format detections JSON file (ids of ``dataset``)."""
    results = read_json(path, ValueError, "expected a COCO detections JSON list")
    validate_coco_results(dataset, results, source=str(path))
    return results


def coco_metrics(
    coco_gt: COCO,
    results: Sequence[dict],
    backend: str = "pycocotools",
    image_ids: Iterable[int] | None = None,
) -> dict:
    """COCOeval (iouType "bbox") of validated COCO results on ``image_ids`` (default all) -> the
    metrics, its printed summary discarded: the 12 ``COCOeval.stats`` (0..1, -1 undefined),
    ``AP_per_iou``, ``AP90`` and ``per_class`` (from ``eval["precision"]`` as ``summarize`` does:
    area all, 100 detections)."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = _evaluator(backend, coco_gt, results)
        if image_ids is not None:
            evaluator.params.imgIds = sorted({int(i) for i in image_ids})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    params = evaluator.params
    precision = evaluator.eval["precision"]  # [T iou, R recall, K classes, A areas, M maxDets]
    area, max_dets = params.areaRngLbl.index("all"), list(params.maxDets).index(100)
    metrics: dict[str, Any] = {
        name: float(v) for name, v in zip(COCO_METRIC_NAMES, evaluator.stats)
    }
    metrics["AP_per_iou"] = [
        mean_defined(precision[t, :, :, area, max_dets]) for t in range(precision.shape[0])
    ]
    # localisation quality box losses change
    metrics["AP90"] = metrics["AP_per_iou"][IOU_THRESHOLDS.index(0.9)]
    metrics["per_class"] = {
        coco_gt.cats[cat_id]["name"]: mean_defined(precision[:, :, k, area, max_dets])
        for k, cat_id in enumerate(params.catIds)
    }
    return metrics


def _evaluator(backend: str, coco_gt: COCO, results: Sequence[dict]):
    """The COCOeval (iouType "bbox") of ``results`` against ``coco_gt`` in eval.backend's library;
    faster_coco_eval (config.EVAL_BACKENDS' other choice) reads a copy of the ground truth."""
    if backend == "pycocotools":
        return COCOeval(coco_gt, _load_results(COCO, coco_gt, results), "bbox")
    try:
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        raise ImportError(
            "eval.backend=faster_coco_eval needs the faster-coco-eval package: "
            "`pip install faster-coco-eval` (or `pip install -e .[fast]`), or use "
            "eval.backend=pycocotools"
        ) from None
    gt = FasterCOCO(copy.deepcopy(coco_gt.dataset))
    return COCOeval_faster(gt, _load_results(FasterCOCO, gt, results), "bbox", print_function=print)


def _load_results(coco_cls, coco_gt, results: Sequence[dict]):
    """``loadRes`` on copies of the dicts (it adds keys to them); an empty list becomes an empty
    result set."""
    if len(results) == 0:
        empty = {
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset["categories"]),
            "annotations": [],
        }
        return coco_from_dict(empty, coco_cls)
    return coco_gt.loadRes([dict(r) for r in results])


def mean_defined(values: Sequence[float] | np.ndarray) -> float:
    """Mean over entries > -1 (-1 marks "undefined": no GT), or -1 when none is defined: COCOeval
    summarize's rule."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _entries(
    dataset,
    entries: Sequence,
    keys: tuple[str, ...],
    place: Callable[[int], str],
    keys_note: str = "",
):
    """Each entry with its place for errors, once it is a dict with ``keys`` and the ``image_id`` of
    an image."""
    known_ids = set(dataset_image_ids(dataset))
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(k not in entry for k in keys):
            brief = repr(entry) if len(repr(entry)) <= 80 else repr(entry)[:77] + "..."
            raise ValueError(
                f"{place(i)}: expected a dict with keys {keys}{keys_note}, got {brief}"
            )
        image_id = entry["image_id"]
        where = f"{place(i)} (image_id {image_id})"
        if not _is_int(image_id) or int(image_id) not in known_ids:
            raise ValueError(
                f"{where}: field 'image_id' {image_id!r} is not an image of the dataset "
                f"({len(known_ids)} images, ids like {sorted(known_ids)[:3]}); score detections "
                "against the split they were made on"
            )
        yield where, entry


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
