"""Differential-privacy accounting, calibration and ledgers, independent of Flower and of Privet.

- `privacy.events`: immutable descriptions of what was released (DP-SGD steps, DP-FedAvg rounds),
  open to new mechanisms through `register_event`.
- `privacy.accountants`: RDP (default), PRV and PLD accountants that compose events into ε; each
  says which events it `supports`, and `register_accountant` adds more.
- `privacy.calibration`: the inverse problem, the noise that meets a target ε.
- `privacy.ledger` / `privacy.storage`: the write-ahead record of every release, on disk.
"""

from privet.privacy.accountants import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    DEFAULT_RDP_ORDERS,
    EXTRA_RDP_ORDERS,
    OPACUS_RDP_ORDERS,
    Accountant,
    AccountingError,
    GaussianAccountant,
    PldAccountant,
    PrvAccountant,
    RdpAccountant,
    accountant_names,
    accountants_supporting,
    epsilon_for,
    get_accountant,
    rdp_epsilon_classic,
    register_accountant,
    unregister_accountant,
)
from privet.privacy.calibration import (
    MAX_NOISE_MULTIPLIER,
    CalibrationError,
    client_noise_for_target_epsilon,
    noise_for_target_epsilon,
)
from privet.privacy.events import (
    CENTRED_COUNT_SENSITIVITY,
    LEVELS,
    ClientLevelRound,
    Composition,
    GaussianComposition,
    Level,
    PoissonGaussianSteps,
    PrivacyEvent,
    compose,
    event_from_dict,
    event_level,
    event_type,
    gaussian_compositions,
    register_event,
    registered_events,
    unregister_event,
    update_noise_for_adaptive_clipping,
)
from privet.privacy.ledger import LEDGER_SCHEMA_VERSION, LedgerEntry, LedgerError, PrivacyLedger
from privet.privacy.report import ClientPrivacy, ClientReportError
from privet.privacy.storage import atomic_write_bytes, atomic_write_text

__all__ = [
    "ACCOUNTANTS",
    "CENTRED_COUNT_SENSITIVITY",
    "DEFAULT_ACCOUNTANT",
    "DEFAULT_RDP_ORDERS",
    "EXTRA_RDP_ORDERS",
    "LEDGER_SCHEMA_VERSION",
    "LEVELS",
    "MAX_NOISE_MULTIPLIER",
    "OPACUS_RDP_ORDERS",
    "Accountant",
    "AccountingError",
    "CalibrationError",
    "ClientLevelRound",
    "ClientPrivacy",
    "ClientReportError",
    "Composition",
    "GaussianAccountant",
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
    "accountant_names",
    "accountants_supporting",
    "atomic_write_bytes",
    "atomic_write_text",
    "client_noise_for_target_epsilon",
    "compose",
    "epsilon_for",
    "event_from_dict",
    "event_level",
    "event_type",
    "gaussian_compositions",
    "get_accountant",
    "noise_for_target_epsilon",
    "rdp_epsilon_classic",
    "register_accountant",
    "register_event",
    "registered_events",
    "unregister_accountant",
    "unregister_event",
    "update_noise_for_adaptive_clipping",
]
