"""``ffnet-deploy validate`` end to end: real photos through real ONNX Runtime, OpenVINO and Core ML (reference
interpreter) artifacts written by the exporters, a deliberately broken artifact, reports and exit codes.
"""

from __future__ import annotations

import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffnet_deploy.cli import main
from ffnet_deploy.hashing import sha256_file
from tests.conftest import official_state_dict, write_checkpoint

# (format, precision) of every artifact the acceptance test validates.
ARTIFACTS = (("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"), ("coreml", "fp32"), ("coreml", "fp16"))


def exported_artifact(tmp_path_factory, checkpoint: Path, fmt: str, precision: str) -> Path:
    """Export ``checkpoint`` once per test session with the exporters' library function, and reuse it.

    Shared with ``tests/test_localize.py``: both modules get the same directory under the session's base temp.
    """
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig

    out = tmp_path_factory.getbasetemp() / "validate-artifacts" / checkpoint.name.split(".")[0] / f"{fmt}-{precision}"
    if not (out / "manifest.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        # OpenVINO's converter sends telemetry from a forked process unless CI=true. Without network that child can
        # hang on a DNS lock copied at fork time, and it inherits export()'s SIGTERM handler, so the interpreter's
        # exit then waits for it forever. The export-time parity gate is skipped: validating is what these tests do.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CI", "true")
            export(ExportConfig(fmt, out, precision=precision, check_parity=False), checkpoint)
    return out


def break_onnx_block(src: Path, dst: Path, block: str = "stages.2.0", factor: float = 100.0) -> str:
    """Copy an ONNX artifact and multiply the weight of the first Conv inside ``block`` by ``factor``.

    Returns:
        The name of the corrupted initializer.
    """
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    scope = "/" + block.rsplit(".", 1)[0] + "/" + block + "/"  # "/stages.2/stages.2.0/"
    inits = {i.name: i for i in model.graph.initializer}
    target = next(n.input[1] for n in model.graph.node
                  if n.op_type == "Conv" and scope in n.name and n.input[1] in inits)
    init = inits[target]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), target))
    onnx.save(model, str(dst / "model.onnx"))
    # A numerically broken export, not a tampered file: its manifest records the bytes it now holds.
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = manifest["artifact"]["sha256"] = sha256_file(dst / "model.onnx")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return target


def write_photo_crops(folder: Path, n: int, seed: int) -> None:
    """``n`` random crops (64-160 px, various aspect ratios) of scikit-learn's sample photos, as JPEG and PNG."""
    datasets = pytest.importorskip("sklearn.datasets")
    photos = datasets.load_sample_images().images
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = photos[i % len(photos)]
        h, w = int(rng.integers(64, 160)), int(rng.integers(64, 160))
        top, left = int(rng.integers(0, a.shape[0] - h)), int(rng.integers(0, a.shape[1] - w))
        crop = Image.fromarray(np.ascontiguousarray(a[top:top + h, left:left + w]))
        crop.save(folder / f"crop{i:03d}.{'png' if i % 3 == 0 else 'jpg'}", quality=92)


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory) -> dict[str, Path]:
    """An ImageFolder (2 classes x 12 crops) and a flat folder (12 crops), each with a corrupt file and a .txt."""
    root = tmp_path_factory.mktemp("photos")
    write_photo_crops(root / "folder" / "china", 12, seed=1)
    write_photo_crops(root / "folder" / "flower", 12, seed=2)
    (root / "folder" / "flower" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF broken")
    (root / "folder" / "china" / "README.txt").write_text("not an image")
    write_photo_crops(root / "flat", 12, seed=3)
    (root / "flat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "flat" / "notes.txt").write_text("not an image")
    return {"folder": root / "folder", "flat": root / "flat"}


@pytest.fixture(scope="module")
def probe_checkpoint(tmp_path_factory, photo_data) -> Path:
    """ffnet_test with random features and a linear-probe head fitted on the photo classes.

    A random classifier over 1000 classes puts its top logits within fp16 rounding of each other on many inputs,
    so fp16 top-1 agreement would measure ties, not parity. A trained model separates its classes; this head does
    the same for the two photo folders (class indices 0 and 1, as their sorted names give), as cheaply as possible.
    """
    import torch

    from ffnet_deploy.data import EvalTransform, ImageFolderSource
    from ffnet_deploy.models.ffnet import create_ffnet

    sd = official_state_dict("ffnet_test")
    model = create_ffnet("ffnet_test").eval()
    model.load_state_dict(sd)
    source = ImageFolderSource(photo_data["folder"])
    feats, labels = [], []
    with torch.no_grad():
        for batch in source.batches(EvalTransform.for_config(model.cfg), 8):
            feats.append(torch.flatten(model.avgpool(model.forward_features(torch.from_numpy(batch.images))), 1))
            labels.append(torch.from_numpy(batch.labels))
    f, y = torch.cat(feats).double(), torch.cat(labels)
    mu = f.mean(0)
    direction = f[y == 0].mean(0) - f[y == 1].mean(0)
    direction = direction / direction.norm()
    scale = 10.0 / (f - mu).matmul(direction).abs().mean()  # typical logit margin of ~20 between the two classes
    weight = torch.randn(1000, f.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.01
    bias = torch.full((1000,), -5.0, dtype=torch.float64)
    weight[0], weight[1] = direction * scale, -direction * scale
    bias[0], bias[1] = float(-(mu @ weight[0])), float(-(mu @ weight[1]))
    sd["head.weight"], sd["head.bias"] = weight.float(), bias.float()
    return write_checkpoint(tmp_path_factory.mktemp("probe") / "ffnet_test_probe.pth.tar", sd)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, probe_checkpoint) -> dict[str, Path]:
    return {f"{fmt}-{prec}": exported_artifact(tmp_path_factory, probe_checkpoint, fmt, prec)
            for fmt, prec in ARTIFACTS}


# --------------------------------------------------------------------------------------------------------------------
# JUnit schema
# --------------------------------------------------------------------------------------------------------------------

# The common JUnit XML layout (Ant/Jenkins junit schema, which GitLab, GitHub actions and Jenkins read): allowed
# children and required attributes of each element.
_JUNIT_CHILDREN = {
    "testsuites": {"testsuite"},
    "testsuite": {"properties", "testcase", "system-out", "system-err"},
    "properties": {"property"},
    "property": set(),
    "testcase": {"skipped", "error", "failure", "system-out", "system-err"},
    "skipped": set(), "error": set(), "failure": set(), "system-out": set(), "system-err": set(),
}
_JUNIT_REQUIRED = {
    "testsuite": {"name", "tests", "failures", "errors"},
    "testcase": {"name", "classname"},
    "property": {"name", "value"},
    "failure": {"message", "type"},
    "error": {"message", "type"},
}


def assert_valid_junit(path: Path) -> ET.Element:
    """Parse JUnit XML with the standard parser and check it against the common JUnit layout and its counts."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    for el in root.iter():
        assert el.tag in _JUNIT_CHILDREN, el.tag
        assert {c.tag for c in el} <= _JUNIT_CHILDREN[el.tag], (el.tag, [c.tag for c in el])
        assert _JUNIT_REQUIRED.get(el.tag, set()) <= set(el.attrib), (el.tag, el.attrib)
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for suite in root.findall("testsuite"):
        cases = suite.findall("testcase")
        counted = {"tests": len(cases), "failures": sum(c.find("failure") is not None for c in cases),
                   "errors": sum(c.find("error") is not None for c in cases),
                   "skipped": sum(c.find("skipped") is not None for c in cases)}
        for key, value in counted.items():
            assert int(suite.get(key)) == value, (suite.get("name"), key)
            totals[key] += value
    for key, value in totals.items():
        assert int(root.get(key)) == value, key
    return root


# --------------------------------------------------------------------------------------------------------------------
# Acceptance
# --------------------------------------------------------------------------------------------------------------------


def test_real_photos_pass_for_every_format(tmp_path, probe_checkpoint, artifacts, photo_data, capsys):
    report, junit = tmp_path / "report.json", tmp_path / "report.xml"
    paths = [str(artifacts[f"{f}-{p}"]) for f, p in ARTIFACTS]
    rc = main(["validate", *paths, "--checkpoint", str(probe_checkpoint), "--data", str(photo_data["folder"]),
               "--batch", "5", "--report", str(report), "--junit", str(junit)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "all 5 artifact(s) passed" in out
    data = json.loads(report.read_text())
    assert data["schema"] == "ffnet-deploy/validate-report/1" and data["passed"] is True
    assert data["data"]["num_images"] == 24 and data["data"]["kind"] == "imagefolder"
    assert data["data"]["skipped"]["corrupt"] == 1 and data["data"]["skipped"]["unsupported"] == 1
    assert len(data["data"]["fingerprint"]) == 64
    assert data["data"]["transform"]["crop_pct"] == 0.9 and data["data"]["transform"]["resize_shorter_side"] == 71
    assert data["environment"]["versions"]["onnxruntime"] and "isa_flags" in data["environment"]
    assert data["reference"]["variant"] == "ffnet_test"
    by_name = {Path(a["name"]).name: a for a in data["artifacts"]}
    expected_runtime = {"onnx": "onnxruntime", "openvino": "openvino", "coreml": "coreml-reference"}
    for fmt, prec in ARTIFACTS:
        a = by_name[f"{fmt}-{prec}"]
        assert a["passed"] and a["precision"] == prec and a["runtime"] == expected_runtime[fmt]
        m = a["metrics"]
        assert m["num_samples"] == 24 and m["nonfinite"] == 0
        assert m["top1_agreement"] == 1.0 and m["ref_top1"] is not None  # labels were used
        if prec == "fp32":
            assert m["max_abs_error"] <= 1e-4 * m["reference_range"]
            assert {c["name"] for c in a["checks"]} == {"finite", "max_abs_error"}
        else:
            assert m["cosine_mean"] >= 0.9995
            assert {c["name"] for c in a["checks"]} == {"finite", "cosine_mean", "top1_agreement"}
            assert m["max_abs_error"] > 0  # half precision really ran
    root = assert_valid_junit(junit)
    suites = root.findall("testsuite")
    assert [Path(s.get("name")).name for s in suites] == [f"{f}-{p}" for f, p in ARTIFACTS]
    assert root.get("failures") == "0" and root.get("errors") == "0"
    fp16 = suites[2].findall("testcase")
    assert {c.get("name") for c in fp16 if c.find("skipped") is None} == {"finite", "cosine_mean", "top1_agreement"}
    assert all(c.get("classname") == suites[2].get("name") for c in fp16)


def test_broken_onnx_fails_and_localize_names_the_block(tmp_path, probe_checkpoint, artifacts, photo_data, capsys):
    broken = tmp_path / "broken"
    weight = break_onnx_block(artifacts["onnx-fp32"], broken, "stages.2.0")
    assert weight.startswith("stages.2.0.")
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    rc = main(["validate", str(artifacts["onnx-fp32"]), str(broken), "-c", str(probe_checkpoint),
               "--images", str(photo_data["flat"]), "--localize", "--report", str(report), "--junit", str(junit)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "1 of 2 artifact(s) failed" in captured.err and "broken: max_abs_error" in captured.err
    # the summary is the localization table's title, which wraps to the table's width (the artifact path is in it)
    assert "first block below 30 dB: stages.2.0" in " ".join(captured.out.split())
    data = json.loads(report.read_text())
    good, bad = data["artifacts"]
    assert good["passed"] and good["localization"] is None  # only failing artifacts are localized
    assert not bad["passed"] and bad["failures"][0].startswith("max_abs_error")
    loc = bad["localization"]
    assert loc["method"] == "blocks" and loc["first_below"] == "stages.2.0"
    layers = {layer["name"]: layer["sqnr_db"] for layer in loc["layers"]}
    assert list(layers)[:2] == ["patch_embed", "stages.0.0"] and "stages.3.1" in layers
    assert all(float(layers[b]) > 60 for b in ("patch_embed", "stages.0.0", "stages.1.0", "stages.1.1", "stages.1.2"))
    assert float(layers["stages.2.0"]) < 0
    assert loc["largest_drop"]["name"] == "stages.2.0"
    assert data["data"]["kind"] == "images" and data["data"]["num_images"] == 12
    root = assert_valid_junit(junit)
    good_suite, bad_suite = root.findall("testsuite")
    assert good_suite.get("failures") == "0" and bad_suite.get("failures") == "1"
    failure = bad_suite.find("testcase[@name='max_abs_error']/failure")
    assert failure is not None and "logit range" in failure.get("message")
    assert "stages.2.0" in bad_suite.find("system-out").text


def test_coreml_fp16_localize_reports_mil_ops(tmp_path, probe_checkpoint, artifacts, capsys):
    """An impossible cosine threshold fails the fp16 program, and --localize walks its MIL ops against fp32."""
    report = tmp_path / "r.json"
    rc = main(["validate", str(artifacts["coreml-fp16"]), "-c", str(probe_checkpoint), "--synthetic", "4",
               "--tolerance", "min_cosine=1.0", "--tolerance", "localize_sqnr_db=200", "--localize",
               "--report", str(report)])
    assert rc == 1
    loc = json.loads(report.read_text())["artifacts"][0]["localization"]
    assert loc["method"] == "mil-ops" and "against itself" in loc["note"]
    assert loc["first_below"] is not None and len(loc["layers"]) > 20
    assert {layer["op_type"] for layer in loc["layers"]} >= {"conv", "gelu"}
    assert "first MIL op below 200 dB" in capsys.readouterr().out


def test_synthetic_bare_file_and_overrides(tmp_path, probe_checkpoint, artifacts):
    bare = tmp_path / "bare.onnx"
    shutil.copy(artifacts["onnx-fp32"] / "model.onnx", bare)  # no manifest next to it
    report = tmp_path / "r.json"
    assert main(["validate", str(bare), "-c", str(probe_checkpoint), "--synthetic", "5", "--batch", "2",
                 "--precision-profile", "fp16", "--report", str(report)]) == 0
    a = json.loads(report.read_text())["artifacts"][0]
    assert a["precision"] == "fp16" and a["manifest"] is None and a["metrics"]["num_samples"] == 5
    assert main(["validate", str(bare), "-c", str(probe_checkpoint), "--synthetic", "3",
                 "--tolerance", "atol_scale=1e-12"]) == 1


def test_manifest_that_disagrees_with_the_checkpoint_fails_clearly(tmp_path, probe_checkpoint, artifacts, capsys):
    other = tmp_path / "other"
    shutil.copytree(artifacts["onnx-fp32"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["variant"] = "ffnet_2"
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert main(["validate", str(other), "-c", str(probe_checkpoint), "--synthetic", "2"]) == 1
    assert "manifest variant is ffnet_2 but the checkpoint is ffnet_test" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--images", "/nonexistent/folder"], "does not exist"),
    ([], "exactly one of --data, --images, --synthetic"),
    (["--synthetic", "2", "--tolerance", "min_cosin=1"], "unknown threshold"),
    (["--synthetic", "2", "--precision-profile", "fp64"], "precision-profile"),
])
def test_user_errors_exit_1_with_one_line(tmp_path, probe_checkpoint, artifacts, capsys, args, message):
    rc = main(["validate", str(artifacts["onnx-fp32"]), "-c", str(probe_checkpoint), *args])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and "Traceback" not in err


def test_empty_folder_is_a_clear_error(tmp_path, probe_checkpoint, artifacts, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(artifacts["onnx-fp32"]), "-c", str(probe_checkpoint),
                 "--images", str(tmp_path / "empty")]) == 1
    assert "holds no image files" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# Engines this machine may lack
# --------------------------------------------------------------------------------------------------------------------


def _tensorrt_reason() -> str | None:
    from ffnet_deploy.runtimes import RUNTIMES, load_all

    load_all()
    return RUNTIMES.get("tensorrt").unavailable_reason()


def test_tensorrt_artifact_without_a_gpu_checks_its_onnx_and_says_so(tmp_path_factory, probe_checkpoint, capsys):
    if _tensorrt_reason() is None:
        pytest.skip("TensorRT runs on this machine; test_tensorrt_engine_on_gpu covers it")
    art = exported_artifact(tmp_path_factory, probe_checkpoint, "tensorrt", "fp16")
    # Without TensorRT the TensorRT-ready ONNX graph is validated on ONNX Runtime, as the fp32 graph it is, and the
    # report says the engine itself was not run.
    assert main(["validate", str(art), "-c", str(probe_checkpoint), "--synthetic", "2", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["artifacts"]
    assert result["runtime"] == "onnxruntime" and result["path"].endswith("model.onnx")
    assert result["profile"]["name"] == "fp32" and "fp32 graph" in result["profile_reason"]
    assert any("engine itself was not run" in w for w in result["warnings"])
    # Asking for the engine explicitly cannot pass silently.
    assert main(["validate", str(art), "-c", str(probe_checkpoint), "--synthetic", "2", "--runtime", "tensorrt"]) == 1
    assert "tensorrt cannot run here" in capsys.readouterr().err


@pytest.mark.gpu
def test_tensorrt_engine_on_gpu(tmp_path_factory, probe_checkpoint, photo_data):
    reason = _tensorrt_reason()
    if reason is not None:
        pytest.skip(f"TensorRT validation {reason}")
    art = exported_artifact(tmp_path_factory, probe_checkpoint, "tensorrt", "fp16")
    if not (art / "model.engine").exists():
        import subprocess

        if shutil.which("trtexec") is None:
            pytest.skip("needs trtexec on PATH to build model.engine with build_engine.sh")
        subprocess.run(["bash", str(art / "build_engine.sh")], cwd=art, check=True)
    assert main(["validate", str(art), "-c", str(probe_checkpoint), "--data", str(photo_data["folder"])]) == 0


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS: Core ML prediction runs only there")
def test_core_ml_itself_on_macos(tmp_path, probe_checkpoint, artifacts, photo_data):
    report = tmp_path / "r.json"
    paths = [str(artifacts["coreml-fp32"]), str(artifacts["coreml-fp16"])]
    assert main(["validate", *paths, "-c", str(probe_checkpoint), "--data", str(photo_data["folder"]),
                 "--report", str(report)]) == 0
    assert {a["runtime"] for a in json.loads(report.read_text())["artifacts"]} == {"coreml"}


def test_coreml_classifier_is_compared_as_probabilities(tmp_path, probe_checkpoint):
    """A Core ML classifier exposes a label and class probabilities, not logits: validate compares the probabilities
    with softmax(reference logits) instead of failing on the string output."""
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.exporters.coreml import CoreMLOptions

    out = tmp_path / "cml-classifier"
    export(ExportConfig("coreml", out, precision="fp32", options=CoreMLOptions(class_labels="imagenet"),
                        check_parity=False), probe_checkpoint)
    report = tmp_path / "r.json"
    assert main(["validate", str(out), "-c", str(probe_checkpoint), "--synthetic", "4", "--report", str(report)]) == 0
    metrics = json.loads(report.read_text())["artifacts"][0]["metrics"]
    assert metrics["num_samples"] == 4 and metrics["top1_agreement"] == 1.0


def test_validate_cli_reports_accuracy_on_digits(demo_result, demo_checkpoint_path, tmp_path, capsys):
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig

    result = export(ExportConfig("onnx", tmp_path / "onnx", check_parity=False), demo_checkpoint_path)
    code = main(["validate", str(result.output), "-c", str(demo_checkpoint_path), "--data", "digits", "--json",
                 "--batch", "50"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    metrics = report["artifacts"][0]["metrics"]
    assert report["data"]["kind"] == "digits" and report["data"]["num_images"] == 500
    assert metrics["num_classes"] == 10 and metrics["top1_agreement"] == 1.0
    # validate's reference accuracy is the demo's own measurement: the same data and the same preprocessing
    assert metrics["ref_top1"] == pytest.approx(100 * demo_result.test_accuracy)
    assert metrics["top1"] >= 97.0
    assert "WordNet" not in err
