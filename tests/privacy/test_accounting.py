import math
import time
import warnings

import dp_accounting
import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.utils import get_noise_multiplier

from privet.privacy import (
    DEFAULT_RDP_ORDERS,
    OPACUS_RDP_ORDERS,
    AccountingError,
    CalibrationError,
    GaussianComposition,
    PoissonGaussianSteps,
    RdpAccountant,
    compose,
    epsilon_for,
    noise_for_target_epsilon,
)
from privet.privacy.accountants import MAX_PLD_GRID_POINTS, MAX_PLD_STEP_POINTS, PldAccountant

SETTINGS = [
    (0.01, 1.1, 1000, 1e-5),
    (0.1, 1.0, 90, 1e-5),
    (0.004, 0.8, 5000, 1e-6),
    (0.05, 2.0, 300, 1e-5),
    (1.0, 5.0, 10, 1e-3),
]


def dp_accounting_rdp_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """Google's dp-accounting RDP accountant, on the same orders Opacus uses."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    accountant = dp_accounting.rdp.RdpAccountant(orders)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), SETTINGS)
def test_epsilon_matches_dp_accounting_rdp(q, sigma, steps, delta):
    ours = epsilon_for([PoissonGaussianSteps(sigma, q, steps)], delta)
    theirs = dp_accounting_rdp_epsilon(q, sigma, steps, delta)
    # Both compute RDP of the sampled Gaussian on the same orders; dp-accounting drops a few
    # fractional orders whose series fail to converge, which moves ε by < 0.1%.
    assert ours == pytest.approx(theirs, rel=1e-3)


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), SETTINGS)
def test_epsilon_matches_opacus_accountant_stepped(q, sigma, steps, delta):
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    expected = accountant.get_epsilon(delta)
    assert epsilon_for([PoissonGaussianSteps(sigma, q, steps)], delta) == pytest.approx(
        expected, rel=1e-12
    )


def test_history_split_into_rounds_composes_to_the_whole_run():
    whole = epsilon_for([PoissonGaussianSteps(1.0, 0.1, 90)], 1e-5)
    rounds = [PoissonGaussianSteps(1.0, 0.1, 18)] * 5
    assert epsilon_for(rounds, 1e-5) == pytest.approx(whole, rel=1e-12)
    assert compose(rounds) == [PoissonGaussianSteps(1.0, 0.1, 90)]


def test_more_steps_never_spend_less():
    values = [epsilon_for([PoissonGaussianSteps(1.0, 0.05, s)], 1e-5) for s in (10, 100, 1000)]
    assert values == sorted(values) and values[0] < values[-1]


def test_no_events_is_zero_and_no_noise_is_infinite():
    assert epsilon_for([], 1e-5) == 0.0
    assert math.isinf(epsilon_for([PoissonGaussianSteps(0.0, 0.1, 1)], 1e-5))


@pytest.mark.parametrize(
    "values", [[1.0, 0.0, 3], [1.0, 1.5, 3], [-1.0, 0.1, 3], [1.0, 0.1, -2], [1.0, 0.1, 2.5]]
)
def test_malformed_events_are_rejected(values):
    with pytest.raises(ValueError):
        PoissonGaussianSteps.from_list(values)


def test_event_round_trips_through_a_list():
    event = PoissonGaussianSteps(1.25, 0.0625, 42)
    assert PoissonGaussianSteps.from_list(event.to_list()) == event


@pytest.mark.parametrize(
    ("target", "q", "steps"), [(8.0, 0.111, 90), (1.0, 0.01, 2000), (3.0, 256 / 60000, 14000)]
)
def test_calibration_is_tight_and_agrees_with_opacus(target, q, steps):
    sigma = noise_for_target_epsilon(target, 1e-5, q, steps)
    assert epsilon_for([PoissonGaussianSteps(sigma, q, steps)], 1e-5) <= target
    assert epsilon_for([PoissonGaussianSteps(sigma - 1e-3, q, steps)], 1e-5) > target
    opacus_sigma = get_noise_multiplier(
        target_epsilon=target,
        target_delta=1e-5,
        sample_rate=q,
        steps=steps,
        accountant="rdp",
        epsilon_tolerance=0.001,
    )
    assert sigma == pytest.approx(opacus_sigma, rel=0.02)


@pytest.mark.parametrize("target", [0.0, -1.0, float("nan"), float("inf")])
def test_calibration_rejects_meaningless_targets(target):
    with pytest.raises(CalibrationError, match="target epsilon"):
        noise_for_target_epsilon(target, 1e-5, 0.1, 10)


def test_calibration_reports_unreachable_target():
    with pytest.raises(CalibrationError, match="unreachable"):
        noise_for_target_epsilon(1e-9, 1e-5, 0.5, 1000)


def test_privet_orders_start_with_opacus_defaults_and_reach_small_epsilon():
    assert list(OPACUS_RDP_ORDERS) == RDPAccountant.DEFAULT_ALPHAS
    assert DEFAULT_RDP_ORDERS[: len(OPACUS_RDP_ORDERS)] == OPACUS_RDP_ORDERS
    extra = DEFAULT_RDP_ORDERS[len(OPACUS_RDP_ORDERS) :]
    assert all(float(order).is_integer() for order in extra)
    assert list(extra) == sorted(set(extra)) and extra[0] == 64 and extra[-1] >= 10_000


def _opacus(history, delta):
    """Opacus' own RDPAccountant on its default orders: (ε, optimal order)."""
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps) for sigma, q, steps in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return accountant.get_privacy_spent(delta=delta)


def _random_histories(count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield (
            [
                GaussianComposition(
                    float(rng.uniform(0.5, 40)),
                    float(10 ** rng.uniform(-3, 0)),
                    int(10 ** rng.uniform(0, 4)),
                )
                for _ in range(int(rng.integers(1, 3)))
            ],
            float(rng.choice([1e-3, 1e-5, 1e-6])),
        )


def test_epsilon_is_opacus_bit_for_bit_unless_the_optimum_is_above_63():
    """More orders only tighten ε, and leave it untouched when Opacus' optimum is inside 1.1–63."""
    inside = above = 0
    for history, delta in _random_histories(80):
        events = [PoissonGaussianSteps(*item) for item in history]
        expected, order = _opacus(history, delta)
        ours = epsilon_for(events, delta)
        assert RdpAccountant(OPACUS_RDP_ORDERS).epsilon(events, delta) == expected
        if order < 63:
            inside += 1
            assert ours == expected
        else:  # Opacus' optimum at its edge: a larger order may do better
            assert ours <= expected
            above += ours < expected
    assert inside > 10 and above > 10  # the histories cover both cases


def test_orders_above_63_are_skipped_only_when_they_cannot_lower_epsilon():
    """ε equals Opacus' conversion over all of Privet's orders, whether or not they were computed.

    The histories straddle ε ≈ 0.2 at δ = 1e-5, where the optimal order crosses 63.
    """
    for history, delta in _random_histories(80, seed=1):
        full = RdpAccountant().rdp(history)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            expected, _ = opacus_rdp.get_privacy_spent(
                orders=list(DEFAULT_RDP_ORDERS), rdp=full, delta=delta
            )
        events = [PoissonGaussianSteps(*item) for item in history]
        assert epsilon_for(events, delta) == expected


@pytest.mark.parametrize(
    ("sigma", "q", "steps"),
    [
        (0.01, 1 / 9, 90),  # `--accountant pld --noise-multiplier 0.01`: 150 s and 4.2 GB before
        (1e-3, 1e-6, 1),  # a tiny ε: the grid interval shrinks with it, the loss range does not
        (0.2, 1e-3, 20000),  # ε in the thousands by RDP: the composed grid is too wide
    ],
)
def test_pld_refuses_a_grid_it_cannot_compute_in_one_line(sigma, q, steps):
    """Issue 12 item 8: mirror the PRV accountant's refusal instead of hanging."""
    started = time.monotonic()
    with pytest.raises(AccountingError) as info:
        epsilon_for([PoissonGaussianSteps(sigma, q, steps)], 1e-5, "pld")
    assert time.monotonic() - started < 5.0
    text = str(info.value)
    assert "the PLD accountant would need" in text and text.endswith("use the rdp accountant")
    assert "\n" not in text
    accountant = PldAccountant()
    step, composed = accountant.grid_points([GaussianComposition(sigma, q, steps)], 1e-5)
    assert step > MAX_PLD_STEP_POINTS or composed > MAX_PLD_GRID_POINTS
    assert math.isfinite(epsilon_for([PoissonGaussianSteps(sigma, q, steps)], 1e-5, "rdp"))


def test_pld_grid_estimate_is_what_dp_accounting_builds():
    """The per-step estimate is the size of dp-accounting's two distributions (remove, add)."""
    from dp_accounting.pld import privacy_loss_distribution

    for sigma, q in ((1.0, 0.01), (0.5, 0.2), (3.0, 0.9)):
        interval = 1e-3
        built = privacy_loss_distribution.from_gaussian_mechanism(
            sigma, sampling_prob=q, value_discretization_interval=interval
        )
        sizes = built._pmf_remove.size + built._pmf_add.size  # dp-accounting's own grids
        accountant = PldAccountant(value_discretization_interval=interval)
        step, composed = accountant.grid_points([GaussianComposition(sigma, q, 100)], 1e-5)
        assert step == pytest.approx(sizes, rel=0.01)
        assert composed < MAX_PLD_GRID_POINTS / 100
