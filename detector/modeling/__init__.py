"""Two-stage detector: torchvision backbone (+FPN), RPN, Fast R-CNN RoI heads with pluggable box
losses.

Label 0 is background, foreground labels are 1..K; boxes are absolute xyxy float32 pixels.
"""

from detector.modeling.backbone import Backbone, build_backbone
from detector.modeling.detector import TwoStageDetector, build_detector
from detector.modeling.matcher import DynamicLabelAssigner
from detector.modeling.roi_heads import BoxHead, RoIHeads
from detector.modeling.rpn import RPN

__all__ = [
    "build_detector",
    "TwoStageDetector",
    "Backbone",
    "build_backbone",
    "RPN",
    "RoIHeads",
    "BoxHead",
    "DynamicLabelAssigner",
]
