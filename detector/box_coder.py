"""(tx, ty, tw, th) regression deltas between proposals and absolute xyxy float32 boxes (R-CNN
parametrisation): tx = wx (gx - px) / pw, ty = wy (gy - py) / ph, tw = ww log(gw / pw), th = wh
log(gh / ph) on centres and sizes. Arguments by role (unlike torchvision): ``encode(proposals,
gt_boxes)``, ``decode(deltas, proposals)``; float32 even under autocast; ``check`` raises ValueError
on degenerate input (a host sync; training passes ``check=False``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from detector.boxes import degenerate_box_mask

DELTA_NAMES = ("tx", "ty", "tw", "th")  # the names of the four regression targets, in their order

DEFAULT_CLAMP = math.log(1000.0 / 16)


def _check_shape(where: str, name: str, boxes: torch.Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: {name} must be [N,4], got shape {list(boxes.shape)}")


def _check_boxes(where: str, **named: torch.Tensor) -> None:
    """Raise ValueError naming the first of the [N,4] xyxy tensors ``named`` with a degenerate
    row."""
    for name, boxes in named.items():
        bad = degenerate_box_mask(boxes)
        if bool(bad.any()):
            index = bad.nonzero()[:, 0]
            raise ValueError(
                f"{where}: {index.numel()} {name} have non-positive width/height or non-finite "
                f"coordinates (first: index {int(index[0])}, {boxes[index[0]].tolist()}); expected "
                f"finite xyxy boxes with x2 > x1 and y2 > y1"
            )


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """[N,4] xyxy -> centre x, centre y, width, height, each [N]."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * width, boxes[:, 1] + 0.5 * height, width, height


@dataclass(eq=False)
class BoxCoder:
    """Encode boxes as deltas relative to proposals and decode them back; ``weights`` (wx, wy, ww,
    wh): RoI head (10, 10, 5, 5), RPN (1, 1, 1, 1); ``clamp``: bound on decoded dw, dh; ``check``:
    validate inputs by default."""

    weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)
    clamp: float = DEFAULT_CLAMP
    check: bool = True

    def __post_init__(self):
        self.weights = tuple(float(w) for w in self.weights)
        self.clamp = float(self.clamp)

    def encode(self, proposals: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """proposals [N,4], gt_boxes [N,4] (row i is the box matched to proposal i) -> deltas [N,4]
        float32."""
        _check_shape("BoxCoder.encode", "proposals", proposals)
        _check_shape("BoxCoder.encode", "gt_boxes", gt_boxes)
        if proposals.shape[0] != gt_boxes.shape[0]:
            raise ValueError(
                f"BoxCoder.encode: {proposals.shape[0]} proposals but {gt_boxes.shape[0]} "
                "gt_boxes; pass one matched gt box per proposal"
            )
        proposals, gt_boxes = proposals.float(), gt_boxes.float()
        if self.check:
            _check_boxes("BoxCoder.encode", proposals=proposals, gt_boxes=gt_boxes)
        wx, wy, ww, wh = self.weights
        px, py, pw, ph = _centre_size(proposals)  # [N] each
        gx, gy, gw, gh = _centre_size(gt_boxes)
        tx = wx * (gx - px) / pw
        ty = wy * (gy - py) / ph
        tw = ww * torch.log(gw / pw)
        th = wh * torch.log(gh / ph)
        return torch.stack((tx, ty, tw, th), dim=1)  # [N,4]

    def decode(self, deltas: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        """deltas [N,4k] (k box sets, e.g. one per class), proposals [N,4] -> boxes [N,4k] float32
        xyxy."""
        _check_shape("BoxCoder.decode", "proposals", proposals)
        if deltas.dim() != 2 or deltas.shape[1] % 4 != 0 or deltas.shape[0] != proposals.shape[0]:
            raise ValueError(
                f"BoxCoder.decode: deltas {list(deltas.shape)} must be [N,4k] for proposals "
                f"{list(proposals.shape)}"
            )
        deltas, proposals = deltas.float(), proposals.float()
        if self.check:
            _check_boxes("BoxCoder.decode", proposals=proposals)
            bad = ~torch.isfinite(deltas).all(dim=1)
            if bool(bad.any()):
                index = bad.nonzero()[:, 0]
                raise ValueError(
                    f"BoxCoder.decode: {index.numel()} rows of deltas are NaN/inf (first: index "
                    f"{int(index[0])}, {deltas[index[0]].tolist()}); the regressor diverged"
                )
        wx, wy, ww, wh = self.weights
        n = deltas.shape[0]
        d = deltas.view(n, deltas.shape[1] // 4, 4)  # [N,k,4]
        px, py, pw, ph = (v[:, None] for v in _centre_size(proposals))  # [N,1] each
        dx, dy = d[..., 0] / wx, d[..., 1] / wy  # [N,k]
        dw = (d[..., 2] / ww).clamp(max=self.clamp)
        dh = (d[..., 3] / wh).clamp(max=self.clamp)
        cx, cy = dx * pw + px, dy * ph + py
        half_w, half_h = 0.5 * torch.exp(dw) * pw, 0.5 * torch.exp(dh) * ph
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)  # [N,k,4]
        return boxes.reshape(n, deltas.shape[1])  # [N,4k]
