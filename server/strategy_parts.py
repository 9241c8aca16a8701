"""Which strategy parts a run's configuration selects, assembled into `PrivetFedAvg`.

The one place the configuration meets the parts (`server.strategy` lists them): client-level DP
selects `ClientLevelRelease` (`DistributedDpRelease` under distributed DP; else
`FedAvgRelease`), secure aggregation selects
`SecureAggregation` (else `PlainAggregation`), and the server step is `ServerSGD`. A new part is
a new class plus one line here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from privet.privacy import PrivacyLedger
from privet.server.client_dp import ClientLevelPlan, make_aggregator, plan_client_level
from privet.server.distributed_release import DistributedDpRelease
from privet.server.federation_privacy import FederationPrivacy
from privet.server.run_output import SERVER_LEDGER_OWNER, RunFolder
from privet.server.sampling import ClientSampler
from privet.server.secure_aggregation import (
    DistributedDpSettings,
    SecAggSettings,
    grid_clients,
    noise_fraction,
)
from privet.server.secure_round import SecureAggregation
from privet.server.server_optimizer import ServerSGD
from privet.server.strategy import PrivetFedAvg
from privet.server.update_release import ClientLevelRelease, FedAvgRelease, UpdateRelease
from privet.server.update_steps import AggregationStep, PlainAggregation
from privet.task.config import RunConfig

logger = logging.getLogger(__name__)


def server_rng(config: RunConfig, purpose: int) -> np.random.Generator:
    """The server's randomness for client sampling and client-level noise.

    Seeded from the run's seed when it is reproducible (simulations), else from the operating
    system's randomness.
    """
    if config.reproducible:
        return np.random.default_rng([config.seed, purpose, 0x5EED])
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


def client_level_release(
    config: RunConfig, *, resuming: bool, plan: ClientLevelPlan | None = None
) -> ClientLevelRelease | DistributedDpRelease | None:
    """The client-level DP release with the server's ledger (kept across a restart), or None.

    DP-FedAvg's (`ClientLevelRelease`: the server noises the sum), or under distributed DP the
    clients noise it (`DistributedDpRelease`). ``plan``: the run's plan, if already made.
    """
    plan = plan if plan is not None else plan_client_level(config)
    if plan is None:
        return None
    ledger_file = RunFolder(Path(config.output)).ledger(SERVER_LEDGER_OWNER)
    if resuming and ledger_file.exists():
        ledger = PrivacyLedger.load(ledger_file)  # never reset by a restart
        ledger.path = ledger_file
        for correction in ledger.corrections:
            logger.warning(
                "%s: %s; the client-level epsilon so far is %.6g",
                ledger_file,
                correction,
                ledger.epsilon(config.accountant),
            )
    else:
        ledger = PrivacyLedger(
            owner=SERVER_LEDGER_OWNER, level="client", delta=config.delta, path=ledger_file
        )
    if config.distributed_dp:
        return DistributedDpRelease(
            plan,
            config.client_clip_norm,
            ledger,
            delta=config.delta,
            epsilon_budget=config.client_epsilon_budget,
        )
    return ClientLevelRelease(
        plan,
        make_aggregator(plan, config, server_rng(config, 2)),
        ledger,
        accountant=config.accountant,
        delta=config.delta,
        epsilon_budget=config.client_epsilon_budget,
    )


def aggregation_step(config: RunConfig, plan: ClientLevelPlan | None = None) -> AggregationStep:
    """SecAgg+ when the run asks for secure aggregation, else updates in the clear.

    Under distributed DP the clients' noise is sized from the plan's z (``plan``, the run's
    client-level plan).
    """
    settings = SecAggSettings.from_config(config)
    if settings is None:
        return PlainAggregation()
    if config.distributed_dp:
        plan = plan if plan is not None else plan_client_level(config)
        assert plan is not None  # config checks: distributed DP needs client-level DP
        settings = dataclasses.replace(
            settings,
            distributed=DistributedDpSettings(
                config.secagg_bits,
                plan.update_noise_multiplier,
                grid_clients=grid_clients(config.clients, config.client_sample_rate),
                noise_fraction=noise_fraction(
                    config.secagg_threshold, config.expected_clients_per_round
                ),
                seed=config.seed if config.reproducible else None,
            ),
        )
    return SecureAggregation(settings, config.update_clip_norm)


def build_strategy(config: RunConfig, *, resuming: bool) -> PrivetFedAvg:
    """The run's strategy: its sampler, aggregation step, release and server optimizer."""
    plan = plan_client_level(config)
    release: UpdateRelease | None = client_level_release(config, resuming=resuming, plan=plan)
    return PrivetFedAvg(
        FederationPrivacy(),
        sampler=ClientSampler(
            server_rng(config, 1),
            rate=config.client_sample_rate,
            scheme=config.client_sampling,
            size=config.clients_per_round,
        ),
        release=release if release is not None else FedAvgRelease(),
        aggregation=aggregation_step(config, plan),
        optimizer=ServerSGD(),
        min_trained=config.min_trained,
        local_evaluation=config.local_evaluation,
    )
