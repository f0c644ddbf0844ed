"""Shared fixtures: official-format checkpoints with randomized weights, built from the reference key lists.

Nothing is downloaded: checkpoints are made here, in the official layout (timm ``train.py`` containers), with BN
statistics, affine parameters and layer scales randomized so that every fold is exercised numerically.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import pytest
import torch

from ffnet_deploy.models.ffnet import create_ffnet
from tests.session_builds import all_cpus, folder_of, needed, shared, shared_root, start_background, stop_background

# The suite runs as in a CI log, whatever terminal started it: the CLI's consoles take their width from COLUMNS when
# ffnet_deploy.cli is first imported (pytest-xdist's workers have COLUMNS=80); a test that needs a width sets it.
for _var in ("COLUMNS", "LINES"):
    os.environ.pop(_var, None)

# Copied from the project's shared/reference so that every clone runs the official-format tests.
REFERENCE_DIR = Path(__file__).resolve().parent / "data"


def reference_keys(variant: str) -> dict[str, list]:
    """The official state_dict keys and shapes of ``variant`` (tests/data/<variant>.keys.json)."""
    path = REFERENCE_DIR / f"{variant}.keys.json"
    return json.loads(path.read_text())


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every float tensor with non-trivial values: BN stats and affine, layer scales, weights, biases.

    Weights are scaled by 1/sqrt(fan-in) so activations stay O(1) through deep variants.
    """
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.dtype.is_floating_point:
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
        elif name.endswith("running_mean"):
            t.copy_(torch.randn(t.shape, generator=g) * 0.2)
        elif name.endswith("layer_scale"):
            t.copy_(torch.rand(t.shape, generator=g) * 0.9 + 0.1)
        elif t.ndim == 1 and (name.endswith("bn.weight") or name == "norm.weight"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif t.ndim == 1:
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        else:
            t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
    return model


def official_state_dict(variant: str, seed: int = 0, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A randomized state_dict with the official keys, in the official order."""
    model = randomize_(create_ffnet(variant, num_classes=num_classes), seed)
    return model.state_dict()


def write_checkpoint(path: Path, state_dict: dict, container: str = "state_dict", module_prefix: bool = False) -> Path:
    """Save ``state_dict`` the way training scripts do.

    ``container``: ``"state_dict"`` (official release: timm train.py with epoch, arch, args Namespace),
    ``"model"``, ``"state_dict_ema"`` or ``"bare"``.
    """
    sd = {("module." + k if module_prefix else k): v for k, v in state_dict.items()}
    if container == "bare":
        obj = sd
    else:
        obj = {"epoch": 299, "arch": "ffnet", container: sd, "version": 2,
               "args": argparse.Namespace(model="ffnet", lr=1e-3, input_size=[3, 256, 256], drop_path=0.1)}
    torch.save(obj, path)
    return path


@pytest.fixture(scope="session")
def test_checkpoint(tmp_path_factory) -> Path:
    """An official-format checkpoint of the tiny ``ffnet_test`` variant."""
    path = tmp_path_factory.mktemp("ckpt") / "ffnet_test.pth.tar"
    return write_checkpoint(path, official_state_dict("ffnet_test"))


@pytest.fixture(scope="session")
def ffnet1_checkpoint(tmp_path_factory) -> Path:
    """An official-format ffnet_1 checkpoint with randomized weights (for the scale tests)."""
    path = tmp_path_factory.mktemp("ckpt") / "ffnet_1.pth.tar"
    return write_checkpoint(path, official_state_dict("ffnet_1"))


@pytest.fixture(scope="session")
def demo_result(tmp_path_factory):
    """The demo model (``ffnet_digits`` trained on the digits training split), trained once per test run.

    Training takes about 45 s, so every test that needs a real, accurate model shares this one, across the xdist
    workers too (:mod:`tests.session_builds`, which starts it in the background at collection). The cache is a
    temporary folder of the run (``FFNET_DEPLOY_CACHE`` is set only while it trains, then restored), so the user's own
    cache is neither read nor written. Returns the :class:`~ffnet_deploy.demo.DemoResult` of the training.
    """
    pytest.importorskip("sklearn.datasets", reason="the digits data set comes with scikit-learn")
    from ffnet_deploy.demo import DemoResult

    return DemoResult.from_dict(shared(shared_root(tmp_path_factory), "demo"))


@pytest.fixture(scope="session", autouse=True)
def _background_builds(request, tmp_path_factory):
    """Start the session builds that the selected tests need in one background process (tests/session_builds.py);
    end it with the run if it is still going."""
    start_background(shared_root(tmp_path_factory), needed(request.session.items))
    yield
    stop_background()


@pytest.fixture(scope="session")
def demo_checkpoint_path(demo_result) -> Path:
    """The demo checkpoint file: unfused ``ffnet_digits``, 10 classes, >= 97 % on the digits test split.

    Read-only by convention: it is the cache's own file, which the cache-hit tests expect unchanged.
    """
    return demo_result.path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_result):
    """``pipeline --demo`` once per test run (tests/session_builds.py; the demo checkpoint comes from the run's
    cache): the output folder, the exit code and the seconds it took. Its tests share one xdist worker
    (``xdist_group(DEMO_RUN)``): some resume it in place, the others read its artifacts."""
    root = shared_root(tmp_path_factory)
    value = shared(root, "demo-run")
    return folder_of(root, "demo-run") / "demo", value["code"], value["seconds"]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """This process's fork server (tests/forkserver.py): the CLI in a process of its own, without the imports."""
    from tests.forkserver import ForkServer

    srv = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield srv
    srv.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Every text write to an atomic writer's temporary (``.<name>.<hex>.tmp``) fails with ENOSPC, as on a full disk;
    other writes (plots, test set-up) go through."""
    import errno

    real_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory, test_checkpoint):
    """The default ONNX export of :func:`test_checkpoint` (fp32, opset 17, simplified, parity gate on), made once per
    session: the :class:`~ffnet_deploy.export.ExportResult`; its ``output`` is the artifact folder.

    Read-only by convention (as the demo checkpoint): a test that changes, replaces or re-exports over it works on a
    copy (``shutil.copytree(onnx_export.output, tmp_path / ...)``).
    """
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig

    out = tmp_path_factory.mktemp("onnx-export") / "onnx-artifact"
    return export(ExportConfig("onnx", out), test_checkpoint)


# Two tiers. The default run is the fast tier (the tiny variant, the demo model): what a developer runs after each
# change. ``--slow`` adds the tests whose point is scale or another CPU (full-size variants, the qemu-emulated AVX2
# INT8 check); CI (.ci/run) runs both. A test left out is reported as skipped with the reason, never silently.
SLOW_TIER = ("slow", "emulated")


def pytest_configure(config):
    """Under pytest-xdist (``-n N``), each worker keeps to its own share of the CPUs.

    The runtimes size their thread pools to the CPUs they see, and ONNX Runtime's and OpenMP's pools spin after a
    call: two workers that each use every core slow each other by about 3x, more than the second worker gains. Pinned,
    a worker (and every process it starts) has its cores to itself, and torch is told how many that is. The original
    set goes on in ``FFNET_DEPLOY_TEST_CPUS`` for the background builds (tests/session_builds.py), which use them all.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("FFNET_DEPLOY_TEST_CPUS", ",".join(map(str, cpus)))
    index, count = int(worker.removeprefix("gw")), int(count)
    if count > len(cpus):  # more workers than CPUs: nothing to split
        return
    mine = cpus[index::count]
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))


@pytest.fixture
def every_cpu():
    """The whole machine for one test, in a pinned xdist worker (:func:`pytest_configure`): for the tests that ask a
    runtime for 2 threads and check that 2 reach it (the runners cap a request at the CPUs the process may use), and
    for those that resume a session build (made on every CPU)."""
    with all_cpus():
        yield


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the slow tier: full-size models and the qemu-emulated CPU (CI runs it)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow tier (full-size models or an emulated CPU): run with --slow, as CI does")
    for item in items:
        if any(item.get_closest_marker(name) for name in SLOW_TIER):
            item.add_marker(skip)


def _check_groups(session) -> None:
    """In a pytest-xdist worker of a ``--dist loadgroup`` run, every test marked ``xdist_group(NAME)`` must carry
    ``@NAME`` in its node id: that suffix is what sends a group to one worker. pytest-xdist 3.8 writes it to
    ``item._nodeid``, which pytest 9.2 no longer reads (its node ids moved to ``item._id``): the groups then split
    silently over the workers, each worker makes a grouped module's fixtures again, and the Ray tests, which count this
    machine's Ray workers, see another test's. Fail the run in one line instead (pyproject.toml keeps pytest < 9.2)."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        names = sorted({str(m.args[0]) for m in item.iter_markers("xdist_group") if m.args})
        if names and not item.nodeid.endswith("@" + "_".join(names)):
            raise pytest.UsageError(
                f"xdist_group has no effect here ({item.nodeid} lacks its '@{names[0]}' suffix): this pytest-xdist "
                "does not support this pytest; install the dev extra's versions: pip install -e '.[dev]'")


def pytest_collection_finish(session):
    """The groups checked (:func:`_check_groups`), everything alive is frozen out of the cycle collector
    (:func:`gc.freeze`).

    Collection imports every backend (torch, coremltools with torchvision and transformers, ExecuTorch, LiteRT's jax:
    about 630 000 objects), and every full collection would walk them again: coremltools alone calls
    ``gc.collect()`` once a conversion, and the converters allocate enough to start many collections of their own.
    Frozen, they are skipped (measured on tests/quantize/test_coreml_compress.py and
    tests/runtimes/test_coreml_reference.py in one process: 9.2 s of 42 s in the collector, 2.8 s of 35.5 s frozen).
    Only what is alive when collection ends is frozen (the modules, the test items): reference counting still frees it,
    and what the tests make is collected as before."""
    _check_groups(session)
    gc.collect()
    gc.freeze()


def tiered(variants, fast=()):
    """``variants`` as parameters, each full-size one in the slow tier except those named in ``fast``."""
    return [v if v == "ffnet_test" or v in fast else pytest.param(v, marks=pytest.mark.slow) for v in variants]
