"""Running a simulation on Flower's simulation runtime (Ray), in this process.

Flower 1.42 offers two ways to start its simulation runtime: the `flwr run` CLI (which needs a
SuperLink running in the background and an app folder) and the Python function `run_simulation`,
which is marked deprecated in favour of the CLI but is the only in-process entry point. Privet uses
`run_simulation` because it builds the ServerApp and ClientApp objects itself with a validated
`RunConfig` (Flower's function would pass them an empty run config) and gets a callback per round
for its progress bar; `flwr run .` keeps working for Flower users through the module-level apps.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from flwr.clientapp.typing import Mod

from privet.client.app import make_client_app
from privet.server.app import make_server_app
from privet.server.results import RoundCallback, RunResults
from privet.task.config import RunConfig


class SimulationFailedError(RuntimeError):
    """The Flower simulation ended without results (a client or the server raised)."""


@contextmanager
def _quiet_flower(verbose: bool) -> Iterator[None]:
    """Keep Flower's per-round INFO logs (and its deprecation notice) off the user's screen."""
    logger = logging.getLogger("flwr")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def backend_config_for(config: RunConfig, use_gpu: bool) -> dict[str, object]:
    """One CPU (and a share of the GPU, when used) per virtual client actor."""
    gpus_per_client = 1.0 / min(config.clients, 4) if use_gpu else 0.0
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": gpus_per_client},
        "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "include_dashboard": False},
    }


def run_flower_simulation(
    config: RunConfig,
    on_round: RoundCallback | None = None,
    *,
    use_gpu: bool = False,
    verbose: bool = False,
    client_mods: list[Mod] | None = None,
) -> RunResults:
    """Run `config` on Flower's simulation runtime and return what the ServerApp recorded.

    ``client_mods`` wrap every client handler (e.g. `simulations.faults.Dropout` to make clients
    fail at a chosen stage and round).
    """
    from flwr.simulation import run_simulation

    collected: list[RunResults] = []
    server_app = make_server_app(config, on_round, "flower-simulation", collected.append)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Keep Ray on the loopback address: a single-machine simulation needs no network interface.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with _quiet_flower(verbose):
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(config, mods=client_mods),
            num_supernodes=config.clients,
            backend_config=backend_config_for(config, use_gpu),  # type: ignore[arg-type]
            verbose_logging=verbose,
        )
    if not collected:
        raise SimulationFailedError("the simulation ended without results; rerun with --verbose")
    return collected[0]
