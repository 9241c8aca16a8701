import re
import tomllib

import pytest

from privet.privacy.calibration import MAX_NOISE_MULTIPLIER as CALIBRATION_MAX_NOISE_MULTIPLIER
from privet.task.config import (
    DEFAULT_TARGET_EPSILON,
    MAX_NOISE_MULTIPLIER,
    ConfigError,
    RunConfig,
    check_no_ignored_settings,
    ignored_settings,
)
from tests.conftest import REPO_ROOT


def test_defaults_target_epsilon_when_no_noise_is_given():
    assert RunConfig().target_epsilon == DEFAULT_TARGET_EPSILON
    assert RunConfig(noise_multiplier=1.0).target_epsilon is None


def test_mapping_accepts_flower_and_python_spellings_and_coerces_types():
    config = RunConfig.from_mapping(
        {
            "local-epochs": "3",
            "batch_size": 16,
            "lr": "0.1",
            "noise-multiplier": 1,
            "target-epsilon": "",
        }
    )
    assert (config.local_epochs, config.batch_size, config.lr) == (3, 16, 0.1)
    assert config.noise_multiplier == 1.0 and config.target_epsilon is None


def test_round_trip_through_flower_run_config():
    config = RunConfig(clients=7, noise_multiplier=1.2, data_dir=None)
    mapping = config.to_mapping()
    assert mapping["noise-multiplier"] == 1.2 and mapping["target-epsilon"] == ""
    assert RunConfig.from_mapping(mapping) == config


def test_pyproject_run_config_has_every_key_with_privet_defaults():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    flower = pyproject["tool"]["flwr"]["app"]["config"]
    assert set(flower) == set(RunConfig.key_names())
    assert RunConfig.from_mapping(flower) == RunConfig()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"model": "resnet"}, "unknown model"),
        ({"partition": "random"}, "unknown partition"),
        ({"device": "tpu"}, "unknown device"),
        ({"clients": 0}, "clients must be a positive integer"),
        ({"batch-size": -4}, "batch_size|batch-size"),
        ({"rounds": 2.5}, "rounds must be an integer"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"max-grad-norm": 0}, "max-grad-norm must be positive"),
        ({"delta": 1.0}, "delta must be in"),
        ({"noise-multiplier": 0}, "noise-multiplier must be positive"),
        ({"noise-multiplier": 1.0, "target-epsilon": 3.0}, "not both"),
        ({"target-epsilon": -1}, "target-epsilon must be positive"),
        ({"alpha": 0}, "alpha must be positive"),
        ({"dataset": "mnist"}, "--data-dir"),
        ({"dataset": "csv"}, "--data-file"),
        ({"partition": "column"}, "--partition-column"),
        ({"colour": "red"}, "unknown configuration key 'colour'"),
        ({"seed": True}, "seed must be an integer"),
        ({"dataset": 3}, "dataset must be a string"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


# -- issue 12: ranges checked up front, settings given twice or given for nothing ---------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"noise-multiplier": 1e200}, "noise-multiplier must be between 0.001 and 1000"),
        ({"noise-multiplier": 1e-300}, "noise-multiplier must be between 0.001 and 1000"),
        ({"noise-multiplier": float("nan")}, "noise-multiplier must be positive"),
        ({"client-noise-multiplier": 1e-300}, "client-noise-multiplier must be between 0.001"),
        ({"client-noise-multiplier": 1e200}, "client-noise-multiplier must be between 0.001"),
        ({"max-grad-norm": 1e308}, "max-grad-norm must be between 1e-06 and 1e+06"),
        ({"max-grad-norm": 1e-300}, "max-grad-norm must be between 1e-06 and 1e+06"),
        (
            {"client-noise-multiplier": 1, "client-clip-norm": 1e308},
            "client-clip-norm must be between 1e-06 and 1e+06",
        ),
        (
            {"secure-aggregation": True, "secagg-clip-norm": 1e308},
            "secagg-clip-norm must be between 1e-06 and 1e+06",
        ),
        (
            {"client-noise-multiplier": 1, "adaptive-clipping": True, "clip-count-stddev": 1e308},
            "clip-count-stddev must be at most the 5 clients expected per round",
        ),
        (
            {"client-noise-multiplier": 1, "adaptive-clipping": True, "clip-learning-rate": 1e308},
            "clip-learning-rate must be at most 1",
        ),
        ({"local-epochs": 3, "local_epochs": 1}, "sets local-epochs twice"),
    ],
)
def test_values_that_crashed_a_run_are_refused_up_front(values, message):
    """Issue 12 items 6 and 10: each of these crashed mid-run with a traceback."""
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        RunConfig.from_mapping(values)
    assert "\n" not in str(info.value)


def test_the_ends_of_each_range_are_accepted():
    RunConfig(noise_multiplier=1e-3, max_grad_norm=1e-6)
    RunConfig(noise_multiplier=1e3, max_grad_norm=1e6)
    RunConfig(client_noise_multiplier=1e3, client_clip_norm=1e6, secure_aggregation=True)
    RunConfig(secagg_clip_norm=1e-6, secure_aggregation=True)
    RunConfig(
        client_noise_multiplier=1.0, adaptive_clipping=True, clip_count_stddev=5.0,
        clip_learning_rate=1.0,
    )  # fmt: skip
    assert MAX_NOISE_MULTIPLIER == CALIBRATION_MAX_NOISE_MULTIPLIER


@pytest.mark.parametrize(
    ("values", "given", "message"),
    [
        ({}, {"secagg-levels"}, "--secagg-levels has no effect without --secure-aggregation"),
        ({}, {"secagg_timeout"}, "--secagg-timeout has no effect without --secure-aggregation"),
        ({}, {"client-clip-norm"}, "--client-clip-norm has no effect without client-level DP"),
        (
            {"client_noise_multiplier": 1.0},
            {"target-quantile", "clip-count-stddev"},
            "no effect without --adaptive-clipping (and 1 more setting(s) like it)",
        ),
        ({}, {"client-sampling"}, "--client-sampling has no effect without --clients-per-round"),
        ({}, {"alpha"}, "--alpha has no effect without --partition dirichlet"),
    ],
)
def test_a_setting_its_feature_ignores_is_an_error(values, given, message):
    config = RunConfig(**values)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_no_ignored_settings(config, given)


def test_settings_their_feature_uses_are_fine():
    check_no_ignored_settings(RunConfig(secure_aggregation=True), {"secagg-levels", "seed"})
    check_no_ignored_settings(RunConfig(partition="dirichlet"), {"alpha"})
    check_no_ignored_settings(RunConfig(clients_per_round=2), {"client-sampling"})
    assert ignored_settings(RunConfig(client_noise_multiplier=1.0), {"client_clip_norm"}) == {}
