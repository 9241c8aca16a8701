"""How a run setting is declared once: name, type, default, section, help and command-line shape.

`RunConfig` (privet.task.config) declares each of its fields with `setting(...)`, which is an
ordinary `dataclasses.field` carrying a `SettingSpec` in its metadata. Everything else is derived
from those fields, so that no setting's name is kept in step by hand:

- `declared_settings(RunConfig)`: the `Setting`s, each with its section, type, default and help;
- the flags of `privet simulate` / `privet sweep`, one argparse group per section
  (privet.cli.add_settings_arguments);
- Flower's run config, `[tool.flwr.app.config]` in pyproject.toml, which has to stay a literal TOML
  table: `flower_config_toml()` prints it, a test checks that pyproject.toml holds exactly that, and
  `python -m privet.task.settings` prints it for a maintainer to paste after adding a setting.

This module imports nothing of Privet's at import time (task imports nothing else), so that the
declaration can be read cheaply by the command line and by tests.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

SECTION_NAMES: tuple[str, ...] = (
    "data",
    "model",
    "federation",
    "dp",
    "client_dp",
    "secure_aggregation",
    "run",
)
"""The sections a setting belongs to, in the order they are validated and shown in --help."""

SECTION_TITLES: dict[str, str] = {
    "data": "data",
    "model": "model",
    "federation": "federation",
    "dp": "differential privacy (per client, per example)",
    "client_dp": "client-level DP (DP-FedAvg: per whole client)",
    "secure_aggregation": "secure aggregation (SecAgg+: the server learns only the sum of the "
    "updates)",
    "run": "run",
}
"""The heading of each section's argument group in `privet simulate --help`."""

FlagShape = Literal["value", "switch", "toggle", "own", "none"]
"""How a setting appears on the command line.

value: `--key VALUE` (typed, with choices when declared); switch: `--key` (store_true);
toggle: `--key` / `--no-key`; own: each command adds the flag itself with its own meaning (the
output folder: a run's for `simulate`, the sweep's for `sweep`); none: not a flag (set by another
command, like `resume`, or only in a deployment's run config, like `node-clients`).
"""

FLAG_SHAPES: tuple[str, ...] = ("value", "switch", "toggle", "own", "none")
METADATA_KEY = "privet"

_KINDS: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}


@dataclass(frozen=True)
class SettingSpec:
    """What `setting(...)` records about one field, besides its name, type and default."""

    section: str
    help: str
    flag: FlagShape = "value"
    choices: Callable[[], tuple[str, ...]] | None = None
    builder_path: bool = False
    exclusive: str | None = None
    needs: str | None = None
    toml_note: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        if self.section not in SECTION_NAMES:
            raise ValueError(f"unknown section {self.section!r}; one of {SECTION_NAMES}")
        if self.flag not in FLAG_SHAPES:
            raise ValueError(f"unknown flag shape {self.flag!r}; one of {FLAG_SHAPES}")


@dataclass(frozen=True)
class Setting:
    """One declared run setting, as read back from its dataclass field.

    name: the attribute (snake_case); key: Flower's and the config file's spelling (kebab-case);
    kind: bool, int, float or str; optional: whether None ("unset") is allowed; help: the --help
    text with the default filled in; choices: the allowed values (from their registry) or None;
    builder_path: a `module:function` is accepted besides the choices; exclusive: the name of the
    mutually exclusive group of flags it belongs to; needs: the feature without which it has no
    effect (see privet.task.config.ignored_settings).
    """

    name: str
    section: str
    kind: type
    optional: bool
    default: Any
    help: str
    flag: FlagShape
    choices: Callable[[], tuple[str, ...]] | None
    builder_path: bool
    exclusive: str | None
    needs: str | None
    toml_note: Callable[[], str] | None

    @property
    def key(self) -> str:
        """Flower's spelling of the name: `local-epochs`."""
        return self.name.replace("_", "-")

    @property
    def option(self) -> str:
        """The command-line flag: `--local-epochs`."""
        return f"--{self.key}"

    @property
    def on_command_line(self) -> bool:
        """Whether `privet simulate` takes it as a flag (shared, or added by the command)."""
        return self.flag != "none"


def setting(
    default: Any,
    *,
    section: str,
    help: str,  # noqa: A002 - the argparse name, read by people who know argparse
    flag: FlagShape = "value",
    choices: Callable[[], tuple[str, ...]] | None = None,
    builder_path: bool = False,
    exclusive: str | None = None,
    needs: str | None = None,
    toml_note: Callable[[], str] | None = None,
) -> Any:
    """A dataclass field that declares one run setting (see `SettingSpec` and `Setting`).

    `help` may name the default as `{default}` (or `{default:g}`); `choices` is a function, so
    that names registered later (models, data sets, accountants) are offered too.
    """
    spec = SettingSpec(
        section=section,
        help=help,
        flag=flag,
        choices=choices,
        builder_path=builder_path,
        exclusive=exclusive,
        needs=needs,
        toml_note=toml_note,
    )
    return dataclasses.field(default=default, metadata={METADATA_KEY: spec})


def _kind(annotation: Any) -> tuple[type, bool]:
    """The base type and optionality of an annotation such as "float | None"."""
    text = str(annotation).replace("typing.", "")
    parts = [part.strip() for part in text.split("|")]
    optional = "None" in parts
    base = [part for part in parts if part != "None"]
    if len(base) != 1 or base[0] not in _KINDS:
        raise TypeError(f"a setting is bool, int, float or str (or | None), got {text!r}")
    return _KINDS[base[0]], optional


def declared_settings(config_class: type) -> tuple[Setting, ...]:
    """Every field of `config_class` as a `Setting`, in field order; each must use `setting()`."""
    settings = []
    for field in dataclasses.fields(config_class):
        spec = field.metadata.get(METADATA_KEY)
        if not isinstance(spec, SettingSpec):
            raise TypeError(f"{config_class.__name__}.{field.name} is not declared with setting()")
        kind, optional = _kind(field.type)
        settings.append(
            Setting(
                name=field.name,
                section=spec.section,
                kind=kind,
                optional=optional,
                default=field.default,
                help=spec.help.format(default=field.default),
                flag=spec.flag,
                choices=spec.choices,
                builder_path=spec.builder_path,
                exclusive=spec.exclusive,
                needs=spec.needs,
                toml_note=spec.toml_note,
            )
        )
    return tuple(settings)


def sections_of(settings: Iterable[Setting]) -> dict[str, tuple[str, ...]]:
    """Section name → the names of its settings, every section present, in `SECTION_NAMES` order."""
    listed = tuple(settings)
    return {
        section: tuple(item.name for item in listed if item.section == section)
        for section in SECTION_NAMES
    }


def toml_value(value: Any) -> str:
    """A default as Flower's run config writes it: None is "" (TOML cannot say unset)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def flower_config(settings: Iterable[Setting], defaults: Any) -> dict[str, Any]:
    """The `[tool.flwr.app.config]` table as values: every key with `defaults`' value ("" = unset).

    `defaults` is a default-constructed config, so that defaults computed after construction
    (target-epsilon 8 when no noise is given) are written as the run will use them.
    """
    return {
        item.key: "" if getattr(defaults, item.name) is None else getattr(defaults, item.name)
        for item in settings
    }


def flower_config_toml(settings: Iterable[Setting], defaults: Any) -> str:
    """The `[tool.flwr.app.config]` table as the text pyproject.toml must hold."""
    lines = ["[tool.flwr.app.config]"]
    section = None
    for item in settings:
        if item.section != section:
            section = item.section
            lines.append(f"# -- {SECTION_TITLES[section]}")
        if item.toml_note is not None:
            lines.append(f"# {item.toml_note()}")
        lines.append(f"{item.key} = {toml_value(getattr(defaults, item.name))}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the generated `[tool.flwr.app.config]` table (paste it into pyproject.toml)."""
    # Through the imported modules: run as a script, this file's classes are other objects.
    from privet.task import settings
    from privet.task.config import SETTINGS, RunConfig

    print(settings.flower_config_toml(SETTINGS, RunConfig()), end="")


if __name__ == "__main__":
    main()
