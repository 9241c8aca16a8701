"""Issue 13 item 3: every run setting is declared once, in a section, and the rest is derived.

The CLI flags of `privet simulate` / `privet sweep`, Flower's `[tool.flwr.app.config]` table and
the per-section checks all come from RunConfig's declaration; these tests fail when one of them
drifts from it (a field without a flag, a flag without a field, a key missing from pyproject.toml).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import tomllib
from typing import Any

import pytest

from privet.cli import SIMULATE_KEYS, build_parser
from privet.privacy.accountants import RdpAccountant, register_accountant, unregister_accountant
from privet.task.config import (
    CLIENT_NOISE_KEYS,
    NOISE_KEYS,
    SECTION_CHECKS,
    SECTIONS,
    SETTINGS,
    SETTINGS_BY_NAME,
    ConfigError,
    RunConfig,
    check_section,
    ignored_settings,
)
from privet.task.settings import SECTION_NAMES, SECTION_TITLES, flower_config, flower_config_toml
from tests.conftest import REPO_ROOT

# Flags a command adds itself, besides the declared settings (and --help).
SIMULATE_OWN_FLAGS = {
    "-h",
    "--help",
    "--config",
    "--engine",
    "--output",
    "--overwrite",
    "--verbose",
}


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command]


def _declared_flags() -> set[str]:
    flags = {item.option for item in SETTINGS if item.flag in ("value", "switch", "toggle")}
    flags |= {f"--no-{item.key}" for item in SETTINGS if item.flag == "toggle"}
    return flags


def _unchecked(**values: Any) -> RunConfig:
    """A default config with `values` forced in, past validation, to call one section's check."""
    config = RunConfig()
    for name, value in values.items():
        object.__setattr__(config, name, value)
    return config


def test_every_field_is_declared_once_and_belongs_to_one_section():
    fields = [field.name for field in dataclasses.fields(RunConfig)]
    assert [item.name for item in SETTINGS] == fields
    assert set(SECTIONS) == set(SECTION_NAMES) == set(SECTION_CHECKS) == set(SECTION_TITLES)
    in_sections = [name for names in SECTIONS.values() for name in names]
    assert sorted(in_sections) == sorted(fields)  # each field in exactly one section
    assert all(SECTIONS[section] for section in SECTION_NAMES)  # no empty section
    assert all(item.help.strip() and "{" not in item.help for item in SETTINGS)
    assert RunConfig.key_names() == tuple(item.key for item in SETTINGS)


def test_section_gives_that_sections_values():
    config = RunConfig(noise_multiplier=1.5, secure_aggregation=True, clients=4)
    assert config.section("dp") == {
        "noise_multiplier": 1.5,
        "target_epsilon": None,
        "max_grad_norm": 1.0,
        "delta": 1e-5,
        "accountant": "rdp",
        "epsilon_budget": None,
    }
    assert config.section("secure_aggregation")["secure_aggregation"] is True
    assert config.section("federation")["clients"] == 4
    with pytest.raises(ConfigError, match="unknown section 'privacy'; choose one of: data, model"):
        config.section("privacy")


def test_simulate_has_one_flag_per_declared_setting_and_none_undeclared():
    parser = _subparser("simulate")
    flags = {option for action in parser._actions for option in action.option_strings}
    assert flags == _declared_flags() | SIMULATE_OWN_FLAGS
    assert set(SIMULATE_KEYS) == {item.name for item in SETTINGS if item.on_command_line}
    assert {"resume", "node_clients"}.isdisjoint(SIMULATE_KEYS)
    args = parser.parse_args([])
    assert all(getattr(args, name) is None for name in SIMULATE_KEYS)  # None = not given


def test_simulate_help_groups_the_flags_by_section():
    parser = _subparser("simulate")
    group_of = {
        action.dest: group.title
        for group in parser._action_groups
        for action in group._group_actions
    }
    for item in SETTINGS:
        if item.flag in ("value", "switch", "toggle"):
            assert group_of[item.name] == SECTION_TITLES[item.section], item.name
    text = parser.format_help()
    positions = [text.index(f"\n{SECTION_TITLES[section]}:\n") for section in SECTION_NAMES]
    assert positions == sorted(positions)


def test_sweep_shares_every_declared_flag():
    parser = _subparser("sweep")
    flags = {option for action in parser._actions for option in action.option_strings}
    assert _declared_flags() <= flags
    assert {"--vary", "--jobs", "--output"} <= flags


def test_choices_come_from_the_registries():
    register_accountant("test-rdp-copy")(RdpAccountant)
    try:
        assert RunConfig(accountant="test-rdp-copy").accountant == "test-rdp-copy"
        accountant = next(
            action
            for action in _subparser("simulate")._actions
            if "--accountant" in action.option_strings
        )
        assert "test-rdp-copy" in accountant.choices
    finally:
        unregister_accountant("test-rdp-copy")
    with pytest.raises(ConfigError, match="unknown accountant 'test-rdp-copy'; choose one of"):
        RunConfig(accountant="test-rdp-copy")


def _pyproject_table_text() -> str:
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    start = text.index("[tool.flwr.app.config]\n")
    end = text.index("\n[", start)
    return text[start : end + 1]


def test_pyproject_run_config_is_the_generated_table():
    flower = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    generated = flower_config(SETTINGS, RunConfig())
    assert flower["config"] == generated
    assert {key: type(value) for key, value in flower["config"].items()} == {
        key: type(value) for key, value in generated.items()
    }  # 2.0 stays a float, 5 an int: Flower passes the TOML types through
    assert _pyproject_table_text().rstrip("\n") == flower_config_toml(SETTINGS, RunConfig()).rstrip(
        "\n"
    )


def test_the_regeneration_command_prints_the_table_in_pyproject():
    printed = subprocess.run(
        [sys.executable, "-m", "privet.task.settings"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=120,
    ).stdout
    assert printed.rstrip("\n") == _pyproject_table_text().rstrip("\n")


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("data", {"dataset": "imagenet"}, "unknown dataset 'imagenet'; choose one of: digits"),
        ("data", {"alpha": 0.0}, "alpha must be positive, got 0"),
        ("data", {"partition": "column"}, "partition 'column' needs --partition-column NAME"),
        ("model", {"model": "resnet"}, "unknown model 'resnet'"),
        ("federation", {"batch_size": -4}, "batch-size must be a positive integer, got -4"),
        ("federation", {"clients_per_round": 9}, "clients-per-round must be between 1 and clients"),
        ("federation", {"node_clients": "1=0"}, "node-clients lists 1 nodes but clients=5"),
        ("dp", {"delta": 1.0}, "delta must be in (0, 1), got 1"),
        (
            "dp",
            {"noise_multiplier": 1.0, "target_epsilon": 3.0},
            "give either noise-multiplier or target-epsilon, not both",
        ),
        ("dp", {"accountant": "moments"}, "unknown accountant 'moments'; choose one of: rdp, prv"),
        ("dp", {"max_grad_norm": 1e308}, "max-grad-norm must be between 1e-06 and 1e+06"),
        ("client_dp", {"target_quantile": 1.5}, "target-quantile must be in (0, 1), got 1.5"),
        ("client_dp", {"adaptive_clipping": True}, "adaptive-clipping needs client-level DP"),
        ("client_dp", {"clip_learning_rate": 2.0}, "clip-learning-rate must be at most 1"),
        ("secure_aggregation", {"secagg_degree": 3}, "secagg-degree must be an even number"),
        ("secure_aggregation", {"secagg_levels": 1}, "secagg-levels must be between 2 and"),
        ("secure_aggregation", {"secagg_threshold": 0.5}, "secagg-threshold must be a fraction"),
        ("run", {"seed": -1}, "seed must be >= 0, got -1"),
        ("run", {"device": "tpu"}, "unknown device 'tpu'; choose one of: auto, cpu, cuda"),
        ("run", {"round_timeout": 0.0}, "round-timeout must be positive, got 0"),
        ("run", {"output": ""}, "output must name a folder"),
    ],
)
def test_each_section_check_rejects_its_bad_values_in_one_line(section, values, message):
    config = _unchecked(**values)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        check_section(config, section)
    assert "\n" not in str(info.value)
    for other in SECTION_NAMES:  # the value is that section's business alone
        if other != section:
            check_section(config, other)
    with pytest.raises(ConfigError, match=re.escape(message)):  # and the same on construction
        RunConfig(**{field: getattr(config, field) for field in values})


def test_unknown_section_is_refused():
    with pytest.raises(ConfigError, match="unknown section 'privacy'"):
        check_section(RunConfig(), "privacy")


def test_settings_a_feature_needs_and_the_noise_pairs_come_from_the_declaration():
    needing = [item.key for item in SETTINGS if item.needs is not None]
    assert sorted(needing) == sorted(
        [
            "secagg-threshold",
            "secagg-degree",
            "secagg-levels",
            "secagg-timeout",
            "secagg-clip-norm",
            "distributed-dp",
            "secagg-bits",
            "client-clip-norm",
            "target-quantile",
            "clip-learning-rate",
            "clip-count-stddev",
            "client-sampling",
            "alpha",
            "text-column",
            "max-length",
            "prompt-column",
            "response-column",
            "lora-alpha",
            "lora-targets",
        ]
    )
    assert list(ignored_settings(RunConfig(), needing)) == [
        "secagg-threshold",
        "secagg-degree",
        "secagg-levels",
        "secagg-timeout",
        "secagg-clip-norm",
        "distributed-dp",
        "client-clip-norm",
        "target-quantile",
        "clip-learning-rate",
        "clip-count-stddev",
        "secagg-bits",
        "client-sampling",
        "alpha",
        "text-column",
        "max-length",
        "prompt-column",
        "response-column",
        "lora-alpha",
        "lora-targets",
    ]  # the order the one-line error names the first of
    assert NOISE_KEYS == ("noise-multiplier", "target-epsilon")
    assert CLIENT_NOISE_KEYS == ("client-noise-multiplier", "client-target-epsilon")
    assert SETTINGS_BY_NAME["model"].builder_path and SETTINGS_BY_NAME["resume"].flag == "none"
