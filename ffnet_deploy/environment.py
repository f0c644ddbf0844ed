"""The machine a result was measured on: platform, CPU model, ISA flags, and package versions.

Validation reports and benchmark results both record it, so that a number can be traced to the hardware and
software that produced it.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimdhp", "sve",
             "sve2", "i8mm", "bf16")
"""CPU features that change numerics or speed of inference engines (reported when present)."""

VERSIONED_PACKAGES = ("numpy", "torch", "onnx", "onnxruntime", "openvino", "coremltools", "tensorrt", "pillow",
                      "ffnet-deploy")


def environment_info() -> dict:
    """Platform, CPU model, ISA flags of interest, and installed package versions (without importing them)."""
    from importlib import metadata

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Hardware", "CPU part") and cpu in ("", platform.machine(), platform.processor()):
                cpu = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        if sys.platform == "darwin":
            import subprocess

            try:
                cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                     timeout=5).stdout.strip() or cpu
            except (OSError, subprocess.SubprocessError):
                pass
    versions = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    import os

    return {
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "versions": versions,
    }
