"""Reading a Core ML model's interface from its spec, shared by the ``coreml`` and ``coreml-reference`` runners.

Only coremltools' protobuf readers are used, which work on Linux; nothing here needs the Core ML framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.manifest import TensorSpec
from ffnet_deploy.errors import RuntimeBackendError, require

# ArrayFeatureType.ArrayDataType enum values (Core ML FeatureTypes.proto).
_ARRAY_DTYPES = {65568: np.float32, 65600: np.float64, 65552: np.float16, 131104: np.int32, 131080: np.int8}
# ImageFeatureType.ColorSpace enum values.
_GRAYSCALE, _RGB, _BGR, _GRAYSCALE_F16 = 10, 20, 30, 40


def load_spec(path: Path, component: str) -> Any:
    """The ``Model`` protobuf of a ``.mlpackage`` or ``.mlmodel``."""
    ct = require("coremltools", "coreml", component)
    try:
        return ct.utils.load_spec(str(path))
    except Exception as err:  # coremltools raises bare Exceptions for unreadable packages
        raise RuntimeBackendError(f"{component} | cannot read the Core ML spec of {path}: {err}") from err


def is_image_feature(feature: Any) -> bool:
    return feature.type.WhichOneof("Type") == "imageType"


def image_channels(feature: Any) -> int:
    space = feature.type.imageType.colorSpace
    return 1 if space in (_GRAYSCALE, _GRAYSCALE_F16) else 3


def input_specs(spec: Any, component: str) -> list[TensorSpec]:
    """Inputs as :class:`~ffnet_deploy.artifact.manifest.TensorSpec`.

    Image inputs are described as float32 pixel arrays (N, C, H, W) in 0-255. A batch dimension of 1 is reported as
    dynamic (``None``) because the runners loop over larger batches one item at a time.
    """
    specs = []
    for feature in spec.description.input:
        kind = feature.type.WhichOneof("Type")
        if kind == "imageType":
            img = feature.type.imageType
            shape: tuple[int | None, ...] = (None, image_channels(feature), int(img.height), int(img.width))
            specs.append(TensorSpec(feature.name, shape, "float32", "image"))
        elif kind == "multiArrayType":
            arr = feature.type.multiArrayType
            dims: list[int | None] = [int(d) for d in arr.shape]
            ranges = arr.shapeRange.sizeRanges if arr.WhichOneof("ShapeFlexibility") == "shapeRange" else []
            for i, r in enumerate(ranges):
                if r.lowerBound != r.upperBound:
                    dims[i] = None
            if dims and dims[0] == 1:
                dims[0] = None
            dtype = _ARRAY_DTYPES.get(arr.dataType)
            if dtype is None:
                raise RuntimeBackendError(
                    f"{component} | input {feature.name!r} has unsupported array type {arr.dataType}"
                )
            specs.append(TensorSpec(feature.name, tuple(dims), dtype, "tensor"))
        else:
            raise RuntimeBackendError(f"{component} | input {feature.name!r} of kind {kind} is not supported")
    return specs


def output_names(spec: Any) -> list[str]:
    return [feature.name for feature in spec.description.output]
