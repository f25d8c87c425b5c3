"""The backbones ``model.backbone.name`` can take (each torchvision classifier name and the family that tells
:mod:`detector.modeling.backbone` how to cut it into stages) and the normalisations ``model.backbone.norm`` can
take.

This table sits at the bottom layer, beside the config, so that the config can check a name without importing
the model code (and torchvision's models). One home: the config's choice list and the builder both read it.
Adding a torchvision model of a known family (e.g. ``resnet152``) is one line here.
"""
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
