"""``model.backbone.name`` (torchvision classifier -> the family that says how to cut it into stages) and
``model.backbone.norm`` choices; at the bottom layer so that the config checks names without importing torchvision."""
from __future__ import annotations

__all__ = ["BACKBONES", "NORMS"]

BACKBONES: dict[str, str] = {**dict.fromkeys(("resnet18", "resnet34", "resnet50", "resnet101"), "resnet"),
                             "mobilenet_v3_large": "mobilenet_v3_large"}

# frozen_bn: fixed statistics (pretrained weights); bn; syncbn: batch statistics over the ranks of a torchrun job
# (from scratch on several GPUs; plain BN in one process); gn: GroupNorm with 32 groups
NORMS = ("frozen_bn", "bn", "syncbn", "gn")
