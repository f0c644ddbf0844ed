"""INT8 post-training quantization and weight compression, one module per backend.

- :mod:`~ffnet_deploy.quantize.calibration`: the calibration set (validation's preprocessing, streamed, corrupt images
  skipped and counted) and the calibration-statistics cache.
- :mod:`~ffnet_deploy.quantize.groups`: the layer groups (stem, token mixer, channel mixer, downsampling, head) that
  sensitivity analysis ranks and mixed precision keeps in float.
- :mod:`~ffnet_deploy.quantize.onnx_int8`: ONNX Runtime INT8 for the CPU and explicit QDQ for TensorRT.
- :mod:`~ffnet_deploy.quantize.openvino_int8`: NNCF post-training quantization of the OpenVINO model.
- :mod:`~ffnet_deploy.quantize.coreml_compress`: Core ML weight-only compression and W8A8.

Importing this package imports no backend; each module loads its backend inside the functions that need it.
"""
