"""A warm executor for a SuperNode's ClientApp messages.

Each message runs in a process forked from one that has already imported torch, Opacus, Flower
and Privet's client.

Why: in Flower 1.42 a SuperNode hands every message (a training round, each secure-aggregation
stage, an evaluation) to a SuperExec, which starts a fresh `flwr-clientapp` process; that process
imports torch, Opacus and Flower again before it reads the message (seconds per message on a small
machine, several messages per node per round). Flower lets a SuperNode started with
`--isolation process` leave that job to a SuperExec of the operator's choosing. This module is one:
it asks the SuperNode's Runtime API for tasks, as Flower's `flower-superexec` does, and runs each
task with Flower's own `run_clientapp` in a child forked from this warm process. The child is a
fresh process for every message, exactly as with Flower's executor: no state, data or model is kept
between messages; only the already-imported code is shared (copy-on-write).

The parent never runs torch code and never touches a GPU, so forking it is safe; a child initialises
CUDA itself when its message asks for a GPU.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.plugin.base_exec_plugin import BaseExecPlugin

WARM_MODULES: tuple[str, ...] = (
    "torch",
    "opacus",
    "flwr.supernode.runtime.run_clientapp",
    "privet.client.app",
    "privet.client.training_round",
    "privet.client.trainer",
    "privet.client.node_data",
    "sklearn.model_selection",  # data splits (imported lazily by privet.task.splits)
    "sklearn.datasets",
    "torch._dynamo",  # torch.optim imports it on the first optimizer (2 s on a small machine)
)
"""What the parent imports once, so that no message pays for it again."""

FASTEST_POLL_S = 0.05
"""How soon the executor asks for the next task after one arrived (a round's stages follow each
other within a second)."""
SLOWEST_POLL_S = 0.5
"""The longest pause between two asks while the node is idle (Flower's own SuperExec waits 1 s)."""
ASK_WITHIN_S = 2.0
"""How long one ask for a task may retry a Runtime API that does not answer (the SuperNode is
starting or has stopped) before the loop looks at `keep_going` again."""
STOP_CHILDREN_WITHIN_S = 5.0
PROFILE_ENV = "PRIVET_NODE_PROFILE"
"""A folder: when set, each message's process writes its cProfile statistics there (diagnosis)."""
ACQUIRE = frozenset({"/flwr.proto.Runtime/AcquireTask"})
"""The Runtime API call that hands out a task: the one the SuperExec secret protects."""
"""How long a message's process gets to stop after SIGTERM when the node stops."""


def warm_up(modules: tuple[str, ...] = WARM_MODULES) -> None:
    """Import the modules every ClientApp message needs (no torch code runs, no device opens).

    Also makes Flower's object pulls prompt (`task.flower_pulls`) for every message's process.
    """
    from privet.task.flower_pulls import FLOWER_VERSION, prompt_object_pulls

    for name in modules:
        importlib.import_module(name)
    if not prompt_object_pulls():
        print(
            f"privet node: this flwr is not {FLOWER_VERSION}; its object pulls keep Flower's "
            "back-off (1 s and up)",
            file=sys.stderr,
            flush=True,
        )


def run_task_in_this_process(spec: ExecutionSpec) -> int:
    """Run one ClientApp task with Flower's own runner; the exit status it ends with."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    profile_dir = os.environ.get(PROFILE_ENV)
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            ),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=False,
        )
    except SystemExit as done:  # Flower ends every task with sys.exit
        return done.code if isinstance(done.code, int) else 1
    finally:
        if profiler is not None and profile_dir:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"task-{spec.task_id}.prof"))
    return 0


@dataclass
class ForkExecutor:
    """Flower's Executor protocol, with each task run in a child forked from this process."""

    children: dict[int, int] = field(default_factory=dict)
    """PID of each running child → its task id."""
    finished: int = 0
    failed: int = 0
    connected: bool = False
    """Whether the SuperNode's Runtime API has answered an ask for a task."""

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        """Every supported task can start now (the SuperNode hands out one message at a time)."""
        del insecure, root_certificates_path
        return supported_task_types, set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        """Nothing to wait for: a fork has no capacity gate."""
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork; the child runs the task and exits with its status, never returning here."""
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"this node runs ClientApp tasks only, not {spec.task_type}")
        try:
            pid = os.fork()
        except OSError as error:
            return LaunchResult.failed(f"could not start a process for the message: {error}")
        if pid == 0:  # the child
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                code = run_task_in_this_process(spec)
            finally:
                os._exit(code)
        self.children[pid] = spec.task_id
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Collect the children that ended (no zombie is left behind)."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
                self.finished += 1
                if os.waitstatus_to_exitcode(status) != 0:
                    self.failed += 1
            del self.children[pid]

    def close(self) -> None:
        """Stop the children still running: SIGTERM, then SIGKILL after STOP_CHILDREN_WITHIN_S."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_CHILDREN_WITHIN_S
        while self.children and time.monotonic() < deadline:
            self.reconcile()
            time.sleep(0.05)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()


class ClientAppPlugin(BaseExecPlugin):
    """Flower's plain SuperExec plugin, limited to ClientApp tasks (all a SuperNode hands out)."""

    supported_task_types = frozenset({TaskType.CLIENT_APP})


def serve_tasks(
    runtime_api_address: str,
    keep_going: Callable[[], bool],
    executor: ForkExecutor | None = None,
    *,
    secret: bytes | None = None,
) -> ForkExecutor:
    """Ask the SuperNode's Runtime API for tasks and run each in a fork while `keep_going()` holds.

    Returns the executor, with its counts.

    The pause between two asks starts at FASTEST_POLL_S after a task and grows by half each empty
    ask up to SLOWEST_POLL_S, so a round's stages start promptly and an idle node costs little.
    `secret`: the SuperNode's --superexec-auth-secret-file content, which signs each ask.
    """
    executor = executor or ForkExecutor()
    retry = make_simple_http_retry_invoker()
    retry.max_time = ASK_WITHIN_S  # Flower's default retries forever; every wait here has a bound
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,  # the Runtime API is the SuperNode's loopback port, never a network one
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            *(
                [SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=ACQUIRE)]
                if secret
                else []
            ),
        ],
        retry_invoker=retry,
    )
    plugin = ClientAppPlugin(
        runtime_api_address=runtime_api_address,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        executor=executor,
    )
    pause = FASTEST_POLL_S
    try:
        while keep_going():
            executor.reconcile()
            try:
                reply = client.AcquireTask(
                    AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
                )
            except (httpx.TransportError, httpx.HTTPStatusError):
                reply = None  # not listening yet, or gone: `keep_going` decides
            executor.connected = executor.connected or reply is not None
            if reply is not None and reply.HasField("task") and reply.token:
                plugin.launch_task(token=reply.token, task=reply.task)
                pause = FASTEST_POLL_S
            else:
                pause = min(SLOWEST_POLL_S, pause * 1.5)
            time.sleep(pause)
    finally:
        client.close()
        executor.close()
    return executor
