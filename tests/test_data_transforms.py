"""Transforms keep boxes consistent with the image: flip twice = identity, resize scales boxes,
training drops crowd boxes, a sample's augmentation is a pure function of its seed. Label noise is
not a transform: test_label_noise.py."""

import torch

from detector.config import load_config
from detector.data.transforms import (
    DetectionTransform,
    build_transforms,
    hflip,
    padded_size,
    resize,
    resized_size,
)


def make_sample(height=40, width=60):
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    boxes = torch.tensor(
        [[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 60.0, 40.0], [40.0, 10.0, 50.0, 20.0]]
    )
    for x1, y1, x2, y2 in boxes.int().tolist():
        image[:, y1:y2, x1:x2] += 60
    target = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2, 3]),
        "image_id": 7,
        "iscrowd": torch.tensor([False, False, True]),
        "area": torch.tensor([400.0, 2400.0, 100.0]),
    }
    return image, target


def test_flip_twice_is_identity_and_boxes_follow_pixels():
    image, target = make_sample()
    flipped, ftarget = hflip(image, target)
    x1, y1, x2, y2 = ftarget["boxes"][0].int().tolist()
    assert torch.equal(flipped[:, y1:y2, x1:x2], image[:, 5:25, 10:30].flip(-1))
    assert ftarget["boxes"][0].tolist() == [30.0, 5.0, 50.0, 25.0]
    back, btarget = hflip(flipped, ftarget)
    assert torch.equal(back, image)
    torch.testing.assert_close(btarget["boxes"], target["boxes"])


def test_resize_scales_boxes_and_area():
    image, target = make_sample()
    out, otarget = resize(image, target, (80, 90))
    assert out.shape == (3, 80, 90) and out.dtype == torch.uint8
    torch.testing.assert_close(otarget["boxes"][0], torch.tensor([15.0, 10.0, 45.0, 50.0]))
    torch.testing.assert_close(otarget["area"], target["area"] * 1.5 * 2.0)


def test_resized_size_min_and_max_side():
    assert resized_size(480, 640, 320, 1000) == (320, 427)
    assert resized_size(100, 1000, 320, 1000) == (100, 1000)  # max side caps the scale
    assert resized_size(640, 480, 800, 1333) == (1067, 800)
    assert padded_size(321, 320, 32) == (352, 320)


def test_train_transform_drops_crowd_adds_orig_size_and_is_seeded():
    image, target = make_sample()
    tf = DetectionTransform(min_sizes=(20, 40, 60), max_size=200, flip_prob=0.5, train=True)
    out1, t1 = tf(image, target, torch.Generator().manual_seed(5))
    out2, t2 = tf(image, target, torch.Generator().manual_seed(5))
    assert torch.equal(out1, out2) and torch.equal(t1["boxes"], t2["boxes"])
    assert t1["orig_size"] == (40, 60)
    assert t1["labels"].tolist() == [1, 2] and not t1["iscrowd"].any()
    outcomes = set()
    for seed in range(40):
        out, t = tf(image, target, torch.Generator().manual_seed(seed))
        assert min(out.shape[1:]) in (20, 40, 60)
        scale = out.shape[2] / 60
        flipped = t["boxes"][0, 0].item() != 10 * scale
        outcomes.add((min(out.shape[1:]), flipped))
        expected = target["boxes"][:2] * scale
        if flipped:
            expected = torch.stack(
                [
                    out.shape[2] - expected[:, 2],
                    expected[:, 1],
                    out.shape[2] - expected[:, 0],
                    expected[:, 3],
                ],
                dim=1,
            )
        torch.testing.assert_close(t["boxes"], expected, atol=0.2, rtol=0)
    assert len(outcomes) == 6  # every size, flipped and not


def test_eval_transform_keeps_crowd_and_never_flips():
    image, target = make_sample()
    cfg = load_config([], ["data.input.min_size_test=80", "data.input.max_size_test=500"])
    out, t = build_transforms(cfg, "val")(image, target, torch.Generator().manual_seed(0))
    assert out.shape == (3, 80, 120) and t["iscrowd"].tolist() == [False, False, True]
    torch.testing.assert_close(t["boxes"], target["boxes"] * 2)


def test_train_transform_does_not_redraw_label_noise():
    image, target = make_sample()
    cfg = load_config(
        [], ["data.label_noise=1.0", "data.input.min_size_train=[40]", "data.input.flip_prob=0.0"]
    )
    for seed in range(3):  # label noise is fixed when the dataset is built, never drawn per sample
        _, t = build_transforms(cfg, "train")(image, target, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(t["boxes"], target["boxes"][:2])
