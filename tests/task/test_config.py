import tomllib

import pytest

from task.config import DEFAULT_TARGET_EPSILON, ConfigError, RunConfig
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
