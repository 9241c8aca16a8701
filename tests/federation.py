"""A real Flower deployment on 127.0.0.1 for tests: SuperLink, SuperNodes and `flwr`, as processes.

Every process is started in its own session and stopped by its PID (and its detached children by
theirs); nothing is ever killed by name. TLS, node authentication and app signing use files made
by `privet certs`; the layout is the README's secure recipe (see `Federation`).
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
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from privet.certs import make_ca, make_node_keys, make_publisher_key, make_server_cert, sign_app

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SENTINEL = 0.123456789  # a value only node 0's local file holds


def write_csv(path: Path, features: np.ndarray, labels: np.ndarray) -> None:
    header = ",".join([*(f"p{i}" for i in range(features.shape[1])), "label"])
    rows = [
        ",".join([*(f"{v:g}" for v in x), str(int(y))])
        for x, y in zip(features, labels, strict=True)
    ]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


@dataclass(frozen=True)
class FederationData:
    """The coordinator's test file and schema, and each node's own CSV (digits, disjoint rows)."""

    test: Path
    schema: Path
    files: list[Path]

    def run_keys(self) -> str:
        """The run-config keys of the data: the schema and the whole file the server scores on."""
        return f"dataset='csv' schema-file='{self.schema}' test-file='{self.test}'"

    def node_keys(self, k: int) -> str:
        """Node k's node-config keys of its data: its own file and its copy of the schema."""
        return f"data-file='{self.files[k]}' schema-file='{self.schema}'"


def node_files(root: Path, nodes: int = 3) -> FederationData:
    """The coordinator's test CSV and schema, and `nodes` nodes' own, disjoint CSVs.

    The schema declares every pixel a number in 0..16 and the labels 0..9, as the README's
    `privet schema` step does, so it releases nothing about any file.
    """
    from sklearn.datasets import load_digits

    from privet.schema_command import fitted_schema
    from privet.task.tabular import read_csv_table, save_schema_file

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    test = root / "test.csv"
    write_csv(test, x[:400], y[:400])
    files = []
    for k, rows in enumerate(np.array_split(np.arange(400, len(y)), nodes)):
        features = x[rows].copy()
        if k == 0:
            features[0, 5] = SENTINEL
        files.append(root / f"node-{k}.csv")
        write_csv(files[-1], features, y[rows])
    table = read_csv_table(test)
    pixels = {name: (0.0, 16.0) for name in table.header if name != "label"}
    classes = tuple(str(c) for c in range(10))
    schema = root / "schema.json"
    save_schema_file(fitted_schema(table, "label", ranges=pixels, classes=classes), schema)
    return FederationData(test, schema, files)


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
        while time.monotonic() < deadline and running(pid):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether a PID is a live process (a zombie waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_all(processes: list[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    """Stop several processes as `stop` does, all at once, so that their shutdowns overlap."""
    below = [pid for process in processes for pid in descendants(process.pid)]
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    deadline = time.monotonic() + 5  # detached children exit once they see their parent gone
    for pid in below:
        while time.monotonic() < deadline and running(pid):
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


@dataclass(frozen=True)
class Rogue:
    """Someone holding only the public CA certificate and the Fleet address (what partners get)."""

    home: Path
    env: dict[str, str]


class Federation:
    """The README's secure deployment on 127.0.0.1, as processes.

    The SuperLink (Fleet, Control and Runtime APIs on one port in Flower 1.42) listens on the
    coordinator's address only; `python -m privet.gateway` exposes the Fleet API alone on its own
    port (what SuperNodes use) and serves the coordinator-signed app to the SuperLink (found
    through FLWR_SUPERGRID_API_URL). Nodes are registered by the coordinator through the Control
    API and run only apps signed by the coordinator (`--trusted-entities`). The `flwr` CLI here is
    the coordinator's.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        make_ca(root / "ca")
        self.tls = make_server_cert(root / "ca", root / "tls", ["127.0.0.1", "localhost"])
        self.publisher = make_publisher_key(root / "publisher")
        self.apps = root / "signed-apps"
        self.port = free_port()  # the SuperLink: the coordinator's host only
        self.fleet_port = free_port()  # the gateway: the Fleet API, what partners reach
        self.registry_port = free_port()  # the signed-app registry, read by the SuperLink
        self.database = root / "superlink.db"
        self.home = root / "flwr-home"
        self.home.mkdir()
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "privet"\n\n[superlink.privet]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.tls.ca_cert}"\n'
        )
        self.env = dict(
            os.environ,
            FLWR_HOME=str(self.home),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            RAY_TMPDIR=str(root / "ray"),
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        )
        self.processes: dict[str, subprocess.Popen] = {}
        self.superlink: subprocess.Popen | None = None
        self.node_ids: dict[str, int] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start a named process with its output in logs/<name>.log (appended)."""
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                env=env or self.env,
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

    def publish(self, app: Path) -> str:
        """Build the app's FAB (`flwr build`), sign it as the coordinator; return its app spec."""
        build = self.root / "build"
        build.mkdir(exist_ok=True)
        done = subprocess.run(
            [str(BIN / "flwr"), "build", "--app", str(app)],
            env=self.env,
            cwd=build,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        (fab,) = build.glob("*.fab")
        signed = sign_app(fab, self.root / "publisher", self.apps)
        return f"{signed.app_id}=={signed.version}"

    def start_gateway(self) -> None:
        """Start the Fleet gateway and the signed-app registry (after the SuperLink); wait until
        both answer."""
        gateway = self.start(
            "gateway",
            [
                sys.executable,
                "-m",
                "privet.gateway",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--tls",
                str(self.tls.cert.parent),
                "--fleet",
                f"127.0.0.1:{self.fleet_port}",
                "--registry",
                f"127.0.0.1:{self.registry_port}",
                "--apps",
                str(self.apps),
            ],
            env=dict(self.env, PYTHONPATH=str(REPO_ROOT)),
        )
        trust = ssl.create_default_context(cafile=self.tls.ca_cert)

        def answers() -> bool:  # the registry answers, and the SuperLink's health through it
            assert gateway.poll() is None, self.log("gateway")
            try:
                httpx.post(f"http://127.0.0.1:{self.registry_port}/hub/fetch-fab", timeout=2)
                url = f"https://127.0.0.1:{self.fleet_port}/health"
                return httpx.get(url, verify=trust, timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_for(answers, 30, lambda: "the gateway did not start:\n" + self.log("gateway"))

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
            env=dict(self.env, FLWR_SUPERGRID_API_URL=f"http://127.0.0.1:{self.registry_port}"),
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

    def flwr(self, *argv: str, timeout: float = 60, env: dict[str, str] | None = None) -> dict:
        """Run a `flwr` command with JSON output and return it (the coordinator's by default)."""
        done = self.flwr_raw(*argv, "--format", "json", timeout=timeout, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout[done.stdout.index("{") :])

    def flwr_raw(
        self, *argv: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a `flwr` command; its exit status and output, whatever they are."""
        return subprocess.run(
            [str(BIN / "flwr"), *argv],
            env=env or self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def register(self, *names: str) -> dict[str, Path]:
        """Each node makes its key pair; the coordinator registers the public keys (at once).

        Returns each node's private key file; the node ids are in `node_ids`.
        """
        keys = {name: make_node_keys(self.root / name) for name in names}
        pending = {
            name: self.spawn_flwr("supernode", "register", str(key.public_key), "--format", "json")
            for name, key in keys.items()
        }
        for name, process in pending.items():
            code, output = self.collect(process)
            assert code == 0, output
            self.node_ids[name] = int(json.loads(output[output.index("{") :])["node-id"])
        return {name: key.private_key for name, key in keys.items()}

    def spawn_flwr(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a `flwr` command without waiting; `collect` its result."""
        return subprocess.Popen(
            [str(BIN / "flwr"), *argv],
            env=env or self.env,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    @staticmethod
    def collect(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
        """A spawned command's exit status and output (stopped if it runs past `timeout`)."""
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(process)
            output, _ = process.communicate()
            raise AssertionError(f"{process.args} ran past {timeout} s:\n{output}") from None
        return process.returncode, output

    def start_node(
        self, name: str, private_key: Path, node_config: str, *, warm: bool = True
    ) -> subprocess.Popen:
        """Start a SuperNode that reaches the SuperLink through the gateway and trusts only apps
        signed by the coordinator: `privet node` (README), or with `warm=False` Flower's plain
        `flower-supernode` (a fresh ClientApp process per message)."""
        program = [str(BIN / "privet"), "node"] if warm else [str(BIN / "flower-supernode")]
        return self.start(
            name,
            [
                *program,
                "--superlink",
                f"127.0.0.1:{self.fleet_port}",
                "--root-certificates",
                str(self.tls.ca_cert),
                "--auth-supernode-private-key",
                str(private_key),
                "--trusted-entities",
                str(self.publisher.trusted_entities),
                "--node-config",
                node_config,
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
            ],
        )

    def add_node(self, name: str, node_config: str) -> subprocess.Popen:
        """Make the node's key pair, register its public key, start its SuperNode."""
        return self.start_node(name, self.register(name)[name], node_config)

    def node_clients(self, clients: dict[str, int]) -> str:
        """The run config's node-clients for {node name: client id}."""
        return ",".join(f"{self.node_ids[name]}={client}" for name, client in clients.items())

    def wait_connected(self, *names: str, starts: int = 1, timeout: float = 60) -> None:
        """Wait until each named node's SuperNode has been activated by the SuperLink `starts`
        times (its log's "SuperNode ID:" lines; cheaper than asking `flwr` over and over)."""

        def connected() -> bool:
            return all(self.log(name).count("SuperNode ID:") >= starts for name in names)

        wait_for(connected, timeout, lambda: "\n".join(self.log(name) for name in names))

    def online_nodes(self) -> int:
        """How many registered nodes the SuperLink sees online."""
        nodes = self.flwr("supernode", "list")["nodes"]
        return sum(1 for node in nodes if node["status"] == "online")

    def rogue(self, name: str = "rogue-home") -> Rogue:
        """A `flwr` home that knows the Fleet address and trusts the CA, and nothing else."""
        home = self.root / name
        home.mkdir()
        shutil.copy(self.tls.ca_cert, home / "ca.crt")
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "target"\n\n[superlink.target]\n'
            f'address = "127.0.0.1:{self.fleet_port}"\nroot-certificates = "{home / "ca.crt"}"\n'
        )
        return Rogue(home=home, env=dict(self.env, FLWR_HOME=str(home)))

    def close(self) -> None:
        """Stop every process this federation started: nodes and runs first (together, so their
        shutdowns overlap), then the SuperLink and the gateway they talk to."""
        servers = {"superlink", "gateway"}
        stop_all([p for name, p in self.processes.items() if name not in servers])
        stop_all([p for name, p in self.processes.items() if name in servers])
