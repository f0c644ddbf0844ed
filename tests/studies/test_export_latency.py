"""The export-latency benchmark runs end to end through the runners (speed is not asserted here)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openvino")

from studies import export_latency  # noqa: E402 - after the skip: the benchmark needs OpenVINO

CONTENDERS = ["onnxruntime/plain", "onnxruntime/ffnet-deploy", "openvino/plain", "openvino/ffnet-deploy"]


def test_export_latency_smoke():
    result = export_latency.run("ffnet_test", resolution=64, threads=1, rounds=2, warmup=1)
    assert list(result["timings"]) == CONTENDERS
    assert all(t["samples"] == 2 for t in result["timings"].values())
    parity = result["parity_vs_plain_onnxruntime"]
    assert list(parity) == CONTENDERS
    for name, metrics in parity.items():
        assert set(metrics) == set(export_latency.PARITY_METRICS)
        assert metrics["cosine_mean"] > 0.9999 and metrics["top1_agreement"] == 1.0, name
    assert parity["onnxruntime/plain"]["max_abs_error"] == 0.0
    assert result["onnx_nodes"]["ffnet-deploy"] < result["onnx_nodes"]["plain"]
    assert json.loads(json.dumps(result)) == result  # what write_results stores
    md = export_latency.to_markdown(result)
    assert "Ratio plain / ffnet-deploy" in md and "top-1 agreement" in md


def test_no_spinning_hook_is_applied_through_the_runner(tmp_path):
    """The hook the benchmark passes really reaches ONNX Runtime's session options."""
    from ffnet_deploy.models.ffnet import create_ffnet
    from ffnet_deploy.runtimes import create_runner

    path = tmp_path / "plain.onnx"
    export_latency.plain_onnx_export(create_ffnet("ffnet_test").eval(), 64, 1, path)
    with create_runner("onnxruntime", path, threads=1, session_options=export_latency.no_spinning) as runner:
        options = runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
