import math

import dp_accounting
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from privet.privacy import (
    CENTRED_COUNT_SENSITIVITY,
    CalibrationError,
    ClientLevelRound,
    PoissonGaussianSteps,
    client_noise_for_target_epsilon,
    epsilon_for,
    noise_for_target_epsilon,
    update_noise_for_adaptive_clipping,
)
from tests.reference_accounting import (
    dp_accounting_pld_epsilon,
    dp_accounting_rdp_epsilon,
    opacus_epsilon,
)

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def dp_rdp(q, inner, count, delta):
    """dp-accounting's RDP ε of `count` Poisson-sampled rounds of `inner`."""
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    sampled = dp_accounting.PoissonSampledDpEvent(q, inner)
    accountant.compose(dp_accounting.SelfComposedDpEvent(sampled, count))
    return accountant.get_epsilon(delta)


def dp_pld(q, sigma, count, delta):
    """dp-accounting's PLD ε, discretized finer than Privet does for these ε (≈ 2–3)."""
    distribution = pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma, sampling_prob=q, value_discretization_interval=1e-4
    ).self_compose(count)
    return distribution.get_epsilon_for_delta(delta)


@pytest.mark.parametrize("accountant", ["pld", "prv"])
def test_example_level_calibration_with_tight_accountants(accountant):
    target, delta, q, steps = 2.0, 1e-5, 0.05, 200
    sigma = noise_for_target_epsilon(target, delta, q, steps, accountant)
    assert epsilon_for([PoissonGaussianSteps(sigma, q, steps)], delta, accountant) <= target
    assert epsilon_for([PoissonGaussianSteps(sigma - 2e-3, q, steps)], delta, accountant) > target
    # Tighter accounting needs less noise than RDP for the same target.
    assert sigma < noise_for_target_epsilon(target, delta, q, steps)
    # Independent check of the plan: dp-accounting's PLD, finely discretized.
    reference = dp_pld(q, sigma, steps, delta)
    assert reference <= target * 1.001
    assert reference == pytest.approx(target, rel=0.03)


@pytest.mark.parametrize(
    ("target", "q", "rounds"), [(2.0, 0.1, 50), (8.0, 0.02, 1000), (0.5, 1.0, 5)]
)
def test_client_level_calibration_round_trip(target, q, rounds):
    z = client_noise_for_target_epsilon(target, 1e-5, q, rounds)
    assert dp_rdp(q, dp_accounting.GaussianDpEvent(z), rounds, 1e-5) <= target * (1 + 1e-3)
    assert dp_rdp(q, dp_accounting.GaussianDpEvent(z - 1e-3), rounds, 1e-5) > target
    assert epsilon_for([ClientLevelRound(z, q, rounds)], 1e-5) <= target


def test_client_level_calibration_splits_for_adaptive_clipping():
    """The total z is split into update noise plus count noise, and the pair still meets ε."""
    target, q, rounds, sigma_b = 4.0, 0.05, 300, 1.0
    z = client_noise_for_target_epsilon(target, 1e-5, q, rounds)
    z_update = update_noise_for_adaptive_clipping(z, sigma_b)
    rounds_run = [
        ClientLevelRound(
            z_update, q, 1, count_noise_std=sigma_b, count_sensitivity=CENTRED_COUNT_SENSITIVITY
        )
    ] * rounds
    assert epsilon_for(rounds_run, 1e-5) <= target * (1 + 1e-9)
    two_queries = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(z_update), dp_accounting.GaussianDpEvent(2 * sigma_b)]
    )
    assert dp_rdp(q, two_queries, rounds, 1e-5) == pytest.approx(target, rel=2e-3)


def test_client_level_calibration_with_pld_agrees_with_dp_accounting():
    z = client_noise_for_target_epsilon(3.0, 1e-5, 0.1, 100, "pld")
    reference = dp_pld(0.1, z, 100, 1e-5)
    assert reference <= 3.0 * 1.001
    assert reference == pytest.approx(3.0, rel=0.03)


@pytest.mark.parametrize(
    ("target", "q", "steps"), [(0.1, 1 / 9, 18), (0.05, 1 / 9, 18), (0.05, 0.01, 1000)]
)
def test_small_example_level_targets_are_reachable_with_rdp(target, q, steps):
    """ε ≤ 0.1 at δ = 1e-5 is reachable by RDP: its optimal order is above Opacus' 63.

    With Opacus' orders alone no σ gets below ε ≈ 0.103, so these targets were refused as
    unreachable. (q = 1/9, 18 steps is `privet simulate`'s default plan for one round.)
    """
    sigma = noise_for_target_epsilon(target, 1e-5, q, steps)
    ours = epsilon_for([PoissonGaussianSteps(sigma, q, steps)], 1e-5)
    assert ours <= target
    # Within the bisection tolerance (1e-4 in σ) of the smallest σ that meets the target.
    assert epsilon_for([PoissonGaussianSteps(sigma - 1e-4, q, steps)], 1e-5) > target
    # Independent: dp-accounting's RDP on Privet's integer orders is the same number, its PLD
    # (nearly exact) is below it, and Opacus' orders alone overstate it above the target.
    assert dp_accounting_rdp_epsilon(q, sigma, steps, 1e-5) == pytest.approx(ours, rel=1e-6)
    assert dp_accounting_pld_epsilon(q, sigma, steps, 1e-5) < ours
    with pytest.warns(UserWarning, match="largest alpha"):  # Opacus: "expand the range"
        assert opacus_epsilon(q, sigma, steps, 1e-5) > target


def test_small_client_level_target_is_reachable_with_rdp():
    z = client_noise_for_target_epsilon(0.05, 1e-5, 0.1, 50)
    ours = epsilon_for([ClientLevelRound(z, 0.1, 50)], 1e-5)
    assert ours <= 0.05
    assert dp_accounting_rdp_epsilon(0.1, z, 50, 1e-5) == pytest.approx(ours, rel=1e-6)
    with pytest.warns(UserWarning, match="largest alpha"):
        assert opacus_epsilon(0.1, z, 50, 1e-5) > 0.05


@pytest.mark.parametrize("level", ["example", "client"])
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_unreachable_targets_are_reported(level, accountant):
    calibrate = noise_for_target_epsilon if level == "example" else client_noise_for_target_epsilon
    with pytest.raises(CalibrationError, match="unreachable") as error:
        calibrate(1e-6, 1e-5, 0.5, 1000, accountant)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 1e-5, 0.1, 10), "target epsilon"),
        ((math.inf, 1e-5, 0.1, 10), "target epsilon"),
        ((1.0, 0.0, 0.1, 10), "delta"),
        ((1.0, 1e-5, 0.1, 0), "nothing to calibrate"),
        ((1.0, 1e-5, 0.0, 10), "sample rate"),
        ((1.0, 1e-5, 1.5, 10), "sample rate"),
    ],
)
def test_meaningless_calibration_inputs_are_refused(args, match):
    for calibrate in (noise_for_target_epsilon, client_noise_for_target_epsilon):
        with pytest.raises(CalibrationError, match=match) as error:
            calibrate(*args)
        assert "\n" not in str(error.value)


def test_unknown_accountant_in_calibration_is_refused():
    with pytest.raises(ValueError, match="unknown accountant"):
        noise_for_target_epsilon(1.0, 1e-5, 0.1, 10, "gdp")


def test_a_nodes_processes_remember_sigma_and_never_trust_a_remembered_one_blindly(
    tmp_path, monkeypatch
):
    """`privet node`'s messages share calibrations through PRIVET_CALIBRATION_CACHE: the same σ
    as a fresh calibration, no bisection the second time, and an edited entry is not used."""
    import json

    from privet.privacy import calibration

    args = (4.0, 1e-5, 0.05, 300)
    fresh = calibration.noise_for_target_epsilon(*args)
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path))
    assert calibration.noise_for_target_epsilon(*args) == fresh  # calibrated, then remembered
    (entry,) = tmp_path.glob("sigma-*.json")
    bisections = []
    real = calibration._calibrate
    monkeypatch.setattr(
        calibration, "_calibrate", lambda *a, **k: bisections.append(1) or real(*a, **k)
    )
    assert calibration.noise_for_target_epsilon(*args) == fresh and bisections == []
    # Another plan is not answered from this entry.
    other = calibration.noise_for_target_epsilon(4.0, 1e-5, 0.05, 600)
    assert bisections == [1] and other > fresh
    # An entry edited to less noise (ε above the target) is ignored and calibrated again.
    stored = json.loads(entry.read_text())
    entry.write_text(json.dumps({**stored, "sigma": fresh / 3}))
    assert calibration.noise_for_target_epsilon(*args) == fresh and bisections == [1, 1]
    # So is an entry whose key was changed, or one that is not JSON.
    entry.write_text(json.dumps({"key": {**stored["key"], "steps": 1}, "sigma": fresh * 2}))
    assert calibration.noise_for_target_epsilon(*args) == fresh and len(bisections) == 3
    entry.write_text("not json")
    assert calibration.noise_for_target_epsilon(*args) == fresh and len(bisections) == 4


def test_a_sealed_sigma_is_used_without_a_check_and_a_broken_seal_is_checked_again(
    tmp_path, monkeypatch
):
    """With the node's secret (PRIVET_NODE_SEAL) an entry its processes checked is used
    as it is; an entry edited after sealing, or sealed under another secret, is checked."""
    import json
    import secrets

    from privet.privacy import calibration
    from privet.privacy.seal import SEAL_ENV

    args = (4.0, 1e-5, 0.05, 300)
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(SEAL_ENV, secrets.token_hex(32))
    fresh = calibration.noise_for_target_epsilon(*args)
    (entry,) = tmp_path.glob("sigma-*.json")
    assert "seal" in json.loads(entry.read_text())
    checks = []
    real = calibration.get_accountant

    class Counting:
        def __init__(self, name):
            self.inner = real(name)

        def epsilon(self, events, delta):
            checks.append(1)
            return self.inner.epsilon(events, delta)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(calibration, "get_accountant", Counting)
    assert calibration.noise_for_target_epsilon(*args) == fresh and checks == []
    # Edited to less noise, seal kept: the seal fails, the check fails, σ is calibrated again.
    stored = json.loads(entry.read_text())
    entry.write_text(json.dumps({**stored, "sigma": fresh / 3}))
    assert calibration.noise_for_target_epsilon(*args) == fresh and len(checks) > 1
    # Sealed under another node's secret: checked once, then sealed under this one's.
    monkeypatch.setenv(SEAL_ENV, secrets.token_hex(32))
    checks.clear()
    assert calibration.noise_for_target_epsilon(*args) == fresh and checks == [1]
    assert calibration.noise_for_target_epsilon(*args) == fresh and checks == [1]
