"""Where a run configuration comes from: a TOML file, then command-line flags on top."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from privet.task.config import ConfigError, RunConfig, duplicate_key_message, merge_settings


def read_config_file(path: str) -> dict[str, Any]:
    """Keys of a TOML file: top-level keys, or the `[privet]` table if the file has one."""
    settings, _ = read_config_tables(path, ())
    return settings


def read_config_tables(
    path: str, allowed_tables: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The settings of a TOML file, and the extra tables it may have (e.g. a sweep's `[vary]`).

    Settings are the top-level keys, or the `[privet]` table's; any other table must be one of
    `allowed_tables`.
    """
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
    extra = {
        key: value
        for source in (data, table)
        for key, value in source.items()
        if isinstance(value, dict) and key in allowed_tables
    }
    nested = [
        key for key, value in table.items() if isinstance(value, dict) and key not in allowed_tables
    ]
    if nested:
        raise ConfigError(f"config file {path}: unexpected table(s) {', '.join(nested)}")
    for keys in (table, *extra.values()):
        _check_spellings(keys, f"config file {path}")
    settings = {key: value for key, value in table.items() if not isinstance(value, dict)}
    return settings, extra


def _check_spellings(keys: Mapping[str, Any], where: str) -> None:
    """Refuse a key written twice, as `local-epochs` and `local_epochs` (TOML allows both)."""
    seen: dict[str, str] = {}
    for key in keys:
        name = str(key).replace("_", "-")
        if name in seen:
            raise ConfigError(duplicate_key_message(seen[name], str(key), where))
        seen[name] = str(key)


def build_config(file_values: Mapping[str, Any], flag_values: Mapping[str, Any]) -> RunConfig:
    """Flags override the file; both go through the same validation as Flower's run config."""
    return RunConfig.from_mapping(merge_settings(file_values, flag_values))
