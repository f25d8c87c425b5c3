"""Label assignment for the RPN and the RoI heads, batched over images with padded GT.

Shapes: ``N`` images, ``M`` candidates per image, ``G >= 1`` GT slots per image (``gt_valid
[N,G]``; TwoStageDetector pads an image without GT to one invalid slot), ``S`` samples per image.
Label 0 is background, 1..K foreground. Masked tensor arithmetic only: no per-image loop, no host
sync.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from detector.config import keyword_args
from detector.losses.dynamic import IntervalRecord, kth_valid


def match_boxes(
    iou: torch.Tensor,
    gt_valid: torch.Tensor,
    fg_iou_thresh: float | torch.Tensor,
    bg_iou_thresh: float | torch.Tensor,
    allow_low_quality_matches: bool = False,
):
    """Match each candidate ([N,M,G] ``iou``; ``gt_valid`` [N,G]) to its best GT: IoU >= fg is
    foreground, < bg background, ignored between (thresholds: floats or 0-d tensors);
    ``allow_low_quality_matches`` also makes each GT's best candidates foreground. -> matched_idx
    [N,M] int64 (0 without GT), max_iou [N,M] (-1 without GT), fg [N,M] bool, bg [N,M] bool."""
    iou = iou.masked_fill(~gt_valid[:, None, :], -1.0)
    max_iou, matched_idx = iou.max(dim=2)  # [N,M]
    fg = max_iou >= fg_iou_thresh
    bg = (max_iou < bg_iou_thresh) & ~fg
    if allow_low_quality_matches:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # [N,1,G]
        best = ((iou == best_per_gt) & gt_valid[:, None, :] & (best_per_gt > 0)).any(dim=2)  # [N,M]
        fg = fg | best
        bg = bg & ~best
    return matched_idx, max_iou, fg, bg


def sample_balanced(
    fg: torch.Tensor, bg: torch.Tensor, batch_size_per_image: int, positive_fraction: float
):
    """Balanced random sampling per image over [N,M] disjoint bool masks ``fg``, ``bg`` -> index
    [N,S] int64 into M, is_fg [N,S], valid [N,S] (False where too few candidates), S = min(batch
    size, M): min(#fg, batch * positive_fraction) foreground first, then background."""
    num_images, num_candidates = fg.shape
    size = min(batch_size_per_image, num_candidates)
    max_fg = min(int(batch_size_per_image * positive_fraction), num_candidates)
    keys = torch.rand(fg.shape, device=fg.device)  # [N,M] in [0,1)
    num_fg = fg.sum(dim=1).clamp(max=max_fg)  # [N]
    fg_keys, fg_idx = torch.where(fg, keys, -1.0).topk(max_fg, dim=1)  # [N,max_fg] random fg order
    take_fg = torch.arange(max_fg, device=fg.device)[None, :] < num_fg[:, None]
    chosen_fg = torch.zeros_like(fg).scatter_(1, fg_idx, take_fg & (fg_keys >= 0))  # [N,M]
    # chosen fg rank above every bg (keys + 2 > keys), the rest of the fg and the ignored ones below
    # 0
    order = torch.where(chosen_fg, keys + 2.0, torch.where(bg, keys, -1.0))
    top, index = order.topk(size, dim=1)  # [N,S]
    valid = top >= 0
    is_fg = top >= 2.0
    return index, is_fg, valid


class DynamicLabelAssigner:
    """Dynamic R-CNN's label assignment: :meth:`observe` returns an iteration's statistic;
    :meth:`step` (once per optimizer step) sets the fg/bg IoU threshold to max(min_thresh, mean of
    the interval's statistics, averaged over ranks) after every ``interval`` iterations. ``mmdet``
    (mmdetection's DynamicRoIHead): per image the min(iou_topk, n)-th largest max overlap, then the
    mean over images. ``official`` (hkzhang95/DynamicRCNN): topk(ious, KI * IMS_PER_GPU)[-1] over
    the proposals of the GPU's images with GT, below-threshold ones measured against the image's
    first GT; k capped at the count.
    """

    def __init__(
        self,
        initial_thresh: float = 0.5,
        topk: int = 75,
        interval: int = 100,
        min_thresh: float = 0.4,
        statistic: str = "mmdet",
    ):
        self.topk = int(topk)
        self.interval = int(interval)
        self.min_thresh = float(min_thresh)
        self.statistic = statistic
        self.thresh = float(initial_thresh)
        self.record = IntervalRecord(interval, "iou_statistic")

    def observe(
        self,
        iou: torch.Tensor,
        max_iou: torch.Tensor,
        fg: torch.Tensor,
        candidate_valid: torch.Tensor,
        gt_valid: torch.Tensor,
    ) -> torch.Tensor:
        """This iteration's IoU statistic, 0-d float32 (NaN: nothing to measure); changes no state,
        no host sync."""
        if self.statistic == "official":
            has_gt = gt_valid.any(dim=1)  # [N]
            valid = (candidate_valid & has_gt[:, None]).flatten()  # [N*M]
            values = torch.where(fg, max_iou, iou[..., 0]).flatten()  # [N*M]
            return kth_valid(values, valid, has_gt.sum() * self.topk, largest=True)
        # per image the min(topk, n)-th largest best-GT IoU (0 without GT, as mmdet's), then the
        # mean over the images with candidates
        return kth_valid(max_iou.clamp(min=0), candidate_valid, self.topk, largest=True).nanmean()

    def step(self, iteration: int, statistic: torch.Tensor | None) -> float:
        record = self.record.add(iteration, statistic)
        if record:
            self.thresh = max(self.min_thresh, sum(record) / len(record))
        return self.thresh

    def state_dict(self) -> dict[str, Any]:
        return {"thresh": self.thresh, "record": self.record.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.thresh = float(state["thresh"])
        self.record.load_state_dict(state["record"])

    def __repr__(self) -> str:
        return (
            f"DynamicLabelAssigner(thresh={self.thresh:.4g}, topk={self.topk}, "
            f"interval={self.interval}, min_thresh={self.min_thresh}, statistic={self.statistic!r})"
        )


def build_label_assigner(roi_cfg: Mapping) -> DynamicLabelAssigner | None:
    """The dynamic label assigner of a ``model.roi_head`` section, or None unless enabled; ``mmdet``
    starts at ``fg_iou_thresh`` (Faster R-CNN's 0.5), ``official`` at ``min_thresh`` (its
    WARMUP_IOU)."""
    dla = roi_cfg["dynamic_label_assignment"]
    if not dla["enabled"]:
        return None
    initial = dla["min_thresh"] if dla["statistic"] == "official" else roi_cfg["fg_iou_thresh"]
    return DynamicLabelAssigner(initial_thresh=initial, **keyword_args(dla, "enabled"))
