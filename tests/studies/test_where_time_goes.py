"""The where_time_goes study: graph FLOPs, kernel classification and the per-op profile on a tiny model."""

from __future__ import annotations

import json
import math

import pytest

from ffnet_deploy.benchmarks.roofline import Roofline, roofline_fraction
from tests.benchmarks.test_roofline import ROOF

# -- where_time_goes ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``ffnet_test`` at 64 px exported to ONNX and OpenVINO, with its graph ops and a feed."""
    pytest.importorskip("openvino")
    import numpy as np

    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from studies import where_time_goes as wtg

    root = tmp_path_factory.mktemp("where-time-goes")
    dirs = {
        fmt: export(ExportConfig(fmt, root / fmt, resolution=64, check_parity=False), None, "ffnet_test").output
        for fmt in ("onnx", "openvino")
    }
    onnx_path = dirs["onnx"] / "model.onnx"
    feed = {"images": np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)}
    return {
        "dirs": dirs,
        "graph": wtg.graph_ops(onnx_path),
        "producers": wtg._output_producers(onnx_path),
        "feed": feed,
        "root": root,
    }


def test_graph_flops_equal_twice_the_model_macs(tiny):
    from ffnet_deploy.models.ffnet import count_macs, create_ffnet

    graph = tiny["graph"]
    macs = count_macs(create_ffnet("ffnet_test", deploy=True), 64)
    conv_and_head = sum(op.flops for op in graph.values() if op.op_type in ("Conv", "Gemm", "MatMul"))
    assert conv_and_head == pytest.approx(2 * macs, rel=1e-6)
    categories = {op.category for op in graph.values() if op.op_type == "Conv"}
    assert {"dense_conv", "pointwise_conv", "depthwise_conv_7x7", "depthwise_conv_3x3"} <= categories
    assert all(op.flops == 0 for op in graph.values() if op.op_type not in ("Conv", "Gemm", "MatMul"))


def test_categories_add_up_to_the_profiled_total(tiny):
    from studies import where_time_goes as wtg

    args = (tiny["graph"], tiny["producers"], tiny["feed"], 1)
    profilers = [
        wtg.OnnxRuntimeProfiler(tiny["dirs"]["onnx"], *args, work_dir=tiny["root"]),
        wtg.OpenVINOProfiler(tiny["dirs"]["openvino"], *args, precision="f32"),
    ]
    profiles = wtg.profile_interleaved(profilers, iters=3, warmup=1)
    assert [p.runtime for p in profiles] == ["onnxruntime/fp32", "openvino/fp32"]
    for profile in profiles:
        check_profile(profile, tiny["graph"])


def check_profile(profile, graph):
    from studies import where_time_goes as wtg

    assert profile.runs == 2 and profile.kernels and profile.run_ms > 0  # 3 chunks of 1 run, the faster 2 kept
    convs = [k for k in profile.kernels if k["op_type"] in wtg.CONV_OP_TYPES]
    assert convs and all(k["node"] is not None for k in convs), "every conv kernel is matched to its ONNX node"
    rows = wtg.breakdown(profile, graph, peak_gflops=100.0)
    assert math.isclose(sum(r["ms"] for r in rows), profile.kernel_ms, rel_tol=1e-9)
    assert math.isclose(sum(r["share"] for r in rows), 1.0, rel_tol=1e-9)
    assert sum(r["kernels"] for r in rows) == len(profile.kernels)
    total_gflop = sum(op.flops for op in graph.values()) / 1e9
    assert math.isclose(sum(r["gflop"] for r in rows), total_gflop, rel_tol=1e-9)
    for r in rows:
        if r["category"].startswith(wtg.CONV_CATEGORY_PREFIXES):
            assert r["gflop"] > 0 and r["gflops"] > 0 and r["fraction_of_peak"] == pytest.approx(r["gflops"] / 100)


def test_kernel_classification_by_name_and_type():
    from studies import where_time_goes as wtg

    graph = {"/a/Conv": wtg.GraphOp("/a/Conv", "Conv", "depthwise_conv_7x7", 10)}
    producers = {"/a/Conv_output_0": "/a/Conv"}
    assert wtg.classify_kernel("/a/Conv/WithoutBiases", "GroupConvolution", graph, producers) == (
        "depthwise_conv_7x7",
        "/a/Conv",
    )
    assert wtg.classify_kernel("/a/Conv_output_0_nchwc", "Conv", graph, producers) == ("depthwise_conv_7x7", "/a/Conv")
    assert wtg.classify_kernel("x_abcd_acdb_/a/Conv/WithoutBiases", "Reorder", graph, producers) == ("layout", None)
    assert wtg.classify_kernel("Gelu_token_3", "Gelu", graph, producers) == ("activation", None)
    assert wtg.classify_kernel("fused", "Conv", graph, producers, [[1, 64, 8, 8], [64, 1, 3, 3]]) == (
        "depthwise_conv_3x3",
        None,
    )
    assert wtg.classify_kernel("fused", "Conv", graph, producers, [[1, 64, 8, 8], [32, 64, 1, 1]]) == (
        "pointwise_conv",
        None,
    )
    assert wtg.conv_category((3, 3), 1, 3) == "dense_conv"
    assert wtg.conv_category((3, 3), 4, 64) == "grouped_conv"


def test_where_time_goes_end_to_end_on_a_tiny_model():
    pytest.importorskip("openvino")
    from studies import where_time_goes as wtg

    roof = Roofline.from_dict({**ROOF.to_dict(), "threads": 1})
    result = wtg.run("ffnet_test", 64, threads=1, iters=2, warmup=1, roof=roof)
    assert json.loads(json.dumps(result)) == result  # what write_results stores
    assert set(result["runtimes"]) == {"onnxruntime/fp32", "openvino/fp32", "openvino/bf16"}
    for name, rt in result["runtimes"].items():
        assert rt["peak_gflops"] == (420.0 if name.endswith("bf16") else 220.0)
        assert rt["roofline_fraction"] == pytest.approx(
            roofline_fraction(result["gmacs"], 1, rt["latency"]["median_ms"], rt["peak_gflops"])
        )
        assert math.isclose(sum(c["ms"] for c in rt["categories"]), rt["kernel_ms"], rel_tol=1e-9)
    md = wtg.to_markdown(result)
    assert "roofline fraction" in md and "pointwise 1x1 convs" in md and "## Findings" in md
