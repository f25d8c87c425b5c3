"""Fast R-CNN RoI heads. ``N`` images, ``P`` proposals per image (padded, ``valid`` mask), ``G``
padded GT, ``S`` sampled RoIs per image, ``R = N*S``, ``Q`` positives, ``K`` classes; logits
[R,K+1], deltas [R,4K] (slot k-1: class k) or [R,4] class-agnostic. The Dynamic R-CNN state (beta
schedule, label assigner) is read by ``forward`` and changed only by
:meth:`RoIHeads.update_dynamic_state`; it travels in ``state_dict()`` through ``get_extra_state``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from detector.box_coder import DELTA_NAMES, BoxCoder
from detector.boxes import batched_box_iou, batched_nms_topk, clip_boxes_to_sizes, min_size_mask
from detector.losses.dynamic import AdaptiveBeta, BetaSchedule
from detector.losses.regression import BoxLoss
from detector.modeling.matcher import DynamicLabelAssigner, match_boxes, sample_balanced
from detector.modeling.roi_align import pool


def init_predictor(cls_score: nn.Linear, bbox_pred: nn.Linear, init: str) -> None:
    """``model.roi_head.predictor_init``: "torchvision" keeps nn.Linear's default (std 1/sqrt(3
    fc_dim), as torchvision's FastRCNNPredictor); "detectron2" draws N(0, 0.01) logits and N(0,
    0.001) deltas, zero biases."""
    if init == "detectron2":
        nn.init.normal_(cls_score.weight, std=0.01)
        nn.init.normal_(bbox_pred.weight, std=0.001)
        nn.init.zeros_(cls_score.bias)
        nn.init.zeros_(bbox_pred.bias)


class BoxHead(nn.Module):
    """Two FC layers on pooled features [R,C,h,w], then class logits [R,K+1] and deltas [R,4K] (or
    [R,4])."""

    def __init__(
        self,
        in_features: int,
        fc_dim: int,
        num_classes: int,
        class_agnostic: bool,
        predictor_init: str,
    ):
        super().__init__()
        self.fc1 = nn.Linear(in_features, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 if class_agnostic else 4 * num_classes)
        init_predictor(self.cls_score, self.bbox_pred, predictor_init)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc2(F.relu(self.fc1(pooled.flatten(1)))))
        return self.cls_score(x), self.bbox_pred(x)


def _coordinate_stats(prefix: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
    """values [Q,4] -> {prefix/tx/mean, .../std, .../p50, .../p90, ...} 0-d tensors (NaN when Q ==
    0)."""
    if values.shape[0] == 0:
        table = values.new_full((4, 4), float("nan"))
    else:
        quantiles = torch.quantile(values, values.new_tensor([0.5, 0.9]), dim=0)  # [2,4]
        table = torch.cat(
            [values.mean(0, keepdim=True), values.std(0, correction=0, keepdim=True), quantiles]
        )
    return {
        f"{prefix}/{coord}/{name}": table[row, col]
        for col, coord in enumerate(DELTA_NAMES)
        for row, name in enumerate(("mean", "std", "p50", "p90"))
    }


class RoIHeads(nn.Module):
    """Box branch of Fast R-CNN; see the module docstring. ``featmap_names`` are the pooled feature
    levels."""

    def __init__(
        self,
        in_channels: int,
        featmap_names: Sequence[str],
        num_classes: int,
        *,
        box_loss: BoxLoss,
        box_coder_weights: Sequence[float],
        beta_schedule: BetaSchedule | None,
        label_assigner: DynamicLabelAssigner | None,
        batch_size_per_image: int,
        positive_fraction: float,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        add_gt_as_proposals: bool,
        pooler_resolution: int,
        sampling_ratio: int,
        fc_dim: int,
        class_agnostic: bool,
        box_loss_normalizer: str,
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        predictor_init: str,
    ):
        super().__init__()
        self.pooler = MultiScaleRoIAlign(list(featmap_names), pooler_resolution, sampling_ratio)
        self.box_head = BoxHead(
            in_channels * pooler_resolution**2, fc_dim, num_classes, class_agnostic, predictor_init
        )
        self.box_coder = BoxCoder(weights=box_coder_weights, check=False)
        self.box_loss = box_loss
        self.beta_schedule = beta_schedule
        self.label_assigner = label_assigner
        # the adaptive beta's convention (mmdet: measured on the sampled positives, official: on
        # every candidate); None without one
        self.adaptive = beta_schedule.statistic if isinstance(beta_schedule, AdaptiveBeta) else None
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.add_gt_as_proposals = add_gt_as_proposals
        self.box_loss_normalizer = box_loss_normalizer
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.iteration = 0  # the next training iteration update_dynamic_state expects

    # ------------------------------------------------------ state carried in the model's state_dict
    _DYNAMIC_PARTS = ("beta_schedule", "label_assigner")

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"iteration": self.iteration}
        for name in self._DYNAMIC_PARTS:
            part = getattr(self, name)
            state[name] = None if part is None else part.state_dict()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        for name in self._DYNAMIC_PARTS:
            if getattr(self, name) is not None and state.get(name) is not None:
                getattr(self, name).load_state_dict(state[name])

    def update_dynamic_state(
        self, iteration: int, stats: Mapping[str, torch.Tensor]
    ) -> dict[str, dict[str, float]]:
        """Advance the beta schedule and the label assigner past iteration ``iteration`` with that
        iteration's training ``stats``; once per optimizer step, in order, on every rank (it may run
        a collective). Returns the feedback states that updated ("beta": Dynamic's adaptive beta,
        "iou": the label assigner; an interval's record closed), each with what its update
        computed (adaptive beta: ``beta_median``, ``beta_zero_share``)."""
        if iteration < self.iteration:
            raise ValueError(
                f"RoIHeads.update_dynamic_state({iteration}): iteration {self.iteration - 1} is "
                "already recorded; call it once per optimizer step, in order"
            )
        if self.beta_schedule is not None:
            self.beta_schedule.step(iteration, stats.get("beta_statistic"))
        if self.label_assigner is not None:
            self.label_assigner.step(iteration, stats.get("iou_statistic"))
        self.iteration = iteration + 1
        parts = (("beta", self.beta_schedule), ("iou", self.label_assigner))
        return {
            name: dict(getattr(part, "last_update", {}))
            for name, part in parts
            if hasattr(part, "record") and part.record.closes_after(iteration)
        }

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: torch.Tensor,
        proposal_valid: torch.Tensor,
        image_sizes: torch.Tensor,
        padded_size: tuple[int, int],
        gt_boxes: torch.Tensor | None = None,
        gt_labels: torch.Tensor | None = None,
        gt_valid: torch.Tensor | None = None,
    ):
        """proposals [N,P,4], proposal_valid [N,P], image_sizes [N,2] (h, w) before padding,
        padded_size (H, W) of the batch; in training gt_boxes [N,G,4], gt_labels [N,G] (1..K),
        gt_valid [N,G]. Training returns (losses ``{loss_cls, loss_box_reg}``, stats); eval a list
        of N dicts of detections ``{"boxes" [D,4], "labels" [D], "scores" [D]}`` in the input
        image's pixels.
        """
        if not self.training:
            return self._forward_test(features, proposals, proposal_valid, image_sizes, padded_size)
        with torch.no_grad():
            rois, labels, matched_gt, sampled, observed = self._assign_and_sample(
                proposals, proposal_valid, gt_boxes, gt_labels, gt_valid
            )
        logits, deltas = self._predict(features, rois, padded_size)  # [R,K+1], [R,4K]
        losses, stats = self.losses(
            logits,
            deltas,
            rois.view(-1, 4),
            labels.view(-1),
            matched_gt.view(-1, 4),
            sampled.view(-1),
            num_images=proposals.shape[0],
        )
        return losses, {**stats, **observed}

    def _predict(
        self, features: dict[str, torch.Tensor], rois: torch.Tensor, padded_size: tuple[int, int]
    ):
        """rois [N,S,4] -> class logits [N*S,K+1], deltas [N*S,4K] (float32); one RoIAlign call for
        the batch."""
        pooled = pool(self.pooler, features, list(rois.unbind(0)), [padded_size])  # [N*S,C,7,7]
        logits, deltas = self.box_head(pooled)
        return logits.float(), deltas.float()

    def _assign_and_sample(self, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid):
        """Match proposals (+ GT) to GT and sample -> rois [N,S,4], labels [N,S], matched GT
        [N,S,4], sampled [N,S], stats (``iou_thresh``; ``iou_statistic``, official
        ``beta_statistic``: measured before sampling)."""
        if self.add_gt_as_proposals:
            proposals = torch.cat([proposals, gt_boxes.to(proposals)], dim=1)  # [N,P+G,4]
            proposal_valid = torch.cat([proposal_valid, gt_valid], dim=1)
        iou = batched_box_iou(proposals, gt_boxes)  # [N,M,G]
        if self.label_assigner is not None:
            fg_thresh = bg_thresh = self.label_assigner.thresh
        else:
            fg_thresh, bg_thresh = self.fg_iou_thresh, self.bg_iou_thresh
        matched_idx, max_iou, fg, bg = match_boxes(iou, gt_valid, fg_thresh, bg_thresh)
        # no H2D
        observed = {
            "iou_thresh": torch.full((), float(fg_thresh), dtype=torch.float32, device=iou.device)
        }
        if self.label_assigner is not None:
            observed["iou_statistic"] = self.label_assigner.observe(
                iou, max_iou, fg, proposal_valid, gt_valid
            )
        if self.adaptive == "official":
            observed["beta_statistic"] = self._candidate_beta_statistic(
                proposals, proposal_valid, gt_boxes, gt_valid, matched_idx, fg
            )
        # [N,S]
        index, is_fg, sampled = sample_balanced(
            fg & proposal_valid,
            bg & proposal_valid,
            self.batch_size_per_image,
            self.positive_fraction,
        )
        rois = proposals.gather(1, index[..., None].expand(-1, -1, 4))  # [N,S,4]
        gt_idx = matched_idx.gather(1, index)  # [N,S]
        labels = torch.where(is_fg, gt_labels.gather(1, gt_idx), 0)  # [N,S]
        matched_gt = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))  # [N,S,4]
        return rois, labels, matched_gt, sampled, observed

    def _candidate_beta_statistic(
        self, candidates, candidate_valid, gt_boxes, gt_valid, matched_idx, fg
    ):
        """The official beta statistic: every candidate [N,M,4] of the images with GT against its
        matched GT, or the image's first GT below the threshold (the official
        ``matched_idxs.clamp(min=0)``)."""
        reference = torch.where(fg, matched_idx, 0)  # [N,M]
        reference_gt = gt_boxes.gather(1, reference[..., None].expand(-1, -1, 4))  # [N,M,4]
        # [N*M,4]
        target_deltas = self.box_coder.encode(
            candidates.reshape(-1, 4), reference_gt.reshape(-1, 4)
        )
        has_gt = gt_valid.any(dim=1)  # [N]
        valid = (candidate_valid & has_gt[:, None]).reshape(-1)  # [N*M]
        return self.beta_schedule.observe(target_deltas, num_images=has_gt.sum(), valid=valid)

    def losses(
        self,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        rois: torch.Tensor,
        labels: torch.Tensor,
        matched_gt: torch.Tensor,
        sampled: torch.Tensor,
        num_images: int,
    ):
        """Losses and stats of R sampled RoIs: logits [R,K+1], deltas [R,4K], rois [R,4], labels [R]
        (0 = bg), matched_gt [R,4] (used where label >= 1), sampled [R] bool (False: padding, no
        loss). Changes no state; with mmdetection's adaptive beta the stats carry the positives'
        ``beta_statistic``."""
        num_samples = sampled.sum().clamp(min=1).float()
        loss_cls = (F.cross_entropy(logits, labels, reduction="none") * sampled).sum() / num_samples
        fg = (labels > 0) & sampled
        pos = fg.nonzero().squeeze(1)  # [Q]: the step's one host sync
        pos_labels = labels[pos]
        slots = torch.zeros_like(pos_labels) if self.class_agnostic else pos_labels - 1
        pred_deltas = deltas.view(deltas.shape[0], -1, 4)[pos, slots]  # [Q,4]
        pos_rois, pos_gt = rois[pos], matched_gt[pos]
        target_deltas = self.box_coder.encode(pos_rois, pos_gt)  # [Q,4]
        beta = self.box_loss.beta if self.beta_schedule is None else self.beta_schedule.beta
        normalizer = (
            num_samples if self.box_loss_normalizer == "num_samples" else float(max(pos.numel(), 1))
        )
        if pos.numel() == 0:
            # zero that keeps the graph: every parameter still gets a gradient
            loss_box = deltas.sum() * 0.0
        elif self.box_loss.on_boxes:
            pred_boxes = self.box_coder.decode(pred_deltas, pos_rois)
            loss_box = self.box_loss(pred_boxes, pos_gt, avg_factor=normalizer)
        else:
            loss_box = self.box_loss(pred_deltas, target_deltas, avg_factor=normalizer, beta=beta)

        stats = {
            "num_fg": fg.sum(),
            "num_bg": ((labels == 0) & sampled).sum(),
            "num_pos_per_image": fg.sum().float() / num_images,
            # positives whose target is exactly 0: the GT boxes added as proposals (Dynamic's
            # statistic is 0 when k of them are sampled)
            "num_zero_target_per_image": (target_deltas == 0).all(1).sum().float() / num_images,
        }
        if beta is not None:
            stats["beta"] = torch.full((), float(beta), dtype=torch.float32, device=deltas.device)
        if self.adaptive == "mmdet":
            stats["beta_statistic"] = self.beta_schedule.observe(target_deltas.detach(), num_images)
        for name, values in (
            ("target_abs", target_deltas.detach().abs()),
            ("pred_err", (pred_deltas.detach() - target_deltas).abs()),
        ):
            stats.update(_coordinate_stats(name, values))
            stats[f"hist/{name}"] = values
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box}, stats

    @torch.no_grad()
    def _forward_test(self, features, proposals, proposal_valid, image_sizes, padded_size):
        num_images, num_props = proposals.shape[:2]
        logits, deltas = self._predict(features, proposals, padded_size)  # [N*P,K+1], [N*P,4K]
        scores = F.softmax(logits, dim=-1)[:, 1:]  # [N*P,K]
        if self.class_agnostic:
            deltas = deltas.repeat(1, self.num_classes)
        # [N,P*K,4]
        boxes = self.box_coder.decode(deltas, proposals.reshape(-1, 4)).view(num_images, -1, 4)
        boxes = clip_boxes_to_sizes(boxes, image_sizes)  # [N,P*K,4]
        scores = scores.reshape(num_images, -1)  # [N,P*K]
        # [P*K]
        labels = torch.arange(1, self.num_classes + 1, device=boxes.device).repeat(num_props)
        # [N,P*K]
        keep = (
            proposal_valid.repeat_interleave(self.num_classes, dim=1)
            & (scores > self.score_thresh)
            & min_size_mask(boxes, 1e-2)
        )
        # [N,P*K]
        groups = (
            torch.arange(num_images, device=boxes.device)[:, None] * (self.num_classes + 1) + labels
        )
        # [N,D]
        top_scores, top = batched_nms_topk(
            boxes, scores, groups, keep, self.nms_thresh, self.detections_per_img
        )
        counts = torch.isfinite(top_scores).sum(dim=1).tolist()
        top_boxes = boxes.gather(1, top[..., None].expand(-1, -1, 4))
        return [
            {"boxes": top_boxes[i, :n], "labels": labels[top[i, :n]], "scores": top_scores[i, :n]}
            for i, n in enumerate(counts)
        ]
