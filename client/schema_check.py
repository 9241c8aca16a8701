"""A node refuses a run whose tabular schema or frozen backbone is not the one it holds.

Both are checked at discovery, before any round: data encoded with another schema, or adapters
trained on another backbone, would spoil the aggregate without any error.
"""

from __future__ import annotations

from collections.abc import Mapping

from privet.task.config import ConfigError

__all__ = ["check_same_backbone", "check_same_schema"]


def check_same_schema(
    run_digest: str | None, node_digest: str | None, node_config: Mapping[str, object]
) -> None:
    """Refuse (ConfigError) when the node's schema is not the run's.

    ``run_digest`` is what the server's discovery query says (None: the run has no tabular
    schema, e.g. image data); ``node_digest`` is the schema the node encoded its own file with
    (None: no tabular file of its own, e.g. a simulation shard, which uses the run's encoding).
    A node with a tabular file in a run without a schema, or with another schema, would train on
    features that mean something else: it refuses, and the server lists why.
    """
    if node_digest is None:
        return
    where = node_config.get("schema-file", "its schema-file")
    if run_digest is None:
        raise ConfigError(
            f"this node encodes its CSV with the schema {where} but the run has no tabular "
            "schema; the coordinator must start the run with run-config key schema-file"
        )
    if run_digest != node_digest:
        raise ConfigError(
            f"this node's schema {where} (sha256 {node_digest[:12]}) is not the run's "
            f"(sha256 {run_digest[:12]}); get the coordinator's current schema file and restart "
            "the node with it"
        )


def check_same_backbone(run_digest: str | None, node_digest: str | None, model: str) -> None:
    """Refuse (ConfigError) when the node's frozen backbone is not the server's.

    ``run_digest`` is what the server's discovery query says (None: every tensor travels, so
    there is nothing to compare); ``node_digest`` is `task.models.frozen_digest` of the model
    this node builds from ``model`` (its ``hf:`` folder). The frozen tensors never travel, so a
    node with other weights would train adapters for another model and spoil the aggregate.
    """
    if run_digest is None or node_digest == run_digest:
        return
    mine = "none (every tensor travels)" if node_digest is None else f"sha256 {node_digest[:12]}"
    raise ConfigError(
        f"this node's frozen backbone from --model {model} ({mine}) is not the run's "
        f"(sha256 {run_digest[:12]}); give this node the coordinator's model folder"
    )
