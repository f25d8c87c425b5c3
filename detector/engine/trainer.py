"""The training loop: read it top to bottom.

``train(cfg, run_dir)`` builds data, model, optimizer and logger from the config, resumes when asked,
trains for ``train.max_iters`` iterations, evaluates every ``train.eval_period`` iterations and at the end,
and returns the final metrics. Loss weights are applied here and only here; raw and weighted values are
both logged. A non-finite loss stops the run with a message naming the term and the iteration, after a
diagnostic checkpoint written beside (never over) the last good one.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from detector.config import Config, ConfigError
from detector.data import build_dataloader, proposals_of
from detector.engine import distributed as dist_utils
from detector.engine.checkpoint import (BEST, LAST, capture_rng_state, find_resume_checkpoint, load_checkpoint,
                                        restore_rng_state, save_checkpoint)
from detector.engine.logger import RunLogger, stats_to_scalars
from detector.engine.optim import build_loss_weights, build_lr_scheduler, build_optimizer
from detector.evaluation import detections_to_coco_results, evaluate, inference_on_dataset
from detector.modeling import build_detector

COCO_METRIC_KEYS = ("AP", "AP50", "AP75", "AP90", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
VOC_METRIC_KEYS = ("mAP_voc07", "mAP_voc")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN/inf; the message names the term, the iteration and the saved files."""


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available; use train.device=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", dist_utils.local_rank())
    return torch.device(name)


def amp_settings(enabled: bool, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a grad scaler is needed): bf16 where supported, else fp16 + scaler."""
    if not enabled or device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def check_best_metric(cfg: Config) -> None:
    keys = {"coco": COCO_METRIC_KEYS, "voc": VOC_METRIC_KEYS, "both": COCO_METRIC_KEYS + VOC_METRIC_KEYS}
    valid = keys[cfg.eval.metric]
    if cfg.train.best_metric not in valid:
        raise ConfigError(f"train.best_metric={cfg.train.best_metric!r} is not computed with "
                          f"eval.metric={cfg.eval.metric}; choose from {', '.join(valid)}")


def to_device(images, targets, device: torch.device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def evaluate_model(model, loader, cfg: Config, device: torch.device, amp_dtype) -> tuple[dict[str, Any], list]:
    """Inference over the val loader and the configured metrics; (metrics, detections), the same on every rank."""
    detections = inference_on_dataset(model, loader, device, amp_dtype=amp_dtype, max_images=cfg.eval.max_images)
    metrics = evaluate(loader.dataset, detections, metric=cfg.eval.metric, backend=cfg.eval.backend)
    return metrics, detections


def write_eval_results(eval_dir: Path, metrics: dict[str, Any], dataset, detections: list) -> None:
    """``eval/metrics.json`` and ``eval/detections.json`` (COCO results: original category ids, xywh)."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "detections.json").write_text(json.dumps(detections_to_coco_results(dataset, detections)))
    (eval_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))  # last: marks the run finished


@torch.no_grad()
def draw_predictions(model, dataset, num_images: int, device: torch.device, class_names) -> list[torch.Tensor]:
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
            labels = [f"{class_names[int(c)]} {s:.2f}" for c, s in zip(det["labels"][keep], det["scores"][keep])]
            canvas = draw_bounding_boxes(canvas, det["boxes"][keep].cpu(), labels=labels, colors="red", width=2)
        drawn.append(canvas)
    model.train(was_training)
    return drawn


def train(cfg: Config, run_dir: str | Path) -> dict[str, Any]:
    """Train, evaluate and checkpoint one run into ``run_dir``; return the final metrics."""
    run_dir = Path(run_dir)
    check_best_metric(cfg)
    device = select_device(cfg.train.device)
    distributed = dist_utils.init_distributed(device.type)
    rank, main = dist_utils.get_rank(), dist_utils.is_main_process()
    seed_everything(cfg.seed + rank, cfg.deterministic)
    amp_dtype, use_scaler = amp_settings(cfg.train.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic

    ckpt_dir = run_dir / "checkpoints"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")

    train_loader = build_dataloader(cfg, "train", start_iter=0, distributed=distributed)
    val_loader = build_dataloader(cfg, "val", distributed=distributed)
    train_set = train_loader.dataset
    model = build_detector(cfg, num_classes=len(train_set.classes) - 1).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    loss_weights = build_loss_weights(cfg)

    start_iter, best = 0, -math.inf
    if cfg.train.resume:
        state = (load_checkpoint(cfg.train.resume) if isinstance(cfg.train.resume, str) and cfg.train.resume != "auto"
                 else find_resume_checkpoint(ckpt_dir))
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            start_iter, best = state["iteration"], state.get("best", -math.inf)
            restore_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
            if main:
                print(f"resumed from {state.get('path', cfg.train.resume)} at iteration {start_iter}")
    if start_iter:
        train_loader = build_dataloader(cfg, "train", start_iter=start_iter, distributed=distributed)

    raw_model = model
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    logger = RunLogger(run_dir, enabled=main)
    if main and start_iter == 0:
        logger.log("start", 0, {"num_train_images": len(train_set), "num_val_images": len(val_loader.dataset),
                                "num_classes": len(train_set.classes) - 1, "device": str(device),
                                "world_size": dist_utils.get_world_size(), "amp": str(amp_dtype)})

    def save(iteration: int, path: Path, keep_previous: bool = False) -> Path | None:
        """Every rank calls this (the RNG states are gathered); rank 0 writes."""
        rng = gather_rng_states()
        if not main:
            return None
        return save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                "iteration": iteration, "best": best, "config": cfg.to_dict(), "rng": rng},
                               path, keep_previous=keep_previous)

    def run_eval(iteration: int, final: bool = False) -> dict[str, Any]:
        nonlocal best
        metrics, detections = evaluate_model(raw_model, val_loader, cfg, device, amp_dtype)
        if main:
            logger.log("eval", iteration, metrics)
            if cfg.train.num_vis_images:
                logger.images(iteration, "val", draw_predictions(raw_model, val_loader.dataset,
                                                                 cfg.train.num_vis_images, device,
                                                                 train_set.classes))
        value = metrics.get(cfg.train.best_metric, -math.inf)  # identical on every rank
        if value > best:
            best = value
            save(iteration, ckpt_dir / BEST)
        raw_model.train()
        if final and main:
            final_eval[:] = [metrics, detections]
        return metrics

    model.train()
    bar = tqdm(total=cfg.train.max_iters, initial=start_iter, disable=not main, dynamic_ncols=True,
               mininterval=1.0, file=sys.stderr, desc="train")
    data_iter = iter(train_loader)
    window_start, window_images = time.perf_counter(), 0
    metrics: dict[str, Any] = {}
    final_eval: list = []  # [metrics, detections] of the final evaluation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for iteration in range(start_iter, cfg.train.max_iters):
        images, targets = next(data_iter)
        images, targets = to_device(images, targets, device)
        autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
        with autocast:
            losses, stats = model(images, targets, proposals=proposals_of(targets))
        weighted = {k: v * loss_weights[k] for k, v in losses.items()}
        total = sum(weighted.values())

        terms = torch.stack([v.detach().float() for v in losses.values()])
        bad = (~torch.isfinite(terms)).any().float()
        if distributed:
            torch.distributed.all_reduce(bad)
        if bad.item():
            names = [k for k, v in losses.items() if not torch.isfinite(v).all()] or ["(another rank)"]
            path = save(iteration, ckpt_dir / f"nonfinite_iter{iteration}.pth")
            logger.log("error", iteration, {"nonfinite": names, **{k: v for k, v in losses.items()}})
            logger.close()
            bar.close()
            raise NonFiniteLossError(
                f"{', '.join(names)} is not finite at iteration {iteration} "
                f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); diagnostic checkpoint: {path}; "
                f"last good checkpoint: {ckpt_dir / LAST}. Try a lower train.lr, train.clip_grad_norm>0 or "
                f"another box loss.")

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        max_norm = cfg.train.clip_grad_norm if cfg.train.clip_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        window_images += len(images) * dist_utils.get_world_size()
        done = iteration + 1
        bar.update(1)

        if done % cfg.train.log_period == 0 or done == cfg.train.max_iters:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - window_start
            reduced = dist_utils.reduce_mean({**losses, "total_loss": total.detach()})
            scalars, hists = stats_to_scalars(stats)
            values = {k: float(v.detach()) for k, v in reduced.items()}
            values.update({f"weighted/{k}": values[k] * loss_weights[k] for k in losses})
            values.update(scalars)
            values.update({"lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                           "images_per_s": window_images / max(elapsed, 1e-9)})
            if device.type == "cuda":
                values["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            logger.log("train", done, values)
            if main and (done % cfg.train.hist_period == 0 or done == cfg.train.max_iters):
                logger.histograms(done, hists)
            if main and done == cfg.train.max_iters:  # the end-of-training error distribution, for ablation plots
                torch.save({k: v.detach().float().cpu() for k, v in hists.items()}, run_dir / "final_errors.pt")
            bar.set_postfix(loss=f"{values['total_loss']:.3f}", lr=f"{values['lr']:.2g}")
            if main:
                beta = f" beta {values['beta']:.3f}" if "beta" in values else ""
                bar.write(f"iter {done}/{cfg.train.max_iters}  loss {values['total_loss']:.4f}  "
                          + "  ".join(f"{k} {values[k]:.4f}" for k in losses)
                          + f"{beta}  lr {values['lr']:.4g}  {values['images_per_s']:.1f} img/s")
            window_start, window_images = time.perf_counter(), 0

        is_last = done == cfg.train.max_iters
        if cfg.train.eval_period and done % cfg.train.eval_period == 0 and not is_last:
            run_eval(done)
        if is_last:
            metrics = run_eval(done, final=True)
        if done % cfg.train.checkpoint_period == 0 or is_last:
            save(done, ckpt_dir / LAST, keep_previous=True)
    bar.close()

    if start_iter >= cfg.train.max_iters and not metrics:  # resumed a finished run: evaluate again
        metrics = run_eval(cfg.train.max_iters, final=True)
    if main:
        logger.hparams(cfg, metrics)
        write_eval_results(run_dir / "eval", metrics, val_loader.dataset, final_eval[1])
    logger.close()
    return metrics


def gather_rng_states() -> Any:
    """This rank's RNG state, or every rank's (a list) under DDP so each resumes its own stream."""
    state = capture_rng_state()
    if not dist_utils.is_distributed():
        return state
    states = [None] * dist_utils.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states
