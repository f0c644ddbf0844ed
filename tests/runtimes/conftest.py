"""Artifacts of the tiny ``ffnet_test`` variant for the runner tests, built once per session.

They are made directly with the engines' own converters (``torch.onnx.export``, ``openvino.convert_model``,
``coremltools.convert``) so that runner tests do not depend on the exporters under test elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ffnet_deploy.artifact.manifest import BatchSpec, FileRef, Manifest, Preprocessing, TensorSpec, write_manifest
from ffnet_deploy.models.ffnet import create_ffnet
from ffnet_deploy.models.reparam import reparameterize_model
from tests.conftest import randomize_

RES = 64


def fused_test_model(seed: int = 0) -> torch.nn.Module:
    """A fused, randomized ffnet_test in eval mode."""
    return reparameterize_model(randomize_(create_ffnet("ffnet_test").eval(), seed)).eval()


def torch_logits(model: torch.nn.Module, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The model's logits; with ``threads``, computed on that many threads (the summation order, hence the last
    bits, depends on it)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(previous)


def make_manifest(artifact: str, fmt: str, *, dynamic_batch: bool = True) -> Manifest:
    """A valid manifest of an fp32 ``ffnet_test`` artifact whose ``artifact.path`` is ``artifact``."""
    cfg = create_ffnet("ffnet_test").cfg
    batch = BatchSpec(1, 1, 8, True) if dynamic_batch else BatchSpec.fixed(1)
    n = None if dynamic_batch else 1
    return Manifest(
        format=fmt, precision="fp32", variant="ffnet_test", resolution=RES, num_classes=1000, batch=batch,
        inputs=(TensorSpec("images", (n, 3, RES, RES), "float32", "tensor"),),
        outputs=(TensorSpec("logits", (n, 1000), "float32", "logits"),),
        preprocessing=Preprocessing("normalized", cfg.mean, cfg.std, cfg.crop_pct),
        artifact=FileRef(artifact, ""),
    )


def write_test_manifest(directory: Path, artifact: str, fmt: str, *, dynamic_batch: bool = True) -> Manifest:
    """Write :func:`make_manifest` into ``directory`` (enough for runners to resolve and describe the artifact)."""
    manifest = make_manifest(artifact, fmt, dynamic_batch=dynamic_batch)
    write_manifest(manifest, directory)
    return manifest


def export_onnx(model: torch.nn.Module, path: Path, res: int = RES) -> Path:
    """Export with a dynamic batch dimension, input ``images`` and output ``logits``."""
    torch.onnx.export(
        model, (torch.zeros(1, 3, res, res),), str(path), input_names=["images"], output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    return path


@pytest.fixture(scope="session")
def fused_model() -> torch.nn.Module:
    return fused_test_model()


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, RES, RES)).astype(np.float32)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, fused_model) -> Path:
    """An artifact directory holding model.onnx and a manifest."""
    directory = tmp_path_factory.mktemp("onnx")
    export_onnx(fused_model, directory / "model.onnx")
    write_test_manifest(directory, "model.onnx", "onnx")
    return directory


@pytest.fixture(scope="session")
def openvino_dir(tmp_path_factory, onnx_dir) -> Path:
    """An artifact directory holding an fp32 OpenVINO IR converted from the ONNX file, and a manifest."""
    ov = pytest.importorskip("openvino")
    directory = tmp_path_factory.mktemp("openvino")
    model = ov.convert_model(str(onnx_dir / "model.onnx"))
    ov.save_model(model, str(directory / "model.xml"), compress_to_fp16=False)
    write_test_manifest(directory, "model.xml", "openvino")
    return directory


def convert_coreml(model: torch.nn.Module, path: Path, *, precision: str = "fp32", image: bool = False,
                   res: int = RES, target: str = "iOS16", scale: float = 1.0, bias: list[float] | None = None) -> Path:
    """Convert ``model`` straight with coremltools to an ML program (TensorType, or ImageType with scale/bias)."""
    ct = pytest.importorskip("coremltools")
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, 3, res, res))
    if image:
        inputs = [ct.ImageType(name="images", shape=(1, 3, res, res), scale=scale, bias=bias or [0.0, 0.0, 0.0])]
    else:
        inputs = [ct.TensorType(name="images", shape=(1, 3, res, res), dtype=np.float32)]
    mlmodel = ct.convert(
        traced, inputs=inputs, outputs=[ct.TensorType(name="logits")], convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, target),
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        skip_model_load=True,
    )
    mlmodel.save(str(path))
    return path


@pytest.fixture(scope="session")
def coreml_dir(tmp_path_factory, fused_model) -> Path:
    """An artifact directory holding an fp32 model.mlpackage (tensor input) and a manifest."""
    directory = tmp_path_factory.mktemp("coreml")
    convert_coreml(fused_model, directory / "model.mlpackage")
    write_test_manifest(directory, "model.mlpackage", "coreml", dynamic_batch=False)
    return directory


def lower_executorch(model: torch.nn.Module, path: Path, batch: int = 2, res: int = RES,
                     partitioner: list | None = None) -> Path:
    """Lower ``model`` straight with ExecuTorch (``torch.export`` -> XNNPACK partitioner -> ``.pte``); ``partitioner``
    ``[]`` leaves every op on ExecuTorch's portable kernels."""
    pytest.importorskip("executorch.exir")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model, (torch.zeros(batch, 3, res, res),))
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()] if partitioner is None
                                       else partitioner)
    path.write_bytes(edge.to_executorch().buffer)
    return path


@pytest.fixture(scope="session")
def executorch_dir(tmp_path_factory, fused_model) -> Path:
    """An artifact directory holding an fp32 model.pte (batch 2, XNNPACK) and a manifest."""
    directory = tmp_path_factory.mktemp("executorch")
    lower_executorch(fused_model, directory / "model.pte")
    manifest = make_manifest("model.pte", "executorch", dynamic_batch=False)
    from dataclasses import replace

    from ffnet_deploy.artifact.manifest import BatchSpec

    n = 2
    manifest = replace(manifest, batch=BatchSpec.fixed(n),
                       inputs=(TensorSpec("images", (n, 3, RES, RES), "float32", "tensor"),),
                       outputs=(TensorSpec("logits", (n, 1000), "float32", "logits"),))
    write_manifest(manifest, directory)
    return directory


def convert_litert(model: torch.nn.Module, path: Path, batch: int = 2, res: int = RES) -> Path:
    """Convert ``model`` straight with litert-torch (``litert_torch.convert`` -> ``.tflite``), fp32."""
    pytest.importorskip("litert_torch", reason="needs the litert extra: pip install -e '.[litert]'")
    import os

    import litert_torch

    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # its progress tree on stdout
    try:
        litert_torch.convert(model, (torch.zeros(batch, 3, res, res),)).export(str(path))
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS")
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old
    return path


@pytest.fixture(scope="session")
def litert_dir(tmp_path_factory, fused_model) -> Path:
    """An artifact directory holding an fp32 model.tflite (batch 2) and a manifest."""
    from dataclasses import replace

    directory = tmp_path_factory.mktemp("litert")
    convert_litert(fused_model, directory / "model.tflite")
    n = 2
    manifest = replace(make_manifest("model.tflite", "litert", dynamic_batch=False), batch=BatchSpec.fixed(n),
                       inputs=(TensorSpec("images", (n, 3, RES, RES), "float32", "tensor"),),
                       outputs=(TensorSpec("logits", (n, 1000), "float32", "logits"),))
    write_manifest(manifest, directory)
    return directory
