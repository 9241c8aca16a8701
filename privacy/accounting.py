"""Backward-compatible home of Privet's accounting names.

The code lives in `privacy.events` (what was released) and `privacy.accountants` (how it adds up
to ε); this module re-exports the names other packages imported from here before the split.
"""

from __future__ import annotations

from privacy.accountants import DEFAULT_RDP_ORDERS, epsilon_for
from privacy.events import PoissonGaussianSteps, compose

__all__ = ["DEFAULT_RDP_ORDERS", "PoissonGaussianSteps", "compose", "epsilon_for"]
