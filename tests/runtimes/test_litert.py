"""The LiteRT runner: a real .tflite in ``ai_edge_litert``'s interpreter; malformed and relabelled models refused in
one line (the bytes checked before LiteRT sees them); bench rows marked as host measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ffnet_deploy.errors import RuntimeBackendError
from ffnet_deploy.runtimes import create_runner
from tests.extras import LITERT_EXTRA, needs
from tests.runtimes.conftest import RES, torch_logits

# on the worker of the LiteRT exporter's tests (tests/exporters/test_litert.py): one process converts models
pytestmark = [needs("ai_edge_litert.interpreter", reason=LITERT_EXTRA), pytest.mark.xdist_group("litert-export")]


def test_runs_the_model_and_matches_torch(litert_dir, fused_model, images):
    with create_runner("litert", litert_dir, threads=1) as runner:
        meta = runner.input_metadata()["images"]
        assert meta.shape == (2, 3, RES, RES) and meta.dtype == "float32"
        assert runner.output_names() == ["logits"]
        out = runner.infer({"images": images})["logits"]
    np.testing.assert_allclose(out, torch_logits(fused_model, images), rtol=1e-4, atol=1e-4)
    # A bare model file runs too (no manifest: the names are the FFNet convention).
    with create_runner("litert", litert_dir / "model.tflite") as runner:
        assert runner.manifest is None and list(runner.input_metadata()) == ["images"]
        assert runner.infer(images)["logits"].shape == (2, 1000)


def _damaged(litert_dir) -> bytes:
    data = (litert_dir / "model.tflite").read_bytes()
    return data[:len(data) // 2]  # the identifier survives, the FlatBuffer does not


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\0\0\0\0TFL3" + b"\x07" * 200, "cut"],
                         ids=["empty", "text", "garbage-after-identifier", "cut"])
def test_malformed_model_is_one_line(tmp_path, content, litert_dir):
    path = tmp_path / "model.tflite"
    path.write_bytes(_damaged(litert_dir) if content == "cut" else content)
    with pytest.raises(RuntimeBackendError) as err:
        create_runner("litert", path).activate()
    message = str(err.value)
    assert message.startswith("litert | ") and "\n" not in message and "re-export it" in message
    assert str(path) in message


def test_bench_rows_are_host_measurements(litert_dir, capsys, tmp_path):
    from ffnet_deploy.cli import main

    code = main(["bench", str(litert_dir), "--threads", "1", "--warmup", "1", "--warmup-time", "0",
                 "--min-iters", "3", "--min-time", "0", "--no-roofline", "--json", "--out", str(tmp_path / "b")])
    bench = json.loads(capsys.readouterr().out)
    assert code == 0, bench
    (row,) = bench["rows"]
    assert (row["runtime"], row["status"]) == ("litert", "ok") and row["latency_ms"]["p50"] > 0
    assert row["host_measurement"].startswith("host measurement") and "not device latency" in row["host_measurement"]
    assert "host measurement" in (tmp_path / "b" / "results.md").read_text()
