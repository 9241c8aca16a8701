import numpy as np
import pytest
from scipy import stats

from privet.privacy.secagg.crypto import (
    SecAggCryptoError,
    SeededRandom,
    agree,
    decrypt_shares,
    derive_mask_seed,
    derive_share_key,
    encrypt_shares,
    expand_mask,
    generate_private_key,
    public_bytes,
)


def test_agreement_is_symmetric_and_labels_separate_keys():
    a, b = generate_private_key(), generate_private_key()
    shared = agree(a, public_bytes(b))
    assert shared == agree(b, public_bytes(a))
    seed, key = derive_mask_seed(shared, b"r1"), derive_share_key(shared, b"r1")
    assert len(seed) == len(key) == 32
    assert seed != key
    assert derive_mask_seed(shared, b"r2") != seed


def test_low_order_public_key_is_refused():
    with pytest.raises(SecAggCryptoError, match="low-order"):
        agree(generate_private_key(), bytes(32))


def test_share_encryption_round_trip_and_tampering():
    key = derive_share_key(agree(generate_private_key(), public_bytes(generate_private_key())))
    blob = encrypt_shares(key, b"secret shares", sender=3, receiver=5, round_id=9)
    assert decrypt_shares(key, blob, 3, 5, 9) == b"secret shares"
    tampered = bytearray(blob)
    tampered[20] ^= 1
    with pytest.raises(SecAggCryptoError, match="from client 3 to 5 in round 9 failed auth"):
        decrypt_shares(key, bytes(tampered), 3, 5, 9)
    for sender, receiver, round_id in [(5, 3, 9), (3, 6, 9), (3, 5, 10)]:  # misbound
        with pytest.raises(SecAggCryptoError, match="failed authentication"):
            decrypt_shares(key, blob, sender, receiver, round_id)
    with pytest.raises(SecAggCryptoError, match="truncated"):
        decrypt_shares(key, blob[:10], 3, 5, 9)


def test_expand_mask_matches_the_rfc8439_chacha20_test_vector():
    # RFC 8439 A.1 test vector #1: all-zero key and nonce, block counter 0.
    first = bytes.fromhex("76b8e0ada0f13d90405d6ae55386bd28")
    words = [int.from_bytes(first[:8], "little"), int.from_bytes(first[8:], "little")]
    mask = expand_mask(bytes(32), 2, 40)
    assert [int(v) for v in mask] == [w & (2**40 - 1) for w in words]


def test_expand_mask_is_deterministic_in_range_and_uniform():
    seed = bytes(range(32))
    a = expand_mask(seed, 50_000, 21)
    assert a.dtype == np.uint32 and a.shape == (50_000,)  # 21 bits fit 32-bit words
    assert np.array_equal(a, expand_mask(seed, 50_000, 21))
    assert int(a.max()) < 2**21
    assert not np.array_equal(a, expand_mask(bytes(31) + b"\x01", 50_000, 21))
    counts = np.bincount((a >> np.uint64(17)).astype(np.int64), minlength=16)
    assert stats.chisquare(counts).pvalue > 0.001
    assert stats.kstest(a / 2**21, "uniform").pvalue > 0.001
    with pytest.raises(SecAggCryptoError):
        expand_mask(b"short", 4, 8)


def test_seeded_random_is_reproducible_and_distinct_per_seed():
    assert SeededRandom(bytes(32))(40) == SeededRandom(bytes(32))(40)
    assert SeededRandom(bytes(32))(40) != SeededRandom(b"\x01" * 32)(40)
    r = SeededRandom(bytes(32))
    assert r(16) + r(16) == SeededRandom(bytes(32))(32)
