"""Text tables of a metrics dict: percentages with one decimal, -1 (undefined) as ``-``, sections for the keys
present."""
from __future__ import annotations

from detector.evaluation.coco import COCO_METRIC_NAMES, IOU_THRESHOLDS


def format_metrics(metrics: dict) -> str:
    """The COCO 12-number table, the AP-per-IoU row, the per-class COCO AP table and the VOC table, as text."""
    sections = []
    if all(name in metrics for name in COCO_METRIC_NAMES):
        lines = ["COCO box metrics (pycocotools COCOeval)"]
        for key in COCO_METRIC_NAMES:  # COCOeval.summarize's rows, read off the names (AP50, APs, AR10, ...)
            kind = "Average Precision" if key.startswith("AP") else "Average Recall"
            iou = {"AP50": "0.50", "AP75": "0.75"}.get(key, "0.50:0.95")
            area = {"s": "small", "m": "medium", "l": "large"}.get(key[-1], "all")
            dets = {"AR1": 1, "AR10": 10}.get(key, 100)
            lines.append(f"  {key:<6} {kind:<17} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3} ] = "
                         f"{_pct(metrics[key])}")
        sections.append("\n".join(lines))
    if "AP_per_iou" in metrics:
        header = " ".join(f"{f'AP{round(t * 100)}':>6}" for t in IOU_THRESHOLDS)
        values = " ".join(f"{_pct(v):>6}" for v in metrics["AP_per_iou"])
        sections.append(f"AP per IoU threshold\n  {header}\n  {values}")
    if "per_class" in metrics:
        sections.append(_class_table("COCO AP per class (IoU 0.50:0.95)", ("AP",),
                                     {name: (ap,) for name, ap in metrics["per_class"].items()}))
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
