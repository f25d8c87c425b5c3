"""Helpers shared by several test files (not tests themselves): tiny models and hand-made inputs."""
from pathlib import Path

import torch

from detector.config import load_config
from detector.modeling import TwoStageDetector, build_detector

TINY = ["model.roi_head.fc_dim=64", "model.roi_head.batch_size_per_image=64", "model.rpn.pre_nms_topk_train=300",
        "model.rpn.post_nms_topk_train=100", "model.rpn.pre_nms_topk_test=300", "model.rpn.post_nms_topk_test=100",
        "model.backbone.out_channels=64"]


def tiny_model(*overrides: str, num_classes: int = 3, seed: int = 0) -> TwoStageDetector:
    torch.manual_seed(seed)
    return build_detector(load_config([], TINY + list(overrides)), num_classes=num_classes)


def two_images():
    """A uint8 and a float image of different sizes with one and two boxes."""
    images = [torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8), torch.rand(3, 112, 144)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 80.0, 100.0]]), "labels": torch.tensor([2]), "image_id": 7},
               {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 40.0, 130.0, 100.0]]),
                "labels": torch.tensor([1, 3])}]
    return images, targets


def empty_target():
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


def tiny_run_overrides(data_root: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides for a seconds-long CPU run on a tiny synthetic set."""
    values = {
        "output_dir": str(run_dir), "data.root": str(data_root), "data.synthetic.num_train": 8,
        "data.synthetic.num_val": 4, "data.synthetic.image_size": "[128, 128]",
        "data.input.min_size_train": "[128]", "data.input.max_size_train": 160, "data.input.min_size_test": 128,
        "data.input.max_size_test": 160, "data.loader.num_workers": 0, "train.batch_size": 2, "train.max_iters": 2,
        "train.log_period": 1, "train.warmup_iters": 1, "train.checkpoint_period": 1, "train.device": "cpu",
        "train.num_vis_images": 1, "model.backbone.name": "resnet18", "model.roi_head.fc_dim": 64,
        "model.roi_head.batch_size_per_image": 32, "model.rpn.pre_nms_topk_train": 100,
        "model.rpn.post_nms_topk_train": 50, "model.rpn.pre_nms_topk_test": 100, "model.rpn.post_nms_topk_test": 50,
        "model.backbone.out_channels": 32,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
