import math

import pytest

from client.local_plan import PlanError, plan_local_training
from privacy import PoissonGaussianSteps, epsilon_for


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
