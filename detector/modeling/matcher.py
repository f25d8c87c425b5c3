"""Label assignment for the RPN and the RoI heads, batched over images with padded GT.

Shapes: ``N`` images, ``M`` candidate boxes per image (anchors or proposals), ``G`` GT boxes per image after
padding to the batch's largest count (``gt_valid [N,G]`` marks the real ones), ``S`` sampled boxes per image.
Label 0 is background, foreground labels are 1..K. Everything is masked tensor arithmetic: no per-image Python
loop, no ``nonzero``/``.item()`` host sync, so assignment stays queued on the device.

- :func:`match_boxes`: IoU matching (IoU from :func:`detector.boxes.batched_box_iou`) with fg/bg thresholds
  (ignored in between), optional low-quality matches (the RPN's "best anchor of each GT is positive" rule).
- :func:`sample_balanced`: up to ``batch_size_per_image`` samples per image, at most ``positive_fraction`` of them
  foreground, drawn uniformly at random by top-k over random keys.
- :class:`DynamicLabelAssigner` / :func:`build_label_assigner`: Dynamic R-CNN's label assignment (the IoU threshold
  follows the proposals' quality), in mmdetection's or the official code's convention.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from detector.losses.dynamic import STATISTIC_CONVENTIONS, IntervalRecord

__all__ = ["match_boxes", "sample_balanced", "DynamicLabelAssigner", "build_label_assigner"]


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
    """Dynamic R-CNN's label assignment: the IoU threshold (foreground and background alike) follows the proposals.

    The RoI head matches with ``thresh`` (a float, the threshold in use) and passes each training forward's IoUs to
    :meth:`observe`, which returns that iteration's statistic and changes nothing. The trainer calls
    :meth:`step` once per optimizer step: after every ``interval`` iterations the threshold becomes
    ``max(min_thresh, mean of the interval's statistics)``, used from the next iteration on; under torch.distributed
    each iteration's statistic is first averaged over the ranks (:class:`~detector.losses.dynamic.IntervalRecord`,
    one collective per interval), so every rank matches with the same threshold. The two reference
    implementations measure the statistic differently (``statistic``):

    ``mmdet`` (default), open-mmlab/mmdetection ``mmdet/models/roi_heads/dynamic_roi_head.py``:
    ``DynamicRoIHead.loss`` (``forward_train`` in 2.x) takes, per image, the ``min(iou_topk, n)``-th largest of
    ``assign_result.max_overlaps`` over its n proposals (with the GT boxes the sampler adds as proposals, IoU 1;
    an image without GT has all-zero overlaps), then the mean over the images; ``update_hyperparameters`` sets
    ``max(initial_iou, np.mean(iou_history))`` for the positive and negative thresholds. Defaults from
    ``configs/dynamic_rcnn/dynamic_rcnn_r50_fpn_1x_coco.py``: ``iou_topk=75``, ``update_iter_interval=100``,
    ``initial_iou=0.4``; until the first update the assigner keeps Faster R-CNN's 0.5.

    ``official``, hkzhang95/DynamicRCNN ``models/zhanghongkai/dynamic_rcnn/coco/dynamic_rcnn_r50_fpn_1x/``:
    ``network.py`` ``Network.forward`` takes ``torch.topk(ious, KI * IMS_PER_GPU)[0][-1]``, one k per GPU over the
    concatenated proposals of all its images (with the appended GT boxes), where ``ious`` is the ``matched_ious``
    of ``dynamic_rcnn/det_opr/rcnn/proposal_target_opr.py``: the best-GT IoU of a foreground proposal, but for a
    proposal below the threshold the IoU with the image's first GT box (``matched_idxs.clamp(min=0)``), reproduced
    here. ``train.py`` ``main`` sets ``max(sum(S_I) / ITERATION_COUNT, WARMUP_IOU)``, starting from
    ``WARMUP_IOU``. Defaults from its ``config.py``: ``KI=75``, ``ITERATION_COUNT=100``, ``WARMUP_IOU=0.4``.
    Images without GT, which its training loop skips, neither contribute proposals nor count in k; k is capped
    at the number of proposals.
    """

    def __init__(self, initial_thresh: float = 0.5, topk: int = 75, interval: int = 100, min_thresh: float = 0.4,
                 statistic: str = "mmdet"):
        assert topk >= 1 and statistic in STATISTIC_CONVENTIONS, f"DynamicLabelAssigner: {topk}, {statistic!r}"
        self.topk = int(topk)
        self.interval = int(interval)
        self.min_thresh = float(min_thresh)
        self.statistic = statistic
        self.thresh = float(initial_thresh)
        self.record = IntervalRecord(interval)

    def observe(self, iou: torch.Tensor, max_iou: torch.Tensor, fg: torch.Tensor, candidate_valid: torch.Tensor,
                gt_valid: torch.Tensor) -> torch.Tensor:
        """This iteration's IoU statistic, a 0-d float32 tensor (NaN: nothing to measure); changes no state.

        iou [N,M,G] candidate-vs-GT IoU, max_iou [N,M] / fg [N,M] as returned by :func:`match_boxes` with the
        current threshold, candidate_valid [N,M], gt_valid [N,G]. No host sync.
        """
        if self.statistic == "official":
            return self._observe_official(iou, max_iou, fg, candidate_valid, gt_valid)
        return self._observe_mmdet(max_iou, candidate_valid)

    def _observe_mmdet(self, max_iou: torch.Tensor, candidate_valid: torch.Tensor) -> torch.Tensor:
        k_max = min(self.topk, max_iou.shape[1])
        if k_max == 0:
            return max_iou.new_full((), math.nan)
        overlaps = torch.where(candidate_valid, max_iou.clamp(min=0), -1.0)  # [N,M]; without GT: 0, as mmdet's
        top = overlaps.topk(k_max, dim=1).values  # [N,k_max], the valid ones first
        count = candidate_valid.sum(dim=1)  # [N]
        kth = top.gather(1, (count.clamp(min=1, max=k_max) - 1)[:, None]).squeeze(1)  # [N]: min(topk, n)-th largest
        has = count > 0
        mean = (kth * has).sum() / has.sum().clamp(min=1)
        return torch.where(has.any(), mean, torch.full_like(mean, math.nan)).float()

    def _observe_official(self, iou, max_iou, fg, candidate_valid, gt_valid) -> torch.Tensor:
        has_gt = gt_valid.any(dim=1)  # [N]
        valid = candidate_valid & has_gt[:, None]  # [N,M]
        first_gt = iou[..., 0] if iou.shape[2] > 0 else max_iou  # [N,M]
        values = torch.where(fg, max_iou, first_gt).masked_fill(~valid, -math.inf).flatten()  # [N*M]
        if values.numel() == 0:
            return max_iou.new_full((), math.nan)
        count = valid.sum()
        k = torch.minimum(count, has_gt.sum() * self.topk).clamp(min=1)
        kth = values.sort(descending=True).values.gather(0, (k - 1).view(1)).squeeze(0)
        return torch.where(count > 0, kth, torch.full_like(kth, math.nan)).float()

    def step(self, iteration: int, statistic: torch.Tensor) -> float:
        """After training iteration ``iteration`` (0-based): record its statistic; at an interval's end, update."""
        if self.record.record(iteration, statistic):
            record = self.record.collect()
            if record:
                self.thresh = max(self.min_thresh, sum(record) / len(record))
        return self.thresh

    def state_dict(self) -> dict[str, Any]:
        return {"thresh": self.thresh, "record": self.record.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.thresh = float(state["thresh"])
        self.record.load_state_dict(state["record"])

    def __repr__(self) -> str:
        return (f"DynamicLabelAssigner(thresh={self.thresh:.4g}, topk={self.topk}, interval={self.interval}, "
                f"min_thresh={self.min_thresh}, statistic={self.statistic!r})")


def build_label_assigner(roi_cfg: Mapping) -> DynamicLabelAssigner | None:
    """The dynamic label assigner of a ``model.roi_head`` section, or None unless DLA is enabled.

    It starts where its convention does: ``mmdet`` at ``fg_iou_thresh`` (mmdetection's Dynamic R-CNN config keeps
    Faster R-CNN's 0.5 assigner until the first update), ``official`` at ``min_thresh`` (its ``WARMUP_IOU``).
    """
    dla = roi_cfg["dynamic_label_assignment"]
    if not dla["enabled"]:
        return None
    statistic = dla["statistic"]
    initial = dla["min_thresh"] if statistic == "official" else roi_cfg["fg_iou_thresh"]
    return DynamicLabelAssigner(initial_thresh=initial, topk=dla["topk"], interval=dla["interval"],
                                min_thresh=dla["min_thresh"], statistic=statistic)
