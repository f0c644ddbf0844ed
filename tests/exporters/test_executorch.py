"""ExecuTorch exporter: a real .pte through the XNNPACK delegate, parity in ``executorch.runtime``, delegation recorded
and gated, PT2E INT8 calibrated on the digits and judged by the int8 profile, the missing extra in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffnet_deploy.artifact.inspect import inspect_precision
from ffnet_deploy.cli import main
from ffnet_deploy.errors import ConfigError, ParityError
from ffnet_deploy.hashing import sha256_file
from ffnet_deploy.quantize.config import QuantizationConfig
from tests.exporters.helpers import gate_checks, gate_max_rel, gate_of, manifest, run_export
from tests.extras import needs
from tests.session_builds import DEMO_RUN, demo_run_int8

pytestmark = needs("executorch.exir")

# on one xdist worker, so that its module fixtures and executorch's first-call set-up are made once a run (README,
# Tests); the tests of the demo run's artifacts are in that run's group instead (a test has one group: xdist joins
# the names of every group mark it carries, the module's too)
EXPORT_GROUP = pytest.mark.xdist_group("executorch-export")

ROOT = Path(__file__).resolve().parents[2]


def _check(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)


@EXPORT_GROUP
def test_fp32_export_parity_manifest_and_delegation(tmp_path, test_checkpoint):
    result = run_export(tmp_path, "executorch", test_checkpoint)
    out, m = result.output, manifest(result.output)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.pte"]
    assert (m["format"], m["precision"], m["artifact"]["path"]) == ("executorch", "fp32", "model.pte")
    assert m["artifact"]["sha256"] == sha256_file(out / "model.pte") and m["versions"]["executorch"] == "1.5.1"
    assert m["inputs"][0]["shape"] == [1, 3, 64, 64]
    # The edge program's delegation: one XNNPACK subgraph holds every convolution and GELU.
    delegation = m["details"]["delegation"]
    assert delegation["delegated_subgraphs"] == 1 and delegation["delegated_nodes"] > 0
    ops = delegation["operators"]
    convs = [k for k in ops if "convolution" in k]
    gated = [*convs, "aten_gelu_default"]
    assert convs and all(ops[k]["not_delegated"] == 0 and ops[k]["delegated"] > 0 for k in gated)
    assert set(delegation["not_delegated"]) <= {"getitem"}
    # The gate ran in executorch.runtime, passed the fp32 profile, and read the delegation from the file.
    (gate,) = gate_checks(m)
    assert (gate["runtime"], gate["profile"]["name"], gate["status"]) == ("executorch", "fp32", "passed")
    assert gate_max_rel(gate) <= 1e-4
    check = _check(gate, "delegation")
    assert check["passed"] and check["value"] == 0 and "1 XnnpackBackend call" in check["detail"]
    assert inspect_precision(out / "model.pte", "executorch").precision == "fp32"


@EXPORT_GROUP
def test_unsupported_settings_are_one_line(tmp_path, test_checkpoint):
    with pytest.raises(ConfigError, match=r"^executorch export \| --dynamic-batch is not supported"):
        run_export(tmp_path, "executorch", test_checkpoint, dynamic_batch=(1, 2, 4))
    with pytest.raises(ConfigError, match=r"^executorch export \| --include-preprocessing is not supported"):
        run_export(tmp_path, "executorch", test_checkpoint, include_preprocessing=True)
    with pytest.raises(ConfigError, match=r"--calib-method entropy is not available"):
        run_export(tmp_path, "executorch", test_checkpoint, precision="int8",
                   quantization=QuantizationConfig(calib="digits", method="entropy"))
    assert not list(tmp_path.iterdir())


@EXPORT_GROUP
def test_delegation_gate_fails_when_gelu_falls_back(tmp_path, test_checkpoint, monkeypatch):
    """A partitioner without XNNPACK's GELU configuration leaves every GELU on the portable kernels: the numbers still
    match, and the gate fails in one line naming the operator; nothing is published."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS, GeluConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    from ffnet_deploy.exporters import executorch as room

    configs = [c for c in ALL_PARTITIONER_CONFIGS if c is not GeluConfig]
    monkeypatch.setattr(room, "partitioners", lambda: [XnnpackPartitioner(configs=configs)])
    with pytest.raises(ParityError) as err:
        run_export(tmp_path, "executorch", test_checkpoint)
    message = str(err.value)
    assert "\n" not in message and "delegation = " in message
    assert "convolution/GELU outside the delegate: aten::gelu x" in message
    assert "max_abs_error" in message  # the numeric checks are still listed: it computes the right numbers
    assert not (tmp_path / "executorch-artifact").exists()


@EXPORT_GROUP
def test_missing_extra_is_one_line(tmp_path, test_checkpoint):
    """Without executorch (its import made to fail by a sitecustomize in a subprocess) the export names the extra."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'executorch' or name.startswith('executorch.'):\n"
        "            raise ImportError(f'No module named {name!r} (blocked by the test)')\n"
        "sys.meta_path.insert(0, _Block())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "ffnet_deploy", "export", "-c", str(test_checkpoint), "--format",
                           "executorch", "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert any("pip install 'ffnet-deploy[executorch]'" in line for line in lines), proc.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------------
# INT8 on the digits model: the demo run's (tests/session_builds.py) executorch-int8 job, the same export a user's
# `pipeline --demo` makes (300 calibration digits), shared with the pipeline's tests instead of lowered again here
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def int8_digits(demo_run):
    return demo_run_int8(demo_run, "executorch-int8")


@pytest.mark.xdist_group(DEMO_RUN)
def test_int8_digits_export_and_accuracy(int8_digits, demo_run, demo_checkpoint_path, capsys, tmp_path):
    output, m, cache = int8_digits
    assert m["precision"] == "int8"
    q = m["details"]["quantization"]
    assert q["backend"] == "executorch/pt2e-xnnpack" and q["calibration"]["num_images"] == 300
    assert q["statistics_cache"]["hit"] is False and cache.name == "executorch.calibration.json" and cache.is_file()
    assert cache.is_relative_to(demo_run[0] / ".pipeline" / "calibration")
    found = inspect_precision(output / m["artifact"]["path"], "executorch")
    assert found.precision == "int8" and "qcint8" in found.evidence
    assert m["details"]["delegation"]["delegated_subgraphs"] == 1
    # The export gate (which the pipeline leaves to its validate stage) passes it with the int8 profile.
    (gate,) = gate_checks({"parity": gate_of(output, demo_checkpoint_path)})
    assert gate["status"] == "passed" and gate["profile"]["name"] == "int8"
    assert _check(gate, "delegation")["passed"]
    # validate on the 500 held-out digits: the int8 profile (agreement, accuracy drop within 1 point) holds
    report = tmp_path / "report.json"
    code = main(["validate", str(output), "-c", str(demo_checkpoint_path), "--data", "digits", "--report",
                 str(report)])
    capsys.readouterr()
    (art,) = json.loads(report.read_text())["artifacts"]
    assert code == 0, art["failures"]
    assert (art["runtime"], art["profile"]["name"], art["status"]) == ("executorch", "int8", "passed")
    assert art["metrics"]["num_samples"] == 500 and art["metrics"]["acc_drop"] <= 1.0  # points
    assert _check(art, "delegation")["passed"]


@pytest.mark.xdist_group(DEMO_RUN)
def test_int8_statistics_cache_restores_the_observers(int8_digits, demo_checkpoint_path):
    """The cached observer ranges, put back into a freshly prepared graph, give the same quantized model as the
    calibration run: the converted graphs' quantization parameters are equal."""
    import torch

    from ffnet_deploy.models.checkpoint import load_ffnet
    from ffnet_deploy.models.reparam import reparameterize_model
    from ffnet_deploy.quantize import executorch_int8
    from ffnet_deploy.quantize.calibration import read_cache

    _output, _m, cache = int8_digits
    stored = read_cache(cache, "executorch")
    model = reparameterize_model(load_ffnet(demo_checkpoint_path)).eval()
    example = (torch.zeros(1, 3, 32, 32),)
    prepared = executorch_int8.prepare(model, example)
    executorch_int8.load_observer_states(prepared, stored.statistics)
    assert executorch_int8.observer_states(prepared) == stored.statistics
    with pytest.raises(ValueError, match="cached observers"):
        executorch_int8.load_observer_states(prepared, {"observers": {"nope": {"min": [0], "max": [1], "shape": []}}})


@EXPORT_GROUP
def test_restored_states_give_the_calibration_runs_quantization_parameters(demo_checkpoint_path):
    """The activation observers are histogram observers: their ranges come from a search over the histogram, not from
    the min/max alone. The cached states (through JSON, as the cache file holds them) give a freshly prepared graph
    the calibration run's quantization parameters; states without the histograms are refused, not restored."""
    import torch

    from ffnet_deploy.models.checkpoint import load_ffnet
    from ffnet_deploy.models.reparam import reparameterize_model
    from ffnet_deploy.quantize import executorch_int8

    model = reparameterize_model(load_ffnet(demo_checkpoint_path)).eval()
    example = (torch.zeros(1, 3, 32, 32),)
    calibrated = executorch_int8.prepare(model, example)
    g = torch.Generator().manual_seed(0)
    executorch_int8.calibrate(calibrated, [torch.randn(1, 3, 32, 32, generator=g).numpy() for _ in range(16)], 16)
    states = json.loads(json.dumps(executorch_int8.observer_states(calibrated)))
    restored = executorch_int8.prepare(model, example)
    executorch_int8.load_observer_states(restored, states)
    live, fresh = executorch_int8.observers(restored), executorch_int8.observers(calibrated)
    searched = 0
    for name, obs in fresh.items():
        scale, zero_point = obs.calculate_qparams()
        again = live[name].calculate_qparams()
        assert torch.equal(scale, again[0]) and torch.equal(zero_point, again[1]), name
        if "histogram" in states["observers"][name]:
            searched += not torch.equal(scale, obs._calculate_qparams(obs.min_val, obs.max_val)[0])
    assert searched > 0  # the histogram decides some ranges: min/max alone would give other parameters
    name = next(n for n, state in states["observers"].items() if "histogram" in state)
    del states["observers"][name]["histogram"]
    with pytest.raises(ValueError, match=f"observer {name}: 2048 histogram bins, none cached"):
        executorch_int8.load_observer_states(restored, states)


@EXPORT_GROUP
def test_pipeline_plan_lists_the_phone_job(tmp_path, test_checkpoint, capsys):
    """``--formats executorch`` is a pipeline format; its plan job runs on Linux (parity, host timing) and names the
    phone's own job after it: push the program, time it with executor_runner, import the CSV with report add."""
    code = main(["pipeline", "-c", str(test_checkpoint), "-o", str(tmp_path / "pipe"), "--formats", "executorch",
                 "--precisions", "fp32", "--plan"])
    plan = json.loads(capsys.readouterr().out)
    assert code == 0, plan
    (job,) = plan["jobs"]
    assert (job["id"], job["format"]) == ("executorch-fp32", "executorch") and "Android phone" in job["runs_on"]
    device = job["device_job"]
    assert device["id"] == "executorch-fp32-device" and device["needs"] == ["executorch-fp32"]
    artifact = tmp_path / "pipe" / "artifacts" / "executorch-fp32" / "model.pte"
    assert device["steps"][0] == f"adb push {artifact} /data/local/tmp/executorch-fp32.pte"
    assert "executor_runner --model_path /data/local/tmp/executorch-fp32.pte" in device["steps"][1]
    assert device["steps"][-1].startswith("ffnet-deploy report add --csv phone.csv")
