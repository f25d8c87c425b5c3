"""Two-stage detector: torchvision backbone (+FPN), RPN, Fast R-CNN RoI heads with pluggable box
losses; only ``build_detector`` (modeling/detector.py) reads the config; each name is imported
from its module.

Label 0 is background, foreground labels are 1..K; boxes are absolute xyxy float32 pixels.
"""
