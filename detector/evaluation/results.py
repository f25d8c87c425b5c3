"""Evaluating a model and writing the results: shared by the trainer and ``tools/eval.py``."""

from __future__ import annotations

import time
from typing import Any

import torch

from detector.data.build import proposals_of
from detector.evaluation import evaluate
from detector.evaluation.inference import inference_on_dataset


def evaluate_model(
    model,
    loader,
    device: torch.device,
    *,
    metric: str = "coco",
    backend: str = "pycocotools",
    amp_dtype: torch.dtype | None = None,
    max_images: int | None = None,
) -> tuple[dict[str, Any], list]:
    """Inference over ``loader`` and the metrics of ``metric``; (metrics, detections), the same on
    every rank but ``eval_time_s``, the wall time of both (the ablation report states it)."""
    start = time.perf_counter()
    detections = inference_on_dataset(
        model, loader, device, amp_dtype=amp_dtype, max_images=max_images
    )
    metrics = evaluate(loader.dataset, detections, metric=metric, backend=backend)
    metrics["eval_time_s"] = time.perf_counter() - start
    return metrics, detections


# What an evaluation writes into its folder, in this order: metrics.json last, as it marks a run
# finished.
EVAL_FILES = ("detections.json", "metrics.json")


@torch.no_grad()
def draw_predictions(
    model, dataset, num_images: int, device: torch.device, class_names
) -> list[torch.Tensor]:
    """A few val images with GT (green) and predictions scoring >= 0.5 (red), uint8 [3,H,W]."""
    from torchvision.utils import draw_bounding_boxes

    was_training = model.training
    model.eval()
    drawn = []
    for i in range(min(num_images, len(dataset))):
        image, target = dataset[i]
        det = model([image.to(device)], proposals=proposals_of([target], device))[0]
        keep = det["scores"] >= 0.5
        canvas = image
        if len(target["boxes"]):
            canvas = draw_bounding_boxes(canvas, target["boxes"], colors="lime", width=2)
        if keep.any():
            labels = [
                f"{class_names[int(c)]} {s:.2f}"
                for c, s in zip(det["labels"][keep], det["scores"][keep])
            ]
            canvas = draw_bounding_boxes(
                canvas, det["boxes"][keep].cpu(), labels=labels, colors="red", width=2
            )
        drawn.append(canvas)
    model.train(was_training)
    return drawn
