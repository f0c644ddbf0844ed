"""A fork server for the tests that run the CLI in processes of their own (a signal, a kill, a race between two).

A fresh interpreter pays torch's and the backends' imports again, several seconds of CPU each time. The server imports
them once (it runs no torch op, so forking it is safe) and forks one child per job: the child sets up its case (the
job's Python ``setup`` code), runs ``main(args)`` (or nothing, when ``args`` is ``None``: the setup is the case) and
leaves with its exit code, its output in a log file. :meth:`ForkServer.run` waits for the child;
:meth:`ForkServer.start` returns at once with a :class:`Child` to signal and :meth:`ForkServer.wait` for.

One server per pytest process (the ``server`` fixture of tests/conftest.py), shared by every module that forks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import json, os, sys, traceback
import torch, onnx, onnxruntime  # imported once here; no torch op runs in this process, so forking it is safe
try:
    import onnxsim
except ImportError:
    pass
import ffnet_deploy.cli, ffnet_deploy.export, ffnet_deploy.exporters.onnx, ffnet_deploy.validate.engine
# what a forked pipeline run loads on first use (the report's plots): each child would pay it again
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot, ffnet_deploy.pipeline.engine, ffnet_deploy.pipeline.report
# and torch._dynamo, which torch imports on the first call of a function it keeps out of compilation (the pipeline's
# MAC count, through FlopCounterMode): about 0.9 s a child; importing it starts no thread
import torch._dynamo
# the CLI's click command, built once here instead of once in every child (ffnet_deploy.cli._main.command: about 40 ms)
import ffnet_deploy.cli._main
ffnet_deploy.cli._main.command()
# what was imported is frozen out of the cycle collector (tests/conftest.py, pytest_collection_finish): a child's
# collections skip it, and its pages stay shared with the server's instead of being written by the collector
import gc
gc.collect()
gc.freeze()

for line in sys.stdin:
    job = json.loads(line)
    if "wait" in job:  # the exit code of a child started with "detach"
        _, status = os.waitpid(job["wait"], 0)
        print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
        continue
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # there before the client hears the PID
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(job["cwd"])
            os.environ.update(job["env"])
            torch.set_num_threads(1)
            exec(job["setup"], {})
            code = ffnet_deploy.cli.main(job["args"]) if job["args"] is not None else 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(fd)
    if job["detach"]:  # the client waits for it later ("wait"): it runs beside the next jobs
        print(json.dumps(pid), flush=True)
        continue
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


@dataclass(frozen=True)
class Child:
    """A job's forked process: its PID (signal it with ``os.kill``) and the file its stdout and stderr go to."""

    pid: int
    log: Path

    def alive(self) -> bool:
        """Whether it still runs (an ended child the server has not waited for yet is a zombie, not alive)."""
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"

    def wait_until(self, reached: Callable[[], bool], what: str, timeout: float = 300) -> None:
        """Return once ``reached()`` holds; fail with the child's output if it ended first or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while not reached():
            assert self.alive(), f"the child ended before {what}: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s: {self.log.read_text()[-2000:]}"
            time.sleep(0.05)

    def wait_for_line(self, text: str, timeout: float = 300) -> None:
        """Return once the child's output holds ``text`` (:meth:`wait_until`)."""
        self.wait_until(lambda: text in self.log.read_text(), repr(text), timeout)


class ForkServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        self.count = 0

    def _send(self, job: dict) -> object:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def _job(self, args: list[str] | None, cwd: Path, env: dict[str, str] | None, setup: str, detach: bool) -> dict:
        self.count += 1
        log = self.folder / f"log-{self.count}.txt"
        return {"args": args, "cwd": str(cwd), "env": env or {}, "log": str(log), "setup": setup, "detach": detach}

    def run(self, args: list[str] | None, cwd: Path, env: dict[str, str] | None = None,
            setup: str = "") -> tuple[int, str]:
        """Run ``ffnet-deploy ARGS`` in a forked child, after the Python code ``setup``.

        Returns:
            The exit code (``-signum`` when a signal killed it) and its stdout and stderr.
        """
        job = self._job(args, cwd, env, setup, detach=False)
        code = self._send(job)
        return code, Path(job["log"]).read_text()

    def start(self, args: list[str] | None, cwd: Path, env: dict[str, str] | None = None, setup: str = "") -> Child:
        """Like :meth:`run`, but return as soon as the child runs; :meth:`wait` for it."""
        job = self._job(args, cwd, env, setup, detach=True)
        return Child(self._send(job), Path(job["log"]))

    def wait(self, child: Child) -> tuple[int, str]:
        """The exit code of a :meth:`start` child (``-signum`` when a signal killed it), once it ended, and its
        output."""
        return self._send({"wait": child.pid}), child.log.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
