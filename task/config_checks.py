"""The checks of each section of the run configuration, one function per section.

`RunConfig` (privet.task.config) runs `validate` when it is made: the sections' checks in
`SECTION_NAMES` order (data, model, federation, dp, client_dp, secure_aggregation, run). They are
value checks that need no data; data-dependent checks happen when the run is planned. A section's
check may read the settings of other sections it depends on (client-level DP reads `clients`).
Every refusal is a one-line `ConfigError` that names the key and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from privet.task.causal_lm import CAUSAL_LM_TASK
from privet.task.datasets import MISSING_POLICIES, DataError, dataset_entry, dataset_names
from privet.task.lora import MAX_LORA_RANK, LoraSettings
from privet.task.models import ModelError, model_folder, resolve_builder
from privet.task.settings import SECTION_NAMES
from privet.task.task import task_names

if TYPE_CHECKING:
    from privet.task.config import RunConfig

PARTITION_NAMES: tuple[str, ...] = ("iid", "dirichlet", "column")
DEVICE_NAMES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISION_NAMES: tuple[str, ...] = ("fp32", "bf16")
"""Forward-pass precisions (`client.trainer.PRECISIONS`): fp16 would need loss scaling, which
scales per-example gradients before they are clipped."""
LOCAL_EVALUATION_CHOICES: tuple[str, ...] = ("every-round", "last-round", "never")
"""When clients evaluate the global model locally (run setting `local-evaluation`)."""
CLIENT_SAMPLING_NAMES: tuple[str, ...] = ("poisson", "fixed")
# What happens to a tabular example with a missing feature value: the data layer's policies.
MISSING_POLICY_NAMES: tuple[str, ...] = MISSING_POLICIES

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


def accountant_names() -> tuple[str, ...]:
    """The registered accountants (privet.privacy.accountants), the `accountant` choices.

    Imported when asked, not with this module: the task layer does not otherwise depend on the
    privacy package, and an accountant registered after import is still accepted.
    """
    from privet.privacy.accountants import accountant_names as registered

    return registered()


MAX_LINK_CHECKS = 100
"""Most bare exchanges of each kind a link check times (each is a round trip with every node)."""


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


# -- the checks of each section ------------------------------------------------------------------
# Value checks that need no data; data-dependent checks happen when the run is planned. A section's
# check may read settings of other sections that it depends on (client-level DP reads `clients`).


def check_data(config: RunConfig) -> None:
    """The data set, how it is split, and the options its registration says it needs."""
    _one_of("dataset", config.dataset, dataset_names())
    _one_of("partition", config.partition, PARTITION_NAMES)
    _one_of("missing", config.missing, MISSING_POLICY_NAMES)
    _positive("alpha", config.alpha)
    _validate_dataset_options(config)


def _check_task_data(config: RunConfig) -> None:
    """A language model learns from prompts and responses, and only from them."""
    if config.task == CAUSAL_LM_TASK and config.dataset != "prompts":
        raise ConfigError(
            f"task {CAUSAL_LM_TASK!r} learns responses to prompts; use --dataset prompts "
            "--data-file FILE (columns prompt and response)"
        )


def check_model(config: RunConfig) -> None:
    """A registered task, a registered model, an ``hf:`` folder or a `module:function` builder.

    LoRA settings: a rank in 0..MAX_LORA_RANK on an ``hf:`` model, a positive alpha, and
    target names that are module names.
    """
    _one_of("task", config.task, task_names())
    _check_task_data(config)
    try:
        resolve_builder(config.model)
    except ModelError as error:
        raise ConfigError(str(error)) from None
    if not 0 <= config.lora_rank <= MAX_LORA_RANK:
        raise ConfigError(
            f"lora-rank must be between 0 (no adapters) and {MAX_LORA_RANK}, got {config.lora_rank}"
        )
    if config.lora_rank and model_folder(config.model) is None:
        raise ConfigError(
            f"lora-rank adds adapters to a pretrained model, and --model {config.model} is "
            "not one; give --model hf:FOLDER, or drop --lora-rank"
        )
    if config.lora_alpha is not None:
        _positive("lora-alpha", config.lora_alpha)
    try:
        LoraSettings.parse_targets(config.lora_targets)
    except ModelError as error:
        raise ConfigError(str(error)) from None


def check_federation(config: RunConfig) -> None:
    """Population, rounds, local training, client sampling and the deployment's node map."""
    for key in ("clients", "rounds", "local_epochs", "batch_size"):
        value = getattr(config, key)
        if value < 1:
            raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, got {value}")
    _positive("lr", config.lr)
    _one_of("client-sampling", config.client_sampling, CLIENT_SAMPLING_NAMES)
    if config.clients_per_round is not None and not 1 <= config.clients_per_round <= config.clients:
        raise ConfigError(
            f"clients-per-round must be between 1 and clients ({config.clients}), "
            f"got {config.clients_per_round}"
        )
    if config.node_clients is not None:
        parse_node_clients(config.node_clients, config.clients)


def check_dp(config: RunConfig) -> None:
    """Example-level DP-SGD: clip norm, δ, one noise setting, accountant and budget."""
    _clip_norm("max-grad-norm", config.max_grad_norm)
    if not 0 < config.delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {config.delta:g}")
    if config.noise_multiplier is not None and config.target_epsilon is not None:
        raise ConfigError("give either noise-multiplier or target-epsilon, not both")
    _noise_multiplier("noise-multiplier", config.noise_multiplier)
    if config.target_epsilon is not None:
        _positive("target-epsilon", config.target_epsilon)
    _one_of("accountant", config.accountant, accountant_names())
    if config.epsilon_budget is not None:
        _positive("epsilon-budget", config.epsilon_budget)


def check_client_dp(config: RunConfig) -> None:
    """DP-FedAvg: one noise setting, clipping, adaptive clipping, budget, sampling and δ."""
    for key in ("client_epsilon_budget", "client_target_epsilon"):
        value = getattr(config, key)
        if value is not None:
            _positive(key.replace("_", "-"), value)
    if config.client_sampling == "fixed" and config.client_level_dp:
        raise ConfigError(
            "client-sampling 'fixed' cannot be used with client-level DP: its accounting "
            "amplifies by Poisson sampling, and a fixed-size sample has neither that guarantee "
            "nor the same neighbouring relation; use --client-sampling poisson"
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


def check_secure_aggregation(config: RunConfig) -> None:
    """SecAgg+: threshold, neighbourhood, quantization, timeout and the clients it needs."""
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
    if config.secagg_clip_norm is not None:
        _clip_norm("secagg-clip-norm", config.secagg_clip_norm)
        if config.client_level_dp:
            raise ConfigError(
                "under client-level DP updates are clipped to --client-clip-norm; drop "
                "--secagg-clip-norm"
            )
    check_distributed_dp(config)
    if config.secure_aggregation and config.clients < 2:
        raise ConfigError("secure aggregation needs at least 2 clients; raise --clients")
    if config.secure_aggregation and config.expected_clients_per_round < 2:
        raise ConfigError(
            "secure aggregation needs at least 2 clients per round; raise --clients-per-round"
        )


def check_distributed_dp(config: RunConfig) -> None:
    """Distributed DP: client-level DP in secure aggregation, a bit width, the RDP accountant."""
    from privet.privacy.distributed_dp import MAX_BITS, MIN_BITS

    if not MIN_BITS <= config.secagg_bits <= MAX_BITS:
        raise ConfigError(
            f"secagg-bits must be between {MIN_BITS} and {MAX_BITS}, got {config.secagg_bits}"
        )
    if not config.distributed_dp:
        return
    if not config.client_level_dp:
        raise ConfigError(
            "distributed-dp adds client-level DP noise on the clients: pass "
            "--client-target-epsilon or --client-noise-multiplier"
        )
    if config.adaptive_clipping:
        raise ConfigError(
            "adaptive clipping's count is not noised by the clients yet, so it cannot run under "
            "distributed-dp; drop --adaptive-clipping"
        )
    if config.accountant != "rdp":
        raise ConfigError(
            f"distributed-dp is accounted by Renyi DP (the bound of Kairouz et al. 2021); "
            f"--accountant {config.accountant} has no such bound: use --accountant rdp"
        )


def check_run(config: RunConfig) -> None:
    """Seed, device and precision, output folder name and the server's timeout."""
    if config.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {config.seed}")
    _one_of("device", config.device, DEVICE_NAMES)
    _one_of("precision", config.precision, PRECISION_NAMES)
    if config.physical_batch_size is not None and config.physical_batch_size < 1:
        raise ConfigError(
            f"physical-batch-size must be at least 1, got {config.physical_batch_size}; leave "
            "it unset to process each batch at once"
        )
    _one_of("local-evaluation", config.local_evaluation, LOCAL_EVALUATION_CHOICES)
    if not config.output:
        raise ConfigError("output must name a folder")
    _positive("round-timeout", config.round_timeout)
    _in_range(
        "link-check",
        config.link_check,
        0,
        MAX_LINK_CHECKS,
        "the number of bare exchanges timed before round 1 (0: none)",
    )
    if config.min_trained is not None and not 1 <= config.min_trained <= config.clients:
        raise ConfigError(
            f"min-trained must be between 1 and clients ({config.clients}), got "
            f"{config.min_trained}; leave it unset for no minimum"
        )


SECTION_CHECKS: dict[str, Callable[[RunConfig], None]] = {
    "data": check_data,
    "model": check_model,
    "federation": check_federation,
    "dp": check_dp,
    "client_dp": check_client_dp,
    "secure_aggregation": check_secure_aggregation,
    "run": check_run,
}
"""Each section's checks, run in `SECTION_NAMES` order when a `RunConfig` is made."""


def check_section(config: RunConfig, name: str) -> None:
    """Run one section's checks on `config` (a ConfigError names the key and the fix)."""
    if name not in SECTION_CHECKS:
        raise ConfigError(f"unknown section {name!r}; choose one of: {', '.join(SECTION_NAMES)}")
    SECTION_CHECKS[name](config)


def validate(config: RunConfig) -> None:
    """Every section's checks, in `SECTION_NAMES` order."""
    for name in SECTION_NAMES:
        SECTION_CHECKS[name](config)


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
    needs = _needed_options(config, entry.kind, entry.needs)
    if needs == ("data-dir",) and not config.data_dir:
        raise ConfigError(
            f"dataset {config.dataset!r} is read from local files: pass --data-dir with the folder "
            "that holds them"
        )
    if not all(given[option] for option in needs):
        wanted = " and ".join(f"--{option} {_OPTION_VALUES[option]}" for option in needs)
        if entry.kind == "tabular":
            wanted = wanted.replace("--data-file FILE", "--data-file FILE.csv")
        raise ConfigError(f"dataset {config.dataset!r} needs {wanted}")
    if entry.kind == "text":
        _validate_text_options(config)
    if config.partition == "column" and not config.partition_column:
        raise ConfigError("partition 'column' needs --partition-column NAME (a column of the data)")
    if config.partition == "column" and entry.kind != "tabular":
        tabular = [name for name in dataset_names() if dataset_entry(name).kind == "tabular"]
        raise ConfigError(
            f"partition 'column' needs tabular data (--dataset {' or '.join(tabular)})"
        )


MAX_TEXT_LENGTH = 8192
"""The longest token sequence a text run may ask for (memory grows with its square)."""


def _validate_text_options(config: RunConfig) -> None:
    """Text data is tokenized by the model folder's tokenizer: an hf: model, a sane length."""
    if model_folder(config.model) is None:
        raise ConfigError(
            f"dataset {config.dataset!r} is tokenized by the model's own tokenizer, and --model "
            f"{config.model} has none; give --model hf:FOLDER (a local Hugging Face folder)"
        )
    if not 2 <= config.max_length <= MAX_TEXT_LENGTH:
        raise ConfigError(
            f"max-length must be between 2 and {MAX_TEXT_LENGTH} tokens, got {config.max_length}"
        )
    if not config.text_column.strip():
        raise ConfigError("text-column is empty; name the column of the texts")
    if config.schema_file:
        raise ConfigError("schema-file applies only to tabular data sets; drop it for text data")
    prompts, causal = config.dataset == "prompts", config.task == CAUSAL_LM_TASK
    if prompts and not causal:
        raise ConfigError(
            "dataset 'prompts' holds prompts and responses for a language model; add --task "
            f"{CAUSAL_LM_TASK}"
        )
    for column in ("prompt_column", "response_column"):
        if prompts and not getattr(config, column).strip():
            raise ConfigError(f"{column.replace('_', '-')} is empty; name the column")


def _needed_options(config: RunConfig, kind: str, needs: tuple[str, ...]) -> tuple[str, ...]:
    """The options a data set needs, less those that schema-file and test-file stand in for.

    A schema names the label column; a test file is the server's test set, so a server that
    only evaluates needs no training files (data-file, data-dir). A schema without a test file
    needs a file to split into training and test data, and schema-file applies to tables only.
    """
    if config.schema_file:
        if kind != "tabular":
            raise ConfigError(
                f"schema-file applies only to tabular data sets, and {config.dataset!r} is "
                f"{kind} data; drop schema-file"
            )
        needs = tuple(option for option in needs if option != "label-column")
        if not config.test_file and not (config.data_file or config.data_dir):
            raise ConfigError(
                "schema-file alone gives the server nothing to evaluate on; add "
                "test-file='/path/test.csv' (the server's test set, used whole) or a data-file "
                "to split"
            )
    if config.test_file and (config.schema_file or kind == "image"):
        needs = tuple(option for option in needs if option not in ("data-dir", "data-file"))
    return needs


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
