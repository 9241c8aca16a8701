"""What distributed DP's client-side pieces cost, beside the baseline each replaces, in one run.

- Noise: `discrete_gaussian_array` (exact, integer arithmetic, OS randomness) beside numpy's
  continuous Gaussian (`Generator.normal`, what a float mechanism would draw), per coordinate.
- Wire: `encode_vector` / `decode_vector` packing masked values at the ring's width, beside the
  32-bit words secure aggregation sent before (`ndarray.tobytes` / `np.frombuffer`).

Each timing is the median of ``--repeats`` runs; ratios are Privet / baseline.

    .venv/bin/python -m benchmarks.distributed_dp_cost
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from privet.privacy.discrete_noise import discrete_gaussian_array
from privet.privacy.secagg.protocol import decode_vector, encode_vector


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinates", type=int, default=1 << 20)
    parser.add_argument("--variance", type=int, default=1_000_000)
    parser.add_argument("--bits", default="12,16,20")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    n = args.coordinates
    rng = np.random.default_rng(0)

    exact = median_seconds(lambda: discrete_gaussian_array(args.variance, n), args.repeats)
    floats = median_seconds(lambda: rng.normal(0.0, args.variance**0.5, n), args.repeats)
    print(f"noise, {n:,} coordinates, sigma^2 = {args.variance:,}:")
    print(
        f"  exact discrete Gaussian {exact * 1e3:8.1f} ms ({exact / n * 1e6:.2f} us a draw); "
        f"numpy normal {floats * 1e3:7.1f} ms; ratio {exact / floats:.1f}x"
    )
    print(f"wire, {n:,} values:")
    for bits in (int(part) for part in args.bits.split(",") if part):
        values = rng.integers(0, 1 << bits, size=n, dtype=np.uint64).astype(np.uint32)
        wire = encode_vector(values, bits)
        pack = median_seconds(lambda v=values, b=bits: encode_vector(v, b), args.repeats)
        unpack = median_seconds(lambda w=wire, b=bits: decode_vector(w, n, b), args.repeats)
        words = values.tobytes()
        word_pack = median_seconds(lambda v=values: v.tobytes(), args.repeats)
        word_unpack = median_seconds(
            lambda w=words: np.frombuffer(w, dtype="<u4").astype(np.uint32), args.repeats
        )
        print(
            f"  {bits:2d} bits: packed {len(wire) / 1e6:.2f} MB vs 32-bit words "
            f"{len(words) / 1e6:.2f} MB ({len(wire) / len(words):.2f}x); pack {pack * 1e3:.1f} ms "
            f"vs {word_pack * 1e3:.1f} ms, unpack {unpack * 1e3:.1f} ms vs "
            f"{word_unpack * 1e3:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
