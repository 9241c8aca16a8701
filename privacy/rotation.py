"""The randomized Hadamard rotation of distributed DP (issue 16): spread a vector's energy evenly.

Before a client quantizes its clipped update to integers, it rotates it with H·D/√d′: D is a
diagonal of random signs drawn from a public per-round seed (the same for every client, so the
sum of rotated updates is the rotated sum), H the Walsh–Hadamard matrix, and d′ the dimension
padded to a power of two. The rotation keeps the L2 norm, and it makes every coordinate about
‖x‖/√d′ in size, so few coordinates wrap around the modulus of secure aggregation (Kairouz, Liu,
Steinke 2021, Section 4). The server undoes it on the unmasked sum: D·H/√d′ (H is symmetric and
H·H = d′·I).

The seed is public: the rotation protects nothing by itself; it only conditions the vector.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["padded_dimension", "rotate", "signs", "unrotate", "walsh_hadamard"]


def padded_dimension(dimension: int) -> int:
    """The smallest power of two at least ``dimension`` (and at least 1)."""
    if dimension < 0:
        raise ValueError(f"dimension must be at least 0, got {dimension}")
    return 1 << max(0, (dimension - 1).bit_length())


def walsh_hadamard(values: np.ndarray) -> np.ndarray:
    """H·x for a vector whose length is a power of two (unnormalised: H·H = d·I), in float64."""
    x = np.asarray(values, dtype=np.float64).copy()
    size = x.shape[0]
    if size & (size - 1) or size == 0:
        raise ValueError(f"the length must be a power of two, got {size}")
    half = 1
    while half < size:
        pairs = x.reshape(-1, 2, half)
        top, bottom = pairs[:, 0, :].copy(), pairs[:, 1, :]
        pairs[:, 0, :] += bottom
        pairs[:, 1, :] = top - bottom
        half *= 2
    return x


def signs(seed: bytes, size: int) -> np.ndarray:
    """The diagonal D: ``size`` independent ±1 drawn from a public ``seed``, alike everywhere."""
    words = np.frombuffer(hashlib.sha256(b"privet/rotation/v1|" + seed).digest(), dtype=np.uint32)
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence(words.tolist())))
    return generator.integers(0, 2, size=size, dtype=np.int8).astype(np.float64) * 2 - 1


def rotate(vector: np.ndarray, seed: bytes) -> np.ndarray:
    """H·D·x/√d′ of ``vector`` zero-padded to d′ = `padded_dimension`; its norm is x's."""
    x = np.asarray(vector, dtype=np.float64).ravel()
    size = padded_dimension(x.shape[0])
    padded = np.zeros(size)
    padded[: x.shape[0]] = x
    return walsh_hadamard(signs(seed, size) * padded) / np.sqrt(size)


def unrotate(rotated: np.ndarray, seed: bytes, dimension: int) -> np.ndarray:
    """The inverse of `rotate`: D·H·y/√d′, cut back to the first ``dimension`` coordinates."""
    y = np.asarray(rotated, dtype=np.float64).ravel()
    size = y.shape[0]
    if size != padded_dimension(dimension):
        raise ValueError(
            f"a rotated vector of {dimension} coordinates has {padded_dimension(dimension)}, "
            f"got {size}"
        )
    return (signs(seed, size) * walsh_hadamard(y) / np.sqrt(size))[:dimension]
