"""This machine's compute limit: the best GEMM throughput it reaches, per data type, with a given thread count.

A latency is only meaningful next to what the hardware can do. :func:`gemm_probe` times real matrix multiplications
(never a datasheet number) for FP32, BF16 and INT8, with every engine that is installed, on a few square-ish shapes,
and keeps the best: that is the *achievable* peak, the roof of a roofline plot. :func:`roofline_fraction` then says
what fraction of that peak a model's measured latency corresponds to.

Engines tried, the best kept per data type (``Roofline.engine`` records the winner, ``notes`` every measurement):

* ``torch``: ``torch.mm`` on FP32 tensors (MKL or oneDNN, whichever the wheel routes to), on BF16 tensors (oneDNN,
  which uses AVX512-BF16 or AMX), and ``torch._int_mm`` (int8 x int8 -> int32, oneDNN VNNI/AMX kernels);
* ``openvino`` (when installed): a ``MatMul`` against constant weights, compiled for CPU with the inference precision
  hint ``f32`` or ``bf16`` (oneDNN brgemm ``FullyConnected``), and for INT8 the same ``MatMul`` with
  ``FakeQuantize`` on both operands, which the CPU plugin runs as an int8 brgemm. Its time includes quantizing the
  activations, so it slightly understates the bare GEMM.

BF16 is measured only where the CPU has a native BF16 dot product (``avx512_bf16``, ``amx_bf16``, Arm ``bf16``):
elsewhere the libraries emulate it and the number would say nothing about a BF16 model. INT8 is measured only where
the CPU has VNNI or AMX (``avx512_vnni``, ``avx_vnni``, ``amx_int8``). CPU inference engines run FP16 models in FP32
on such machines, so :meth:`Roofline.peak_gflops` maps ``"fp16"`` to the FP32 peak.

The probe is short (``budget_s`` of timed calls, 3 s by default, plus the engines' start-up) and best-of: on a shared
machine the fastest call is the one least disturbed by other processes.

Command line: ``python -m ffnet_deploy.benchmarks.roofline [--threads 2] [--budget 3]`` prints the result as JSON.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from ffnet_deploy.environment import BF16_FLAGS, environment_info
from ffnet_deploy.errors import ConfigError

DTYPES = ("fp32", "bf16", "int8")
"""The data types :func:`gemm_probe` measures."""

# BF16_FLAGS: ISA flags of a native BF16 GEMM path (declared with the CPU facts, where the runners read it too).

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""ISA flags of an INT8 dot-product GEMM path (VNNI or AMX)."""

SIZES = (512, 768, 1024)
"""Square GEMM sizes M = N = K tried. On a 2-core machine the kernels reach their best already at 512-768; larger
sizes only make each timed call (and the probe) longer."""

# Which probe data type bounds an inference precision is the precision's own declaration (Precision.roofline_dtype in
# ffnet_deploy.artifact.precisions: FP16 runs in FP32 on these CPUs).


@dataclass(frozen=True)
class Roofline:
    """The best measured GEMM throughput of this machine, per data type, at one thread count."""

    threads: int  # CPU threads every GEMM ran with
    fp32_gflops: float  # best FP32 GEMM, GFLOP/s (1 multiply-add = 2 FLOPs)
    bf16_gflops: float | None  # best BF16 GEMM; None without a native BF16 path (notes say why)
    int8_gops: float | None  # best INT8 GEMM, Gop/s; None without VNNI/AMX (notes say why)
    engine: dict[str, str]  # data type -> the library call that gave the best number
    shape: tuple[int, int, int]  # M, N, K of the best FP32 GEMM
    seconds: float  # wall time of the whole probe, start-up included
    notes: tuple[str, ...] = ()  # every engine's number, and why a data type was skipped
    picks: dict[str, tuple[str, int]] = field(default_factory=dict)  # data type -> (engine, n) of its best GEMM
    interleaved: bool = False  # the peaks were timed in the bench's blocks, beside the rows (interleave())
    block_rates: dict[str, tuple[float, ...]] = field(default_factory=dict)  # interleaved: the best of each block

    def to_dict(self) -> dict:
        """JSON-ready form (tuples become lists); :meth:`from_dict` reads it back."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["notes"] = list(self.notes)
        d["picks"] = {k: list(v) for k, v in self.picks.items()}
        d["block_rates"] = {k: list(v) for k, v in self.block_rates.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Roofline:
        """The inverse of :meth:`to_dict`."""
        return cls(
            threads=int(d["threads"]),
            fp32_gflops=float(d["fp32_gflops"]),
            bf16_gflops=None if d.get("bf16_gflops") is None else float(d["bf16_gflops"]),
            int8_gops=None if d.get("int8_gops") is None else float(d["int8_gops"]),
            engine=dict(d["engine"]),
            shape=tuple(int(v) for v in d["shape"]),  # type: ignore[arg-type]
            seconds=float(d["seconds"]),
            notes=tuple(d.get("notes", ())),
            picks={k: (str(v[0]), int(v[1])) for k, v in (d.get("picks") or {}).items()},
            interleaved=bool(d.get("interleaved", False)),
            block_rates={k: tuple(float(x) for x in v) for k, v in (d.get("block_rates") or {}).items()},
        )

    def peak_gflops(self, precision: str) -> float | None:
        """The peak that bounds a model run at ``precision``.

        Args:
            precision: A registered precision; its ``roofline_dtype`` picks the peak: ``"fp32"``, ``"fp16"``
                (bounded by the FP32 peak: CPU engines compute FP16 models in FP32 here), ``"bf16"`` or ``"int8"``
                (Gop/s).

        Returns:
            GFLOP/s (Gop/s for INT8), or ``None`` where the probe has no number for that data type.

        Raises:
            ConfigError: Unknown precision.
        """
        from ffnet_deploy.artifact.precisions import PRECISIONS

        if precision not in PRECISIONS:
            raise ConfigError(f"roofline | precision must be one of {PRECISIONS.names()}, got {precision!r}")
        dtype = PRECISIONS.get(precision).roofline_dtype
        return {"fp32": self.fp32_gflops, "bf16": self.bf16_gflops, "int8": self.int8_gops}.get(dtype)


def roofline_fraction(gmacs: float, batch: int, latency_ms: float, peak_gflops: float) -> float:
    """Fraction of the peak a model run achieves.

    Args:
        gmacs: Multiply-accumulates of one image, in billions.
        batch: Images per run.
        latency_ms: Measured latency of one run.
        peak_gflops: The roof, e.g. ``Roofline.peak_gflops("fp32")``.

    Returns:
        ``(2 * gmacs * batch / latency) / peak``: 1.0 means the model ran at the GEMM peak.
    """
    achieved_gflops = 2.0 * gmacs * batch / (latency_ms * 1e-3)
    return achieved_gflops / peak_gflops


def _best_rates(calls: dict[tuple[str, int], Callable[[], object]], seconds: float) -> dict[tuple[str, int], float]:
    """Best (shortest) time of each call, in interleaved rounds for about ``seconds`` and at least 3 rounds.

    Rounds interleave the calls so that a busy phase of a shared machine hits every one of them alike.
    """
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    end = time.perf_counter() + seconds
    rounds = 0
    while rounds < 3 or time.perf_counter() < end:
        for key, call in calls.items():
            t0 = time.perf_counter()
            call()
            best[key] = min(best[key], time.perf_counter() - t0)
        rounds += 1
    return best


def _torch_gemms(dtype: str, n: int) -> Callable[[], object]:
    import torch

    g = torch.Generator().manual_seed(n)
    if dtype == "int8":
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
        return lambda: torch._int_mm(a, b)
    tdtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    a = torch.randn(n, n, generator=g).to(tdtype)
    b = torch.randn(n, n, generator=g).to(tdtype)
    out = torch.empty(n, n, dtype=tdtype)
    return lambda: torch.mm(a, b, out=out)


@functools.cache
def _openvino_core():
    import openvino as ov

    return ov.Core()


def _openvino_gemms(dtype: str, n: int, threads: int) -> Callable[[], object]:
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(n)
    a = ops.parameter([n, n], np.float32, name="a")
    w: object = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    lhs: object = a
    if dtype == "int8":
        lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
        lhs = ops.fake_quantize(a, lo, hi, lo, hi, 256)
        w = ops.fake_quantize(w, lo, hi, lo, hi, 255)
    model = ov.Model([ops.matmul(lhs, w, False, False)], [a], "gemm_probe")
    config = {"INFERENCE_PRECISION_HINT": "bf16" if dtype == "bf16" else "f32", "INFERENCE_NUM_THREADS": threads}
    request = _openvino_core().compile_model(model, "CPU", config).create_infer_request()
    request.set_input_tensor(ov.Tensor(rng.standard_normal((n, n), dtype=np.float32)))
    return request.infer


ENGINES: dict[str, tuple[str, Callable[[str, int, int], Callable[[], object]]]] = {
    "torch": ("torch", lambda dtype, n, _threads: _torch_gemms(dtype, n)),
    "openvino": ("openvino", _openvino_gemms),
}
"""Engine name -> (module it needs, factory ``(dtype, n, threads) -> one GEMM call``)."""

ENGINE_CALLS = {
    ("torch", "fp32"): "torch.mm fp32 (MKL/oneDNN)",
    ("torch", "bf16"): "torch.mm bf16 (oneDNN)",
    ("torch", "int8"): "torch._int_mm int8xint8->int32 (oneDNN)",
    ("openvino", "fp32"): "OpenVINO CPU MatMul f32 (oneDNN brgemm FullyConnected)",
    ("openvino", "bf16"): "OpenVINO CPU MatMul bf16 (oneDNN brgemm FullyConnected)",
    ("openvino", "int8"): "OpenVINO CPU FakeQuantize+MatMul (oneDNN brgemm int8, activation quantization included)",
}


def gemm_call(engine: str, dtype: str, n: int, threads: int) -> Callable[[], object]:
    """One GEMM call of the probe (``ENGINES[engine]`` at ``dtype`` and size ``n``): what a timing worker times when
    the probe runs in the bench's blocks (:func:`ffnet_deploy.benchmarks.suite.run_jobs`)."""
    if engine not in ENGINES or dtype not in DTYPES:
        raise ConfigError(f"roofline | no GEMM {engine}/{dtype}; engines {tuple(ENGINES)}, dtypes {DTYPES}")
    return ENGINES[engine][1](dtype, int(n), int(threads))


def gemm_ops(n: int) -> float:
    """Operations of one n x n x n GEMM (a multiply-add is 2)."""
    return 2.0 * n**3


def interleaved(roof: Roofline, blocks_ms: dict[str, Sequence[float]]) -> Roofline:
    """``roof`` with its peaks replaced by the GEMMs timed in the bench's blocks (``dtype -> best ms per block``):
    the best block of each, and every block's rate kept. A data type without a block keeps the probe's number."""
    import math

    rates = {dtype: tuple(round(gemm_ops(roof.picks[dtype][1]) / (ms * 1e-3) / 1e9, 1) if ms and math.isfinite(ms)
                          else 0.0 for ms in values)
             for dtype, values in blocks_ms.items() if dtype in roof.picks and values}
    best = {dtype: max(r) for dtype, r in rates.items() if r and max(r) > 0}
    notes = (*roof.notes, "peaks timed in the bench's blocks, beside the rows (the probe before them: "
             + ", ".join(f"{k.split('_')[0]} {getattr(roof, k)}" for k in ("fp32_gflops", "bf16_gflops", "int8_gops")
                         if getattr(roof, k) is not None) + ")")
    from dataclasses import replace

    return replace(roof, fp32_gflops=best.get("fp32", roof.fp32_gflops),
                   bf16_gflops=best.get("bf16", roof.bf16_gflops), int8_gops=best.get("int8", roof.int8_gops),
                   interleaved=True, block_rates=rates, notes=notes)


def _available(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


def gemm_probe(
    threads: int,
    *,
    budget_s: float = 3.0,
    dtypes: Sequence[str] = DTYPES,
    engines: Sequence[str] = tuple(ENGINES),
    sizes: Sequence[int] = SIZES,
) -> Roofline:
    """Measure the best GEMM throughput per data type with ``threads`` threads.

    Args:
        threads: CPU threads of every GEMM (``torch.set_num_threads``, restored afterwards; OpenVINO's
            ``INFERENCE_NUM_THREADS``).
        budget_s: Seconds of timed calls in all, shared evenly by the engines; each engine times its (data type,
            size) GEMMs in interleaved rounds.
        dtypes: Subset of ``("fp32", "bf16", "int8")``; FP32 is always measured (it is the reference roof).
        engines: Subset of :data:`ENGINES`; engines that are not installed are skipped (noted).
        sizes: Square sizes M = N = K to try.

    Returns:
        The best number per data type, the engine that gave it, and notes with every measurement.

    Raises:
        ConfigError: Unknown data type or engine, or ``threads`` < 1.
    """
    import torch

    unknown = [d for d in dtypes if d not in DTYPES] + [e for e in engines if e not in ENGINES]
    if unknown or threads < 1:
        raise ConfigError(
            f"roofline | dtypes must be among {DTYPES}, engines among {tuple(ENGINES)} and threads "
            f">= 1; got dtypes={tuple(dtypes)}, engines={tuple(engines)}, threads={threads}"
        )
    start = time.perf_counter()
    flags = set(environment_info()["isa_flags"])
    notes: list[str] = []
    wanted = ["fp32", *(d for d in DTYPES if d in dtypes and d != "fp32")]
    if "bf16" in wanted and not flags & set(BF16_FLAGS):
        wanted.remove("bf16")
        notes.append(
            f"bf16: not measured, no native BF16 GEMM on this CPU (none of {', '.join(BF16_FLAGS)}); "
            "libraries would emulate it"
        )
    if "int8" in wanted and not flags & set(INT8_FLAGS):
        wanted.remove("int8")
        notes.append(f"int8: not measured, no VNNI/AMX on this CPU (none of {', '.join(INT8_FLAGS)})")
    usable = []
    for name in engines:
        if _available(ENGINES[name][0]):
            usable.append(name)
        else:
            notes.append(f"{name}: not installed, not tried")
    per_engine = budget_s / max(1, len(usable))
    best: dict[str, tuple[float, str, int]] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # Engine by engine, so that one library's idle worker threads don't compete with the other's GEMMs.
        for engine in usable:
            calls = {}
            for dtype in wanted:
                for n in sizes:
                    try:
                        calls[dtype, n] = ENGINES[engine][1](dtype, n, threads)
                        calls[dtype, n]()
                    except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:
                        # A library without this GEMM (e.g. an old torch without CPU _int_mm) is a fact to note.
                        calls.pop((dtype, n), None)
                        notes.append(f"{dtype}/{engine} {n}: failed ({type(err).__name__}: {str(err)[:120]})")
            seconds = _best_rates(calls, per_engine) if calls else {}
            for dtype in wanted:
                rates = []
                for n in sizes:
                    if (dtype, n) not in seconds:
                        continue
                    rate = 2.0 * n**3 / seconds[dtype, n] / 1e9
                    rates.append(f"{n}: {rate:.1f}")
                    if rate > best.get(dtype, (0.0, "", 0))[0]:
                        best[dtype] = (rate, engine, n)
                if rates:
                    unit = "Gop/s" if dtype == "int8" else "GFLOP/s"
                    notes.append(f"{dtype}/{ENGINE_CALLS[engine, dtype]}: {', '.join(rates)} {unit}")
    finally:
        torch.set_num_threads(previous_threads)
    if "fp32" not in best:
        raise RuntimeError("roofline | no engine could run an FP32 GEMM; see the notes: " + "; ".join(notes))
    for dtype in wanted:
        if dtype not in best:
            notes.append(f"{dtype}: every engine failed, no number")
    fp32_n = best["fp32"][2]
    return Roofline(
        threads=threads,
        fp32_gflops=round(best["fp32"][0], 1),
        bf16_gflops=round(best["bf16"][0], 1) if "bf16" in best else None,
        int8_gops=round(best["int8"][0], 1) if "int8" in best else None,
        engine={dtype: f"{ENGINE_CALLS[engine, dtype]}, {n}x{n}x{n}" for dtype, (_r, engine, n) in best.items()},
        shape=(fp32_n, fp32_n, fp32_n),
        seconds=round(time.perf_counter() - start, 2),
        notes=tuple(notes),
        picks={dtype: (engine, n) for dtype, (_r, engine, n) in best.items()},
    )


def best_of(*roofs: Roofline) -> Roofline:
    """Per data type, the best of several probes at the same thread count.

    A benchmark can probe before and after its own measurements: on a shared machine, either probe may have met
    another process, and the better number is still a measured one.

    Raises:
        ConfigError: No probes, or probes with different thread counts.
    """
    if not roofs or len({r.threads for r in roofs}) != 1:
        raise ConfigError(f"roofline | best_of needs probes at one thread count, got {[r.threads for r in roofs]}")

    def pick(attr: str) -> Roofline:
        return max(roofs, key=lambda r: getattr(r, attr) or 0.0)

    fp32, bf16, int8 = pick("fp32_gflops"), pick("bf16_gflops"), pick("int8_gops")
    engine = {"fp32": fp32.engine["fp32"]}
    for dtype, winner in (("bf16", bf16), ("int8", int8)):
        if dtype in winner.engine:
            engine[dtype] = winner.engine[dtype]
    notes = tuple(f"probe {i + 1}/{len(roofs)}: {n}" for i, r in enumerate(roofs) for n in r.notes)
    return Roofline(
        threads=roofs[0].threads,
        fp32_gflops=fp32.fp32_gflops,
        bf16_gflops=bf16.bf16_gflops,
        int8_gops=int8.int8_gops,
        engine=engine,
        shape=fp32.shape,
        seconds=round(sum(r.seconds for r in roofs), 2),
        notes=notes,
    )


def main(argv: list[str] | None = None) -> Roofline:
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed GEMM calls (default 3)")
    args = p.parse_args(argv)
    result = gemm_probe(args.threads, budget_s=args.budget)
    print(json.dumps(result.to_dict(), indent=2))
    return result


if __name__ == "__main__":
    main()
