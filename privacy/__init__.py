"""Differential-privacy accounting, calibration and ledgers, independent of Flower and of Privet.

- `privacy.events`: immutable descriptions of what was released (DP-SGD steps, DP-FedAvg rounds).
- `privacy.accountants`: RDP (default), PRV and PLD accountants that compose events into ε.
- `privacy.calibration`: the inverse problem, the noise that meets a target ε.
- `privacy.ledger` / `privacy.storage`: the write-ahead record of every release, on disk.
"""

from privacy.accountants import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    DEFAULT_RDP_ORDERS,
    EXTRA_RDP_ORDERS,
    OPACUS_RDP_ORDERS,
    Accountant,
    AccountingError,
    PldAccountant,
    PrvAccountant,
    RdpAccountant,
    epsilon_for,
    get_accountant,
    rdp_epsilon_classic,
)
from privacy.calibration import (
    MAX_NOISE_MULTIPLIER,
    CalibrationError,
    client_noise_for_target_epsilon,
    noise_for_target_epsilon,
)
from privacy.events import (
    CENTRED_COUNT_SENSITIVITY,
    ClientLevelRound,
    GaussianComposition,
    Level,
    PoissonGaussianSteps,
    PrivacyEvent,
    compose,
    event_from_dict,
    gaussian_compositions,
    update_noise_for_adaptive_clipping,
)
from privacy.ledger import LEDGER_SCHEMA_VERSION, LedgerEntry, LedgerError, PrivacyLedger
from privacy.report import ClientPrivacy, ClientReportError
from privacy.storage import atomic_write_bytes, atomic_write_text

__all__ = [
    "ACCOUNTANTS",
    "CENTRED_COUNT_SENSITIVITY",
    "DEFAULT_ACCOUNTANT",
    "DEFAULT_RDP_ORDERS",
    "EXTRA_RDP_ORDERS",
    "LEDGER_SCHEMA_VERSION",
    "MAX_NOISE_MULTIPLIER",
    "OPACUS_RDP_ORDERS",
    "Accountant",
    "AccountingError",
    "CalibrationError",
    "ClientLevelRound",
    "ClientPrivacy",
    "ClientReportError",
    "GaussianComposition",
    "LedgerEntry",
    "LedgerError",
    "Level",
    "PldAccountant",
    "PoissonGaussianSteps",
    "PrivacyEvent",
    "PrivacyLedger",
    "PrvAccountant",
    "RdpAccountant",
    "atomic_write_bytes",
    "atomic_write_text",
    "client_noise_for_target_epsilon",
    "compose",
    "epsilon_for",
    "event_from_dict",
    "gaussian_compositions",
    "get_accountant",
    "noise_for_target_epsilon",
    "rdp_epsilon_classic",
    "update_noise_for_adaptive_clipping",
]
