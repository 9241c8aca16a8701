"""Where a run configuration comes from: a TOML file, then command-line flags on top."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from task.config import ConfigError, RunConfig


def read_config_file(path: str) -> dict[str, Any]:
    """Keys of a TOML file: top-level keys, or the `[privet]` table if the file has one."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} does not exist; check the --config path")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    table = data.get("privet", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [privet] must be a table of settings")
    nested = [key for key, value in table.items() if isinstance(value, dict)]
    if nested:
        raise ConfigError(f"config file {path}: unexpected table(s) {', '.join(nested)}")
    return table


NOISE_KEYS = ("noise-multiplier", "target-epsilon")


def build_config(file_values: Mapping[str, Any], flag_values: Mapping[str, Any]) -> RunConfig:
    """Flags override the file; both go through the same validation as Flower's run config.

    The noise is set by one of two keys, so a flag for either replaces both from the file.
    """
    merged = {key.replace("_", "-"): value for key, value in file_values.items()}
    flags = {
        key.replace("_", "-"): value for key, value in flag_values.items() if value is not None
    }
    if any(key in flags for key in NOISE_KEYS):
        for key in NOISE_KEYS:
            merged.pop(key, None)
    merged.update(flags)
    return RunConfig.from_mapping(merged)
