"""Pure box functions, the format in the name; inside the package every box is absolute xyxy
float32, and COCO's xywh enters and leaves only through :func:`box_xywh_to_xyxy` and
:func:`box_xyxy_to_xywh`."""

from __future__ import annotations

import numpy as np
import torch

# re-exported: the one import site for box ops
from torchvision.ops import batched_nms, box_area, box_convert, box_iou  # noqa: F401


def box_xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] (x, y, w, h) -> [N,4] (x1, y1, x2, y2)."""
    return box_convert(boxes, "xywh", "xyxy")


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] (x1, y1, x2, y2) -> [N,4] (x, y, w, h)."""
    return box_convert(boxes, "xyxy", "xywh")


def flip_boxes_horizontal(boxes: torch.Tensor, image_width: float) -> torch.Tensor:
    """[N,4] xyxy boxes of an image of width W -> the same boxes after a left-right flip."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((image_width - x2, y1, image_width - x1, y2), dim=-1)


def scale_boxes(boxes: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """[N,4] xyxy -> [N,4] xyxy with x multiplied by scale_x and y by scale_y."""
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])


def degenerate_box_mask(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] xyxy -> [N] bool: True where width or height is not positive or a coordinate is not
    finite."""
    finite = torch.isfinite(boxes).all(dim=-1)
    return ~finite | (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])


def min_size_mask(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """[...,4] xyxy -> [...] bool: True where both width and height are at least ``min_size``."""
    return (boxes[..., 2] - boxes[..., 0] >= min_size) & (boxes[..., 3] - boxes[..., 1] >= min_size)


def clip_boxes_to_sizes(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """boxes [N,P,4] xyxy, image_sizes [N,2] (h, w) -> [N,P,4] clipped to [0, w] x [0, h] of their
    image."""
    upper = image_sizes.to(boxes).flip(-1).repeat(1, 2)[:, None, :]  # [N,1,4]: (w, h, w, h)
    return torch.minimum(boxes.clamp(min=0), upper)


def batched_box_iou(boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """boxes [N or 1, M, 4], gt_boxes [N, G, 4] (xyxy) -> IoU [N, M, G]; only [N,M,G]
    temporaries."""
    width, height = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).unbind(-1)  # [N,M] each
    gt_width, gt_height = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=0).unbind(-1)
    area, gt_area = width * height, gt_width * gt_height  # [N,M], [N,G]
    b, g = boxes[:, :, None, :], gt_boxes[:, None, :, :]  # [N,M,1,4], [N,1,G,4]
    # [N,M,G]
    inter_w = (torch.min(b[..., 2], g[..., 2]) - torch.max(b[..., 0], g[..., 0])).clamp_(min=0)
    inter_h = (torch.min(b[..., 3], g[..., 3]) - torch.max(b[..., 1], g[..., 1])).clamp_(min=0)
    inter = inter_w.mul_(inter_h)
    union = (area[:, :, None] + gt_area[:, None, :]) - inter
    return inter / union.clamp_(min=torch.finfo(inter.dtype).tiny)


def box_overlap_one_to_many(box: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    """numpy [4] xyxy, [G,4] xyxy -> (intersection [G], area of ``box``, areas of ``boxes`` [G]),
    continuous coordinates (no +1 pixel). In numpy: on one box torchvision's box_iou costs ~9x
    more per call, and the VOC matching and the synthetic placement call it once per box."""
    wh = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return wh[:, 0] * wh[:, 1], (box[2] - box[0]) * (box[3] - box[1]), areas


def batched_nms_topk(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    keep: torch.Tensor,
    iou_threshold: float,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NMS within each group, then the ``k`` best survivors of each image, for a padded batch.

    boxes [N,M,4], scores [N,M], groups [N,M] int64 group ids unique across images, keep [N,M] bool
    (allowed into NMS) -> (top_scores [N,k'], top_index [N,k'] into M), k' = min(k, M), best first;
    -inf where no survivor.
    """
    # NMS syncs anyway: drop the excluded candidates before it
    flat = keep.reshape(-1).nonzero().squeeze(1)
    kept = batched_nms(
        boxes.reshape(-1, 4)[flat],
        scores.reshape(-1)[flat],
        groups.reshape(-1)[flat],
        iou_threshold,
    )
    survivors = torch.zeros_like(keep).view(-1).index_fill_(0, flat[kept], True).view_as(keep)
    return scores.masked_fill(~survivors, float("-inf")).topk(min(k, scores.shape[1]), dim=1)
