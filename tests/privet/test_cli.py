"""The `privet` command as a user meets it: bad input in one line, a real run end to end."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from privet.cli import build_parser, config_from_args, main
from tests.conftest import REPO_ROOT

PRIVET = str(Path(sys.executable).parent / "privet")


def one_line_error(capsys, argv) -> str:
    """Run the CLI in-process; assert exit 2 and exactly one `privet: error:` line on stderr."""
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(argv))
    assert exited.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("privet: error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--model", "resnet"], "invalid choice: 'resnet'"),
        (["--batch-size", "0"], "batch-size must be a positive integer"),
        (["--max-grad-norm", "0"], "max-grad-norm must be positive"),
        (["--max-grad-norm", "-2"], "max-grad-norm must be positive"),
        (["--clients", "5000"], "5000 clients but only 1437 training examples"),
        (["--delta", "0.01"], "not below 1/n"),
        (["--target-epsilon", "1e-9"], "unreachable"),
        (["--noise-multiplier", "1", "--target-epsilon", "2"], "not allowed with argument"),
        (["--dataset", "mnist"], "pass --data-dir"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "does not exist"),
        (
            ["--dataset", "csv", "--data-file", "/nonexistent.csv", "--label-column", "y"],
            "nonexistent.csv",
        ),
        (
            [
                "--model",
                "cnn",
                "--dataset",
                "adult",
                "--data-dir",
                str(REPO_ROOT.parent / "shared/data/uci-adult"),
            ],
            "needs image data",
        ),
        (["--rounds", "three"], "invalid int value"),
        (["--clients-per-round", "9"], "clients-per-round must be between 1 and clients"),
        (["--adaptive-clipping"], "adaptive-clipping needs client-level DP"),
        (["--client-epsilon-budget", "2"], "client-epsilon-budget needs client-level DP"),
        (["--epsilon-budget", "-1"], "epsilon-budget must be positive"),
        (["--accountant", "moments"], "invalid choice: 'moments'"),
        (["--client-noise-multiplier", "1", "--delta", "0.3"], "not below 1/clients"),
        (["--client-target-epsilon", "1e-9"], "unreachable"),
        (["--secure-aggregation", "--secagg-threshold", "0.4"], "secagg-threshold must be a"),
        (["--secure-aggregation", "--secagg-threshold", "7"], "more than the 5 clients"),
        (["--secure-aggregation", "--secagg-degree", "3"], "secagg-degree must be an even"),
        (["--secagg-levels", "1"], "secagg-levels must be between 2"),
        (["--secagg-timeout", "0"], "secagg-timeout must be positive"),
        (["--round-timeout", "-5"], "round-timeout must be positive"),
        (["--secagg-clip-norm", "0"], "secagg-clip-norm must be positive"),
        (["--secure-aggregation", "--clients-per-round", "1"], "at least 2 clients per round"),
        (  # conditional rounding cannot keep an MLP's update within S on 16 grid points
            ["--secure-aggregation", "--client-noise-multiplier", "1", "--secagg-levels", "16"]
            + ["--model", "mlp"],
            "use more levels",
        ),
        (
            ["--client-noise-multiplier", "1", "--secagg-clip-norm", "2"],
            "drop --secagg-clip-norm",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, flags, message):
    output = tmp_path / "out"
    line = one_line_error(capsys, ["simulate", "--output", str(output), *flags])
    assert message in line
    assert not output.exists()


def test_corrupt_mnist_file_is_named(capsys, tmp_path, mnist_dir):
    data = tmp_path / "mnist"
    data.mkdir()
    for name in os.listdir(mnist_dir):
        (data / name).write_bytes((mnist_dir / name).read_bytes())
    broken = data / "train-labels-idx1-ubyte.gz"
    broken.write_bytes(gzip.compress(b"\x00\x00\x08\x01garbage"))
    line = one_line_error(
        capsys,
        [
            "simulate",
            "--dataset",
            "mnist",
            "--data-dir",
            str(data),
            "--output",
            str(tmp_path / "o"),
        ],
    )
    assert "train-labels-idx1-ubyte.gz" in line


def test_existing_results_are_never_overwritten_silently(capsys, tmp_path):
    (tmp_path / "results.json").write_text("{}")
    line = one_line_error(capsys, ["simulate", "--output", str(tmp_path)])
    assert "--overwrite" in line
    assert (tmp_path / "results.json").read_text() == "{}"


def test_config_file_values_and_flag_precedence(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('clients = 4\nrounds = 2\nnoise-multiplier = 1.5\nmodel = "mlp"\n')
    args = build_parser().parse_args(
        ["simulate", "--config", str(file), "--rounds", "3", "--output", str(tmp_path / "o")]
    )
    config = config_from_args(args)
    assert (config.clients, config.rounds, config.model) == (4, 3, "mlp")
    assert config.noise_multiplier == 1.5 and config.target_epsilon is None
    args = build_parser().parse_args(
        [
            "simulate",
            "--config",
            str(file),
            "--target-epsilon",
            "2",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    config = config_from_args(args)
    assert config.target_epsilon == 2.0 and config.noise_multiplier is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("clients = [", "not valid TOML"),
        ("colour = 'red'", "unknown configuration key 'colour'"),
        ("clients = 'many'", "clients must be an integer"),
    ],
)
def test_bad_config_files_are_one_line_errors(capsys, tmp_path, content, message):
    file = tmp_path / "run.toml"
    file.write_text(content)
    line = one_line_error(
        capsys, ["simulate", "--config", str(file), "--output", str(tmp_path / "o")]
    )
    assert message in line


def test_missing_config_file(capsys, tmp_path):
    line = one_line_error(capsys, ["simulate", "--config", str(tmp_path / "none.toml")])
    assert "does not exist" in line


def run_cli(output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            PRIVET,
            "simulate",
            "--clients",
            "2",
            "--rounds",
            "2",
            "--seed",
            "3",
            "--output",
            str(output),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )


def test_simulate_end_to_end_is_reproducible_for_a_seed(tmp_path):
    first, second = run_cli(tmp_path / "a"), run_cli(tmp_path / "b")
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Privacy spent per client" in first.stdout and "Results:" in first.stdout
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["rounds"] == b["rounds"] and a["clients"] == b["clients"]
    assert len(a["rounds"]) == 2 and len(a["clients"]) == 2
    model_a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    model_b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(model_a[key], model_b[key]) for key in model_a)
    assert "reproducible simulation" in a["privacy"]["noise_source"]
    assert "does not know the seed" in a["privacy"]["noise_source"]
    # Without --reproducible the noise comes from the OS: same seed, same data, another model.
    fresh = run_cli(tmp_path / "c", "--no-reproducible")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    c = json.loads((tmp_path / "c" / "results.json").read_text())
    assert "os.urandom" in c["privacy"]["noise_source"]
    assert c["clients"] == a["clients"]  # the same privacy spent
    model_c = torch.load(tmp_path / "c" / "model.pt", weights_only=True)
    assert not all(torch.equal(model_a[key], model_c[key]) for key in model_a)
