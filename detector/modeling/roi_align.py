"""torchvision's ``MultiScaleRoIAlign`` with a faster backward on the CPU, bit for bit the same.

torchvision's CPU kernel recomputes each sample's bilinear weights for every channel and adds one
value at a time, a large share of a CPU training step (docs/performance.md). Here the forward is
torchvision's own; the backward computes each sample's four corners and weights once per RoI and
adds a whole channel row at a time (``index_add_``), in torchvision's order (RoI, bin, sample,
corner), so a finite gradient is the same bit for bit (tests/test_roi_align.py). Fixed
``sampling_ratio > 0`` only; otherwise (adaptive sampling, a GPU, another dtype, RoI heads compiled
whole) the pooler runs as torchvision's.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torchvision.ops import MultiScaleRoIAlign

# RoIs per step of the backward: one buffer holds their per-corner gradients (3 MB at 64 channels)
_CHUNK = 16


def pool(pooler: MultiScaleRoIAlign, features: dict, boxes: list, image_shapes: list):
    """``pooler(features, boxes, image_shapes)`` -> [R,C,s,s], with this module's backward where it
    applies."""
    # the pooled maps in the features' order, as torchvision's pooler takes them
    names = [name for name in features if name in pooler.featmap_names]
    levels = [features[name] for name in names]
    fast = (
        all(x.device.type == "cpu" and x.dtype == torch.float32 for x in levels)
        and pooler.sampling_ratio > 0
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )
    if not fast:
        return pooler(features, boxes, image_shapes)
    return _Pool.apply(pooler, names, boxes, image_shapes, *levels)


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pooler, names, boxes, image_shapes, *levels):
        pooled = pooler(dict(zip(names, levels)), boxes, image_shapes)
        # rois [R,5]: (image index, x1, y1, x2, y2), in the order of the pooled rows
        index = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
        rois = torch.cat([torch.cat(index), torch.cat(boxes)], dim=1)
        # torchvision's LevelMapper builds its tensors on the default device
        with torch.device(rois.device):
            level = pooler.map_levels(boxes) if len(levels) > 1 else rois.new_zeros(len(rois))
        ctx.save_for_backward(rois, level)
        ctx.pooler, ctx.shapes = pooler, [x.shape for x in levels]
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rois, level = ctx.saved_tensors
        pooler, grads = ctx.pooler, []
        for i, (shape, scale) in enumerate(zip(ctx.shapes, pooler.scales)):
            at = level == i
            grads.append(
                roi_align_backward(grad[at], rois[at], shape, scale, pooler.sampling_ratio)
            )
        return None, None, None, None, *grads


def roi_align_backward(grad, rois, shape, scale: float, sampling_ratio: int) -> torch.Tensor:
    """The gradient of ``torchvision.ops.roi_align(x, rois, (ph, pw), scale, sampling_ratio,
    aligned=False)`` with respect to ``x`` of ``shape`` [B,C,H,W], given ``grad`` [R,C,ph,pw]."""
    batch, channels, height, width = shape
    n, (ph, pw), samples = len(rois), grad.shape[-2:], sampling_ratio
    x1, y1, x2, y2 = (rois[:, 1:] * scale).unbind(1)
    # aligned=False: a RoI is at least one cell wide
    ys, y_weights = _axis(y1, (y2 - y1).clamp(min=1.0) / ph, ph, samples, height)
    xs, x_weights = _axis(x1, (x2 - x1).clamp(min=1.0) / pw, pw, samples, width)
    # [R, bin y, bin x, sample y, sample x, corner y, corner x]: torchvision's order of additions
    image = (rois[:, 0].long() * height * width).view(n, 1, 1, 1, 1, 1, 1)
    y_rows = ys.view(n, ph, 1, samples, 1, 2, 1) * width
    index = (image + y_rows + xs.view(n, 1, pw, 1, samples, 1, 2)).flatten(1)
    y_w = y_weights.view(n, ph, 1, samples, 1, 2, 1)
    weight = y_w * x_weights.view(n, 1, pw, 1, samples, 1, 2)
    weight = weight.view(n, ph * pw, 4 * samples**2, 1)  # [R, bin, its corners, 1]
    rows = grad.permute(0, 2, 3, 1).contiguous().view(n, ph * pw, 1, channels)  # a row per bin
    out = grad.new_zeros(batch * height * width, channels)
    # torchvision adds grad * w / count per corner, one after another; one buffer for every chunk
    buffer = grad.new_empty(min(n, _CHUNK), ph * pw, 4 * samples**2, channels)
    for i in range(0, n, _CHUNK):
        source = torch.mul(weight[i : i + _CHUNK], rows[i : i + _CHUNK], out=buffer[: n - i])
        source.div_(samples * samples)
        out.index_add_(0, index[i : i + _CHUNK].flatten(), source.view(-1, channels))
    return out.view(batch, height, width, channels).permute(0, 3, 1, 2)


def _axis(start, bin_size, size: int, samples: int, length: int):
    """Sample positions along one axis, [R, size, samples], as the two neighbouring cells [...,2]
    and their bilinear weights [...,2] (0 where torchvision skips the sample)."""
    cell = torch.arange(size, dtype=start.dtype, device=start.device).view(1, size, 1)
    step = torch.arange(samples, dtype=start.dtype, device=start.device).view(1, 1, samples) + 0.5
    bin_size = bin_size.view(-1, 1, 1)
    at = start.view(-1, 1, 1) + cell * bin_size + step * bin_size / samples
    inside = (at >= -1.0) & (at <= length)
    at = at.clamp(min=0)
    low = at.floor().long()
    top = low >= length - 1
    low = torch.where(top, length - 1, low)
    high = torch.where(top, low, low + 1)
    frac = torch.where(top, 0.0, at - low)
    weights = torch.stack([1 - frac, frac], dim=-1) * inside.unsqueeze(-1)
    return torch.stack([low, high], dim=-1), weights
