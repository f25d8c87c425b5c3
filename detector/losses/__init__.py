"""Box-regression losses (``regression``) and the beta schedules of Dynamic Smooth L1 (``dynamic``).

Delta losses work on (tx, ty, tw, th) deltas ``[P,4] -> [P,4]``; the IoU family on decoded absolute xyxy boxes
``[P,4] -> [P]``; ``P`` positive (label >= 1; label 0 = background) RoIs. ``build_box_loss(cfg.box_loss)``
gives a :class:`BoxLoss`, ``build_beta_schedule(cfg.model.roi_head, max_iters)`` its beta schedule (or None).
"""
from detector.losses.dynamic import (BETA_SCHEDULES, SCHEDULED_LOSSES, AdaptiveBeta, BetaSchedule, ScheduledBeta,
                                     build_beta_schedule)
from detector.losses.regression import (LOSSES, BoxLoss, balanced_l1_loss, build_box_loss, ciou_loss, diou_loss,
                                        giou_loss, iou_loss, l1_loss, l2_loss, resolve_beta, smooth_l1_loss,
                                        weight_reduce_loss)

__all__ = [
    "l1_loss", "l2_loss", "smooth_l1_loss", "balanced_l1_loss", "iou_loss", "giou_loss", "diou_loss", "ciou_loss",
    "weight_reduce_loss", "resolve_beta", "LOSSES", "BoxLoss", "build_box_loss",
    "BetaSchedule", "AdaptiveBeta", "ScheduledBeta", "BETA_SCHEDULES", "SCHEDULED_LOSSES", "build_beta_schedule",
]
