"""A real Flower deployment on 127.0.0.1 for tests: SuperLink, SuperNodes and `flwr`, as processes.

Every process is started in its own session and stopped by its PID (and its detached children by
theirs); nothing is ever killed by name. TLS and node authentication use files made by
`privet certs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from privet.certs import make_ca, make_node_keys, make_server_cert

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """All PIDs below `pid` (Linux /proc): Flower detaches its SuperExec and app processes."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process started with start_new_session=True, its group and its descendants."""
    below = descendants(process.pid)
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    deadline = time.monotonic() + 5  # detached children exit once they see their parent gone
    for pid in below:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def copy_app(destination: Path) -> Path:
    """A copy of the app folder, because `flwr run` may rewrite pyproject.toml."""
    app = destination / "app"
    app.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", app)
    for package in ("client", "server", "task", "privacy"):
        shutil.copytree(
            REPO_ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return app


def wait_for(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Poll `condition` until it holds; fail with `what()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.2)


class Federation:
    """A SuperLink with TLS and node authentication, its nodes, and the `flwr` CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        make_ca(root / "ca")
        self.tls = make_server_cert(root / "ca", root / "tls", ["127.0.0.1", "localhost"])
        self.port = free_port()
        self.database = root / "superlink.db"
        home = root / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "privet"\n\n[superlink.privet]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.tls.ca_cert}"\n'
        )
        self.env = dict(
            os.environ,
            FLWR_HOME=str(home),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        )
        self.processes: dict[str, subprocess.Popen] = {}
        self.superlink: subprocess.Popen | None = None

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Start a named process with its output in logs/<name>.log (appended)."""
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        """What a process has written so far."""
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def start_superlink(self) -> None:
        """Start (or restart) the SuperLink and wait until its HTTPS health check answers."""
        self.superlink = self.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(self.tls.ca_cert),
                "--ssl-certfile",
                str(self.tls.cert),
                "--ssl-keyfile",
                str(self.tls.key),
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                str(self.database),
            ],
        )
        trust = ssl.create_default_context(cafile=self.tls.ca_cert)

        def healthy() -> bool:
            assert self.superlink is not None and self.superlink.poll() is None, self.log(
                "superlink"
            )
            try:
                url = f"https://127.0.0.1:{self.port}/health"
                return httpx.get(url, verify=trust, timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, lambda: "SuperLink did not start:\n" + self.log("superlink"))

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and everything it started (the server side crashes)."""
        assert self.superlink is not None
        stop(self.superlink, signal.SIGKILL)

    def flwr(self, *argv: str, timeout: float = 60) -> dict:
        """Run a `flwr` command with JSON output and return it."""
        done = subprocess.run(
            [str(BIN / "flwr"), *argv, "--format", "json"],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout[done.stdout.index("{") :])

    def add_node(self, name: str, node_config: str) -> subprocess.Popen:
        """Make the node's key pair, register its public key, start its SuperNode."""
        keys = make_node_keys(self.root / name)
        self.flwr("supernode", "register", str(keys.public_key))
        return self.start(
            name,
            [
                str(BIN / "flower-supernode"),
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--root-certificates",
                str(self.tls.ca_cert),
                "--auth-supernode-private-key",
                str(keys.private_key),
                "--node-config",
                node_config,
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
            ],
        )

    def online_nodes(self) -> int:
        """How many registered nodes the SuperLink sees online."""
        nodes = self.flwr("supernode", "list")["nodes"]
        return sum(1 for node in nodes if node["status"] == "online")

    def close(self) -> None:
        """Stop every process this federation started, newest first."""
        for process in reversed(list(self.processes.values())):
            stop(process)
