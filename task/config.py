"""The one typed run configuration, declared once and validated section by section.

Every setting is one `RunConfig` field declared with `privet.task.settings.setting(...)`: its
name, type, default, section (data, model, federation, dp, client_dp, secure_aggregation, run),
help text and command-line shape. From that declaration come the flags of `privet simulate` and
`privet sweep` (privet.cli), Flower's run-config keys (`[tool.flwr.app.config]`, checked by a
test and printed by `python -m privet.task.settings`), `SECTIONS` and the settings a feature
ignores when it is off. Each section's checks are one function of `SECTION_CHECKS`, in
privet.task.config_checks.

CLI flags, a TOML file and Flower's run config (`--run-config`) are all turned into a plain
mapping and then into `RunConfig` by `RunConfig.from_mapping`, so every path applies the same
defaults and the same checks. Keys may be written `local-epochs` (Flower's style) or
`local_epochs`. Flower and TOML cannot say "unset", so an empty string means unset.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from privet.task.config_checks import (
    CLIENT_SAMPLING_NAMES,
    DEVICE_NAMES,
    LOCAL_EVALUATION_CHOICES,
    MAX_CLIP_LEARNING_RATE,
    MAX_CLIP_NORM,
    MAX_NODE_ID,
    MAX_NOISE_MULTIPLIER,
    MAX_SECAGG_LEVELS,
    MIN_CLIP_NORM,
    MIN_NOISE_MULTIPLIER,
    MISSING_POLICY_NAMES,
    PARTITION_NAMES,
    PRECISION_NAMES,
    SECTION_CHECKS,
    ConfigError,
    accountant_names,
    check_section,
    parse_node_clients,
    validate,
)
from privet.task.datasets import DatasetOptions, dataset_entry, dataset_names
from privet.task.lora import LoraSettings
from privet.task.models import MODELS, model_folder, model_names
from privet.task.settings import Setting, declared_settings, sections_of, setting
from privet.task.task import DEFAULT_TASK, task_names

__all__ = [
    "CLIENT_NOISE_KEYS",
    "CLIENT_SAMPLING_NAMES",
    "DEFAULT_SECAGG_CLIP_NORM",
    "DEFAULT_SECAGG_LEVELS",
    "DEFAULT_DISTRIBUTED_DP_BITS",
    "DEFAULT_SECAGG_THRESHOLD",
    "DEFAULT_TARGET_EPSILON",
    "DEVICE_NAMES",
    "LOCAL_EVALUATION_CHOICES",
    "MAX_CLIP_LEARNING_RATE",
    "MAX_CLIP_NORM",
    "MAX_NODE_ID",
    "MAX_NOISE_MULTIPLIER",
    "MAX_SECAGG_LEVELS",
    "MIN_CLIP_NORM",
    "MIN_NOISE_MULTIPLIER",
    "MISSING_POLICY_NAMES",
    "NOISE_KEYS",
    "PARTITION_NAMES",
    "SECTIONS",
    "SECTION_CHECKS",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "ConfigError",
    "RunConfig",
    "accountant_names",
    "check_no_ignored_settings",
    "check_section",
    "duplicate_key_message",
    "ignored_settings",
    "merge_settings",
    "parse_node_clients",
]

DEFAULT_TARGET_EPSILON = 8.0
DEFAULT_SECAGG_THRESHOLD = 2 / 3
DEFAULT_SECAGG_LEVELS = 2**16
DEFAULT_SECAGG_CLIP_NORM = 10.0
DEFAULT_DISTRIBUTED_DP_BITS = 16


def _partition_names() -> tuple[str, ...]:
    return PARTITION_NAMES


def _device_names() -> tuple[str, ...]:
    return DEVICE_NAMES


def _client_sampling_names() -> tuple[str, ...]:
    return CLIENT_SAMPLING_NAMES


def _missing_policy_names() -> tuple[str, ...]:
    return MISSING_POLICY_NAMES


def _model_note() -> str:
    builtin = ", ".join(MODELS)
    return (
        f'a registered model ({builtin}), a pretrained classifier as "hf:FOLDER", or your own '
        'builder as "module:function"'
    )


# The features some settings need (`needs=` below): what the feature is called in an error, how to
# turn it on, and whether a config has it on. Order: the order `ignored_settings` reports them in.
_FEATURES: dict[str, tuple[str, str, Callable[[RunConfig], bool]]] = {
    "secure_aggregation": (
        "--secure-aggregation",
        "add --secure-aggregation",
        lambda config: config.secure_aggregation,
    ),
    "client_level_dp": (
        "client-level DP",
        "add --client-noise-multiplier or --client-target-epsilon",
        lambda config: config.client_level_dp,
    ),
    "adaptive_clipping": (
        "--adaptive-clipping",
        "add --adaptive-clipping (with client-level DP)",
        lambda config: config.adaptive_clipping,
    ),
    "distributed_dp": (
        "--distributed-dp",
        "add --distributed-dp (with --secure-aggregation and client-level DP)",
        lambda config: config.distributed_dp,
    ),
    "clients_per_round": (
        "--clients-per-round",
        "add --clients-per-round",
        lambda config: config.clients_per_round is not None,
    ),
    "dirichlet": (
        "--partition dirichlet",
        "add --partition dirichlet",
        lambda config: config.partition == "dirichlet",
    ),
    "text": (
        "text data",
        "use --dataset text",
        lambda config: dataset_entry(config.dataset).kind == "text",
    ),
    "prompts": (
        "prompt-response data",
        "use --dataset prompts --task causal-lm",
        lambda config: config.dataset == "prompts",
    ),
    "lora": (
        "LoRA adapters",
        "add --lora-rank R",
        lambda config: config.lora_rank > 0,
    ),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything a private federated run needs to know, with the defaults of `privet simulate`.

    Each field is one setting, declared once (see privet.task.settings); `section(name)` gives a
    section's values and `SECTIONS` its field names.
    """

    # -- data ---------------------------------------------------------------------------------
    dataset: str = setting(
        "digits", section="data", choices=dataset_names, help="data set (default: {default})"
    )
    data_dir: str | None = setting(
        None, section="data", help="folder with mnist/fashion-mnist IDX .gz files or adult.data"
    )
    data_file: str | None = setting(
        None,
        section="data",
        help="CSV file for --dataset csv (header row required); for --dataset text a CSV/TSV "
        "with a header, or JSON Lines",
    )
    label_column: str | None = setting(
        None, section="data", help="label column of a CSV file or text file"
    )
    # Text data (--dataset text): the column of the texts, and the token length every text is
    # padded or truncated to by the model folder's tokenizer (one text is one DP example).
    text_column: str = setting(
        "text", section="data", needs="text", help="text data: the column of the texts"
    )
    max_length: int = setting(
        128,
        section="data",
        needs="text",
        help="text data: tokens per text; longer texts are truncated, shorter ones padded "
        "(default: {default})",
    )
    # Prompt-response data (--dataset prompts, --task causal-lm): the loss is on the response.
    prompt_column: str = setting(
        "prompt", section="data", needs="prompts", help="prompt data: the column of the prompts"
    )
    response_column: str = setting(
        "response",
        section="data",
        needs="prompts",
        help="prompt data: the column of the responses the model learns to give",
    )
    partition_column: str | None = setting(
        None, section="data", help="column whose values split a CSV across clients"
    )
    # Tabular data: encode with an agreed schema (`privet schema` writes one) instead of fitting
    # one on data-file; every node encodes its own file with its copy of the same schema.
    schema_file: str | None = setting(
        None,
        section="data",
        help="tabular data: the schema JSON (from `privet schema`) to encode with instead of "
        "fitting one on --data-file; its missing-value policy must equal --missing",
    )
    # The server's test set, whole: no held-out split of data-file (which becomes optional on a
    # server that only evaluates, given schema-file for tabular data).
    test_file: str | None = setting(
        None,
        section="data",
        help="evaluate on exactly this file (CSV for tabular data, npz with arrays x and y for "
        "images) instead of a held-out part of the data",
    )
    # Tabular data: leave out ("drop") or impute examples with a missing feature value (blank,
    # "?", NaN, infinite, or text in a numeric column); the counts are reported either way.
    missing: str = setting(
        "drop",
        section="data",
        choices=_missing_policy_names,
        help="tabular data: drop (default) or impute examples with a missing feature value "
        "(blank, '?', NaN, infinite, or text in a numeric column); the counts are reported",
    )
    partition: str = setting(
        "iid", section="data", choices=_partition_names, help="how data is split (default: iid)"
    )
    alpha: float = setting(
        0.5,
        section="data",
        needs="dirichlet",
        help="Dirichlet concentration (default: {default})",
    )
    # -- model --------------------------------------------------------------------------------
    task: str = setting(
        DEFAULT_TASK,
        section="model",
        choices=task_names,
        help="what is learned: data, loss, the parameters that train and travel, metrics "
        "(default: {default}; others from privet.task.task.register_task)",
    )
    model: str = setting(
        "logreg",
        section="model",
        choices=model_names,
        builder_path=True,
        toml_note=_model_note,
        help="model (default: {default}); a pretrained Hugging Face classifier in a local folder "
        "as hf:FOLDER (text data); or your own builder (feature_shape, num_classes) -> "
        "torch.nn.Module named as module:function, e.g. mypkg.nets:build",
    )
    # LoRA (PEFT) on an hf: model: only the adapters and the task head train and travel.
    lora_rank: int = setting(
        0,
        section="model",
        help="add LoRA adapters of this rank to an hf: model and train only them and its head "
        "(default: 0, every parameter trains)",
    )
    lora_alpha: float | None = setting(
        None,
        section="model",
        needs="lora",
        help="LoRA scaling alpha: adapters add alpha/rank × B·A (default: twice the rank)",
    )
    lora_targets: str | None = setting(
        None,
        section="model",
        needs="lora",
        help="LoRA: the modules to adapt, comma-separated, e.g. query,value (default: PEFT's "
        "for the architecture)",
    )
    # Warm start: the run's first global model is read from a state dict trained elsewhere (on
    # public data, say); the server alone reads it and sends it with round 1's TRAIN messages.
    init_from: str | None = setting(
        None,
        section="model",
        help="start from these weights: a state-dict file (torch.save, read with "
        "weights_only=True) or a folder holding model.pt (e.g. an earlier run's output)",
    )
    # -- federation ---------------------------------------------------------------------------
    clients: int = setting(5, section="federation", help="virtual clients (default: {default})")
    rounds: int = setting(5, section="federation", help="federated rounds (default: {default})")
    local_epochs: int = setting(
        2, section="federation", help="epochs per round (default: {default})"
    )
    batch_size: int = setting(
        32, section="federation", help="expected batch size (default: {default})"
    )
    lr: float = setting(2.0, section="federation", help="learning rate (default: {default})")
    clients_per_round: int | None = setting(
        None,
        section="federation",
        help="expected clients per round; Poisson-samples each client at rate this/clients",
    )
    # How the clients of a round are drawn: Poisson at rate clients-per-round / clients, or
    # exactly clients-per-round of them ("fixed"; example-level DP only).
    client_sampling: str = setting(
        "poisson",
        section="federation",
        choices=_client_sampling_names,
        needs="clients_per_round",
        help="poisson (default): each client with probability clients-per-round/clients; "
        "fixed: exactly clients-per-round clients (example-level DP only)",
    )
    # Deployments: the partners' SuperNodes as "NODE_ID=CLIENT_ID,..." (node ids from `flwr
    # supernode register`). The server admits only these nodes, each as its one client id.
    node_clients: str | None = setting(
        None,
        section="federation",
        flag="none",
        help="deployments: the partners' nodes as NODE_ID=CLIENT_ID,... (one per client)",
    )
    # -- dp: example-level DP-SGD on each client ----------------------------------------------
    noise_multiplier: float | None = setting(
        None, section="dp", exclusive="noise", help="σ: noise std / clip norm"
    )
    target_epsilon: float | None = setting(
        None,
        section="dp",
        exclusive="noise",
        help="calibrate σ so each client ends the planned run at this ε "
        f"(default: {DEFAULT_TARGET_EPSILON:g})",
    )
    max_grad_norm: float = setting(
        1.0, section="dp", help="per-example clip norm C (default: {default})"
    )
    delta: float = setting(1e-5, section="dp", help="δ of (ε, δ)-DP (default: {default:g})")
    accountant: str = setting(
        "rdp",
        section="dp",
        choices=accountant_names,
        help="privacy accountant: rdp (default), prv (Opacus), pld (Google dp-accounting)",
    )
    epsilon_budget: float | None = setting(
        None,
        section="dp",
        help="example-level ε budget per client: a client declines a round that would exceed it",
    )
    # -- client_dp: DP-FedAvg, on when a client noise multiplier or target is given ------------
    client_noise_multiplier: float | None = setting(
        None,
        section="client_dp",
        exclusive="client-noise",
        help="z: noise std on the update sum / clip norm",
    )
    client_target_epsilon: float | None = setting(
        None,
        section="client_dp",
        exclusive="client-noise",
        help="calibrate z to reach this client-level ε",
    )
    client_clip_norm: float = setting(
        1.0,
        section="client_dp",
        needs="client_level_dp",
        help="clip norm S of each client's update (default: {default})",
    )
    adaptive_clipping: bool = setting(
        False,
        section="client_dp",
        flag="switch",
        help="adapt S to a quantile of update norms (Andrew et al. 2021)",
    )
    target_quantile: float = setting(
        0.5,
        section="client_dp",
        needs="adaptive_clipping",
        help="quantile of update norms S tracks (default: {default})",
    )
    clip_learning_rate: float = setting(
        0.2,
        section="client_dp",
        needs="adaptive_clipping",
        help="step size of S's update (default: {default})",
    )
    clip_count_stddev: float | None = setting(
        None,
        section="client_dp",
        needs="adaptive_clipping",
        help="noise std of the clipped-count query (default: clients-per-round / 20)",
    )
    client_epsilon_budget: float | None = setting(
        None,
        section="client_dp",
        help="client-level ε budget: the run ends before a round that would exceed it",
    )
    # -- secure_aggregation: SecAgg+, the server learns only the sum of the clients' updates ---
    secure_aggregation: bool = setting(
        False,
        section="secure_aggregation",
        flag="switch",
        help="mask every update so that only sums of at least t clients can be unmasked; "
        "updates are clipped and quantized",
    )
    secagg_threshold: float = setting(
        DEFAULT_SECAGG_THRESHOLD,
        section="secure_aggregation",
        needs="secure_aggregation",
        help="t: a fraction in (0.5, 1] of each client's neighbourhood, or a number of clients "
        "(default: 2/3)",
    )
    secagg_degree: int | None = setting(
        None,
        section="secure_aggregation",
        needs="secure_aggregation",
        help="neighbours per client (even); default: all clients up to 32 per round (64 with "
        "--distributed-dp), else 2*ceil(log2 n)",
    )
    secagg_levels: int = setting(
        DEFAULT_SECAGG_LEVELS,
        section="secure_aggregation",
        needs="secure_aggregation",
        help="quantization levels on [-S, S] (default: {default})",
    )
    secagg_timeout: float = setting(
        300.0,
        section="secure_aggregation",
        needs="secure_aggregation",
        help="seconds to wait for each protocol stage (default: {default:g})",
    )
    secagg_clip_norm: float | None = setting(
        None,
        section="secure_aggregation",
        needs="secure_aggregation",
        help="L2 bound of each update, the quantization range, when there is no client-level "
        f"DP (default: {DEFAULT_SECAGG_CLIP_NORM:g}; with client-level DP it is "
        "--client-clip-norm)",
    )
    distributed_dp: bool = setting(
        False,
        section="secure_aggregation",
        flag="switch",
        needs="secure_aggregation",
        help="distributed DP: each client adds its share of discrete Gaussian noise before "
        "masking, so the server only ever unmasks a noised sum (needs client-level DP)",
    )
    secagg_bits: int = setting(
        DEFAULT_DISTRIBUTED_DP_BITS,
        section="secure_aggregation",
        needs="distributed_dp",
        help="bits per coordinate of the secure sum under distributed DP (default: {default})",
    )
    # -- run ----------------------------------------------------------------------------------
    seed: int = setting(
        0, section="run", help="seed for data split, init, sampling and noise (default: {default})"
    )
    # Seed DP noise, sampling and quantization dither from `seed` (simulations: reproducible);
    # off, they are seeded from the operating system's randomness on every use (deployments).
    reproducible: bool = setting(
        False,
        section="run",
        flag="toggle",
        help="seed DP noise, sampling and dither from --seed (default for simulations: on; "
        "--no-reproducible draws them from the operating system's randomness)",
    )
    # Seconds the server waits for the nodes to come, and for each round's training replies.
    round_timeout: float = setting(
        3600.0,
        section="run",
        help="seconds to wait for the nodes and for each round's replies (default: {default:g})",
    )
    # A run whose rounds train too few clients has not done what was asked: it fails, loudly.
    min_trained: int | None = setting(
        None,
        section="run",
        help="fail the run (finished: false, non-zero exit) after a round in which fewer clients' "
        "updates reached the model (default: no minimum)",
    )
    # Each local evaluation is one more message exchange with every node that trained: cheap in
    # process, a round trip through the SuperLink in a deployment.
    local_evaluation: str = setting(
        "every-round",
        section="run",
        choices=lambda: LOCAL_EVALUATION_CHOICES,
        help="when the clients score the global model on their held-out examples: every-round "
        "(default), last-round or never (the server's test set is scored every round regardless)",
    )
    # A deployment's transport cost per stage, measured (server.link_check); 0 in most runs.
    link_check: int = setting(
        0,
        section="run",
        help="before round 1, time this many bare exchanges of each kind (empty, and the model "
        "out and back) with every node and report them (default: {default}, none)",
    )
    device: str = setting(
        "auto", section="run", choices=_device_names, help="where clients train (default: auto)"
    )
    # GPU memory: a DP batch larger than fits is processed in parts (Opacus' BatchMemoryManager)
    # whose clipped gradients add up before the one noisy step; ε and the update are unchanged.
    physical_batch_size: int | None = setting(
        None,
        section="run",
        help="most examples per forward/backward pass; larger DP batches are processed in "
        "parts with the same noise and ε (default: the whole batch at once)",
    )
    precision: str = setting(
        "fp32",
        section="run",
        choices=lambda: PRECISION_NAMES,
        help="forward pass precision: fp32 (default) or bf16 autocast (parameters, gradients "
        "and noise stay fp32)",
    )
    # Each command adds --output itself: a run's folder for `simulate`, the sweep's for `sweep`.
    output: str = setting(
        "privet-output",
        section="run",
        flag="own",
        help="results folder (default: privet-output/run-<time>)",
    )
    # Continue the run in `output` from its last checkpoint instead of starting afresh.
    resume: bool = setting(
        False,
        section="run",
        flag="none",
        help="continue the run in output from its last checkpoint (set by `privet resume`)",
    )

    def __post_init__(self) -> None:
        if self.noise_multiplier is None and self.target_epsilon is None:
            object.__setattr__(self, "target_epsilon", DEFAULT_TARGET_EPSILON)
        validate(self)

    def section(self, name: str) -> dict[str, Any]:
        """One section's settings and their values, {field name: value}; e.g. the "dp" section."""
        if name not in SECTIONS:
            raise ConfigError(f"unknown section {name!r}; choose one of: {', '.join(SECTIONS)}")
        return {field: getattr(self, field) for field in SECTIONS[name]}

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

    def dataset_options(self) -> DatasetOptions:
        """What the run says about its data, as a task's `load_data` receives it."""
        return DatasetOptions(
            data_dir=self.data_dir,
            data_file=self.data_file,
            label_column=self.label_column,
            partition_column=self.partition_column,
            seed=self.seed,
            missing=self.missing,
            schema_file=self.schema_file,
            test_file=self.test_file,
            text_column=self.text_column,
            max_length=self.max_length,
            model_folder=model_folder(self.model),
            prompt_column=self.prompt_column,
            response_column=self.response_column,
        )

    @property
    def lora(self) -> LoraSettings | None:
        """The LoRA adapters the model gets, or None (every parameter trains)."""
        if self.lora_rank == 0:
            return None
        alpha = 2.0 * self.lora_rank if self.lora_alpha is None else self.lora_alpha
        return LoraSettings(self.lora_rank, alpha, LoraSettings.parse_targets(self.lora_targets))

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


SETTINGS: tuple[Setting, ...] = declared_settings(RunConfig)
"""Every run setting, in field order, as declared on `RunConfig`."""
SETTINGS_BY_NAME: dict[str, Setting] = {item.name: item for item in SETTINGS}
SECTIONS: dict[str, tuple[str, ...]] = sections_of(SETTINGS)
"""Section name → its settings' field names (data, model, federation, dp, client_dp, ...)."""
NOISE_KEYS: tuple[str, ...] = tuple(item.key for item in SETTINGS if item.exclusive == "noise")
CLIENT_NOISE_KEYS: tuple[str, ...] = tuple(
    item.key for item in SETTINGS if item.exclusive == "client-noise"
)


def ignored_settings(config: RunConfig, given: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Which of the `given` keys `config` ignores: key → (the feature it needs, how to turn it on).

    A setting that acts only when a feature is on declares it (`needs=`); giving one while the
    feature is off is an error (`check_no_ignored_settings`): it used to be silently ignored.
    Keys may be written in either spelling; the result uses Flower's (kebab-case).
    """
    named = {str(key).replace("_", "-") for key in given}
    ignored: dict[str, tuple[str, str]] = {}
    for feature, (needs, fix, is_on) in _FEATURES.items():
        for item in SETTINGS:
            if item.needs == feature and item.key in named and not is_on(config):
                ignored[item.key] = (needs, fix)
    return ignored


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
