"""The environment record stamped on reports and benchmark results."""

from __future__ import annotations

import numpy as np

from ffnet_deploy.environment import environment_info


def test_environment_info_has_cpu_flags_and_versions():
    env = environment_info()
    assert env["versions"]["python"] and env["versions"]["numpy"] == np.__version__
    assert env["versions"]["torch"] is not None
    assert isinstance(env["isa_flags"], list) and env["cpu"]



def test_isa_class_follows_the_int8_relevant_flags():
    from ffnet_deploy.environment import ISA_CLASSES, classify

    cases = {
        ("x86_64", frozenset({"avx2", "fma"})): "avx2",
        ("x86_64", frozenset({"avx2", "avx512f", "avx512bw"})): "avx512",
        ("x86_64", frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"})): "avx512-vnni",
        ("x86_64", frozenset({"avx2", "avx_vnni"})): "avx-vnni",
        ("x86_64", frozenset({"avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})): "amx",
        ("x86_64", frozenset({"sse4_2"})): "x86-64",
        ("aarch64", frozenset({"asimd"})): "arm64",
        ("arm64", frozenset({"asimd", "asimddp"})): "arm64-dotprod",
        ("aarch64", frozenset({"asimd", "asimddp", "i8mm"})): "arm64-i8mm",
        ("riscv64", frozenset()): "other",
    }
    for (machine, flags), want in cases.items():
        assert classify(machine, flags) == want, (machine, flags)
    assert set(cases.values()) == set(ISA_CLASSES)


def test_cpu_identity_reads_what_the_process_sees(monkeypatch):
    """/proc/cpuinfo describes the host; CPUID (numpy's dispatcher) the CPU this process runs on. When the host
    claims more than the process sees (qemu's -cpu model), the process view wins and the result says emulated."""
    from ffnet_deploy import environment

    host = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"}
    monkeypatch.setattr(environment, "_cpuinfo", lambda: ("Host CPU", set(host)))
    monkeypatch.setattr(environment, "_process_features", lambda: {"avx2", "fma"})
    monkeypatch.setattr(environment.platform, "machine", lambda: "x86_64")
    environment._cpu_identity.cache_clear()
    try:
        cpu = environment.cpu_identity()
        assert cpu["isa_class"] == "avx2" and cpu["emulated"] is True
        assert "amx_int8" not in cpu["isa_flags"] and "avx512_vnni" not in cpu["isa_flags"]
        # Agreeing sources: flags numpy does not track (AMX) come from /proc/cpuinfo.
        monkeypatch.setattr(environment, "_process_features", lambda: host - {"amx_int8"})
        environment._cpu_identity.cache_clear()
        cpu = environment.cpu_identity()
        assert cpu["isa_class"] == "amx" and cpu["emulated"] is False and cpu["cpu"] == "Host CPU"
        cpu["isa_flags"].append("mutated")  # a copy: callers cannot change what others read
        assert "mutated" not in environment.cpu_identity()["isa_flags"]
    finally:
        environment._cpu_identity.cache_clear()


def test_thread_counts_beyond_the_usable_cpus_are_capped_and_said(tmp_path):
    """``--threads 100000`` reached 10 GB and grew: the count is capped at the CPUs this process may use, and the
    runner says so (a deploy.toml written for a bigger machine still runs here)."""
    import numpy as np

    from ffnet_deploy.environment import cap_threads, usable_cpus
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters import ExportConfig
    from ffnet_deploy.runtimes import create_runner

    limit = usable_cpus()
    assert cap_threads(limit, "test") == (limit, None) and cap_threads(None, "test") == (None, None)
    capped, note = cap_threads(100000, "bench")
    assert capped == limit and f"running with {limit}" in note
    art = export(ExportConfig("onnx", tmp_path / "m", resolution=64, check_parity=False), None, "ffnet_test")
    with create_runner("onnxruntime", art.output, threads=100000) as runner:
        assert runner.threads == limit and any("100000" in n for n in runner.notices)
        runner.infer({"images": np.zeros((1, 3, 64, 64), np.float32)})
