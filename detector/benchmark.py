"""Side-by-side training/inference benchmark: our detector vs torchvision's ``fasterrcnn_resnet50_fpn``.

One process, identical inputs for both: the same synthetic batch (images of one size with 8 boxes each),
ResNet-50-FPN with random weights (nothing downloaded), the same RPN/RoI settings (2000 pre-NMS / 1000
post-NMS training proposals, 512 RoIs per image at 25% foreground), SGD with the same hyper-parameters, AMP on
or off for both. Timings are of warmed-up iterations with CUDA synchronisation; peak memory is
``torch.cuda.max_memory_allocated`` reset before each side.
"""
from __future__ import annotations

import math
import platform
import time
from contextlib import nullcontext
from typing import Any

import torch


def synthetic_batch(batch_size: int, height: int, width: int, num_boxes: int, num_classes: int,
                    device: torch.device, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """float images in 0..1 [3,H,W] and targets with ``num_boxes`` random valid xyxy boxes each."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, height, width, generator=g).to(device))
        wh = torch.rand(num_boxes, 2, generator=g) * torch.tensor([width * 0.4, height * 0.4]) + 16
        xy = torch.rand(num_boxes, 2, generator=g) * (torch.tensor([width, height]) - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, num_classes + 1, (num_boxes,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def build_ours(num_classes: int, height: int, width: int, backbone: str, device: torch.device):
    from detector.config import load_config
    from detector.modeling import build_detector
    cfg = load_config(["gpu.yaml"], [
        f"model.backbone.name={backbone}", "model.backbone.norm=bn", "model.backbone.freeze_at=0",
        "model.rpn.pre_nms_topk_train=2000", "model.rpn.post_nms_topk_train=1000",
        "model.rpn.pre_nms_topk_test=1000", "model.rpn.post_nms_topk_test=1000",
        "model.roi_head.batch_size_per_image=512", "model.roi_head.positive_fraction=0.25",
        "model.roi_head.box_loss.name=smooth_l1", "model.roi_head.box_loss.beta=0.1111111111111111",
        f"data.input.min_size_test={min(height, width)}", f"data.input.max_size_test={max(height, width)}",
        "train.channels_last=false"])
    return build_detector(cfg, num_classes=num_classes).to(device)


def build_torchvision(num_classes: int, height: int, width: int, backbone: str, device: torch.device):
    from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    kwargs = dict(min_size=min(height, width), max_size=max(height, width), rpn_pre_nms_top_n_train=2000,
                  rpn_post_nms_top_n_train=1000, rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
                  box_batch_size_per_image=512, box_positive_fraction=0.25)
    if backbone == "resnet50":
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs)
    else:
        body = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5,
                                   norm_layer=torch.nn.BatchNorm2d)
        model = FasterRCNN(body, num_classes=num_classes + 1, **kwargs)
    return model.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side(model, images, targets, device: torch.device, amp_dtype, warmup: int, iters: int,
              ours: bool) -> dict[str, float]:
    """Training and inference images/s and peak memory of one model on one batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model.train()

    def step() -> None:
        with autocast():
            out = model(images, targets)
        losses = out[0] if ours else out
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    train_s = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")

    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            with autocast():
                model(images)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            with autocast():
                model(images)
        _sync(device)
    infer_s = (time.perf_counter() - start) / iters
    n = len(images)
    return {"train_images_per_s": n / train_s, "infer_images_per_s": n / infer_s, "peak_memory_gib": peak}


def run_benchmark(device: str, batch_sizes: list[int], amp_modes: list[bool], height: int, width: int,
                  num_boxes: int = 8, num_classes: int = 80, backbone: str = "resnet50", warmup: int = 5,
                  iters: int = 20) -> dict[str, Any]:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = []
    for batch_size in batch_sizes:
        images, targets = synthetic_batch(batch_size, height, width, num_boxes, num_classes, dev)
        for amp in amp_modes:
            amp_dtype = None
            if amp and dev.type == "cuda":
                amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            row: dict[str, Any] = {"batch_size": batch_size, "amp": str(amp_dtype) if amp_dtype else "off"}
            for side, builder, ours in (("ours", build_ours, True), ("torchvision", build_torchvision, False)):
                torch.manual_seed(0)
                model = builder(num_classes, height, width, backbone, dev)
                row[side] = time_side(model, images, targets, dev, amp_dtype, warmup, iters, ours)
                del model
            row["ratio"] = {k: _ratio(row["ours"][k], row["torchvision"][k]) for k in row["ours"]}
            results.append(row)
    return {
        "settings": {"image_size": [height, width], "boxes_per_image": num_boxes, "num_classes": num_classes,
                     "backbone": f"{backbone}-fpn (random init, BatchNorm, all stages trainable)",
                     "rpn_proposals_train": "2000 pre-NMS / 1000 post-NMS", "roi_per_image": 512,
                     "positive_fraction": 0.25, "optimizer": "SGD lr 0.001 momentum 0.9 wd 1e-4",
                     "warmup_iters": warmup, "timed_iters": iters},
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
        "results": results,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) and not math.isnan(a) else float("nan")


def format_table(report: dict[str, Any]) -> str:
    lines = [f"device: {report['device']}  torch {report['torch']}  torchvision {report['torchvision']}",
             f"images {report['settings']['image_size'][0]}x{report['settings']['image_size'][1]}, "
             f"{report['settings']['backbone']}",
             "| batch | AMP | train img/s ours | tv | ratio | infer img/s ours | tv | ratio "
             "| peak GiB ours | tv | ratio |", "|---" * 11 + "|"]
    for r in report["results"]:
        o, t, q = r["ours"], r["torchvision"], r["ratio"]
        lines.append(
            f"| {r['batch_size']} | {r['amp']} | {o['train_images_per_s']:.2f} | {t['train_images_per_s']:.2f} | "
            f"{q['train_images_per_s']:.2f}x | {o['infer_images_per_s']:.2f} | {t['infer_images_per_s']:.2f} | "
            f"{q['infer_images_per_s']:.2f}x | {o['peak_memory_gib']:.2f} | {t['peak_memory_gib']:.2f} | "
            f"{q['peak_memory_gib']:.2f}x |")
    return "\n".join(lines)
