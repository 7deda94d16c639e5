"""oilspill: turns a zip of sea images into oil-spill masks through an ML segmentation service."""

__version__ = "0.1.0"
