"""What a client puts into the secure sum, and how the server reads the sum back.

The vector is the client's clipped model update scaled by its aggregation weight w ≤ 1,
quantized on the grid of `QuantizationSpec`, followed by one *within-clip* coordinate: the grid's
top index if the unscaled update was within the clip norm S, else 0. Summed over clients, that
coordinate is (levels − 1) times the number of updates that were within S — exactly what adaptive
clipping needs (Andrew et al. 2021) and a clipping statistic worth reporting, learned only as a
count over at least t clients. Client and server share this layout through this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from privet.privacy.secagg.quantization import (
    QuantizationError,
    QuantizationSpec,
    QuantizedUpdate,
    dequantize_sum,
    quantize,
)


def encode_update(
    update: Sequence[np.ndarray],
    weight: float,
    within_clip: bool,
    spec: QuantizationSpec,
    rng: np.random.Generator | None = None,
    norm_bound: float | None = None,
) -> QuantizedUpdate:
    """The client's secure-sum input: quantize(w · update) then the within-clip coordinate.

    ``norm_bound`` (client-level DP: the clip norm S the server's noise is calibrated to) makes
    the rounding conditional, so the rounded update's norm, and hence the sensitivity of the sum
    the server unmasks, is at most the bound (`privacy.secagg.quantization.quantize`).
    """
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0 < weight <= 1):
        raise QuantizationError(f"aggregation weight must be in (0, 1], got {weight!r}")
    scaled = [np.asarray(part, dtype=np.float64) * float(weight) for part in update]
    quantized = quantize(scaled, spec, rng, norm_bound)
    flag = np.array([spec.levels - 1 if within_clip else 0], dtype=np.uint64)
    return QuantizedUpdate(
        values=np.concatenate([quantized.values, flag]),
        shapes=quantized.shapes,
        clipped=quantized.clipped,
    )


def decode_update_sum(
    aggregate: np.ndarray,
    num_summed: int,
    spec: QuantizationSpec,
    shapes: Sequence[Sequence[int]],
) -> tuple[list[np.ndarray], int]:
    """(Σ w_k · update_k as float arrays, number of updates within S) from the unmasked sum."""
    aggregate = np.asarray(aggregate, dtype=np.uint64)
    if aggregate.ndim != 1 or aggregate.size < 2:
        raise QuantizationError("secure sum must be a vector of the update and one count")
    count, remainder = divmod(int(aggregate[-1]), spec.levels - 1)
    if remainder or not 0 <= count <= num_summed:
        raise QuantizationError(
            "the within-clip coordinate of the sum is not a count of the summed clients; "
            "a client did not follow the protocol"
        )
    return dequantize_sum(aggregate[:-1], num_summed, spec, shapes), count
