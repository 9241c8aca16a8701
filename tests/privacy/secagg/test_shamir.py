import itertools
import os

import pytest

from privet.privacy.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    ShamirError,
    interpolate_at_zero,
    reconstruct,
    split,
)


def _lagrange_at(points, x):
    """Independent evaluation at x of the polynomial through ``points`` over GF(PRIME)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                term = term * (x - xj) * pow(xi - xj, -1, PRIME) % PRIME
        total = (total + term) % PRIME
    return total


def test_any_t_shares_reconstruct_the_secret():
    secret = os.urandom(32)
    holders = [1, 2, 5, 9, 12, 40]
    shares = split(secret, 4, holders)
    assert all(len(s) == SHARE_BYTES for s in shares.values())
    for subset in itertools.combinations(holders, 4):
        assert reconstruct({x: shares[x] for x in subset}, 4) == secret
    assert reconstruct(shares, 4) == secret  # more than t is fine


def test_threshold_one_and_full():
    secret = os.urandom(32)
    assert reconstruct({3: split(secret, 1, [3, 4])[3]}, 1) == secret
    shares = split(secret, 3, [1, 2, 3])
    assert reconstruct(shares, 3) == secret


def test_fewer_than_t_shares_refuse_and_reveal_nothing():
    secret = os.urandom(32)
    shares = split(secret, 4, [1, 2, 3, 4, 5])
    partial = {x: shares[x] for x in (1, 2, 3)}
    with pytest.raises(ShamirError, match="3 shares cannot reconstruct a 4-of-n secret"):
        reconstruct(partial, 4)
    assert interpolate_at_zero(partial) != int.from_bytes(secret, "big")
    # Perfect secrecy: the t - 1 shares are consistent with ANY other secret. For a chosen
    # secret B, the polynomial through (0, B) and the three shares gives a fourth share that
    # together with them reconstructs B.
    other = os.urandom(32)
    points = [(0, int.from_bytes(other, "big"))]
    points += [(x, int.from_bytes(y, "big")) for x, y in partial.items()]
    fourth = _lagrange_at(points, 7).to_bytes(SHARE_BYTES, "big")
    assert reconstruct({**partial, 7: fourth}, 4) == other


def test_inconsistent_shares_are_detected():
    secret = os.urandom(32)
    shares = split(secret, 3, [1, 2, 3, 4])
    bad = dict(shares)
    # A garbled share (random field element) lands outside [0, 2^256) with probability 1 - 2^-265.
    bad[1] = (int.from_bytes(os.urandom(64), "big") % PRIME).to_bytes(SHARE_BYTES, "big")
    with pytest.raises(ShamirError, match="inconsistent"):
        reconstruct(bad, 3)


def test_bad_parameters():
    with pytest.raises(ShamirError, match="32 bytes"):
        split(b"short", 2, [1, 2])
    with pytest.raises(ShamirError, match="distinct"):
        split(bytes(32), 2, [1, 1, 2])
    with pytest.raises(ShamirError, match="distinct"):
        split(bytes(32), 2, [0, 1, 2])
    with pytest.raises(ShamirError, match="threshold must be in"):
        split(bytes(32), 4, [1, 2, 3])
    with pytest.raises(ShamirError, match="a share is 66 bytes"):
        reconstruct({1: b"x", 2: b"y"}, 2)
