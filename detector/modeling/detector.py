"""TwoStageDetector: Faster R-CNN (backbone + RPN + RoI heads) or Fast R-CNN on precomputed
proposals.

The model owns preprocessing: images ([3,H,W], uint8 0..255 or float 0..1, any device) are
normalised and zero-padded to a few batch sizes (``pad_buckets``); GT and proposals become [N,G,4] /
[N,P,4] with validity masks; no host sync.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from detector.boxes import clip_boxes_to_sizes, scale_boxes
from detector.config import ConfigError, keyword_args
from detector.data.transforms import batch_padded_size, build_pad_buckets
from detector.losses.dynamic import build_beta_schedule
from detector.losses.regression import build_box_loss
from detector.modeling.backbone import Backbone, build_backbone
from detector.modeling.matcher import build_label_assigner
from detector.modeling.roi_heads import RoIHeads
from detector.modeling.rpn import RPN


def _host_to_device(data, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host-made tensor on ``device`` without blocking the host (CUDA: pinned memory, asynchronous
    copy)."""
    host = torch.tensor(data, dtype=dtype, device="cpu")
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def _pad_boxes(
    boxes: Sequence[torch.Tensor], device: torch.device, extra: Sequence[torch.Tensor] = ()
):
    """Per-image [n_i,4] boxes (and [n_i] extras) -> [N,B,4], extras [N,B], valid [N,B]; B >= 1,
    zero padding."""
    counts = [int(b.shape[0]) for b in boxes]
    width = max([1] + counts)

    def pad(values: list[torch.Tensor]) -> torch.Tensor:  # [n_i, ...] each -> [N, width, ...]
        out = nn.utils.rnn.pad_sequence(values, batch_first=True)
        if out.shape[1] < width:  # every image empty
            out = out.new_zeros((len(values), width) + tuple(out.shape[2:]))
        return out

    padded = pad([b.reshape(-1, 4).to(device, torch.float32) for b in boxes])
    padded_extra = [pad([v.to(device) for v in values]) for values in extra]
    slots = torch.arange(width, device=device)
    valid = slots[None, :] < _host_to_device(counts, torch.long, device)[:, None]
    return padded, padded_extra, valid


class TwoStageDetector(nn.Module):
    """Backbone, RPN and RoI heads (docs/architecture.md); ``rpn=None`` is Fast R-CNN mode:
    ``forward`` must then be passed ``proposals`` (list of [P_i,4] in input pixels)."""

    def __init__(
        self,
        backbone: Backbone,
        roi_heads: RoIHeads,
        rpn: RPN | None,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        pad_buckets: Sequence[int],
    ):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False
        )
        self.size_divisibility = size_divisibility
        # side lengths a padded batch snaps to; () = divisibility only
        self.pad_buckets = tuple(pad_buckets)
        # of the padded batch; see use_channels_last
        self.input_memory_format = torch.contiguous_format

    def use_channels_last(self) -> "TwoStageDetector":
        """Weights and every padded input batch in channels_last (cudnn's fast layout under AMP)."""
        self.to(memory_format=torch.channels_last)
        self.input_memory_format = torch.channels_last
        return self

    def preprocess(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """list of [3,H_i,W_i] -> normalised padded batch [N,3,H,W] float32 (in
        ``input_memory_format``, padding 0 after normalisation), image_sizes [N,2] (h_i, w_i)."""
        if len(images) == 0:
            raise ValueError("TwoStageDetector: got an empty list of images")
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"TwoStageDetector: image {i} has shape {list(img.shape)}; expected [3,H,W]"
                )
        device = self.pixel_mean.device
        sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        height, width = batch_padded_size(sizes, self.size_divisibility, self.pad_buckets)
        # the padding normalises to 0
        batch = self.pixel_mean.expand(len(images), 3, height, width).clone(
            memory_format=self.input_memory_format
        )
        for i, img in enumerate(images):
            img = img.to(device, non_blocking=True)
            region = batch[i, :, : img.shape[1], : img.shape[2]]
            if img.dtype == torch.uint8:
                # one kernel: uint8 -> float32 0..1, written in place
                torch.div(img, 255, out=region)
            else:
                region.copy_(img)
        return (batch - self.pixel_mean) / self.pixel_std, _host_to_device(
            sizes, torch.float32, device
        )

    def _proposals(self, proposals, features, image_sizes, gt=()):
        """(proposals [N,P,4], scores [N,P] (None when given), valid [N,P], rpn losses, rpn stats):
        the given ``proposals``, else the RPN's."""
        if proposals is not None:
            padded, _, valid = _pad_boxes(proposals, image_sizes.device)
            zeros = image_sizes.new_zeros(())
            losses = {"loss_rpn_cls": zeros, "loss_rpn_box": zeros}
            return clip_boxes_to_sizes(padded, image_sizes), None, valid, losses, {}
        if self.rpn is None:
            raise ValueError(
                "TwoStageDetector: built with model.proposals=precomputed, it has no RPN; "
                "pass proposals=[P_i,4] boxes"
            )
        return self.rpn(list(features.values()), image_sizes, *gt)

    def forward(
        self,
        images: Sequence[torch.Tensor],
        targets: Sequence[dict] | None = None,
        orig_sizes: Sequence[Sequence[int]] | None = None,
        proposals: Sequence[torch.Tensor] | None = None,
    ):
        """Training: (losses, stats). Eval: list of {"boxes" [D,4], "labels" [D], "scores" [D]} per
        image."""
        batch, image_sizes = self.preprocess(images)
        features = self.backbone(batch)
        padded_size = (batch.shape[-2], batch.shape[-1])
        if self.training:
            if targets is None:
                raise ValueError("TwoStageDetector: targets are required in training mode")
            gt_boxes, (gt_labels,), gt_valid = _pad_boxes(
                [t["boxes"] for t in targets],
                batch.device,
                extra=[[t["labels"].long() for t in targets]],
            )
            props, _, valid, losses, stats = self._proposals(
                proposals, features, image_sizes, (gt_boxes, gt_valid)
            )
            roi_losses, roi_stats = self.roi_heads(
                features, props, valid, image_sizes, padded_size, gt_boxes, gt_labels, gt_valid
            )
            return {**losses, **roi_losses}, {**stats, **roi_stats}
        props, _, valid, _, _ = self._proposals(proposals, features, image_sizes)
        detections = self.roi_heads(features, props, valid, image_sizes, padded_size)
        if orig_sizes is not None:
            for det, (height, width), (orig_h, orig_w) in zip(
                detections, image_sizes.tolist(), orig_sizes
            ):
                det["boxes"] = scale_boxes(det["boxes"], orig_w / width, orig_h / height)
        return detections

    def update_dynamic_state(
        self, iteration: int, stats: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, float]]:
        """:meth:`RoIHeads.update_dynamic_state`: once per optimizer step, with that iteration's
        training stats; the feedback states that updated."""
        return self.roi_heads.update_dynamic_state(iteration, stats)

    @torch.no_grad()
    def propose(self, images: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """RPN proposals per image: (boxes [P_i,4] in input pixels, objectness scores [P_i]), best
        first."""
        batch, image_sizes = self.preprocess(images)
        boxes, scores, valid, _, _ = self._proposals(None, self.backbone(batch), image_sizes)
        counts = valid.sum(dim=1).tolist()
        return [(boxes[i, :n], scores[i, :n]) for i, n in enumerate(counts)]


def build_detector(cfg, num_classes: int | None = None) -> TwoStageDetector:
    """The detector of ``cfg.model`` (``num_classes`` from the dataset when ``model.num_classes`` is
    null)."""
    model_cfg, rpn_cfg, roi_cfg = cfg.model, cfg.model.rpn, cfg.model.roi_head
    if model_cfg.num_classes is not None:
        if num_classes not in (None, model_cfg.num_classes):
            raise ConfigError(
                f"model.num_classes={model_cfg.num_classes} but the dataset has {num_classes} "
                f"classes; set model.num_classes to null to take the dataset's"
            )
        num_classes = model_cfg.num_classes
    if num_classes is None:
        raise ValueError(
            "build_detector: model.num_classes is null; "
            "pass num_classes (the dataset's class count)"
        )
    # model.backbone's keys are build_backbone's parameters, one for one; the RPN's and the RoI
    # head's keys (and roi_head.test's) are their constructors' keyword arguments, but for the
    # sub-sections built here and the loss weights, which the trainer applies
    backbone = build_backbone(**model_cfg.backbone.to_dict())
    if model_cfg.implementation == "torchvision":
        from detector.modeling.reference import build_torchvision_detector

        return build_torchvision_detector(cfg, num_classes, backbone)
    rpn = None
    if model_cfg.proposals == "rpn":
        rpn = RPN(
            backbone.out_channels,
            backbone.strides,
            box_loss=build_box_loss(rpn_cfg.box_loss),
            **keyword_args(rpn_cfg, "box_loss", "cls_weight"),
        )
    roi_heads = RoIHeads(
        backbone.out_channels,
        backbone.pooled_levels,
        num_classes,
        box_loss=build_box_loss(roi_cfg.box_loss),
        box_loss_normalizer=roi_cfg.box_loss.normalizer,
        beta_schedule=build_beta_schedule(roi_cfg, cfg.train.max_iters),
        label_assigner=build_label_assigner(roi_cfg),
        **keyword_args(roi_cfg, "box_loss", "cls_weight", "dynamic_label_assignment", "test"),
        **roi_cfg.test,
    )
    return TwoStageDetector(
        backbone,
        roi_heads,
        rpn,
        pixel_mean=model_cfg.pixel_mean,
        pixel_std=model_cfg.pixel_std,
        size_divisibility=cfg.data.input.size_divisibility,
        pad_buckets=build_pad_buckets(cfg),
    )
