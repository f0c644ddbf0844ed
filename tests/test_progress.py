"""The one progress protocol (:mod:`ffnet_deploy.progress`): producers report numbers as numbers, and no module
defines a progress callback type of its own."""

from __future__ import annotations

import ast
import re

import pytest

from ffnet_deploy.progress import NULL, Events, Forward, TextLog, as_progress
from tests.recording import Recording, record_feeds
from tests.test_import_graph import ROOT, package_modules

COUNT_IN_TEXT = re.compile(r"\d+\s*/\s*\d+")  # "12/300": a count written into a line instead of a step


def _increasing_to_total(steps: list[tuple[float, float]], total: int) -> None:
    assert steps, "no step events"
    done = [d for d, _ in steps]
    assert all(isinstance(d, int | float) and isinstance(t, int | float) for d, t in steps), steps
    assert done == sorted(done) and len(set(done)) == len(done), steps  # strictly increasing
    assert {t for _, t in steps} == {total} and steps[-1] == (total, total), steps


@pytest.fixture(scope="module")
def ffnet_test(tmp_path_factory):
    """A random ffnet_test checkpoint and its FP32 ONNX artifact."""
    import torch

    from ffnet_deploy.export import export
    from ffnet_deploy.exporters import ExportConfig
    from ffnet_deploy.models.checkpoint import save_checkpoint
    from ffnet_deploy.models.ffnet import create_ffnet

    work = tmp_path_factory.mktemp("progress")
    torch.manual_seed(0)
    model = create_ffnet("ffnet_test").eval()
    save_checkpoint(model, work / "test.pth")
    result = export(ExportConfig("onnx", work / "fp32"), work / "test.pth", "ffnet_test")
    return model, work, result


def test_a_calibration_run_reports_numbered_steps(ffnet_test):
    """Reading the images and collecting the ranges are steps whose ``done`` rises to ``total``, as numbers; no
    line of the log carries a count."""
    from ffnet_deploy.exporters import ExportConfig
    from ffnet_deploy.quantize import onnx_int8, stages
    from ffnet_deploy.quantize.config import QuantizationConfig

    model, work, result = ffnet_test
    size = 20
    config = ExportConfig("onnx", work / "int8", precision="int8",
                          quantization=QuantizationConfig(calib="digits", calib_size=size, cache_dir=work / "cache"))
    events = Recording()
    calib = stages.read_calibration(model, config, events)
    prepared = onnx_int8.prepare_onnx(result.artifact, work)
    ranges, entry = stages.onnx_ranges(result.artifact, prepared, config, calib, stages.transform_for(model, config),
                                       events)
    assert ranges and not entry.hit
    _increasing_to_total(events.steps("calibration images"), size)
    _increasing_to_total(events.steps("calibrating"), size)  # the model takes batches of 1: one step per image
    assert events.notes() and not [n for n in events.notes() if COUNT_IN_TEXT.search(n)], events.notes()


def test_validation_reports_the_images_done(ffnet_test, monkeypatch):
    from ffnet_deploy.data.sources import SyntheticSource
    from ffnet_deploy.validate.engine import reference_batch, validate

    _, work, result = ffnet_test
    fed = record_feeds(monkeypatch)
    events = Recording()
    report = validate([result.output], work / "test.pth", "ffnet_test", SyntheticSource(40), batch=4,
                      progress=events)
    assert report
    # One step per reference call, a multiple of the batch; the artifact is still fed its own batch.
    assert reference_batch(4, 64) == 32
    assert events.steps("validating") == [(32, 40), (40, 40)]
    assert fed == [1] * 40  # the export's fixed batch of 1


def test_the_timing_loop_reports_fractions_of_the_timed_phase():
    from ffnet_deploy.runtimes.timing import CallContender, Protocol, measure

    events = Recording()
    contender = CallContender("noop", lambda: None)
    measure([contender], Protocol(warmup=1, warmup_time_s=0.0, min_iters=5, min_time_s=0.0, blocks=2), events)
    labels = [e[3] for e in events.events]
    assert labels[:2] == ["loading noop", "warmup noop"]
    timing = events.steps("timing noop")
    fractions = [d for d, _ in timing]  # a fraction may repeat (a round shorter than the clock's step)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and {t for _, t in timing} == {1.0}
    assert len(contender.samples_ms) >= 5


def test_the_demo_reports_training_steps():
    import dataclasses

    from ffnet_deploy.demo import DEFAULT_RECIPE, train_demo_model

    events = Recording()
    recipe = dataclasses.replace(DEFAULT_RECIPE, epochs=1, steps_per_epoch=3)
    train_demo_model(recipe, progress=events)
    assert [(d, t) for d, t in events.steps()] == [(1, 3), (2, 3), (3, 3)]
    assert all(e[0] == "step" for e in events.events)  # steps only: no stage reaches a caller's fault points


def test_as_progress_takes_a_sink_a_text_log_or_nothing():
    lines: list[str] = []
    log = as_progress(lines.append)
    assert isinstance(log, TextLog)
    log.stage("trace")
    log.step(1, 2, "images")
    log.note("a note")
    log.warn("a warning")
    log("called")
    assert lines == ["a note", "a warning", "called"]  # stages and steps are transient
    assert as_progress(None) is NULL
    events = Recording()
    assert as_progress(events) is events

    class Foreign:  # a sink of the protocol that is no Events
        def __init__(self):
            self.seen = []

        def stage(self, name):
            self.seen.append(name)

        step = note = warn = lambda self, *a: self.seen.append(a)

    foreign = Foreign()
    wrapped = as_progress(foreign)
    assert isinstance(wrapped, Forward)
    wrapped("text")
    wrapped.stage("convert")
    assert foreign.seen == [("text",), "convert"]
    assert isinstance(NULL, Events)


def _is_callable_annotation(node: ast.AST | None) -> bool:
    return node is not None and "Callable" in ast.unparse(node)


def test_one_progress_protocol():
    """Only ``ffnet_deploy/progress.py`` defines a progress type: no other module names one (``Progress = ...``)
    and no function takes a ``progress`` callback typed as a plain ``Callable``."""
    own = ROOT / "ffnet_deploy" / "progress.py"
    offenders = []
    for name, path in package_modules().items():
        if path == own:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign)
                       else [node.name] if type(node).__name__ == "TypeAlias" else [])  # ``type X = ...`` (3.12)
            for target in targets:
                if isinstance(target, ast.Name) and target.id.endswith("Progress"):
                    offenders.append(f"{name}:{node.lineno} defines {target.id}")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                    if arg.arg == "progress" and _is_callable_annotation(arg.annotation):
                        offenders.append(f"{name}:{node.lineno} {node.name}() takes a Callable progress")
    assert not offenders, "progress types outside ffnet_deploy.progress:\n" + "\n".join(offenders)


def test_nncf_output_goes_to_stderr_or_nowhere(capfd):
    """NNCF's bars (drawn on stdout) and its info lines: on stderr by default (``--json`` owns stdout), nowhere under
    ``library_output(False)`` (``pipeline --quiet``); its warnings show either way."""
    import logging

    pytest.importorskip("nncf")
    from ffnet_deploy.progress import library_output, library_output_shown
    from ffnet_deploy.quantize.openvino_int8 import nncf_output

    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    with nncf_output():
        print("bar: shown")
        nncf_logger.info("info: shown")
    out, err = capfd.readouterr()
    assert out == "" and "bar: shown" in err and "info: shown" in err
    with library_output(False):
        assert not library_output_shown()
        with nncf_output():
            print("bar: hidden")
            nncf_logger.info("info: hidden")
            nncf_logger.warning("warning: shown")
    assert library_output_shown()
    out, err = capfd.readouterr()
    assert out == "" and "hidden" not in err and "warning: shown" in err, err
    assert nncf_logger.level == level  # put back as it was
