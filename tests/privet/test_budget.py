"""`privet budget`: plans, targets, plots and --verify, against independent computations."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import dp_accounting
import pytest
from opacus.accountants import RDPAccountant

from privet import cli
from privet.budget import (
    BudgetError,
    add_budget_parser,
    compute_curves,
    make_figure,
    plan_from_args,
    run_budget,
)
from privet.privacy import ClientLevelRound, PoissonGaussianSteps, PrivacyLedger

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def parser():
    """`privet` with only the budget subcommand, built the way privet.cli builds its parser."""
    top = cli.OneLineParser(prog="privet")
    commands = top.add_subparsers(dest="command", required=True, parser_class=cli.OneLineParser)
    add_budget_parser(commands)
    return top


def budget(argv, capsys):
    """Run `privet budget ARGV`; return (exit status, stdout)."""
    status = run_budget(parser().parse_args(["budget", *argv]))
    return status, capsys.readouterr().out


def row_value(out, label):
    """The number in the table row that starts with `label`."""
    match = re.search(rf"^{re.escape(label)}\s+([0-9.]+|∞)", out, re.MULTILINE)
    assert match, out
    return math.inf if match.group(1) == "∞" else float(match.group(1))


def dp_rdp(q, inner, count, delta=1e-5):
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    event = dp_accounting.PoissonSampledDpEvent(q, inner)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, count))
    return accountant.get_epsilon(delta)


# -- ε for a plan -------------------------------------------------------------------------------


def test_tf_privacy_tutorial_plan_with_its_own_step_count(capsys):
    # TF Privacy's MNIST tutorial: 60,000 examples, batch 256, σ = 1.1, 60 epochs, δ = 1e-5
    # → 14,062 steps at q = 256/60000; published ε = 3.01 (classic RDP conversion).
    status, out = budget(
        ["--steps", "14062", "--sample-rate", str(256 / 60000), "--noise-multiplier", "1.1"],
        capsys,
    )
    assert status == 0
    assert row_value(out, "rdp-classic") == pytest.approx(3.01, rel=0.02)
    expected = dp_rdp(256 / 60000, dp_accounting.GaussianDpEvent(1.1), 14062)
    assert row_value(out, "rdp") == pytest.approx(expected, abs=1e-4)
    assert row_value(out, "rdp") == pytest.approx(2.60, abs=0.01)


def test_tf_privacy_tutorial_plan_with_opacus_poisson_batches(capsys):
    """From the data set: Opacus' loader gives q = 1/⌈60000/256⌉ = 1/235 and 235 steps/epoch."""
    status, out = budget(
        ["--examples", "60000", "--batch-size", "256", "--epochs", "60"]
        + ["--noise-multiplier", "1.1", "--accountant", "all"],
        capsys,
    )
    assert status == 0
    assert "14100 steps" in out and "1/235" in out
    assert row_value(out, "rdp-classic") == pytest.approx(3.01, rel=0.02)
    assert row_value(out, "rdp") == pytest.approx(
        dp_rdp(1 / 235, dp_accounting.GaussianDpEvent(1.1), 14100), abs=1e-4
    )
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(1 / 235, dp_accounting.GaussianDpEvent(1.1)), 14100
        )
    )
    assert row_value(out, "pld") == pytest.approx(pld.get_epsilon(1e-5), rel=0.01)
    assert row_value(out, "prv") == pytest.approx(pld.get_epsilon(1e-5), rel=0.03)


def test_federated_example_level_plan(capsys):
    status, out = budget(
        ["--examples", "260", "--batch-size", "32", "--rounds", "5", "--local-epochs", "2"]
        + ["--noise-multiplier", "1.0"],
        capsys,
    )
    assert status == 0 and "90 steps" in out  # 5 × 2 × ⌈260/32⌉
    accountant = RDPAccountant()
    accountant.history = [(1.0, 1 / 9, 90)]
    assert row_value(out, "rdp") == pytest.approx(accountant.get_epsilon(1e-5), abs=1e-4)


# -- σ for a target -----------------------------------------------------------------------------


def test_sigma_for_target_round_trip(capsys):
    plan = ["--examples", "1000", "--batch-size", "50", "--epochs", "4", "--delta", "1e-6"]
    status, out = budget([*plan, "--target-epsilon", "2"], capsys)
    assert status == 0
    sigma = row_value(out, "rdp")
    status, out = budget([*plan, "--noise-multiplier", repr(sigma)], capsys)
    eps = row_value(out, "rdp")
    # The printed σ is rounded up to 4 decimals: the plan at it stays within the target, tightly.
    assert eps <= 2.0 and eps == pytest.approx(2.0, rel=2e-3)
    reference = dp_rdp(1 / 20, dp_accounting.GaussianDpEvent(sigma), 80, 1e-6)
    assert reference == pytest.approx(eps, abs=1e-4)


def test_client_level_target_with_adaptive_clipping(capsys):
    status, out = budget(
        ["--level", "client", "--clients", "1000", "--clients-per-round", "50"]
        + ["--rounds", "200", "--target-epsilon", "4", "--count-noise-std", "2.5"],
        capsys,
    )
    assert status == 0
    z_update = float(re.search(r"z_Δ = ([0-9.]+)", out).group(1))
    # The two queries (update sum at z_Δ, centred count at σ_b/½), composed by dp-accounting,
    # meet ε = 4.
    two_queries = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(z_update), dp_accounting.GaussianDpEvent(5.0)]
    )
    assert dp_rdp(0.05, two_queries, 200) == pytest.approx(4.0, rel=2e-3)


def test_client_level_epsilon(capsys):
    status, out = budget(
        [
            "--level",
            "client",
            "--sample-rate",
            "0.1",
            "--rounds",
            "50",
            "--noise-multiplier",
            "1.2",
        ],
        capsys,
    )
    assert status == 0
    # Opacus' own accountant (dp-accounting 0.6's fractional-order RDP is inaccurate at q = 0.1,
    # see tests/privacy/test_accountant_grid.py).
    accountant = RDPAccountant()
    accountant.history = [(1.2, 0.1, 50)]
    assert row_value(out, "rdp") == pytest.approx(accountant.get_epsilon(1e-5), abs=1e-4)


# -- plots --------------------------------------------------------------------------------------


def test_plot_writes_a_png_and_a_table(tmp_path, capsys):
    path = tmp_path / "plots" / "budget.png"
    status, out = budget(
        ["--examples", "600", "--batch-size", "60", "--epochs", "2"]
        + ["--plot", str(path), "--sigmas", "0.8,1.0,1.5"],
        capsys,
    )
    assert status == 0
    assert path.read_bytes().startswith(PNG_MAGIC)
    table = [line for line in out.splitlines() if re.match(r"^[1-2]\s", line)]
    assert len(table) == 2 and len(table[0].split()) == 1 + 3 * 3
    assert "σ=0.8 rdp" in out and "σ=1.5 pld" in out


def test_plot_has_one_line_per_sigma_and_accountant():
    args = parser().parse_args(
        ["budget", "--examples", "600", "--batch-size", "60", "--epochs", "3"]
    )
    args.level = "example"
    plan = plan_from_args(args)
    curves, notes = compute_curves(plan, [0.8, 1.2], ["rdp", "prv", "pld"], 1e-5, 10)
    assert not notes
    figure = make_figure(curves, plan, 1e-5)
    axes = figure.axes[0]
    assert len(axes.get_lines()) == 6
    assert len(axes.get_legend().get_texts()) == 6
    styles = {(line.get_color(), line.get_linestyle()) for line in axes.get_lines()}
    assert len(styles) == 6
    assert axes.get_xlabel() == "epochs" and "ε" in axes.get_ylabel()
    assert "δ = 1e-05" in axes.get_title() and "q = 0.1" in axes.get_title()
    # RDP is an upper bound above the tight accountants, at every point.
    rdp, prv, pld = curves[0].epsilons, curves[1].epsilons, curves[2].epsilons
    assert all(r > p > 0 and r > d > 0 for r, p, d in zip(rdp, prv, pld, strict=True))


# -- --verify -----------------------------------------------------------------------------------


def make_run(run_dir: Path, accountant: str = "rdp", client_level: bool = True) -> dict:
    """A finished run as the server writes it: results.json plus one ledger per client."""
    delta = 1e-5
    clients = []
    for client_id, (q, rounds) in enumerate([(0.1, 3), (0.125, 2), (0.2, 3)]):
        ledger = PrivacyLedger(
            f"client-{client_id}",
            "example",
            delta,
            run_dir / "ledgers" / f"client-{client_id}.json",
        )
        for server_round in range(1, rounds + 1):
            ledger.record(server_round, [PoissonGaussianSteps(1.1, q, 20)])
        clients.append(
            {"id": client_id, "epsilon": ledger.epsilon(accountant), "steps": 20 * rounds}
        )
    results = {
        "config": {"accountant": accountant, "delta": delta, "rounds": 3},
        "privacy": {"epsilon_max": max(client["epsilon"] for client in clients)},
        "clients": clients,
        "client_level": None,
    }
    if client_level:
        server = PrivacyLedger("server", "client", delta, run_dir / "ledgers" / "server.json")
        for server_round in range(1, 4):
            server.record(
                server_round,
                [ClientLevelRound(1.3, 0.5, 1, count_noise_std=2.0, count_sensitivity=0.5)],
            )
        results["client_level"] = {"epsilon": server.epsilon(accountant), "rounds": 3}
    write_results(run_dir, results)
    return results


def write_results(run_dir: Path, results: dict) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, allow_nan=False))


def test_verify_confirms_a_faithful_run(tmp_path, capsys):
    results = make_run(tmp_path)
    status, out = budget(["--verify", str(tmp_path)], capsys)
    assert status == 0, out
    assert out.count("confirmed") == 5  # three clients, their maximum, the server
    assert "CONFIRMED" in out
    # The reported values are what an independent accountant gives for the same releases.
    opacus = RDPAccountant()
    opacus.history = [(1.1, 0.2, 60)]
    assert results["clients"][2]["epsilon"] == pytest.approx(opacus.get_epsilon(1e-5), rel=1e-12)


def test_verify_replays_with_the_runs_accountant(tmp_path, capsys):
    make_run(tmp_path, accountant="pld", client_level=False)
    status, out = budget(["--verify", str(tmp_path)], capsys)
    assert status == 0, out
    assert "pld accountant" in out


def test_verify_refutes_a_tampered_report(tmp_path, capsys):
    results = make_run(tmp_path)
    results["clients"][1]["epsilon"] *= 0.99
    write_results(tmp_path, results)
    status, out = budget(["--verify", str(tmp_path)], capsys)
    assert status == 1
    assert re.search(r"^client-1 .*refuted: ε differs", out, re.MULTILINE)
    assert "REFUTED" in out


def test_verify_refutes_a_tampered_ledger(tmp_path, capsys):
    make_run(tmp_path)
    path = tmp_path / "ledgers" / "server.json"
    data = json.loads(path.read_text())
    data["entries"].pop()
    path.write_text(json.dumps(data))
    status, out = budget(["--verify", str(tmp_path)], capsys)
    assert status == 1 and re.search(r"^server .*refuted", out, re.MULTILINE)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda run: (run / "ledgers" / "client-2.json").unlink(), "ledger missing"),
        (lambda run: (run / "ledgers" / "client-0.json").write_text("{"), "unreadable"),
        (
            lambda run: PrivacyLedger(
                "client-7", "example", 1e-5, run / "ledgers" / "client-7.json"
            ).record(1, [PoissonGaussianSteps(1.0, 0.1, 5)]),
            "no ε reported",
        ),
    ],
)
def test_verify_refutes_missing_or_extra_ledgers(tmp_path, capsys, damage, expected):
    make_run(tmp_path)
    damage(tmp_path)
    status, out = budget(["--verify", str(tmp_path)], capsys)
    assert status == 1 and expected in out


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda run: None, "no such run folder"),
        (lambda run: run.mkdir(), "results.json does not exist"),
        (lambda run: (run.mkdir(), (run / "results.json").write_text("[")), "cannot be read"),
        (lambda run: (run.mkdir(), (run / "results.json").write_text("[]")), "config"),
        (
            lambda run: (run.mkdir(), write_results(run, {"config": {}, "clients": []})),
            "accountant",
        ),
        (
            lambda run: (
                run.mkdir(),
                write_results(
                    run, {"config": {"accountant": "rdp", "delta": 1e-5}, "clients": [{}]}
                ),
            ),
            'integer "id"',
        ),
    ],
)
def test_verify_rejects_a_bad_run_dir_in_one_line(tmp_path, setup, match):
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(BudgetError, match=match) as error:
        run_budget(parser().parse_args(["budget", "--verify", str(run)]))
    assert "\n" not in str(error.value)


# -- bad input ----------------------------------------------------------------------------------

PLAN = ["--examples", "1000", "--batch-size", "10", "--epochs", "2"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (PLAN, "exactly one of --noise-multiplier and --target-epsilon"),
        ([*PLAN, "--noise-multiplier", "1", "--target-epsilon", "2"], "exactly one of"),
        (["--steps", "100", "--noise-multiplier", "1"], "--sample-rate"),
        (["--examples", "100", "--noise-multiplier", "1"], "--batch-size"),
        (["--examples", "100", "--batch-size", "10", "--noise-multiplier", "1"], "--epochs"),
        ([*PLAN, "--rounds", "3", "--local-epochs", "1", "--noise-multiplier", "1"], "not both"),
        ([*PLAN[:4], "--rounds", "3", "--noise-multiplier", "1"], "--local-epochs"),
        ([*PLAN, "--steps", "5", "--sample-rate", "0.1", "--noise-multiplier", "1"], "either"),
        ([*PLAN, "--sample-rate", "0.1", "--noise-multiplier", "1"], "--sample-rate goes with"),
        (["--steps", "10", "--sample-rate", "1.5", "--noise-multiplier", "1"], "at most 1"),
        ([*PLAN, "--clients", "10", "--noise-multiplier", "1"], "--level client"),
        (["--level", "client", *PLAN, "--noise-multiplier", "1"], "example-level plan"),
        (["--level", "client", "--clients", "10", "--noise-multiplier", "1"], "--rounds"),
        (
            ["--level", "client", "--clients", "10", "--clients-per-round", "20", "--rounds", "5"]
            + ["--noise-multiplier", "1"],
            "exceeds",
        ),
        (
            ["--level", "client", "--sample-rate", "0.1", "--clients", "10", "--rounds", "5"]
            + ["--noise-multiplier", "1"],
            "not both",
        ),
        ([*PLAN, "--noise-multiplier", "1", "--delta", "1"], "--delta"),
        ([*PLAN, "--noise-multiplier", "1", "--sigmas", "1,2"], "add --plot"),
        ([*PLAN, "--plot", "x.png", "--target-epsilon", "1"], "--sigmas instead"),
        ([*PLAN, "--plot", "x.png"], "--plot needs --sigmas"),
        ([*PLAN, "--plot", "x.jpg", "--sigmas", "1"], "PNG"),
        ([*PLAN, "--plot", "x.png", "--sigmas", "1", "--noise-multiplier", "1"], "once"),
        (["--verify", "somewhere", "--delta", "1e-6"], "takes no plan flags"),
        (["--steps", "1000", "--sample-rate", "0.5", "--target-epsilon", "1e-6"], "unreachable"),
        (
            ["--level", "client", "--sample-rate", "0.1", "--rounds", "10"]
            + ["--noise-multiplier", "1", "--count-noise-std", "0.2"],
            "whole budget",
        ),
    ],
)
def test_bad_flag_combinations_are_one_line_budget_errors(argv, match):
    with pytest.raises(BudgetError, match=re.escape(match)) as error:
        run_budget(parser().parse_args(["budget", *argv]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "argv",
    [["--examples", "-5"], ["--sigmas", "1,x"], ["--accountant", "gdp"], ["--delta", "nan"]],
)
def test_malformed_values_are_one_line_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["budget", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("privet: error:")


def test_through_the_privet_command(tmp_path, capsys):
    """Through `privet`'s main: errors print one line and the status is returned."""
    make_run(tmp_path)
    assert cli.main(["budget", "--verify", str(tmp_path)]) == 0
    assert cli.main(["budget", "--verify", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("privet: error:")


def test_verify_says_an_old_adaptive_run_under_reported_and_gives_the_correct_epsilon(
    tmp_path, capsys
):
    """A run written before the count's sensitivity was recorded: its printed ε was too low."""
    make_run(tmp_path, client_level=True)
    server_file = tmp_path / "ledgers" / "server.json"
    old = json.loads(server_file.read_text())
    old["schema_version"] = 1
    for entry in old["entries"]:  # what that Privet wrote: 2·σ_b, charged as a centred count
        event = entry["event"]
        event["count_noise_multiplier"] = 2 * event.pop("count_noise_std")
        event.pop("count_sensitivity")
    server_file.write_text(json.dumps(old))
    reported = json.loads((tmp_path / "results.json").read_text())["client_level"]["epsilon"]
    status, out = budget(["--verify", str(tmp_path)], capsys)
    assert status == 1
    line = next(line for line in out.splitlines() if line.startswith("server"))
    assert "under-reported" in line
    # The correct ε: update sum z = 1.3 and the raw count at σ_b / 1 = 2, composed by dp-accounting.
    two_queries = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(1.3), dp_accounting.GaussianDpEvent(2.0)]
    )
    correct = dp_rdp(0.5, two_queries, 3, 1e-5)
    assert correct > 1.05 * reported
    printed = float(re.search(r"the correct ε is ([0-9.]+)", line).group(1))
    assert printed == pytest.approx(correct, rel=1e-3)


def test_a_plot_that_cannot_be_written_is_one_line_before_any_work(tmp_path, capsys):
    """Issue 12 item 10: `budget --plot /proc/x.png` computed, printed, then died in savefig."""
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    (tmp_path / "taken.png").mkdir()
    for target, reason in (
        ("/proc/x.png", "cannot be written: its folder /proc is not writable"),
        (str(a_file / "p.png"), f"its folder {a_file} is a file, not a folder"),
        (str(tmp_path / "taken.png"), "is a folder, not a file"),
        (str(tmp_path / ("p" * 300 + ".png")), "has a name of 304 bytes"),
    ):
        argv = [*PLAN, "--sigmas", "1", "--plot", target]
        with pytest.raises(BudgetError, match=re.escape(reason)) as error:
            run_budget(parser().parse_args(["budget", *argv]))
        assert "\n" not in str(error.value)
        assert capsys.readouterr().out == ""  # refused before the table was computed
    assert a_file.read_text() == "x" and not any((tmp_path / "taken.png").iterdir())
    good = tmp_path / "ok" / "plot.png"
    status, _ = budget([*PLAN, "--sigmas", "1", "--plot", str(good)], capsys)
    assert status == 0 and good.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in good.parent.iterdir()] == ["plot.png"]  # no temporary file left
