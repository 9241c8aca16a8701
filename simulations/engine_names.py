"""The names of the simulation engines, alone so that the command line can list them cheaply.

`privet.simulations.engines` runs them (and imports torch); the CLI's --engine choices and the
engines' own check both read this one tuple.
"""

from __future__ import annotations

ENGINE_NAMES: tuple[str, ...] = ("flower", "in-process")
"""flower: Flower's simulation runtime (Ray); in-process: Privet's engine in this process."""
