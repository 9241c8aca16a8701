"""`privet node`: a partner's SuperNode with warm ClientApp processes.

It starts Flower's own `flower-supernode` with the partner's arguments unchanged, in Flower's
`--isolation process` mode and asking for messages promptly while a run is active
(privet.client.prompt_supernode), and serves that SuperNode's messages itself
(privet.client.warm_exec):
each message runs in a fresh process forked from this one, which has already imported torch,
Opacus, Flower and Privet's client, instead of a `flwr-clientapp` process that imports them again.
Nothing else changes: the same TLS, node authentication, trusted app publishers, node config and
Runtime API address (`--host`/`--port`, loopback by default) as `flower-supernode`.

Only this process may take the SuperNode's tasks: a random secret, in a private file read by the
SuperNode at start and removed once it answers, authenticates every request for a task (Flower's
SuperExec authentication, which Flower's default mode leaves off).

Lifetimes are tied both ways: the SuperNode is sent SIGTERM by the kernel if this process dies
(even by SIGKILL), and this process stops (with the SuperNode's exit status) when the SuperNode
exits. SIGTERM or Ctrl-C stops both, the SuperNode within STOP_SUPERNODE_WITHIN_S.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from privet.client.warm_exec import ForkExecutor

SUPERNODE_DEFAULT_RUNTIME = ("127.0.0.1", 9094)
"""Flower 1.42's flower-supernode Runtime API address when --host/--port are not given."""
STOP_SUPERNODE_WITHIN_S = 15.0
RESTART_WITHIN_S = 90.0
"""How long after `privet node` starts a SuperNode that fails (exit status 1) is started again:
Flower's SuperLink refuses to activate a node it still sees online, and a node that crashed stays
online for two heartbeat intervals (2 × 30 s in flwr 1.42), so a quick restart is refused."""
RESTART_PAUSE_S = 5.0
FOLDER_PREFIX = "privet-node-"
"""A node's private runtime folder: the SuperExec secret, remembered σ, the node's PID. It lives in
the node's own Flower home (`FLWR_HOME`, as the README gives each partner) when one is set, else
in the system's temporary folder, so that nodes of several partners on one machine never look
into each other's folders (not even when tidying up after a killed one)."""
REFUSED_SUPERNODE_FLAGS = ("--isolation", "--superexec-auth-secret-file")
"""flower-supernode flags `privet node` sets itself."""
_PR_SET_PDEATHSIG = 1


class NodeError(ValueError):
    """A `privet node` command line that cannot start a node; the message says what to change."""


def add_node_parser(commands: argparse._SubParsersAction) -> None:
    """`privet node FLOWER_SUPERNODE_ARGUMENTS...`."""
    commands.add_parser(
        "node",
        help="run a partner's SuperNode with warm ClientApp processes (flower-supernode's flags)",
        description="Start flower-supernode with the given flags (all of them are Flower's: "
        "--superlink, --root-certificates, --auth-supernode-private-key, --trusted-entities, "
        "--node-config, --host, --port, ...) and run its ClientApp messages in processes that "
        "have torch, Opacus and Flower already imported. Stop it with SIGTERM or Ctrl-C.",
        allow_abbrev=False,
    )


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in argv (the last one given), else None."""
    value = None
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif item.startswith(flag + "="):
            value = item.split("=", 1)[1]
    return value


def runtime_api_address(supernode_args: Sequence[str]) -> str:
    """The address of the SuperNode's Runtime API, as this process reaches it."""
    host = _flag_value(supernode_args, "--host") or SUPERNODE_DEFAULT_RUNTIME[0]
    port = _flag_value(supernode_args, "--port") or str(SUPERNODE_DEFAULT_RUNTIME[1])
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise NodeError(f"--port {port} is not a port number; give 1-65535")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # served on every interface, reached on loopback
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def supernode_command(supernode_args: Sequence[str], secret_file: Path) -> list[str]:
    """The SuperNode's command line.

    Flower's flower-supernode with the partner's flags, process isolation and the executor's secret.
    """
    for flag in REFUSED_SUPERNODE_FLAGS:
        if any(item == flag or item.startswith(flag + "=") for item in supernode_args):
            raise NodeError(f"privet node sets {flag} itself; leave it out")
    if not any(item == "--superlink" or item.startswith("--superlink=") for item in supernode_args):
        raise NodeError("give --superlink HOST:PORT (the coordinator's Fleet address)")
    # Flower's flower-supernode entry point, with prompt polling (privet.client.prompt_supernode)
    return [
        sys.executable,
        "-m",
        "privet.client.prompt_supernode",
        *supernode_args,
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(secret_file),
    ]


def runtime_root() -> Path:
    """Where this node's private folder goes: its `FLWR_HOME` if set, else the temporary folder."""
    home = os.environ.get("FLWR_HOME")
    return Path(home).expanduser() if home else Path(tempfile.gettempdir())


def remove_stale_folders(root: Path) -> None:
    """Remove the private folders in `root` of earlier `privet node` processes that are gone.

    One killed with SIGKILL cannot remove its own; a folder whose process still runs is kept.
    """
    for folder in root.glob(f"{FOLDER_PREFIX}*"):
        try:
            if folder.stat().st_uid != os.getuid():
                continue
            pid = int((folder / "pid").read_text())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _write_secret(path: Path, secret: bytes) -> None:
    """The SuperExec secret, readable by this user only, for the SuperNode to read at start."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(secret)


def _pause(seconds: float, stopped: Callable[[], bool]) -> None:
    """Sleep `seconds`, or less if `stopped()` becomes true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stopped():
        time.sleep(0.1)


def _serve(
    command: list[str],
    address: str,
    executor: ForkExecutor,
    secret: bytes,
    secret_file: Path,
    stopped: Callable[[], bool],
) -> int:
    """Start the SuperNode and serve its messages until it exits or `stopped()`; its exit status."""
    from privet.client import warm_exec

    supernode = subprocess.Popen(command, preexec_fn=_die_with_parent)  # noqa: PLW1509

    def keep_going() -> bool:
        if executor.connected and secret_file.exists():
            secret_file.unlink()  # the SuperNode answered, so it read the secret at start
        return not stopped() and supernode.poll() is None

    print(f"privet node: serving the SuperNode's messages (Runtime API {address})", flush=True)
    try:
        warm_exec.serve_tasks(address, keep_going, executor, secret=secret)
    finally:
        if supernode.poll() is None:
            supernode.terminate()
            try:
                supernode.wait(timeout=STOP_SUPERNODE_WITHIN_S)
            except subprocess.TimeoutExpired:
                supernode.kill()
                supernode.wait()
    return supernode.returncode


def _die_with_parent() -> None:
    """In the SuperNode's process before it starts: SIGTERM when `privet node` dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_node(supernode_args: Sequence[str]) -> int:
    """Start the SuperNode and serve its messages until it exits or this process is stopped.

    Returns the SuperNode's exit status (0 when this process was stopped by a signal).
    """
    from privet.client import warm_exec

    if not supernode_args:
        raise NodeError("give flower-supernode's flags, e.g. --superlink HOST:PORT ...")
    address = runtime_api_address(supernode_args)
    root = runtime_root()
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(root)
    secret_dir = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=root))  # mode 0700
    (secret_dir / "pid").write_text(str(os.getpid()))
    secret_file = secret_dir / "superexec.secret"
    secret = secrets.token_bytes(32)
    try:
        command = supernode_command(supernode_args, secret_file)
        from privet.privacy.calibration import CACHE_ENV
        from privet.privacy.seal import SEAL_ENV

        # The node's messages remember calibrated noise across their processes (private folder);
        # entries this node checked carry a seal under a secret only its processes hold.
        calibrations = secret_dir / "calibration"
        calibrations.mkdir(mode=0o700)
        os.environ[CACHE_ENV] = str(calibrations)
        os.environ[SEAL_ENV] = secrets.token_hex(32)
        # ... and the node's data file, encoded once (client.node_data_cache).
        from privet.client.node_data_cache import CACHE_ENV as DATA_CACHE_ENV

        encoded = secret_dir / "data"
        encoded.mkdir(mode=0o700)
        os.environ[DATA_CACHE_ENV] = str(encoded)
        # torch looks for its compile cache in a folder shared by the machine's user; the node's
        # own keeps partners on one machine out of each other's way.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(secret_dir / "torchinductor"))
        print("privet node: loading torch, Opacus and Flower once for every message", flush=True)
        warm_exec.warm_up()
        stopping = False

        def stop(signum: int, _frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        executor = warm_exec.ForkExecutor()
        try:
            deadline = time.monotonic() + RESTART_WITHIN_S
            while True:
                _write_secret(secret_file, secret)
                executor.connected = False
                code = _serve(command, address, executor, secret, secret_file, lambda: stopping)
                if stopping or code != 1 or time.monotonic() > deadline:
                    break
                print(
                    f"privet node: the SuperNode stopped while starting (exit status 1; a node "
                    f"that crashed stays online at the SuperLink for up to a minute and is refused "
                    f"meanwhile); starting it again in {RESTART_PAUSE_S:g} s",
                    flush=True,
                )
                _pause(RESTART_PAUSE_S, lambda: stopping)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print(
            f"privet node: stopped after {executor.finished} messages "
            f"({executor.failed} failed); SuperNode exit status {code}",
            flush=True,
        )
        if stopping:
            return 0
        return 1 if code < 0 else code  # < 0: the SuperNode was killed by a signal
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)
