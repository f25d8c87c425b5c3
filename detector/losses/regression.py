"""Box-regression losses: elementwise functions, one reduction helper (mmdetection's semantics), one
registry.

Delta losses take (tx, ty, tw, th) deltas [P,4] and return [P,4]; IoU-family losses take xyxy boxes
[P,4] and return [P], eps-guarded (finite gradients for degenerate and disjoint boxes). The loss
weight is applied by the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

EXACT_L1_BETA = 1e-5  # smooth_l1 with beta below this is computed as L1


# --------------------------------------------------------------- delta losses: [P,4],[P,4] -> [P,4]


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|pred - target| elementwise."""
    return (pred - target).abs()


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(pred - target)^2 elementwise; the gradient is 2x and grows without bound with the error."""
    return (pred - target) ** 2


def smooth_l1_loss(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 (Huber / beta): quadratic below beta, linear above; |gradient| <= 1 everywhere."""
    diff = (pred - target).abs()
    if beta < EXACT_L1_BETA:
        return diff
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def balanced_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
) -> torch.Tensor:
    """Balanced L1 (Libra R-CNN, mmdetection's closed form): promotes the gradient of inliers (|x| <
    beta)."""
    diff = (pred - target).abs()
    b = math.exp(gamma / alpha) - 1
    inlier = alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff
    outlier = gamma * diff + gamma / b - alpha * beta
    return torch.where(diff < beta, inlier, outlier)


# -------------------------------------------------------------- IoU family: xyxy [P,4],[P,4] -> [P]


def _iou_terms(pred: torch.Tensor, target: torch.Tensor, eps: float):
    """IoU [P] and the enclosing box (x1, y1, x2, y2), each [P]; widths/heights clamped at 0."""
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    area_p = (px2 - px1).clamp(min=0) * (py2 - py1).clamp(min=0)
    area_t = (tx2 - tx1).clamp(min=0) * (ty2 - ty1).clamp(min=0)
    inter = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(min=0) * (
        torch.min(py2, ty2) - torch.max(py1, ty1)
    ).clamp(min=0)
    union = area_p + area_t - inter
    iou = inter / (union + eps)
    enclosing = (torch.min(px1, tx1), torch.min(py1, ty1), torch.max(px2, tx2), torch.max(py2, ty2))
    return iou, union, enclosing


def iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - IoU; no gradient signal for non-overlapping boxes (that is what GIoU adds)."""
    iou, _, _ = _iou_terms(pred, target, eps)
    return 1 - iou


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - GIoU = 1 - IoU + (|C| - |union|) / |C| with C the smallest enclosing box."""
    iou, union, (cx1, cy1, cx2, cy2) = _iou_terms(pred, target, eps)
    area_c = (cx2 - cx1).clamp(min=0) * (cy2 - cy1).clamp(min=0)
    return 1 - iou + (area_c - union) / (area_c + eps)


def _diou_terms(pred: torch.Tensor, target: torch.Tensor, eps: float):
    iou, _, (cx1, cy1, cx2, cy2) = _iou_terms(pred, target, eps)
    diag2 = (cx2 - cx1) ** 2 + (cy2 - cy1) ** 2 + eps  # squared diagonal of the enclosing box
    centre_dx = (pred[:, 0] + pred[:, 2] - target[:, 0] - target[:, 2]) / 2
    centre_dy = (pred[:, 1] + pred[:, 3] - target[:, 1] - target[:, 3]) / 2
    return iou, 1 - iou + (centre_dx**2 + centre_dy**2) / diag2


def diou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - IoU + d^2 / c^2: d the distance between centres, c the enclosing box's diagonal."""
    return _diou_terms(pred, target, eps)[1]


def ciou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """DIoU + alpha v, v = 4/pi^2 (atan(w_t/h_t) - atan(w_p/h_p))^2, alpha = v / (1 - IoU + v) held
    constant."""
    iou, diou = _diou_terms(pred, target, eps)
    w_p, h_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).unbind(-1)
    w_t, h_t = (target[:, 2:] - target[:, :2]).clamp(min=0).unbind(-1)
    v = (4 / math.pi**2) * (torch.atan(w_t / (h_t + eps)) - torch.atan(w_p / (h_p + eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou + alpha * v


def weight_reduce_loss(
    loss: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Multiply by ``weight`` (broadcast), then reduce: "none", "sum", or "mean" (or the sum /
    ``avg_factor``). mmdetection's semantics, except that the mean of an empty loss is 0, so an
    iteration without positives trains."""
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(
            f"weight_reduce_loss: reduction must be none, sum or mean, got {reduction!r}"
        )
    if reduction == "sum" and avg_factor is not None:
        raise ValueError('weight_reduce_loss: avg_factor can not be used with reduction="sum"')
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if avg_factor is not None:  # reduction "mean"
        return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
    return loss.mean() if reduction == "mean" and loss.numel() > 0 else loss.sum()


@dataclass
class BoxLoss:
    """A configured box loss: ``loss(pred [P,4], target [P,4], weight=None, avg_factor=None,
    beta=None)`` -> float32 sum of the elementwise loss times ``weight`` ([P,4] or [P]) /
    ``avg_factor`` (None: the plain sum). ``on_boxes``: xyxy boxes (IoU family), else deltas;
    ``beta`` overrides the configured beta (dynamic_smooth_l1's schedule)."""

    name: str
    fn: Callable[..., torch.Tensor] = field(repr=False)
    on_boxes: bool = False
    beta: float | None = None
    # further keyword arguments of fn (balanced_l1's)
    params: dict[str, float] = field(default_factory=dict)

    def __call__(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        avg_factor: float | torch.Tensor | None = None,
        beta: float | None = None,
    ) -> torch.Tensor:
        if pred.shape != target.shape or pred.dim() != 2 or pred.shape[-1] != 4:
            raise ValueError(
                f"BoxLoss {self.name}: pred and target must both be [P,4], got "
                f"{list(pred.shape)} and {list(target.shape)}"
            )
        kwargs = dict(self.params)
        if beta is not None and self.beta is None:
            raise ValueError(f"BoxLoss {self.name}: this loss has no beta; pass beta=None")
        if self.beta is not None:
            kwargs["beta"] = float(self.beta if beta is None else beta)
        loss = self.fn(pred.float(), target.float(), **kwargs)  # [P,4] deltas or [P] boxes
        if weight is not None:
            weight = weight.float()
            if self.on_boxes and weight.dim() == 2:
                weight = weight.mean(dim=-1)  # [P]
            elif not self.on_boxes and weight.dim() == 1:
                weight = weight[:, None]  # [P,1]
        return weight_reduce_loss(loss, weight, "sum" if avg_factor is None else "mean", avg_factor)


def resolve_beta(cfg: Mapping) -> float:
    """The section's beta; a Caffe-style ``sigma`` (if set) wins: beta = 1 / sigma^2."""
    return 1.0 / float(cfg["sigma"]) ** 2 if cfg["sigma"] is not None else float(cfg["beta"])


LOSSES: dict[str, Callable[[Mapping], BoxLoss]] = {
    "l2": lambda cfg: BoxLoss("l2", l2_loss),
    "l1": lambda cfg: BoxLoss("l1", l1_loss),
    "smooth_l1": lambda cfg: BoxLoss("smooth_l1", smooth_l1_loss, beta=resolve_beta(cfg)),
    "dynamic_smooth_l1": lambda cfg: BoxLoss(
        "dynamic_smooth_l1", smooth_l1_loss, beta=resolve_beta(cfg)
    ),
    "balanced_l1": lambda cfg: BoxLoss(
        "balanced_l1",
        balanced_l1_loss,
        beta=resolve_beta(cfg),
        params={"alpha": float(cfg["alpha"]), "gamma": float(cfg["gamma"])},
    ),
    "iou": lambda cfg: BoxLoss("iou", iou_loss, on_boxes=True),
    "giou": lambda cfg: BoxLoss("giou", giou_loss, on_boxes=True),
    "diou": lambda cfg: BoxLoss("diou", diou_loss, on_boxes=True),
    "ciou": lambda cfg: BoxLoss("ciou", ciou_loss, on_boxes=True),
}


def build_box_loss(cfg: Mapping) -> BoxLoss:
    """The BoxLoss of a ``box_loss`` config section (its weight, normalizer and schedule belong to
    the caller)."""
    return LOSSES[cfg["name"]](cfg)
