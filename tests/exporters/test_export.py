"""The export orchestration (ffnet_deploy/export.py): atomic output, refusals, one-line errors, the parity gate."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

from ffnet_deploy.artifact.manifest import read_manifest
from ffnet_deploy.artifact.workdir import remove_stale_workdirs
from ffnet_deploy.cli import main
from ffnet_deploy.errors import CheckpointError, ConfigError, ExportError, FFNetDeployError, ParityError
from ffnet_deploy.export import export, parse_dynamic_batch
from ffnet_deploy.exporters import EXPORTER_MODULES, EXPORTERS, build_options, format_names
from ffnet_deploy.exporters.base import ExportConfig, FormatOptions
from ffnet_deploy.exporters.coreml import CoreMLOptions
from ffnet_deploy.exporters.onnx import OnnxExporter, OnnxOptions
from ffnet_deploy.exporters.openvino import OpenVINOOptions
from ffnet_deploy.exporters.tensorrt import TensorRTOptions
from tests.exporters.helpers import manifest, run_export

TESTS = Path(__file__).parent


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_every_registered_format_has_a_test():
    assert sorted(EXPORTER_MODULES) == format_names()
    missing = [f for f in format_names() if not (TESTS / f"test_{f}.py").is_file()]
    assert not missing, f"export formats without tests/exporters/test_<format>.py: {missing}"


@pytest.mark.parametrize("fmt", format_names())
def test_every_format_declares_its_own_options(fmt):
    """Each exporter names a frozen options dataclass of its own whose defaults are valid and JSON-ready."""
    import dataclasses
    import json

    options_class = EXPORTERS.get(fmt).options_class
    assert issubclass(options_class, FormatOptions) and options_class is not FormatOptions
    assert options_class.format_name == fmt
    assert [c for c in format_names() if EXPORTERS.get(c).options_class is options_class] == [fmt]
    defaults = options_class()
    defaults.validate()
    json.dumps(defaults.to_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.opset = 18  # frozen: a config cannot change under an exporter
    assert all(f.metadata.get("flag", "").startswith("--") for f in dataclasses.fields(options_class))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (OnnxOptions(opset=12), r"^onnx export \| --opset must be an integer within 13..21, got 12$"),
        (OnnxOptions(opset="17"), r"^onnx export \| --opset must be an integer within 13..21, got '17'$"),
        (OpenVINOOptions(opset=22), r"^openvino export \| --opset must be an integer within 13..21, got 22$"),
        (OpenVINOOptions(keep_onnx="yes"), r"^openvino export \| keep_onnx must be True or False, got 'yes'$"),
        (CoreMLOptions(input="pixels"), r"^coreml export \| --coreml-input must be 'image' or 'tensor', got 'pixels'$"),
        (CoreMLOptions(class_labels="no-such-labels.txt"),
         r"^coreml export \| --class-labels file no-such-labels.txt does not exist; pass a file with one label per "
         r"line, or 'imagenet'$"),
        (TensorRTOptions(workspace_mb=0),
         r"^tensorrt export \| --trt-workspace must be a positive number of MiB, got 0$"),
        (TensorRTOptions(dla_core=-1), r"^tensorrt export \| --dla-core must be a DLA core number >= 0, got -1$"),
        (TensorRTOptions(opset=9), r"^tensorrt export \| --opset must be an integer within 13..21, got 9$"),
        (TensorRTOptions(timing_cache=Path("/")), r"^tensorrt export \| --timing-cache must be a file path"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, FormatOptions) else None,
)
def test_format_options_validation(tmp_path, test_checkpoint, options, message):
    with pytest.raises(ConfigError, match=message):
        options.validate()
    # The exporter runs the same check before anything is loaded or written.
    with pytest.raises(ConfigError, match=message):
        run_export(tmp_path, options.format_name, test_checkpoint, options=options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("fmt", "options", "message"),
    [
        ("onnx", CoreMLOptions(class_labels="imagenet"),
         "onnx export | options are CoreMLOptions (coreml export options); --format onnx takes OnnxOptions"),
        # OpenVINOOptions subclasses OnnxOptions, but keep_onnx means nothing to an ONNX export: refused too.
        ("onnx", OpenVINOOptions(keep_onnx=True), "options are OpenVINOOptions (openvino export options)"),
        ("openvino", OnnxOptions(opset=20), "--format openvino takes OpenVINOOptions"),
        ("tensorrt", OpenVINOOptions(), "options are OpenVINOOptions (openvino export options)"),
        ("coreml", TensorRTOptions(dla_core=0), "--format coreml takes CoreMLOptions"),
        ("onnx", {"opset": 17}, "export | options must be a format's options object such as OnnxOptions, got dict"),
    ],
)
def test_options_of_another_format_are_refused(tmp_path, test_checkpoint, fmt, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_export(tmp_path, fmt, test_checkpoint, options=options)
    assert list(tmp_path.iterdir()) == []


def test_config_to_dict_records_the_format_options():
    import json

    config = ExportConfig("tensorrt", Path("out"), dynamic_batch=(1, 2, 4),
                          options=TensorRTOptions(dla_core=1, timing_cache=Path("/tmp/t.cache")))
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-ready as is
    assert data["options"] == {"opset": 17, "simplify": True, "workspace_mb": 4096, "dla_core": 1,
                               "timing_cache": "/tmp/t.cache"}
    assert data["output"] == "out" and data["dynamic_batch"] == [1, 2, 4] and data["format"] == "tensorrt"
    assert ExportConfig("onnx", Path("out")).to_dict()["options"] is None  # unresolved: the format's defaults


def test_build_options_from_given_values():
    assert build_options("openvino", {"opset": 20, "keep_onnx": True}) == OpenVINOOptions(opset=20, keep_onnx=True)
    assert build_options("coreml", {}) == CoreMLOptions()
    with pytest.raises(ConfigError, match=r"^export \| --dla-core is an option of --format tensorrt; --format onnx "
                                          r"does not take it$"):
        build_options("onnx", {"dla_core": 0})
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        build_options("tflite", {})


def test_injected_failure_leaves_nothing(tmp_path, test_checkpoint, monkeypatch):
    written = []

    def failing(self, model, config, workdir, log, **kwargs):
        (workdir / "model.onnx").write_bytes(b"half an artifact")
        written.append(workdir)
        raise RuntimeError("injected failure mid-export")

    monkeypatch.setattr(OnnxExporter, "export", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_export(tmp_path, "onnx", test_checkpoint)
    assert written and not written[0].exists()
    assert not (tmp_path / "onnx-artifact").exists() and leftovers(tmp_path) == []


def test_parity_failure_exits_and_keeps_nothing(tmp_path, test_checkpoint, monkeypatch):
    import torch

    original = OnnxExporter.export

    def wrong_weights(self, model, config, workdir, log, **kwargs):
        broken = type(model)(model.cfg, model.num_classes, deploy=True).eval()
        broken.load_state_dict(model.state_dict())
        with torch.no_grad():
            broken.head.bias.add_(1.0)  # a plausible export bug: the artifact computes something else
        return original(self, broken, config, workdir, log, **kwargs)

    monkeypatch.setattr(OnnxExporter, "export", wrong_weights)
    with pytest.raises(ParityError, match=r"export parity gate \| onnxruntime on model.onnx .* was not kept") as err:
        run_export(tmp_path, "onnx", test_checkpoint)
    assert not (tmp_path / "onnx-artifact").exists() and leftovers(tmp_path) == []
    # Every metric is named, not only the failing check, so a long export is not judged on one number.
    for metric in ("max_abs_error=", "cosine_mean=", "psnr_db=", "top1_agreement="):
        assert metric in str(err.value)
    assert "--keep-failed" in str(err.value)

    # --keep-failed keeps it beside the output, marked as failed, and validate judges it as the failure it is.
    with pytest.raises(ParityError, match=r"kept for inspection in .*onnx-artifact\.failed"):
        run_export(tmp_path, "onnx", test_checkpoint, keep_failed=True)
    kept = tmp_path / "onnx-artifact.failed"
    assert not (tmp_path / "onnx-artifact").exists() and leftovers(tmp_path) == []
    m = read_manifest(kept)
    assert m.parity["passed"] is False and any("FAILED the export parity gate" in n for n in m.notices)
    from ffnet_deploy.validate.engine import validate

    assert not validate([kept], test_checkpoint, source=None)
    # A second failed export replaces the folder it made; a user's folder of that name is never touched.
    with pytest.raises(ParityError, match="kept for inspection"):
        run_export(tmp_path, "onnx", test_checkpoint, keep_failed=True)
    import shutil

    shutil.rmtree(kept)
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(FFNetDeployError):
        run_export(tmp_path, "onnx", test_checkpoint, keep_failed=True)
    assert (kept / "notes.txt").read_text() == "mine"


SLOW_EXPORT = """
import os, time
from pathlib import Path
from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.exporters.onnx import OnnxExporter

original = OnnxExporter.export
def slow(self, model, config, workdir, log, **kwargs):
    info = original(self, model, config, workdir, log, **kwargs)
    Path(os.environ["MIDWAY"]).write_text(str(workdir))  # tell the test we are midway: the model file is written
    time.sleep(60)
    return info
OnnxExporter.export = slow
export(ExportConfig("onnx", Path(os.environ["OUT"])), None, "ffnet_test")
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_export_leaves_no_artifact(tmp_path, sig, server):
    """The export runs in a process of its own (forked from the fork server, tests/forkserver.py), killed midway."""
    out, marker = tmp_path / "out", tmp_path / "midway"
    child = server.start(None, tmp_path, {"OUT": str(out), "MIDWAY": str(marker)}, setup=SLOW_EXPORT)
    child.wait_until(marker.exists, "the export's midway point", timeout=120)
    workdir = Path(marker.read_text())
    assert (workdir / "model.onnx").is_file()  # midway: something was written
    os.kill(child.pid, sig)
    code, _log = server.wait(child)
    # SIGKILL ends it at once; SIGTERM reaches the export's handler, which ends it with its own code
    assert code == -sig if sig == signal.SIGKILL else code != -sig, code
    assert not out.exists()
    if sig == signal.SIGTERM:  # the process cleans up after itself
        assert leftovers(tmp_path) == []
    else:  # SIGKILL: only the temp dir of a dead process remains, and the next export removes it
        assert leftovers(tmp_path) == [workdir.name] and workdir.name.startswith(".out.tmp-")
        export(ExportConfig("onnx", out), None, "ffnet_test")
        assert (out / "manifest.json").is_file() and leftovers(tmp_path) == []


def test_stale_cleanup_spares_locked_work_directories(tmp_path):
    """Liveness is the work directory's lock (tests/artifact/test_workdir.py holds one from another process)."""
    from ffnet_deploy.artifact.workdir import workdir_for

    dead = tmp_path / f".out.tmp-{os.getpid()}-abcd"  # our own PID, but nobody holds its lock: stale
    other = tmp_path / ".other.tmp-999999999-abcd"
    for d in (dead, other):
        d.mkdir()
    with workdir_for(tmp_path / "out") as live:
        assert not dead.exists()  # creating a work directory cleans up first
        assert remove_stale_workdirs(tmp_path / "out") == [] and live.exists() and other.exists()


def test_full_disk_while_writing_the_manifest(tmp_path, test_checkpoint, monkeypatch):
    import errno

    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "manifest.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(ExportError) as info:
        run_export(tmp_path, "onnx", test_checkpoint, check_parity=False)
    assert re.fullmatch(r"export \| cannot write .*manifest.json: no space left on device; free some space or choose "
                        r"another --output", str(info.value))
    assert list(tmp_path.iterdir()) == []


def test_artifact_files_honour_the_umask(tmp_path, test_checkpoint):
    import stat

    previous = os.umask(0o022)
    try:
        result = run_export(tmp_path, "onnx", test_checkpoint, check_parity=False)
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(result.output)): stat.S_IMODE(p.stat().st_mode) for p in result.output.rglob("*")}
    assert modes and all(m == (0o755 if (result.output / name).is_dir() else 0o644) for name, m in modes.items()), modes
    assert stat.S_IMODE(result.output.stat().st_mode) == 0o755


def test_existing_artifact_refused_without_force(tmp_path, test_checkpoint, onnx_export):
    # an artifact the tool made, where run_export writes (a copy of the session's export: this test replaces it)
    first = shutil.copytree(onnx_export.output, tmp_path / "onnx-artifact")
    sha = manifest(first)["artifact"]["sha256"]
    with pytest.raises(ExportError, match="already exists; pass --force"):
        run_export(tmp_path, "onnx", test_checkpoint)
    assert manifest(first)["artifact"]["sha256"] == sha
    replaced = run_export(tmp_path, "onnx", test_checkpoint, force=True, dynamic_batch=(1, 1, 2))
    assert manifest(replaced.output)["batch"] == {"min": 1, "opt": 1, "max": 2} and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"resolution": 100}, ConfigError, r"multiple of 32 .* got 100; try 96"),
        ({"options": OnnxOptions(opset=12)}, ConfigError, r"--opset must be an integer within 13..21"),
        ({"dynamic_batch": (4, 2, 8)}, ConfigError, r"1 <= MIN <= OPT <= MAX"),
        ({"batch": 0}, ConfigError, r"--batch must be at least 1"),
    ],
)
def test_bad_options(tmp_path, test_checkpoint, options, error, message):
    with pytest.raises(error, match=message):
        run_export(tmp_path, "onnx", test_checkpoint, **options)
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_lists_valid_ones(tmp_path, test_checkpoint):
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; choose one of: coreml, executorch, litert, "
                                          "onnx, openvino, tensorrt"):
        run_export(tmp_path, "tflite", test_checkpoint)


def test_checkpoint_variant_mismatch(tmp_path, test_checkpoint):
    with pytest.raises(CheckpointError, match="does not fit ffnet_1"):
        export(ExportConfig("onnx", tmp_path / "x"), test_checkpoint, "ffnet_1")
    assert not (tmp_path / "x").exists()


def test_unwritable_output(tmp_path, test_checkpoint):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ExportError, match="cannot create the output folder .*a-file.*choose a writable --output"):
        export(ExportConfig("onnx", blocker / "sub" / "out"), test_checkpoint)


def test_random_weights_are_loud(tmp_path):
    lines = []
    result = export(ExportConfig("onnx", tmp_path / "rnd"), None, "ffnet_test", progress=lines.append)
    assert result.manifest.random_weights is True and result.manifest.source_checkpoint is None
    assert any("RANDOM weights" in n for n in result.notices) and lines[0].startswith("WARNING")


def test_parse_dynamic_batch():
    assert parse_dynamic_batch("1:8:32") == (1, 8, 32) and parse_dynamic_batch(None) is None
    with pytest.raises(ConfigError, match="MIN:OPT:MAX"):
        parse_dynamic_batch("8")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-f", "tflite"],
         "unknown export format 'tflite'; choose one of: coreml, executorch, litert, onnx, openvino, tensorrt"),
        (["-f", "onnx", "-r", "250"], "multiple of 32"),
        (["-f", "onnx", "--dynamic-batch", "1-8"], "--dynamic-batch needs MIN:OPT:MAX"),
        (["-f", "onnx", "--opset", "12"], "onnx export | --opset must be an integer within 13..21, got 12"),
        # A format option given to another format is refused by name, not silently ignored.
        (["-f", "onnx", "--dla-core", "0"], "--dla-core is an option of --format tensorrt; --format onnx does not "
                                            "take it"),
        (["-f", "onnx", "--class-labels", "imagenet"], "--class-labels is an option of --format coreml; --format "
                                                       "onnx does not take it"),
        (["-f", "tensorrt", "--keep-onnx"], "--keep-onnx is an option of --format openvino; --format tensorrt does "
                                            "not take it"),
        (["-f", "coreml", "--no-simplify"], "--no-simplify is an option of --format onnx/openvino/tensorrt; "
                                            "--format coreml does not take it"),
        (["-f", "openvino", "--trt-workspace", "512"], "--trt-workspace is an option of --format tensorrt"),
        (["-f", "tensorrt", "--coreml-input", "tensor"], "--coreml-input is an option of --format coreml"),
        (["-f", "tensorrt", "--dla-core", "-1"], "tensorrt export | --dla-core must be a DLA core number >= 0"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    rc = main(["export", "-v", "ffnet_test", "-o", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip().splitlines()[-1]]


def test_cli_labels_flag_is_class_labels(tmp_path, capsys):
    """Core ML's class names flag is --class-labels; --labels (validate's label map in the past) is not an export
    flag, so it is a usage error rather than a second meaning."""
    rc = main(["export", "-v", "ffnet_test", "-f", "coreml", "-o", str(tmp_path / "o"), "--labels", "imagenet"])
    assert rc == 2 and "--labels" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_missing_backend(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "coremltools", None)
    rc = main(["export", "-v", "ffnet_test", "-f", "coreml", "-o", str(tmp_path / "o")])
    assert rc == 1 and "pip install 'ffnet-deploy[coreml]'" in capsys.readouterr().err


def test_cli_export_json(tmp_path, test_checkpoint, capsys):
    import json

    rc = main(["export", "-c", str(test_checkpoint), "-f", "openvino", "-o", str(tmp_path / "ov"), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["format"] == "openvino" and data["parity"][0]["passed"] is True
    assert data["manifest"] == manifest(tmp_path / "ov")
