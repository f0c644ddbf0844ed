"""``pipeline --executor ray`` on a local Ray (2 CPUs): the same report as a local run, an unplaceable job, a killed
worker (:mod:`ffnet_deploy.pipeline.distributed`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ffnet_deploy.cli import main
from tests.pipeline.conftest import SINGLE_ARGS
from tests.pipeline.test_pipeline import _comparable

pytest.importorskip("ray", reason="needs Ray: pip install 'ffnet-deploy[ray]'")

# One xdist worker runs them all, one after another (``--dist loadgroup``): _ray_workers() counts this machine's Ray
# worker processes, which must be this file's own.
pytestmark = pytest.mark.xdist_group("ray")

COMMON = ["--precisions", "fp32,int8", "--calib", "digits", "--calib-size", "128", "--eval-data", "digits",
          "--eval-limit", "200", "--no-bench", "--quiet"]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _artifact_intact(out: Path, job: dict) -> None:
    """The artifact the record names is in ``out``, every file as its manifest recorded it."""
    from ffnet_deploy.pipeline.engine import artifact_intact

    assert artifact_intact(out / job["artifact"]["path"]), job


def test_ray_report_equals_a_local_run_and_an_unplaceable_job_is_skipped(tmp_path, demo_checkpoint_path, single_run):
    # the local run is the session's single_run: `pipeline --checkpoint <demo> --formats onnx *COMMON` (conftest)
    assert SINGLE_ARGS == ["--formats", "onnx", *COMMON]
    args = ["pipeline", "--checkpoint", str(demo_checkpoint_path), *COMMON]
    assert main([*args, "--formats", "onnx,tensorrt", "--output", str(tmp_path / "ray"), "--executor", "ray",
                 "--ray-wait", "3"]) == 0
    local, ray = _results(single_run), _results(tmp_path / "ray")
    onnx_only, expected = _comparable({**ray, "jobs": [j for j in ray["jobs"] if j["format"] == "onnx"]}), \
        _comparable(local)
    onnx_only["recommendations"] = [r for r in onnx_only["recommendations"] if r["runtime"] != "tensorrt"]
    # Ray gives a 1-CPU task one OpenMP thread: sums run in another order, so the float errors (1e-7 for fp32) agree
    # to rounding; what counts images (accuracy, agreement) agrees exactly
    for jid, job in expected["jobs"].items():
        got, want = onnx_only["jobs"][jid].pop("metrics"), job.pop("metrics")
        assert got.keys() == want.keys(), jid
        for key, value in want.items():
            rounding = any(word in key for word in ("error", "psnr", "cosine"))
            assert got[key] == (pytest.approx(value, rel=1e-2, abs=1e-6) if rounding else value), (jid, key)
    assert onnx_only == expected
    jobs = {j["id"]: j for j in ray["jobs"]}
    # A TensorRT job needs an NVIDIA GPU (its engine is built there; a local run on this CPU machine makes only the
    # engine's ONNX): no node of the local Ray has one, so it is skipped as unplaceable, naming the device
    for jid in ("tensorrt-fp32", "tensorrt-int8"):
        assert jobs[jid]["status"] == "skipped" and "'nvidia-gpu'" in jobs[jid]["reason"], jobs[jid]
    for jid in ("onnx-fp32", "onnx-int8"):
        assert jobs[jid]["ran_on"], jobs[jid]  # where it ran, in the report too
        _artifact_intact(tmp_path / "ray", jobs[jid])
    assert "Ran on" in (tmp_path / "ray" / "index.md").read_text()
    assert "Ran on" not in (single_run / "index.md").read_text()


def test_a_killed_worker_is_retried_and_nothing_half_written_is_published(tmp_path, demo_checkpoint_path, server):
    """SIGKILL of the Ray worker while it writes the manifest (the artifact is staged, not yet published). The driver
    is a process of its own, forked from the fork server (tests/forkserver.py); Ray starts its workers fresh."""
    once = tmp_path / "fault-fired"
    out = tmp_path / "ray"
    code, log = server.run(
        ["pipeline", "--checkpoint", str(demo_checkpoint_path), "--formats", "onnx", "--precisions", "fp32",
         "--eval-data", "digits", "--eval-limit", "100", "--no-bench", "--quiet", "--output", str(out), "--executor",
         "ray"], tmp_path, {"FFNET_DEPLOY_FAULT": f"manifest:SIGKILL:{once}"})
    assert once.exists(), "the fault never fired: no worker was killed"
    assert code == 0, log[-2000:]
    (job,) = _results(out)["jobs"]
    assert job["status"] == "passed"
    _artifact_intact(out, job)
    # the killed attempt's staging folder went with the retry's export; nothing else sits beside the artifact
    job_folder = out / ".pipeline" / "ray" / "onnx-fp32" / "artifacts"
    assert sorted(p.name for p in job_folder.iterdir()) == ["onnx-fp32"]


@pytest.mark.parametrize("args, message", [
    (["--executor", "spark"], "choose one of local, ray"),
    (["--ray-address", "ray://x:10001"], "--ray-address applies to --executor ray"),
    (["--executor", "ray", "--ray-wait", "nan"], "--ray-wait nan"),
])
def test_ray_user_errors_exit_1_with_one_line(tmp_path, demo_checkpoint_path, capsys, args, message):
    code = main(["pipeline", "--checkpoint", str(demo_checkpoint_path), "--output", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_ctrl_c_cancels_the_tasks_and_keeps_what_finished(tmp_path, demo_checkpoint_path, server):
    """Both drivers are processes of their own, forked from the fork server (tests/forkserver.py)."""
    out = tmp_path / "ray"
    cmd = ["pipeline", "--checkpoint", str(demo_checkpoint_path), "--formats", "onnx", "--precisions",
           "fp32,fp16,int8", "--calib", "digits", "--calib-size", "128", "--eval-data", "digits", "--eval-limit",
           "100", "--no-bench", "--output", str(out), "--executor", "ray"]
    env = {"COLUMNS": "200"}
    child = server.start(cmd, tmp_path, env)
    child.wait_for_line(": build done on ")  # one job finished, the others still run
    os.kill(child.pid, signal.SIGINT)
    code, log = server.wait(child)
    assert code == 128 + signal.SIGINT, log[-3000:]
    rest = log[log.index(": build done on "):]
    assert "kept the finished job" in rest and "--resume" in rest, rest
    assert not (out / "results.json").exists()  # no report names what did not finish
    # the unfinished tasks died with the driver: no Ray worker is left running them
    deadline = time.monotonic() + 15
    while _ray_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_workers(), _ray_workers()

    code, log = server.run([*cmd, "--resume", "--quiet"], tmp_path, env)
    assert code == 0, log[-2000:]
    assert {j["id"]: j["status"] for j in _results(out)["jobs"]} == {
        "onnx-fp32": "passed", "onnx-fp16": "passed", "onnx-int8": "passed"}


def _ray_workers() -> list[str]:
    """The command lines of this machine's Ray worker processes (``ray::<task>``)."""
    found = subprocess.run(["pgrep", "-af", "ray::"], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def _serve(reply: bytes) -> tuple[str, threading.Event]:
    """A local TCP server that answers every connection with ``reply`` and then holds it open until stopped."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def loop() -> None:
        server.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.sendall(reply)
            held.append(conn)
        for conn in held:
            conn.close()
        server.close()

    threading.Thread(target=loop, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}", stop


# an HTTP/2 SETTINGS frame, what any gRPC server sends first: it passes the quick probe, and then ray.init would wait
_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("kind, message", [
    ("refused", "no Ray cluster answers at 127.0.0.1:1"),
    ("not-host-port", "is not HOST:PORT"),
    ("not-grpc", "answers but is not a Ray cluster"),
    ("grpc-not-ray", "no Ray cluster answered at"),
])
def test_an_unreachable_ray_address_is_one_line_and_bounded(tmp_path, demo_checkpoint_path, capsys, monkeypatch,
                                                           kind, message):
    # before the probe, `--ray-address 127.0.0.1:1` made ray.init retry without end
    from ffnet_deploy.pipeline import distributed

    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 3.0)
    stop = None
    if kind == "refused":
        address = "127.0.0.1:1"
    elif kind == "not-host-port":
        address = "headnode"
    else:
        address, stop = _serve(b"HTTP/1.1 400 Bad Request\r\n\r\n" if kind == "not-grpc" else _SETTINGS)
    out = tmp_path / "o"
    started = time.monotonic()
    try:
        code = main(["pipeline", "--checkpoint", str(demo_checkpoint_path), "--formats", "onnx", "--precisions",
                     "fp32", "--no-bench", "--output", str(out), "--executor", "ray", "--ray-address", address])
    finally:
        if stop is not None:
            stop.set()
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert time.monotonic() - started < 60
    assert not out.exists()  # refused before anything was written
