"""Datasets and loaders (boxes absolute xyxy float32; label 0 background, 1..K foreground); only
``build_dataset`` and ``build_dataloader`` read the config. See docs/architecture.md ("Data")."""

from .base import DatasetError, DetectionDataset, read_image
from .build import (
    FORMATS,
    build_dataloader,
    build_dataset,
    collate,
    make_dataloader,
    proposals_of,
)
from .synthetic import SHAPES, generate_synthetic
from .voc import VOC_CLASSES

__all__ = [
    "DatasetError",
    "DetectionDataset",
    "FORMATS",
    "read_image",
    "build_dataloader",
    "build_dataset",
    "collate",
    "make_dataloader",
    "proposals_of",
    "SHAPES",
    "generate_synthetic",
    "VOC_CLASSES",
]
