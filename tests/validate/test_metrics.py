"""The one definition of SQNR, top-1 agreement and accuracy: identical outputs, zero signal, NaN, Inf, shapes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ffnet_deploy.errors import ParityError, RuntimeBackendError, ShapeMismatchError
from ffnet_deploy.validate.metrics import (
    MetricAccumulator,
    compare_outputs,
    sqnr_db,
    sqnr_sort_key,
    top1_accuracy,
    top1_agreement,
    top1_matches,
    topk_hits,
)

# -- SQNR -----------------------------------------------------------------------------------------------------------


def test_sqnr_definition():
    ref = np.array([3.0, 4.0])  # signal 25
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref + [0.5, 0.0]) == pytest.approx(10 * math.log10(25 / 0.25))  # 20 dB
    assert sqnr_db(ref, ref * 0) == pytest.approx(0.0)
    assert math.isnan(sqnr_db(ref, [np.nan, 1.0]))
    assert sqnr_db(np.zeros(2), [1.0, 0.0]) == -math.inf
    assert sqnr_db(np.ones((1, 4)), np.ones(4)) == math.inf  # same size, other shape
    with pytest.raises(RuntimeBackendError, match="does not match"):
        sqnr_db(np.ones(3), np.ones(4))


def test_sqnr_identical_and_zero_signal():
    assert sqnr_db(np.zeros((2, 3)), np.zeros((2, 3))) == math.inf  # no signal, no noise: identical
    assert sqnr_db(np.zeros(0), np.zeros(0)) == math.inf  # nothing differs
    assert sqnr_db(np.zeros(3), [0.0, 0.0, -1e-30]) == -math.inf  # any noise on a zero signal
    ref = np.float32([1.5, -2.0, 0.25])
    assert sqnr_db(ref, ref.astype(np.float16)) == math.inf  # exact in fp16 too: compared in float64
    assert sqnr_db(ref, ref.astype(np.float64) + 1e-300) == math.inf  # below float64 resolution of the values


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("side", ["reference", "output"])
def test_sqnr_of_nonfinite_values_is_nan(bad, side):
    clean, broken = np.array([1.0, 2.0]), np.array([1.0, bad])
    ref, out = (broken, clean) if side == "reference" else (clean, broken)
    assert math.isnan(sqnr_db(ref, out))
    assert math.isnan(sqnr_db(broken, broken))  # not "identical": nothing meaningful was compared


def test_sqnr_shape_mismatch_is_one_error_of_both_kinds():
    with pytest.raises(ShapeMismatchError) as err:
        sqnr_db(np.ones((2, 3)), np.ones(5), what="localize | activation of stages.0.0")
    assert isinstance(err.value, ParityError) and isinstance(err.value, RuntimeBackendError)
    assert str(err.value) == ("localize | activation of stages.0.0 shape (5,) does not match the reference (2, 3)")


def test_nan_sorts_first_deterministically():
    values = [3.0, math.nan, -math.inf, math.inf, 1.0, math.nan, -5.0]
    orders = {tuple(str(v) for v in sorted(p, key=sqnr_sort_key)) for p in itertools.permutations(values)}
    assert orders == {("nan", "nan", "-inf", "-5.0", "1.0", "3.0", "inf")}


# -- top-1 agreement ------------------------------------------------------------------------------------------------


def test_top1_agreement_identical_and_zero_logits():
    ref = np.random.default_rng(0).normal(size=(6, 10))
    assert top1_agreement(ref, ref) == 1.0
    assert top1_agreement(np.zeros((3, 4)), np.zeros((3, 4))) == 1.0  # ties: the lowest class on both sides
    out = ref.copy()
    out[0] = -ref[0]
    assert top1_agreement(ref, out) == pytest.approx(5 / 6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_sample_disagrees_over_all_samples(bad):
    ref = np.eye(4) * 5.0
    out = ref.copy()
    out[1, 1] = bad  # would still "win" the arg-max for +inf, or hide behind a NaN
    assert top1_matches(ref, out).tolist() == [True, False, True, True]
    assert top1_agreement(ref, out) == 0.75
    assert top1_agreement(out, ref) == 0.75  # a broken reference row is no agreement either
    # The streamed parity metrics count the same way (tests/validate/test_engine.py pins the engine side).
    assert compare_outputs(ref, out).top1_agreement == 0.75


def test_top1_shapes():
    ref = np.random.default_rng(1).normal(size=(2, 3))
    assert top1_agreement(ref, ref.reshape(2, 3, 1, 1)) == 1.0  # (B, C, 1, 1) outputs are (B, C)
    with pytest.raises(ShapeMismatchError, match="does not match"):
        top1_agreement(ref, np.zeros((2, 4)))
    with pytest.raises(ShapeMismatchError, match=r"\(samples, classes\)"):
        top1_agreement(np.zeros(3), np.zeros(3))
    with pytest.raises(ParityError, match="no samples"):
        top1_agreement(np.zeros((0, 3)), np.zeros((0, 3)))


# -- accuracy -------------------------------------------------------------------------------------------------------


def test_accuracy_counts_nonfinite_rows_as_wrong():
    logits = np.eye(4) * 3.0
    labels = np.arange(4)
    assert top1_accuracy(logits, labels) == 100.0
    logits[2, 2] = np.inf  # its arg-max is the label, but the row is broken
    logits[3, 0] = np.nan
    assert topk_hits(logits, labels).tolist() == [True, True, False, False]
    assert top1_accuracy(logits, labels) == 50.0
    assert topk_hits(logits, labels, k=5).tolist() == [True, True, False, False]  # k above the class count


def test_accuracy_shapes_and_empty_input():
    with pytest.raises(ShapeMismatchError, match="3 labels"):
        top1_accuracy(np.zeros((4, 2)), np.zeros(3, dtype=int))
    with pytest.raises(ParityError, match="no samples"):
        top1_accuracy(np.zeros((0, 2)), np.zeros(0, dtype=int))


def test_streamed_metrics_use_the_one_definitions():
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(40, 12))
    out = ref + rng.normal(size=ref.shape) * 0.8
    out[[3, 17], [0, 5]] = [np.nan, np.inf]
    ref[25, 2] = np.nan  # a broken reference row: wrong for the reference's accuracy, no agreement
    labels = rng.integers(0, 12, 40)
    acc = MetricAccumulator()
    for idx in np.array_split(np.arange(40), 3):
        acc.update(ref[idx], out[idx], labels[idx])
    m = acc.result()
    assert m.top1_agreement == top1_agreement(ref, out)
    assert m.ref_top1 == top1_accuracy(ref, labels)
    both_finite = np.isfinite(ref).all(1) & np.isfinite(out).all(1)
    assert m.top1 == pytest.approx(100.0 * (topk_hits(out, labels) & both_finite).mean())
    assert m.top5 == pytest.approx(100.0 * (topk_hits(out, labels, 5) & both_finite).mean())
