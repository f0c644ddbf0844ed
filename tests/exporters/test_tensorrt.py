"""TensorRT exporter: plan, flags and trtexec command on CPU; the TRT-ready ONNX path; a GPU-marked engine build."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.exporters.tensorrt import (
    TRTEXEC_FALLBACKS,
    TensorRTOptions,
    TrtBuildPlan,
    build_script,
    tensorrt_unavailable_reason,
)
from ffnet_deploy.runtimes import create_runner
from tests.exporters.helpers import gate_checks, manifest, max_rel, run_export, torch_logits


def plan(precision: str = "fp16", dynamic_batch: tuple[int, int, int] | None = None, **options) -> TrtBuildPlan:
    config = ExportConfig("tensorrt", Path("unused"), resolution=256, dynamic_batch=dynamic_batch, precision=precision)
    return TrtBuildPlan.from_config(config, TensorRTOptions(**options), precision)


def test_static_plan_has_no_shape_flags():
    p = plan(precision="fp32")
    assert p.shapes is None
    assert p.trtexec_args() == ["--onnx=model.onnx", "--saveEngine=model.engine",
                                "--memPoolSize=workspace:4096M", "--timingCacheFile=timing.cache"]


def test_dynamic_fp16_dla_plan():
    p = plan(dynamic_batch=(1, 8, 32), precision="fp16", workspace_mb=1024, dla_core=1,
             timing_cache=Path("/var/cache/ffnet.cache"))
    assert p.shapes == ((1, 3, 256, 256), (8, 3, 256, 256), (32, 3, 256, 256))
    assert p.command() == (
        "trtexec --onnx=model.onnx --saveEngine=model.engine --fp16 --minShapes=images:1x3x256x256 "
        "--optShapes=images:8x3x256x256 --maxShapes=images:32x3x256x256 --memPoolSize=workspace:1024M "
        "--timingCacheFile=timing.cache --useDLACore=1 --allowGPUFallback"
    )  # this machine's --timing-cache never reaches the device's command (it belongs to another GPU)


def test_build_script_is_valid_bash_running_that_command(tmp_path):
    p = plan(dynamic_batch=(1, 2, 4))
    script = tmp_path / "build_engine.sh"
    script.write_text(build_script(p, "header"))
    subprocess.run(["bash", "-n", str(script)], check=True)  # syntax check
    # Run it with a stand-in trtexec that records its arguments: the script must pass exactly the plan's.
    fake = tmp_path / "fake_trtexec"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > args.txt\n')
    fake.chmod(0o755)
    subprocess.run(["bash", str(script)], check=True, env={"TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"},
                   cwd="/")
    assert (tmp_path / "args.txt").read_text().split("\n")[:-1] == p.trtexec_args()


# --------------------------------------------------------------------------------------------------------------------
# build_engine.sh: where it finds trtexec, and that it only uses paths inside the artifact directory. The script is
# run with bash for real; the stand-in trtexec records its arguments and working directory (no TensorRT is faked:
# what is tested is the script's own search and paths).
# --------------------------------------------------------------------------------------------------------------------

SYSTEM_PATH = "/usr/bin:/bin"  # coreutils for the script's `dirname`, and no trtexec (checked below)


def fake_trtexec(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "trtexec"
    exe.write_text(f'#!/usr/bin/env bash\necho {tag} > used.txt\npwd > cwd.txt\nprintf "%s\\n" "$@" > args.txt\n')
    exe.chmod(0o755)
    return exe


@pytest.fixture
def artifact_script(tmp_path):
    """``build_engine.sh`` of a plan whose user gave a workstation timing cache, in an artifact folder."""
    import shutil

    if shutil.which("trtexec", path=SYSTEM_PATH) or any(Path(f).exists() for f in TRTEXEC_FALLBACKS):
        pytest.skip("this machine has a real trtexec where the script looks; the search order cannot be isolated")
    art = tmp_path / "artifact dir"  # a space: every path in the script must be quoted
    art.mkdir()
    script = art / "build_engine.sh"
    script.write_text(build_script(plan(timing_cache=Path("/home/me/workstation.cache")), "header"))
    return script


def run_script(script: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_build_script_prefers_trtexec_env_then_path(tmp_path, artifact_script):
    art = artifact_script.parent
    on_path = fake_trtexec(tmp_path / "fakebin", "path")
    explicit = fake_trtexec(tmp_path / "explicit", "env")
    path = f"{on_path.parent}:{SYSTEM_PATH}"
    assert run_script(artifact_script, {"PATH": path, "TRTEXEC": str(explicit)}, tmp_path).returncode == 0
    assert (art / "used.txt").read_text().strip() == "env"
    done = run_script(artifact_script, {"PATH": path}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (art / "used.txt").read_text().strip() == "path"
    # Run from elsewhere, the build still happens in the artifact directory and reads its own timing cache: the
    # workstation's --timing-cache path is not baked into the script.
    assert (art / "cwd.txt").read_text().strip() == str(art)
    assert "--timingCacheFile=timing.cache" in (art / "args.txt").read_text().split("\n")
    assert "/home/me" not in artifact_script.read_text()
    shared = run_script(artifact_script, {"PATH": path, "TIMING_CACHE": "/data/trt.cache"}, tmp_path)
    assert shared.returncode == 0 and "--timingCacheFile=/data/trt.cache" in (art / "args.txt").read_text()


def test_build_script_falls_back_to_jetpack_location(tmp_path, monkeypatch):
    import ffnet_deploy.exporters.tensorrt as trt_exporter

    # The fallback list is data; pointed at a folder of ours, the generated script must search it after PATH.
    jetpack = fake_trtexec(tmp_path / "usr src tensorrt" / "bin", "jetpack")
    monkeypatch.setattr(trt_exporter, "TRTEXEC_FALLBACKS", (str(tmp_path / "missing" / "trtexec"), str(jetpack)))
    if shutil_which_trtexec():
        pytest.skip("this machine has trtexec on /usr/bin:/bin")
    art = tmp_path / "art"
    art.mkdir()
    script = art / "build_engine.sh"
    script.write_text(trt_exporter.build_script(plan(), "header"))
    done = run_script(script, {"PATH": SYSTEM_PATH}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (art / "used.txt").read_text().strip() == "jetpack"
    assert TRTEXEC_FALLBACKS == ("/usr/src/tensorrt/bin/trtexec",)  # what real scripts search


def shutil_which_trtexec() -> bool:
    import shutil

    return shutil.which("trtexec", path=SYSTEM_PATH) is not None


def test_build_script_without_trtexec_says_where_it_looked(tmp_path, artifact_script):
    done = run_script(artifact_script, {"PATH": SYSTEM_PATH}, tmp_path)
    assert done.returncode == 127
    assert "trtexec not found in $TRTEXEC, on PATH or at /usr/src/tensorrt/bin/trtexec" in done.stderr
    bad = run_script(artifact_script, {"PATH": SYSTEM_PATH, "TRTEXEC": str(tmp_path / "nope")}, tmp_path)
    assert bad.returncode == 127 and f"TRTEXEC={tmp_path / 'nope'} is not an executable" in bad.stderr


def test_dla_needs_reduced_precision(tmp_path, test_checkpoint):
    with pytest.raises(ConfigError, match="DLA runs FP16 or INT8 only"):
        run_export(tmp_path, "tensorrt", test_checkpoint, precision="fp32", options=TensorRTOptions(dla_core=0))


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="this machine can build engines")
def test_without_tensorrt_writes_onnx_and_script(tmp_path, test_checkpoint):
    result = run_export(tmp_path, "tensorrt", test_checkpoint, dynamic_batch=(1, 2, 4))
    out, m = result.output, manifest(result.output)
    assert sorted(p.name for p in out.iterdir()) == ["build_engine.sh", "manifest.json", "model.onnx"]
    assert m["format"] == "tensorrt" and m["precision"] == "fp16" and m["artifact"]["path"] == "model.onnx"
    assert m["details"]["engine_built"] is False and m["versions"]["tensorrt"] == "not installed"
    assert any("./build_engine.sh" in n for n in result.notices)
    assert (out / "build_engine.sh").stat().st_mode & 0o111
    assert shlex.split(m["details"]["trtexec_command"])[1:] == plan(dynamic_batch=(1, 2, 4)).trtexec_args()[:2] + [
        "--fp16", "--minShapes=images:1x3x64x64", "--optShapes=images:2x3x64x64", "--maxShapes=images:4x3x64x64",
        "--memPoolSize=workspace:4096M", "--timingCacheFile=timing.cache"]
    # The TRT-ready ONNX itself is gated with ONNX Runtime.
    assert m["parity"]["passed"] is True and [c["runtime"] for c in gate_checks(m)] == ["onnxruntime"]
    assert "block_outputs" in m


def test_cli_exits_zero_without_tensorrt(tmp_path, test_checkpoint, capsys):
    from ffnet_deploy.cli import main

    rc = main(["export", "-c", str(test_checkpoint), "-f", "tensorrt", "-o", str(tmp_path / "trt"), "--json"])
    assert rc == 0 and (tmp_path / "trt" / "model.onnx").is_file()
    if tensorrt_unavailable_reason() is not None:
        assert "build_engine.sh" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(tensorrt_unavailable_reason() is not None,
                    reason=f"needs TensorRT and a CUDA GPU: {tensorrt_unavailable_reason()}")
def test_engine_build_and_run_on_gpu(tmp_path, test_checkpoint):
    cache = tmp_path / "timing.cache"
    result = run_export(tmp_path, "tensorrt", test_checkpoint, precision="fp32", dynamic_batch=(1, 2, 4),
                        options=TensorRTOptions(timing_cache=cache))
    out, m = result.output, manifest(result.output)
    assert (out / "model.engine").is_file() and m["artifact"]["path"] == "model.engine" and cache.is_file()
    assert sorted(c["runtime"] for c in gate_checks(m)) == ["onnxruntime", "tensorrt"] and m["parity"]["passed"]
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64), dtype=np.float32)
    with create_runner("tensorrt", out) as runner:
        got = runner.infer({"images": x})["logits"]
    assert max_rel(got, torch_logits(test_checkpoint, x)) < 5e-3
