"""The CPU backward of RoIAlign (detector/modeling/roi_align.py) against torchvision's own: the same
gradient bit for bit, through one level and through the multi-level pooler."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

import detector.modeling.roi_align as roi_align_module
from detector.modeling.roi_align import pool, roi_align_backward


def _rois(n, images, extent, generator):
    """n RoIs [n,5] over ``images`` images: some tiny (under one cell), some partly or wholly off
    the ``extent`` x ``extent`` image."""
    corner = torch.rand(n, 2, generator=generator) * (extent + 40) - 20
    size = torch.rand(n, 2, generator=generator) * extent * 0.7
    size[: n // 8] *= 0.01
    index = torch.randint(0, images, (n, 1), generator=generator).float()
    return torch.cat([index, corner, corner + size], dim=1)


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("height,width", [(16, 16), (5, 9)])
def test_backward_is_torchvisions_bit_for_bit(sampling_ratio, height, width):
    generator = torch.Generator().manual_seed(sampling_ratio * 100 + height)
    x = torch.randn(3, 8, height, width, generator=generator, requires_grad=True)
    rois = _rois(70, 3, 64, generator)
    out = roi_align(x, rois, 7, height / 64, sampling_ratio, aligned=False)
    grad = torch.randn(out.shape, generator=generator)
    out.backward(grad)
    ours = roi_align_backward(grad, rois, x.shape, height / 64, sampling_ratio)
    assert x.grad.abs().sum() > 0
    assert torch.equal(ours, x.grad)


def test_multilevel_pool_matches_the_pooler_forward_and_backward():
    generator = torch.Generator().manual_seed(0)
    names = ["0", "1", "2", "3"]
    pooler = MultiScaleRoIAlign(names, 7, 2)
    # an extra map the pooler does not read, as the FPN's "pool" level
    features = {
        name: torch.randn(2, 4, 64 >> i, 80 >> i, generator=generator, requires_grad=True)
        for i, name in enumerate(names)
    }
    features["pool"] = torch.randn(2, 4, 2, 3)
    boxes = [_rois(40, 1, 240, generator)[:, 1:].clamp(min=0) for _ in range(2)]
    # the drawn RoIs (under 170 pixels a side) map to the two finest levels; one large RoI to the
    # coarsest: the third is empty
    boxes[0][0] = torch.tensor([0.0, 0.0, 500.0, 500.0])
    shapes = [(256, 320)]
    levels = [features[n] for n in names]
    reference = pooler(features, boxes, shapes)
    grad = torch.randn(reference.shape, generator=generator)
    expected = torch.autograd.grad(reference, levels, grad)
    ours = pool(pooler, features, boxes, shapes)
    assert type(ours.grad_fn).__name__ == "_PoolBackward"
    assert torch.equal(ours, reference)
    counts = torch.bincount(pooler.map_levels(boxes), minlength=4)
    assert counts[0] > 0 and counts[2] == 0 and counts[3] > 0, counts
    for theirs, mine in zip(expected, torch.autograd.grad(ours, levels, grad)):
        assert torch.equal(mine, theirs)


def test_samples_exactly_on_the_skipped_range_edges():
    # on an 11 x 11 map at scale 1, sampling ratio 1 and output 7, this RoI's samples fall exactly
    # on -1 and on 11: torchvision keeps both (it skips only beyond them)
    x = torch.randn(1, 2, 11, 11, requires_grad=True)
    rois = torch.tensor([[0.0, -2.0, -2.0, 12.0, 12.0]])
    out = roi_align(x, rois, 7, 1.0, 1, aligned=False)
    grad = torch.randn(out.shape)
    out.backward(grad)
    assert torch.equal(roi_align_backward(grad, rois, x.shape, 1.0, 1), x.grad)


def test_non_square_output():
    x = torch.randn(2, 3, 12, 20, requires_grad=True)
    rois = _rois(30, 2, 80, torch.Generator().manual_seed(1))
    out = roi_align(x, rois, (5, 3), 0.25, 2, aligned=False)
    grad = torch.randn(out.shape)
    out.backward(grad)
    assert torch.equal(roi_align_backward(grad, rois, x.shape, 0.25, 2), x.grad)


def test_one_level_pool_without_fpn():
    pooler = MultiScaleRoIAlign(["0"], 7, 2)
    x = torch.randn(2, 4, 16, 20, requires_grad=True)
    boxes = [_rois(12, 1, 64, torch.Generator().manual_seed(2))[:, 1:].clamp(min=0)] * 2
    reference = pooler({"0": x}, boxes, [(64, 80)])
    grad = torch.randn(reference.shape)
    (expected,) = torch.autograd.grad(reference, [x], grad)
    ours = pool(pooler, {"0": x}, boxes, [(64, 80)])
    assert type(ours.grad_fn).__name__ == "_PoolBackward"
    assert torch.equal(ours, reference)
    assert torch.equal(torch.autograd.grad(ours, [x], grad)[0], expected)


@pytest.mark.parametrize("sampling_ratio,grad_enabled", [(0, True), (2, False)])
def test_pool_is_torchvisions_where_its_backward_does_not_apply(
    sampling_ratio, grad_enabled, monkeypatch
):
    def refuse(*args):
        raise AssertionError("the CPU backward was used")

    monkeypatch.setattr(roi_align_module._Pool, "apply", refuse)
    pooler = MultiScaleRoIAlign(["0"], 7, sampling_ratio)
    features = {"0": torch.randn(1, 4, 16, 16, requires_grad=True)}
    boxes = [torch.tensor([[1.0, 2.0, 30.0, 40.0]])]
    with torch.set_grad_enabled(grad_enabled):
        out = pool(pooler, features, boxes, [(64, 64)])
        assert torch.equal(out, pooler(features, boxes, [(64, 64)]))
