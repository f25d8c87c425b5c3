"""Box-regression losses (``regression``) and the beta schedules of Dynamic Smooth L1
(``dynamic``)."""

from detector.losses.dynamic import (
    BETA_SCHEDULES,
    SCHEDULED_LOSSES,
    AdaptiveBeta,
    BetaSchedule,
    ScheduledBeta,
    build_beta_schedule,
)
from detector.losses.regression import (
    LOSSES,
    BoxLoss,
    balanced_l1_loss,
    build_box_loss,
    ciou_loss,
    diou_loss,
    giou_loss,
    iou_loss,
    l1_loss,
    l2_loss,
    resolve_beta,
    smooth_l1_loss,
    weight_reduce_loss,
)

__all__ = [
    "l1_loss",
    "l2_loss",
    "smooth_l1_loss",
    "balanced_l1_loss",
    "iou_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "weight_reduce_loss",
    "resolve_beta",
    "LOSSES",
    "BoxLoss",
    "build_box_loss",
    "BetaSchedule",
    "AdaptiveBeta",
    "ScheduledBeta",
    "BETA_SCHEDULES",
    "SCHEDULED_LOSSES",
    "build_beta_schedule",
]
