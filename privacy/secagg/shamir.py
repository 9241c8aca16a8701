"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 − 1).

Shamir, "How to Share a Secret", CACM 1979. A secret s < 2^256 is the constant term of a random
polynomial f of degree t − 1 over GF(p); the share of holder x (x ≥ 1) is f(x). Any t shares
determine f, hence s = f(0), by Lagrange interpolation; any t − 1 shares are consistent with every
possible secret (perfect secrecy), so they reveal nothing.

The field is the Mersenne prime p = 2^521 − 1, much larger than the secrets: a reconstruction that
uses a garbled share (e.g. random bytes) lands on a value ≥ 2^256 with overwhelming probability,
which is reported rather than returned as a wrong key. This is a sanity check, not integrity: a
deliberately crafted share can shift the secret undetected (the threat model is honest-but-curious).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from privet.privacy.secagg.crypto import RandomSource, SecAggError

PRIME = 2**521 - 1
SECRET_BYTES = 32
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 66


class ShamirError(SecAggError):
    """Sharing parameters that make no sense, or shares that cannot reconstruct a secret."""


def _random_field_element(random_bytes: RandomSource) -> int:
    # Rejection sampling: 521 random bits, retried on the (single) value ≥ p. Uniform on GF(p).
    while True:
        value = int.from_bytes(random_bytes(SHARE_BYTES), "big") & ((1 << 521) - 1)
        if value < PRIME:
            return value


def split(
    secret: bytes,
    threshold: int,
    holders: Iterable[int],
    random_bytes: RandomSource = os.urandom,
) -> dict[int, bytes]:
    """Share ``secret`` (32 bytes) so that any ``threshold`` of ``holders`` can rebuild it.

    ``holders`` are the x-coordinates (distinct ints ≥ 1); each share is f(x) as 66 big-endian
    bytes.
    """
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise ShamirError(f"secret must be {SECRET_BYTES} bytes")
    xs = list(holders)
    if len(set(xs)) != len(xs) or any(
        isinstance(x, bool) or not isinstance(x, int) or not 1 <= x < PRIME for x in xs
    ):
        raise ShamirError("share holders must be distinct ints in [1, p)")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ShamirError(f"threshold must be an int, got {threshold!r}")
    if not 1 <= threshold <= len(xs):
        raise ShamirError(f"threshold must be in [1, {len(xs)}] for {len(xs)} holders")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [_random_field_element(random_bytes) for _ in range(threshold - 1)]
    shares: dict[int, bytes] = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner's rule
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def interpolate_at_zero(shares: Mapping[int, bytes]) -> int:
    """Lagrange interpolation of f(0) through the given points, as a field element.

    Exposed for tests that show what fewer than t shares yield; use ``reconstruct`` otherwise.
    """
    points = [(x, int.from_bytes(y, "big")) for x, y in shares.items()]
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """Rebuild a 32-byte secret from at least ``threshold`` shares {x: f(x)}.

    Fewer than ``threshold`` shares raise: they carry no information about the secret. Exactly
    ``threshold`` shares are used (the smallest x first).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ShamirError(f"threshold must be a positive int, got {threshold!r}")
    if len(shares) < threshold:
        raise ShamirError(f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret")
    for x, y in shares.items():
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x < PRIME:
            raise ShamirError(f"share index must be an int in [1, p), got {x!r}")
        if not isinstance(y, bytes) or len(y) != SHARE_BYTES:
            raise ShamirError(f"a share is {SHARE_BYTES} bytes")
        if int.from_bytes(y, "big") >= PRIME:
            raise ShamirError("share value is not a field element")
    chosen = {x: shares[x] for x in sorted(shares)[:threshold]}
    value = interpolate_at_zero(chosen)
    if value >= 1 << (8 * SECRET_BYTES):
        raise ShamirError("shares are inconsistent: they do not reconstruct a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")
