"""The two ways to run a simulation on one machine, behind one call.

- ``flower``: Flower's simulation runtime (Ray), the same runtime family as a real deployment.
- ``in-process``: Privet's `InProcessGrid`, the same ClientApp and server logic in this process,
  for many clients and many runs on one machine.

Both give the same results for the same configuration and seed (tested); results.json records
which one ran.
"""

from __future__ import annotations

from pathlib import Path

from privet.server.results import RoundCallback, RunResults
from privet.server.run_output import RESULTS_FILE, ResultsError, read_results
from privet.simulations.engine_names import ENGINE_NAMES
from privet.task.config import ConfigError, RunConfig

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
    from privet.server.checkpoint import lock_run_folder

    if engine not in ENGINE_NAMES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINE_NAMES)}")
    from privet.client.device import resolve_device

    resolve_device(config.device)  # `cuda` without a GPU: one line, before any client starts
    with lock_run_folder(Path(config.output)):
        return _run_with(engine, config, on_round, verbose)


def _run_with(
    engine: str, config: RunConfig, on_round: RoundCallback | None, verbose: bool
) -> RunResults:
    if engine == "in-process":
        from privet.simulations.inprocess_engine import run_in_process

        return run_in_process(config, on_round)
    if engine == "flower":
        from privet.client.device import resolve_device
        from privet.simulations.flower_engine import run_flower_simulation

        use_gpu = resolve_device(config.device).type == "cuda"
        return run_flower_simulation(config, on_round, use_gpu=use_gpu, verbose=verbose)
    raise ConfigError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINE_NAMES)}")


def recorded_engine(output_dir: Path) -> str | None:
    """The engine an earlier run in `output_dir` used, from its results.json (None if unknown)."""
    if not (output_dir / RESULTS_FILE).exists():
        return None
    try:
        recorded = read_results(output_dir).engine
    except ResultsError:
        return None
    return RECORDED_NAMES.get(str(recorded))
