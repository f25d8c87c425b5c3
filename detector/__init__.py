"""detector: a Fast R-CNN box-regression training framework for comparing box losses.

Conventions everywhere: boxes are absolute xyxy float32 pixels; label 0 is background and foreground
labels are 1..K.
"""

__version__ = "0.1.0"
