"""`flwr run .` works on the project as Flower users expect, against a SuperLink the test owns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.federation import copy_app, free_port

BIN = Path(sys.executable).parent


@pytest.mark.long
def test_flwr_run_trains_and_writes_results(tmp_path):
    http_port, control_port = free_port(), free_port()
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        "options.num-supernodes = 3\n"
    )
    env = dict(
        os.environ,
        FLWR_HOME=str(flwr_home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
        FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
    )
    superlink_log = tmp_path / "superlink.log"  # shown when the run fails (it runs the ServerApp)
    with superlink_log.open("wb") as log:
        superlink = subprocess.Popen(
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--simulation",
                "--isolation",
                "subprocess",
                "--control-api-address",
                f"127.0.0.1:{control_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(http_port),
                "--database",
                ":flwr-in-memory:",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert superlink.poll() is None, "flower-superlink exited during start-up"
            assert time.monotonic() < deadline, "flower-superlink did not start in 60 s"
            time.sleep(0.5)
        output = tmp_path / "out"
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(copy_app(tmp_path)),
                "--stream",
                "--run-config",
                f"rounds=2 clients=3 output='{output}'",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        printed = (
            run.stdout[-6000:]
            + run.stderr[-3000:]
            + "\n--- superlink ---\n"
            + superlink_log.read_text(errors="replace")[-6000:]
        )
        assert run.returncode == 0, printed
        assert (output / "results.json").is_file(), "no results.json; flwr run printed:\n" + printed
        results = json.loads((output / "results.json").read_text())
        assert results["engine"] == "flwr-run"
        assert [r["round"] for r in results["rounds"]] == [1, 2]
        assert results["config"]["clients"] == 3
        assert len(results["clients"]) == 3
        assert all(0 < c["epsilon"] <= 8.0 for c in results["clients"])
        assert results["rounds"][-1]["accuracy"] > 0.5
    finally:
        os.killpg(superlink.pid, signal.SIGTERM)
        try:
            superlink.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(superlink.pid, signal.SIGKILL)
            superlink.wait()
