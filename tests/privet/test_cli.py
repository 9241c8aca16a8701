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


CLI_RUN = ["simulate", "--clients", "2", "--rounds", "2", "--seed", "3"]


def run_cli(output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PRIVET, *CLI_RUN, "--output", str(output), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )


@pytest.mark.long
def without_timing(rounds: list[dict]) -> list[dict]:
    """Round entries without their step times: wall-clock, never the same twice (bytes stay)."""
    return [
        {
            **entry,
            "cost": {k: v for k, v in entry["cost"].items() if not k.startswith("step_seconds")},
        }
        for entry in rounds
    ]


def without_digests(results: dict) -> list[dict]:
    """results.json's clients without their ledgers' digests.

    Each run tags its ledger entries with a run token of its own (so that a node's lifetime
    ledger tells runs apart), so two runs' ledgers differ in their tokens even when every release
    is the same; the entry counts must still agree.
    """
    return [
        {**client, "ledger": {"entries": client["ledger"]["entries"]}}
        for client in results["clients"]
    ]


def test_simulate_end_to_end_is_reproducible_for_a_seed(tmp_path):
    # The same seed twice: on the default engine (Flower's runtime, the README's command) and in
    # process. Equal results need both to be deterministic for a seed and to agree with each
    # other, which is also what lets the tests use the in-process engine as a reference.
    # The README's command runs as users run it (a process of its own, Flower's runtime); the
    # in-process references run the same CLI code in this process (no second torch import).
    first = run_cli(tmp_path / "a")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Privacy spent per client" in first.stdout and "Results:" in first.stdout
    assert main([*CLI_RUN, "--output", str(tmp_path / "b"), "--engine", "in-process"]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert without_timing(a["rounds"]) == without_timing(b["rounds"])
    assert without_digests(a) == without_digests(b)
    assert len(a["rounds"]) == 2 and len(a["clients"]) == 2
    model_a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    model_b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(model_a[key], model_b[key]) for key in model_a)
    assert "reproducible simulation" in a["privacy"]["noise_source"]
    assert "does not know the seed" in a["privacy"]["noise_source"]
    # Without --reproducible the noise comes from the OS: same seed, same data, same engine as
    # run b, another model.
    fresh = [
        *CLI_RUN,
        "--output",
        str(tmp_path / "c"),
        "--no-reproducible",
        "--engine",
        "in-process",
    ]
    assert main(fresh) == 0
    c = json.loads((tmp_path / "c" / "results.json").read_text())
    assert "os.urandom" in c["privacy"]["noise_source"]
    assert without_digests(c) == without_digests(a)  # the same privacy spent
    model_c = torch.load(tmp_path / "c" / "model.pt", weights_only=True)
    assert not all(torch.equal(model_b[key], model_c[key]) for key in model_b)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--device", "cuda", "--engine", "in-process"],
        ["simulate", "--device", "cuda"],
        ["sweep", "--device", "cuda", "--vary", "seed=1,2"],
    ],
)
def test_cuda_without_a_gpu_fails_before_any_work_in_one_line(capsys, tmp_path, argv):
    """It used to print a traceback per client and round, then exit 0 with an untrained model."""
    output = tmp_path / "run"
    line = one_line_error(capsys, [*argv, "--output", str(output)])
    assert "no CUDA GPU is visible; use --device cpu" in line
    assert not output.exists()


def test_a_run_that_trains_nothing_exits_non_zero_and_says_why(tmp_path):
    """--lr 1e308: every client fails every round; no longer exit 0 with finished: true."""
    done = run_cli(tmp_path / "run", "--lr", "1e308", "--engine", "in-process")
    assert done.returncode == 1, done.stderr[-3000:]
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["finished"] is False and data["rounds_without_update"] == [1, 2]
    assert data["failure_reason"].startswith(
        "nothing trained: no client update reached the model in any of the 2 rounds; round 2: "
        "2 clients failed (first: "
    )
    assert "The run failed: nothing trained" in " ".join(done.stdout.split())
    assert done.stderr.count("Traceback") <= 1  # the same failure is shown once, then one line


# -- issue 12 items 6, 8, 10: refused up front, in one line, with nothing written ---------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--secure-aggregation", "--secagg-clip-norm", "1e308"],
            "secagg-clip-norm must be between 1e-06 and 1e+06, got 1e+308",
        ),
        (
            ["--client-noise-multiplier", "1", "--client-clip-norm", "1e308"],
            "client-clip-norm must be between 1e-06 and 1e+06, got 1e+308",
        ),
        (
            ["--client-noise-multiplier", "1e-300"],
            "client-noise-multiplier must be between 0.001 and 1000, got 1e-300",
        ),
        (
            ["--client-noise-multiplier", "1", "--adaptive-clipping"]
            + ["--clip-count-stddev", "1e308"],
            "clip-count-stddev must be at most the 5 clients expected per round",
        ),
        (["--noise-multiplier", "1e200"], "noise-multiplier must be between 0.001 and 1000"),
        (
            ["--accountant", "pld", "--noise-multiplier", "0.01"],
            "the PLD accountant would need 9e+08 grid points",
        ),
        (
            ["--noise-multiplier", "1", "--local-epochs", "1000000000"],
            "would run 4.5e+10 DP-SGD steps (5 rounds × 1000000000 local epochs × 9 batches), "
            "more than the 1e+07",
        ),
        (["--secagg-levels", "1024"], "--secagg-levels has no effect without --secure-aggregation"),
        (["--client-clip-norm", "5"], "--client-clip-norm has no effect without client-level DP"),
        (
            ["--client-noise-multiplier", "1", "--target-quantile", "0.3"],
            "--target-quantile has no effect without --adaptive-clipping",
        ),
        (["--alpha", "0.1"], "--alpha has no effect without --partition dirichlet"),
        (
            ["--dataset", "csv", "--data-file", "/dev/zero", "--label-column", "y"],
            "CSV file /dev/zero is a character device, not a regular file",
        ),
    ],
)
def test_values_that_crashed_or_hung_are_refused_before_any_work(capsys, tmp_path, flags, message):
    """Each of these crashed after work started (leaving ledgers/ and model.pt), hung, or ran
    with a setting silently ignored."""
    output = tmp_path / "out"
    line = one_line_error(capsys, ["simulate", "--output", str(output), *flags])
    assert message in line
    assert not output.exists()


def test_outputs_that_cannot_be_folders_are_one_line(capsys, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for output, reason in (
        ("/proc/x", "--output /proc/x cannot be created in /proc"),
        (str(a_file / "sub"), f"cannot be created: {a_file} is a file, not a folder"),
        (str(a_file), "is a file, not a folder"),
        (str(tmp_path / ("o" * 300)), "has a name of 300 bytes; this file system allows 255"),
    ):
        assert reason in one_line_error(capsys, ["simulate", "--output", output])
    assert a_file.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["a-file"]


def test_a_data_file_that_is_a_folder_is_named_as_one(capsys, tmp_path):
    line = one_line_error(
        capsys,
        ["simulate", "--dataset", "csv", "--data-file", str(tmp_path), "--label-column", "y"]
        + ["--output", str(tmp_path / "out")],
    )
    assert f"CSV file {tmp_path} is a folder, not a file" in line


def test_a_key_given_twice_in_a_config_file_is_one_line(capsys, tmp_path):
    file = tmp_path / "run.toml"
    file.write_text("local-epochs = 1\nlocal_epochs = 3\n")
    output = tmp_path / "out"
    line = one_line_error(capsys, ["simulate", "--config", str(file), "--output", str(output)])
    assert "sets local-epochs twice (as 'local-epochs' and 'local_epochs')" in line
    file.write_text("secagg-levels = 1024\n")  # given in the file, ignored by the run
    line = one_line_error(capsys, ["simulate", "--config", str(file), "--output", str(output)])
    assert "--secagg-levels has no effect without --secure-aggregation" in line
    assert not output.exists()


def test_a_numeric_csv_column_with_one_nan_stays_numeric_and_the_counts_are_reported(tmp_path):
    """Issue 12 item 7: one `nan` in 20,000 rows made 20,001 one-hot inputs (3.4 GB RSS)."""
    path = tmp_path / "data.csv"
    lines = ["a,b,label"] + [f"{i % 17},{i * 0.25},{i % 2}" for i in range(400)]
    lines[123] = "nan,3.0,1"
    lines[200] = "5,,0"
    path.write_text("\n".join(lines) + "\n")
    output = tmp_path / "run"
    done = run_cli(
        output,
        *["--dataset", "csv", "--data-file", str(path), "--label-column", "label"],
        *["--rounds", "1", "--engine", "in-process"],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    console = " ".join(done.stdout.split())
    assert "Missing values:" in console and "2 of 400 row(s) have missing feature values" in console
    assert "dropped 2 example(s) (--missing drop" in console
    data = json.loads((output / "results.json").read_text())
    assert data["missing_values"] == {
        "policy": "drop",
        "rows": 400,
        "rows_with_missing_values": 2,
        "dropped_rows": 2,
        "missing_by_column": {"a": 1, "b": 1},
        "not_numbers_by_column": {"a": 1},
    }
    assert data["config"]["missing"] == "drop"
    model = torch.load(output / "model.pt", weights_only=True)
    assert next(iter(model.values())).shape[-1] == 2  # two numeric inputs, not 2 + 18 one-hot
