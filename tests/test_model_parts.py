"""Model parts on CPU: backbone variants and weights, anchors, matching/sampling, the RoI box loss
vs torchvision."""

import urllib.error

import pytest
import torch
import torchvision
from helpers import make_backbone, make_roi_heads
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import FrozenBatchNorm2d

from detector.boxes import batched_box_iou
from detector.config import load_config
from detector.errors import WeightsError
from detector.losses.regression import build_box_loss
from detector.modeling.matcher import DynamicLabelAssigner, match_boxes, sample_balanced
from detector.modeling.rpn import RPN


@pytest.mark.parametrize(
    "name,fpn,norm,freeze_at",
    [
        ("resnet18", True, "bn", 0),
        ("resnet18", False, "frozen_bn", 2),
        ("resnet34", True, "gn", 1),
        ("resnet34", False, "bn", 5),
        ("mobilenet_v3_large", True, "gn", 3),
        ("mobilenet_v3_large", False, "bn", 0),
    ],
)
def test_backbone_variants(name, fpn, norm, freeze_at):
    backbone = make_backbone(
        name=name, fpn=fpn, out_channels=32, norm=norm, freeze_at=freeze_at
    ).eval()
    features = backbone(torch.rand(1, 3, 64, 96))
    assert list(features) == (["0", "1", "2", "3", "pool"] if fpn else ["0"])
    for level, stride in zip(features.values(), backbone.strides):
        assert level.shape[1] == backbone.out_channels
        assert level.shape[-2:] == (-(-64 // stride), -(-96 // stride))


def test_freeze_at_freezes_leading_stages_and_their_batchnorm():
    backbone = make_backbone(name="resnet18", fpn=True, norm="bn", freeze_at=2)
    trunk = backbone.body.body
    assert not any(p.requires_grad for p in trunk.conv1.parameters())
    assert not any(p.requires_grad for p in trunk.layer1.parameters())
    assert all(p.requires_grad for p in trunk.layer2.parameters())
    assert isinstance(trunk.bn1, FrozenBatchNorm2d) and isinstance(
        trunk.layer1[0].bn1, FrozenBatchNorm2d
    )
    assert isinstance(trunk.layer2[0].bn1, torch.nn.BatchNorm2d)


def test_local_weights_file_loads_into_the_trunk(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = make_backbone(name="resnet18", fpn=False, norm="frozen_bn", weights=str(path))
    torch.testing.assert_close(backbone.body.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(
        backbone.body.layer3[1].bn2.running_var, reference.layer3[1].bn2.running_var
    )


def test_bad_weights_give_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="corrupt.pth is not a readable torch state dict"):
        make_backbone(name="resnet18", weights=str(corrupt))
    wrong = tmp_path / "wrong.pth"
    torch.save({"something": torch.zeros(1)}, wrong)
    with pytest.raises(
        WeightsError,
        match=r"wrong.pth does not fit the model built from the config: 0 tensors "
        r"differ in shape, \d+ are missing .*; model.backbone.weights takes a "
        r"state dict of torchvision's resnet18",
    ):
        make_backbone(name="resnet18", weights=str(wrong))
    # another model's trunk: shapes differ (was torch's RuntimeError traceback)
    other = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), other)
    with pytest.raises(
        WeightsError,
        match=r"resnet50.pth does not fit the model built from the config: \d+ "
        r"tensors differ in shape, 0 are missing and \d+ unexpected \(layer1",
    ):
        make_backbone(name="resnet18", weights=str(other))
    with pytest.raises(
        WeightsError, match="neither an existing file nor a torchvision weights name"
    ):
        make_backbone(name="resnet18", weights=str(tmp_path / "missing.pth"))


def test_named_weights_offline_say_how_to_pass_a_local_file(monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        WeightsError, match=r"pass its local path: model\.backbone\.weights=/path/to/resnet18\.pth"
    ):
        make_backbone(name="resnet18", weights="DEFAULT")


def test_anchors_match_torchvision_anchor_generator():
    keys = load_config().model.rpn.to_dict()
    keys = {k: v for k, v in keys.items() if k not in ("cls_weight", "anchor_sizes", "box_loss")}
    rpn = RPN(
        8,
        strides=(4, 8),
        anchor_sizes=(32, 64),
        box_loss=build_box_loss({"name": "smooth_l1", "beta": 1 / 9, "sigma": None}),
        **keys,
    )
    generator = AnchorGenerator(sizes=((32,), (64,)), aspect_ratios=((0.5, 1.0, 2.0),) * 2)
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    reference = generator(images, [torch.zeros(1, 8, 16, 24), torch.zeros(1, 8, 8, 12)])[0]
    torch.testing.assert_close(rpn.anchors([(16, 24), (8, 12)], torch.device("cpu")), reference)


def test_match_boxes_thresholds_padding_and_low_quality():
    # [1,2,4], second GT is padding
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]]])
    gt_valid = torch.tensor([[True, False]])
    # IoU 1, 0.6, 0.4, 0
    boxes = torch.tensor(
        [
            [
                [0.0, 0.0, 10.0, 10.0],
                [0.0, 0.0, 10.0, 6.0],
                [0.0, 0.0, 10.0, 4.0],
                [20.0, 20.0, 30.0, 30.0],
            ]
        ]
    )
    iou = batched_box_iou(boxes, gt)
    torch.testing.assert_close(iou[0, :, 0], torch.tensor([1.0, 0.6, 0.4, 0.0]))
    matched, max_iou, fg, bg = match_boxes(iou, gt_valid, 0.5, 0.5)
    assert fg[0].tolist() == [True, True, False, False] and bg[0].tolist() == [
        False,
        False,
        True,
        True,
    ]
    assert matched[0].tolist() == [0, 0, 0, 0]
    _, _, fg, bg = match_boxes(iou, gt_valid, 0.7, 0.3)
    assert fg[0].tolist() == [True, False, False, False] and bg[0].tolist() == [
        False,
        False,
        False,
        True,
    ]
    _, _, fg, _ = match_boxes(iou[:, 1:], gt_valid, 0.7, 0.3, allow_low_quality_matches=True)
    # the GT's best candidate (IoU 0.6) becomes positive
    assert fg[0].tolist() == [True, False, False]
    _, max_iou, fg, bg = match_boxes(iou, torch.tensor([[False, False]]), 0.5, 0.5)
    assert not fg.any() and bg.all() and (max_iou == -1).all()


def test_sample_balanced_respects_budget_and_fraction():
    torch.manual_seed(0)
    fg = torch.zeros(3, 1000, dtype=torch.bool)
    fg[0, :500] = True  # many fg: capped at 25%
    fg[1, :10] = True  # few fg: filled with bg
    bg = ~fg
    bg[2, 50:] = False  # image 2: only 50 candidates at all
    index, is_fg, valid = sample_balanced(fg, bg, 128, 0.25)
    assert index.shape == (3, 128)
    assert is_fg.sum(1).tolist() == [32, 10, 0] and valid.sum(1).tolist() == [128, 128, 50]
    for i in range(3):
        chosen = index[i][valid[i]]
        assert chosen.unique().numel() == chosen.numel()
        assert fg[i][chosen].sum() == is_fg[i].sum() and (fg[i] | bg[i])[chosen].all()


def test_dynamic_label_assigner_observe_step_and_state():
    assigner = DynamicLabelAssigner(initial_thresh=0.5, topk=2, interval=2, min_thresh=0.4)
    iou = torch.tensor([[0.9, 0.8, 0.1], [0.95, 0.7, 0.6], [0.0, 0.0, 0.0]])[..., None]  # [3,3,1]
    # image 2 has no GT: mmdetection's all-zero overlaps
    gt_valid = torch.tensor([[True], [True], [False]])
    valid = torch.ones(3, 3, dtype=torch.bool)
    _, max_iou, fg, _ = match_boxes(iou, gt_valid, assigner.thresh, assigner.thresh)
    first = assigner.observe(iou, max_iou, fg, valid, gt_valid)
    # per image the 2nd largest, then the mean
    assert float(first) == pytest.approx((0.8 + 0.7 + 0.0) / 3)
    assert assigner.step(0, first) == 0.5  # the threshold moves at the interval's end
    restored = DynamicLabelAssigner(initial_thresh=0.5, topk=2, interval=2, min_thresh=0.4)
    restored.load_state_dict(assigner.state_dict())
    _, max_iou, fg, _ = match_boxes(iou * 0.5, gt_valid, 0.5, 0.5)
    second = restored.observe(iou * 0.5, max_iou, fg, valid, gt_valid)  # 2nd largest: 0.4, 0.35, 0
    assert restored.step(1, second) == pytest.approx(max(0.4, (0.5 + 0.25) / 2))
    low = DynamicLabelAssigner(initial_thresh=0.5, topk=2, interval=1, min_thresh=0.4)
    assert low.step(0, torch.tensor(0.05)) == pytest.approx(0.4)


def test_smooth_l1_box_loss_equals_torchvision_fastrcnn_loss():
    torch.manual_seed(0)
    num_rois, num_classes = 64, 3
    box_loss = build_box_loss({"name": "smooth_l1", "beta": 1 / 9, "sigma": None})
    heads = make_roi_heads(8, num_classes, box_loss=box_loss)
    xy = torch.rand(num_rois, 2) * 100
    rois = torch.cat([xy, xy + 10 + torch.rand(num_rois, 2) * 50], dim=1)
    matched_gt = rois + torch.randn(num_rois, 4) * 3
    labels = torch.randint(0, num_classes + 1, (num_rois,))
    logits = torch.randn(num_rois, num_classes + 1)
    deltas = torch.randn(num_rois, 4 * num_classes)
    losses, _ = heads.losses(
        logits,
        deltas,
        rois,
        labels,
        matched_gt,
        torch.ones(num_rois, dtype=torch.bool),
        num_images=2,
    )
    targets = torchvision.models.detection._utils.BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(
        [matched_gt], [rois]
    )
    # torchvision: [R, 4(K+1)]
    with_background_slot = torch.cat([torch.zeros(num_rois, 4), deltas], dim=1)
    loss_cls, loss_box = fastrcnn_loss(logits, with_background_slot, [labels], list(targets))
    torch.testing.assert_close(losses["loss_cls"], loss_cls)
    torch.testing.assert_close(losses["loss_box_reg"], loss_box)
