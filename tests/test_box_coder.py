"""BoxCoder: round trip, agreement with torchvision's coder, clamp, float32 under autocast, empty
input, errors."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from detector.box_coder import BoxCoder


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 500
    wh = torch.rand(n, 2, generator=g) * 200 + 16  # size ratios stay below the clamp (62.5)
    return torch.cat((xy, xy + wh), dim=1)  # [N,4] xyxy


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)])
def test_round_trip(weights):
    coder = BoxCoder(weights)
    proposals, gt_boxes = random_boxes(200, 0), random_boxes(200, 1)
    deltas = coder.encode(proposals, gt_boxes)
    assert deltas.shape == (200, 4) and deltas.dtype == torch.float32
    torch.testing.assert_close(coder.decode(deltas, proposals), gt_boxes, rtol=1e-5, atol=1e-3)


def test_identity_is_zero_delta():
    boxes = random_boxes(5, 2)
    assert BoxCoder().encode(boxes, boxes).abs().max() < 1e-6


def test_hand_computed_encode():
    proposals = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size (10, 20)
    gt_boxes = torch.tensor([[2.0, 0.0, 22.0, 20.0]])  # centre (12, 10), size (20, 20)
    expected = torch.tensor([[10 * 7 / 10, 0.0, 5 * math.log(2.0), 0.0]])
    torch.testing.assert_close(BoxCoder().encode(proposals, gt_boxes), expected)


def test_agrees_with_torchvision():
    weights = (10.0, 10.0, 5.0, 5.0)
    ours, theirs = BoxCoder(weights), TorchvisionBoxCoder(weights)
    proposals, gt_boxes = random_boxes(300, 3), random_boxes(300, 4)
    # torchvision's argument order is encode(reference_boxes=gt, proposals)
    torch.testing.assert_close(
        ours.encode(proposals, gt_boxes), theirs.encode_single(gt_boxes, proposals)
    )
    # class-specific, k=3
    deltas = torch.randn(300, 4 * 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        ours.decode(deltas, proposals), theirs.decode_single(deltas, proposals)
    )


def test_class_specific_decode_matches_per_class_decode():
    coder = BoxCoder()
    proposals = random_boxes(7, 6)
    deltas = torch.randn(7, 12, generator=torch.Generator().manual_seed(7))
    boxes = coder.decode(deltas, proposals)  # [7,12]
    for k in range(3):
        torch.testing.assert_close(
            boxes[:, 4 * k : 4 * k + 4], coder.decode(deltas[:, 4 * k : 4 * k + 4], proposals)
        )


def test_clamp_bounds_width_and_height():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), clamp=math.log(1000 / 16))
    proposals = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = coder.decode(torch.tensor([[0.0, 0.0, 50.0, 1e4]]), proposals)
    assert torch.isfinite(boxes).all()
    torch.testing.assert_close(boxes[0, 2] - boxes[0, 0], torch.tensor(1000.0))
    torch.testing.assert_close(boxes[0, 3] - boxes[0, 1], torch.tensor(1000.0))
    # not clamped from below
    small = coder.decode(torch.tensor([[0.0, 0.0, -2.0, -2.0]]), proposals)
    torch.testing.assert_close(small[0, 2] - small[0, 0], torch.tensor(16 * math.exp(-2.0)))


def test_half_inputs_are_computed_in_float32():
    coder = BoxCoder()
    proposals, gt_boxes = random_boxes(50, 8), random_boxes(50, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        deltas = coder.encode(proposals.bfloat16(), gt_boxes)
        boxes = coder.decode(deltas.bfloat16(), proposals)
    assert deltas.dtype == torch.float32 and boxes.dtype == torch.float32


def test_empty():
    coder = BoxCoder()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[0.0, 0.0, 0.0, 5.0]], "1 proposals have non-positive width/height"),
        ([[0.0, 10.0, 5.0, 2.0]], "1 proposals have non-positive width/height"),
        ([[0.0, 0.0, math.nan, 5.0]], "non-finite"),
    ],
)
def test_degenerate_proposals_raise(bad, message):
    good = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match=message):
        BoxCoder().encode(torch.tensor(bad), good)
    with pytest.raises(ValueError, match="BoxCoder.decode: 1 proposals"):
        BoxCoder().decode(torch.zeros(1, 4), torch.tensor(bad))


def test_degenerate_gt_and_deltas_raise():
    good = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0]])
    with pytest.raises(ValueError, match=r"BoxCoder.encode: 1 gt_boxes .*index 1"):
        BoxCoder().encode(good, torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, math.inf, 1.0]]))
    with pytest.raises(ValueError, match="rows of deltas are NaN/inf"):
        BoxCoder().decode(torch.tensor([[0.0, math.nan, 0.0, 0.0], [0.0] * 4]), good)


def test_check_off_skips_validation():
    coder = BoxCoder(check=False)
    out = coder.encode(torch.tensor([[0.0, 0.0, 0.0, 5.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    assert not torch.isfinite(out).all()
    with pytest.raises(ValueError):
        BoxCoder().encode(
            torch.tensor([[0.0, 0.0, 0.0, 5.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0]])
        )


def test_shape_errors():
    coder = BoxCoder()
    with pytest.raises(ValueError, match=r"proposals must be \[N,4\]"):
        coder.encode(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="3 proposals but 2 gt_boxes"):
        coder.encode(random_boxes(3, 0), random_boxes(2, 1))
    with pytest.raises(ValueError, match=r"must be \[N,4k\]"):
        coder.decode(torch.zeros(3, 6), random_boxes(3, 0))
