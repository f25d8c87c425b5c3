"""The backbones ``model.backbone.name`` can take (torchvision classifier name -> the family that tells
:mod:`detector.modeling.backbone` how to cut it into stages) and the norms of ``model.backbone.norm``; at the bottom
layer so that the config checks names without importing torchvision's models."""
from __future__ import annotations

__all__ = ["BACKBONES", "NORMS"]

BACKBONES: dict[str, str] = {
    "resnet18": "resnet",
    "resnet34": "resnet",
    "resnet50": "resnet",
    "resnet101": "resnet",
    "mobilenet_v3_large": "mobilenet_v3_large",
}

# frozen_bn: fixed statistics (pretrained weights); bn; syncbn: batch statistics over the ranks of a torchrun job
# (from scratch on several GPUs; plain BN in one process); gn: GroupNorm with 32 groups
NORMS = ("frozen_bn", "bn", "syncbn", "gn")
