"""Distributed DP end to end (issue 16): a real run, its ε checked independently, its bad input."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from privet.cli import main
from privet.privacy import DistributedDiscreteGaussianRound, PrivacyLedger
from privet.privacy.secagg.protocol import packed_bytes
from privet.server.distributed_release import PRIVACY_STATEMENT
from privet.simulations.faults import Dropout
from privet.simulations.inprocess_engine import run_in_process
from privet.task.config import RunConfig
from tests.privacy.test_distributed_accounting import own_epsilon

DELTA = 1e-5


@pytest.mark.long
def test_a_distributed_dp_run_reports_the_epsilon_its_rounds_really_cost(tmp_path, capsys):
    folder = tmp_path / "run"
    config = RunConfig(
        clients=8,
        clients_per_round=5,
        rounds=4,
        local_epochs=1,
        secure_aggregation=True,
        distributed_dp=True,
        secagg_bits=14,
        client_target_epsilon=6.0,
        seed=1,
        reproducible=True,  # the sampling that puts clients 0 and 1 in round 2
        output=str(folder),
    )
    # Two clients crash while training (masking) in round 2: the survivors' shares carry the noise,
    # and the round is charged without the sampling's amplification.
    run_in_process(config, client_mods=[Dropout.at("train", [0, 1], rounds=[2])])
    results = json.loads((folder / "results.json").read_text())
    assert results["finished"] is True
    level = results["client_level"]
    assert level["mechanism"] == "distributed discrete Gaussian"
    assert level["privacy_statement"] == PRIVACY_STATEMENT
    q = config.client_sample_rate
    events, summed_in, full = [], {}, []
    for entry in results["rounds"]:
        secure = entry["secure_aggregation"]
        details = secure["distributed_dp"]
        assert secure["status"] == "ok" and details["server_noise"] == 0.0
        assert details["bits"] == secure["bits"] == 14
        survivors = secure["survivors"]
        assert details["survivors"] == len(survivors) >= details["min_survivors"]
        assert set(survivors) == set(entry["sampled"]) - set(secure["dropped"])
        cohort = len(entry["sampled"])
        assert details["cohort"] == cohort
        if entry["round"] == 2:  # the crash: fewer survivors than sampled, charged as such
            assert secure["dropped"] and len(survivors) < cohort
            assert details["amplified_by_sampling"] is False
        else:
            assert details["amplified_by_sampling"] is (len(survivors) == cohort >= 3)
        # The noise is sized for the threshold: t shares carry at least the planned z, and a
        # full cohort's shares sum to the run's W whatever its size.
        t, variance = details["min_survivors"], details["local_variance"]
        assert (t * variance) ** 0.5 / details["norm_bound"] >= level["noise_multiplier"]
        assert cohort * variance == pytest.approx(details["total_variance"], rel=1e-12)
        # Each client sent its packed 14-bit vector of the padded dimension, nothing more.
        assert entry["cost"]["bytes_up_per_client"] == packed_bytes(details["padded_dimension"], 14)
        event = DistributedDiscreteGaussianRound(
            details["norm_bound"],
            variance,
            len(survivors),
            details["padded_dimension"],
            q,
            cohort=cohort,
        )
        events.append((event, 1))
        full.append((dataclasses.replace(event, summands=cohort), 1))
        unsampled = DistributedDiscreteGaussianRound(
            details["norm_bound"],
            variance,
            len(survivors),
            details["padded_dimension"],
            1.0,
            cohort=cohort,
        )
        for cid in survivors:
            summed_in.setdefault(cid, []).append((unsampled, 1))
        assert entry["epsilon_client_level"] == pytest.approx(own_epsilon(events, DELTA), rel=0.01)
    # The run's ε, recomputed by the test from what each round recorded. The dropout round cost
    # more than the plan (which assumed every round full), so it is above what the same rounds
    # would have cost had nobody dropped.
    assert level["epsilon"] == pytest.approx(own_epsilon(events, DELTA), rel=0.01)
    assert level["epsilon"] > own_epsilon(full, DELTA)
    # Against the server, which knows who took part: no sampling, the rounds each client was in.
    worst = max(own_epsilon(rounds, DELTA) for rounds in summed_in.values())
    assert level["epsilon_against_server"] == pytest.approx(worst, rel=0.01)
    # The server's ledger holds exactly those rounds, and `privet budget --verify` agrees.
    ledger = PrivacyLedger.load(folder / "ledgers" / "server.json")
    assert [e.summands for e in ledger.events()] == [ev.summands for ev, _ in events]
    capsys.readouterr()
    assert main(["budget", "--verify", str(folder)]) == 0
    assert "CONFIRMED" in capsys.readouterr().out
    # The report says who added the noise, with both ε.
    assert main(["report", str(folder)]) == 0
    html = (folder / "report.html").read_text()
    assert "the server saw only sums already carrying the DP noise" in html
    assert "trusted-server model" not in html
    unamplified = sum(not event.amplified for event, _ in events)
    assert unamplified >= 1 and f"{unamplified} of these rounds had dropouts" in html
    spans = dict(re.findall(r'data-eps="([^"]+)">([^<]+)<', html))
    assert float(spans["client-level-server"]) == pytest.approx(
        level["epsilon_against_server"], abs=1e-3
    )
    assert float(spans["client-level"]) == pytest.approx(level["epsilon"], abs=1e-3)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--distributed-dp", "--client-target-epsilon", "8"], "without --secure-aggregation"),
        (["--secure-aggregation", "--distributed-dp"], "pass --client-target-epsilon"),
        (
            [
                "--secure-aggregation",
                "--distributed-dp",
                "--client-target-epsilon",
                "8",
                "--adaptive-clipping",
            ],
            "drop --adaptive-clipping",
        ),
        (
            [
                "--secure-aggregation",
                "--distributed-dp",
                "--client-target-epsilon",
                "8",
                "--accountant",
                "pld",
            ],
            "use --accountant rdp",
        ),
        (
            [
                "--secure-aggregation",
                "--distributed-dp",
                "--client-target-epsilon",
                "8",
                "--secagg-bits",
                "40",
            ],
            "secagg-bits must be between 8 and 32",
        ),
        (
            ["--secure-aggregation", "--client-target-epsilon", "8", "--secagg-bits", "16"],
            "without --distributed-dp",
        ),
        (
            [
                "--secure-aggregation",
                "--distributed-dp",
                "--client-target-epsilon",
                "8",
                "--secagg-bits",
                "8",
                "--clients",
                "30",
            ],
            "raise --secagg-bits",
        ),
    ],
)
def test_bad_distributed_dp_settings_are_one_line_errors_and_write_nothing(
    tmp_path, capsys, flags, message
):
    folder = tmp_path / "out"
    code = main(["simulate", "--clients", "6", "--rounds", "2", "--output", str(folder), *flags])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert message in err and len(err.splitlines()) == 1, err
    assert not (folder / "results.json").exists()
