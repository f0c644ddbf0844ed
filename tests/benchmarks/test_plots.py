"""Each plot writes a PNG (atomically, tagged as ffnet-deploy's) for data it can show, and nothing otherwise."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ffnet_deploy.benchmarks import plots
from ffnet_deploy.benchmarks.report import merge
from ffnet_deploy.benchmarks.results import BenchResult, BenchRow, Device
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.config import get_config
from tests.benchmarks.helpers import call_timings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def timings() -> dict[int, dict]:
    """Real latencies to draw: numpy matmuls of four sizes through the project's timing loop."""
    rng = np.random.default_rng(0)
    mats = {n: rng.standard_normal((n, n)).astype(np.float32) for n in (16, 32, 64, 96)}
    measured = call_timings({str(n): (lambda m=m: m @ m) for n, m in mats.items()}, warmup=2, rounds=9)
    return {int(n): t for n, t in measured.items()}


def _row(model: str, size: int, timings, **kw) -> BenchRow:
    t = timings[size]
    return BenchRow(model=model, runtime=kw.pop("runtime", "numpy"), precision=kw.pop("precision", "fp32"),
                    resolution=kw.pop("resolution", size), latency_ms={"p50": t["p50"], "p90": t["p90"]},
                    **kw)


@pytest.fixture(scope="module")
def result(timings) -> BenchResult:
    """FFNet-named rows (for the published top-1) at one resolution, two "precisions", and one mixer model measured
    at every size; the latencies are the matmul timings, labelled runtime numpy."""
    rows = []
    for variant, size in zip(("ffnet_1", "ffnet_2", "ffnet_3"), (16, 32, 64), strict=True):
        for precision in ("fp32", "fp16"):
            rows.append(_row(variant, size, timings, precision=precision, resolution=256,
                             published_top1=get_config(variant).top1))
    rows.append(_row("ffnet_1", 96, timings, runtime="coreml", compute_units="CPU_AND_NE", resolution=256,
                     published_top1=get_config("ffnet_1").top1, source="imported", provenance={"source": "Xcode"}))
    for size in timings:
        rows.append(_row("ffnet_1/attention", size, timings, family="mixer", mixer="attention"))
    rows.append(BenchRow(model="ffnet_4", runtime="tensorrt", precision="fp16", resolution=384, status="skipped",
                         reason="needs an NVIDIA GPU"))
    return BenchResult(Device(name="test box"), rows=tuple(rows))


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert plots.PNG_TAG.encode() in data[:4096]


@pytest.mark.parametrize("plot", [plots.plot_latency_vs_top1, plots.plot_by_runtime, plots.plot_vs_resolution])
def test_result_plots_write_png(tmp_path, result, plot):
    path = tmp_path / "sub" / f"{plot.__name__}.png"
    assert plot(result, path) == path
    _assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_top1_plot_filters_by_runtime(tmp_path, result):
    assert plots.plot_latency_vs_top1(result, tmp_path / "a.png", runtime="coreml") == tmp_path / "a.png"
    assert plots.plot_latency_vs_top1(result, tmp_path / "b.png", runtime="openvino") is None
    assert not (tmp_path / "b.png").exists()


def test_plots_return_none_without_their_data(tmp_path, result, timings):
    no_top1 = BenchResult(result.device, rows=tuple(replace(r, published_top1=None) for r in result.rows))
    one_resolution = BenchResult(result.device, rows=tuple(r for r in result.rows if r.family != "mixer"))
    nothing_ok = BenchResult(result.device, rows=tuple(r for r in result.rows if r.status != "ok"))
    assert plots.plot_latency_vs_top1(no_top1, tmp_path / "1.png") is None
    assert plots.plot_vs_resolution(one_resolution, tmp_path / "2.png") is None
    assert plots.plot_by_runtime(nothing_ok, tmp_path / "3.png") is None
    assert plots.plot_devices(merge([nothing_ok]), tmp_path / "4.png") is None
    assert list(tmp_path.iterdir()) == []


def test_device_plot(tmp_path, result):
    other = BenchResult(Device(name="other box"), rows=result.rows[:2])
    path = plots.plot_devices(merge([result, other]), tmp_path / "devices.png")
    assert path == tmp_path / "devices.png"
    _assert_png(path)


def test_may_replace_is_honoured(tmp_path, result):
    path = tmp_path / "keep.png"
    path.write_bytes(b"mine")
    with pytest.raises(ConfigError, match=r"refusing to overwrite .*keep\.png: not mine"):
        plots.plot_by_runtime(result, path, may_replace=lambda p: "not mine")
    assert path.read_bytes() == b"mine"
