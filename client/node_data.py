"""The data a node trains and evaluates on.

In a simulation every virtual node derives its own shard from the shared data set and its
`partition-id`; the split is deterministic for a seed, so each node finds the same shard in any
process. A slice of each shard is held out for the node's local evaluation and never trained on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from task.config import ConfigError, RunConfig
from task.datasets import ArrayDataset, TrainTest, load_dataset
from task.partition import partition_indices

LOCAL_VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class NodeData:
    """A node's training examples and its held-out local validation examples."""

    client_id: int
    train: ArrayDataset
    validation: ArrayDataset


def load_federated_data(config: RunConfig) -> TrainTest:
    """The run's data set, loaded once per process (many virtual nodes can share one process)."""
    return _load_cached(
        config.dataset,
        config.data_dir,
        config.data_file,
        config.label_column,
        config.partition_column,
        config.seed,
    )


@functools.lru_cache(maxsize=4)
def _load_cached(
    dataset: str,
    data_dir: str | None,
    data_file: str | None,
    label_column: str | None,
    partition_column: str | None,
    seed: int,
) -> TrainTest:
    return load_dataset(
        dataset,
        data_dir=data_dir,
        data_file=data_file,
        label_column=label_column,
        partition_column=partition_column,
        seed=seed,
    )


def client_shards(config: RunConfig) -> list[np.ndarray]:
    """Training-set indices of every client, in client order."""
    data = load_federated_data(config)
    return partition_indices(
        data.train.labels,
        config.clients,
        config.partition,
        alpha=config.alpha,
        groups=data.groups,
        seed=config.seed,
    )


def split_shard(shard: np.ndarray, client_id: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's shard into (train, validation) indices; validation may be empty."""
    rng = np.random.default_rng([seed, client_id, 7])
    shuffled = rng.permutation(shard)
    held_out = int(len(shard) * LOCAL_VALIDATION_FRACTION)
    return np.sort(shuffled[held_out:]), np.sort(shuffled[:held_out])


def load_node_data(config: RunConfig, node_config: Mapping[str, object]) -> NodeData:
    """The shard of this node, found from Flower's `partition-id` / `num-partitions` node config."""
    try:
        client_id = int(node_config["partition-id"])  # type: ignore[call-overload]
        num_partitions = int(node_config["num-partitions"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            "this node has no 'partition-id' and 'num-partitions' in its node config; "
            'start it with --node-config "partition-id=K num-partitions=N"'
        ) from None
    if num_partitions != config.clients:
        raise ConfigError(
            f"the federation has {num_partitions} nodes but the run config says clients="
            f"{config.clients}; make them equal"
        )
    if not 0 <= client_id < num_partitions:
        raise ConfigError(f"partition-id {client_id} is outside 0..{num_partitions - 1}")
    data = load_federated_data(config)
    shard = client_shards(config)[client_id]
    train_idx, validation_idx = split_shard(shard, client_id, config.seed)
    return NodeData(
        client_id=client_id,
        train=data.train.subset(train_idx),
        validation=data.train.subset(validation_idx),
    )
