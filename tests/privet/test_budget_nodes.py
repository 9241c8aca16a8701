"""Runs whose client ledgers stay on the nodes: `--verify` from the nodes' signed-off summaries,
`--verify-ledger` on a node's own ledger-dir, and two runs composing on one node's ledgers.

Every ε is compared with Opacus' RDP analysis (`tests.reference_accounting.opacus_epsilon`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from privet import cli
from privet.budget import add_budget_parser, run_budget
from privet.privacy import PrivacyLedger
from privet.simulations.inprocess_engine import run_in_process
from privet.task.config import RunConfig
from tests.reference_accounting import opacus_epsilon

FLAGS = {"clients": 2, "rounds": 2, "noise_multiplier": 1.0, "local_epochs": 1, "seed": 3}


def parser():
    top = cli.OneLineParser(prog="privet")
    commands = top.add_subparsers(dest="command", required=True, parser_class=cli.OneLineParser)
    add_budget_parser(commands)
    return top


def budget(argv, capsys):
    status = run_budget(parser().parse_args(["budget", *argv]))
    return status, capsys.readouterr().out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two in-process runs whose nodes keep their ledgers in one shared ledger-dir."""
    root = tmp_path_factory.mktemp("nodes")
    node = {"ledger-dir": str(root / "ledger-dir")}
    for name in ("run1", "run2"):
        config = RunConfig(**FLAGS, reproducible=True, output=str(root / name))
        run_in_process(config, node_config=node)
    return root


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_the_second_run_reports_its_own_epsilon_and_the_lifetime(two_runs):
    first, second = results(two_runs / "run1"), results(two_runs / "run2")
    assert first["privacy"]["run_token"] != second["privacy"]["run_token"] or (
        first["privacy"]["run_token"] is None  # not recorded by this server: see the nodes
    )
    for one, two in zip(first["clients"], second["clients"], strict=True):
        q, sigma = two["sample_rate"], two["noise_multiplier"]
        assert two["epsilon"] == pytest.approx(opacus_epsilon(q, sigma, two["steps"], 1e-5))
        assert two["lifetime_steps"] == one["steps"] + two["steps"]
        assert two["lifetime_epsilon"] == pytest.approx(
            opacus_epsilon(q, sigma, two["lifetime_steps"], 1e-5), rel=1e-9
        )
        assert one["lifetime_epsilon"] == one["epsilon"]  # nothing before the first run
        assert two["ledger"]["entries"] == one["ledger"]["entries"] + two["rounds_participated"]
    privacy = second["privacy"]
    assert privacy["epsilon_max"] == max(c["epsilon"] for c in second["clients"])
    assert privacy["lifetime_epsilon_max"] == max(c["lifetime_epsilon"] for c in second["clients"])
    assert privacy["lifetime_epsilon_max"] > privacy["epsilon_max"]
    assert not list((two_runs / "run2").glob("ledgers/client-*.json"))  # they are on the nodes


def test_verify_confirms_a_deployment_from_the_nodes_summaries(two_runs, capsys):
    status, out = budget(["--verify", str(two_runs / "run2")], capsys)
    assert status == 0, out
    assert out.count("confirmed (node summary)") == 2 and "CONFIRMED" in out
    assert "checked the summary the node signed off" in out and "not the ledger file" in out


def test_verify_refutes_a_tampered_summary(two_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(two_runs / "run2", run)
    data = results(run)
    data["clients"][1]["noise_multiplier"] *= 1.1  # a larger σ would give a smaller ε
    (run / "results.json").write_text(json.dumps(data))
    status, out = budget(["--verify", str(run)], capsys)
    assert status == 1 and re.search(r"^client-1 .*refuted: ε differs", out, re.MULTILINE), out
    data = results(two_runs / "run2")
    data["clients"][0]["lifetime_epsilon"] = data["clients"][0]["epsilon"] / 2
    (run / "results.json").write_text(json.dumps(data))
    status, out = budget(["--verify", str(run)], capsys)
    assert status == 1 and "below the run's replayed ε" in out


def test_verify_ledger_replays_each_run_and_the_lifetime(two_runs, capsys):
    folder = two_runs / "ledger-dir"
    status, out = budget(["--verify-ledger", str(folder)], capsys)
    assert status == 0, out
    assert "OK: 2 ledger file(s) are well-formed and consistent" in out
    second = results(two_runs / "run2")
    for client in second["clients"]:
        name = f"client-{client['id']}.json"
        rows = [line.split() for line in out.splitlines() if line.startswith(name + " ")]
        rows = [(cells[1], cells[-1]) for cells in rows]  # (run or "lifetime", ε)
        lifetime = opacus_epsilon(
            client["sample_rate"], client["noise_multiplier"], client["lifetime_steps"], 1e-5
        )
        assert rows[-1][0] == "lifetime" and float(rows[-1][1]) == pytest.approx(lifetime, abs=1e-6)
        run_rows = [float(eps) for token, eps in rows[:-1]]
        assert len(run_rows) == 2
        assert run_rows[1] == pytest.approx(client["epsilon"], abs=1e-6)
    one = budget(["--verify-ledger", str(folder / "client-0.json")], capsys)
    assert one[0] == 0 and "client-1.json" not in one[1]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.write_text("{"), "is not valid JSON"),
        (
            lambda path: path.write_text(
                path.read_text().replace('"noise_multiplier": 1.0', '"noise_multiplier": 3.0', 1)
            ),
            "the file was edited",
        ),
        (lambda path: shutil.copy(path, path.with_name("client-7.json")), "is the ledger of"),
    ],
)
def test_verify_ledger_refutes_a_damaged_ledger_in_one_line(
    two_runs, tmp_path, capsys, damage, reason
):
    folder = tmp_path / "ledger-dir"
    shutil.copytree(two_runs / "ledger-dir", folder)
    damage(folder / "client-0.json")
    status, out = budget(["--verify-ledger", str(folder)], capsys)
    assert status == 1, out
    (line,) = [line for line in out.splitlines() if line.startswith("REFUTED")]
    assert reason in line


def test_verify_ledger_refuses_a_path_without_ledgers(tmp_path):
    from privet.budget import BudgetError

    with pytest.raises(BudgetError, match="no ledger files"):
        run_budget(parser().parse_args(["budget", "--verify-ledger", str(tmp_path)]))
    with pytest.raises(BudgetError, match="takes only --accountant"):
        run_budget(
            parser().parse_args(["budget", "--verify-ledger", str(tmp_path), "--delta", "1e-6"])
        )


def test_an_old_schema_ledger_reads_as_earlier_runs(tmp_path):
    """A version-2 file (no run tokens) is one untagged run: a tagged run after it reports its
    own ε, and the lifetime composes both; the old entries keep their digests."""
    from privet.privacy import PoissonGaussianSteps

    path = tmp_path / "client-0.json"
    old = {
        "schema_version": 2,
        "owner": "client-0",
        "level": "example",
        "delta": 1e-5,
        "epsilon_rdp": None,
        "entries": [
            {
                "round": r,
                "recorded_at": 1.0,
                "event": {
                    "type": "poisson_gaussian_steps",
                    "noise_multiplier": 1.1,
                    "sample_rate": 0.1,
                    "steps": 20,
                },
            }
            for r in (1, 2)
        ],
    }
    path.write_text(json.dumps(old))
    ledger = PrivacyLedger.load(path)
    before = ledger.digest()
    assert ledger.runs() == [(None, 1e-5)] and ledger.run_steps(None) == 40
    ledger.record(1, [PoissonGaussianSteps(1.1, 0.1, 20)], run="c" * 32)
    assert ledger.run_epsilon("c" * 32) == pytest.approx(opacus_epsilon(0.1, 1.1, 20, 1e-5))
    assert ledger.epsilon() == pytest.approx(opacus_epsilon(0.1, 1.1, 60, 1e-5), rel=1e-9)
    again = PrivacyLedger.load(path)
    assert json.loads(path.read_text())["schema_version"] == 3
    assert again.extends(2, before) and again.runs() == [(None, 1e-5), ("c" * 32, 1e-5)]
