"""The GEMM roofline probe and the where-time-goes breakdown (structure and arithmetic; speed is not asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from ffnet_deploy.benchmarks.roofline import (
    BF16_FLAGS,
    INT8_FLAGS,
    Roofline,
    gemm_probe,
    roofline_fraction,
)
from ffnet_deploy.environment import environment_info
from ffnet_deploy.errors import ConfigError

ROOF = Roofline(
    threads=2,
    fp32_gflops=220.0,
    bf16_gflops=420.0,
    int8_gops=850.0,
    engine={"fp32": "torch.mm fp32", "bf16": "torch.mm bf16", "int8": "torch._int_mm"},
    shape=(512, 512, 512),
    seconds=3.2,
    notes=("a note",),
)


def test_gemm_probe_measures_fp32_and_follows_the_isa_flags():
    threads_before = torch.get_num_threads()
    roof = gemm_probe(1, budget_s=0.05, engines=("torch",), sizes=(128,))
    assert torch.get_num_threads() == threads_before
    assert roof.threads == 1 and roof.shape == (128, 128, 128)
    assert roof.fp32_gflops > 0 and "torch.mm" in roof.engine["fp32"]
    flags = set(environment_info()["isa_flags"])
    assert (roof.int8_gops is None) == (not flags & set(INT8_FLAGS))
    assert (roof.bf16_gflops is None) == (not flags & set(BF16_FLAGS))
    for dtype, value in (("bf16", roof.bf16_gflops), ("int8", roof.int8_gops)):
        if value is None:
            assert any(n.startswith(f"{dtype}:") for n in roof.notes)  # the reason is recorded
        else:
            assert value > 0 and dtype in roof.engine
    assert Roofline.from_dict(json.loads(json.dumps(roof.to_dict()))) == roof


def test_gemm_probe_rejects_unknown_dtypes_and_engines():
    with pytest.raises(ConfigError, match="dtypes"):
        gemm_probe(1, budget_s=0.01, dtypes=("fp64",))
    with pytest.raises(ConfigError, match="engines"):
        gemm_probe(1, budget_s=0.01, engines=("numpy",))


def test_roofline_fraction_arithmetic():
    # 3 GMACs = 6 GFLOP in 30 ms is 200 GFLOP/s.
    assert roofline_fraction(3.0, 1, 30.0, 200.0) == pytest.approx(1.0)
    assert roofline_fraction(3.0, 1, 30.0, 400.0) == pytest.approx(0.5)
    assert roofline_fraction(3.0, 4, 60.0, 200.0) == pytest.approx(2.0)
    assert roofline_fraction(2.985, 1, 34.0, 227.0) == pytest.approx(2 * 2.985 / 0.034 / 227.0)


def test_roundtrip_and_peak_mapping():
    d = ROOF.to_dict()
    assert d["shape"] == [512, 512, 512] and d["notes"] == ["a note"]
    assert Roofline.from_dict(json.loads(json.dumps(d))) == ROOF
    assert ROOF.peak_gflops("fp32") == 220.0
    assert ROOF.peak_gflops("fp16") == 220.0  # CPU engines compute FP16 models in FP32
    assert ROOF.peak_gflops("bf16") == 420.0
    assert ROOF.peak_gflops("int8") == 850.0
    no_bf16 = Roofline.from_dict({**d, "bf16_gflops": None, "int8_gops": None})
    assert no_bf16.peak_gflops("bf16") is None and no_bf16.peak_gflops("int8") is None
    with pytest.raises(ConfigError, match="precision"):
        ROOF.peak_gflops("fp8")


def test_best_of_keeps_the_best_number_per_dtype():
    from ffnet_deploy.benchmarks.roofline import best_of

    other = Roofline.from_dict(
        {
            **ROOF.to_dict(),
            "fp32_gflops": 230.0,
            "bf16_gflops": 400.0,
            "int8_gops": None,
            "engine": {"fp32": "openvino f32", "bf16": "openvino bf16"},
            "shape": [768] * 3,
        }
    )
    best = best_of(ROOF, other)
    assert (best.fp32_gflops, best.bf16_gflops, best.int8_gops) == (230.0, 420.0, 850.0)
    assert best.engine == {"fp32": "openvino f32", "bf16": "torch.mm bf16", "int8": "torch._int_mm"}
    assert best.shape == (768, 768, 768) and best.seconds == pytest.approx(6.4)
    with pytest.raises(ConfigError, match="thread count"):
        best_of(ROOF, Roofline.from_dict({**ROOF.to_dict(), "threads": 1}))
