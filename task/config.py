"""The one typed run configuration, validated in one place.

CLI flags, a TOML file and Flower's run config (`[tool.flwr.app.config]`, `--run-config`) are all
turned into a plain mapping and then into `RunConfig` by `RunConfig.from_mapping`, so every path
applies the same defaults and the same checks. Keys may be written `local-epochs` (Flower's style)
or `local_epochs`. Flower and TOML cannot say "unset", so an empty string means unset.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from privet.task.datasets import DataError, dataset_entry, dataset_names
from privet.task.models import ModelError, resolve_builder

PARTITION_NAMES: tuple[str, ...] = ("iid", "dirichlet", "column")
DEVICE_NAMES: tuple[str, ...] = ("auto", "cpu", "cuda")
ACCOUNTANT_NAMES: tuple[str, ...] = ("rdp", "prv", "pld")
CLIENT_SAMPLING_NAMES: tuple[str, ...] = ("poisson", "fixed")
# What happens to a tabular example with a missing feature value (task.datasets.MISSING_POLICIES).
MISSING_POLICY_NAMES: tuple[str, ...] = ("drop", "impute")
DEFAULT_TARGET_EPSILON = 8.0
DEFAULT_SECAGG_THRESHOLD = 2 / 3
DEFAULT_SECAGG_LEVELS = 2**16
DEFAULT_SECAGG_CLIP_NORM = 10.0
MAX_SECAGG_LEVELS = 2**24
# Ranges outside which a value is not a setting but a numerical accident, refused before a run
# starts (issue 12: 1e308 clip norms and 1e-300 noise crashed mid-run). Noise multipliers: below
# 1e-3 the ε is in the millions (no privacy at all), above 1e3 DP-SGD learns nothing (the bound
# of privacy.calibration.MAX_NOISE_MULTIPLIER). Clip norms bound L2 norms of float32 gradients
# and updates, and their noise is σ times them.
MIN_NOISE_MULTIPLIER = 1e-3
MAX_NOISE_MULTIPLIER = 1e3
MIN_CLIP_NORM = 1e-6
MAX_CLIP_NORM = 1e6
MAX_CLIP_LEARNING_RATE = 1.0  # adaptive clipping moves S by at most e^η per round (paper: 0.2)
_NOISE_RANGE_WHY = "below, ε is in the millions (no privacy); above, training learns nothing"
_CLIP_RANGE_WHY = "it bounds float32 gradients or updates; beyond that its noise overflows"


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what to do."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a private federated run needs to know, with the defaults of `privet simulate`."""

    dataset: str = "digits"
    data_dir: str | None = None
    data_file: str | None = None
    label_column: str | None = None
    partition_column: str | None = None
    # Tabular data: leave out ("drop") or impute examples with a missing feature value (blank,
    # "?", NaN, infinite, or text in a numeric column); the counts are reported either way.
    missing: str = "drop"
    clients: int = 5
    rounds: int = 5
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 2.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    partition: str = "iid"
    alpha: float = 0.5
    model: str = "logreg"
    seed: int = 0
    device: str = "auto"
    output: str = "privet-output"
    # Accounting and budgets.
    accountant: str = "rdp"
    epsilon_budget: float | None = None
    # Client-level DP (DP-FedAvg): on when a client noise multiplier or target is given.
    clients_per_round: int | None = None
    # How the clients of a round are drawn: Poisson at rate clients-per-round / clients, or
    # exactly clients-per-round of them ("fixed"; example-level DP only).
    client_sampling: str = "poisson"
    client_noise_multiplier: float | None = None
    client_target_epsilon: float | None = None
    client_clip_norm: float = 1.0
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clip_count_stddev: float | None = None
    client_epsilon_budget: float | None = None
    # Secure aggregation (SecAgg+): the server learns only the sum of the clients' updates.
    secure_aggregation: bool = False
    secagg_threshold: float = DEFAULT_SECAGG_THRESHOLD
    secagg_degree: int | None = None
    secagg_levels: int = DEFAULT_SECAGG_LEVELS
    secagg_timeout: float = 300.0
    secagg_clip_norm: float | None = None
    # Continue the run in `output` from its last checkpoint instead of starting afresh.
    resume: bool = False
    # Seconds the server waits for the nodes to come, and for each round's training replies.
    round_timeout: float = 3600.0
    # Seed DP noise, sampling and quantization dither from `seed` (simulations: reproducible);
    # off, they are seeded from the operating system's randomness on every use (deployments).
    reproducible: bool = False
    # Deployments: the partners' SuperNodes as "NODE_ID=CLIENT_ID,..." (node ids from `flwr
    # supernode register`). The server admits only these nodes, each as its one client id.
    node_clients: str | None = None

    def __post_init__(self) -> None:
        if self.noise_multiplier is None and self.target_epsilon is None:
            object.__setattr__(self, "target_epsilon", DEFAULT_TARGET_EPSILON)
        _validate(self)

    @property
    def client_level_dp(self) -> bool:
        """Whether updates are clipped and noised at the client level (DP-FedAvg)."""
        return self.client_noise_multiplier is not None or self.client_target_epsilon is not None

    @property
    def expected_clients_per_round(self) -> int:
        """Clients sampled per round on average (all of them unless clients-per-round is set)."""
        return self.clients if self.clients_per_round is None else self.clients_per_round

    @property
    def client_sample_rate(self) -> float:
        """Poisson sampling rate of clients: expected clients per round / population."""
        return self.expected_clients_per_round / self.clients

    def random_seed(self, *purpose: int) -> int:
        """A 63-bit seed: derived from `seed` and `purpose` when reproducible, else os.urandom."""
        if self.reproducible:
            words = np.random.SeedSequence([self.seed, *purpose]).generate_state(2, np.uint64)
            return int(words[0]) >> 1
        return int.from_bytes(os.urandom(8), "little") >> 1

    @property
    def update_clip_norm(self) -> float:
        """L2 bound of each update: S under client-level DP, else secure aggregation's range."""
        if self.client_level_dp:
            return self.client_clip_norm
        if self.secagg_clip_norm is not None:
            return self.secagg_clip_norm
        return DEFAULT_SECAGG_CLIP_NORM

    @property
    def count_stddev(self) -> float:
        """σ_b of adaptive clipping's noised count (Andrew et al. 2021 suggest expected/20)."""
        if self.clip_count_stddev is not None:
            return self.clip_count_stddev
        return self.expected_clients_per_round / 20.0

    @property
    def node_client_map(self) -> dict[int, int] | None:
        """node-clients as {node id: client id}, or None when the key is unset."""
        if self.node_clients is None:
            return None
        return parse_node_clients(self.node_clients, self.clients)

    @classmethod
    def key_names(cls) -> tuple[str, ...]:
        """The configuration keys, in Flower's kebab-case spelling."""
        return tuple(field.name.replace("_", "-") for field in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build and validate a config from flags, TOML or Flower run config values."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for raw_key, raw_value in values.items():
            name = str(raw_key).replace("-", "_")
            if name not in fields:
                valid = ", ".join(cls.key_names())
                raise ConfigError(f"unknown configuration key {raw_key!r}; valid keys: {valid}")
            if name in spelled:
                raise ConfigError(duplicate_key_message(spelled[name], str(raw_key)))
            spelled[name] = str(raw_key)
            kwargs[name] = _coerce(raw_key, raw_value, fields[name].type)
        return cls(**kwargs)

    @classmethod
    def coerce_value(cls, key: str, value: Any) -> Any:
        """One value converted to the type of configuration key `key` (either spelling)."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        name = str(key).replace("-", "_")
        if name not in fields:
            valid = ", ".join(cls.key_names())
            raise ConfigError(f"unknown configuration key {key!r}; valid keys: {valid}")
        return _coerce(key, value, fields[name].type)

    def to_mapping(self) -> dict[str, Any]:
        """Kebab-case keys and plain values (None written as ""), as Flower's run config wants."""
        return {
            field.name.replace("_", "-"): ""
            if getattr(self, field.name) is None
            else getattr(self, field.name)
            for field in dataclasses.fields(self)
        }

    def to_json_dict(self) -> dict[str, Any]:
        """Snake-case keys and JSON values (None kept), for results.json."""
        return dataclasses.asdict(self)


# Settings that act only when a feature is on, with what turns it on. Giving one while the
# feature is off is an error (`check_no_ignored_settings`): it used to be silently ignored.
_SECAGG_NEEDS = ("--secure-aggregation", "add --secure-aggregation")
_CLIENT_DP_NEEDS = (
    "client-level DP",
    "add --client-noise-multiplier or --client-target-epsilon",
)
_ADAPTIVE_NEEDS = ("--adaptive-clipping", "add --adaptive-clipping (with client-level DP)")
_FEATURE_SETTINGS: tuple[tuple[str, tuple[str, str]], ...] = (
    ("secagg-threshold", _SECAGG_NEEDS),
    ("secagg-degree", _SECAGG_NEEDS),
    ("secagg-levels", _SECAGG_NEEDS),
    ("secagg-timeout", _SECAGG_NEEDS),
    ("secagg-clip-norm", _SECAGG_NEEDS),
    ("client-clip-norm", _CLIENT_DP_NEEDS),
    ("target-quantile", _ADAPTIVE_NEEDS),
    ("clip-learning-rate", _ADAPTIVE_NEEDS),
    ("clip-count-stddev", _ADAPTIVE_NEEDS),
    ("client-sampling", ("--clients-per-round", "add --clients-per-round")),
    ("alpha", ("--partition dirichlet", "add --partition dirichlet")),
)


def _feature_on(config: RunConfig, needs: str) -> bool:
    if needs == "--secure-aggregation":
        return config.secure_aggregation
    if needs == "client-level DP":
        return config.client_level_dp
    if needs == "--adaptive-clipping":
        return config.adaptive_clipping
    if needs == "--clients-per-round":
        return config.clients_per_round is not None
    return config.partition == "dirichlet"


def ignored_settings(config: RunConfig, given: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Which of the `given` keys `config` ignores: key → (the feature it needs, how to turn it on).

    Keys may be written in either spelling; the result uses Flower's (kebab-case).
    """
    named = {str(key).replace("_", "-") for key in given}
    return {
        key: needs
        for key, needs in _FEATURE_SETTINGS
        if key in named and not _feature_on(config, needs[0])
    }


def check_no_ignored_settings(config: RunConfig, given: Iterable[str]) -> None:
    """A one-line ConfigError when a setting was given that `config` would silently ignore."""
    ignored = ignored_settings(config, given)
    if ignored:
        key, (needs, fix) = next(iter(ignored.items()))
        others = f" (and {len(ignored) - 1} more setting(s) like it)" if len(ignored) > 1 else ""
        raise ConfigError(f"--{key} has no effect without {needs}{others}; {fix}, or drop --{key}")


def duplicate_key_message(first: str, second: str, where: str = "the configuration") -> str:
    """The error for one setting given twice (e.g. as `local-epochs` and `local_epochs`)."""
    key = first.replace("_", "-")
    return (
        f"{where} sets {key} twice (as {first!r} and {second!r}); keep one, since which would "
        "win is not obvious"
    )


NOISE_KEYS = ("noise-multiplier", "target-epsilon")
CLIENT_NOISE_KEYS = ("client-noise-multiplier", "client-target-epsilon")


def merge_settings(lower: Mapping[str, Any], upper: Mapping[str, Any]) -> dict[str, Any]:
    """`upper`'s settings over `lower`'s, in kebab-case; None in `upper` means "not given".

    Each noise level is set by one of two keys (a noise multiplier or a target ε), so giving
    either in `upper` replaces both from `lower`.
    """
    merged = {key.replace("_", "-"): value for key, value in lower.items()}
    given = {key.replace("_", "-"): value for key, value in upper.items() if value is not None}
    for pair in (NOISE_KEYS, CLIENT_NOISE_KEYS):
        if any(key in given for key in pair):
            for key in pair:
                merged.pop(key, None)
    merged.update(given)
    return merged


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert one raw value to the field's type, or explain why it cannot be."""
    text = str(annotation)
    optional = "None" in text
    if optional and (value is None or value == ""):
        return None
    if text.startswith("bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    try:
        if text.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if text.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        kind = "an integer" if text.startswith("int") else "a number"
        raise ConfigError(f"{key} must be {kind}, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(choices)}")


def _positive(key: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{key} must be positive, got {value:g}")


def _in_range(key: str, value: float, low: float, high: float, why: str) -> None:
    if not low <= value <= high:  # NaN fails too
        raise ConfigError(f"{key} must be between {low:g} and {high:g}, got {value:g}: {why}")


def _noise_multiplier(key: str, value: float | None) -> None:
    if value is None:
        return
    if not value > 0:
        raise ConfigError(f"{key} must be positive (0 would mean no privacy), got {value:g}")
    _in_range(key, value, MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER, _NOISE_RANGE_WHY)


def _clip_norm(key: str, value: float | None) -> None:
    if value is None:
        return
    if not value > 0:
        raise ConfigError(f"{key} must be positive, got {value:g}")
    _in_range(key, value, MIN_CLIP_NORM, MAX_CLIP_NORM, _CLIP_RANGE_WHY)


def _validate(config: RunConfig) -> None:
    """Value checks that need no data; data-dependent checks happen when the run is planned."""
    _one_of("dataset", config.dataset, dataset_names())
    try:
        resolve_builder(config.model)  # a module:function builder is imported here
    except ModelError as error:
        raise ConfigError(str(error)) from None
    _one_of("partition", config.partition, PARTITION_NAMES)
    _one_of("device", config.device, DEVICE_NAMES)
    _one_of("missing", config.missing, MISSING_POLICY_NAMES)
    for key in ("clients", "rounds", "local_epochs", "batch_size"):
        value = getattr(config, key)
        if value < 1:
            raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, got {value}")
    _positive("lr", config.lr)
    _clip_norm("max-grad-norm", config.max_grad_norm)
    _positive("alpha", config.alpha)
    if not 0 < config.delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {config.delta:g}")
    if config.noise_multiplier is not None and config.target_epsilon is not None:
        raise ConfigError("give either noise-multiplier or target-epsilon, not both")
    _noise_multiplier("noise-multiplier", config.noise_multiplier)
    if config.target_epsilon is not None:
        _positive("target-epsilon", config.target_epsilon)
    if config.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {config.seed}")
    _validate_dataset_options(config)
    if not config.output:
        raise ConfigError("output must name a folder")
    _one_of("accountant", config.accountant, ACCOUNTANT_NAMES)
    for key in ("epsilon_budget", "client_epsilon_budget", "client_target_epsilon"):
        value = getattr(config, key)
        if value is not None:
            _positive(key.replace("_", "-"), value)
    _validate_client_level(config)
    _validate_secure_aggregation(config)
    if config.node_clients is not None:
        parse_node_clients(config.node_clients, config.clients)


_OPTION_VALUES = {"data-dir": "FOLDER", "data-file": "FILE", "label-column": "NAME"}


def _validate_dataset_options(config: RunConfig) -> None:
    """The options the data set's registration says it needs, and a column partition's."""
    try:
        entry = dataset_entry(config.dataset)
    except DataError as error:
        raise ConfigError(str(error)) from None
    given = {
        "data-dir": config.data_dir,
        "data-file": config.data_file,
        "label-column": config.label_column,
    }
    if entry.needs == ("data-dir",) and not config.data_dir:
        raise ConfigError(
            f"dataset {config.dataset!r} is read from local files: pass --data-dir with the folder "
            "that holds them"
        )
    if not all(given[option] for option in entry.needs):
        wanted = " and ".join(f"--{option} {_OPTION_VALUES[option]}" for option in entry.needs)
        if entry.kind == "tabular":
            wanted = wanted.replace("--data-file FILE", "--data-file FILE.csv")
        raise ConfigError(f"dataset {config.dataset!r} needs {wanted}")
    if config.partition == "column" and not config.partition_column:
        raise ConfigError("partition 'column' needs --partition-column NAME (a column of the data)")
    if config.partition == "column" and entry.kind != "tabular":
        tabular = [name for name in dataset_names() if dataset_entry(name).kind == "tabular"]
        raise ConfigError(
            f"partition 'column' needs tabular data (--dataset {' or '.join(tabular)})"
        )


MAX_NODE_ID = 2**64 - 1  # Flower's node ids are unsigned 64-bit integers


def parse_node_clients(text: str, clients: int) -> dict[int, int]:
    """node-clients ("NODE_ID=CLIENT_ID" entries, comma- or space-separated) as a mapping.

    Every node and every client id appears once, and the entries number `clients` (the population
    that client sampling and client-level accounting assume).
    """
    mapping: dict[int, int] = {}
    for entry in text.replace(",", " ").split():
        node_text, _, client_text = entry.partition("=")
        if not (node_text.isdigit() and client_text.isdigit()):
            raise ConfigError(
                f"node-clients entry {entry[:40]!r} must be NODE_ID=CLIENT_ID with whole numbers "
                "(node ids as 'flwr supernode register' prints them)"
            )
        node, client = int(node_text), int(client_text)
        if not 0 < node <= MAX_NODE_ID:
            raise ConfigError(f"node-clients: {node} is not a Flower node id (1 to 2**64-1)")
        if node in mapping:
            raise ConfigError(f"node-clients lists node {node} twice; give each node once")
        if client in mapping.values():
            raise ConfigError(f"node-clients gives client id {client} to two nodes; one each")
        mapping[node] = client
    if len(mapping) != clients:
        raise ConfigError(
            f"node-clients lists {len(mapping)} nodes but clients={clients}; list every "
            "partner's node once and set clients to their number"
        )
    return mapping


def _validate_secure_aggregation(config: RunConfig) -> None:
    """Checks of the secure-aggregation settings (used only when it is switched on)."""
    t = config.secagg_threshold
    if not (0.5 < t <= 1 or (t >= 2 and float(t).is_integer())):
        raise ConfigError(
            f"secagg-threshold must be a fraction in (0.5, 1] of each neighbourhood or a whole "
            f"number of clients >= 2, got {t:g}"
        )
    if t > config.clients:
        raise ConfigError(
            f"secagg-threshold {t:g} is more than the {config.clients} clients; no sum could be "
            "unmasked"
        )
    degree = config.secagg_degree
    if degree is not None and (degree < 2 or degree % 2):
        raise ConfigError(
            f"secagg-degree must be an even number of neighbours >= 2, got {degree}; leave it "
            "unset to let Privet choose"
        )
    if not 2 <= config.secagg_levels <= MAX_SECAGG_LEVELS:
        raise ConfigError(
            f"secagg-levels must be between 2 and {MAX_SECAGG_LEVELS}, got {config.secagg_levels}"
        )
    _positive("secagg-timeout", config.secagg_timeout)
    _positive("round-timeout", config.round_timeout)
    if config.secagg_clip_norm is not None:
        _clip_norm("secagg-clip-norm", config.secagg_clip_norm)
        if config.client_level_dp:
            raise ConfigError(
                "under client-level DP updates are clipped to --client-clip-norm; drop "
                "--secagg-clip-norm"
            )
    if config.secure_aggregation and config.clients < 2:
        raise ConfigError("secure aggregation needs at least 2 clients; raise --clients")
    if config.secure_aggregation and config.expected_clients_per_round < 2:
        raise ConfigError(
            "secure aggregation needs at least 2 clients per round; raise --clients-per-round"
        )


def _validate_client_level(config: RunConfig) -> None:
    """Checks of DP-FedAvg settings: sampling, clipping, adaptive clipping, budgets."""
    _one_of("client-sampling", config.client_sampling, CLIENT_SAMPLING_NAMES)
    if config.client_sampling == "fixed" and config.client_level_dp:
        raise ConfigError(
            "client-sampling 'fixed' cannot be used with client-level DP: its accounting "
            "amplifies by Poisson sampling, and a fixed-size sample has neither that guarantee "
            "nor the same neighbouring relation; use --client-sampling poisson"
        )
    if config.clients_per_round is not None and not 1 <= config.clients_per_round <= config.clients:
        raise ConfigError(
            f"clients-per-round must be between 1 and clients ({config.clients}), "
            f"got {config.clients_per_round}"
        )
    if config.client_noise_multiplier is not None and config.client_target_epsilon is not None:
        raise ConfigError("give either client-noise-multiplier or client-target-epsilon, not both")
    _noise_multiplier("client-noise-multiplier", config.client_noise_multiplier)
    _clip_norm("client-clip-norm", config.client_clip_norm)
    _positive("clip-learning-rate", config.clip_learning_rate)
    if config.clip_learning_rate > MAX_CLIP_LEARNING_RATE:
        raise ConfigError(
            f"clip-learning-rate must be at most {MAX_CLIP_LEARNING_RATE:g}, got "
            f"{config.clip_learning_rate:g}: the clip norm would change by more than a factor e "
            "per round (Andrew et al. 2021 use 0.2)"
        )
    if not 0 < config.target_quantile < 1:
        raise ConfigError(f"target-quantile must be in (0, 1), got {config.target_quantile:g}")
    if config.clip_count_stddev is not None:
        _positive("clip-count-stddev", config.clip_count_stddev)
        expected = config.expected_clients_per_round
        if config.clip_count_stddev > expected:
            raise ConfigError(
                f"clip-count-stddev must be at most the {expected} clients expected per round, "
                f"got {config.clip_count_stddev:g}: a larger noise drowns the count it protects "
                "(Andrew et al. 2021 suggest clients-per-round / 20)"
            )
    if config.adaptive_clipping and not config.client_level_dp:
        raise ConfigError(
            "adaptive-clipping needs client-level DP: pass --client-noise-multiplier or "
            "--client-target-epsilon"
        )
    if config.client_epsilon_budget is not None and not config.client_level_dp:
        raise ConfigError(
            "client-epsilon-budget needs client-level DP: pass --client-noise-multiplier or "
            "--client-target-epsilon"
        )
    if config.client_level_dp and config.delta >= 1.0 / config.clients:
        raise ConfigError(
            f"delta={config.delta:g} is not below 1/clients = {1.0 / config.clients:.3g}, so "
            "client-level DP would allow releasing a whole client; lower --delta"
        )
