"""The pipeline's jobs on a Ray cluster (``pipeline --executor ray``): one task per job, one report.

The plan of a run (:func:`~ffnet_deploy.pipeline.config.plan_jobs`) is a list of independent jobs, each of which
``pipeline --only`` can run alone into an output folder, and ``report merge`` assembles the report of such folders
(:func:`~ffnet_deploy.pipeline.engine.merge_runs`). The Ray executor is that, on a cluster:

- The driver claims ``--output`` as a local run would (``--resume`` and ``--force`` mean the same), then submits one
  task per job. A task runs :func:`~ffnet_deploy.pipeline.engine.run_pipeline` for its job alone into the job's own
  folder, ``OUTPUT/.pipeline/ray/<job>``: the location through which artifacts and records move, so ``--output``
  must be a folder every node sees (a shared file system; on one machine, any folder).
- A job is placed by what it needs. A job whose format needs a device declares it as a Ray custom resource named
  after the device kind (:attr:`~ffnet_deploy.artifact.formats.FormatSpec.device`: ``mac``, ``nvidia-gpu``,
  ``android``); give a node one with ``ray start --resources='{"nvidia-gpu": 1}'``. With ``--bench``, the export and
  the parity check run as one task and the timing as a second one that asks for every CPU of one node, so that
  nothing else runs on that node while it times.
- A task that raises is run again up to ``retries`` times (a worker or node that dies is retried by Ray itself, as
  often); after that its job is ``error`` with the reason, and the other jobs go on. A job that no node can take
  (no node has its device) is ``skipped`` with the device named once ``placement_timeout`` seconds passed. An
  interrupted or killed task leaves nothing half-written: its export publishes atomically, and the retry continues
  the job's folder as ``--resume`` would.
- When every task ended, the driver verifies each job folder (every file against the sha256 its records hold, as
  ``--resume`` does) and merges them into ``--output``: the same layout, records and report as a local run, plus
  where each job ran (``jobs[].ran_on``).

Ray is the ``ray`` extra; without it ``--executor ray`` says so in one line.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ffnet_deploy.errors import ConfigError, FFNetDeployError, Interrupted, first_line, require
from ffnet_deploy.interrupts import deferred
from ffnet_deploy.pipeline.config import Job, PipelineConfig, job_device
from ffnet_deploy.pipeline.state import STATE_DIR
from ffnet_deploy.progress import TextLog

__all__ = ["EXECUTORS", "RAY_DIR", "check_executor_options", "run_job", "run_on_ray"]

EXECUTORS = ("local", "ray")
"""What ``pipeline --executor`` takes: this process, or a Ray cluster."""

RAY_DIR = "ray"
"""The job folders' parent, inside the output's ``.pipeline`` folder."""

CPU = "cpu"


def check_executor_options(executor: str, ray_address: str | None, ray_wait: float) -> None:
    """Refuse an unknown executor, ``--ray-address`` without ``--executor ray``, and a ``--ray-wait`` that is not a
    positive number of seconds."""
    import math

    if executor not in EXECUTORS:
        raise ConfigError(f"pipeline | --executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if ray_address and executor != "ray":
        raise ConfigError("pipeline | --ray-address applies to --executor ray; add it")
    if not (math.isfinite(ray_wait) and ray_wait > 0):
        raise ConfigError(f"pipeline | --ray-wait {ray_wait}: pass a positive number of seconds")


@dataclass
class _Task:
    """One submitted Ray task of a job: its phase (``build``: export + validate, ``bench``), attempt and ref."""

    job: Job
    phase: str
    attempt: int
    ref: Any
    device: str
    submitted: float


def _absolute(config: PipelineConfig) -> PipelineConfig:
    """``config`` with every path it names made absolute: a worker does not run in the driver's folder."""
    def data(value: str | None) -> str | None:
        return str(Path(value).resolve()) if value and Path(value).exists() else value

    return replace(config, output=config.output.resolve(),
                   checkpoint=config.checkpoint.resolve() if config.checkpoint else None,
                   calib=data(config.calib), eval_data=data(config.eval_data))


def run_job(config: PipelineConfig, folder: str, selector: str, bench: bool, command: str) -> dict:
    """A Ray task: run the job ``selector`` alone into ``folder`` (continued when an earlier attempt began it).

    Returns:
        Where it ran (``host``).
    """
    out = Path(folder)
    resume = (out / STATE_DIR / "state.json").is_file()
    job_config = replace(config, output=out, only=(selector,), bench=bench, resume=resume, force=False)
    from ffnet_deploy.pipeline.engine import run_pipeline

    run_pipeline(job_config, command=command)  # its verdicts are in its records; the driver merges them
    return {"host": socket.gethostname()}


def _import_ray() -> Any:
    return require("ray", "ray", "pipeline --executor ray")


def _start(ray: Any, address: str | None) -> None:
    from ffnet_deploy.environment import usable_cpus

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting to a remote service
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=usable_cpus(), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ConfigError(f"pipeline | cannot start {where}: {first_line(err)}; "
                          "check --ray-address (or leave it out for a local Ray)") from None


# The HTTP/2 connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS and its client server both
# are) answers with a SETTINGS frame of its own, type 0x4 in byte 3 of the 9-byte frame header.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
PROBE_TIMEOUT_S = 5.0


def _probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse an address where no Ray cluster can answer, before ``ray.init``: given an address where nothing
    listens, or a server that is not Ray's, ``ray.init`` retries without end (seen with Ray 2.60).

    Raises:
        ConfigError: the address is not ``HOST:PORT`` / ``ray://HOST:PORT``, nothing accepts a connection there
            within ``timeout`` seconds, or what answers does not speak gRPC.
    """
    hostport = address.removeprefix("ray://")
    host, _, port_text = hostport.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"pipeline | --ray-address {address!r} is not HOST:PORT; give the head node's GCS address "
                          "(e.g. 10.0.0.5:6379), ray://HOST:10001 for Ray Client, or auto")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(_H2_PREFACE)
            reply = conn.recv(9)
    except OSError as err:
        raise ConfigError(f"pipeline | no Ray cluster answers at {hostport}: {first_line(err)}; start one there "
                          "(`ray start --head`) or check --ray-address") from None
    if len(reply) < 4 or reply[3] != 4:
        raise ConfigError(f"pipeline | {hostport} answers but is not a Ray cluster (no gRPC server there); "
                          "check --ray-address (the head's GCS port is 6379 by default)")
    _connect_in_child(address, CONNECT_TIMEOUT_S)


# A gRPC server that is not Ray's (or a proxy that answers for any address) passes the probe above and still makes
# ray.init wait without end; a child process that is killed after this long bounds that wait.
CONNECT_TIMEOUT_S = 30.0
_CONNECT = ("import sys, ray; ray.init(address=sys.argv[1], include_dashboard=False, logging_level='ERROR'); "
            "ray.shutdown()")


def _connect_in_child(address: str, timeout: float) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        done = subprocess.run([sys.executable, "-c", _CONNECT, address], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"pipeline | no Ray cluster answered at {address} within {timeout:.0f} s; check "
                          "--ray-address (`ray status` on the head prints its address)") from None
    if done.returncode != 0:
        if "Authentication token" in done.stderr:
            raise ConfigError(f"pipeline | the Ray cluster at {address} refused this machine's auth token; set "
                              "RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the head's token")
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise ConfigError(f"pipeline | cannot connect to the Ray cluster at {address}: "
                          f"{lines[-1].strip() if lines else f'exit code {done.returncode}'}; check --ray-address")


def _bench_node(ray: Any, device: str, turn: int) -> tuple[str, float] | None:
    """A live node that has ``device`` (any for ``cpu``), chosen in turn, and its CPU count."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")
             and (device == CPU or n["Resources"].get(device))]
    if not nodes:
        return None
    node = sorted(nodes, key=lambda n: n["NodeID"])[turn % len(nodes)]
    return node["NodeID"], float(node["Resources"]["CPU"])


def _error_text(err: BaseException) -> str:
    """The one-line reason of a failed task: the user-facing message of the error it raised."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__


def run_on_ray(config: PipelineConfig, *, address: str | None = None, command: str = "", retries: int = 2,
               placement_timeout: float = 60.0, log: Callable[[str], None] | None = None) -> Any:
    """Run ``config``'s jobs as Ray tasks and write the report into ``config.output`` (module docstring).

    Returns:
        The :class:`~ffnet_deploy.pipeline.engine.Outcome` of the merged report.

    Raises:
        ConfigError: Ray missing or unreachable, unusable options or output folder (before any task runs).
        Interrupted: On Ctrl-C; the job ends with the driver (its tasks die with it) and every job that finished is
            kept for ``--resume``.
    """
    from ffnet_deploy.pipeline.engine import checked_inputs, log_kept, merge_runs, prepare_output

    say = log or (lambda _m: None)
    ray = _import_ray()
    if address and address != "auto":
        _probe(address)  # before anything is written: an unreachable cluster leaves the output as it was

    # the demo's checkpoint is trained (or taken from the cache) once, here; the tasks run that checkpoint
    config = _absolute(replace(checked_inputs(config, TextLog(say)), demo=False))
    with prepare_output(config) as kept:  # claimed (and --force applied) under the lock; merge_runs locks it again
        log_kept(kept, say)
    jobs = config.jobs()
    folders = {job.id: config.output / STATE_DIR / RAY_DIR / job.id for job in jobs}
    ray_dir = config.output / STATE_DIR / RAY_DIR
    if config.force and ray_dir.is_dir() and not ray_dir.is_symlink():  # the job folders an earlier run made here
        shutil.rmtree(ray_dir)
    for folder in folders.values():
        folder.parent.mkdir(parents=True, exist_ok=True)

    _start(ray, address)
    remote = ray.remote(run_job)
    ran_on: dict[str, str] = {}
    failed: dict[str, Any] = {}  # job id -> the JobRecord of a job no task finished
    pending: list[_Task] = []
    try:
        def submit(job: Job, phase: str, attempt: int) -> _Task:
            device = job_device(job, phase == "bench")
            options: dict[str, Any] = {"num_cpus": 1, "max_retries": retries, "retry_exceptions": False}
            if device != CPU:
                options["resources"] = {device: 1}
            if phase == "bench":  # the whole of one node: nothing else runs there while it times
                node = _bench_node(ray, device, len(ran_on))
                if node is not None:
                    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                    options["num_cpus"] = node[1]
                    options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node[0], soft=False)
            ref = remote.options(**options).remote(config, str(folders[job.id]), job.selector, phase == "bench",
                                                   command)
            return _Task(job, phase, attempt, ref, device, time.monotonic())

        pending.extend(submit(job, "build", 0) for job in jobs)
        while pending:
            done, _ = ray.wait([t.ref for t in pending], num_returns=1, timeout=1.0)
            now = time.monotonic()
            still: list[_Task] = []
            for task in pending:
                if task.ref in done:
                    try:
                        where = ray.get(task.ref)
                    except Exception as err:  # the task raised (after Ray's own retries of dead workers)
                        reason = _error_text(err)
                        if task.attempt < retries and not isinstance(getattr(err, "cause", None), FFNetDeployError):
                            say(f"{task.job.id}: {task.phase} failed ({reason}); retrying")
                            still.append(submit(task.job, task.phase, task.attempt + 1))
                        else:
                            failed[task.job.id] = _record(task.job, "error", f"{task.phase} failed on Ray: {reason}")
                            say(f"{task.job.id}: error: {reason}")
                        continue
                    ran_on[task.job.id] = where["host"]
                    say(f"{task.job.id}: {task.phase} done on {where['host']}")
                    if task.phase == "build" and config.bench:
                        still.append(submit(task.job, "bench", 0))
                elif task.device != CPU and now - task.submitted > placement_timeout \
                        and not ray.cluster_resources().get(task.device):
                    ray.cancel(task.ref, force=True)
                    failed[task.job.id] = _record(
                        task.job, "skipped", f"unplaceable: no node of the Ray cluster has a '{task.device}' "
                        f"resource, which a {task.job.format} job needs (start one with ray start --resources="
                        f"'{{\"{task.device}\": 1}}')")
                    say(f"{task.job.id}: skipped: no node has '{task.device}'")
                else:
                    still.append(task)
            pending = still
    except (KeyboardInterrupt, Interrupted, SystemError) as err:
        # Ray's C++ wait reports a signal raised in it as a SystemError caused by the Interrupted
        signal_error = err if isinstance(err, (KeyboardInterrupt, Interrupted)) else err.__cause__
        if not isinstance(signal_error, (KeyboardInterrupt, Interrupted)):
            raise
        # No ray.cancel here: with Ray 2.60 a force-cancel that races a task's own completion aborts this process
        # (RAY_CHECK "Tried to complete task that was not pending"; Ray's cancel/reply races, ray-project/ray#54798),
        # which killed the Ctrl-C test's driver about one run in two. The shutdown below ends the job instead, and Ray
        # kills the workers of a job whose driver is gone, on a local Ray and on a cluster alike.
        done = sorted(ran_on)
        kept = (f"kept the finished job{'s' if len(done) != 1 else ''} {', '.join(done)} in "
                f"{config.output / STATE_DIR / RAY_DIR}; rerun with --resume" if done else None)
        signum = signal_error.signum if isinstance(signal_error, Interrupted) else signal.SIGINT
        raise Interrupted(signum, kept) from None
    finally:
        with deferred():  # a second Ctrl-C must not leave the local Ray running
            ray.shutdown()

    from ffnet_deploy.pipeline.engine import artifact_intact, drop_other_jobs, load_jobs, write_job_location

    runs = []
    for job in jobs:
        folder = folders[job.id]
        if job.id in failed:
            continue
        records = [r for r in load_jobs(folder) if r.id == job.id] if (folder / "results.json").is_file() else []
        if not records:
            failed[job.id] = _record(job, "error", "its Ray task ended without a job record")
            continue
        artifact = records[0].artifact
        if artifact is not None and not artifact_intact(folder / artifact.path):
            failed[job.id] = _record(job, "error", f"its artifact in {folder} does not match its manifest's sha256")
            continue
        write_job_location(folder, job.id, ran_on.get(job.id))
        runs.append(folder)
    if not runs:
        reasons = "; ".join(f"{jid}: {r.reason}" for jid, r in failed.items())
        raise ConfigError(f"pipeline | no job finished on Ray ({reasons})")
    drop_other_jobs(config.output, [job.id for job in jobs])  # the report is of this run's jobs, as a local run's
    return merge_runs(runs, config.output, command=command, log=say, extra=list(failed.values()))


def _record(job: Job, status: str, reason: str) -> Any:
    from ffnet_deploy.pipeline.engine import new_record
    from ffnet_deploy.pipeline.results import JobRecord

    return JobRecord.model_validate({**new_record(job), "status": status, "reason": reason})
