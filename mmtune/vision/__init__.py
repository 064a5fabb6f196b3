"""Vision inputs: image files to upright RGB, RGB to a tower's normalized square, the towers."""

from mmtune.vision.io import MAX_PIXELS, load_image
from mmtune.vision.preprocess import ImageSpec, preprocess_image

__all__ = ["MAX_PIXELS", "ImageSpec", "load_image", "preprocess_image"]
