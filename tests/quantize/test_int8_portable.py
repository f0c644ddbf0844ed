"""INT8 that holds on every CPU class: the demo model's ONNX INT8 judged by validate's engine on an AVX2-only CPU.

``qemu-x86_64 -cpu Haswell`` (Debian's ``qemu-user``) runs this venv's Python on an emulated CPU with AVX2 and FMA
but no AVX-512 and no VNNI, so ONNX Runtime picks the ``vpmaddubsw`` int8 kernels that saturate on 8-bit weights
(``benchmarks/results/int8_portable.md``), whatever CPU the test machine has. The default ``--target cpu`` artifact
must keep the int8 profile there; the 8-bit-weight recipe that was the default before must fail it, which proves the
emulation really reaches the saturating kernels (a check that could not fail would prove nothing).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ffnet_deploy.environment import cpu_identity
from ffnet_deploy.export import export
from ffnet_deploy.exporters import ExportConfig
from ffnet_deploy.quantize import onnx_int8
from ffnet_deploy.quantize.config import QuantizationConfig

QEMU = shutil.which("qemu-x86_64")
EMULATED = "Haswell"

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86-64 CPU model on an x86-64 host"),
    pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64 (Debian's qemu-user: apt-get install qemu-user)"),
]


@pytest.fixture(scope="module")
def artifacts(demo_checkpoint_path, tmp_path_factory):
    """The default cpu INT8 artifact and, beside it, the old 8-bit-weight recipe of the same model."""
    import dataclasses

    root = tmp_path_factory.mktemp("portable")
    q = QuantizationConfig(calib="digits", calib_size=300, eval_data="digits", cache_dir=root / "cache")
    new = export(ExportConfig("onnx", root / "cpu", precision="int8", quantization=q), demo_checkpoint_path)
    fp32 = export(ExportConfig("onnx", root / "fp32"), demo_checkpoint_path)
    from ffnet_deploy.data import EvalTransform
    from ffnet_deploy.quantize.calibration import load_calibration

    pre = fp32.manifest.preprocessing
    calib = load_calibration("digits", EvalTransform(fp32.manifest.resolution, pre.crop_pct, pre.mean, pre.std), 300)
    prepared = onnx_int8.prepare_onnx(fp32.artifact, root / "prep")
    ranges = onnx_int8.calibrate_ranges(prepared, calib, "minmax")
    old = root / "old" / "model.int8-8bit.onnx"
    onnx_int8.quantize_with_settings(prepared, old, ranges,
                                     dataclasses.replace(onnx_int8.CPU_SETTINGS, reduce_range=False))
    return new, old


def _validate_emulated(paths: list[Path], checkpoint: Path, report: Path) -> tuple[int, dict]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [QEMU, "-cpu", EMULATED, sys.executable, "-m", "ffnet_deploy", "validate", *map(str, paths),
           "-c", str(checkpoint), "--data", "digits", "--report", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    if not report.is_file():
        pytest.fail(f"validate under qemu wrote no report (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode, json.loads(report.read_text())


def test_default_cpu_int8_keeps_the_int8_profile_on_avx2_and_the_8bit_recipe_does_not(artifacts,
                                                                                       demo_checkpoint_path,
                                                                                       tmp_path):
    new, old = artifacts
    code, report = _validate_emulated([new.output, old], demo_checkpoint_path, tmp_path / "report.json")
    env = report["environment"]
    assert env["isa_class"] == "avx2" and env["emulated"] == (cpu_identity()["isa_class"] != "avx2")
    assert "avx512f" not in env["isa_flags"] and "avx2" in env["isa_flags"]
    by_path = {Path(a["name"]).name: a for a in report["artifacts"]}
    portable, eight_bit = by_path[new.output.name], by_path[old.name]

    assert portable["status"] == "passed", portable["failures"]
    assert portable["metrics"]["top1_agreement"] >= 0.97 and portable["metrics"]["acc_drop"] <= 1.0
    assert portable["metrics"]["num_samples"] == 500
    # The 8-bit weights saturate in vpmaddubsw: the same model loses points on this CPU class.
    assert eight_bit["status"] == "failed"
    assert eight_bit["metrics"]["acc_drop"] > 1.0
    assert code == 1
    # The manifest says where the artifact was gated, and the emulated run says it judged it on its own CPU.
    if cpu_identity()["isa_class"] != "avx2":
        assert any("this machine is avx2" in w for w in portable["warnings"]), portable["warnings"]


def test_default_cpu_int8_is_safe_on_every_isa_class_by_its_weights(artifacts):
    from ffnet_deploy.artifact.manifest import read_manifest
    from ffnet_deploy.environment import ISA_CLASSES

    new, old = artifacts
    portability = read_manifest(new.output).details["quantization"]["portability"]
    assert portability["max_abs_weight"] <= 64
    assert set(portability["safe_isa_classes"]) == set(ISA_CLASSES) - {"other"}
    assert portability["unsafe_isa_classes"] == []
    import onnx

    assert onnx_int8.max_abs_int8_weight(onnx.load(str(old))) > 64
