"""The server checkpoint: atomic, verified, bound to its run configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privet.cli import main
from server.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    ServerCheckpoint,
    check_same_run,
    load_checkpoint,
    save_checkpoint,
)
from task.config import RunConfig


def saved(tmp_path, server_round=2, config=None):
    config = config or RunConfig(output=str(tmp_path))
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]
    checkpoint = ServerCheckpoint(server_round, config.to_json_dict(), weights, {"a": 1}, {})
    save_checkpoint(tmp_path, checkpoint)
    return checkpoint


def test_round_trip_keeps_only_the_latest_weights(tmp_path):
    saved(tmp_path, 1)
    first = saved(tmp_path, 2)
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 2 and loaded.strategy == {"a": 1}
    for a, b in zip(loaded.weights, first.weights, strict=True):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    assert sorted(p.name for p in tmp_path.glob("checkpoint-model-*")) == ["checkpoint-model-2.npz"]


def test_corruption_and_a_different_configuration_are_refused(tmp_path):
    saved(tmp_path)
    weights = tmp_path / "checkpoint-model-2.npz"
    weights.write_bytes(weights.read_bytes()[:-3] + b"xyz")
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid Privet checkpoint"):
        load_checkpoint(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    checkpoint = saved(other, config=RunConfig(output=str(other), clients=7))
    with pytest.raises(CheckpointError, match="clients=7"):
        check_same_run(checkpoint, RunConfig(output=str(other), clients=5))
    check_same_run(checkpoint, RunConfig(output=str(other), clients=7, resume=True))


def test_resume_errors_are_one_line(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing to resume" in err
    saved(tmp_path, 5, RunConfig(output=str(tmp_path), rounds=5))
    assert main(["resume", str(tmp_path)]) == 2
    assert "finished all 5 rounds" in capsys.readouterr().err
    document = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    document["schema_version"] = 99
    (tmp_path / CHECKPOINT_FILE).write_text(json.dumps(document))
    assert main(["resume", str(tmp_path)]) == 2
    assert "schema version 99" in capsys.readouterr().err


def test_a_new_run_refuses_a_folder_with_a_checkpoint(tmp_path, capsys):
    saved(tmp_path, 1)
    assert main(["simulate", "--output", str(tmp_path), "--rounds", "1"]) == 2
    assert "checkpoint.json already exists" in capsys.readouterr().err
