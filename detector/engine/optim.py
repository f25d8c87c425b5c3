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

import functools
import math

import torch
from torch import nn

from detector.config import ConfigError
from detector.engine import distributed as dist_utils


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD over ``model``'s trainable parameters (already on their device), implemented as ``train.optimizer_impl``
    says (see :func:`make_sgd`)."""
    decay, no_decay = [], []
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            (no_decay if isinstance(module, norm_types) or name == "bias" else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return make_sgd([g for g in groups if g["params"]], lr=build_lr(cfg), momentum=cfg.train.momentum,
                    impl=cfg.train.optimizer_impl)


def make_sgd(groups: list[dict], *, lr: float, momentum: float, impl: str = "auto") -> torch.optim.SGD:
    """``torch.optim.SGD`` over ``groups`` with the update implementation ``impl``. The update and the state dict
    are the same whichever is used (up to float rounding), so a run may resume with another.

    ``fused``: one kernel for all parameters (torch >= 2.4 on CUDA, and on CPU in recent versions); ``foreach``:
    a few multi-tensor kernels per group; ``for_loop``: a few kernels per parameter (what SGD does by default on
    CPU). ``auto``: fused where this torch supports it for the parameters' device, else foreach. On a GPU the
    per-parameter launches of ``for_loop`` cost more than the update itself; the fused update also takes the
    fp16 grad scaler's inf check on the device, where a non-fused step reads it on the host every step.
    The chosen implementation is ``optimizer.impl``.
    """
    device = groups[0]["params"][0].device
    if impl in ("auto", "fused"):
        problem = fused_sgd_problem(device)
        if problem is None:
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=True)
            optimizer.impl = "fused"
            return optimizer
        if impl == "fused":
            raise ConfigError(f"train.optimizer_impl=fused: torch {torch.__version__} has no fused SGD for "
                              f"{device.type} ({problem}); use auto or foreach")
    foreach = impl != "for_loop"
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=foreach)
    optimizer.impl = "foreach" if foreach else "for_loop"
    return optimizer


@functools.lru_cache(maxsize=None)
def fused_sgd_problem(device: torch.device) -> str | None:
    """None when this torch runs a fused SGD step on ``device``, else why not: tried on one parameter (torch checks
    the device only at the first step, and which devices have the kernel changed between versions)."""
    try:
        param = torch.zeros(1, device=device, requires_grad=True)
        param.grad = torch.zeros(1, device=device)
        torch.optim.SGD([param], lr=0.1, momentum=0.9, fused=True).step()
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return None


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
