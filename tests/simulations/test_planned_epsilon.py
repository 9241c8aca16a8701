"""The planned ε that `privet simulate` prints before a run: calibrated and named by --accountant.

Issue 11, item 6: the example-level target was calibrated with RDP whatever the accountant, and
RDP on Opacus' orders (up to 63) refused every target below ε ≈ 0.103 at δ = 1e-5.
"""

from __future__ import annotations

import pytest
from rich.console import Console

from privet.console import SimulationConsole
from privet.simulations.plan import plan_simulation
from privet.task.config import RunConfig
from tests.reference_accounting import dp_accounting_pld_epsilon, dp_accounting_rdp_epsilon


def shown_plan(plan) -> str:
    console = Console(record=True, width=400, force_terminal=False)
    SimulationConsole(console).show_plan(plan)
    return console.export_text()


def test_planned_epsilon_is_calibrated_and_printed_by_the_chosen_accountant():
    config = RunConfig(rounds=1, target_epsilon=0.1, accountant="pld")
    plan = plan_simulation(config)
    for client in plan.clients:
        local = client.local
        assert client.planned_epsilon <= 0.1
        # Independent: dp-accounting's PLD of the planned steps (finely discretized).
        reference = dp_accounting_pld_epsilon(
            local.sample_rate, local.noise_multiplier, local.planned_steps, config.delta
        )
        assert reference <= 0.1 * 1.001
        assert reference == pytest.approx(0.1, rel=0.03)
        assert client.planned_epsilon == pytest.approx(reference, rel=2e-3)
    text = shown_plan(plan)
    assert f"planned ε ≤ {plan.planned_epsilon_max:.3f} at δ = 1e-05 (PLD)" in text


def test_small_target_is_reachable_with_rdp():
    config = RunConfig(rounds=1, target_epsilon=0.05)
    plan = plan_simulation(config)
    for client in plan.clients:
        local = client.local
        assert client.planned_epsilon <= 0.05
        reference = dp_accounting_rdp_epsilon(
            local.sample_rate, local.noise_multiplier, local.planned_steps, config.delta
        )
        assert client.planned_epsilon == pytest.approx(reference, rel=1e-6)
    assert f"planned ε ≤ {plan.planned_epsilon_max:.3f} at δ = 1e-05 (RDP)" in shown_plan(plan)
