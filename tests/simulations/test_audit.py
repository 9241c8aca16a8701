"""`privet audit` end to end: the default, broken mechanisms caught, client level, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from opacus.optimizers import optimizer as opacus_optimizer
from opacus.optimizers import optimizer_fast_gradient_clipping as opacus_ghost

from privet.cli import main
from privet.server.aggregation import ClientLevelAggregator
from privet.simulations.audit import AUDIT_FILE

NEEDED = ("epsilon_lower_bound", "confidence", "epsilon_accounted")


def _audit(tmp_path, *flags: str) -> tuple[int, dict | None]:
    folder = tmp_path / "audit"
    status = main(["audit", "--output", str(folder), *flags])
    path = folder / AUDIT_FILE
    return status, json.loads(path.read_text()) if path.exists() else None


def _scale_opacus_noise(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    """A deliberately broken DP-SGD: Opacus draws `factor` × σC while the accountant is told σ."""
    original = opacus_optimizer._generate_noise

    def broken(std, reference, generator=None, secure_mode=False):  # type: ignore[no-untyped-def]
        return original(std * factor, reference, generator=generator, secure_mode=secure_mode)

    monkeypatch.setattr(opacus_optimizer, "_generate_noise", broken)
    monkeypatch.setattr(opacus_ghost, "_generate_noise", broken)


def test_the_default_audit_writes_a_bound_within_the_accounted_epsilon(tmp_path, capsys):
    status, audit = _audit(tmp_path)
    assert status == 0
    assert audit is not None and all(key in audit for key in NEEDED)
    assert audit["finished"] is True and audit["passed"] is True
    assert audit["confidence"] == 0.95 and audit["level"] == "example"
    results = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert audit["epsilon_accounted"] == pytest.approx(results["privacy"]["epsilon_max"])
    # Tight enough to mean something: the white-box audit confirms a good part of the claim.
    assert 0.15 * audit["epsilon_accounted"] < audit["epsilon_lower_bound"]
    assert audit["epsilon_lower_bound"] <= audit["epsilon_accounted"]
    assert audit["canaries"] == 3000 and 0 < audit["canaries_included"] < 3000
    assert "audit passed" in capsys.readouterr().out


@pytest.mark.parametrize("factor", [0.1, 0.0])
def test_noise_below_what_the_accountant_is_told_fails_the_audit(
    tmp_path, capsys, monkeypatch, factor
):
    """Noise × 0.1, and no noise at all (DP off), are caught: exit 3 and a one-line verdict."""
    _scale_opacus_noise(monkeypatch, factor)
    status, audit = _audit(tmp_path, "--target-epsilon", "2", "--rounds", "3")
    assert status == 3
    assert audit is not None and audit["passed"] is False
    assert audit["epsilon_lower_bound"] > audit["epsilon_accounted"] == pytest.approx(2.0, rel=1e-2)
    lines = [line for line in capsys.readouterr().out.splitlines() if "audit FAILED" in line]
    assert len(lines) == 1 and "do not trust" in lines[0]


CLIENT_LEVEL = ("--level", "client", "--clients", "40", "--canaries", "30", "--rounds", "4")


def test_the_client_level_audit_stays_within_the_client_level_epsilon_in_every_run(tmp_path):
    status, audit = _audit(tmp_path, *CLIENT_LEVEL, "--client-target-epsilon", "1", "--runs", "3")
    assert status == 0 and audit is not None and audit["level"] == "client"
    assert audit["epsilon_accounted"] == pytest.approx(1.0, rel=1e-2)
    assert len(audit["per_run"]) == 3
    for run in audit["per_run"]:
        assert run["epsilon_lower_bound"] <= run["epsilon_accounted"]
    assert audit["canaries"] == 30 and audit["canary_clients"] == list(range(10, 40))
    assert "epsilon_estimate" in audit


def test_the_client_level_audit_flags_a_server_that_adds_no_noise(tmp_path, monkeypatch):
    release = ClientLevelAggregator.release_sum

    def noiseless(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.update_noise_multiplier = 0.0
        return release(self, *args, **kwargs)

    monkeypatch.setattr(ClientLevelAggregator, "release_sum", noiseless)
    status, audit = _audit(tmp_path, *CLIENT_LEVEL, "--client-target-epsilon", "1")
    assert status == 3 and audit is not None and audit["passed"] is False
    assert audit["epsilon_lower_bound"] > audit["epsilon_accounted"]


def test_several_runs_add_a_clopper_pearson_bound(tmp_path):
    status, audit = _audit(tmp_path, "--runs", "2", "--rounds", "2", "--canaries", "500")
    assert status == 0 and audit is not None
    assert len(audit["per_run"]) == 2 and audit["runs"] == 2
    assert audit["clopper_pearson"]["runs"] == 2
    for run in (1, 2):  # each run's folder has its own part of the audit, for its report
        part = json.loads((tmp_path / "audit" / f"run-{run}" / AUDIT_FILE).read_text())
        assert part["epsilon_lower_bound"] == audit["per_run"][run - 1]["epsilon_lower_bound"]
        assert part["confidence"] == pytest.approx(1 - 0.05 / 2)
        assert main(["report", str(tmp_path / "audit" / f"run-{run}")]) == 0
        assert main(["resume", str(tmp_path / "audit" / f"run-{run}")]) == 2  # never resumed


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--canaries", "1"), "--canaries must be at least 2"),
        (("--confidence", "1.5"), "--confidence must be at least 0.5 and below 1"),
        (("--runs", "0"), "--runs must be at least 1"),
        (("--level", "client"), "needs client-level DP"),
        (
            ("--canaries", "100000", "--rounds", "1"),
            "gradient canaries need as many trainable coordinates",
        ),
        (("--canary-clients", "9"), "--canary-clients 9 is more than --clients 5"),
        (("--view", "server", "--secure-aggregation"), "secure aggregation hides it"),
        (("--view", "server", "--level", "client"), "--view server is for the example level"),
    ],
)
def test_bad_audit_input_is_one_line_and_writes_no_audit(tmp_path, capsys, flags, message):
    status, audit = _audit(tmp_path, *flags)
    assert status == 2 and audit is None
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error


def test_privet_report_shows_the_audit_beside_the_claim(tmp_path, capsys):
    status, audit = _audit(tmp_path, "--rounds", "2", "--canaries", "600")
    assert status == 0 and audit is not None
    assert main(["report", str(tmp_path / "audit")]) == 0
    html = (tmp_path / "audit" / "report.html").read_text()
    assert "Empirical audit" in html
    assert f"ε ≥ <b>{audit['epsilon_lower_bound']:.3f}</b>" in html
    assert f"ε = {audit['epsilon_accounted']:.3f}" in html


def test_excluded_canaries_leave_the_run_bit_for_bit_as_without_the_audit(tmp_path):
    """The audit's seam changes nothing but what included canaries add (its own randomness)."""
    import numpy as np
    import torch

    from privet.simulations.audit_canaries import GradientCanaries
    from privet.simulations.inprocess_engine import run_in_process
    from privet.task.config import RunConfig

    def run(folder: str, observe: bool) -> dict:
        config = RunConfig(
            rounds=2, clients=3, seed=4, reproducible=True, output=str(tmp_path / folder)
        )
        canaries = GradientCanaries(0, 50, np.zeros(50, dtype=bool), np.random.default_rng(9))
        run_in_process(
            config, step_observers=(lambda c: canaries if c == 0 else None) if observe else None
        )
        if observe:
            assert canaries.steps > 0 and np.all(canaries.linear != 0)  # it watched every step
        return torch.load(tmp_path / folder / "model.pt", weights_only=True)

    plain, watched = run("plain", False), run("watched", True)
    assert all(torch.equal(plain[key], watched[key]) for key in plain)


def test_the_server_view_scores_what_the_server_receives_and_stays_within_epsilon(tmp_path):
    status, audit = _audit(tmp_path, "--view", "server", "--rounds", "3")
    assert status == 0 and audit is not None and audit["view"] == "server"
    assert 0 < audit["epsilon_lower_bound"] <= audit["epsilon_accounted"]
    assert "each canary client's update" in audit["threat_model"]


def test_the_server_view_also_catches_a_run_without_noise(tmp_path, monkeypatch):
    _scale_opacus_noise(monkeypatch, 0.0)
    # Data gradients share the canaries' coordinates in this view (650 parameters), so even no
    # noise proves less than in the white box: ε ≥ 1.38 here, above a claimed 1.
    status, audit = _audit(tmp_path, "--view", "server", "--target-epsilon", "1", "--rounds", "3")
    assert status == 3 and audit is not None
    assert audit["epsilon_lower_bound"] > audit["epsilon_accounted"]


def test_a_run_that_does_not_finish_is_no_audit_and_is_not_resumed(tmp_path, capsys, monkeypatch):
    from privet.client import training_round

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the device went away")

    monkeypatch.setattr(training_round, "train_locally", crash)
    status, audit = _audit(tmp_path, "--rounds", "1")
    assert status == 1 and audit is not None
    assert audit["finished"] is False and audit["passed"] is False
    assert "the run did not finish" in audit["reason"]
    assert "audit not done" in capsys.readouterr().err
    # An audit folder is rerun, never resumed as a plain run without its canaries.
    assert main(["resume", str(tmp_path / "audit")]) == 2
    assert "is rerun, not resumed" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "audit")]) == 0
    assert "did not finish" in (tmp_path / "audit" / "report.html").read_text()


def test_the_white_box_audit_works_with_opacus_hooks_and_physical_batches(tmp_path, monkeypatch):
    """The canaries ride on Opacus' add_noise in both grad-sample modes and under virtual steps."""
    from privet.client import trainer

    monkeypatch.setattr(trainer, "grad_sample_mode", lambda model: "hooks")
    status, audit = _audit(tmp_path, "--rounds", "2", "--physical-batch-size", "8")
    assert status == 0 and audit is not None
    assert 0.1 * audit["epsilon_accounted"] < audit["epsilon_lower_bound"]
    assert audit["epsilon_lower_bound"] <= audit["epsilon_accounted"]
    assert set(audit["steps_observed"].values()) == {36}  # 2 rounds × 2 epochs × 9 logical steps


DISTRIBUTED = (*CLIENT_LEVEL[:-2], "--rounds", "3", "--secure-aggregation", "--distributed-dp")


def test_the_client_level_audit_checks_distributed_dp_and_catches_clients_adding_no_noise(
    tmp_path, monkeypatch
):
    """Canary clients inside secure aggregation: the clients' own noise shares are audited."""
    status, audit = _audit(tmp_path / "on", *DISTRIBUTED, "--client-target-epsilon", "1")
    assert status == 0 and audit is not None
    # The shares are sized for t = 2/3 of the round, so all survivors carry more: ε ≤ 1.
    assert audit["epsilon_lower_bound"] <= audit["epsilon_accounted"] <= 1.0
    results = json.loads((tmp_path / "on" / "audit" / "results.json").read_text())
    assert results["client_level"]["mechanism"] == "distributed discrete Gaussian"

    from privet.privacy import distributed_dp

    monkeypatch.setattr(
        distributed_dp,
        "discrete_gaussian_array",
        lambda variance, size, seed=None: np.zeros(size, dtype=np.int64),
    )
    status, audit = _audit(tmp_path / "off", *DISTRIBUTED, "--client-target-epsilon", "1")
    assert status == 3 and audit is not None
    assert audit["epsilon_lower_bound"] > audit["epsilon_accounted"]
