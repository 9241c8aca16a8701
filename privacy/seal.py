"""A node's secret seal: an HMAC that lets its own processes trust what another of them stored.

`privet node` makes a random secret for its lifetime and hands it to every message's process in
`SEAL_ENV`. What one process stores for the next in the node's private folder (a calibrated σ,
its encoded data) carries an HMAC-SHA256 under that secret; a later process uses an entry only if
its seal matches, so a damaged entry, one left by another node, or one edited since is never
trusted (it is recomputed). Without the secret (simulations, tests) nothing is sealed.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SEAL_ENV = "PRIVET_NODE_SEAL"
"""The node's secret, hex: set by `privet node` for its messages' processes only."""


def seal(payload: bytes) -> str | None:
    """The HMAC-SHA256 of ``payload`` under the node's secret, or None when there is none."""
    secret = os.environ.get(SEAL_ENV)
    if not secret:
        return None
    try:
        raw = bytes.fromhex(secret)
    except ValueError:
        return None
    return hmac.new(raw, payload, hashlib.sha256).hexdigest()


def is_sealed(payload: bytes, stored: object) -> bool:
    """Whether ``stored`` is this node's seal of ``payload`` (False without a secret)."""
    expected = seal(payload)
    return (
        expected is not None and isinstance(stored, str) and hmac.compare_digest(stored, expected)
    )
