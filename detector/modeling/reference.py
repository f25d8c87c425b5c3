"""torchvision's own Faster R-CNN built from this project's config: the accuracy-parity reference
(``model.implementation=torchvision``; docs/performance.md, "Accuracy parity").

It trains through the same loop, data, optimizer and evaluator as ours, so a difference in AP is a
difference between the two detectors. The backbone is the one ``build_backbone`` makes
(torchvision's ``BackboneWithFPN``); the anchors, RPN, RoI sampling, box coder weights and test
settings come from the same keys. What cannot be matched is refused by the config's relation checks:
only Smooth L1 box losses (the RoI head's beta from the config, the RPN's fixed at torchvision's
1/9), fixed label assignment, GT boxes always added as proposals, class-specific deltas, losses
divided by the sampled RoIs, no padding buckets. torchvision's transform keeps its normalisation and
padding but not its resize: the data pipeline has resized already, so both detectors see the same
pixels. Left as torchvision has them: P6's anchor stride follows the feature map's size (ours is
fixed at 64), and its box predictor has a background slot that no loss reads.
"""

from __future__ import annotations

from unittest import mock

import torch
import torch.nn.functional as F
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from detector.boxes import scale_boxes
from detector.losses.regression import build_box_loss
from detector.modeling.backbone import Backbone
from detector.modeling.roi_heads import init_predictor
from detector.modeling.rpn import build_anchor_generator

# torchvision's loss names -> this project's (configs/base.yaml weights them by these)
_LOSS_NAMES = {
    "loss_objectness": "loss_rpn_cls",
    "loss_rpn_box_reg": "loss_rpn_box",
    "loss_classifier": "loss_cls",
    "loss_box_reg": "loss_box_reg",
}


class _NoResize(GeneralizedRCNNTransform):
    """torchvision's normalise-and-pad transform without its resize (the data pipeline resized)."""

    def resize(self, image, target=None):
        return image, target


class TorchvisionFasterRCNN(FasterRCNN):
    """torchvision's ``FasterRCNN`` behind our model contract (``TwoStageDetector.forward``): images
    [3,H,W] uint8 or 0..1 float; training returns (losses named as ours, no stats), eval a list of
    detections scaled to ``orig_sizes``."""

    def __init__(self, backbone, box_beta: float, **kwargs):
        super().__init__(backbone, **kwargs)
        self.box_beta = box_beta
        self.pad_buckets: tuple[int, ...] = ()

    def _fastrcnn_loss(self, class_logits, box_regression, labels, regression_targets):
        """torchvision's ``fastrcnn_loss`` with the configured Smooth L1 beta (its own is 1/9)."""
        labels = torch.cat(labels, dim=0)  # [R]
        regression_targets = torch.cat(regression_targets, dim=0)  # [R,4]
        loss_cls = F.cross_entropy(class_logits, labels)
        positive = torch.where(labels > 0)[0]
        # [R,K+1,4] -> the positives' GT-class slot [Q,4]
        deltas = box_regression.reshape(labels.shape[0], -1, 4)[positive, labels[positive]]
        loss_box = F.smooth_l1_loss(
            deltas, regression_targets[positive], beta=self.box_beta, reduction="sum"
        )
        return loss_cls, loss_box / labels.numel()

    def forward(self, images, targets=None, orig_sizes=None, proposals=None):
        if proposals is not None:
            raise ValueError("TorchvisionFasterRCNN: precomputed proposals are not supported")
        images = [img.float().div(255) if img.dtype == torch.uint8 else img for img in images]
        if self.training:
            targets = [{"boxes": t["boxes"], "labels": t["labels"].long()} for t in targets]
            with mock.patch.object(tv_roi_heads, "fastrcnn_loss", self._fastrcnn_loss):
                losses = super().forward(images, targets)
            return {ours: losses[theirs] for theirs, ours in _LOSS_NAMES.items()}, {}
        detections = super().forward(images)
        if orig_sizes is not None:
            for det, img, (orig_h, orig_w) in zip(detections, images, orig_sizes):
                height, width = img.shape[-2:]
                det["boxes"] = scale_boxes(det["boxes"], orig_w / width, orig_h / height)
        return detections

    def use_channels_last(self) -> "TorchvisionFasterRCNN":
        self.to(memory_format=torch.channels_last)
        return self

    def update_dynamic_state(self, iteration: int, stats: dict) -> dict:
        """No Dynamic R-CNN state (the config refuses it)."""
        return {}


def build_torchvision_detector(cfg, num_classes: int, backbone: Backbone) -> TorchvisionFasterRCNN:
    """torchvision's Faster R-CNN of ``cfg.model`` (``model.implementation=torchvision``) on
    ``backbone`` (``build_backbone``'s, as ours)."""
    model_cfg, rpn_cfg, roi_cfg = cfg.model, cfg.model.rpn, cfg.model.roi_head
    levels = len(backbone.strides)
    anchors = build_anchor_generator(rpn_cfg.anchor_sizes, rpn_cfg.aspect_ratios, levels)
    res = roi_cfg.pooler_resolution
    predictor = FastRCNNPredictor(roi_cfg.fc_dim, num_classes + 1)
    init_predictor(predictor.cls_score, predictor.bbox_pred, roi_cfg.predictor_init)
    model = TorchvisionFasterRCNN(
        backbone,
        box_beta=build_box_loss(roi_cfg.box_loss).beta,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_cfg.pre_nms_topk_train,
        rpn_pre_nms_top_n_test=rpn_cfg.pre_nms_topk_test,
        rpn_post_nms_top_n_train=rpn_cfg.post_nms_topk_train,
        rpn_post_nms_top_n_test=rpn_cfg.post_nms_topk_test,
        rpn_nms_thresh=rpn_cfg.nms_thresh,
        rpn_fg_iou_thresh=rpn_cfg.fg_iou_thresh,
        rpn_bg_iou_thresh=rpn_cfg.bg_iou_thresh,
        rpn_batch_size_per_image=rpn_cfg.batch_size_per_image,
        rpn_positive_fraction=rpn_cfg.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(backbone.pooled_levels, res, roi_cfg.sampling_ratio),
        box_head=TwoMLPHead(backbone.out_channels * res**2, roi_cfg.fc_dim),
        box_predictor=predictor,
        box_score_thresh=roi_cfg.test.score_thresh,
        box_nms_thresh=roi_cfg.test.nms_thresh,
        box_detections_per_img=roi_cfg.test.detections_per_img,
        box_fg_iou_thresh=roi_cfg.fg_iou_thresh,
        box_bg_iou_thresh=roi_cfg.bg_iou_thresh,
        box_batch_size_per_image=roi_cfg.batch_size_per_image,
        box_positive_fraction=roi_cfg.positive_fraction,
        bbox_reg_weights=tuple(roi_cfg.box_coder_weights),
    )
    model.rpn.min_size = rpn_cfg.min_size
    model.transform = _NoResize(
        min_size=1,
        max_size=1,
        image_mean=list(model_cfg.pixel_mean),
        image_std=list(model_cfg.pixel_std),
        size_divisible=cfg.data.input.size_divisibility,
    )
    return model
