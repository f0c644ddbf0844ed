"""The noise verdict on synthetic block times, and the OpenMP-quiet timing worker."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ffnet_deploy.runtimes.noise import (
    NOISY,
    STABLE,
    CpuWait,
    combine,
    format_ratio,
    own_spread,
    paired_ratio,
    verdict,
)


def test_paired_ratio_is_per_block_reference_over_contender():
    ratio = paired_ratio([10.0, 20.0, 10.0], [5.0, 10.0, 4.0])
    assert ratio.blocks == (2.0, 2.0, 2.5) and ratio.median == 2.0 and (ratio.low, ratio.high) == (2.0, 2.5)
    assert not ratio.crosses_one
    # a block without a figure is left out, not counted as zero
    assert paired_ratio([10.0, None, float("nan")], [5.0, 1.0, 1.0]).blocks == (2.0,)
    assert paired_ratio([None], [1.0]) is None


def test_tight_blocks_are_stable():
    ref = [10.0, 10.2, 9.9, 10.1, 10.0]
    fast = [5.0, 5.1, 4.95, 5.0, 5.02]
    v = verdict(paired_ratio(ref, fast), own_spread(fast), cpu_wait=0.01, load_before=0.5, load_after=2.1, cpus=2,
                own_threads=2)
    assert v.verdict == STABLE and v.stable and not v.reasons


def test_a_block_ratio_beyond_ten_percent_is_noisy():
    ref = [10.0, 10.0, 10.0, 10.0, 10.0]
    swinging = [5.0, 5.0, 5.0, 7.0, 5.0]  # one block 1.43x against 2x in the others
    v = verdict(paired_ratio(ref, swinging))
    assert v.verdict == NOISY and "spread" in v.reasons[0]


def test_own_block_times_swinging_is_noisy_even_when_the_ratio_holds():
    ref = [10.0, 20.0, 10.0, 20.0, 10.0]
    row = [5.0, 10.0, 5.0, 10.0, 5.0]
    ratio = paired_ratio(ref, row)
    assert verdict(ratio).stable  # both slowed alike: the ratio holds
    v = verdict(ratio, own_spread(row))
    assert not v.stable and "block times" in v.reasons[0]


def test_too_few_blocks_waiting_threads_and_load_are_noisy():
    one = paired_ratio([10.0], [5.0])
    assert not verdict(one).stable and "fewer than 3" in verdict(one).reasons[0]
    assert not verdict(blocks=1).stable
    tight = paired_ratio([10.0] * 5, [5.0] * 5)
    assert "waited for a CPU" in verdict(tight, cpu_wait=0.4).reasons[0]
    assert "before the run" in verdict(tight, load_before=3.5, cpus=2).reasons[0]
    assert "after the run" in verdict(tight, load_after=4.5, cpus=2, own_threads=2).reasons[0]
    assert verdict(tight, load_after=3.9, cpus=2, own_threads=2).stable  # the run's own threads are allowed for


def test_combine_is_noisy_when_any_row_is():
    assert combine([verdict(paired_ratio([1.0] * 3, [1.0] * 3))]).stable
    table = combine([verdict(paired_ratio([1.0] * 3, [1.0] * 3)), verdict(blocks=1)])
    assert table.verdict == NOISY and table.reasons


def test_a_range_holding_one_is_never_a_speedup():
    assert format_ratio(paired_ratio([10.0, 10.0, 10.0], [9.5, 10.4, 10.0])).startswith("no clear difference")
    text = format_ratio(paired_ratio([10.0, 10.0, 10.0], [5.0, 5.1, 4.9]))
    assert text.startswith("2.00×") and "no clear" not in text


def test_cpu_wait_counts_this_process_threads():
    with CpuWait() as wait:
        np.linalg.svd(np.random.default_rng(0).standard_normal((200, 200)))
    if not os.path.exists("/proc/self/task"):
        pytest.skip("no per-thread scheduler statistics on this OS")
    assert wait.ran_ns > 0 and wait.share is not None and wait.share >= 0


def test_worker_runs_eager_torch_with_a_passive_pool(tmp_path):
    import torch

    from ffnet_deploy.runtimes._worker import WorkerContender, WorkerProcess, torch_job
    from ffnet_deploy.runtimes.timing import Protocol, measure

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    job = torch_job(model, "fp32", 1, 0, np.zeros((1, 3, 16, 16), np.float32), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed.npy", "model.pt"]  # no partial file left
    c = WorkerContender("torch", job)
    measure([c], Protocol(warmup=1, warmup_time_s=0, min_iters=6, min_time_s=0, blocks=3))
    assert len(c.samples_ms) >= 6 and len(c.block_best_ms) == 3 and c.worker is None  # closed
    assert c.peak_rss_mb is not None
    # the worker really runs with OMP_WAIT_POLICY=PASSIVE (set before torch could start its pool)
    probe = WorkerProcess({"kind": "call", "factory": "ffnet_deploy.benchmarks.roofline:gemm_call",
                           "args": ["torch", "fp32", 8, 1], "threads": 1})
    try:
        environ = f"/proc/{probe.pid}/environ"
        if os.path.exists(environ):
            assert b"OMP_WAIT_POLICY=PASSIVE" in open(environ, "rb").read().split(b"\0")
        assert probe.run() >= 0
    finally:
        probe.close()
    bad = WorkerContender("bad", {"kind": "torch", "model": str(tmp_path / "missing.pt"), "precision": "fp32",
                                  "feed": str(tmp_path / "feed.npy")})
    measure([bad], Protocol(warmup=0, warmup_time_s=0, min_iters=1, min_time_s=0))
    assert bad.error and "\n" not in bad.error
