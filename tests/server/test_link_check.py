"""The link check: bare exchanges with every node timed before round 1, no privacy spent."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from privet.client.app import make_client_app
from privet.server.evaluation import ServerEvaluator
from privet.server.link_check import check_links
from privet.simulations.faults import Dropout
from privet.simulations.inprocess_engine import InProcessGrid, run_in_process
from privet.task.config import ConfigError, RunConfig
from privet.task.messages import ARRAYS_RECORD, LINK_CHECK_ACTION

SMALL = {"clients": 3, "rounds": 1, "local_epochs": 1, "noise_multiplier": 1.0, "seed": 2}


def test_a_node_sends_back_what_it_got_without_its_data_or_ledger(tmp_path):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    app = make_client_app(RunConfig(output=str(tmp_path / "out")))
    # A node config that could not load any data: the link check must not try.
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"data-file": str(tmp_path / "absent.csv")},
        state=RecordDict(),
        run_config={},
    )
    arrays = ArrayRecord([np.arange(12, dtype=np.float32).reshape(3, 4)])
    kind = f"{MessageType.QUERY}.{LINK_CHECK_ACTION}"
    reply = app(
        Message(RecordDict({ARRAYS_RECORD: arrays}), dst_node_id=7, message_type=kind), context
    )
    assert not reply.has_error()
    [echoed] = reply.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays()
    np.testing.assert_array_equal(echoed, np.arange(12, dtype=np.float32).reshape(3, 4))
    empty = app(Message(RecordDict(), dst_node_id=7, message_type=kind), context)
    assert not empty.has_error() and not empty.content.array_records
    assert not list(tmp_path.rglob("*.json"))  # no ledger written


def test_a_run_reports_its_link_check_and_spends_nothing_on_it(tmp_path):
    checked = run_in_process(RunConfig(**SMALL, link_check=2, output=str(tmp_path / "checked")))
    plain = run_in_process(RunConfig(**SMALL, output=str(tmp_path / "plain")))
    results = json.loads((tmp_path / "checked" / "results.json").read_text())
    link = results["link_check"]
    assert link["nodes"] == 3 and link["exchanges"] == 2 and link["missing"] == 0
    assert len(link["empty_s"]) == len(link["model_s"]) == 2
    assert all(s > 0 for s in link["empty_s"] + link["model_s"])
    assert link["model_median_s"] == pytest.approx(float(np.median(link["model_s"])), abs=1e-4)
    initial = ServerEvaluator(RunConfig(**SMALL, output=str(tmp_path / "x"))).initial_weights()
    assert link["model_bytes"] == sum(np.asarray(w).nbytes for w in initial) > 0
    assert json.loads((tmp_path / "plain" / "results.json").read_text())["link_check"] is None
    # The same ε and the same ledgers: a link check spends no privacy.
    assert [c.epsilon for c in checked.clients] == [c.epsilon for c in plain.clients]
    for ledger in (tmp_path / "plain" / "ledgers").glob("*.json"):
        mine = json.loads((tmp_path / "checked" / "ledgers" / ledger.name).read_text())
        assert len(mine["entries"]) == len(json.loads(ledger.read_text())["entries"])


def test_a_node_that_fails_the_check_is_counted_missing_and_the_run_goes_on(tmp_path):
    config = RunConfig(**SMALL, link_check=1, output=str(tmp_path / "out"))
    fails = Dropout.at(f"{MessageType.QUERY}.{LINK_CHECK_ACTION}", [0])
    results = run_in_process(config, client_mods=[fails])
    assert results.finished
    assert results.link_check is not None and results.link_check.missing == 2  # both kinds
    assert "2 replies missing" in results.link_check.line()
    arrays = ArrayRecord([np.zeros(5, dtype=np.float32)])
    with pytest.raises(ValueError, match="at least one exchange and one node"):
        check_links(InProcessGrid(make_client_app(config), 1), [], arrays, 1, timeout=1.0)


@pytest.mark.parametrize("value", [-1, 101])
def test_link_check_out_of_range_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"^link-check must be between 0 and 100, got"):
        RunConfig(link_check=value)
