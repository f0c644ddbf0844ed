"""The timing protocol on a real ONNX Runtime session of a tiny model: what is counted, not how fast it is."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.runtimes import create_runner
from ffnet_deploy.runtimes.timing import Contender, PeakMemory, Protocol, latency_stats, measure


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig

    out = tmp_path_factory.mktemp("protocol") / "onnx"
    export(ExportConfig("onnx", out, resolution=64, check_parity=False), None, "ffnet_test")
    return out


class Spy:
    """Wraps a real runner: counts engine calls and remembers which input array each call got."""

    def __init__(self, artifact):
        self.inner = create_runner("onnxruntime", artifact, threads=1)
        self.calls = 0
        self.feeds: set[int] = set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def activate(self):
        self.inner.activate()
        return self

    def infer(self, feed):
        self.calls += 1
        self.feeds.add(id(feed["images"]))
        return self.inner.infer(feed)


def test_counts_iterations_excludes_warmup_and_reuses_the_input(onnx_artifact):
    spies = []

    def make():
        spies.append(Spy(onnx_artifact))
        return spies[-1]

    feed = {"images": np.zeros((1, 3, 64, 64), np.float32)}
    a = Contender("a", make, feed)
    b = Contender("b", make, dict(feed))
    measure([a, b], Protocol(warmup=4, warmup_time_s=0, min_iters=12, min_time_s=0))
    for contender, spy in zip((a, b), spies, strict=True):
        assert contender.error is None
        # one first inference + 4 warmup + 12 timed; only the timed ones are samples
        assert len(contender.samples_ms) == 12
        assert spy.calls == 1 + 4 + 12
        assert spy.feeds == {id(contender.feed["images"])}  # the same array every call: never re-made
        assert contender.first_inference_ms is not None and contender.first_inference_ms > 0
        assert all(s > 0 for s in contender.samples_ms)
        assert not spy.inner.is_active  # released at the end
    # the samples are the engine's own times of the timed calls, not the first or warmup ones
    assert a.samples_ms == spies[0].inner.inference_times_ms[-12:]


def test_rounds_are_interleaved(onnx_artifact):
    order: list[str] = []

    def maker(name):
        def make():
            spy = Spy(onnx_artifact)
            original = spy.infer

            def infer(feed):
                order.append(name)
                return original(feed)

            spy.infer = infer
            return spy

        return make

    feed = {"images": np.zeros((1, 3, 64, 64), np.float32)}
    measure([Contender("a", maker("a"), feed), Contender("b", maker("b"), feed)],
            Protocol(warmup=0, warmup_time_s=0, min_iters=5, min_time_s=0))
    timed = order[2:]  # after each contender's first inference
    assert timed == ["a", "b"] * 5


def test_min_time_extends_the_rounds(onnx_artifact):
    c = Contender("a", lambda: create_runner("onnxruntime", onnx_artifact, threads=1),
                  {"images": np.zeros((1, 3, 64, 64), np.float32)})
    start = time.perf_counter()
    measure([c], Protocol(warmup=0, warmup_time_s=0, min_iters=1, min_time_s=0.3))
    assert time.perf_counter() - start >= 0.3
    assert len(c.samples_ms) > 1


def test_a_failing_contender_is_reported_and_the_others_go_on(onnx_artifact, tmp_path):
    good = Contender("good", lambda: create_runner("onnxruntime", onnx_artifact, threads=1),
                     {"images": np.zeros((1, 3, 64, 64), np.float32)})
    bad = Contender("bad", lambda: create_runner("onnxruntime", tmp_path / "missing.onnx"),
                    {"images": np.zeros((1, 3, 64, 64), np.float32)})
    measure([bad, good], Protocol(warmup=0, warmup_time_s=0, min_iters=3, min_time_s=0))
    assert bad.error and "does not exist" in bad.error and not bad.samples_ms
    assert len(good.samples_ms) == 3


def test_latency_stats():
    samples = list(range(1, 101))  # 1..100 ms
    s = latency_stats(samples)
    assert s["min"] == 1 and s["p50"] == 50.5 and s["mean"] == 50.5
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["trimmed_mean"] == pytest.approx(np.mean(range(11, 91)))  # 10 dropped at each end
    outlier = latency_stats([10.0] * 19 + [1000.0])
    assert outlier["trimmed_mean"] == 10.0 and outlier["mean"] > 50


def test_peak_memory_sees_a_transient_allocation():
    with PeakMemory() as m:
        block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        del block
    assert m.mb is not None and m.mb >= 60, (m.mb, m.method)


@pytest.mark.parametrize("kwargs", [{"min_iters": 0}, {"warmup": -1}, {"max_time_s": 0}])
def test_bad_protocol_is_one_line(kwargs):
    with pytest.raises(ConfigError, match="bench \\|"):
        Protocol(**kwargs)


def test_a_runner_handed_in_active_is_timed_and_left_active(onnx_artifact):
    runner = create_runner("onnxruntime", onnx_artifact, threads=1).activate()
    feed = {"images": np.zeros((1, 3, 64, 64), np.float32)}
    c = Contender("given", lambda: runner, feed, runner=runner)
    measure([c], Protocol(warmup=2, warmup_time_s=0, min_iters=4, min_time_s=0))
    assert len(c.samples_ms) == 4 and c.first_inference_ms is None
    assert runner.is_active
    runner.deactivate()


@pytest.mark.parametrize("field, value, flag", [
    ("min_time_s", float("nan"), "--min-time"), ("max_time_s", float("nan"), "--max-time"),
    ("warmup_time_s", float("inf"), "--warmup-time"), ("min_time_s", float("-inf"), "--min-time"),
    ("min_iters", 2.5, "--min-iters"),
])
def test_protocol_refuses_non_finite_numbers(field, value, flag):
    """``nan < 0`` is False: a NaN time limit used to pass the checks and then never end the rounds (a hang)."""
    with pytest.raises(ConfigError, match=flag):
        Protocol(**{field: value})


def test_max_time_bounds_the_warmup_too():
    import time as _time

    from ffnet_deploy.runtimes.timing import CallContender

    c = CallContender("sleepy", lambda: _time.sleep(0.01))
    start = _time.perf_counter()
    measure([c], Protocol(warmup=10**12, warmup_time_s=0.0, min_iters=3, min_time_s=0.0, max_time_s=0.3))
    assert _time.perf_counter() - start < 5 and c.error is None and len(c.samples_ms) >= 3
