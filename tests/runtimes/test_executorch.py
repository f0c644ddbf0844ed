"""The ExecuTorch runner: a real .pte in ``executorch.runtime``; malformed programs refused in one line; bench rows
marked as host measurements; the delegation check of validate on a program that leaves its ops outside XNNPACK."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ffnet_deploy.errors import RuntimeBackendError
from ffnet_deploy.runtimes import create_runner
from tests.extras import needs
from tests.runtimes.conftest import RES, lower_executorch, torch_logits

# on the worker of the ExecuTorch exporter's tests (tests/exporters/test_executorch.py): one process lowers programs
pytestmark = [needs("executorch.runtime"), pytest.mark.xdist_group("executorch-export")]


def test_runs_the_program_and_matches_torch(executorch_dir, fused_model, images):
    with create_runner("executorch", executorch_dir, threads=1) as runner:
        meta = runner.input_metadata()["images"]
        assert meta.shape == (2, 3, RES, RES) and meta.dtype == "float32"
        assert runner.output_names() == ["logits"]
        out = runner.infer({"images": images})["logits"]
    np.testing.assert_allclose(out, torch_logits(fused_model, images), rtol=1e-4, atol=1e-4)
    # A bare model file runs too (no manifest: the names are the FFNet convention).
    with create_runner("executorch", executorch_dir / "model.pte") as runner:
        assert runner.manifest is None and list(runner.input_metadata()) == ["images"]
        assert runner.infer(images)["logits"].shape == (2, 1000)


@pytest.mark.parametrize("content", [b"", b"not a program at all", b"\0\0\0\0ET12" + b"\x07" * 200],
                         ids=["empty", "text", "truncated"])
def test_malformed_program_is_one_line(tmp_path, content):
    path = tmp_path / "model.pte"
    path.write_bytes(content)
    with pytest.raises(RuntimeBackendError) as err:
        create_runner("executorch", path).activate()
    message = str(err.value)
    assert message.startswith("executorch | ") and "\n" not in message and "re-export it" in message
    assert str(path) in message


def test_bench_rows_are_host_measurements(executorch_dir, capsys, tmp_path):
    from ffnet_deploy.cli import main

    code = main(["bench", str(executorch_dir), "--threads", "1", "--warmup", "1", "--warmup-time", "0",
                 "--min-iters", "3", "--min-time", "0", "--no-roofline", "--json", "--out", str(tmp_path / "b")])
    bench = json.loads(capsys.readouterr().out)
    assert code == 0, bench
    (row,) = bench["rows"]
    assert (row["runtime"], row["status"]) == ("executorch", "ok") and row["latency_ms"]["p50"] > 0
    assert row["host_measurement"].startswith("host measurement") and "not device latency" in row["host_measurement"]
    assert "host measurement" in (tmp_path / "b" / "results.md").read_text()


def test_validate_fails_a_program_left_outside_the_delegate(tmp_path, test_checkpoint, capsys):
    """A program lowered without the XNNPACK partitioner computes the right numbers on the portable kernels, and
    validate fails it on the delegation check, naming the convolutions and GELUs."""
    from ffnet_deploy.cli import main
    from ffnet_deploy.models.checkpoint import load_ffnet
    from ffnet_deploy.models.reparam import reparameterize_model

    model = reparameterize_model(load_ffnet(test_checkpoint)).eval()
    path = lower_executorch(model, tmp_path / "portable.pte", batch=1, partitioner=[])
    code = main(["validate", str(path), "-c", str(test_checkpoint), "--synthetic", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    (art,) = report["artifacts"]
    assert code == 1 and art["status"] == "failed"
    assert [c["name"] for c in art["checks"] if not c["passed"]] == ["delegation"]
    (failure,) = art["failures"]
    assert "convolution/GELU outside the delegate: " in failure and "aten::convolution x" in failure
    assert "aten::gelu x" in failure and "delegate: none" in failure
    # The console table has a delegation row, and the failure line names the operators.
    code = main(["validate", str(path), "-c", str(test_checkpoint), "--synthetic", "2"])
    text = capsys.readouterr().out
    assert code == 1 and "delegation" in text and "FAIL (" in text and "aten::gelu x" in text
