"""The protocol_check study: bench median vs a plain loop over the same ONNX Runtime session."""

from __future__ import annotations


def test_protocol_check_benchmark_smoke():
    from studies import protocol_check

    result = protocol_check.run("ffnet_test", resolution=64, threads=1, rounds=1)
    assert result["rounds"][0]["bench_iterations"] >= protocol_check.LOOP_CALLS
    assert result["plain_median_ms"] > 0 and result["bench_median_ms"] > 0
    assert "Pooled" in protocol_check.to_markdown(result)
