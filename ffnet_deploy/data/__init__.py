"""Evaluation and calibration data: FFNet's eval transform, streaming image sources, the digits set, label files.

Validation, quantization (calibration and sensitivity), ``bench``, the pipeline, ``export`` and the demo all read
their images through this package, so every one of them sees the same pixels:

- :mod:`~ffnet_deploy.data.transform`: :class:`EvalTransform` (timm's evaluation preprocessing with PIL and numpy),
  the pixel formats it accepts (:func:`to_rgb`) and the raw-pixel feeds of artifacts (:func:`feed_from_pixels`);
- :mod:`~ffnet_deploy.data.sources`: the streaming sources (a folder of images, an ImageFolder, synthetic pixels,
  the digits set), what they skip and why (:class:`SkipCounter`), and the one-string specs that name them
  (:func:`source_from_spec`, :func:`make_source`);
- :mod:`~ffnet_deploy.data.digits`: scikit-learn's digits and their fixed split;
- :mod:`~ffnet_deploy.data.labels`: the ImageNet-1k WordNet-ID table and ``--label-map`` files;
- :mod:`~ffnet_deploy.data.files`: opening data files without blocking on FIFOs or devices;
- :mod:`~ffnet_deploy.data.photos`: crops of scikit-learn's sample photos, for models without trained weights.

Everything logs to the ``ffnet_deploy.data`` logger. Its modules import numpy at module level and nothing heavier
(PIL, scikit-learn and torch load inside the functions that need them).
"""

from ffnet_deploy.data.digits import DIGITS_SPECS, DIGITS_SPLIT_SEED, DIGITS_SPLITS, DIGITS_TEST_SIZE, digits_split
from ffnet_deploy.data.labels import imagenet_wnids, read_labels_file
from ffnet_deploy.data.photos import photo_bn_checkpoint, photo_crops
from ffnet_deploy.data.sources import (
    IMAGE_EXTENSIONS,
    MAX_SYNTHETIC,
    Batch,
    DataSource,
    DigitsSource,
    ImageDirSource,
    ImageFolderSource,
    SkipCounter,
    SyntheticSource,
    is_digits_spec,
    make_source,
    source_from_spec,
)
from ffnet_deploy.data.transform import (
    MAX_ASPECT,
    EvalTransform,
    ImageSkipped,
    eval_transform,
    feed_from_pixels,
    to_rgb,
)

__all__ = [
    "DIGITS_SPECS",
    "DIGITS_SPLITS",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_SIZE",
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT",
    "MAX_SYNTHETIC",
    "Batch",
    "DataSource",
    "DigitsSource",
    "EvalTransform",
    "ImageDirSource",
    "ImageFolderSource",
    "ImageSkipped",
    "SkipCounter",
    "SyntheticSource",
    "digits_split",
    "eval_transform",
    "feed_from_pixels",
    "imagenet_wnids",
    "is_digits_spec",
    "make_source",
    "photo_bn_checkpoint",
    "photo_crops",
    "read_labels_file",
    "source_from_spec",
    "to_rgb",
]
