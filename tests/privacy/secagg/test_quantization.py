import numpy as np
import pytest

from privet.privacy.secagg import (
    QuantizationError,
    QuantizationSpec,
    dequantize_sum,
    quantize,
    required_bits,
    sum_mod,
)


def test_bit_width_grows_with_clients_and_never_overflows():
    widths = [QuantizationSpec(1.0, n, levels=2**16).bits for n in (1, 2, 10, 100, 1000, 10**5)]
    assert widths == sorted(widths)
    assert widths[-1] > widths[0]
    for n in (1, 2, 3, 10, 100, 1000, 10**5):
        spec = QuantizationSpec(1.0, n, levels=2**16)
        assert spec.sum_bound == n * (2**16 - 1)
        assert spec.sum_bound < 2**spec.bits  # the largest sum fits
        assert spec.sum_bound >= 2 ** (spec.bits - 1)  # and the width is the smallest that does


def test_explicit_bits_below_the_safe_width_are_rejected():
    need = required_bits(10, 2**16)
    assert QuantizationSpec(1.0, 10, levels=2**16, bits=need + 3).bits == need + 3
    with pytest.raises(QuantizationError, match="bits must be"):
        QuantizationSpec(1.0, 10, levels=2**16, bits=need - 1)
    with pytest.raises(QuantizationError, match="more than the supported 62"):
        QuantizationSpec(1.0, 2**40, levels=2**30)
    with pytest.raises(QuantizationError, match="clip_norm"):
        QuantizationSpec(0.0, 10)


@pytest.mark.parametrize("value", [1.0, -1.0])
def test_every_client_at_the_extreme_does_not_overflow(value):
    n, c = 50, 1.0
    spec = QuantizationSpec(c, n, levels=2**12)
    updates = [quantize([np.full(100, value * c)], spec).values for _ in range(n)]
    total = sum_mod(updates, spec)
    exact = sum(int(u[0]) for u in updates)
    assert int(total[0]) == exact == (n * (spec.levels - 1) if value > 0 else 0)
    (floats,) = dequantize_sum(total, n, spec, [(100,)])
    np.testing.assert_allclose(floats, n * value * c, atol=1e-9)


def test_clipped_coordinates_are_counted_not_silent():
    spec = QuantizationSpec(2.0, 4, levels=101)
    update = quantize([np.array([0.5, 2.5, -7.0]), np.array([[2.0, -2.0000001]])], spec)
    assert update.clipped == 3
    assert update.values[1] == spec.levels - 1 and update.values[2] == 0
    assert update.shapes == ((3,), (1, 2))
    assert quantize([np.zeros(5)], spec).clipped == 0


def test_non_finite_values_are_an_error():
    spec = QuantizationSpec(1.0, 2)
    with pytest.raises(QuantizationError, match="NaN or infinite"):
        quantize([np.array([0.0, np.nan])], spec)


def test_stochastic_rounding_is_unbiased_and_within_one_step():
    spec = QuantizationSpec(1.0, 1, levels=11)  # step 0.2
    x = np.full(200_000, 0.13)
    q = quantize([x], spec, np.random.default_rng(1)).values
    values = q.astype(np.float64) * spec.step - 1.0
    assert np.all(np.abs(values - x) < spec.step)
    assert set(np.unique(np.round(values, 9))) == {0.0, 0.2}
    # mean error: standard deviation of the mean is at most 0.1 / sqrt(200000) = 2.2e-4
    assert abs(values.mean() - 0.13) < 1.5e-3


def test_dequantized_sum_matches_the_float_sum_within_the_bound():
    rng = np.random.default_rng(3)
    n, c = 10, 1.0
    spec = QuantizationSpec(c, n, levels=2**10)
    shapes = [(4, 5), (7,)]
    floats, quantized = [], []
    for _ in range(n):
        arrays = [rng.normal(size=s) for s in shapes]
        norm = np.sqrt(sum(float(np.sum(a**2)) for a in arrays))
        arrays = [a * min(1.0, c / norm) for a in arrays]  # L2 clipping as the client does
        floats.append(arrays)
        q = quantize(arrays, spec, rng)
        assert q.clipped == 0
        quantized.append(q.values)
    out = dequantize_sum(sum_mod(quantized, spec), n, spec, shapes)
    for k, shape in enumerate(shapes):
        exact = sum(f[k] for f in floats)
        assert out[k].shape == shape
        assert np.max(np.abs(out[k] - exact)) < spec.error_bound(n)


def test_dequantize_rejects_sums_this_spec_cannot_produce():
    spec = QuantizationSpec(1.0, 3, levels=16)
    with pytest.raises(QuantizationError, match="sum exceeds"):
        dequantize_sum(np.array([16 * 2], dtype=np.uint64), 2, spec, [(1,)])
    with pytest.raises(QuantizationError, match="coordinates"):
        dequantize_sum(np.zeros(3, dtype=np.uint64), 2, spec, [(2,)])
    with pytest.raises(QuantizationError, match="num_summed"):
        dequantize_sum(np.zeros(2, dtype=np.uint64), 4, spec, [(2,)])
