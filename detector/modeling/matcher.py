"""Label assignment for the RPN and the RoI heads, batched over images with padded GT.

Shapes: ``N`` images, ``M`` candidate boxes per image (anchors or proposals), ``G`` GT boxes per image after
padding to the batch's largest count (``gt_valid [N,G]`` marks the real ones), ``S`` sampled boxes per image.
Label 0 is background, foreground labels are 1..K. Everything is masked tensor arithmetic: no per-image Python
loop, no ``nonzero``/``.item()`` host sync, so assignment stays queued on the device.

- :func:`match_boxes`: IoU matching (IoU from :func:`detector.boxes.batched_box_iou`) with fg/bg thresholds
  (ignored in between), optional low-quality matches (the RPN's "best anchor of each GT is positive" rule).
- :func:`sample_balanced`: up to ``batch_size_per_image`` samples per image, at most ``positive_fraction`` of them
  foreground, drawn uniformly at random by top-k over random keys.
- :class:`DynamicLabelAssigner`: Dynamic R-CNN's label assignment (the IoU threshold follows the proposals' quality).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.distributed as dist

__all__ = ["match_boxes", "sample_balanced", "DynamicLabelAssigner"]


def match_boxes(iou: torch.Tensor, gt_valid: torch.Tensor, fg_iou_thresh: float | torch.Tensor,
                bg_iou_thresh: float | torch.Tensor, allow_low_quality_matches: bool = False):
    """Match each candidate to its best GT.

    Args:
        iou: [N,M,G] candidate-vs-GT IoU (:func:`detector.boxes.batched_box_iou`).
        gt_valid: [N,G] bool, False on padding.
        fg_iou_thresh / bg_iou_thresh: floats or 0-d tensors (dynamic assignment); IoU >= fg is foreground,
            IoU < bg background, in between ignored.
        allow_low_quality_matches: also mark as foreground, for each GT, the candidates with its highest IoU.

    Returns:
        matched_idx [N,M] int64 (index into G; 0 where the image has no GT), max_iou [N,M] (-1 without GT),
        fg [N,M] bool, bg [N,M] bool.
    """
    iou = iou.masked_fill(~gt_valid[:, None, :], -1.0)
    if iou.shape[2] == 0:
        max_iou = iou.new_full(iou.shape[:2], -1.0)
        matched_idx = torch.zeros(iou.shape[:2], dtype=torch.long, device=iou.device)
    else:
        max_iou, matched_idx = iou.max(dim=2)  # [N,M]
    fg = max_iou >= fg_iou_thresh
    bg = (max_iou < bg_iou_thresh) & ~fg
    if allow_low_quality_matches and iou.shape[2] > 0:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # [N,1,G]
        best = ((iou == best_per_gt) & gt_valid[:, None, :] & (best_per_gt > 0)).any(dim=2)  # [N,M]
        fg = fg | best
        bg = bg & ~best
    return matched_idx, max_iou, fg, bg


def sample_balanced(fg: torch.Tensor, bg: torch.Tensor, batch_size_per_image: int, positive_fraction: float,
                    generator: torch.Generator | None = None):
    """Balanced random sampling per image, vectorised over the batch.

    Args:
        fg, bg: [N,M] bool candidate masks (disjoint).

    Returns:
        index [N,S] int64 into M, is_fg [N,S] bool, valid [N,S] bool, with S = min(batch_size_per_image, M).
        Per image: min(#fg, batch_size_per_image * positive_fraction) foreground samples, then background up to
        batch_size_per_image; ``valid`` is False only where the image has too few candidates. Foreground samples
        come first within each row.
    """
    num_images, num_candidates = fg.shape
    size = min(batch_size_per_image, num_candidates)
    max_fg = min(int(batch_size_per_image * positive_fraction), num_candidates)
    keys = torch.rand(fg.shape, device=fg.device, generator=generator)  # [N,M] in [0,1)
    num_fg = fg.sum(dim=1).clamp(max=max_fg)  # [N]
    fg_keys, fg_idx = torch.where(fg, keys, -1.0).topk(max_fg, dim=1)  # [N,max_fg] random fg order
    take_fg = torch.arange(max_fg, device=fg.device)[None, :] < num_fg[:, None]
    chosen_fg = torch.zeros_like(fg).scatter_(1, fg_idx, take_fg & (fg_keys >= 0))  # [N,M]
    # chosen fg rank above every bg (keys + 2 > keys), the rest of the fg and the ignored ones below 0
    order = torch.where(chosen_fg, keys + 2.0, torch.where(bg, keys, -1.0))
    top, index = order.topk(size, dim=1)  # [N,S]
    valid = top >= 0
    is_fg = top >= 2.0
    return index, is_fg, valid


class DynamicLabelAssigner:
    """Dynamic R-CNN's label assignment: the fg IoU threshold follows the proposals' quality.

    Each training iteration records, for every image with GT, the ``topk``-th largest IoU of its proposals
    (GT boxes included, as in the paper's code) against their best GT; images without GT carry no IoU
    statistic and are skipped. After every ``interval`` iterations the threshold becomes
    ``max(min_thresh, mean of the record)`` and the record is cleared; the background threshold equals it.
    The record stays on the device as a (sum, count) pair, so updating costs no host sync; under
    torch.distributed the pair is summed over ranks at each threshold update, so every rank uses the same one.
    """

    def __init__(self, initial_thresh: float = 0.5, topk: int = 75, interval: int = 100, min_thresh: float = 0.4):
        if topk < 1 or interval < 1:
            raise ValueError(f"DynamicLabelAssigner: topk and interval must be >= 1, got {topk}, {interval}")
        self.topk = int(topk)
        self.interval = int(interval)
        self.min_thresh = float(min_thresh)
        self.thresh = torch.tensor(float(initial_thresh))  # 0-d, on the device of the last update
        self.iou_sum = torch.zeros(())
        self.iou_count = torch.zeros(())
        self.steps = 0  # iterations recorded since the last threshold update

    def update(self, max_iou: torch.Tensor, candidate_valid: torch.Tensor, gt_valid: torch.Tensor) -> torch.Tensor:
        """max_iou [N,M] best-GT IoU per candidate, candidate_valid [N,M], gt_valid [N,G] -> the threshold (0-d)."""
        device = max_iou.device
        self.thresh, self.iou_sum, self.iou_count = (
            t.to(device) for t in (self.thresh, self.iou_sum, self.iou_count))
        k = min(self.topk, max_iou.shape[1])
        if k > 0:
            kth = max_iou.masked_fill(~candidate_valid, 0.0).topk(k, dim=1).values[:, -1]  # [N]
            has_gt = gt_valid.any(dim=1)
            self.iou_sum = self.iou_sum + (kth.clamp(min=0) * has_gt).sum().detach()
            self.iou_count = self.iou_count + has_gt.sum()
        self.steps += 1
        if self.steps >= self.interval:
            if dist.is_available() and dist.is_initialized():  # every rank switches to the same threshold
                packed = torch.stack((self.iou_sum, self.iou_count))
                dist.all_reduce(packed)
                self.iou_sum, self.iou_count = packed[0], packed[1]
            mean = self.iou_sum / self.iou_count.clamp(min=1)
            new = torch.clamp(mean, min=self.min_thresh)
            self.thresh = torch.where(self.iou_count > 0, new, self.thresh).float()
            self.iou_sum = torch.zeros_like(self.iou_sum)
            self.iou_count = torch.zeros_like(self.iou_count)
            self.steps = 0
        return self.thresh

    def state_dict(self) -> dict[str, Any]:
        return {"thresh": self.thresh.detach().cpu().clone(), "iou_sum": self.iou_sum.detach().cpu().clone(),
                "iou_count": self.iou_count.detach().cpu().clone(), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.thresh = torch.as_tensor(state["thresh"], dtype=torch.float32).clone()
        self.iou_sum = torch.as_tensor(state["iou_sum"], dtype=torch.float32).clone()
        self.iou_count = torch.as_tensor(state["iou_count"], dtype=torch.float32).clone()
        self.steps = int(state["steps"])

    def __repr__(self) -> str:
        return (f"DynamicLabelAssigner(topk={self.topk}, interval={self.interval}, min_thresh={self.min_thresh})")
