"""Core ML exporter: conversion on Linux, spec verified (inputs, outputs, op types), exact ImageType folding."""

from __future__ import annotations

import json

import coremltools as ct
import numpy as np
import pytest
import torch

from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.exporters.coreml import CoreMLOptions, fold_input_std, mil_op_counts
from ffnet_deploy.models.checkpoint import load_ffnet
from ffnet_deploy.models.config import PUBLISHED
from ffnet_deploy.models.ffnet import create_ffnet
from ffnet_deploy.models.reparam import reparameterize_model
from tests.exporters.helpers import gate_checks, manifest, run_export


@pytest.fixture(scope="module")
def coreml_default(tmp_path_factory, test_checkpoint):
    """The default Core ML export of the ffnet_test checkpoint (fp16, image input), made once for this module."""
    return run_export(tmp_path_factory.mktemp("coreml"), "coreml", test_checkpoint)


def test_coreml_image_input_spec_and_metadata(coreml_default):
    result = coreml_default
    m = manifest(result.output)
    assert m["precision"] == "fp16" and m["artifact"]["path"] == "model.mlpackage"
    assert m["preprocessing"] == {**m["preprocessing"], "baked": True, "input_range": "0-255"}
    assert m["parity"]["passed"] is True and "block_outputs" not in m
    assert [c["runtime"] for c in gate_checks(m)] == ["coreml-reference"]
    spec = ct.utils.load_spec(str(result.output / "model.mlpackage"))
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion >= 7  # iOS 16
    (inp,) = spec.description.input
    assert inp.name == "images" and inp.type.imageType.width == 64 and inp.type.imageType.height == 64
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert [o.name for o in spec.description.output] == ["logits"]
    ops = mil_op_counts(spec)
    assert ops["conv"] == 38 and ops["gelu"] == 11  # every conv and GELU of the fused ffnet_test
    meta = dict(spec.description.metadata.userDefined)
    assert meta["variant"] == "ffnet_test" and meta["resolution"] == "64"
    assert meta["source_checkpoint_sha256"] == m["source_checkpoint"]["sha256"]
    assert json.loads(meta["preprocessing"])["input_range"] == "0-255"
    assert spec.description.metadata.license
    assert spec.description.metadata.versionString == m["versions"]["ffnet_deploy"]
    # ImageType: scale 1/255, bias -mean; the 1/std is folded into the stem (exporters/coreml.py).
    assert m["details"]["image_scale"] == pytest.approx(1 / 255) and m["details"]["stem_std_folded"] is True
    assert m["details"]["image_bias"] == [-0.485, -0.456, -0.406]


@torch.no_grad()
def test_image_preprocessing_folding_is_exact(test_checkpoint):
    """ImageType computes pixel/255 - mean; the folded stem must then equal the model on normalized input."""
    model = reparameterize_model(load_ffnet(test_checkpoint))
    folded = fold_input_std(model, model.cfg.std)
    pixels = torch.randint(0, 256, (2, 3, 64, 64)).double()
    mean = torch.tensor(model.cfg.mean).view(1, 3, 1, 1).double()
    std = torch.tensor(model.cfg.std).view(1, 3, 1, 1).double()
    expected = model.double()((pixels / 255 - mean) / std)
    got = folded.double()(pixels * (1 / 255) - mean)
    # Only float32 rounding of the folded stem weights separates the two (padding borders included).
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-6


def test_coreml_tensor_input_classifier_fp32(tmp_path, test_checkpoint):
    result = run_export(tmp_path, "coreml", test_checkpoint, precision="fp32",
                        options=CoreMLOptions(input="tensor", class_labels="imagenet"))
    spec = ct.utils.load_spec(str(result.output / "model.mlpackage"))
    (inp,) = spec.description.input
    assert inp.type.WhichOneof("Type") == "multiArrayType" and list(inp.type.multiArrayType.shape) == [1, 3, 64, 64]
    assert spec.description.predictedFeatureName == "classLabel"
    assert sorted(o.name for o in spec.description.output) == sorted(["classLabel", "classLabel_probs"])
    ops = mil_op_counts(spec)
    assert ops["classify"] == 1 and ops["softmax"] == 1 and "cast" not in ops  # fp32: no fp16 casts
    m = manifest(result.output)
    assert m["details"]["classifier"] == {"labels": "imagenet", "count": 1000}
    assert m["preprocessing"]["input_range"] == "normalized"
    assert m["options"]["options"] == {"input": "tensor", "class_labels": "imagenet"}


def test_coreml_labels_file_and_bad_options(tmp_path, test_checkpoint):
    from ffnet_deploy.errors import ConfigError

    short = tmp_path / "labels.txt"
    short.write_text("cat\ndog\n")
    with pytest.raises(ConfigError, match="2 labels from .* but the model has 1000 classes"):
        run_export(tmp_path, "coreml", test_checkpoint, options=CoreMLOptions(class_labels=short))
    with pytest.raises(ConfigError, match="image input takes one picture"):
        run_export(tmp_path, "coreml", test_checkpoint, batch=2)
    with pytest.raises(ConfigError, match="image input takes one picture"):
        run_export(tmp_path, "coreml", test_checkpoint, dynamic_batch=(1, 1, 2), options=CoreMLOptions())
    with pytest.raises(ConfigError, match="--include-preprocessing is for ONNX"):
        run_export(tmp_path, "coreml", test_checkpoint, include_preprocessing=True)
    assert not (tmp_path / "coreml-artifact").exists()


@pytest.mark.slow
@pytest.mark.parametrize("variant", PUBLISHED)
def test_coreml_export_every_variant(tmp_path, variant):
    """Every published architecture converts (random weights; the point is the architecture). Conversion time is
    dominated by the weights, not the resolution, so the input is 64 px, the smallest that keeps every stage."""
    result = export(ExportConfig("coreml", tmp_path / variant, resolution=64), None, variant)
    spec = ct.utils.load_spec(str(result.output / "model.mlpackage"))
    fused = reparameterize_model(create_ffnet(variant).eval())
    ops = mil_op_counts(spec)
    assert ops["conv"] == sum(isinstance(m, torch.nn.Conv2d) for m in fused.modules())
    assert ops["gelu"] == sum(isinstance(m, torch.nn.GELU) for m in fused.modules())
    assert spec.description.input[0].type.imageType.width == 64
    assert result.manifest.variant == variant and result.manifest.random_weights is True


def test_missing_coremltools_names_the_extra(tmp_path, test_checkpoint, monkeypatch):
    import sys

    from ffnet_deploy.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "coremltools", None)  # simulates an absent package; nothing is mocked
    with pytest.raises(MissingDependencyError, match=r"pip install 'ffnet-deploy\[coreml\]'"):
        run_export(tmp_path, "coreml", test_checkpoint)
    assert not (tmp_path / "coreml-artifact").exists()


def test_fp16_output_is_float32(coreml_default):
    spec = ct.utils.load_spec(str(coreml_default.output / "model.mlpackage"))
    array = spec.description.output[0].type.multiArrayType
    assert array.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert np.prod(list(array.shape)) == 1000


@pytest.mark.parametrize("precision,labels", [("fp32", None), ("fp16", "imagenet")])
def test_parity_gate_runs_the_program_and_refuses_a_wrong_one(tmp_path, test_checkpoint, monkeypatch, precision,
                                                              labels):
    """The Core ML gate interprets the saved program (coreml-reference); an artifact computing something else is
    refused and nothing is kept. With labels the gate compares class probabilities with softmax(torch logits)."""
    from ffnet_deploy.errors import ParityError
    from ffnet_deploy.exporters.coreml import CoreMLExporter

    options = CoreMLOptions(class_labels=labels)
    ok = run_export(tmp_path, "coreml", test_checkpoint, name="ok", precision=precision, options=options)
    m = manifest(ok.output)
    assert gate_checks(m)[0]["runtime"] == "coreml-reference" and m["parity"]["passed"] is True

    original = CoreMLExporter.export

    def wrong_weights(self, model, config, workdir, log, **kwargs):
        broken = type(model)(model.cfg, model.num_classes, deploy=True).eval()
        broken.load_state_dict(model.state_dict())
        with torch.no_grad():
            broken.head.weight.mul_(-1.0)  # a plausible export bug: the artifact computes something else
        return original(self, broken, config, workdir, log, **kwargs)

    monkeypatch.setattr(CoreMLExporter, "export", wrong_weights)
    with pytest.raises(ParityError, match="coreml-reference on model.mlpackage"):
        run_export(tmp_path, "coreml", test_checkpoint, name="bad", precision=precision, options=options)
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
