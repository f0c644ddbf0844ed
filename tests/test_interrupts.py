"""Interrupts (ffnet_deploy/interrupts.py): no fallback absorbs one, every terminating signal cleans up alike, and a
kill at any stage of an export leaves the old artifact or the new one, complete, and nothing else changed.

The fault matrix runs the real CLI in real processes. To keep it fast, a fork server imports torch and the backends
once (it runs no torch op, so forking it is safe) and forks one child per case; the child runs ``main()`` with
``FFNET_DEPLOY_FAULT=STAGE:SIGNAL`` (the test hook of ffnet_deploy/export.py) and exits with its code or its signal.
"""

from __future__ import annotations

import ast
import shutil
import signal
from pathlib import Path

import pytest

from ffnet_deploy.errors import FFNetDeployError, Interrupted
from ffnet_deploy.export import FAULT_ENV, STAGES
from ffnet_deploy.interrupts import SIGNALS, handle_signals
from tests.artifact.test_workdir import assert_complete, snapshot
from tests.forkserver import ForkServer

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------------------------
# Item 6: an interrupt is not an error
# --------------------------------------------------------------------------------------------------------------------


def test_interrupted_is_not_an_exception():
    assert issubclass(Interrupted, BaseException) and not issubclass(Interrupted, Exception)
    err = Interrupted(signal.SIGTERM)
    assert str(err) == "interrupted by SIGTERM; nothing was written" and err.exit_code == 128 + signal.SIGTERM
    assert Interrupted(signal.SIGINT).exit_code == 130


def _handlers(path: Path) -> list[tuple[ast.ExceptHandler, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler):
            names = [ast.unparse(t) for t in ([] if node.type is None else
                                               node.type.elts if isinstance(node.type, ast.Tuple) else [node.type])]
            out.append((node, " ".join(names) or "bare"))
    return out


def test_no_handler_can_absorb_an_interrupt():
    """Only ``Exception`` subclasses may be caught and dropped; a handler that can see an interrupt re-raises it.

    The CLI's ``main()`` is the one place that turns an interrupt into its exit code.
    """
    offenders = []
    for folder in ("ffnet_deploy", "exporters", "runtimes", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node, names in _handlers(path):
                if not any(n in names for n in ("bare", "BaseException", "KeyboardInterrupt", "Interrupted")):
                    continue
                if path == ROOT / "ffnet_deploy" / "cli" / "_main.py":  # main(), the one place
                    continue
                if not any(isinstance(n, ast.Raise) and n.exc is None for n in ast.walk(node)):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} except {names}")
    assert not offenders, offenders


FALLBACK_CASE = r"""
import os, signal, time
from pathlib import Path

import onnxruntime

import ffnet_deploy.exporters.onnx as onnx_exporter
from ffnet_deploy.errors import Interrupted
from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig

where, how, checkpoint, folder = os.environ["CASE"].split("|")


def interrupt(*_args, **_kwargs):
    if how == "SIGTERM":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    raise KeyboardInterrupt


if where == "simplify":
    onnx_exporter._simplify = interrupt
else:
    onnxruntime.InferenceSession.run = interrupt
expected = Interrupted if how == "SIGTERM" else KeyboardInterrupt
try:
    export(ExportConfig("onnx", Path(folder) / "out"), checkpoint)
except expected:
    os._exit(0 if not any(Path(folder).iterdir()) else 3)
os._exit(2)  # the export finished: the fallback absorbed the interrupt
"""


@pytest.mark.parametrize("where", ["simplify", "gate"])
@pytest.mark.parametrize("how", ["SIGTERM", "KeyboardInterrupt"])
def test_fallbacks_do_not_absorb_interrupts(server, tmp_path, test_checkpoint, where, how):
    """A signal inside onnxsim (whose failures fall back to the unsimplified graph) or inside the gate's runtime
    (whose errors become parity failures) ends the export, and nothing is published.

    It runs in a process of its own (a child of the fork server): a real signal is sent, and the test process must
    not share its fate. The case calls ``export()`` and leaves with its own code before the server's ``main()``.
    """
    folder = tmp_path / "work"
    folder.mkdir()
    case = "|".join([where, how, str(test_checkpoint), str(folder)])
    code, log = server.run([], tmp_path, {"CASE": case}, setup=FALLBACK_CASE)
    assert code == 0, (code, log[-2000:])


def test_handlers_are_restored(tmp_path):
    before = {s: signal.getsignal(s) for s in SIGNALS}
    with handle_signals(), handle_signals():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


# --------------------------------------------------------------------------------------------------------------------
# The old artifact of the --force cases (the fork server, ``server``: tests/forkserver.py)
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def old_artifact(server, tmp_path_factory, test_checkpoint) -> Path:
    """An onnx artifact of ffnet_test made by the CLI, copied in as "the old artifact" of the --force cases."""
    folder = tmp_path_factory.mktemp("old")
    code, log = server.run(["export", "-c", str(test_checkpoint), "-o", str(folder / "art"), "-f", "onnx",
                            "--no-parity"], folder)
    assert code == 0, log
    return folder / "art"


def _error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------------------------------------------------
# Items 7 and 8: the fault matrix
# --------------------------------------------------------------------------------------------------------------------

ONNX_STAGES = [s for s in STAGES if s != "convert"]  # ONNX has no conversion step
KILLS = ["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"]


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "force-over-old"])
@pytest.mark.parametrize("sig", KILLS)
@pytest.mark.parametrize("stage", ONNX_STAGES)
def test_killed_export_leaves_old_or_new_complete(server, old_artifact, test_checkpoint, tmp_path, stage, sig,
                                                  existing):
    fault_case(server, test_checkpoint, tmp_path, "onnx", stage, sig, old_artifact if existing else None)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("stage", ["trace", "convert", "gate", "publish"])
def test_killed_openvino_export(server, test_checkpoint, tmp_path, stage, sig):
    pytest.importorskip("openvino", reason="needs openvino: pip install 'ffnet-deploy[openvino]'")
    fault_case(server, test_checkpoint, tmp_path, "openvino", stage, sig, None)


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "force-over-old"])
@pytest.mark.parametrize("sig", KILLS)
def test_killed_during_conversion(server, test_checkpoint, tmp_path, old_artifact, sig, existing):
    """The convert stage (ONNX has none) under every kill, with and without an old artifact to keep."""
    pytest.importorskip("openvino", reason="needs openvino: pip install 'ffnet-deploy[openvino]'")
    fault_case(server, test_checkpoint, tmp_path, "openvino", "convert", sig, old_artifact if existing else None)


def fault_case(server: ForkServer, checkpoint: Path, tmp_path: Path, fmt: str, stage: str, sig: str,
               old_artifact: Path | None) -> None:
    """Export ``checkpoint`` to ``fmt`` (over a copy of ``old_artifact`` with --force, when given), send ``sig`` at
    ``stage``, and check what is left; after a SIGKILL, check that the next export cleans up."""
    existing = old_artifact is not None
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own file")
    out = folder / "art"
    if existing:
        shutil.copytree(old_artifact, out)
    before = snapshot(folder)
    args = ["export", "-c", str(checkpoint), "-o", "art", "-f", fmt, *(["--force"] if existing else [])]
    code, log = server.run(args, folder, {FAULT_ENV: f"{stage}:{sig}"})
    signum = getattr(signal, sig)

    assert code != 0, log
    if sig == "SIGKILL":
        assert code == -signum
    else:
        assert code == 128 + signum, log
        assert "Traceback" not in log
        errors = _error_lines(log)
        assert len(errors) == 1, log
        kept = "the artifact was already complete in" if stage == "published" else "nothing was written"
        assert errors[0].startswith(f"error: interrupted by {sig}; {kept}"), errors
    after = snapshot(folder)
    if stage == "published":
        assert_complete(out)
    elif existing:
        assert {k: v for k, v in after.items() if k.startswith("art")} == \
            {k: v for k, v in before.items() if k.startswith("art")}
    else:
        assert not out.exists()
    rest = {k: v for k, v in after.items() if not k.startswith(("art", ".art.tmp-"))}
    assert rest == {k: v for k, v in before.items() if not k.startswith("art")}
    leftovers = sorted({k.split("/")[0] for k in after if k.startswith(".")})
    if sig != "SIGKILL":
        assert leftovers == []
        return
    assert all(name.startswith(".art.tmp-") for name in leftovers)
    # The next export cleans them up, even one that fails right after its checks (wrong variant).
    code, log = server.run(["export", "-c", str(checkpoint), "-o", "art", "-f", fmt, "-v", "ffnet_1",
                            *(["--force"] if out.exists() else [])], folder)
    assert code == 1 and "does not fit ffnet_1" in log
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("sig", [s.name for s in map(signal.Signals, SIGNALS)])
def test_every_terminating_signal_is_handled_alike(server, test_checkpoint, tmp_path, sig):
    """SIGQUIT too, which the matrix leaves out; in the middle of the slowest stage."""
    code, log = server.run(["export", "-c", str(test_checkpoint), "-o", "art", "-f", "onnx"], tmp_path,
                           {FAULT_ENV: f"simplify:{sig}"})
    assert code == 128 + getattr(signal, sig) and _error_lines(log) == [f"error: interrupted by {sig}; nothing was "
                                                                         "written"], log
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# Item 7: reparam and validate's report writing clean up alike
# --------------------------------------------------------------------------------------------------------------------

SIGNAL_ON_WRITE = """
import os, signal
from pathlib import Path
import ffnet_deploy.atomic as atomic

real = atomic._commit
def commit(tmp, *args, **kwargs):
    assert Path(tmp).exists()  # the temporary is written: the signal arrives just before the rename
    os.kill(os.getpid(), getattr(signal, os.environ["SIG"]))
    return real(tmp, *args, **kwargs)
atomic._commit = commit
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"])
@pytest.mark.parametrize("command", ["reparam", "validate-report"])
def test_reparam_and_report_writes_clean_up_on_signals(server, tmp_path, test_checkpoint, old_artifact, command,
                                                      sig):
    work = tmp_path / "work"
    work.mkdir()
    if command == "reparam":
        args = ["reparam", "-c", str(test_checkpoint), "-o", str(work / "fused.pth")]
    else:
        args = ["validate", str(old_artifact), "-c", str(test_checkpoint), "--synthetic", "2", "--report",
                str(work / "report.json")]
    code, log = server.run(args, tmp_path, {"SIG": sig}, setup=SIGNAL_ON_WRITE)
    assert code == 128 + getattr(signal, sig), log
    assert _error_lines(log) == [f"error: interrupted by {sig}; nothing was written"], log
    assert list(work.iterdir()) == []


def test_cli_user_errors_still_exit_1(tmp_path, capsys):
    from ffnet_deploy.cli import main

    assert issubclass(FFNetDeployError, Exception)
    code = main(["export", "-o", str(tmp_path / "x"), "-f", "tflite"])
    assert code == 1 and "unknown export format" in capsys.readouterr().err
