"""Datasets and loaders. Boxes are absolute xyxy float32; label 0 is background, foreground labels are 1..K.

``build_dataset(cfg, split)`` and ``build_dataloader(cfg, split, start_iter, distributed)`` read the config;
``generate_synthetic`` writes the default synthetic COCO-format dataset. See docs/architecture.md ("Data").
"""
from .base import DatasetError, DetectionDataset, read_image
from .build import build_dataloader, build_dataset, collate, make_dataloader, proposals_of
from .synthetic import SHAPES, generate_synthetic
from .voc import VOC_CLASSES

__all__ = ["DatasetError", "DetectionDataset", "read_image", "build_dataloader", "build_dataset", "collate",
           "make_dataloader", "proposals_of", "SHAPES", "generate_synthetic", "VOC_CLASSES"]
