"""A timing worker: one contender timed in a process of its own, with OpenMP told not to spin.

Eager PyTorch runs its CPU kernels on an OpenMP pool whose threads spin for a while after every call
(``OMP_WAIT_POLICY`` unset), taking the cores from whatever is timed next and swinging with the machine's load (fused
ffnet_1 at 2 threads, measured: 3387 / 1664 ms with torch's default settings, 212 / 242 ms with
``OMP_WAIT_POLICY=PASSIVE``). The policy is read once, when the pool starts, so in a process that has already imported
torch it can only be set in a new process: :class:`WorkerContender` starts ``python -m
ffnet_deploy.runtimes._worker`` with ``OMP_WAIT_POLICY=PASSIVE`` in its environment and times the contender there.

The parent and the worker speak one line at a time: the parent writes the job (JSON) as the first line, then
``run`` for each inference; the worker answers ``ok`` once the contender is loaded (and run once), then the time of
each inference in milliseconds, or ``error <one line>``. What libraries print goes to stderr, never into the answers.

A job is one of:

- ``{"kind": "torch", "model": <file written by torch.save>, "precision", "threads", "resolution", "feed": <.npy>}``:
  the ``torch`` runner on that module (``TorchRunner.bench_model`` for the precision); the time is the runner's own;
- ``{"kind": "call", "factory": "package.module:function", "args": [...], "threads"}``: ``function(*args)`` returns
  a zero-argument call (a GEMM of the roofline probe); the time is the call's wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.runtimes.timing import Contender, PeakMemory, _no_runner

WAIT_POLICY = "PASSIVE"
"""What the worker's OpenMP pool is told (``OMP_WAIT_POLICY``): sleep when idle instead of spinning."""


def _load(job: dict[str, Any]):
    """The zero-argument timed call of ``job`` and whether it reports its own time (a runner)."""
    if job["kind"] == "torch":
        import torch

        from ffnet_deploy.runtimes import create_runner
        from ffnet_deploy.runtimes.pytorch import TorchRunner

        # The file was written a moment ago by the parent process into its private temporary folder (never a user
        # file), so unpickling the module is trusted here.
        model = torch.load(job["model"], weights_only=False)
        runner = create_runner("torch", None, model=TorchRunner.bench_model(model, job["precision"]),
                               threads=job.get("threads"), resolution=job.get("resolution"))
        runner.activate()
        feed = {"images": np.load(job["feed"])}

        def run() -> float:
            runner.infer(feed)
            return float(runner.last_latency_ms)

        return run
    if job["kind"] == "call":
        import importlib

        module, _, name = job["factory"].partition(":")
        call = getattr(importlib.import_module(module), name)(*job.get("args", ()))
        if "torch" in sys.modules and job.get("threads"):
            sys.modules["torch"].set_num_threads(int(job["threads"]))

        def run() -> float:
            start = time.perf_counter()
            call()
            return (time.perf_counter() - start) * 1e3

        return run
    raise ValueError(f"unknown job kind {job.get('kind')!r}")


def main() -> None:
    """The worker's loop (``python -m ffnet_deploy.runtimes._worker``)."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the answers
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.readline())
    memory = PeakMemory()
    try:
        with memory:  # the worker's own peak: the engine's import, the model, the first inference
            run = _load(job)
            if job["kind"] == "torch" and job.get("threads"):
                import torch

                torch.set_num_threads(int(job["threads"]))
            run()
    except Exception as err:  # noqa: BLE001 - reported to the parent as the contender's error
        answers.write(f"error {_line(err)}\n")
        return
    answers.write(f"ok {memory.mb if memory.mb is not None else 'none'} {memory.method}\n")
    for line in sys.stdin:
        if line.strip() != "run":
            break
        try:
            answers.write(f"{run()!r}\n")
        except Exception as err:  # noqa: BLE001
            answers.write(f"error {_line(err)}\n")


def _line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".splitlines()
    return text[0] if text else type(err).__name__


class WorkerProcess:
    """The parent's end of one worker: start it with a job, ask for inferences, stop it."""

    def __init__(self, job: dict[str, Any]) -> None:
        env = {**os.environ, "OMP_WAIT_POLICY": WAIT_POLICY}
        # The worker imports this checkout's ffnet_deploy however the parent found it.
        import importlib.util

        package = importlib.util.find_spec("ffnet_deploy")
        root = str(Path(package.origin).resolve().parent.parent) if package and package.origin else ""
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # stderr goes to a file, not a pipe: a worker whose libraries print a lot would otherwise block on a full
        # pipe that nobody reads while the parent waits for its answer.
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "ffnet_deploy.runtimes._worker"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, bufsize=1)
        self._send(json.dumps(job))
        answer = self._receive()
        if answer.split(" ")[0] != "ok":
            self.close()
            raise RuntimeError(answer.removeprefix("error ") or "the timing worker stopped")
        _ok, peak, *method = answer.split(" ")
        self.peak_mb = None if peak == "none" else float(peak)  # the worker's own, from its start
        self.memory_method = " ".join(method)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            self.proc.wait()
            self._err.seek(0)
            last = [ln for ln in self._err.read().splitlines() if ln.strip()]
            return "error " + (last[-1] if last else "the timing worker stopped")
        return line

    def run(self) -> float:
        """One inference in the worker; its time in ms."""
        self._send("run")
        answer = self._receive()
        if answer.startswith("error"):
            raise RuntimeError(answer.removeprefix("error ").strip())
        return float(answer)

    def close(self) -> None:
        """Stop the worker (closing its input ends its loop; it is killed if it does not go)."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            self._err.close()


class WorkerContender(Contender):
    """A contender timed in a worker process whose OpenMP pool does not spin (this module).

    ``job`` is the worker's job (``_worker.torch_job``, or a ``"call"`` job); ``cleanup`` runs when it is closed
    (removing the job's temporary files). Each sample is the worker's own time of the inference, so the pipe between
    the processes is not timed.
    """

    def __init__(self, name: str, job: dict[str, Any], cleanup: Callable[[], None] | None = None) -> None:
        super().__init__(name, make_runner=_no_runner, feed={})
        self.job = job
        self.cleanup = cleanup
        self.worker: Any = None

    def load(self) -> None:
        self.worker = WorkerProcess(self.job)

    def run_once(self) -> float:
        return self.worker.run()

    def pids(self) -> tuple[int, ...]:
        return (self.worker.pid,) if self.worker is not None else ()

    def own_memory(self) -> tuple[float | None, str] | None:
        if self.worker is None:
            return None
        return self.worker.peak_mb, f"{self.worker.memory_method} of the worker process (its engine import included)"

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.cleanup is not None:
            self.cleanup()
            self.cleanup = None


def torch_job(model: Any, precision: str, threads: int | None, resolution: int | None, feed: np.ndarray,
              folder: Path) -> dict[str, Any]:
    """Write ``model`` and ``feed`` into ``folder`` (each atomically: written under a temporary name, then renamed)
    and return the worker job that runs them."""
    import torch

    model_file, feed_file = folder / "model.pt", folder / "feed.npy"
    partial = folder / "model.pt.partial"
    torch.save(model, partial)
    os.replace(partial, model_file)
    partial = folder / "feed.partial.npy"
    np.save(partial, feed)
    os.replace(partial, feed_file)
    return {"kind": "torch", "model": str(model_file), "precision": precision, "threads": threads,
            "resolution": resolution, "feed": str(feed_file)}


def temp_folder() -> Path:
    """A private temporary folder for one worker's files (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix="ffnet-deploy-worker-"))


if __name__ == "__main__":
    main()
