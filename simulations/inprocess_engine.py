"""Running a simulation in this process: Privet's Flower apps, without Flower's runtime.

Flower's simulation runtime (Ray) gives every virtual client a place in an actor process and
passes messages through its link state, polled every 0.1 s. That is the right model of a
multi-machine federation, and Privet keeps it (`simulations.flower_engine`). For research on one
machine — a thousand clients, a sweep of dozens of runs — it costs seconds of start-up per run,
about 0.8 GB per actor and a polling delay per exchange.

`InProcessGrid` is a Flower `Grid` whose `send_and_receive` hands each message to the very same
`ClientApp` object, in this process, with that node's own `Context` (node config and per-node
state that persists across rounds, as on a SuperNode). The ServerApp's logic
(`server.app.run_federated_training` and the strategy) drives it exactly as it drives a SuperLink,
so the two engines run the same client and server code and give the same results for the same
seed. What is different: clients run one after another, and a client that hangs hangs the run
(there is no timeout to cut it off, because there is no second process to wait for).
"""

from __future__ import annotations

import copy
import logging
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.app.message import make_message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common.constant import (
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    SUPERLINK_NODE_ID,
    ErrorCode,
)
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from privet.client.app import UpdateOverride, make_client_app
from privet.client.trainer import StepObservers
from privet.server.app import run_federated_training
from privet.server.results import RoundCallback, RunResults
from privet.task.config import RunConfig

logger = logging.getLogger(__name__)

ENGINE_NAME = "in-process"
RUN_ID = 1
# Node ids are arbitrary non-zero integers (0 is the SuperLink's); these are easy to read in logs.
FIRST_NODE_ID = 1001


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process, each with its own Context."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: Mapping[str, object] | None = None,
        node_configs: list[dict[str, object]] | None = None,
    ) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(RUN_ID)
        configs = node_configs or [
            {PARTITION_ID_KEY: index, NUM_PARTITIONS_KEY: num_nodes} for index in range(num_nodes)
        ]
        if len(configs) != num_nodes:
            raise ValueError(f"{len(configs)} node configs for {num_nodes} nodes")
        self._contexts = {
            FIRST_NODE_ID + index: Context(
                run_id=RUN_ID,
                node_id=FIRST_NODE_ID + index,
                node_config=dict(config),  # type: ignore[arg-type]
                state=RecordDict(),
                run_config=dict(run_config or {}),  # type: ignore[arg-type]
            )
            for index, config in enumerate(configs)
        }
        self._replies: dict[str, Message] = {}
        self._errors_seen: set[str] = set()
        self.messages_delivered = 0

    def set_run(self, run: Run) -> None:
        """Adopt a run's details (this grid serves one run)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message to one node (Flower deprecates this in favour of `Message(...)`)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Every virtual node: in this process none is ever offline."""
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message at once; its reply waits for `pull_messages`."""
        ids = []
        for message in messages:
            reply = self._deliver(message)
            ids.append(message.metadata.message_id)
            self._replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to the given messages (each is handed out once)."""
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver every message and return every reply (an error reply for a failed client).

        ``timeout`` cannot apply: clients run in this thread, one after another.
        """
        return [self._deliver(message) for message in messages]

    def _deliver(self, message: Message) -> Message:
        """Run the ClientApp on one message, as a SuperNode would, and return its reply."""
        metadata = message.metadata
        node = metadata.dst_node_id
        if node not in self._contexts:
            raise ValueError(f"message to unknown node {node}")
        # What a SuperLink does on push: the message gets its id.
        metadata.__dict__["_message_id"] = uuid4().hex
        # The node gets its own copy, as it would over the wire: neither side can change what
        # the other holds (Flower's records keep arrays as immutable bytes, so this is cheap).
        received = make_message(copy.copy(metadata), copy.deepcopy(message.content))
        context = self._contexts[node]
        try:
            reply = self._client_app(received, context)
        except Exception as error:  # noqa: BLE001 (a failing client is an error reply, as in Flower)
            # The traceback of each distinct error once; a repeat (every client, every round,
            # failing the same way) is one line.
            key = f"{type(error).__name__}: {error}"
            logger.warning(
                "client on node %d raised %s%s",
                node,
                key,
                " (as before)"
                if key in self._errors_seen
                else f"\n{traceback.format_exc(limit=3)}",
            )
            self._errors_seen.add(key)
            reply = Message(
                Error(
                    code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                    reason=f"{type(error)}:<'{error}'>",
                ),
                reply_to=message,
            )
        else:
            reply = (
                Message(reply.error, reply_to=message)
                if reply.has_error()
                else Message(copy.deepcopy(reply.content), reply_to=message)
            )
        self.messages_delivered += 1
        return reply


def run_in_process(
    config: RunConfig,
    on_round: RoundCallback | None = None,
    *,
    client_mods: list[Mod] | None = None,
    node_config: Mapping[str, object] | None = None,
    step_observers: StepObservers | None = None,
    update_override: UpdateOverride | None = None,
) -> RunResults:
    """Run `config` with every virtual client in this process and return the run's results.

    ``client_mods`` wrap every client handler, as in `run_flower_simulation`. ``node_config``
    entries are added to every virtual node's config: a shared ``ledger-dir`` makes the nodes
    keep their ledgers there across runs, as deployment nodes do (each run then reports its own
    ε and each node's lifetime ε). The server sends each node the run's token with every TRAIN
    message, as in any engine. ``step_observers`` (`privet audit` only) watch the DP-SGD steps
    of the clients they name, and ``update_override`` replaces canary clients' updates.
    """
    configs = [
        {PARTITION_ID_KEY: index, NUM_PARTITIONS_KEY: config.clients, **(node_config or {})}
        for index in range(config.clients)
    ]
    grid = InProcessGrid(
        make_client_app(
            config,
            mods=client_mods,
            step_observers=step_observers,
            update_override=update_override,
        ),
        config.clients,
        node_configs=configs,
    )
    with server_task_identity(RUN_ID):
        return run_federated_training(grid, config, ENGINE_NAME, on_round)


@contextmanager
def server_task_identity(run_id: int) -> Iterator[None]:
    """Say that this process is the ServerApp of `run_id`, as Flower's runtimes do.

    Flower stamps every new message with the sender's task identity (a class-level setting of the
    process); outside its runtimes nobody sets it, so it is set here and restored afterwards.
    """
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)  # noqa: SLF001
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved  # noqa: SLF001
