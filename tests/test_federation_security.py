"""End to end on 127.0.0.1: the README's secure recipe against someone who holds the public CA
certificate (issue 12, item 1).

One federation serves every check: the SuperLink listens on the coordinator's address only, the
gateway exposes the Fleet API alone, nodes are registered by the coordinator and run only apps the
coordinator signed, and the run admits only the nodes its node-clients lists. The rogue holds
ca.crt and the Fleet address (what every partner gets). It tries what worked before the fix:
register a node, join a run with client-id=0, run its own ClientApp on the nodes, read and stop
runs with `flwr ls` / `flwr log` / `flwr stop`. Each attempt fails and the honest run finishes
with its own two clients.

Everything runs on one machine, so the SuperLink's loopback port is in fact reachable by any local
process; across machines it is not (it is bound to the coordinator's 127.0.0.1), and the test
gives the rogue exactly what a remote attacker has. A listed node that claims another client id is
tested against the real ClientApp API in tests/server/test_strategy.py (discovery).
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from privet.certs import make_node_keys
from tests.federation import BIN, Federation, copy_app, free_port, node_files, wait_for

EVIL_CLIENT = textwrap.dedent(
    """
    from pathlib import Path

    from flwr.app import Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    client = ClientApp()
    server = ServerApp()


    @client.query()
    def steal(msg, context):
        # The attacker's code on a partner's node: it could read the partner's data file.
        stolen = Path(str(context.node_config.get("data-file", ""))).read_text()[:200]
        Path(f"{context.run_config['marker']}-{context.node_id}").write_text(stolen)
        return Message(RecordDict({"m": MetricRecord({"stolen": 1})}), reply_to=msg)


    @server.main()
    def main(grid, context):
        nodes = list(grid.get_node_ids())
        messages = [
            Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
            for node in nodes
        ]
        replies = list(grid.send_and_receive(messages, timeout=30))
        print("EVIL nodes", sorted(nodes), "errors", [r.has_error() for r in replies], flush=True)
    """
)

EVIL_PYPROJECT = textwrap.dedent(
    """
    [project]
    name = "evilapp"
    version = "1.0.0"
    description = "an attacker's Flower app"
    license = "Apache-2.0"
    dependencies = []

    [tool.flwr.app]
    publisher = "rogue"

    [tool.flwr.app.components]
    serverapp = "evil:server"
    clientapp = "evil:client"

    [tool.flwr.app.config]
    marker = ""
    """
)


def evil_app(root: Path) -> Path:
    app = root / "evilapp"
    app.mkdir()
    (app / "pyproject.toml").write_text(EVIL_PYPROJECT)
    (app / "evil.py").write_text(EVIL_CLIENT)
    return app


@pytest.mark.long(60)
def test_a_rogue_with_the_ca_certificate_controls_nothing(tmp_path):
    started = time.monotonic()
    data = node_files(tmp_path)
    output = tmp_path / "server-output"
    marker = tmp_path / "stolen"
    federation = Federation(tmp_path / "deploy")
    rogue = federation.rogue()
    rogue_keys = make_node_keys(tmp_path / "rogue")
    spec = federation.publish(copy_app(tmp_path))
    evil = evil_app(tmp_path)
    attempts: dict[str, subprocess.Popen] = {}
    try:
        federation.start_superlink()
        federation.start_gateway()
        # The rogue tries to register its key and to list the runs, through the Fleet address.
        attempts["register"] = federation.spawn_flwr(
            "supernode", "register", str(rogue_keys.public_key), env=rogue.env
        )
        attempts["ls"] = federation.spawn_flwr("ls", env=rogue.env)
        # The coordinator registers the partners' keys, and a node that will turn rogue (the
        # mole: registered, but not in the run's node-clients).
        keys = federation.register("node0", "node1", "mole")
        for k in range(2):
            federation.start_node(
                f"node{k}",
                keys[f"node{k}"],
                f"client-id={k} {data.node_keys(k)} ledger-dir='{tmp_path / f'ledger-{k}'}'",
            )
        federation.start_node("mole", keys["mole"], f"client-id=0 {data.node_keys(2)}")
        stranger = federation.start(  # the rogue's own, unregistered node
            "stranger",
            [
                str(BIN / "flower-supernode"),
                "--superlink",
                f"127.0.0.1:{federation.fleet_port}",
                "--root-certificates",
                str(rogue.home / "ca.crt"),
                "--auth-supernode-private-key",
                str(rogue_keys.private_key),
                "--node-config",
                f"client-id=0 {data.node_keys(2)}",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--max-retries",
                "1",
            ],
            env=rogue.env,
        )
        federation.wait_connected("node0", "node1", "mole")
        assert federation.online_nodes() == 3

        # The coordinator's run admits the two partners' nodes only.
        node_clients = federation.node_clients({"node0": 0, "node1": 1})
        run_config = (
            f"{data.run_keys()} clients=2 rounds=1 "
            f"local-epochs=1 target-epsilon=4.0 round-timeout=120 output='{output}' "
            f"node-clients='{node_clients}'"
        )
        federation.start(
            "flwr-run",
            [str(BIN / "flwr"), "run", spec, "privet", "--stream", "--run-config", run_config],
        )
        # Defence in depth: even an app started through the Control API (from the coordinator's
        # host) runs on no node, because the coordinator did not sign it.
        federation.start(
            "evil-run",
            [str(BIN / "flwr"), "run", str(evil), "privet", "--stream"]
            + ["--run-config", f"marker='{marker}'"],
        )
        wait_for(
            lambda: "Successfully started run" in federation.log("flwr-run"),
            60,
            lambda: federation.log("flwr-run"),
        )
        run_id = re.search(r"Successfully started run (\d+)", federation.log("flwr-run"))[1]
        # The rogue tries to read and stop that run, and to run its own app on the nodes.
        attempts["log"] = federation.spawn_flwr("log", run_id, "--show", env=rogue.env)
        attempts["stop"] = federation.spawn_flwr("stop", run_id, env=rogue.env)
        attempts["run"] = federation.spawn_flwr(
            "run", str(evil), "target", "--run-config", f"marker='{marker}'", env=rogue.env
        )
        answers = {name: federation.collect(process) for name, process in attempts.items()}

        wait_for(
            lambda: (
                (output / "results.json").exists()
                and json.loads((output / "results.json").read_text()).get("finished", False)
            ),
            240,
            lambda: "the run did not finish:\n" + federation.log("flwr-run"),
        )
        wait_for(
            lambda: "EVIL nodes" in federation.log("evil-run"),
            90,
            lambda: "the unsigned app's run did not end:\n" + federation.log("evil-run"),
        )
        assert stranger.wait(timeout=60) != 0
    finally:
        federation.close()
    elapsed = time.monotonic() - started

    # The rogue's commands all fail on the gateway's 403 (Flower prints the status), and the
    # gateway logs each refusal; the SuperLink never saw them.
    for name, (code, text) in answers.items():
        print(f"rogue flwr {name}: exit {code}: {' '.join(text.split())[:400]}")
        assert code != 0 and "403" in text, text
    gateway = federation.log("gateway")
    for path in ("register-node", "list-runs", "stream-logs", "stop-run", "start-run"):
        assert f"refused POST '/v1/control/{path}' from 127.0.0.1" in gateway, gateway
    assert "Failed to activate SuperNode" in federation.log("stranger"), federation.log("stranger")

    # The mole (registered, claiming client-id=0) was refused and never contacted by the run.
    mole = federation.node_ids["mole"]
    run_log = federation.log("flwr-run")
    assert f"node {mole} refused: it is not in node-clients" in run_log, run_log
    assert f"[RUN {run_id}" not in federation.log("mole")
    results = json.loads((output / "results.json").read_text())
    assert results["finished"] is True
    assert sorted(client["id"] for client in results["clients"]) == [0, 1], results["clients"]
    assert set(results["rounds"][0]["sampled"]) <= {0, 1}

    # The unsigned app ran on no honest node: each refused it, and nothing was written.
    for name in ("node0", "node1"):
        assert "The FAB could not be verified" in federation.log(name), federation.log(name)
        assert not Path(f"{marker}-{federation.node_ids[name]}").exists()
    assert "errors [True, True, True]" in federation.log("evil-run"), federation.log("evil-run")
    print(f"security federation: {elapsed:.1f} s")
