"""A Flower client mod that words a node's errors for its deployment (`task.wording`).

A node's error text travels to the server's log and results.json; there it must name what the
node's operator or the coordinator can change (node-config and run-config keys), not the
`privet simulate` flags the checks are written with.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from privet.task.config import RunConfig
from privet.task.wording import for_deployment, reworded

__all__ = ["deployment_wording"]


def deployment_wording(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler; re-raise its error, same type, with the deployment's words."""
    try:
        return call_next(msg, context)
    except Exception as error:
        own_data = bool(context.node_config.get("data-file"))
        text = for_deployment(str(error), RunConfig.key_names(), own_data=own_data)
        raise reworded(error, text) from error
