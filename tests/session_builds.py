"""The suite's expensive set-ups, each made once per test run and shared by every pytest-xdist worker.

A build is a function of a folder that fills it and returns a JSON value: the demo training, ``pipeline --demo`` and
the pipeline runs that many tests copy. Its outputs are read-only by convention, like any session fixture's.

:func:`shared` makes a build at most once per run: under a file lock in the folder every worker sees (the parent of
the workers' base temporary folders; the base folder itself without xdist), and marked done only once it succeeded.
A process that dies mid-build releases the lock with it, and the next caller starts the build again in a clean folder.

At collection, :func:`start_background` starts one process (``python -m tests.session_builds ROOT NAME...``) that
makes the builds the selected tests need, in order, while the workers run the tests that need none: on 2 cores the
demo training (single-threaded, about 45 s) and ``pipeline --demo`` (about 100 s) run beside the other tests, not
ahead of them. A fixture that gets to a build first makes it itself; the background process then finds it done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent

# The pipeline runs' arguments (tests/pipeline/conftest.py imports them from here). BASE: P of issue 18 on the digits
# demo model, kept small: ONNX fp32 + int8, 64 calibration images, 100 evaluation images. SINGLE: the single local run
# that merged --only runs and a Ray run are compared with: 128 calibration images, 200 evaluation images.
BASE_ARGS = ["--formats", "onnx", "--precisions", "fp32,int8", "--calib", "digits", "--calib-size", "64",
             "--eval-data", "digits", "--eval-limit", "100", "--no-bench", "--quiet"]
SINGLE_ARGS = ["--formats", "onnx", "--precisions", "fp32,int8", "--calib", "digits", "--calib-size", "128",
               "--eval-data", "digits", "--eval-limit", "200", "--no-bench", "--quiet"]
DEMO_BENCH = ["--bench-iters", "5", "--bench-time", "0.2"]
DEMO_RUN = "demo-run"
"""The xdist group of the tests that use the demo run's folder (``pytest.mark.xdist_group(DEMO_RUN)``): one worker
runs them in collection order, so the tests that read its artifacts come before those that resume it in place."""


def shared_root(tmp_path_factory) -> Path:
    """The folder every worker of this run sees: the workers' base folders sit in it (``popen-gw0``, ...)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def _cache(folder: Path):
    """``FFNET_DEPLOY_CACHE`` set to ``folder`` inside the block, the caller's value restored after it."""
    old = os.environ.get("FFNET_DEPLOY_CACHE")
    os.environ["FFNET_DEPLOY_CACHE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FFNET_DEPLOY_CACHE", None)
        else:
            os.environ["FFNET_DEPLOY_CACHE"] = old


def run_cpus() -> set[int] | None:
    """Every CPU of the run, where a pinned xdist worker (tests/conftest.py) or a process it started runs on fewer;
    ``None`` elsewhere (nothing was pinned)."""
    cpus = os.environ.get("FFNET_DEPLOY_TEST_CPUS")
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None
    return {int(c) for c in cpus.split(",")}


@contextmanager
def all_cpus():
    """Inside the block, a pinned xdist worker (tests/conftest.py) may run on every CPU of the run again and torch uses
    them all; elsewhere it changes nothing. The affinity and torch's thread count are restored after it."""
    every = run_cpus()
    if every is None:
        yield
        return
    import torch

    mine, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, every)
    torch.set_num_threads(len(every))
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------------------
# The builds: each fills its folder and returns what the fixture needs besides the folder
# --------------------------------------------------------------------------------------------------------------------

def _demo(folder: Path, root: Path) -> dict:
    """The demo model, trained into a cache of its own (the user's cache is neither read nor written)."""
    from ffnet_deploy.demo import demo_checkpoint

    with _cache(folder / "cache"):
        return demo_checkpoint().to_dict()


def _demo_path(root: Path) -> Path:
    return Path(shared(root, "demo")["path"])


def _demo_run(folder: Path, root: Path) -> dict:
    """``pipeline --demo`` with a small bench budget; the demo checkpoint comes from the demo build's cache."""
    from ffnet_deploy.cli import main

    demo = shared(root, "demo")
    with _cache(Path(demo["cache_path"]).parent.parent), _captured_fds(folder) as printed:
        start = time.perf_counter()
        code = main(["pipeline", "--demo", "--output", str(folder / "demo"), "--quiet", *DEMO_BENCH])
    return {"code": code, "seconds": time.perf_counter() - start, **printed}


@contextmanager
def _captured_fds(folder: Path):
    """What the block writes to stdout and stderr, as ``stdout`` and ``stderr`` in the yielded dict once the block
    ends (also copied to the caller's streams): descriptors 1 and 2 (native code's) and Python's ``sys.stdout`` and
    ``sys.stderr``, which in a pytest worker are its capture's, not the descriptors."""
    printed: dict[str, str] = {}
    files = {name: folder / f"{name}.txt" for name in ("stdout", "stderr")}
    saved, streams = {}, {}
    for fd, name in ((1, "stdout"), (2, "stderr")):
        getattr(sys, name).flush()
        saved[fd] = os.dup(fd)
        with open(files[name], "wb") as f:
            os.dup2(f.fileno(), fd)
        streams[name] = getattr(sys, name)
        setattr(sys, name, open(fd, "w", buffering=1, closefd=False))
    try:
        yield printed
    finally:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            getattr(sys, name).close()  # flushes; the descriptor stays open (closefd=False)
            setattr(sys, name, streams[name])
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            printed[name] = files[name].read_text(errors="replace")
            streams[name].write(printed[name])


def demo_run_artifact(demo_run: tuple[Path, int, float], job: str) -> tuple[Path, dict]:
    """The artifact folder of job ``job`` (``executorch-int8``) of the ``demo_run`` fixture's run, and its manifest.
    Read-only: its tests are in the :data:`DEMO_RUN` group, which also resumes that run in place."""
    out, code, _ = demo_run
    assert code == 0, f"pipeline --demo exited {code}"
    folder = out / "artifacts" / job
    return folder, json.loads((folder / "manifest.json").read_text())


def demo_run_int8(demo_run: tuple[Path, int, float], job: str) -> tuple[Path, dict, Path]:
    """:func:`demo_run_artifact` of an INT8 job, and the calibration cache file its export wrote."""
    folder, m = demo_run_artifact(demo_run, job)
    return folder, m, Path(m["details"]["quantization"]["statistics_cache"]["path"])


def _pipeline(name: str, args: list[str], expect: int) -> Callable[[Path, Path], dict]:
    def build(folder: Path, root: Path) -> dict:
        from ffnet_deploy.cli import main

        code = main(["pipeline", "-c", str(_demo_path(root)), *args, "-o", str(folder / name)])
        assert code == expect, f"pipeline {name} exited {code}, not {expect}"
        return {"code": code}
    return build


def _failing_run(folder: Path, root: Path) -> dict:
    """A run whose onnx-int8 really fails parity: calibrated on one black image."""
    from PIL import Image

    calib = folder / "black"
    calib.mkdir()
    Image.new("RGB", (32, 32)).save(calib / "black.png")
    args = ["-c", str(_demo_path(root)), "--formats", "onnx", "--precisions", "fp32,int8", "--calib", str(calib),
            "--calib-size", "1", "--eval-data", "digits", "--eval-limit", "200", "--no-bench", "--quiet"]
    from ffnet_deploy.cli import main

    code = main(["pipeline", *args, "-o", str(folder / "run")])
    assert code == 1, f"the failing pipeline exited {code}, not 1"
    return {"args": args}


BUILDS: dict[str, Callable[[Path, Path], dict]] = {
    "demo": _demo,
    "demo-run": _demo_run,
    "single-run": _pipeline("single", SINGLE_ARGS, 0),
    "base-run": _pipeline("base", BASE_ARGS, 0),
    "failing-run": _failing_run,
}

# which fixture needs which build (the fixtures are in tests/conftest.py and tests/pipeline/)
FIXTURES = {"demo_result": "demo", "demo_checkpoint_path": "demo", "demo_run": "demo-run",
            "single_run": "single-run", "base_run": "base-run", "failing_run": "failing-run"}


def folder_of(root: Path, name: str) -> Path:
    return root / f"shared-{name}"


def shared(root: Path, name: str) -> dict:
    """Build ``name`` in ``root`` unless this run already has; its value (the build's folder is
    :func:`folder_of`). A build runs on every CPU of the run (:func:`all_cpus`): what it records of the machine (the
    bench's thread count, for one) does not depend on which process made it."""
    folder, done = folder_of(root, name), root / f"shared-{name}.done.json"
    with FileLock(str(root / f"shared-{name}.lock")):
        if done.is_file():
            return json.loads(done.read_text())
        if folder.exists():  # a build that died half-way
            shutil.rmtree(folder)
        folder.mkdir()
        with all_cpus():  # the same build whoever makes it: the background process or a pinned worker
            value = BUILDS[name](folder, root)
        tmp = done.with_name(done.name + ".tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(done)
        return value


# --------------------------------------------------------------------------------------------------------------------
# The background builder
# --------------------------------------------------------------------------------------------------------------------

_started: subprocess.Popen | None = None


def needed(items) -> list[str]:
    """The builds the tests in ``items`` that will run need, in :data:`BUILDS` order."""
    wanted = set()
    for item in items:
        if item.get_closest_marker("skip"):
            continue
        wanted |= {FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in FIXTURES}
    return [name for name in BUILDS if name in wanted]


def start_background(root: Path, names: list[str]) -> None:
    """Start the background builder for ``names``, once per run (the first process to ask starts it)."""
    global _started
    if not names:
        return
    try:
        os.close(os.open(root / "shared-builder.started", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    every_cpu = run_cpus()
    log = open(root / "shared-builder.log", "wb")
    # Its OpenMP pool sleeps when idle: its 2 threads share the CPUs with the pinned workers, and a spinning thread
    # takes its CPU from a worker (the demo run under that load: 128 CPU-s spinning, 106 CPU-s not; 101 CPU-s on an
    # idle machine, either way). The policy changes no number the builds compute, only how an idle thread waits.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    _started = subprocess.Popen([sys.executable, "-m", "tests.session_builds", str(root), *names], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env,
                                preexec_fn=(lambda: os.sched_setaffinity(0, every_cpu)) if every_cpu else None)
    log.close()


def stop_background() -> None:
    """End the background builder if it still runs (a run stopped early): its half-made build is redone by the
    next run, never read."""
    if _started is not None and _started.poll() is None:
        _started.terminate()
        try:
            _started.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _started.kill()


def _leave_with_parent() -> None:
    """End this process when the pytest worker that started it is gone (killed, or stopped with Ctrl-C, which this
    process, in a session of its own, does not receive): a half-made build is redone by the next run, never read."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _import_and_freeze() -> None:
    """Once a process: import the CLI and every installed format's backend (its declared extra's modules), then
    freeze it all out of the cycle collector, as pytest_collection_finish does in the workers (tests/conftest.py):
    the builds' collections (coremltools calls one a conversion) then do not walk those imports again."""
    import gc
    import importlib

    if gc.get_freeze_count():
        return
    import ffnet_deploy.cli  # noqa: F401
    from ffnet_deploy.artifact.formats import format_specs, load_builtin_formats

    load_builtin_formats()
    for spec in format_specs():
        for module in spec.extra.modules if spec.extra else ():
            try:
                importlib.import_module(module)
            except ImportError:
                pass
    gc.collect()
    gc.freeze()


def _main(argv: list[str]) -> int:
    _leave_with_parent()
    root = Path(argv[0])
    for name in argv[1:]:
        start = time.perf_counter()
        if name != "demo":  # the pipeline runs: they import the backends (after the training, which imports none)
            _import_and_freeze()
        shared(root, name)
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
