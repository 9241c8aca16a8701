"""The secure-sum input layout: weighted quantized update plus an exact within-clip count."""

import numpy as np
import pytest

from privet.privacy.secagg import QuantizationError, QuantizationSpec, sum_mod
from privet.privacy.secagg.update_vector import decode_update_sum, encode_update

SHAPES = [(4, 5), (5,)]


def test_sum_of_encoded_updates_decodes_to_the_weighted_sum_and_the_count():
    spec = QuantizationSpec(clip_norm=2.0, num_clients=6)
    rng = np.random.default_rng(1)
    updates = [[rng.uniform(-0.3, 0.3, size=s) for s in SHAPES] for _ in range(6)]
    weights = [1.0, 0.5, 0.25, 1.0, 0.8, 0.1]
    within = [True, False, True, True, False, True]
    encoded = [
        encode_update(u, w, f, spec, np.random.default_rng(i))
        for i, (u, w, f) in enumerate(zip(updates, weights, within, strict=True))
    ]
    assert all(e.values.shape == (26,) and e.clipped == 0 for e in encoded)
    total, count = decode_update_sum(sum_mod([e.values for e in encoded], spec), 6, spec, SHAPES)
    assert count == 4
    for part, shape in zip(total, SHAPES, strict=True):
        assert part.shape == shape
    exact = [sum(w * u[i] for w, u in zip(weights, updates, strict=True)) for i in range(2)]
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(total, exact, strict=True))
    assert 0 < worst < spec.error_bound(6)


def test_weights_outside_unit_interval_and_a_forged_count_are_refused():
    spec = QuantizationSpec(clip_norm=1.0, num_clients=3)
    update = [np.zeros(s) for s in SHAPES]
    for weight in (0.0, 1.5, float("nan")):
        with pytest.raises(QuantizationError, match="weight"):
            encode_update(update, weight, True, spec)
    forged = np.zeros(26, dtype=np.uint64)
    forged[-1] = 5  # not a multiple of levels - 1
    with pytest.raises(QuantizationError, match="within-clip"):
        decode_update_sum(forged, 3, spec, SHAPES)
    forged[-1] = 4 * (spec.levels - 1)  # more within-clip updates than clients summed
    with pytest.raises(QuantizationError, match="within-clip"):
        decode_update_sum(forged, 3, spec, SHAPES)
