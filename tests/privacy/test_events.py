import math

import dp_accounting
import numpy as np
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from privet.privacy import (
    ACCOUNTANTS,
    AccountingError,
    ClientLevelRound,
    GaussianComposition,
    PoissonGaussianSteps,
    compose,
    epsilon_for,
    event_from_dict,
    gaussian_compositions,
    get_accountant,
    rdp_epsilon_classic,
    update_noise_for_adaptive_clipping,
)

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))

# TF Privacy's MNIST tutorial: 60,000 examples, batch 256, σ = 1.1, 60 epochs, δ = 1e-5.
TF_Q = 256 / 60000
TF_STEPS = 60 * 60000 // 256  # 14062
TF_EVENT = PoissonGaussianSteps(1.1, TF_Q, TF_STEPS)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


# -- events -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        PoissonGaussianSteps(1.25, 0.0625, 42),
        ClientLevelRound(0.9, 0.1, 3),
        ClientLevelRound(1.1, 0.05, 1, count_noise_std=5.0, count_sensitivity=0.5),
        ClientLevelRound(0.0, 1.0, 0, count_noise_std=0.0, count_sensitivity=1.0),
    ],
)
def test_events_round_trip_through_dicts(event):
    data = event.to_dict()
    assert isinstance(data["type"], str)
    assert event_from_dict(data) == event


def test_events_are_immutable_and_normalised():
    event = PoissonGaussianSteps(np.float32(1.5), 0.25, np.int64(7))
    assert type(event.noise_multiplier) is float and type(event.steps) is int
    with pytest.raises(AttributeError):
        event.steps = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "data",
    [
        "not a mapping",
        {"type": "laplace", "noise_multiplier": 1.0},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3},
        {"type": "poisson_gaussian_steps", "noise_multiplier": 1.0, "sample_rate": 0.1},
        {
            "type": "poisson_gaussian_steps",
            "noise_multiplier": 1,
            "sample_rate": 0.1,
            "steps": 3,
            "extra": 1,
        },
        {
            "type": "poisson_gaussian_steps",
            "noise_multiplier": 1.0,
            "sample_rate": 0.1,
            "steps": 2.5,
        },
        {
            "type": "poisson_gaussian_steps",
            "noise_multiplier": 1.0,
            "sample_rate": 0.1,
            "steps": True,
        },
        {"type": "poisson_gaussian_steps", "noise_multiplier": "1", "sample_rate": 0.1, "steps": 3},
        {
            "type": "poisson_gaussian_steps",
            "noise_multiplier": math.nan,
            "sample_rate": 0.1,
            "steps": 3,
        },
        {
            "type": "poisson_gaussian_steps",
            "noise_multiplier": -1.0,
            "sample_rate": 0.1,
            "steps": 3,
        },
        {"type": "poisson_gaussian_steps", "noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 3},
        {"type": "poisson_gaussian_steps", "noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 3},
        {
            "type": "poisson_gaussian_steps",
            "noise_multiplier": 1.0,
            "sample_rate": 0.1,
            "steps": -3,
        },
        {"type": "client_level_round", "noise_multiplier": 1.0, "sample_rate": 0.1, "rounds": 1},
        {
            "type": "client_level_round",
            "noise_multiplier": 1.0,
            "sample_rate": 0.1,
            "rounds": 1,
            "count_noise_std": math.inf,
            "count_sensitivity": 0.5,
        },
        {
            "type": "client_level_round",
            "noise_multiplier": 1.0,
            "sample_rate": 0.1,
            "rounds": 1,
            "count_noise_std": 1.0,
            "count_sensitivity": "x",
        },
    ],
)
def test_malformed_event_dicts_are_one_line_value_errors(data):
    with pytest.raises(ValueError) as error:
        event_from_dict(data)
    one_line(error)


def test_effective_noise_multiplier_combines_the_two_queries():
    # Andrew et al. 2021, Sec. 3: z_eff = (z⁻² + (2σ_b)⁻²)^(−1/2).
    event = ClientLevelRound(1.0, 0.1, 1, count_noise_std=0.5, count_sensitivity=0.5)
    assert event.effective_noise_multiplier() == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    assert ClientLevelRound(1.3, 0.1).effective_noise_multiplier() == 1.3
    assert (
        ClientLevelRound(
            1.3, 0.1, 1, count_noise_std=0.0, count_sensitivity=0.5
        ).effective_noise_multiplier()
        == 0.0
    )


@pytest.mark.parametrize(("z", "sigma_b"), [(1.0, 5.0), (0.8, 0.5), (3.0, 20.0), (1.1, 0.56)])
def test_update_noise_for_adaptive_clipping_inverts_the_combination(z, sigma_b):
    z_update = update_noise_for_adaptive_clipping(z, sigma_b)
    assert z_update > z
    event = ClientLevelRound(z_update, 0.1, 1, count_noise_std=sigma_b, count_sensitivity=0.5)
    assert event.effective_noise_multiplier() == pytest.approx(z, rel=1e-12)


@pytest.mark.parametrize(("z", "sigma_b"), [(1.0, 0.5), (1.0, 0.1), (0.0, 1.0), (1.0, 0.0)])
def test_adaptive_clipping_that_exhausts_the_budget_is_refused(z, sigma_b):
    with pytest.raises(ValueError) as error:
        update_noise_for_adaptive_clipping(z, sigma_b)
    one_line(error)


def test_compose_merges_consecutive_equal_events_of_either_kind():
    history = [
        ClientLevelRound(1.0, 0.1, 1, count_noise_std=2.0, count_sensitivity=0.5),
        ClientLevelRound(1.0, 0.1, 1, count_noise_std=2.0, count_sensitivity=0.5),
        ClientLevelRound(1.0, 0.1, 0),
        ClientLevelRound(1.0, 0.1, 1),
    ]
    assert compose(history) == [
        ClientLevelRound(1.0, 0.1, 2, count_noise_std=2.0, count_sensitivity=0.5),
        ClientLevelRound(1.0, 0.1, 1),
    ]


def test_gaussian_compositions_merge_equal_mechanisms_anywhere():
    history = [
        PoissonGaussianSteps(1.0, 0.1, 5),
        PoissonGaussianSteps(2.0, 0.1, 5),
        PoissonGaussianSteps(1.0, 0.1, 7),
    ]
    assert gaussian_compositions(history) == [
        GaussianComposition(1.0, 0.1, 12),
        GaussianComposition(2.0, 0.1, 5),
    ]


def test_mixing_levels_is_refused():
    with pytest.raises(ValueError, match="separate ledgers") as error:
        epsilon_for([PoissonGaussianSteps(1.0, 0.1, 5), ClientLevelRound(1.0, 0.1)], 1e-5)
    one_line(error)


# -- accountants --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACCOUNTANTS)
def test_every_accountant_agrees_on_the_trivial_cases(name):
    assert get_accountant(name).name == name
    assert epsilon_for([], 1e-5, name) == 0.0
    assert epsilon_for([PoissonGaussianSteps(1.0, 0.1, 0)], 1e-5, name) == 0.0
    assert math.isinf(epsilon_for([PoissonGaussianSteps(0.0, 0.1, 1)], 1e-5, name))
    assert math.isinf(
        epsilon_for(
            [ClientLevelRound(1.0, 0.1, 1, count_noise_std=0.0, count_sensitivity=0.5)], 1e-5, name
        )
    )


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan])
def test_delta_outside_zero_one_is_refused(delta):
    with pytest.raises(ValueError, match="delta") as error:
        epsilon_for([PoissonGaussianSteps(1.0, 0.1, 5)], delta)
    one_line(error)


def test_unknown_accountant_is_refused():
    with pytest.raises(ValueError, match="rdp, prv, pld") as error:
        get_accountant("moments")
    one_line(error)


def test_prv_refuses_plans_beyond_its_numerical_range():
    with pytest.raises(AccountingError, match="rdp or pld") as error:
        epsilon_for([PoissonGaussianSteps(0.5, 1.0, 20000)], 1e-5, "prv")
    one_line(error)


def test_tf_privacy_tutorial_classic_conversion_reproduces_the_published_epsilon():
    # Published: ε = 3.01 (TF Privacy MNIST tutorial, classic RDP conversion).
    classic = rdp_epsilon_classic([TF_EVENT], 1e-5)
    assert classic == pytest.approx(3.01, rel=0.02)
    # The same conversion, computed here from Opacus' RDP of the plan (Mironov 2017, Prop. 3).
    rdp = opacus_rdp.compute_rdp(q=TF_Q, noise_multiplier=1.1, steps=TF_STEPS, orders=ORDERS)
    expected = min(r - math.log(1e-5) / (a - 1) for r, a in zip(rdp, ORDERS, strict=True))
    assert classic == pytest.approx(expected, rel=1e-9)


def test_tf_privacy_tutorial_default_conversion_matches_dp_accounting():
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(TF_Q, dp_accounting.GaussianDpEvent(1.1)),
            TF_STEPS,
        )
    )
    default = epsilon_for([TF_EVENT], 1e-5)
    assert default == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-3)
    assert default == pytest.approx(2.60, abs=0.01)


def test_a_released_count_records_its_noise_and_its_sensitivity():
    event = ClientLevelRound(1.0, 0.1, 1, count_noise_std=3.0, count_sensitivity=1.0)
    assert event.count_noise_multiplier == 3.0
    assert (
        ClientLevelRound(
            1.0, 0.1, 1, count_noise_std=3.0, count_sensitivity=0.5
        ).count_noise_multiplier
        == 6.0
    )
    assert ClientLevelRound(1.0, 0.1).count_noise_multiplier is None
    for bad in (
        {"count_noise_std": 3.0},
        {"count_sensitivity": 0.5},
        {"count_noise_std": 3.0, "count_sensitivity": 0.0},
        {"count_noise_std": 3.0, "count_sensitivity": math.inf},
    ):
        with pytest.raises(ValueError) as error:
            ClientLevelRound(1.0, 0.1, 1, **bad)
        one_line(error)
    with pytest.raises(TypeError):  # the count's parameters are never positional
        ClientLevelRound(1.0, 0.1, 1, 4.0)  # type: ignore[misc]


def test_update_noise_split_uses_the_count_sensitivity():
    # At sensitivity 1 the same σ_b buys half the multiplier, so the update sum needs more noise.
    centred = update_noise_for_adaptive_clipping(1.0, 2.0)
    raw = update_noise_for_adaptive_clipping(1.0, 2.0, count_sensitivity=1.0)
    assert centred == pytest.approx((1 - 4.0**-2) ** -0.5, rel=1e-12)
    assert raw == pytest.approx((1 - 2.0**-2) ** -0.5, rel=1e-12)
    with pytest.raises(ValueError) as error:
        update_noise_for_adaptive_clipping(1.0, 0.9, count_sensitivity=1.0)
    one_line(error)
