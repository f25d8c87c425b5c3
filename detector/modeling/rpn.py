"""Region Proposal Network, batched over images. ``N`` images, ``A`` anchors over all levels
(torchvision's order), ``M`` candidates per image before NMS, ``P`` proposals after (padded,
``valid`` [N,P]), ``G`` padded GT; boxes are xyxy pixels of the padded batch. The losses are divided
by the number of sampled anchors (torchvision/Detectron2).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead, concat_box_prediction_layers

from detector.box_coder import BoxCoder
from detector.boxes import batched_box_iou, batched_nms_topk, clip_boxes_to_sizes, min_size_mask
from detector.losses.regression import BoxLoss
from detector.modeling.matcher import match_boxes, sample_balanced


def build_anchor_generator(
    anchor_sizes: Sequence[float], aspect_ratios: Sequence[float], levels: int
) -> AnchorGenerator:
    """torchvision's anchors: with one level every size is there, else one size per level (the
    config's relation check holds model.rpn.anchor_sizes to the FPN's levels)."""
    sizes = [tuple(anchor_sizes)] if levels == 1 else [(s,) for s in anchor_sizes]
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * levels)


class RPN(nn.Module):
    """Faster R-CNN's RPN; ``anchor_sizes``: one per level, or all on the one level of a backbone
    without FPN; ``box_loss``: a delta :class:`~detector.losses.regression.BoxLoss`."""

    def __init__(
        self,
        in_channels: int,
        strides: Sequence[int],
        anchor_sizes: Sequence[float],
        aspect_ratios: Sequence[float],
        *,
        box_loss: BoxLoss,
        pre_nms_topk_train: int,
        post_nms_topk_train: int,
        pre_nms_topk_test: int,
        post_nms_topk_test: int,
        nms_thresh: float,
        min_size: float,
        batch_size_per_image: int,
        positive_fraction: float,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
    ):
        super().__init__()
        self.strides = tuple(int(s) for s in strides)
        self.anchor_generator = build_anchor_generator(anchor_sizes, aspect_ratios, len(strides))
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors_per_location()[0])
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0), check=False)
        self.box_loss = box_loss
        self.pre_nms_topk = {True: pre_nms_topk_train, False: pre_nms_topk_test}
        self.post_nms_topk = {True: post_nms_topk_train, False: post_nms_topk_test}
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self._anchor_cache: dict[tuple, torch.Tensor] = {}

    def anchors(self, grid_sizes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """All anchors [A,4] for feature maps of the given (H_l, W_l), torchvision's; cached per
        shape and device."""
        key = (tuple(grid_sizes), str(device))
        if key not in self._anchor_cache:
            if len(self._anchor_cache) > 64:
                self._anchor_cache.clear()
            self.anchor_generator.set_cell_anchors(torch.float32, device)
            strides = [[torch.tensor(s, device=device)] * 2 for s in self.strides]
            per_level = self.anchor_generator.grid_anchors(
                [list(size) for size in grid_sizes], strides
            )
            self._anchor_cache[key] = torch.cat(per_level)
        return self._anchor_cache[key]

    def forward(
        self,
        features: Sequence[torch.Tensor],
        image_sizes: torch.Tensor,
        gt_boxes: torch.Tensor | None = None,
        gt_valid: torch.Tensor | None = None,
    ):
        """features: L x [N,C,H_l,W_l]; image_sizes [N,2] (h, w) before padding; gt [N,G,4],
        gt_valid [N,G] in training -> proposals [N,P,4] (detached), scores [N,P], valid [N,P],
        losses, stats (eval: two empty dicts)."""
        logits, deltas = self.head(list(features))
        num_images = features[0].shape[0]
        level_sizes = [lg.shape[1] * lg.shape[2] * lg.shape[3] for lg in logits]
        objectness, pred_deltas = concat_box_prediction_layers(logits, deltas)  # [N*A,1], [N*A,4]
        objectness = objectness.view(num_images, -1).float()  # [N,A]
        pred_deltas = pred_deltas.view(num_images, -1, 4).float()  # [N,A,4]
        anchors = self.anchors([tuple(lg.shape[2:]) for lg in logits], objectness.device)  # [A,4]
        proposals, scores, valid = self._select(
            objectness.detach(), pred_deltas.detach(), anchors, level_sizes, image_sizes
        )
        if not self.training:
            return proposals, scores, valid, {}, {}
        losses, stats = self._losses(objectness, pred_deltas, anchors, gt_boxes, gt_valid)
        stats["rpn/num_proposals"] = valid.sum(dim=1).float().mean()
        return proposals, scores, valid, losses, stats

    def _select(
        self,
        objectness: torch.Tensor,
        pred_deltas: torch.Tensor,
        anchors: torch.Tensor,
        level_sizes: Sequence[int],
        image_sizes: torch.Tensor,
    ):
        """Top-k per level, decode, clip, drop tiny boxes, NMS per (image, level), top-k per
        image."""
        num_images = objectness.shape[0]
        pre_nms = self.pre_nms_topk[self.training]
        cand_idx, cand_level = [], []
        starts = [0] + list(itertools.accumulate(level_sizes))[:-1]
        for level, (logit_l, start) in enumerate(zip(objectness.split(level_sizes, 1), starts)):
            k = min(pre_nms, logit_l.shape[1])
            cand_idx.append(logit_l.topk(k, dim=1).indices + start)  # [N,k]
            cand_level.append(torch.full((k,), level, dtype=torch.long, device=objectness.device))
        idx = torch.cat(cand_idx, 1)  # [N,M]
        level = torch.cat(cand_level)  # [M]
        cand_logits = objectness.gather(1, idx)  # [N,M]
        cand_deltas = pred_deltas.gather(1, idx[..., None].expand(-1, -1, 4))  # [N,M,4]
        boxes = self.box_coder.decode(cand_deltas.reshape(-1, 4), anchors[idx.reshape(-1)]).view(
            num_images, -1, 4
        )
        boxes = clip_boxes_to_sizes(boxes, image_sizes)  # [N,M,4]
        keep = min_size_mask(boxes, self.min_size) & torch.isfinite(cand_logits)  # [N,M]
        # [N,M]
        groups = torch.arange(num_images, device=idx.device)[:, None] * len(level_sizes) + level
        # [N,P]
        top_logits, top = batched_nms_topk(
            boxes, cand_logits, groups, keep, self.nms_thresh, self.post_nms_topk[self.training]
        )
        proposals = boxes.gather(1, top[..., None].expand(-1, -1, 4))  # [N,P,4]
        valid = torch.isfinite(top_logits)
        return proposals, torch.sigmoid(top_logits).masked_fill(~valid, 0.0), valid

    def _losses(
        self,
        objectness: torch.Tensor,
        pred_deltas: torch.Tensor,
        anchors: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_valid: torch.Tensor,
    ):
        """Match anchors (IoU >= fg or best of a GT: positive, < bg: negative), sample; the sampled
        anchors' losses."""
        iou = batched_box_iou(anchors[None], gt_boxes)  # [N,A,G]
        matched_idx, _, fg, bg = match_boxes(
            iou, gt_valid, self.fg_iou_thresh, self.bg_iou_thresh, allow_low_quality_matches=True
        )
        # [N,S]
        index, is_fg, sampled = sample_balanced(
            fg, bg, self.batch_size_per_image, self.positive_fraction
        )
        num_sampled = sampled.sum().clamp(min=1).float()
        logits = objectness.gather(1, index)  # [N,S]
        loss_cls = (
            F.binary_cross_entropy_with_logits(logits, is_fg.float(), reduction="none") * sampled
        ).sum() / num_sampled
        sampled_anchors = anchors[index]  # [N,S,4]
        gt_idx = matched_idx.gather(1, index)  # [N,S]
        matched_gt = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))  # [N,S,4]
        # non-fg: zero deltas
        target_boxes = torch.where(is_fg[..., None], matched_gt, sampled_anchors)
        target_deltas = self.box_coder.encode(
            sampled_anchors.reshape(-1, 4), target_boxes.reshape(-1, 4)
        )
        pred = pred_deltas.gather(1, index[..., None].expand(-1, -1, 4)).reshape(-1, 4)  # [N*S,4]
        loss_box = self.box_loss(
            pred, target_deltas, weight=is_fg.reshape(-1).float(), avg_factor=num_sampled
        )
        stats = {"rpn/num_pos_anchors": is_fg.sum(dim=1).float().mean().detach()}
        return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}, stats
