import dp_accounting
import pytest

from privet.server.client_dp import plan_client_level
from privet.task.config import ConfigError, RunConfig

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def dp_accounting_epsilon(q, z, rounds, delta):
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return accountant.get_epsilon(delta)


def test_off_without_client_noise():
    assert plan_client_level(RunConfig()) is None


def test_target_calibrates_z_for_all_rounds_with_sampling():
    config = RunConfig(clients=100, clients_per_round=10, rounds=50, client_target_epsilon=2.0)
    plan = plan_client_level(config)
    assert plan.sample_rate == 0.1 and plan.expected_clients == 10
    eps = dp_accounting_epsilon(0.1, plan.total_noise_multiplier, 50, config.delta)
    assert eps <= 2.0 * 1.001
    assert dp_accounting_epsilon(0.1, plan.total_noise_multiplier * 0.98, 50, config.delta) > 2.0


def test_adaptive_clipping_takes_its_share_of_the_noise():
    config = RunConfig(
        clients=100, clients_per_round=20, client_noise_multiplier=1.0, adaptive_clipping=True
    )
    plan = plan_client_level(config)
    sigma_b = 20 / 20  # Andrew et al.'s default: expected clients / 20
    assert plan.adaptive.count_stddev == sigma_b
    assert plan.round_event().count_noise_std == sigma_b
    assert (
        plan.round_event().count_sensitivity == 0.5
    )  # the centred count (tests/test_sensitivity.py)
    assert plan.round_event().count_noise_multiplier == 2 * sigma_b
    assert plan.update_noise_multiplier > 1.0
    assert plan.round_event().effective_noise_multiplier() == pytest.approx(1.0, rel=1e-12)


def test_count_noise_too_small_for_the_budget_is_a_clear_error():
    config = RunConfig(clients=10, client_noise_multiplier=2.0, adaptive_clipping=True)
    with pytest.raises(ConfigError, match="clip-count-stddev"):
        plan_client_level(config)
