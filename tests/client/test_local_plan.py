import dataclasses
import math

import pytest

from privet.client.local_plan import MAX_PLANNED_STEPS, PlanError, plan_local_training
from privet.client.training_round import client_plan
from privet.privacy import PoissonGaussianSteps, epsilon_for
from privet.task.config import RunConfig
from tests.reference_accounting import dp_accounting_pld_epsilon


def plan(**overrides):
    arguments = dict(
        num_examples=1000,
        batch_size=64,
        local_epochs=2,
        rounds=3,
        delta=1e-5,
        noise_multiplier=None,
        target_epsilon=4.0,
    )
    arguments.update(overrides)
    return plan_local_training(**arguments)


def test_sample_rate_and_steps_follow_opacus_poisson_loader():
    result = plan(num_examples=1000, batch_size=64)
    batches = math.ceil(1000 / 64)  # Opacus: q = 1 / len(loader), len(loader) steps per epoch
    assert result.sample_rate == 1 / batches
    assert result.steps_per_round == 2 * batches
    assert result.planned_steps == 3 * 2 * batches


def test_target_epsilon_calibrates_noise_for_all_planned_rounds():
    result = plan(target_epsilon=4.0)
    planned = PoissonGaussianSteps(
        result.noise_multiplier, result.sample_rate, result.planned_steps
    )
    assert epsilon_for([planned], 1e-5) <= 4.0
    # Calibrating for one round only would have given less noise: the plan covers the whole run.
    assert result.noise_multiplier > plan(rounds=1).noise_multiplier


@pytest.mark.parametrize(("accountant", "target"), [("pld", 1.0), ("prv", 1.0), ("pld", 0.1)])
def test_target_epsilon_is_calibrated_with_the_chosen_accountant(accountant, target):
    """σ meets the target by the run's accountant (which reports the ε), not by RDP.

    PLD and PRV are tighter than RDP, so the same target needs less noise; calibrated with RDP,
    the client would end well below its target by the accountant it reports (ε = 0.1 was even
    refused as unreachable: RDP on Opacus' orders cannot get below ε ≈ 0.103 at δ = 1e-5).
    """
    result = plan(target_epsilon=target, accountant=accountant)
    sigma, q, steps = result.noise_multiplier, result.sample_rate, result.planned_steps
    assert epsilon_for([PoissonGaussianSteps(sigma, q, steps)], 1e-5, accountant) <= target
    near = PoissonGaussianSteps(sigma * (1 - 1e-3), q, steps)
    assert epsilon_for([near], 1e-5, accountant) > target
    assert sigma < plan(target_epsilon=target, accountant="rdp").noise_multiplier
    # Independent check: Google dp-accounting's PLD, finely discretized.
    reference = dp_accounting_pld_epsilon(q, sigma, steps, 1e-5)
    assert reference <= target * 1.001
    assert reference == pytest.approx(target, rel=0.03)


def test_client_plan_calibrates_with_the_run_accountant():
    """A run configured with --accountant pld plans its clients' noise with PLD."""
    config = RunConfig(target_epsilon=1.0, accountant="pld", rounds=3, batch_size=64)
    local = client_plan(config, 1000)
    assert local == plan(target_epsilon=1.0, accountant="pld")
    rdp_local = client_plan(dataclasses.replace(config, accountant="rdp"), 1000)
    assert local.noise_multiplier < rdp_local.noise_multiplier
    planned = PoissonGaussianSteps(local.noise_multiplier, local.sample_rate, local.planned_steps)
    assert epsilon_for([planned], config.delta, "pld") <= 1.0


def test_fixed_noise_multiplier_is_used_as_given():
    assert plan(noise_multiplier=1.3, target_epsilon=None).noise_multiplier == 1.3


def test_delta_not_below_one_over_n_is_refused():
    with pytest.raises(PlanError, match="not below 1/n"):
        plan(num_examples=100, delta=0.01)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_examples": 0}, "no training examples"),
        ({"batch_size": 0}, "batch size"),
        ({"noise_multiplier": 1.0}, "exactly one"),
        ({"target_epsilon": None}, "exactly one"),
    ],
)
def test_bad_plans_are_refused(overrides, message):
    with pytest.raises(PlanError, match=message):
        plan(**overrides)


def test_a_plan_of_absurdly_many_steps_is_refused_before_anything_runs():
    """Issue 12 item 8: `--local-epochs 1000000000` ran until killed."""
    with pytest.raises(PlanError) as info:
        plan(local_epochs=1_000_000_000, noise_multiplier=1.0, target_epsilon=None)
    text = str(info.value)
    assert (
        "would run 4.8e+10 DP-SGD steps (3 rounds × 1000000000 local epochs × 16 batches)" in text
    )
    assert "more than the 1e+07" in text and "lower --local-epochs" in text
    # the cap itself is allowed: 1000 examples in 10 batches, 1e6 epochs, 1 round
    exact = plan(batch_size=100, local_epochs=MAX_PLANNED_STEPS // 10, rounds=1,
                 noise_multiplier=1.0, target_epsilon=None)  # fmt: skip
    assert exact.planned_steps == MAX_PLANNED_STEPS
