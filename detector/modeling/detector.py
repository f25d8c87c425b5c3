"""TwoStageDetector: Faster R-CNN (backbone + RPN + RoI heads) or Fast R-CNN on precomputed proposals.

Shapes: ``N`` images, ``G`` GT boxes per image, ``P`` proposals per image, ``K`` foreground classes; label 0 is
background, foreground labels are 1..K. Boxes are absolute xyxy float32 pixels of the input images.

The model owns preprocessing: ``images`` is a list of ``[3,H,W]`` tensors, uint8 0..255 or float 0..1, on any
device; each is copied to the model's device once, scaled to 0..1, normalised with ``pixel_mean``/``pixel_std``
and padded (with zeros after normalisation) to a batch whose sides are multiples of ``size_divisibility``.
GT and proposals are padded to ``[N,G,4]`` / ``[N,P,4]`` with validity masks, so the heads never loop over images.

:func:`build_detector` is the only function here that reads the config.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from detector.boxes import clip_boxes_to_sizes
from detector.losses import build_beta_schedule, build_box_loss
from detector.modeling.backbone import Backbone, build_backbone
from detector.modeling.matcher import DynamicLabelAssigner
from detector.modeling.roi_heads import RoIHeads
from detector.modeling.rpn import RPN

__all__ = ["TwoStageDetector", "build_detector"]


def _pad_boxes(boxes: Sequence[torch.Tensor], device: torch.device, extra: Sequence[torch.Tensor] = ()):
    """Per-image [n_i,4] boxes (and per-image [n_i] extras) -> [N,B,4], extras [N,B], valid [N,B]; B >= 1."""
    counts = [int(b.shape[0]) for b in boxes]
    width = max([1] + counts)
    counts_t = torch.tensor(counts, dtype=torch.long, device="cpu")  # index math on the host, one copy each
    img_idx = torch.repeat_interleave(torch.arange(len(counts), device="cpu"), counts_t).to(device)
    slot = torch.cat([torch.arange(c, device="cpu") for c in counts] or [counts_t]).to(device)
    padded = torch.zeros(len(counts), width, 4, device=device)
    padded[img_idx, slot] = torch.cat([b.reshape(-1, 4) for b in boxes]).to(device, torch.float32)
    padded_extra = []
    for values in extra:
        out = torch.zeros(len(counts), width, dtype=values[0].dtype, device=device)
        out[img_idx, slot] = torch.cat(list(values)).to(device)
        padded_extra.append(out)
    valid = torch.zeros(len(counts), width, dtype=torch.bool, device=device)
    valid[img_idx, slot] = True
    return padded, padded_extra, valid


class TwoStageDetector(nn.Module):
    """``forward(images, targets=None, orig_sizes=None, proposals=None)``, as in docs/architecture.md.

    ``rpn=None`` is Fast R-CNN mode: ``proposals`` (list of [P_i,4] in input pixels) must then be passed.
    """

    def __init__(self, backbone: Backbone, roi_heads: RoIHeads, rpn: RPN | None = None,
                 pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
                 size_divisibility: int = 32):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False)
        self.size_divisibility = size_divisibility

    def preprocess(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """list of [3,H_i,W_i] -> normalised padded batch [N,3,H,W] float32, image_sizes [N,2] (h_i, w_i)."""
        if len(images) == 0:
            raise ValueError("TwoStageDetector: got an empty list of images")
        device, div = self.pixel_mean.device, self.size_divisibility
        height = int(math.ceil(max(img.shape[-2] for img in images) / div) * div)
        width = int(math.ceil(max(img.shape[-1] for img in images) / div) * div)
        batch = self.pixel_mean.expand(len(images), 3, height, width).clone()  # padding normalises to 0
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"TwoStageDetector: image {i} has shape {list(img.shape)}; expected [3,H,W]")
            img = img.to(device, non_blocking=True)
            batch[i, :, :img.shape[1], :img.shape[2]] = img.float() / 255 if img.dtype == torch.uint8 else img.float()
        sizes = torch.tensor([img.shape[-2:] for img in images], dtype=torch.float32, device=device)
        return (batch - self.pixel_mean) / self.pixel_std, sizes

    def _proposals(self, images: Sequence[torch.Tensor], proposals, batch, features, image_sizes, gt):
        """(proposals [N,P,4], scores [N,P] or None, valid [N,P], rpn losses, rpn stats)."""
        if proposals is not None:
            padded, _, valid = _pad_boxes(proposals, batch.device)
            padded = clip_boxes_to_sizes(padded, image_sizes)
            zeros = batch.new_zeros(())
            return padded, None, valid, {"loss_rpn_cls": zeros, "loss_rpn_box": zeros}, {}
        if self.rpn is None:
            raise ValueError("TwoStageDetector: built with model.proposals=precomputed; pass proposals=[P_i,4] boxes")
        levels = list(features.values())
        return self.rpn(levels, image_sizes, *gt)

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict] | None = None,
                orig_sizes: Sequence[Sequence[int]] | None = None, proposals: Sequence[torch.Tensor] | None = None):
        """Training: (losses, stats). Eval: list of {"boxes" [D,4], "labels" [D], "scores" [D]} per image."""
        batch, image_sizes = self.preprocess(images)
        features = self.backbone(batch)
        padded_size = (batch.shape[-2], batch.shape[-1])
        if self.training:
            if targets is None:
                raise ValueError("TwoStageDetector: targets are required in training mode")
            gt_boxes, (gt_labels,), gt_valid = _pad_boxes([t["boxes"] for t in targets], batch.device,
                                                          extra=[[t["labels"].long() for t in targets]])
            props, _, valid, losses, stats = self._proposals(images, proposals, batch, features, image_sizes,
                                                             (gt_boxes, gt_valid))
            roi_losses, roi_stats = self.roi_heads(features, props, valid, image_sizes, padded_size,
                                                   gt_boxes, gt_labels, gt_valid)
            losses.update(roi_losses)
            stats.update(roi_stats)
            return losses, stats
        props, _, valid, _, _ = self._proposals(images, proposals, batch, features, image_sizes, ())
        detections = self.roi_heads(features, props, valid, image_sizes, padded_size)
        if orig_sizes is not None:
            for det, size, (orig_h, orig_w) in zip(detections, image_sizes.tolist(), orig_sizes):
                scale = det["boxes"].new_tensor([orig_w / size[1], orig_h / size[0]] * 2)
                det["boxes"] = det["boxes"] * scale
        return detections

    @torch.no_grad()
    def propose(self, images: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """RPN proposals per image: (boxes [P_i,4] in input pixels, objectness scores [P_i]), best first."""
        if self.rpn is None:
            raise ValueError("TwoStageDetector.propose: this model has no RPN (model.proposals=precomputed)")
        batch, image_sizes = self.preprocess(images)
        boxes, scores, valid, _, _ = self.rpn(list(self.backbone(batch).values()), image_sizes)
        counts = valid.sum(dim=1).tolist()
        return [(boxes[i, :n], scores[i, :n]) for i, n in enumerate(counts)]


def build_detector(cfg, num_classes: int | None = None) -> TwoStageDetector:
    """The detector of ``cfg.model`` (``num_classes`` from the dataset when ``model.num_classes`` is null)."""
    model_cfg, rpn_cfg, roi_cfg = cfg.model, cfg.model.rpn, cfg.model.roi_head
    if model_cfg.num_classes is not None and num_classes is not None and model_cfg.num_classes != num_classes:
        raise ValueError(f"model.num_classes={model_cfg.num_classes} but the dataset has {num_classes} classes; "
                         f"set model.num_classes to null to take the dataset's")
    num_classes = model_cfg.num_classes if model_cfg.num_classes is not None else num_classes
    if num_classes is None:
        raise ValueError("build_detector: model.num_classes is null; pass num_classes (the dataset's class count)")
    bb = model_cfg.backbone
    backbone = build_backbone(name=bb.name, fpn=bb.fpn, out_channels=bb.out_channels, norm=bb.norm,
                              freeze_at=bb.freeze_at, weights=bb.weights)
    rpn = None
    if model_cfg.proposals == "rpn":
        rpn = RPN(backbone.out_channels, backbone.strides, rpn_cfg.anchor_sizes, rpn_cfg.aspect_ratios,
                  box_loss=build_box_loss(rpn_cfg.box_loss), pre_nms_topk_train=rpn_cfg.pre_nms_topk_train,
                  post_nms_topk_train=rpn_cfg.post_nms_topk_train, pre_nms_topk_test=rpn_cfg.pre_nms_topk_test,
                  post_nms_topk_test=rpn_cfg.post_nms_topk_test, nms_thresh=rpn_cfg.nms_thresh,
                  min_size=rpn_cfg.min_size, batch_size_per_image=rpn_cfg.batch_size_per_image,
                  positive_fraction=rpn_cfg.positive_fraction, fg_iou_thresh=rpn_cfg.fg_iou_thresh,
                  bg_iou_thresh=rpn_cfg.bg_iou_thresh)
    dla = roi_cfg.dynamic_label_assignment
    assigner = (DynamicLabelAssigner(initial_thresh=roi_cfg.fg_iou_thresh, topk=dla.topk, interval=dla.interval,
                                     min_thresh=dla.min_thresh) if dla.enabled else None)
    pooled_levels = [str(i) for i in range(len(backbone.strides) - 1)] if bb.fpn else ["0"]  # FPN: P2..P5
    roi_heads = RoIHeads(
        backbone.out_channels, pooled_levels, num_classes, box_loss=build_box_loss(roi_cfg.box_loss),
        box_coder_weights=roi_cfg.box_coder_weights,
        beta_schedule=build_beta_schedule(roi_cfg.box_loss, cfg.train.max_iters), label_assigner=assigner,
        batch_size_per_image=roi_cfg.batch_size_per_image, positive_fraction=roi_cfg.positive_fraction,
        fg_iou_thresh=roi_cfg.fg_iou_thresh, bg_iou_thresh=roi_cfg.bg_iou_thresh,
        add_gt_as_proposals=roi_cfg.add_gt_as_proposals, pooler_resolution=roi_cfg.pooler_resolution,
        sampling_ratio=roi_cfg.sampling_ratio, fc_dim=roi_cfg.fc_dim, class_agnostic=roi_cfg.class_agnostic,
        box_loss_normalizer=roi_cfg.box_loss.normalizer, score_thresh=roi_cfg.test.score_thresh,
        nms_thresh=roi_cfg.test.nms_thresh, detections_per_img=roi_cfg.test.detections_per_img)
    return TwoStageDetector(backbone, roi_heads, rpn, pixel_mean=model_cfg.pixel_mean, pixel_std=model_cfg.pixel_std,
                            size_divisibility=cfg.data.input.size_divisibility)
