"""Cryptographic building blocks of secure aggregation, all from the `cryptography` package.

- X25519 key agreement (RFC 7748) between each pair of clients.
- HKDF-SHA256 (RFC 5869) turns one agreed secret into independent keys by distinct ``info``
  labels: the seed of the pairwise mask, and the AEAD key that protects secret shares in transit.
- ChaCha20-Poly1305 (RFC 8439) encrypts share bundles; the associated data binds sender, receiver
  and round, so a ciphertext cannot be replayed to another pair or another round.
- ChaCha20 keystream as the PRG that expands a 256-bit seed into a mask vector mod 2^b.

This follows the instantiation of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017, §4 and §6 (key agreement, authenticated
encryption, PRG), with a stream cipher as the PRG as their implementation does.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
SEED_BYTES = 32
NONCE_BYTES = 12

# Distinct HKDF labels make the mask seed and the share-encryption key independent even though
# both come from one X25519 agreement (a key used for one purpose only).
MASK_SEED_INFO = b"privet/secagg/v1/pairwise-mask-seed"
SHARE_KEY_INFO = b"privet/secagg/v1/share-aead-key"
_AAD_PREFIX = b"privet/secagg/v1/shares"

RandomSource = Callable[[int], bytes]
"""A function n -> n random bytes. ``os.urandom`` in a deployment; only simulations may seed."""


class SecAggError(Exception):
    """Base class of every secure-aggregation error."""


class SecAggCryptoError(SecAggError):
    """A cryptographic check failed: a ciphertext was tampered with, or a key is malformed."""


class SeededRandom:
    """A reproducible CSPRNG (ChaCha20 keystream under a 32-byte seed), for simulations only.

    A deployment must use ``os.urandom``; results produced with this source must say they were
    seeded.
    """

    def __init__(self, seed: bytes) -> None:
        """Start the keystream of ``seed`` (exactly 32 bytes)."""
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise SecAggCryptoError(f"seed must be {SEED_BYTES} bytes")
        cipher = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None)
        self._stream = cipher.encryptor()

    def __call__(self, n: int) -> bytes:
        """Return the next ``n`` bytes of the keystream."""
        return self._stream.update(b"\x00" * n)


def generate_private_key(random_bytes: RandomSource = os.urandom) -> X25519PrivateKey:
    """Draw a fresh X25519 private key from ``random_bytes``."""
    return X25519PrivateKey.from_private_bytes(random_bytes(KEY_BYTES))


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``key``."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte private key (what a client secret-shares so a dropout can be unmasked)."""
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def load_private_key(raw: bytes) -> X25519PrivateKey:
    """Rebuild a private key from its raw 32 bytes."""
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise SecAggCryptoError(f"an X25519 private key is {KEY_BYTES} raw bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def agree(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret with a peer's raw public key; rejects the all-zero (weak) result."""
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise SecAggCryptoError(f"an X25519 public key is {KEY_BYTES} raw bytes")
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # low-order point: the agreement would be all zeros
        raise SecAggCryptoError("peer public key is a low-order point; agreement refused") from exc


def _hkdf(shared: bytes, info: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info + context).derive(
        shared
    )


def derive_mask_seed(shared: bytes, context: bytes = b"") -> bytes:
    """The 32-byte seed of the pairwise mask, from an agreed secret (``context``: e.g. round)."""
    return _hkdf(shared, MASK_SEED_INFO, context)


def derive_share_key(shared: bytes, context: bytes = b"") -> bytes:
    """The 32-byte ChaCha20-Poly1305 key protecting shares between a pair of clients."""
    return _hkdf(shared, SHARE_KEY_INFO, context)


def share_aad(sender: int, receiver: int, round_id: int) -> bytes:
    """Associated data that binds a share ciphertext to its sender, receiver and round."""
    return _AAD_PREFIX + struct.pack(">QQQ", sender, receiver, round_id)


def encrypt_shares(
    key: bytes,
    plaintext: bytes,
    sender: int,
    receiver: int,
    round_id: int,
    random_bytes: RandomSource = os.urandom,
) -> bytes:
    """Encrypt a share bundle; the result is nonce (12 bytes) || ciphertext || tag (16 bytes)."""
    nonce = random_bytes(NONCE_BYTES)
    aad = share_aad(sender, receiver, round_id)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def decrypt_shares(key: bytes, blob: bytes, sender: int, receiver: int, round_id: int) -> bytes:
    """Decrypt and authenticate a share bundle; any tampering raises ``SecAggCryptoError``."""
    if not isinstance(blob, bytes) or len(blob) < NONCE_BYTES + 16:
        raise SecAggCryptoError(f"share ciphertext from client {sender} to {receiver} is truncated")
    aad = share_aad(sender, receiver, round_id)
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise SecAggCryptoError(
            f"share ciphertext from client {sender} to {receiver} in round {round_id} "
            "failed authentication (tampered, misrouted or wrong key)"
        ) from exc


def word_bytes(bits: int) -> int:
    """Bytes per value for a ring of 2^bits: 4 up to 32 bits, else 8 (keystream and wire)."""
    return 4 if bits <= 32 else 8


def ring_dtype(bits: int) -> np.dtype:
    """The unsigned dtype that holds values mod 2^bits: uint32 up to 32 bits, else uint64.

    Numpy's unsigned array arithmetic wraps modulo 2^32 (or 2^64), a multiple of 2^bits, so sums
    and differences can be reduced once at the end instead of after every operation.
    """
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def expand_mask(seed: bytes, length: int, bits: int) -> np.ndarray:
    """Expand a 256-bit seed into ``length`` uniform values mod 2^bits (of `ring_dtype`).

    The ChaCha20 keystream (zero nonce: each seed keys exactly one mask) is read as little-endian
    words of `word_bytes(bits)` bytes, and each word is reduced by masking its low ``bits`` bits.
    For a power-of-two modulus this is exactly uniform (no modulo bias).
    """
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise SecAggCryptoError(f"mask seed must be {SEED_BYTES} bytes")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"mask length must be a non-negative int, got {length!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 62:
        raise ValueError(f"bits must be an int in [1, 62], got {bits!r}")
    width = word_bytes(bits)
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    stream = encryptor.update(bytes(width * length))
    dtype = ring_dtype(bits)
    words = np.frombuffer(stream, dtype=dtype.newbyteorder("<"))
    return (words & dtype.type((1 << bits) - 1)).astype(dtype, copy=False)
