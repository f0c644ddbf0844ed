"""The reparameterization benchmark runs end to end and writes both result files (speed is not asserted here)."""

from __future__ import annotations

import json

from studies import common, reparam_latency


def test_reparam_benchmark_smoke(tmp_path):
    result = reparam_latency.run("ffnet_test", resolution=64, rounds=2, warmup=1)
    assert result["max_rel_error"] < 1e-5
    assert result["timings"]["fused"]["samples"] == 2 and result["speedup"] > 0
    assert result["graph"]["after"]["total_ops"] < result["graph"]["before"]["total_ops"]
    md, js = common.write_results("reparam_latency", reparam_latency.to_markdown(result), result, results_dir=tmp_path)
    data = json.loads(js.read_text())
    assert data["variant"] == "ffnet_test" and "isa_flags" in data["environment"]
    assert "Speed-up" in md.read_text() and "Command:" in md.read_text()
