import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dp_accounting
import pytest
from opacus.accountants import RDPAccountant

from privet.privacy import (
    LEDGER_SCHEMA_VERSION,
    ClientLevelRound,
    LedgerEntry,
    LedgerError,
    PoissonGaussianSteps,
    PrivacyLedger,
    atomic_write_text,
)
from tests.lock_holders import ledger_held_elsewhere

REPO = Path(__file__).resolve().parents[2]
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def strict_load(path: Path):
    def reject(token):
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def opacus_epsilon(history, delta):
    """Opacus' own RDP accountant, given the (σ, q, steps) history directly."""
    accountant = RDPAccountant()
    accountant.history = list(history)
    return accountant.get_epsilon(delta)


def example_ledger(path=None):
    ledger = PrivacyLedger("client-3", "example", 1e-5, path)
    ledger.record(1, [PoissonGaussianSteps(1.0, 0.1, 20)])
    ledger.record(2, [PoissonGaussianSteps(1.0, 0.1, 20)])
    ledger.record(4, [PoissonGaussianSteps(1.2, 0.05, 40), PoissonGaussianSteps(1.0, 0.1, 5)])
    return ledger


# -- recording and queries ----------------------------------------------------------------------


def test_queries_describe_the_recorded_releases():
    ledger = example_ledger()
    assert ledger.steps() == 85
    assert ledger.rounds() == [1, 2, 4]
    assert len(ledger.events()) == 4
    assert all(isinstance(entry, LedgerEntry) for entry in ledger.entries)
    assert ledger.entries[0].recorded_at <= ledger.entries[-1].recorded_at


def test_replayed_epsilon_equals_opacus_and_dp_accounting():
    ledger = example_ledger()
    expected = opacus_epsilon([(1.0, 0.1, 45), (1.2, 0.05, 40)], 1e-5)
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-12)
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for sigma, q, steps in [(1.0, 0.1, 45), (1.2, 0.05, 40)]:
        pld.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
            )
        )
    assert ledger.epsilon("pld") == pytest.approx(pld.get_epsilon(1e-5), rel=0.01)


def test_client_level_ledger_replays_adaptive_rounds_as_two_queries():
    ledger = PrivacyLedger("server", "client", 1e-6)
    for server_round in range(1, 31):
        ledger.record(
            server_round,
            [ClientLevelRound(1.2, 0.05, 1, count_noise_std=2.0, count_sensitivity=0.5)],
        )
    assert ledger.steps() == 0 and ledger.rounds() == list(range(1, 31))
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    round_event = dp_accounting.PoissonSampledDpEvent(
        0.05,
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(1.2), dp_accounting.GaussianDpEvent(4.0)]
        ),
    )
    accountant.compose(dp_accounting.SelfComposedDpEvent(round_event, 30))
    assert ledger.epsilon() == pytest.approx(accountant.get_epsilon(1e-6), rel=1e-3)


def test_epsilon_if_is_a_dry_run():
    ledger = example_ledger()
    before = ledger.epsilon()
    extra = [PoissonGaussianSteps(1.0, 0.1, 20)]
    after = ledger.epsilon_if(extra)
    assert after > before
    assert ledger.epsilon() == before and ledger.steps() == 85
    expected = opacus_epsilon([(1.0, 0.1, 65), (1.2, 0.05, 40)], 1e-5)
    assert after == pytest.approx(expected, rel=1e-12)


def test_levels_cannot_be_mixed():
    ledger = PrivacyLedger("server", "client", 1e-5)
    with pytest.raises(LedgerError, match="separate ledger"):
        ledger.record(1, [PoissonGaussianSteps(1.0, 0.1, 5)])
    with pytest.raises(LedgerError, match="separate ledger"):
        ledger.epsilon_if([PoissonGaussianSteps(1.0, 0.1, 5)])
    with pytest.raises(LedgerError, match="round"):
        ledger.record(-1, [ClientLevelRound(1.0, 0.1)])
    assert ledger.events() == []


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "example", 1e-5), "owner"),
        (("a", "user", 1e-5), "level"),
        (("a", "client", 1.0), "delta"),
    ],
)
def test_bad_ledger_parameters(args, match):
    with pytest.raises(LedgerError, match=match):
        PrivacyLedger(*args)


# -- JSON and files -----------------------------------------------------------------------------


def test_json_round_trip_and_strict_file(tmp_path):
    path = tmp_path / "ledgers" / "client-3.json"
    ledger = example_ledger(path)
    data = strict_load(path)  # written by record(), before it returned
    assert data["schema_version"] == LEDGER_SCHEMA_VERSION
    assert data["owner"] == "client-3" and data["level"] == "example" and data["delta"] == 1e-5
    assert data["epsilon_rdp"] == pytest.approx(ledger.epsilon(), rel=1e-12)
    assert [entry["round"] for entry in data["entries"]] == [1, 2, 4, 4]
    copy = PrivacyLedger.from_json(ledger.to_json())
    assert copy.entries == ledger.entries and copy.path is None
    loaded = PrivacyLedger.load(path)
    assert loaded.entries == ledger.entries and loaded.path == path
    assert loaded.epsilon() == ledger.epsilon()
    loaded.record(5, [PoissonGaussianSteps(1.0, 0.1, 1)])  # keeps writing to the same file
    assert PrivacyLedger.load(path).rounds() == [1, 2, 4, 5]


def test_infinite_epsilon_is_written_as_a_string(tmp_path):
    ledger = PrivacyLedger("client-0", "example", 1e-5, tmp_path / "l.json")
    ledger.record(1, [PoissonGaussianSteps(0.0, 0.1, 1)])
    assert strict_load(tmp_path / "l.json")["epsilon_rdp"] == "inf"
    assert math.isinf(PrivacyLedger.load(tmp_path / "l.json").epsilon())


def test_save_to_another_path(tmp_path):
    ledger = example_ledger()
    with pytest.raises(LedgerError, match="no path"):
        ledger.save()
    written = ledger.save(tmp_path / "copy.json")
    assert PrivacyLedger.load(written).entries == ledger.entries


def _valid():
    return example_ledger().to_json()


def _bad_entry(**changes):
    data = _valid()
    data["entries"][0] = {**data["entries"][0], **changes}
    return data


MALFORMED = {
    "not an object": [1, 2],
    "schema 99": {**_valid(), "schema_version": 99},
    "no schema": {key: value for key, value in _valid().items() if key != "schema_version"},
    "no owner": {key: value for key, value in _valid().items() if key != "owner"},
    "unexpected field": {**_valid(), "note": "hi"},
    "bad level": {**_valid(), "level": "user"},
    "bad delta": {**_valid(), "delta": 2.0},
    "entries not a list": {**_valid(), "entries": {}},
    "entry not an object": {**_valid(), "entries": ["x"]},
    "entry bad round": _bad_entry(round=-2),
    "entry bool round": _bad_entry(round=True),
    "entry bad time": _bad_entry(recorded_at="noon"),
    "entry bad event": _bad_entry(event={"type": "poisson_gaussian_steps"}),
    "entry wrong level": _bad_entry(event=ClientLevelRound(1.0, 0.1).to_dict()),
    "entry extra field": _bad_entry(note=1),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_ledgers_are_one_line_ledger_errors_naming_the_file(tmp_path, name):
    path = tmp_path / "client-0.json"
    path.write_text(json.dumps(MALFORMED[name]))
    with pytest.raises(LedgerError) as error:
        PrivacyLedger.load(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(LedgerError):
        PrivacyLedger.from_json(MALFORMED[name])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ('{"schema_version": 1, "delta": NaN}', "not strict JSON"),
        (b"\xff\xfe", "cannot be read"),
    ],
)
def test_unreadable_ledger_files(tmp_path, content, match):
    path = tmp_path / "client-0.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(LedgerError, match=match) as error:
        PrivacyLedger.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


# -- crash safety -------------------------------------------------------------------------------


def test_atomic_write_creates_folders_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "a" / "b" / "file.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert os.listdir(path.parent) == ["file.txt"]


def test_crash_during_write_keeps_the_previous_ledger(tmp_path, monkeypatch):
    path = tmp_path / "client-3.json"
    ledger = example_ledger(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        ledger.record(5, [PoissonGaussianSteps(1.0, 0.1, 20)])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [".client-3.json.lock", "client-3.json"]  # no .tmp
    assert ledger.rounds() == [1, 2, 4]  # the failed release is not in memory either
    assert PrivacyLedger.load(path).entries == ledger.entries


WRITER = textwrap.dedent(
    """
    import sys
    from privet.privacy import PoissonGaussianSteps, PrivacyLedger

    ledger = PrivacyLedger("client-0", "example", 1e-5, sys.argv[1])
    ledger.epsilon_if([PoissonGaussianSteps(1.0, 0.01, 1)])  # import Opacus before the loop
    print("ready", flush=True)
    server_round = 0
    while True:
        server_round += 1
        ledger.record(server_round, [PoissonGaussianSteps(1.0, 0.01, 10 + server_round % 3)])
        print(f"sent {server_round}", flush=True)  # the release leaves only after record()
    """
)


def test_sigkill_at_random_moments_never_loses_a_sent_release(tmp_path):
    """Writers are killed mid-run; every round they reported as sent must be on disk."""
    rng = random.Random(20261125)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    paths = [tmp_path / f"client-{index}.json" for index in range(3)]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        for path in paths
    ]
    outputs: list[list[str]] = [[] for _ in writers]
    readers = [
        threading.Thread(target=lambda w=writer, out=out: out.extend(w.stdout), daemon=True)
        for writer, out in zip(writers, outputs, strict=True)
    ]
    try:
        for writer in writers:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "ready"
        for reader in readers:
            reader.start()
        for writer in writers:  # each dies at its own random moment
            time.sleep(rng.uniform(0.01, 0.25))
            os.kill(writer.pid, signal.SIGKILL)
    finally:
        for writer in writers:
            if writer.poll() is None:
                os.kill(writer.pid, signal.SIGKILL)
            writer.wait(timeout=30)
    for reader in readers:
        reader.join(timeout=30)
    for path, writer, output in zip(paths, writers, outputs, strict=True):
        assert writer.returncode == -signal.SIGKILL
        sent = [int(line.split()[1]) for line in output]
        assert sent, "the writer should have sent something before it was killed"
        assert sent == list(range(1, len(sent) + 1))
        ledger = PrivacyLedger.load(path)  # always loadable: never half-written
        on_disk = ledger.rounds()
        # Everything sent is on disk; at most one release was recorded but never sent.
        assert on_disk[: len(sent)] == sent and len(on_disk) - len(sent) in (0, 1)
        sent_steps = sum(10 + server_round % 3 for server_round in sent)
        assert ledger.epsilon() >= opacus_epsilon([(1.0, 0.01, sent_steps)], 1e-5)


def test_budget_check_treats_an_unbounded_plan_as_over_budget(monkeypatch):
    import privet.privacy.ledger as ledger_module
    from privet.privacy import AccountingError, PoissonGaussianSteps, PrivacyLedger

    ledger = PrivacyLedger(owner="c", level="example", delta=1e-5)
    event = PoissonGaussianSteps(1.0, 0.1, 10)
    assert ledger.epsilon_if_bounded([event]) == ledger.epsilon_if([event]) < 100

    def cannot(*args, **kwargs):
        raise AccountingError("PRV cannot bound this plan")

    monkeypatch.setattr(ledger_module, "epsilon_for", cannot)
    assert ledger.epsilon_if_bounded([event], "prv") == float("inf")


def schema_1_server_ledger(path: Path, count_multiplier: float | None, rounds: int = 30) -> None:
    """A server ledger exactly as Privet wrote it before the count's sensitivity was recorded."""
    entries = [
        {
            "round": r,
            "recorded_at": 1764067512.5 + r,
            "event": {
                "type": "client_level_round",
                "noise_multiplier": 1.2,
                "sample_rate": 0.05,
                "rounds": 1,
                "count_noise_multiplier": count_multiplier,
            },
        }
        for r in range(1, rounds + 1)
    ]
    data = {
        "schema_version": 1,
        "owner": "server",
        "level": "client",
        "delta": 1e-6,
        "epsilon_rdp": 1.0,
        "entries": entries,
    }
    path.write_text(json.dumps(data))


def test_a_schema_1_adaptive_ledger_is_recharged_for_the_raw_count_it_released(tmp_path):
    # The old code recorded 2·σ_b = 4 but released Σ b_i + N(0, σ_b² = 4): multiplier 2.
    path = tmp_path / "server.json"
    schema_1_server_ledger(path, 4.0)
    ledger = PrivacyLedger.load(path)
    assert len(ledger.corrections) == 1 and "re-charged" in ledger.corrections[0]
    event = ledger.events()[0]
    assert (event.count_noise_std, event.count_sensitivity) == (2.0, 1.0)
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    round_event = dp_accounting.PoissonSampledDpEvent(
        0.05,
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(1.2), dp_accounting.GaussianDpEvent(2.0)]
        ),
    )
    accountant.compose(dp_accounting.SelfComposedDpEvent(round_event, 30))
    assert ledger.epsilon() == pytest.approx(accountant.get_epsilon(1e-6), rel=1e-3)
    # What the old code printed: the count charged at multiplier 4.
    old = PrivacyLedger("server", "client", 1e-6)
    for r in range(1, 31):
        old.record(r, [ClientLevelRound(1.2, 0.05, 1, count_noise_std=2.0, count_sensitivity=0.5)])
    assert ledger.epsilon() > 1.05 * old.epsilon()
    # The next write stores schema 2 with the corrected events; reading it changes nothing more.
    ledger.record(31, [ClientLevelRound(1.2, 0.05, 1, count_noise_std=2.0, count_sensitivity=0.5)])
    again = PrivacyLedger.load(path)
    assert strict_load(path)["schema_version"] == LEDGER_SCHEMA_VERSION == 3
    assert again.corrections == [] and again.events() == ledger.events()


def test_a_schema_1_ledger_without_a_count_is_read_unchanged(tmp_path):
    path = tmp_path / "server.json"
    schema_1_server_ledger(path, None, rounds=3)
    ledger = PrivacyLedger.load(path)
    assert ledger.corrections == []
    assert ledger.events()[0] == ClientLevelRound(1.2, 0.05, 1)


def test_an_unknown_schema_version_is_refused_in_one_line(tmp_path):
    path = tmp_path / "server.json"
    schema_1_server_ledger(path, 4.0, rounds=1)
    data = json.loads(path.read_text())
    data["schema_version"] = 4
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="schema version 4") as error:
        PrivacyLedger.load(path)
    assert "\n" not in str(error.value)


# -- one writer, and binding a ledger's prefix --------------------------------------------------


def test_the_digest_binds_each_prefix_and_every_field_that_changes_epsilon(tmp_path):
    ledger = example_ledger(tmp_path / "client-3.json")
    digests = ledger.prefix_digests()
    assert len(digests) == 5 and digests[-1] == ledger.digest() and len(set(digests)) == 5
    assert all(ledger.extends(k, digests[k]) for k in range(5))
    assert not ledger.extends(5, digests[-1])  # more entries than it has
    reloaded = PrivacyLedger.load(tmp_path / "client-3.json")
    assert reloaded.prefix_digests() == digests  # the file's form is the same canonical form
    reloaded.record(5, [PoissonGaussianSteps(1.0, 0.1, 1)])
    assert reloaded.extends(4, digests[4])  # grown past the binding: still extends it
    for field, value in [("steps", 19), ("sample_rate", 0.09), ("noise_multiplier", 1.1)]:
        data = json.loads((tmp_path / "client-3.json").read_text())
        data["entries"][0]["event"][field] = value
        changed = PrivacyLedger.from_json(data)
        assert not changed.extends(4, digests[4]), field
    data = json.loads((tmp_path / "client-3.json").read_text())
    assert not PrivacyLedger.from_json({**data, "delta": 1e-6}).extends(4, digests[4])


def test_a_schema_1_ledger_keeps_its_digest_when_it_is_rewritten_as_schema_2(tmp_path):
    path = tmp_path / "server.json"
    ledger = PrivacyLedger("server", "client", 1e-5)
    ledger.record(1, [ClientLevelRound(1.2, 0.1, 1, count_noise_std=1.0, count_sensitivity=1.0)])
    data = ledger.to_json()
    data["schema_version"] = 1
    event = data["entries"][0]["event"]
    event.pop("count_sensitivity")
    event["count_noise_multiplier"] = 2 * event.pop("count_noise_std")
    path.write_text(json.dumps(data))
    old = PrivacyLedger.load(path)
    digest = old.digest()
    old.record(2, [ClientLevelRound(1.2, 0.1, 1, count_noise_std=1.0, count_sensitivity=0.5)])
    assert strict_load(path)["schema_version"] == LEDGER_SCHEMA_VERSION
    assert PrivacyLedger.load(path).extends(1, digest)


def test_a_fresh_ledger_never_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "client-3.json"
    example_ledger(path)
    before = path.read_bytes()
    fresh = PrivacyLedger("client-3", "example", 1e-5, path)
    with pytest.raises(LedgerError, match="already exists and this process did not read it"):
        fresh.record(1, [PoissonGaussianSteps(1.0, 0.1, 1)])
    with pytest.raises(LedgerError, match="already exists"):
        fresh.save()
    assert path.read_bytes() == before and fresh.entries == ()


STALE_WRITER = textwrap.dedent(
    """
    import sys
    from privet.privacy import PoissonGaussianSteps, PrivacyLedger

    ledger = PrivacyLedger.load(sys.argv[1])
    print("loaded", flush=True)
    sys.stdin.readline()  # the other writer records meanwhile
    try:
        ledger.record(9, [PoissonGaussianSteps(1.0, 0.1, 1)])
    except Exception as error:
        print(f"refused {type(error).__name__}: {error}", flush=True)
    else:
        print("recorded", flush=True)
    """
)


def test_two_processes_writing_one_ledger_never_lose_a_release(tmp_path):
    """The lost update of two concurrent resumes: the stale writer is refused, not obeyed."""
    path = tmp_path / "client-0.json"
    example_ledger(path)
    other = subprocess.Popen(
        [sys.executable, "-c", STALE_WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        ready, _, _ = select.select([other.stdout], [], [], 60)
        assert ready and other.stdout.readline().strip() == "loaded"
        mine = PrivacyLedger.load(path)
        mine.record(5, [PoissonGaussianSteps(1.0, 0.1, 7)])
        other.stdin.write("go\n")
        other.stdin.flush()
        ready, _, _ = select.select([other.stdout], [], [], 60)
        assert ready
        line = other.stdout.readline().strip()
    finally:
        other.kill()
        other.wait(timeout=30)
    assert line.startswith("refused LedgerError") and "changed by another process" in line
    assert PrivacyLedger.load(path).rounds() == [1, 2, 4, 5]  # my release is kept


def test_a_write_waits_a_bounded_time_for_the_ledgers_lock(tmp_path, monkeypatch):
    import privet.privacy.ledger as ledger_module
    from privet.privacy.ledger import ledger_lock

    path = tmp_path / "client-0.json"
    example_ledger(path)
    with ledger_held_elsewhere(path) as holder:
        monkeypatch.setattr(ledger_module, "WRITE_LOCK_WAIT_S", 0.2)
        ledger = PrivacyLedger.load(path)
        with pytest.raises(LedgerError, match=f"in use by process {holder.pid}"):
            ledger.record(5, [PoissonGaussianSteps(1.0, 0.1, 1)])
        assert ledger.rounds() == [1, 2, 4]  # not recorded, so the caller does not release
    with ledger_lock(path).acquire():  # this process holds it: its own writes go through
        ledger.record(5, [PoissonGaussianSteps(1.0, 0.1, 1)])
    assert PrivacyLedger.load(path).rounds() == [1, 2, 4, 5]
