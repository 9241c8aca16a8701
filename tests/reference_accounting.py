"""The independent ε the tests compare Privet's numbers with: Opacus' RDP analysis, called directly.

Privet's own accountants are never the reference for a number Privet prints. The orders are
written out here (they are Opacus' defaults, which Privet also uses), so a change to Privet's
orders shows up as a failing comparison instead of moving both sides.
"""

from __future__ import annotations

import functools

from opacus.accountants.analysis import rdp

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@functools.lru_cache(maxsize=256)  # many clients share a (q, σ, steps): compute each once
def opacus_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """ε of `steps` Poisson-subsampled Gaussian steps (rate q, noise multiplier σ) at δ."""
    if steps == 0:
        return 0.0
    eps, _ = rdp.get_privacy_spent(
        orders=ORDERS,
        rdp=rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS),
        delta=delta,
    )
    return float(eps)
