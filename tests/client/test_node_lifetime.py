"""A node's ledger across runs: each run reports its own ε, the node its lifetime ε.

Every ε is compared with Opacus' RDP analysis of the same releases (`tests.reference_accounting`),
never with Privet's own accountant.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from opacus.accountants.analysis import rdp

from privet.client.app import (
    ledger_path,
    load_ledger,
    make_client_app,
    node_epsilon_budget,
)
from privet.client.node_data import load_node_data
from privet.client.training_round import (
    ClientDecline,
    ClientTrainReport,
    client_plan,
    run_training_round,
)
from privet.privacy import ClientPrivacy, PoissonGaussianSteps, PrivacyLedger
from privet.server.evaluation import ServerEvaluator
from privet.task.config import ConfigError, RunConfig
from tests.reference_accounting import ORDERS

RUN_A, RUN_B = "a" * 32, "b" * 32


def composed_epsilon(parts: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' RDP ε of (q, σ, steps) Poisson-Gaussian compositions run one after another."""
    total = sum(
        np.asarray(rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS))
        for q, sigma, steps in parts
    )
    eps, _ = rdp.get_privacy_spent(orders=ORDERS, rdp=total, delta=delta)
    return float(eps)


def node_config(folder: Path, partition: int = 1) -> dict[str, object]:
    return {"partition-id": partition, "num-partitions": 5, "ledger-dir": str(folder)}


def context_of(config: dict[str, object]) -> Context:
    """A fresh node context: a new run on the node (Flower gives each run its own state)."""
    return Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config={})


def train_rounds(
    config: RunConfig,
    node: dict[str, object],
    rounds: list[int],
    token: str | None,
    budget: float | None = None,
) -> list[ClientTrainReport | ClientDecline]:
    """Rounds of one run on a node, at the plain-code level (what the ClientApp calls)."""
    context = context_of(node)
    data = load_node_data(config, node)
    weights = ServerEvaluator(config).initial_weights()
    outcomes = []
    for server_round in rounds:
        ledger = load_ledger(context, config, data)
        outcome = run_training_round(
            config,
            data,
            weights,
            ledger,
            server_round,
            run_token=token,
            node_epsilon_budget=budget,
        )
        outcomes.append(outcome)
        context.state.config_records["privet-ledger"] = ConfigRecord(
            {"json": json.dumps(ledger.to_json())}
        )
    return outcomes


def status(outcome: ClientTrainReport | ClientDecline) -> ClientPrivacy:
    return outcome.status


def test_two_runs_on_one_ledger_report_their_own_epsilon_and_the_lifetime(tmp_path):
    node = node_config(tmp_path / "node")
    first = RunConfig(output=str(tmp_path / "run1"), rounds=2, noise_multiplier=1.0)
    second = RunConfig(output=str(tmp_path / "run2"), rounds=2, noise_multiplier=1.3)
    one = status(train_rounds(first, node, [1, 2], RUN_A)[-1])
    two = status(train_rounds(second, node, [1, 2], RUN_B)[-1])
    q, per_run = one.sample_rate, one.steps
    assert two.sample_rate == q and two.steps == per_run  # same data, same plan shape
    # The second run's own ε: its releases alone, as if the node were fresh.
    assert two.epsilon == pytest.approx(composed_epsilon([(q, 1.3, per_run)], 1e-5), rel=1e-9)
    assert two.rounds_participated == 2
    # Its lifetime: both runs composed.
    both = composed_epsilon([(q, 1.0, per_run), (q, 1.3, per_run)], 1e-5)
    assert two.lifetime_epsilon == pytest.approx(both, rel=1e-9)
    assert two.lifetime_steps == 2 * per_run
    assert two.lifetime_epsilon > one.lifetime_epsilon == one.epsilon  # the first run was fresh
    ledger = PrivacyLedger.load(tmp_path / "node" / "client-1.json")
    assert ledger.runs() == [(RUN_A, 1e-5), (RUN_B, 1e-5)]
    assert ledger.digest() == two.ledger_digest and len(ledger.entries) == two.ledger_entries


def test_a_delta_change_between_runs_is_accounted_not_refused(tmp_path):
    """The user trial's second run at another δ failed with "give each client its own output
    folder": the events are δ-free, so the lifetime ε is all of them at the new δ."""
    node = node_config(tmp_path / "node")
    first = RunConfig(output=str(tmp_path / "run1"), rounds=2, noise_multiplier=1.0)
    second = RunConfig(output=str(tmp_path / "run2"), rounds=1, noise_multiplier=1.0, delta=1e-6)
    one = status(train_rounds(first, node, [1, 2], RUN_A)[-1])
    two = status(train_rounds(second, node, [1], RUN_B)[-1])
    q, per_round = one.sample_rate, one.steps // 2
    assert two.delta == 1e-6
    assert two.epsilon == pytest.approx(composed_epsilon([(q, 1.0, per_round)], 1e-6), rel=1e-9)
    lifetime = composed_epsilon([(q, 1.0, 3 * per_round)], 1e-6)
    assert two.lifetime_epsilon == pytest.approx(lifetime, rel=1e-9)
    ledger = PrivacyLedger.load(tmp_path / "node" / "client-1.json")
    assert ledger.runs() == [(RUN_A, 1e-5), (RUN_B, 1e-6)] and ledger.delta == 1e-6
    # Each run's own ε at its own δ, read back from the file.
    assert ledger.run_epsilon(RUN_A) == pytest.approx(
        composed_epsilon([(q, 1.0, 2 * per_round)], 1e-5), rel=1e-9
    )


def test_a_node_budget_declines_the_round_that_would_exceed_it(tmp_path):
    node = node_config(tmp_path / "node")
    config = RunConfig(output=str(tmp_path / "run1"), rounds=3, noise_multiplier=1.0)
    one = status(train_rounds(config, node, [1, 2], RUN_A)[-1])
    q, per_round = one.sample_rate, one.steps // 2
    after = composed_epsilon([(q, 1.0, 3 * per_round)], 1e-5)  # with one more round
    budget = round((one.lifetime_epsilon + after) / 2, 3)  # between now and after the round
    assert one.lifetime_epsilon < budget < after
    again = RunConfig(output=str(tmp_path / "run2"), rounds=3, noise_multiplier=1.0)
    declined = train_rounds(again, node, [1], RUN_B, budget=budget)[0]
    assert isinstance(declined, ClientDecline)
    assert f"lifetime epsilon to {after:.4g}" in declined.reason
    assert f"node-epsilon-budget {budget:g}" in declined.reason
    # Nothing was recorded, and the run's own ε is still zero.
    assert declined.status.epsilon == 0.0 and declined.status.steps == 0
    assert declined.status.lifetime_epsilon == pytest.approx(one.lifetime_epsilon, rel=1e-12)
    # A budget that covers the round lets it train.
    trained = train_rounds(again, node, [1], RUN_B, budget=after * 1.01)[0]
    assert isinstance(trained, ClientTrainReport)
    assert trained.status.lifetime_epsilon == pytest.approx(after, rel=1e-9)


def test_a_target_epsilon_run_that_would_exceed_the_node_budget_is_refused_at_once(tmp_path):
    node = node_config(tmp_path / "node")
    earlier = RunConfig(output=str(tmp_path / "run1"), rounds=2, noise_multiplier=1.0)
    spent = status(train_rounds(earlier, node, [1, 2], RUN_A)[-1])
    target = RunConfig(output=str(tmp_path / "run2"), rounds=2, target_epsilon=1.0)
    data = load_node_data(target, node)
    plan = client_plan(target, len(data.train))
    q = spent.sample_rate
    end = composed_epsilon(
        [(q, 1.0, spent.steps), (plan.sample_rate, plan.noise_multiplier, plan.planned_steps)],
        1e-5,
    )
    budget = round((spent.lifetime_epsilon + end) / 2, 3)
    declined = train_rounds(target, node, [1], RUN_B, budget=budget)[0]
    assert isinstance(declined, ClientDecline)
    reason = declined.reason
    assert f"already spent epsilon {spent.lifetime_epsilon:.4g} in earlier runs" in reason
    assert (
        f"lifetime epsilon to {end:.4g}" in reason and f"node-epsilon-budget {budget:g}" in reason
    )
    assert "target epsilon 1" in reason
    # σ is calibrated for the run's own ε, not shrunk or grown by the earlier run.
    assert declined.status.noise_multiplier == plan.noise_multiplier
    assert composed_epsilon([(q, plan.noise_multiplier, plan.planned_steps)], 1e-5) <= 1.0 + 1e-9


@pytest.mark.parametrize("value", ["many", 0, -1.5, float("inf"), True])
def test_a_malformed_node_budget_is_a_one_line_config_error(value):
    with pytest.raises(ConfigError, match="node-epsilon-budget must be a positive number") as error:
        node_epsilon_budget({"node-epsilon-budget": value})
    assert "\n" not in str(error.value)
    assert (
        node_epsilon_budget({}) is None and node_epsilon_budget({"node-epsilon-budget": "8"}) == 8
    )


def test_the_deployment_ledger_is_keyed_by_the_data_file(tmp_path):
    config = RunConfig(output=str(tmp_path / "out"))
    rng = np.random.default_rng(0)
    data = tmp_path / "a.npz"
    np.savez(data, x=rng.random((30, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 30))
    copy = tmp_path / "elsewhere.npz"
    copy.write_bytes(data.read_bytes())
    other = tmp_path / "b.npz"
    np.savez(other, x=rng.random((30, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 30))
    folder = tmp_path / "ledger"

    def where(path: Path, client_id: int = 0) -> Path:
        node = {"client-id": client_id, "data-file": str(path), "ledger-dir": str(folder)}
        return ledger_path(config, client_id, node)

    expected = folder / f"data-{hashlib.sha256(data.read_bytes()).hexdigest()[:16]}.json"
    assert where(data) == expected
    assert where(data, client_id=3) == expected  # a new client-id keeps the node's ledger
    assert where(copy) == expected  # the same bytes elsewhere: the same data, the same ledger
    assert where(other) != expected  # other data: a ledger of its own
    # Without a ledger-dir (a simulation) it is the run's ledgers/client-<id>.json.
    assert ledger_path(config, 2, {"data-file": str(data)}) == tmp_path / "out" / "ledgers" / (
        "client-2.json"
    )
    # Changed contents are hashed again (the cache is keyed by mtime and size).
    np.savez(data, x=rng.random((31, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 31))
    assert where(data).name == f"data-{hashlib.sha256(data.read_bytes()).hexdigest()[:16]}.json"


def test_a_node_continues_its_data_ledger_under_another_client_id_and_run(tmp_path):
    from privet.simulations.inprocess_engine import server_task_identity

    with server_task_identity(1):
        _data_ledger_under_another_client_id_and_run(tmp_path)


def _data_ledger_under_another_client_id_and_run(tmp_path):
    """Through the ClientApp: the run token comes with the TRAIN message, the ledger is the
    data file's, and the second run (another client-id) reports its own ε and the lifetime."""
    rng = np.random.default_rng(1)
    data = tmp_path / "node.npz"
    np.savez(data, x=rng.random((40, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 40))
    run_config = {"output": str(tmp_path / "out"), "rounds": 1, "noise-multiplier": 1.0}
    weights = ServerEvaluator(RunConfig.from_mapping(run_config)).initial_weights()

    def train(client_id: int, token: str) -> dict:
        node = {"client-id": client_id, "data-file": str(data), "ledger-dir": str(tmp_path / "l")}
        context = Context(
            run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=run_config
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord(weights),
                "config": ConfigRecord({"server-round": 1, "run-token": token}),
            }
        )
        reply = make_client_app()(Message(content, dst_node_id=7, message_type="train"), context)
        assert not reply.has_error(), reply.error
        return dict(reply.content["metrics"])

    first = train(0, RUN_A)
    second = train(5, RUN_B)
    q, steps = first["sample-rate"], first["steps"]
    assert "lifetime-epsilon" not in first  # the same as the run's: not sent
    assert second["epsilon"] == pytest.approx(composed_epsilon([(q, 1.0, steps)], 1e-5), rel=1e-9)
    assert second["lifetime-epsilon"] == pytest.approx(
        composed_epsilon([(q, 1.0, 2 * steps)], 1e-5), rel=1e-9
    )
    assert second["lifetime-steps"] == 2 * steps and second["ledger-entries"] == 2
    (ledger_file,) = (tmp_path / "l").glob("data-*.json")
    ledger = PrivacyLedger.load(ledger_file)
    assert ledger.owner == "data-" + hashlib.sha256(data.read_bytes()).hexdigest()
    assert [token for token, _ in ledger.runs()] == [RUN_A, RUN_B]
    assert ClientPrivacy.from_metrics(second).ledger_digest == ledger.digest()


def test_a_node_keeps_spending_recorded_under_its_client_id_when_it_moves_to_a_data_ledger(
    tmp_path,
):
    """Upgrading: a ledger-dir's client-<id>.json (named before ledgers were keyed by data) is
    carried over as earlier runs, so the node's lifetime ε is not reset."""
    rng = np.random.default_rng(2)
    data = tmp_path / "node.npz"
    np.savez(data, x=rng.random((40, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 40))
    folder = tmp_path / "l"
    old = PrivacyLedger("client-4", "example", 1e-5, folder / "client-4.json")
    old.record(1, [PoissonGaussianSteps(1.0, 0.5, 4)])
    config = RunConfig(output=str(tmp_path / "out"), rounds=1, noise_multiplier=1.0)
    node = {"client-id": 4, "data-file": str(data), "ledger-dir": str(folder)}
    report = status(train_rounds(config, node, [1], RUN_A)[0])
    q, steps = report.sample_rate, report.steps
    assert report.epsilon == pytest.approx(composed_epsilon([(q, 1.0, steps)], 1e-5), rel=1e-9)
    assert report.lifetime_epsilon == pytest.approx(
        composed_epsilon([(0.5, 1.0, 4), (q, 1.0, steps)], 1e-5), rel=1e-9
    )
    assert (folder / "client-4.json").exists()  # the old file is left as it was


def test_another_owners_ledger_is_refused_with_the_right_hint(tmp_path):
    node = node_config(tmp_path / "node")
    config = RunConfig(output=str(tmp_path / "run"), rounds=1, noise_multiplier=1.0)
    PrivacyLedger("client-2", "example", 1e-5, tmp_path / "node" / "client-1.json").save()
    with pytest.raises(ConfigError) as error:
        train_rounds(config, node, [1], RUN_A)
    text = str(error.value)
    assert "is the ledger of client-2" in text and "not of client-1" in text
    assert "move it back where it came from" in text and "output folder" not in text
    assert "\n" not in text
