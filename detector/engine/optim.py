"""Optimizer, learning-rate schedule and the loss weights.

``train.lr`` is the rate for a total batch of ``train.lr_reference_batch`` images (linear scaling
rule, Goyal et al. 2017; null: applied as given). SGD with momentum, weight decay on weights only
(not biases or norms); linear warmup then multistep or cosine decay, as one ``LambdaLR``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from detector.engine import distributed as dist_utils
from detector.losses.dynamic import SCHEDULED_LOSSES


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD over ``model``'s trainable parameters, fused where this torch has it for their device,
    else ``foreach`` (the same update and state dict; ``optimizer.impl`` names the one used)."""
    decay, no_decay = [], []
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                (no_decay if isinstance(module, norm_types) or name == "bias" else decay).append(
                    param
                )
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [group for group in groups if group["params"]]
    fused = has_fused_sgd(groups[0]["params"][0].device)
    optimizer = torch.optim.SGD(
        groups,
        lr=build_lr(cfg),
        momentum=cfg.train.momentum,
        fused=fused or None,
        foreach=None if fused else True,
    )
    optimizer.impl = "fused" if fused else "foreach"
    return optimizer


@functools.lru_cache(maxsize=None)
def has_fused_sgd(device: torch.device) -> bool:
    """Whether this torch runs a fused SGD step on ``device``: tried on one parameter (torch checks
    the device only at the first step, and which devices have the kernel changed between
    versions)."""
    try:
        param = torch.zeros(1, device=device, requires_grad=True)
        param.grad = torch.zeros(1, device=device)
        torch.optim.SGD([param], lr=0.1, momentum=0.9, fused=True).step()
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return False
    return True


def build_lr(cfg) -> float:
    """The base learning rate this process trains with: ``train.lr`` scaled to the total batch of
    all ranks (the linear scaling rule; a null ``train.lr_reference_batch`` applies it as given)."""
    t = cfg.train
    if t.lr_reference_batch is None:
        return t.lr
    return t.lr * t.batch_size * dist_utils.get_world_size() / t.lr_reference_batch


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The multiplier of the base lr at each iteration (0-based): linear warmup times the decay;
    ``milestones`` <= 1 are fractions of ``train.max_iters``, larger values are iterations."""
    t = cfg.train
    max_iters, warmup_iters = t.max_iters, min(t.warmup_iters, t.max_iters)
    steps = [round(m * max_iters) if m <= 1 else int(m) for m in t.milestones]

    def factor(iteration: int) -> float:
        if t.lr_schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iters) / max_iters))
        else:
            decay = t.gamma ** sum(iteration >= s for s in steps)
        if iteration < warmup_iters:
            alpha = iteration / warmup_iters
            decay *= t.warmup_factor * (1 - alpha) + alpha
        return decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def max_iters_dependents(cfg, new_max_iters: int) -> list[str]:
    """The schedules of ``cfg`` (a config or its plain dict) that changing ``train.max_iters`` to
    ``new_max_iters`` would change from the resume point on."""
    t, loss = cfg["train"], cfg["model"]["roi_head"]["box_loss"]
    out = []
    if t["lr_schedule"] == "cosine":
        out.append("train.lr_schedule=cosine")
    elif any(m <= 1 for m in t["milestones"]):
        out.append("train.milestones (fractions of max_iters)")
    if t["warmup_iters"] > min(t["max_iters"], new_max_iters):
        out.append("train.warmup_iters (capped at max_iters)")
    schedule = loss["schedule"]["type"]
    if loss["name"] in SCHEDULED_LOSSES and schedule not in ("adaptive", "replay", "constant"):
        out.append(f"model.roi_head.box_loss.schedule.type={schedule}")
    return out


def build_loss_weights(cfg) -> dict[str, float]:
    """Each loss term's weight; the trainer multiplies by these in one place and logs both
    values."""
    m = cfg.model
    return {
        "loss_rpn_cls": m.rpn.cls_weight,
        "loss_rpn_box": m.rpn.box_loss.weight,
        "loss_cls": m.roi_head.cls_weight,
        "loss_box_reg": m.roi_head.box_loss.weight,
    }
