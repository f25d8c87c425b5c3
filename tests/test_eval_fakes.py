"""A tiny in-memory dataset with the evaluation API of ``detector.data`` (no images), shared by tests/test_eval_*.py.

Conventions: boxes absolute xyxy float32, labels 1..K (0 = background), ``iscrowd`` doubles as VOC's difficult.
Category ids are deliberately not 1..K (label k -> category id 10 * k + 1) so a missed conversion fails loudly.
"""
from __future__ import annotations

import torch

from detector.boxes import box_area


class FakeDataset:
    """``images``: list of (image_id, [(x1, y1, x2, y2, label, iscrowd), ...]); images are 100 x 120 (H x W)."""

    def __init__(self, images, classes=("__background__", "cat", "dog"), height=100, width=120):
        self.classes = list(classes)
        self.label_to_cat_id = {label: 10 * label + 1 for label in range(1, len(self.classes))}
        self._images = images
        self._size = (height, width)

    def __len__(self) -> int:
        return len(self._images)

    def get_image_info(self, i: int) -> dict:
        image_id, _ = self._images[i]
        return {"image_id": image_id, "file_name": f"{image_id:06d}.jpg", "height": self._size[0],
                "width": self._size[1]}

    def get_target(self, i: int) -> dict:
        image_id, objects = self._images[i]
        boxes = torch.tensor([o[:4] for o in objects], dtype=torch.float32).reshape(-1, 4)  # [N,4]
        return {"boxes": boxes, "labels": torch.tensor([o[4] for o in objects], dtype=torch.int64).reshape(-1),
                "image_id": image_id, "iscrowd": torch.tensor([bool(o[5]) for o in objects], dtype=torch.bool),
                "area": box_area(boxes)}


def perfect_detections(dataset) -> list[dict]:
    """Every non-crowd GT box returned as a detection with score 1."""
    detections = []
    for i in range(len(dataset)):
        target = dataset.get_target(i)
        keep = ~target["iscrowd"]
        detections.append({"image_id": target["image_id"], "boxes": target["boxes"][keep],
                           "labels": target["labels"][keep], "scores": torch.ones(int(keep.sum()))})
    return detections


def random_dataset(seed: int, num_images: int = 12, num_classes: int = 3, crowd_prob: float = 0.1) -> FakeDataset:
    """Random boxes (some crowd/difficult) on 100 x 120 images, image ids 1000 + i."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for i in range(num_images):
        objects = []
        for _ in range(int(torch.randint(0, 6, (1,), generator=g))):
            x1, y1 = (torch.rand(2, generator=g) * torch.tensor([90.0, 70.0])).tolist()
            w, h = (4 + torch.rand(2, generator=g) * 40).tolist()
            label = int(torch.randint(1, num_classes + 1, (1,), generator=g))
            objects.append((x1, y1, min(x1 + w, 120.0), min(y1 + h, 100.0), label,
                            bool(torch.rand(1, generator=g) < crowd_prob)))
        images.append((1000 + i, objects))
    classes = ["__background__"] + [f"class{k}" for k in range(1, num_classes + 1)]
    return FakeDataset(images, classes=classes)


def random_detections(dataset, seed: int, per_image: int = 8) -> list[dict]:
    """Jittered copies of GT boxes plus random boxes, random labels and scores: a mix of TPs, FPs and duplicates."""
    g = torch.Generator().manual_seed(seed)
    num_classes = len(dataset.classes) - 1
    detections = []
    for i in range(len(dataset)):
        target = dataset.get_target(i)
        jittered = target["boxes"] + torch.randn(target["boxes"].shape, generator=g) * 3
        jittered_labels = target["labels"].clone()
        swap = torch.rand(len(jittered_labels), generator=g) < 0.2
        jittered_labels[swap] = torch.randint(1, num_classes + 1, (int(swap.sum()),), generator=g)
        xy = torch.rand(per_image, 2, generator=g) * torch.tensor([90.0, 70.0])
        wh = 3 + torch.rand(per_image, 2, generator=g) * 40
        boxes = torch.cat([jittered, torch.cat([xy, xy + wh], dim=1)])
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)  # keep x2 > x1, y2 > y1
        labels = torch.cat([jittered_labels, torch.randint(1, num_classes + 1, (per_image,), generator=g)])
        detections.append({"image_id": target["image_id"], "boxes": boxes, "labels": labels,
                           "scores": torch.rand(len(boxes), generator=g)})
    return detections
