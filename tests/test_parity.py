"""The predictor's initialisation (issue 31) and torchvision's FasterRCNN as the accuracy-parity reference."""

import math

import pytest
import torch
from helpers import TINY, two_images
from torchvision.models.detection.roi_heads import fastrcnn_loss

from detector.config import ConfigError, load_config, with_defaults
from detector.modeling import build_detector


def _model(*overrides, seed=0):
    torch.manual_seed(seed)
    return build_detector(load_config([], TINY + list(overrides)), num_classes=3)


def _predictor(model):
    heads = model.roi_heads
    return heads.box_head if hasattr(heads.box_head, "cls_score") else heads.box_predictor


@pytest.mark.parametrize("implementation", ["ours", "torchvision"])
def test_default_predictor_init_is_nn_linear_default(implementation):
    """The default that trained best from scratch (docs/performance.md): nn.Linear's, std 1/sqrt(3 fan_in)."""
    head = _predictor(_model(f"model.implementation={implementation}"))
    expected = 1 / math.sqrt(3 * 64)  # TINY's fc_dim
    for layer in (head.cls_score, head.bbox_pred):
        assert layer.weight.std().item() == pytest.approx(expected, rel=0.15)
        assert layer.bias.abs().max().item() > 0


@pytest.mark.parametrize("implementation", ["ours", "torchvision"])
def test_detectron2_predictor_init(implementation):
    head = _predictor(
        _model(
            f"model.implementation={implementation}",
            "model.roi_head.predictor_init=detectron2",
        )
    )
    assert head.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert head.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert head.cls_score.bias.abs().max().item() == 0
    assert head.bbox_pred.bias.abs().max().item() == 0


def test_a_run_written_before_the_key_keeps_detectron2s_init():
    stored = load_config().to_dict()
    del stored["model"]["roi_head"]["predictor_init"]
    assert with_defaults(stored)["model"]["roi_head"]["predictor_init"] == "detectron2"
    assert load_config().model.roi_head.predictor_init == "torchvision"


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.roi_head.box_loss.name=giou", "model.roi_head.box_loss.name"),
        ("model.roi_head.class_agnostic=true", "model.roi_head.class_agnostic"),
        ("model.rpn.box_loss.beta=1.0", "model.rpn.box_loss.beta"),
        ("model.roi_head.dynamic_label_assignment.enabled=true", "dynamic_label_assignment"),
    ],
)
def test_reference_refuses_what_it_cannot_match(override, key):
    with pytest.raises(ConfigError, match=key) as err:
        load_config([], ["model.implementation=torchvision", override])
    assert "\n" not in str(err.value)


def _copy_weights(ours, reference):
    """Our parameters into torchvision's model: same backbone and RPN names; the box head's fc1/fc2 are fc6/fc7,
    and torchvision's bbox_pred has a (never used) background slot in front of our [4K] rows."""
    state = dict(ours.state_dict())
    names = {"roi_heads.box_head.fc1": "roi_heads.box_head.fc6"}
    names["roi_heads.box_head.fc2"] = "roi_heads.box_head.fc7"
    names["roi_heads.box_head.cls_score"] = "roi_heads.box_predictor.cls_score"
    target = reference.state_dict()
    for key, value in state.items():
        for old, new in names.items():
            key = key.replace(old, new)
        if key.startswith("roi_heads.box_head.bbox_pred"):
            key = key.replace("box_head", "box_predictor")
            value = torch.cat([target[key][:4], value])
        if key in target:
            target[key] = value
    reference.load_state_dict(target)


def test_same_weights_same_batch_give_the_same_losses():
    """With every candidate anchor and RoI sampled (no random sampling left), both detectors compute the same four
    losses from the same weights: the reference is built faithfully, and a gap between them is about training."""
    every = [
        "model.rpn.batch_size_per_image=100000",
        "model.roi_head.batch_size_per_image=100000",
        "model.rpn.positive_fraction=1.0",
        "model.roi_head.positive_fraction=1.0",
    ]
    ours = _model(*every)
    reference = _model("model.implementation=torchvision", *every)
    _copy_weights(ours, reference)
    # sides that are multiples of 64: torchvision derives P6's stride from the map size, ours fixes it at 64
    images = [torch.randint(0, 256, (3, 128, 192), dtype=torch.uint8), torch.rand(3, 192, 128)]
    _, targets = two_images()
    ours.train()
    reference.train()
    torch.manual_seed(1)
    ours_losses, _ = ours(images, targets)
    torch.manual_seed(1)
    ref_losses, ref_stats = reference(images, targets)
    assert set(ref_losses) == set(ours_losses) and ref_stats == {}
    for name, value in ours_losses.items():
        assert ref_losses[name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), name


def test_reference_loss_takes_the_configured_beta():
    reference = _model("model.implementation=torchvision")
    logits, deltas = torch.randn(6, 4), torch.randn(6, 16)
    labels, targets = [torch.tensor([0, 1, 2, 3, 1, 0])], [torch.randn(6, 4)]
    reference.box_beta = 1 / 9
    expected = fastrcnn_loss(logits, deltas, labels, targets)
    assert torch.allclose(
        torch.stack(reference._fastrcnn_loss(logits, deltas, labels, targets)),
        torch.stack(expected),
    )
    reference.box_beta = 1.0
    assert reference._fastrcnn_loss(logits, deltas, labels, targets)[1] != expected[1]


def test_reference_detections_follow_our_contract():
    reference = _model("model.implementation=torchvision").eval()
    images, _ = two_images()
    with torch.no_grad():
        detections = reference(images, orig_sizes=[(256, 320), (112, 144)])
    assert len(detections) == 2
    for det, (height, width) in zip(detections, [(256, 320), (112, 144)]):
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["boxes"].shape[1] == 4
        if len(det["boxes"]):
            assert det["boxes"][:, 2].max() <= width and det["boxes"][:, 3].max() <= height
            assert det["labels"].min() >= 1
