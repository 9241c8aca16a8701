"""`privet node`: flower-supernode in process isolation with a warm, authenticated executor.

A whole federation served by `privet node` is tests/test_real_federation.py (and the security
scenario); here: the command line, the lifetimes tied both ways, and that only the node's own
executor may take its tasks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time as time_module
from pathlib import Path

import httpx
import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest

from privet.cli import main
from privet.client import prompt_supernode
from privet.node import runtime_api_address
from tests.federation import BIN, descendants, free_port, running, stop, wait_for


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "give flower-supernode's flags"),
        (["--insecure"], "give --superlink HOST:PORT"),
        (["--superlink", "127.0.0.1:1", "--isolation", "subprocess"], "sets --isolation itself"),
        (
            ["--superlink", "127.0.0.1:1", "--superexec-auth-secret-file=x"],
            "sets --superexec-auth-secret-file itself",
        ),
        (["--superlink", "127.0.0.1:1", "--port", "99999"], "--port 99999 is not a port number"),
    ],
)
def test_a_node_command_line_that_cannot_work_is_one_line(argv, expected, capsys):
    assert main(["node", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err, err


def test_other_commands_still_refuse_flags_they_do_not_know(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["budget", "--no-such-flag"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_the_runtime_address_is_the_supernodes_host_and_port_reached_on_loopback():
    assert runtime_api_address(["--superlink", "x:1"]) == "127.0.0.1:9094"  # Flower's default
    assert runtime_api_address(["--host", "0.0.0.0", "--port", "9301"]) == "127.0.0.1:9301"
    assert runtime_api_address(["--host=10.0.0.5", "--port=9301"]) == "10.0.0.5:9301"
    assert runtime_api_address(["--host", "::1", "--port", "9301"]) == "[::1]:9301"


def start_node(tmp_path: Path, port: int) -> subprocess.Popen:
    """`privet node` against a SuperLink that is not there (the SuperNode keeps retrying)."""
    log = (tmp_path / "node.log").open("ab")
    return subprocess.Popen(
        [
            str(BIN / "privet"),
            "node",
            "--superlink",
            f"127.0.0.1:{free_port()}",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")},
    )


def supernode_of(node: subprocess.Popen, tmp_path: Path) -> tuple[int, list[str]]:
    """The PID and command line of the SuperNode that `privet node` started."""
    found: list[tuple[int, list[str]]] = []

    def started() -> bool:
        for pid in descendants(node.pid):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if "privet.client.prompt_supernode" in argv[:3]:
                found.append((pid, argv))
                return True
        return False

    wait_for(started, 60, lambda: (tmp_path / "node.log").read_text())
    return found[0]


def acquire_without_the_secret(port: int) -> int | None:
    """The HTTP status the SuperNode gives an ask for a task that is not signed (None: it does
    not listen yet)."""
    try:
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/runtime/acquire-task",
            content=AcquireTaskRequest(supported_task_types=["clientapp"]).SerializeToString(),
            headers={"content-type": "application/protobuf"},
            timeout=10,
        )
    except httpx.TransportError:
        return None
    return reply.status_code


def test_only_the_nodes_own_executor_takes_its_tasks_and_sigterm_stops_both(tmp_path):
    port = free_port()
    node = start_node(tmp_path, port)
    try:
        supernode, argv = supernode_of(node, tmp_path)
        assert argv[argv.index("--isolation") + 1] == "process"
        secret = Path(argv[argv.index("--superexec-auth-secret-file") + 1])
        wait_for(
            lambda: acquire_without_the_secret(port) is not None,
            60,
            lambda: (tmp_path / "node.log").read_text(),
        )
        assert acquire_without_the_secret(port) == 401
        # Once the executor is in, the secret the SuperNode read at start is gone from disk.
        wait_for(lambda: not secret.exists(), 30, lambda: f"{secret} stayed")
        os.kill(node.pid, signal.SIGTERM)
        assert node.wait(timeout=30) == 0
        wait_for(lambda: not running(supernode), 20, lambda: "the SuperNode outlived privet node")
        assert "privet node: stopped after 0 messages" in (tmp_path / "node.log").read_text()
        assert not secret.parent.exists()
    finally:
        stop(node)


def test_a_killed_node_takes_its_supernode_along_and_a_dead_supernode_ends_the_node(tmp_path):
    first = start_node(tmp_path, free_port())
    second = start_node(tmp_path, free_port())
    try:
        supernode, argv = supernode_of(first, tmp_path)
        folder = Path(argv[argv.index("--superexec-auth-secret-file") + 1]).parent
        assert folder.parent == tmp_path / "flwr-home"  # the node's own Flower home, not /tmp
        os.kill(first.pid, signal.SIGKILL)  # no handler runs: the kernel tells the SuperNode
        wait_for(lambda: not running(supernode), 20, lambda: "the SuperNode outlived privet node")
        assert folder.exists()  # a killed node cannot tidy up after itself ...
        supernode, _ = supernode_of(second, tmp_path)
        os.kill(supernode, signal.SIGKILL)
        assert second.wait(timeout=30) == 1  # the node cannot serve without its SuperNode
        third = start_node(tmp_path, free_port())
        try:
            supernode_of(third, tmp_path)
            assert not folder.exists()  # ... the next node on the machine does
        finally:
            stop(third)
    finally:
        stop(first)
        stop(second)


def test_flowers_supernode_loop_still_reads_the_pauses_the_prompt_clock_replaces():
    """The clock replaces `time` in flwr 1.42.0's SuperNode loop, whose pauses are 3 s after an
    empty ask and 0.5 s between looks for a reply: if Flower changes them, this says so."""
    import inspect

    import flwr
    from flwr.supernode import start_client_internal as loop

    source = inspect.getsource(loop)
    assert flwr.__version__ == prompt_supernode.FLOWER_VERSION
    assert loop.time is time_module
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source
    assert set(re.findall(r"\btime\.(\w+)\(", source)) == {"sleep"}  # nothing else of `time`


def test_the_prompt_clock_is_quick_while_active_and_flowers_own_when_idle(monkeypatch):
    slept: list[float] = []
    now = [1000.0]
    monkeypatch.setattr(time_module, "sleep", slept.append)
    monkeypatch.setattr(time_module, "monotonic", lambda: now[0])
    clock = prompt_supernode.PromptClock()
    clock.sleep(3)  # idle since start: Flower's pause
    clock.sleep(0.5)  # a message is handled: looks for the reply every 0.05 s
    clock.sleep(3)
    clock.sleep(3)
    clock.sleep(3)
    assert slept == [3, 0.05, 0.1, 0.1 * 1.5, 0.1 * 1.5 * 1.5]
    for _ in range(20):
        clock.sleep(3)
    assert max(slept[2:]) == slept[-1] == prompt_supernode.ACTIVE_PAUSE_S  # grows, to a cap
    now[0] += prompt_supernode.ACTIVE_S  # idle for a minute
    clock.sleep(0.5)
    now[0] += prompt_supernode.ACTIVE_S + 1
    clock.sleep(3)
    assert slept[-1] == 3
    clock.sleep(7)
    assert slept[-1] == 7  # any other pause as asked
    assert clock.monotonic() == now[0]  # the rest is the time module


def test_the_supernodes_process_pulls_a_messages_objects_promptly():
    """The SuperNode lists a message before it has pulled its objects; its own pulls must not
    wait Flower's 1 s back-off (measured: a message's process waited 0.8-1.4 s for them)."""
    code = (
        "from flwr.supercore.inflatable import inflatable_utils as u\n"
        "from flwr.supernode import start_client_internal as loop\n"
        "from privet.client import prompt_supernode\n"
        "from privet.task.flower_pulls import PROMPT_BACKOFF_S\n"
        "assert u.pull_objects.__kwdefaults__['initial_backoff'] == 1.0\n"
        "prompt_supernode.make_prompt()\n"
        "assert loop.pull_objects is u.pull_objects\n"
        "assert u.pull_objects.__kwdefaults__['initial_backoff'] == PROMPT_BACKOFF_S\n"
        "assert isinstance(loop.time, prompt_supernode.PromptClock)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_supernode_that_stops_while_starting_is_started_again_until_the_node_is_stopped(
    tmp_path,
):
    """A crashed node restarted within a minute is refused by the SuperLink (it still sees it
    online) and Flower's SuperNode exits with status 1: `privet node` starts it again."""
    log = tmp_path / "node.log"
    node = subprocess.Popen(
        [
            str(BIN / "privet"),
            "node",
            "--superlink",
            f"127.0.0.1:{free_port()}",
            "--insecure",
            "--auth-supernode-private-key",
            str(tmp_path / "missing.key"),  # the SuperNode exits with status 1 at start
            "--port",
            str(free_port()),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: log.read_text().count("starting it again in 5 s") >= 2,
            90,
            lambda: log.read_text(),
        )
        os.kill(node.pid, signal.SIGTERM)
        assert node.wait(timeout=30) == 0
    finally:
        stop(node)
