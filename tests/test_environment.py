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


def test_thread_counts_beyond_the_usable_cpus_are_refused_in_one_line(capsys, tmp_path):
    """``--threads 100000`` reached 10 GB and grew: refused before anything is built."""
    import pytest

    from ffnet_deploy.cli import main
    from ffnet_deploy.environment import check_threads, usable_cpus
    from ffnet_deploy.errors import ConfigError
    from ffnet_deploy.runtimes import create_runner

    limit = usable_cpus()
    check_threads(limit, "test")  # the limit itself is fine
    with pytest.raises(ConfigError, match=f"more than the {limit} CPU"):
        create_runner("onnxruntime", "model.onnx", threads=limit + 1)
    for argv in (["bench", "--variant", "ffnet_test", "--threads", "100000", "--out", str(tmp_path / "b")],
                 ["pipeline", "--demo", "--threads", "100000", "--output", str(tmp_path / "p"), "--plan"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (1, 2) and f"pass at most --threads {limit}" in err and "Traceback" not in err, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "p").exists()
