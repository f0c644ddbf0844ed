"""The machine a result was measured on: platform, CPU model, ISA flags and class, and package versions.

Manifests, validation reports, benchmark and pipeline results all record it (:func:`cpu_identity` for the CPU part,
:func:`environment_info` for the whole), so that a number can be traced to the hardware and software that produced it.

**What the process sees, not what the host has.** Inference engines pick their kernels from CPUID at run time. Under
an emulator (``qemu-x86_64 -cpu Haswell``) or in a VM with masked features, ``/proc/cpuinfo`` still describes the host,
while CPUID describes the CPU the engines actually run on. The flags here come from numpy's CPU dispatcher (CPUID in
this process) wherever numpy knows the feature, and from ``/proc/cpuinfo`` only for features numpy does not track
(AVX-VNNI, AMX, SVE2, I8MM), and only when the two sources agree on every feature both know. When they disagree, the
result says ``emulated: true``.

**ISA class.** :data:`ISA_CLASSES` groups CPUs by how their int8 kernels compute, which decides whether an INT8 model
keeps its accuracy there (see ``benchmarks/results/int8_portable.md``): on ``avx2`` and ``avx512`` the fused u8 x s8
kernels (``vpmaddubsw``) add pairs of products in 16 bits and saturate; ``avx512-vnni``, ``avx-vnni`` and ``amx`` add
them in 32 bits (``vpdpbusd``, ``tdpbusd``); ARM64's dot-product and widening kernels never saturate.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimdhp", "asimddp",
             "sve", "sve2", "i8mm", "bf16")
"""CPU features that change numerics or speed of inference engines (reported when present)."""

_NUMPY_NAMES = {"SSE42": "sse4_2", "AVX": "avx", "AVX2": "avx2", "FMA3": "fma", "F16C": "f16c", "AVX512F": "avx512f",
                "AVX512BW": "avx512bw", "AVX512VL": "avx512vl", "AVX512VNNI": "avx512_vnni",
                "AVX512BF16": "avx512_bf16", "AVX512FP16": "avx512_fp16", "ASIMD": "asimd", "ASIMDHP": "asimdhp",
                "ASIMDDP": "asimddp", "SVE": "sve"}
"""numpy's CPU-dispatch feature names -> the Linux ``/proc/cpuinfo`` flag names used here."""

ISA_CLASSES = {
    "amx": "x86-64 with AMX-INT8 (and AVX-512 VNNI): int8 products summed in 32 bits",
    "avx512-vnni": "x86-64 with AVX-512 VNNI: int8 products summed in 32 bits (vpdpbusd)",
    "avx-vnni": "x86-64 with AVX-VNNI (256-bit, no AVX-512): int8 products summed in 32 bits",
    "avx512": "x86-64 with AVX-512 but no VNNI: u8 x s8 pairs summed in 16 bits (vpmaddubsw), which saturates",
    "avx2": "x86-64 with AVX2 but no VNNI: u8 x s8 pairs summed in 16 bits (vpmaddubsw), which saturates",
    "x86-64": "x86-64 without AVX2: SSE kernels that widen to 16 bits before multiplying",
    "arm64-i8mm": "ARM64 with the int8 matrix-multiply extension (smmla/ummla)",
    "arm64-dotprod": "ARM64 with the dot-product extension (sdot/udot): products summed in 32 bits",
    "arm64": "ARM64 without dot product: widening multiplies, 32-bit accumulation",
    "other": "another architecture",
}
"""ISA class -> how its int8 kernels add products (the property INT8 portability depends on)."""

SATURATING_CLASSES = frozenset({"avx2", "avx512"})
"""ISA classes whose fused u8 x s8 int8 kernels saturate on 8-bit weights (ONNX Runtime's MLAS, oneDNN)."""

VERSIONED_PACKAGES = ("numpy", "torch", "onnx", "onnxruntime", "openvino", "coremltools", "tensorrt", "pillow",
                      "ffnet-deploy")


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The CPU model and flags of ``/proc/cpuinfo`` (the host's, also under an emulator); ``(None, set())`` off
    Linux."""
    model, flags = None, set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware", "CPU part") and model is None:
            model = value.strip() or None
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def _process_features() -> set[str] | None:
    """The features CPUID reports to this process, in ``/proc/cpuinfo`` names; ``None`` if numpy cannot tell."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return None
    return {flag for name, flag in _NUMPY_NAMES.items() if __cpu_features__.get(name)}


def _darwin_model() -> str | None:
    import subprocess

    try:
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def classify(machine: str, flags: set[str] | frozenset[str]) -> str:
    """The :data:`ISA_CLASSES` key of a CPU with ``flags`` (``/proc/cpuinfo`` names) on ``machine``."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i686", "i386", "x86"):
        if "amx_int8" in flags:
            return "amx"
        if "avx512_vnni" in flags:
            return "avx512-vnni"
        if "avx_vnni" in flags:
            return "avx-vnni"
        if "avx512bw" in flags:
            return "avx512"
        return "avx2" if "avx2" in flags else "x86-64"
    if machine in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "arm64-i8mm"
        return "arm64-dotprod" if "asimddp" in flags else "arm64"
    return "other"


def cpu_identity() -> dict:
    """The CPU this process runs on: ``{"cpu", "machine", "isa_class", "isa_flags", "emulated"}`` (a fresh copy).

    ``isa_flags`` lists the :data:`ISA_FLAGS` the process sees (see the module docstring); ``emulated`` is true when
    ``/proc/cpuinfo`` claims features that CPUID does not report here (an emulator's ``-cpu`` model, or a VM mask).
    """
    found = _cpu_identity()
    return {**found, "isa_flags": list(found["isa_flags"])}


@lru_cache(maxsize=1)
def _cpu_identity() -> dict:
    model, host = _cpuinfo()
    seen = _process_features()
    machine = platform.machine()
    if seen is None:
        flags, emulated = host, False
    else:
        known = set(_NUMPY_NAMES.values())
        emulated = bool((host & known) - seen)
        # Features numpy does not track come from /proc/cpuinfo, unless that file describes another CPU.
        flags = seen | (set() if emulated else host - known)
    if model is None and sys.platform == "darwin":
        model = _darwin_model()
    return {"cpu": model or platform.processor() or machine, "machine": machine,
            "isa_class": classify(machine, flags), "isa_flags": tuple(f for f in ISA_FLAGS if f in flags),
            "emulated": emulated}


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_threads(threads: int | None, component: str) -> tuple[int | None, str | None]:
    """``threads`` capped at :func:`usable_cpus`, and the one-line notice to show when it was capped (else ``None``).

    Thousands of threads cost gigabytes and time nothing real (ONNX Runtime was seen to crash under a memory limit),
    and a config written for a bigger machine should still run here: so the count is capped, never refused.
    """
    limit = usable_cpus()
    if threads is None or isinstance(threads, bool) or not isinstance(threads, int) or threads <= limit:
        return threads, None
    return limit, (f"{component} | --threads {threads} is more than the {limit} CPU(s) this process may use; "
                   f"running with {limit}")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""ISA flags (as :func:`environment_info` names them) of a native BF16 GEMM path."""


def has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16, AMX, or Arm's BF16)."""
    return bool(set(_cpu_identity()["isa_flags"]) & set(BF16_FLAGS))


def isa_class() -> str:
    """This process's :data:`ISA_CLASSES` key."""
    return _cpu_identity()["isa_class"]


def environment_info() -> dict:
    """Platform, CPU (:func:`cpu_identity`) and installed package versions (without importing the packages)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    cpu = cpu_identity()
    return {
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": cpu["machine"],
        "cpu": cpu["cpu"],
        "cpu_count": os.cpu_count(),
        "isa_class": cpu["isa_class"],
        "isa_flags": list(cpu["isa_flags"]),
        "emulated": cpu["emulated"],
        "versions": versions,
    }
