"""The two ways to run a simulation on one machine, behind one call.

- ``flower``: Flower's simulation runtime (Ray), the same runtime family as a real deployment.
- ``in-process``: Privet's `InProcessGrid`, the same ClientApp and server logic in this process,
  for many clients and many runs on one machine.

Both give the same results for the same configuration and seed (tested); results.json records
which one ran.
"""

from __future__ import annotations

import json
from pathlib import Path

from server.results import RESULTS_FILE, RoundCallback, RunResults
from task.config import ConfigError, RunConfig

ENGINE_NAMES: tuple[str, ...] = ("flower", "in-process")
# The engine names written to results.json by each engine.
RECORDED_NAMES: dict[str, str] = {"flower-simulation": "flower", "in-process": "in-process"}


def run_simulation_with(
    engine: str,
    config: RunConfig,
    on_round: RoundCallback | None = None,
    *,
    verbose: bool = False,
) -> RunResults:
    """Run `config` on `engine` ("flower" or "in-process") and return its results.

    The run folder's lock is taken here, before any engine starts, so a second writer is refused
    in one line (`privacy.storage.InUseError`) rather than inside Flower's runtime.
    """
    from server.checkpoint import lock_run_folder

    if engine not in ENGINE_NAMES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINE_NAMES)}")
    from client.device import resolve_device

    resolve_device(config.device)  # `cuda` without a GPU: one line, before any client starts
    with lock_run_folder(Path(config.output)):
        return _run_with(engine, config, on_round, verbose)


def _run_with(
    engine: str, config: RunConfig, on_round: RoundCallback | None, verbose: bool
) -> RunResults:
    if engine == "in-process":
        from simulations.inprocess_engine import run_in_process

        return run_in_process(config, on_round)
    if engine == "flower":
        from client.device import resolve_device
        from simulations.flower_engine import run_flower_simulation

        use_gpu = resolve_device(config.device).type == "cuda"
        return run_flower_simulation(config, on_round, use_gpu=use_gpu, verbose=verbose)
    raise ConfigError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINE_NAMES)}")


def recorded_engine(output_dir: Path) -> str | None:
    """The engine an earlier run in `output_dir` used, from its results.json (None if unknown)."""
    try:
        recorded = json.loads((output_dir / RESULTS_FILE).read_text()).get("engine")
    except (OSError, ValueError, AttributeError):
        return None
    return RECORDED_NAMES.get(str(recorded))
