"""Open privacy events and accountants: new ones added through the public registries alone.

Everything here is defined in this file, as a user would: an event type is registered with
`register_event`, an accountant with `register_accountant`; no Privet file is edited. Every ε is
checked against Google's dp-accounting, called directly.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import dp_accounting
import pytest

from privet.privacy import (
    ACCOUNTANTS,
    AccountingError,
    ClientLevelRound,
    GaussianComposition,
    LedgerEntry,
    LedgerError,
    Level,
    PoissonGaussianSteps,
    PrivacyEvent,
    PrivacyLedger,
    RdpAccountant,
    accountant_names,
    accountants_supporting,
    compose,
    epsilon_for,
    event_from_dict,
    event_type,
    gaussian_compositions,
    get_accountant,
    register_accountant,
    register_event,
    registered_events,
    unregister_accountant,
    unregister_event,
)
from tests.reference_accounting import PRIVET_INTEGER_ORDERS, PRIVET_ORDERS

DELTA = 1e-5


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


# -- a new event that reduces to a Gaussian: one unsampled Gaussian release ---------------------


@register_event("test_gaussian_release")
@dataclass(frozen=True)
class GaussianRelease(PrivacyEvent):
    """`releases` releases of a query of L2 sensitivity Δ plus N(0, σ²) noise, no sampling."""

    sensitivity: float
    noise_std: float
    releases: int = 1

    level: ClassVar[Level] = "example"

    @property
    def count(self) -> int:
        return self.releases

    def with_count(self, count: int) -> GaussianRelease:
        return GaussianRelease(self.sensitivity, self.noise_std, count)

    def compositions(self) -> tuple[GaussianComposition, ...]:
        # No sampling: q = 1, noise multiplier σ/Δ.
        return (GaussianComposition(self.noise_std / self.sensitivity, 1.0, self.releases),)


# -- a new event that does not: a Laplace release, and a pure-DP accountant for it --------------


class LaplaceComposition(NamedTuple):
    """`count` releases of the Laplace mechanism with scale b / sensitivity Δ = `scale`."""

    scale: float
    count: int


@register_event("test_laplace_release")
@dataclass(frozen=True)
class LaplaceRelease(PrivacyEvent):
    """One query of L1 sensitivity Δ plus Laplace(b) noise, `releases` times."""

    sensitivity: float
    scale: float
    releases: int = 1

    level: ClassVar[Level] = "example"

    @property
    def count(self) -> int:
        return self.releases

    def with_count(self, count: int) -> LaplaceRelease:
        return LaplaceRelease(self.sensitivity, self.scale, count)

    def compositions(self) -> tuple[LaplaceComposition, ...]:
        return (LaplaceComposition(self.scale / self.sensitivity, self.releases),)


class PureLaplaceAccountant:
    """Basic composition of Laplace releases: ε = Σ count·Δ/b (pure DP, any δ)."""

    name = "test_pure_laplace"

    def supports(self, event: PrivacyEvent) -> bool:
        return all(isinstance(item, LaplaceComposition) for item in event.compositions())

    def epsilon(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        return sum(
            item.count / item.scale
            for event in events
            for item in event.compositions()
            if isinstance(item, LaplaceComposition)
        )


@pytest.fixture(autouse=True, scope="module")
def registered() -> Iterator[None]:
    """The test accountant is registered for this module only (the events stay registered)."""
    register_accountant(PureLaplaceAccountant.name)(PureLaplaceAccountant)
    yield
    unregister_accountant(PureLaplaceAccountant.name)


# -- references: dp-accounting, called directly --------------------------------------------------


def dp_accounting_rdp_epsilon(
    events: list[dp_accounting.DpEvent], orders: Iterable[float]
) -> float:
    accountant = dp_accounting.rdp.RdpAccountant(list(orders))
    logging.disable(logging.WARNING)  # dp-accounting logs its convergence warnings
    try:
        for event in events:
            accountant.compose(event)
        return float(accountant.get_epsilon(DELTA))
    finally:
        logging.disable(logging.NOTSET)


def dp_accounting_pld_epsilon(events: list[dp_accounting.DpEvent]) -> float:
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for event in events:
        accountant.compose(event)
    return float(accountant.get_epsilon(DELTA))


def sampled_steps(sigma: float, q: float, steps: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


# -- the new Gaussian event in a ledger, beside DP-SGD steps ------------------------------------


def test_a_registered_event_is_stored_reloaded_and_accounted_like_dp_accounting(tmp_path):
    release = GaussianRelease(sensitivity=2.0, noise_std=30.0)  # one release at σ/Δ = 15
    history = [
        PoissonGaussianSteps(1.1, 0.01, 400),
        release,
        PoissonGaussianSteps(0.9, 0.02, 150),
        release,
    ]
    ledger = PrivacyLedger("client-7", "example", DELTA, path=tmp_path / "ledger.json")
    ledger.record(1, history[:2])
    ledger.record(2, history[2:])

    data = json.loads((tmp_path / "ledger.json").read_text())
    assert [entry["event"]["type"] for entry in data["entries"]] == [
        "poisson_gaussian_steps",
        "test_gaussian_release",
        "poisson_gaussian_steps",
        "test_gaussian_release",
    ]
    assert data["entries"][1]["event"] == {
        "type": "test_gaussian_release",
        "sensitivity": 2.0,
        "noise_std": 30.0,
        "releases": 1,
    }

    reloaded = PrivacyLedger.load(tmp_path / "ledger.json")
    assert reloaded.events() == history
    assert reloaded.digest() == ledger.digest()
    assert reloaded.steps() == 550  # DP-SGD steps only

    reference_events = [
        sampled_steps(1.1, 0.01, 400),
        dp_accounting.GaussianDpEvent(15.0),
        sampled_steps(0.9, 0.02, 150),
        dp_accounting.GaussianDpEvent(15.0),
    ]
    # Privet's RDP on its integer orders is dp-accounting's exact sum at the same orders.
    ours = epsilon_for(reloaded.events(), DELTA, RdpAccountant(PRIVET_INTEGER_ORDERS))
    assert ours == pytest.approx(
        dp_accounting_rdp_epsilon(reference_events, PRIVET_INTEGER_ORDERS), rel=1e-9
    )
    # The default accountant (fractional orders too) and the PLD accountant, on the ledger itself:
    # dp-accounting on the same orders (its fractional-order RDP is approximate: 1e-4).
    assert reloaded.epsilon() == pytest.approx(
        dp_accounting_rdp_epsilon(reference_events, PRIVET_ORDERS), rel=1e-4
    )
    assert reloaded.epsilon("pld") == pytest.approx(
        dp_accounting_pld_epsilon(reference_events), rel=1e-3
    )
    # The release is charged: without it ε is smaller.
    assert reloaded.epsilon() > epsilon_for(history[::2], DELTA)
    assert data["epsilon_rdp"] == pytest.approx(reloaded.epsilon(), rel=1e-12)


def test_a_registered_event_goes_through_every_dispatch():
    release = GaussianRelease(1.0, 4.0, 3)
    assert registered_events()["test_gaussian_release"] is GaussianRelease
    assert event_type("test_gaussian_release") is GaussianRelease
    assert event_from_dict(release.to_dict()) == release
    assert gaussian_compositions([release, GaussianRelease(1.0, 4.0, 2)]) == [
        GaussianComposition(4.0, 1.0, 5)
    ]
    assert compose([release, release, GaussianRelease(1.0, 4.0, 0)]) == [
        GaussianRelease(1.0, 4.0, 6)
    ]
    assert set(accountants_supporting(release)) == set(ACCOUNTANTS)
    with pytest.raises(ValueError, match="separate ledgers") as error:
        gaussian_compositions([release, ClientLevelRound(1.0, 0.1)])
    one_line(error)
    with pytest.raises(LedgerError, match="separate ledger") as error:
        PrivacyLedger("server", "client", DELTA).record(1, [release])
    one_line(error)


def test_a_malformed_registered_event_is_one_line():
    for data in (
        {"type": "test_gaussian_release", "sensitivity": 1.0},
        {
            "type": "test_gaussian_release",
            "sensitivity": 1.0,
            "noise_std": 2.0,
            "releases": 1,
            "x": 0,
        },
    ):
        with pytest.raises(ValueError, match="test_gaussian_release") as error:
            event_from_dict(data)
        one_line(error)


# -- accountants say what they support ----------------------------------------------------------


@pytest.mark.parametrize("name", ACCOUNTANTS)
def test_a_gaussian_accountant_refuses_a_laplace_event_in_one_line(name):
    events = [PoissonGaussianSteps(1.0, 0.01, 10), LaplaceRelease(1.0, 2.0)]
    assert not get_accountant(name).supports(events[1])
    assert get_accountant(name).supports(events[0])
    with pytest.raises(AccountingError) as error:
        epsilon_for(events, DELTA, name)
    message = one_line(error)
    assert "'test_laplace_release'" in message and f"'{name}'" in message
    assert "test_pure_laplace" in message  # the accountant that does support it
    with pytest.raises(AccountingError):  # the accountant itself refuses, not only epsilon_for
        get_accountant(name).epsilon(events, DELTA)


def test_a_registered_accountant_accounts_its_own_events_and_refuses_others():
    assert accountant_names()[: len(ACCOUNTANTS)] == ACCOUNTANTS
    assert "test_pure_laplace" in accountant_names()
    laplace = [LaplaceRelease(1.0, 2.0), LaplaceRelease(0.5, 2.0, 3)]
    assert epsilon_for(laplace, DELTA, "test_pure_laplace") == pytest.approx(0.5 + 3 * 0.25)
    with pytest.raises(AccountingError) as error:
        epsilon_for([PoissonGaussianSteps(1.0, 0.01, 10)], DELTA, "test_pure_laplace")
    message = one_line(error)
    assert "'poisson_gaussian_steps'" in message and "rdp, prv, pld" in message


def test_a_ledger_of_an_event_only_another_accountant_supports(tmp_path):
    ledger = PrivacyLedger("client-1", "example", DELTA, path=tmp_path / "l.json")
    ledger.record(1, [LaplaceRelease(1.0, 4.0, 2)])
    assert json.loads((tmp_path / "l.json").read_text())["epsilon_rdp"] is None
    reloaded = PrivacyLedger.load(tmp_path / "l.json")
    assert reloaded.epsilon("test_pure_laplace") == pytest.approx(0.5)
    with pytest.raises(AccountingError) as error:
        reloaded.epsilon()
    one_line(error)
    # A budget check never allows a release whose cost the accountant cannot bound.
    assert math.isinf(reloaded.epsilon_if_bounded([LaplaceRelease(1.0, 4.0)]))


def test_an_event_nobody_supports_says_so():
    @dataclass(frozen=True)
    class Mystery(PrivacyEvent):
        level: ClassVar[Level] = "example"

        @property
        def count(self) -> int:
            return 1

        def with_count(self, count: int) -> Mystery:
            return self

        def compositions(self) -> tuple[str, ...]:
            return ("?",)  # type: ignore[return-value]

    with pytest.raises(AccountingError, match="no registered accountant") as error:
        epsilon_for([Mystery()], DELTA)
    one_line(error)


# -- the registry's own errors ------------------------------------------------------------------


def test_registering_events_badly_is_one_line():
    with pytest.raises(ValueError, match="already registered") as error:

        @register_event("poisson_gaussian_steps")
        @dataclass(frozen=True)
        class Impostor(GaussianRelease):
            pass

    one_line(error)
    for kind in ("", "Upper", "with space", 3):
        with pytest.raises(ValueError) as error:
            register_event(kind)  # type: ignore[arg-type]
        one_line(error)
    with pytest.raises(TypeError) as error:
        register_event("test_not_an_event")(dict)  # type: ignore[type-var]
    one_line(error)
    with pytest.raises(ValueError, match="built-in") as error:
        unregister_event("poisson_gaussian_steps")
    one_line(error)
    with pytest.raises(ValueError, match="built-in") as error:
        unregister_accountant("rdp")
    one_line(error)
    with pytest.raises(ValueError, match="built-in") as error:
        register_accountant("rdp")(PureLaplaceAccountant)
    one_line(error)
    assert type(get_accountant("rdp")).__name__ == "RdpAccountant"


def test_an_unregistered_event_type_is_never_recorded():
    @dataclass(frozen=True)
    class Unregistered(GaussianRelease):
        pass

    ledger = PrivacyLedger("client-1", "example", DELTA)
    with pytest.raises(LedgerError, match="register_event") as error:
        ledger.record(1, [Unregistered(1.0, 2.0)])
    one_line(error)
    assert ledger.entries == ()


# -- ledger files naming kinds this process does not know ---------------------------------------


def _ledger_file(path: Path, event: dict[str, object]) -> None:
    entries = [
        {"round": 1, "recorded_at": 1.5, "event": PoissonGaussianSteps(1.0, 0.01, 5).to_dict()},
        {"round": 2, "recorded_at": 2.5, "event": event},
    ]
    data = {
        "schema_version": 2,
        "owner": "c",
        "level": "example",
        "delta": DELTA,
        "entries": entries,
    }
    path.write_text(json.dumps(data))


def test_an_unknown_event_kind_in_a_ledger_file_is_one_line(tmp_path):
    path = tmp_path / "l.json"
    _ledger_file(path, {"type": "skellam_rounds", "noise": 3.0})
    with pytest.raises(LedgerError) as error:
        PrivacyLedger.load(path)
    message = one_line(error)
    assert "'skellam_rounds'" in message and "entry 1" in message and str(path) in message


def test_a_kind_that_is_unregistered_cannot_be_read_back(tmp_path):
    @register_event("test_short_lived")
    @dataclass(frozen=True)
    class ShortLived(GaussianRelease):
        pass

    path = tmp_path / "l.json"
    _ledger_file(path, ShortLived(1.0, 2.0).to_dict())
    assert PrivacyLedger.load(path).events()[1] == ShortLived(1.0, 2.0)
    unregister_event("test_short_lived")
    with pytest.raises(LedgerError, match="'test_short_lived'") as error:
        PrivacyLedger.load(path)
    one_line(error)


# -- files written before the registry read and bind exactly as before --------------------------

# Written by Privet before events were open (digests and ε taken from that code).
_SCHEMA_2_FILE = {
    "schema_version": 2,
    "owner": "client-3",
    "level": "example",
    "delta": 1e-05,
    "epsilon_rdp": 0.0,
    "entries": [
        {
            "round": 1,
            "recorded_at": 1764067512.5,
            "event": {
                "type": "poisson_gaussian_steps",
                "noise_multiplier": 1.1,
                "sample_rate": 0.01,
                "steps": 500,
            },
        },
        {
            "round": 2,
            "recorded_at": 1764067513.25,
            "event": {
                "type": "poisson_gaussian_steps",
                "noise_multiplier": 0.7,
                "sample_rate": 0.125,
                "steps": 3,
            },
        },
    ],
}
_SCHEMA_1_FILE = {
    "schema_version": 1,
    "owner": "server",
    "level": "client",
    "delta": 1e-05,
    "entries": [
        {
            "round": round_number,
            "recorded_at": 10.0 + round_number,
            "event": {
                "type": "client_level_round",
                "noise_multiplier": 1.2,
                "sample_rate": 0.1,
                "rounds": 1,
                "count_noise_multiplier": 4.0,
            },
        }
        for round_number in (1, 2, 3)
    ],
}


GOLDEN_SCHEMA_2_DIGESTS = [
    "11a1db1c69d88b02baa8bc89fa386511d74e879d9238ca5e5cd3603d0f991514",
    "2d84248ba2b5490c8ebfed72ea5e0c0cd3a614ece1d970ce512c50a64edf86ea",
    "24bcd1311e02bed3a82cb2b2fdc529997af2febc283628fea1bd4f82216fcea4",
]
GOLDEN_SCHEMA_2_EPSILON = 5.9913738601010875
GOLDEN_SCHEMA_1_DIGESTS = [
    "3e59de7bc9c1aab6ff6794712f6334f8f43e95a9913e8644f5ee42e00330435f",
    "77be8a142af9028ae53c55de1315fab19edacf219b301460ac22a0737a08ac89",
    "bbbf05d6c04a0653d2130f74a1cc98601c74ea1186944efefd16d932ffd7f320",
    "a25358d90fae02e3f31fe0430fa1e7a9391870d21243af34124e589ac1b01f84",
]
GOLDEN_SCHEMA_1_EPSILON = 2.4596052491717626


def test_files_of_both_schemas_keep_their_digests_and_epsilon(tmp_path):
    schema_2 = PrivacyLedger.from_json(_SCHEMA_2_FILE)
    assert schema_2.prefix_digests() == GOLDEN_SCHEMA_2_DIGESTS
    assert schema_2.epsilon() == GOLDEN_SCHEMA_2_EPSILON
    schema_1 = PrivacyLedger.from_json(_SCHEMA_1_FILE)
    assert schema_1.prefix_digests() == GOLDEN_SCHEMA_1_DIGESTS
    assert schema_1.epsilon() == GOLDEN_SCHEMA_1_EPSILON
    assert (
        schema_1.events()
        == [ClientLevelRound(1.2, 0.1, 1, count_noise_std=2.0, count_sensitivity=1.0)] * 3
    )
    # Rewritten, the file reads back with the same entries and digest.
    path = schema_2.save(tmp_path / "l.json")
    assert PrivacyLedger.load(path).digest() == GOLDEN_SCHEMA_2_DIGESTS[-1]
    assert [LedgerEntry.from_dict(item) for item in _SCHEMA_2_FILE["entries"]] == list(
        schema_2.entries
    )
