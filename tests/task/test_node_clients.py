"""The run-config key node-clients: a deployment's partners, node id -> client id."""

import pytest

from privet.task.config import ConfigError, RunConfig, parse_node_clients


def test_node_clients_parse_into_a_mapping():
    text = "13424441046868471386=0, 15699513846707788805=1 7=2"
    assert parse_node_clients(text, 3) == {
        13424441046868471386: 0,
        15699513846707788805: 1,
        7: 2,
    }
    config = RunConfig.from_mapping({"clients": 2, "node-clients": "5=1,6=0"})
    assert config.node_client_map == {5: 1, 6: 0}
    assert RunConfig.from_mapping({"node-clients": ""}).node_client_map is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5:0,6=1", "entry '5:0' must be NODE_ID=CLIENT_ID"),
        ("5=a,6=1", "entry '5=a' must be NODE_ID=CLIENT_ID"),
        ("5=-1,6=1", "entry '5=-1' must be NODE_ID=CLIENT_ID"),
        ("0=0,6=1", "0 is not a Flower node id"),
        (f"{2**64}=0,6=1", "is not a Flower node id"),
        ("5=0,5=1", "lists node 5 twice"),
        ("5=0,6=0", "gives client id 0 to two nodes"),
        ("5=0", "lists 1 nodes but clients=2; list every partner's node once"),
        ("5=0,6=1,7=2", "lists 3 nodes but clients=2"),
    ],
)
def test_bad_node_clients_are_one_line_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping({"clients": 2, "node-clients": text})
