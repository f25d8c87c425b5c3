"""The two sides of the synthetic benchmark, ours and torchvision's, and :func:`measure`: one (side, setting, batch,
AMP) trained and run for inference on one seeded synthetic batch. See :mod:`detector.benchmark` for the fairness
rules.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from typing import Any

import torch

SETTINGS = ("scratch", "finetune")


def synthetic_batch(batch_size: int, height: int, width: int, num_boxes: int, num_classes: int,
                    device: torch.device, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """float images in 0..1 [3,H,W] and targets with ``num_boxes`` random valid xyxy boxes each (labels 1..K)."""
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


def ours_config(spec: dict[str, Any]):
    """The config of our side: ``spec["configs"]`` (default gpu.yaml) with the benchmark's model settings, or,
    for the real loop's comparator (``spec["as_configured"]``), the run's config untouched."""
    from detector.config import load_config
    if spec.get("as_configured"):
        return load_config(spec["configs"], spec.get("overrides", []))
    norm, freeze_at = ("bn", 0) if spec["setting"] == "scratch" else ("frozen_bn", 2)
    short, long = sorted(spec["size"])  # the configured sizes place the pad buckets: pad as torchvision does
    return load_config(spec.get("configs") or ["gpu.yaml"], [
        f"data.input.min_size_train=[{short}]", f"data.input.max_size_train={long}",
        f"data.input.min_size_test={short}", f"data.input.max_size_test={long}",
        f"model.backbone.name={spec['backbone']}", f"model.backbone.norm={norm}",
        f"model.backbone.freeze_at={freeze_at}",
        "model.rpn.pre_nms_topk_train=2000", "model.rpn.post_nms_topk_train=1000",
        "model.rpn.pre_nms_topk_test=1000", "model.rpn.post_nms_topk_test=1000",
        "model.roi_head.batch_size_per_image=512", "model.roi_head.positive_fraction=0.25",
        "model.roi_head.box_loss.name=smooth_l1", "model.roi_head.box_loss.beta=0.1111111111111111",
        "train.lr=0.001", "train.lr_reference_batch=null",  # timing only: a small lr keeps random weights finite
        f"train.compile={spec.get('compile', 'none')}", *spec.get("overrides", [])])


class OursSide:
    """Our detector stepped as the trainer steps it: weighted losses, the non-finite check's reads (every step,
    or every ``watch.window`` steps), gradient clipping, the dynamic-state update; built by :func:`build_ours`."""

    def __init__(self, *, model, optimizer, loss_weights: dict[str, float], clip_grad_norm: float, watch,
                 amp_dtype: torch.dtype | None, info: dict[str, Any]):
        self.model, self.optimizer, self.weights, self.watch = model, optimizer, loss_weights, watch
        self.clip = clip_grad_norm if clip_grad_norm > 0 else math.inf
        self.amp_dtype, self.info = amp_dtype, info
        self.iteration = 0
        self.stats: dict[str, torch.Tensor] = {}

    def losses(self, images, targets) -> torch.Tensor:
        losses, self.stats = self.model(images, targets)
        self.watch.observe(losses, self.iteration)  # and the log steps' read: see after_step
        if self.watch.mode == "step" or self.iteration % self.watch.window == self.watch.window - 1:
            self.watch.raise_if_bad(None, None)  # the trainer's reads (a NaN would stop the benchmark loudly)
        return sum(losses[k] * self.weights[k] for k in losses)

    def after_backward(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)

    def after_step(self) -> None:
        self.model.update_dynamic_state(self.iteration, self.stats)
        self.iteration += 1


def build_ours(spec: dict[str, Any], device: torch.device, num_classes: int) -> OursSide:
    """Our side as the trainer builds it from :func:`ours_config` (channels_last on CUDA, ``train.compile``,
    ``train.optimizer_impl``, ``train.nonfinite_check``, the AMP dtype)."""
    from detector.engine.optim import build_loss_weights, build_optimizer
    from detector.engine.runtime import amp_settings, compile_submodules
    from detector.engine.trainer import NonFiniteWatch
    from detector.modeling import build_detector
    cfg = ours_config(spec)
    model = build_detector(cfg, num_classes=num_classes).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model.use_channels_last()
    compiled = compile_submodules(model, cfg.train.compile)
    optimizer = build_optimizer(cfg, model)
    amp = cfg.train.amp if spec.get("as_configured") else spec["amp"]
    info = {"optimizer_impl": optimizer.impl, "compiled": compiled,
            "channels_last": model.input_memory_format == torch.channels_last,
            "pad_buckets": list(model.pad_buckets), "nonfinite_check": cfg.train.nonfinite_check}
    return OursSide(model=model, optimizer=optimizer, loss_weights=build_loss_weights(cfg),
                    clip_grad_norm=cfg.train.clip_grad_norm,
                    watch=NonFiniteWatch(cfg.train.nonfinite_check, device, False, window=cfg.train.log_period),
                    amp_dtype=amp_settings(amp, device, cfg.train.amp_dtype)[0], info=info)


class TorchvisionSide:
    """torchvision's ``FasterRCNN`` with a ResNet-FPN (``resnet_fpn_backbone``), as its reference script trains it."""

    def __init__(self, spec: dict[str, Any], device: torch.device, num_classes: int):
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
        from torchvision.ops import FrozenBatchNorm2d

        from detector.engine.runtime import amp_settings
        scratch = spec["setting"] == "scratch"
        body = resnet_fpn_backbone(backbone_name=spec["backbone"], weights=None, trainable_layers=5 if scratch else 3,
                                   norm_layer=torch.nn.BatchNorm2d if scratch else FrozenBatchNorm2d)
        height, width = spec["size"]
        self.model = FasterRCNN(body, num_classes=num_classes + 1, min_size=min(height, width),
                                max_size=max(height, width), rpn_pre_nms_top_n_train=2000,
                                rpn_post_nms_top_n_train=1000, rpn_pre_nms_top_n_test=1000,
                                rpn_post_nms_top_n_test=1000, box_batch_size_per_image=512,
                                box_positive_fraction=0.25).to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=1e-4)
        self.amp_dtype = amp_settings(spec["amp"], device)[0]
        self.info = {"optimizer_impl": "default"}

    def losses(self, images, targets) -> torch.Tensor:
        return sum(self.model(images, targets).values())

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_side(side, images, targets, scaler: torch.amp.GradScaler) -> None:
    """One training step of a side (ours or torchvision's), under the autocast the side chose; the same code times
    both sides and the profiler's steps."""
    autocast = torch.autocast(images[0].device.type, dtype=side.amp_dtype) if side.amp_dtype else nullcontext()
    with autocast:
        total = side.losses(images, targets)
    side.optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(side.optimizer)
    side.after_backward()
    scaler.step(side.optimizer)
    scaler.update()
    side.after_step()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and infer one side on one synthetic batch; the figures of one (side, setting, batch, AMP).

    Returns ``{"train_images_per_s", "infer_images_per_s", "peak_memory_gib" (timed training iterations, after the
    warm-up), "warmup_peak_memory_gib", "train_step_s", "side_info"}``; memory is NaN off CUDA.
    """
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(spec.get("cudnn_benchmark", True))
    torch.manual_seed(0)
    height, width = spec["size"]
    num_classes = spec.get("num_classes", 80)
    images, targets = synthetic_batch(spec["batch_size"], height, width, spec.get("num_boxes", 8), num_classes, device)
    side = (build_ours if spec["side"] == "ours" else TorchvisionSide)(spec, device, num_classes)
    amp_dtype = side.amp_dtype  # the trainer's choice: bf16 where supported, else fp16 with a grad scaler
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext

    def train_step() -> None:
        step_side(side, images, targets, scaler)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    side.model.train()
    for _ in range(spec["warmup"]):
        train_step()
    synchronize(device)
    warmup_peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else float("nan")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(spec["iters"]):
        train_step()
    synchronize(device)
    train_s = (time.perf_counter() - start) / spec["iters"]
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else float("nan")

    side.model.eval()
    with torch.inference_mode():
        for _ in range(spec["warmup"]):
            with autocast():
                side.model(images)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(spec["iters"]):
            with autocast():
                side.model(images)
        synchronize(device)
    infer_s = (time.perf_counter() - start) / spec["iters"]
    n = spec["batch_size"]
    return {"train_images_per_s": n / train_s, "infer_images_per_s": n / infer_s, "peak_memory_gib": peak,
            "warmup_peak_memory_gib": warmup_peak, "train_step_s": train_s,
            "amp": str(amp_dtype) if amp_dtype else "off", "side_info": side.info, "pid": os.getpid()}
