"""TwoStageDetector end to end on CPU: output contract, zero-GT images, every box loss, overfitting,
state."""

import io
import math

import pytest
import torch
from helpers import TINY, empty_target, tiny_model, two_images

from detector.boxes import box_iou
from detector.config import ConfigError, load_config
from detector.losses.regression import LOSSES
from detector.modeling.detector import build_detector


def test_training_output_keys_and_shapes():
    model = tiny_model().train()
    images, targets = two_images()
    losses, stats = model(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    for key in (
        "beta",
        "iou_thresh",
        "num_pos_per_image",
        "num_fg",
        "num_bg",
        "rpn/num_pos_anchors",
        "target_abs/tx/mean",
        "target_abs/th/p90",
        "pred_err/tw/p50",
        "pred_err/ty/std",
    ):
        assert stats[key].dim() == 0, key
    num_pos = int(stats["num_fg"])
    assert num_pos >= 3  # the GT boxes are added as proposals
    assert float(stats["num_zero_target_per_image"]) * len(images) >= 3  # their targets are 0
    assert stats["hist/target_abs"].shape == (num_pos, 4) and stats["hist/pred_err"].shape == (
        num_pos,
        4,
    )
    assert not any(v.requires_grad for v in stats.values())
    assert float(stats["num_fg"] + stats["num_bg"]) == 2 * 64
    assert float(stats["num_fg"]) <= 2 * 16


def test_eval_format_and_orig_size_mapping():
    model = tiny_model(
        "model.roi_head.test.score_thresh=0.0", "model.roi_head.test.detections_per_img=20"
    ).eval()
    images, _ = two_images()
    detections = model(images)
    assert len(detections) == 2
    for det, img in zip(detections, images):
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["boxes"].shape == (det["labels"].shape[0], 4) and det["scores"].dim() == 1
        assert 0 < det["boxes"].shape[0] <= 20
        assert (
            det["labels"].dtype == torch.int64
            and int(det["labels"].min()) >= 1
            and int(det["labels"].max()) <= 3
        )
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
        assert (
            float(det["boxes"][:, 2].max()) <= img.shape[2]
            and float(det["boxes"][:, 3].max()) <= img.shape[1]
        )
    mapped = model(images, orig_sizes=[(256, 480), (112, 144)])
    torch.testing.assert_close(
        mapped[0]["boxes"], detections[0]["boxes"] * torch.tensor([3.0, 2.0, 3.0, 2.0])
    )
    torch.testing.assert_close(mapped[1]["boxes"], detections[1]["boxes"])


def test_zero_gt_images_give_zero_box_loss_with_finite_gradients():
    model = tiny_model().train()
    images, _ = two_images()
    losses, stats = model(images, [empty_target(), empty_target()])
    assert (
        float(losses["loss_box_reg"].detach()) == 0.0
        and float(losses["loss_rpn_box"].detach()) == 0.0
    )
    assert int(stats["num_fg"]) == 0 and math.isnan(float(stats["target_abs/tx/mean"]))
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.roi_heads.box_head.bbox_pred.weight.grad is not None


def test_mixed_empty_and_nonempty_images():
    model = tiny_model().train()
    images, targets = two_images()
    losses, _ = model(images, [targets[0], empty_target()])
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_box_loss_trains_a_step(name):
    model = tiny_model(f"model.roi_head.box_loss.name={name}").train()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    images, targets = two_images()
    for _ in range(2):
        losses, stats = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    assert (
        all(torch.isfinite(v) for v in losses.values())
        and float(losses["loss_box_reg"].detach()) > 0
    )
    assert ("beta" in stats) == (name in ("smooth_l1", "dynamic_smooth_l1", "balanced_l1"))


def test_num_pos_normalizer_divides_by_positives():
    images, targets = two_images()
    by_samples, stats = tiny_model().train()(images, targets)
    by_pos, _ = tiny_model("model.roi_head.box_loss.normalizer=num_pos").train()(images, targets)
    ratio = float(stats["num_fg"] + stats["num_bg"]) / float(stats["num_fg"])
    torch.testing.assert_close(
        by_pos["loss_box_reg"], by_samples["loss_box_reg"] * ratio, rtol=1e-4, atol=1e-6
    )


def test_precomputed_proposals_train_and_eval():
    model = tiny_model("model.proposals=precomputed", "model.proposal_file=unused.json").train()
    assert model.rpn is None
    images, targets = two_images()
    proposals = [
        torch.tensor([[15.0, 25.0, 85.0, 95.0], [0.0, 0.0, 50.0, 50.0]]),
        torch.zeros(0, 4),
    ]
    losses, stats = model(images, targets, proposals=proposals)
    assert float(losses["loss_rpn_cls"]) == 0.0 and torch.isfinite(losses["loss_box_reg"])
    sum(losses.values()).backward()
    model.eval()
    assert len(model(images, proposals=proposals)) == 2
    with pytest.raises(ValueError, match="precomputed"):
        model(images)


def _rectangles():
    """Two 96x128 images, each with one bright rectangle (class 1 and 2) on a dark background."""
    images, targets = [], []
    for label, (x1, y1, x2, y2) in ((1, (20, 16, 76, 64)), (2, (50, 30, 110, 86))):
        img = torch.full((3, 96, 128), 30, dtype=torch.uint8)
        img[label - 1, y1:y2, x1:x2] = 230
        images.append(img)
        box = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32)
        targets.append({"boxes": box, "labels": torch.tensor([label])})
    return images, targets


def test_tiny_model_overfits_two_images():
    """Random frozen trunk (GN), trainable FPN + RPN + RoI heads: the top detection snaps onto each
    rectangle."""
    model = tiny_model(
        "model.backbone.norm=gn", "model.backbone.freeze_at=5", num_classes=2
    ).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images, targets = _rectangles()
    ious = []
    for step in range(1, 201):
        losses, _ = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step >= 75 and step % 25 == 0:
            model.eval()
            detections = model(images)
            model.train()
            ious = [
                float(box_iou(d["boxes"][:1], t["boxes"]).max())
                if d["labels"][:1].equal(t["labels"])
                else 0.0
                for d, t in zip(detections, targets)
            ]
            if min(ious) > 0.8:
                break
    assert min(ious) > 0.8, f"top detections' IoU with the GT after {step} steps: {ious}"


def _roundtrip(model: torch.nn.Module) -> dict:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _jittered_proposals(targets, num: int = 40, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for target in targets:
        boxes = target["boxes"].repeat(num, 1)
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        out.append(boxes + size * 0.3 * (torch.rand(boxes.shape, generator=generator) - 0.5))
    return out


def test_dynamic_beta_and_iou_thresh_move_and_survive_state_dict():
    overrides = [
        "model.proposals=precomputed",
        "model.proposal_file=unused.json",
        "model.roi_head.box_loss.name=dynamic_smooth_l1",
        "model.roi_head.box_loss.schedule.interval=2",
        "model.roi_head.dynamic_label_assignment.enabled=true",
        "model.roi_head.dynamic_label_assignment.interval=2",
        "model.roi_head.dynamic_label_assignment.topk=5",
    ]
    model = tiny_model(*overrides).train()
    images, targets = two_images()
    proposals = _jittered_proposals(targets)
    recorded, kth_iou = [], []
    for step in range(2):
        _, stats = model(images, targets, proposals=proposals)
        # beta and the threshold in use move only after the interval, from the next iteration on
        assert float(stats["beta"]) == 1.0 and float(stats["iou_thresh"]) == 0.5
        values = stats["hist/target_abs"][:, :2].mean(dim=1)
        recorded.append(float(values.kthvalue(min(10 * 2, values.numel())).values))
        assert float(stats["beta_statistic"]) == pytest.approx(recorded[-1])
        for props, target in zip(proposals, targets):
            iou = box_iou(torch.cat([props, target["boxes"]]), target["boxes"]).max(dim=1).values
            kth_iou.append(float(iou.topk(5).values[-1]))
        model.update_dynamic_state(step, stats)
    heads = model.roi_heads
    expected_beta = min(1.0, sum(recorded) / 2)  # the median of two statistics is their mean
    expected_thresh = max(0.4, sum(kth_iou) / len(kth_iou))
    assert expected_beta < 1.0 and heads.beta_schedule.beta == pytest.approx(
        expected_beta, rel=1e-5
    )
    assert heads.label_assigner.thresh == pytest.approx(expected_thresh, rel=1e-5)
    _, stats = model(images, targets, proposals=proposals)
    assert float(stats["beta"]) == pytest.approx(expected_beta, rel=1e-5)
    assert float(stats["iou_thresh"]) == pytest.approx(expected_thresh, rel=1e-5)
    model.update_dynamic_state(2, stats)  # one statistic pending in the next interval

    restored = tiny_model(*overrides, seed=1)
    restored.load_state_dict(_roundtrip(model))
    assert restored.roi_heads.iteration == heads.iteration == 3
    assert restored.roi_heads.beta_schedule.beta == heads.beta_schedule.beta
    assert restored.roi_heads.label_assigner.thresh == heads.label_assigner.thresh
    for part in ("beta_schedule", "label_assigner"):
        torch.testing.assert_close(
            getattr(restored.roi_heads, part).record.table, getattr(heads, part).record.table
        )
    assert float(heads.label_assigner.record.table[1].sum()) == 1.0


def test_num_classes_from_config_or_argument():
    assert tiny_model(num_classes=5).roi_heads.num_classes == 5
    with pytest.raises(ValueError, match="num_classes"):
        build_detector(load_config([], TINY))
    with pytest.raises(ConfigError, match="dataset has 4"):
        build_detector(load_config([], TINY + ["model.num_classes=3"]), num_classes=4)
