"""Pure box functions. The format is in the name; inside the package every box is absolute xyxy float32.

COCO's xywh enters through :func:`box_xywh_to_xyxy` (data loading) and leaves through
:func:`box_xyxy_to_xywh` (writing detections for the evaluator); nothing else converts formats.
IoU and NMS come from ``torchvision.ops``.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_area, box_iou, clip_boxes_to_image, remove_small_boxes  # noqa: F401  (re-exported)


def box_xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] (x, y, w, h) -> [N,4] (x1, y1, x2, y2)."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] (x1, y1, x2, y2) -> [N,4] (x, y, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] (x1, y1, x2, y2) -> [N,4] (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] (cx, cy, w, h) -> [N,4] (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def flip_boxes_horizontal(boxes: torch.Tensor, image_width: float) -> torch.Tensor:
    """[N,4] xyxy boxes of an image of width W -> the same boxes after a left-right flip."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((image_width - x2, y1, image_width - x1, y2), dim=-1)


def scale_boxes(boxes: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """[N,4] xyxy -> [N,4] xyxy with x multiplied by scale_x and y by scale_y."""
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])


def degenerate_box_mask(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] xyxy -> [N] bool: True where width or height is not positive or a coordinate is not finite."""
    finite = torch.isfinite(boxes).all(dim=-1)
    return ~finite | (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
