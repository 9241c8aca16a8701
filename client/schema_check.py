"""A node and its run must encode tabular data with the same schema, or the node refuses."""

from __future__ import annotations

from collections.abc import Mapping

from privet.task.config import ConfigError

__all__ = ["check_same_schema"]


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
