"""Optimizer, learning-rate schedule and the loss weights.

The learning rate follows the linear scaling rule (Goyal et al. 2017; detectron2's convention): ``train.lr`` is the
rate for a total batch of ``train.lr_reference_batch`` images (16 by default), and the rate applied is
``lr * batch_size * world_size / lr_reference_batch``, so one config trains alike on 1 or 8 GPUs. A null
``lr_reference_batch`` applies ``train.lr`` as given.

SGD with momentum; weight decay on weights only (not on biases or norm parameters, as detectron2 and mmdetection
default to); linear warmup then multistep or cosine decay, as one ``LambdaLR`` so its state is a plain
``state_dict``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from detector.engine import distributed as dist_utils

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg")


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            (no_decay if isinstance(module, norm_types) or name == "bias" else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=build_lr(cfg), momentum=cfg.train.momentum)


def scaled_lr(lr: float, reference_batch: int | None, batch_size: int, world_size: int) -> float:
    """The linear scaling rule: ``lr`` is the rate for ``reference_batch`` images; None applies it as given."""
    return lr if reference_batch is None else lr * batch_size * world_size / reference_batch


def build_lr(cfg) -> float:
    """The base learning rate this process trains with: ``train.lr`` scaled to the total batch of all ranks."""
    return scaled_lr(cfg.train.lr, cfg.train.lr_reference_batch, cfg.train.batch_size, dist_utils.get_world_size())


def lr_factor(iteration: int, *, max_iters: int, schedule: str, milestones, gamma: float,
              warmup_iters: int, warmup_factor: float) -> float:
    """Multiplier of the base lr at ``iteration`` (0-based): warmup times the decay schedule."""
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iters) / max_iters))
    else:
        steps = [round(m * max_iters) if m <= 1 else int(m) for m in milestones]
        decay = gamma ** sum(iteration >= s for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        decay *= warmup_factor * (1 - alpha) + alpha
    return decay


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """``milestones`` <= 1 are fractions of ``train.max_iters``; larger values are iterations."""
    t = cfg.train
    kwargs = dict(max_iters=t.max_iters, schedule=t.lr_schedule, milestones=tuple(t.milestones), gamma=t.gamma,
                  warmup_iters=min(t.warmup_iters, t.max_iters), warmup_factor=t.warmup_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, **kwargs))


def build_loss_weights(cfg) -> dict[str, float]:
    """Each loss term's weight; the trainer multiplies by these in one place and logs both values."""
    m = cfg.model
    return {"loss_rpn_cls": m.rpn.cls_weight, "loss_rpn_box": m.rpn.box_loss.weight,
            "loss_cls": m.roi_head.cls_weight, "loss_box_reg": m.roi_head.box_loss.weight}
