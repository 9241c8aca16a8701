"""Extending Privet without editing it: a model and a data set added through the public registries
(`register_model`, `register_dataset`), and a user's own builder named as `module:function`.

Each runs a real federated simulation, and every client's ε is checked against Opacus' RDP
analysis computed here from what the client's ledger says ran.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from privet.cli import build_parser, main
from privet.simulations.inprocess_engine import run_in_process
from privet.simulations.plan import plan_simulation
from privet.task.config import ConfigError, RunConfig
from privet.task.datasets import (
    IMAGE_SPECS,
    ArrayDataset,
    DataError,
    DatasetOptions,
    TrainTest,
    dataset_names,
    load_dataset,
    register_dataset,
)
from privet.task.models import ModelError, build_model, model_names, register_model
from tests.reference_accounting import opacus_epsilon

HIDDEN = 7  # a width no built-in model has, so the saved model shows which one trained
FEATURES, CLASSES = 6, 3


# -- what a user writes: a model and a data set, registered in their own module -----------------


@register_model("test-tiny-mlp")
def tiny_mlp(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One hidden layer of HIDDEN units."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(feature_shape), HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, num_classes),
    )


@register_dataset("test-blobs", kind="tabular")
def blobs(options: DatasetOptions) -> TrainTest:
    """Three Gaussian blobs in six dimensions from scikit-learn, split by the run's seed."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(
        n_samples=600, n_features=FEATURES, centers=CLASSES, random_state=options.seed
    )
    cut = int(len(y) * (1 - options.test_fraction))
    return TrainTest(
        train=ArrayDataset(x[:cut], y[:cut], CLASSES),
        test=ArrayDataset(x[cut:], y[cut:], CLASSES),
        kind="tabular",
    )


@register_dataset("test-squares", kind="image", feature_shape=(1, 4, 4), num_classes=2)
def squares(options: DatasetOptions) -> TrainTest:
    """Registered as 4x4 images but loads 5x5 ones: the registration's shape is enforced."""
    rng = np.random.default_rng(options.seed)
    images, labels = rng.random((20, 1, 5, 5)), rng.integers(0, 2, 20)
    data = ArrayDataset(images, labels, 2)
    return TrainTest(train=data, test=data, kind="image")


# -- checks -------------------------------------------------------------------------------------


def assert_epsilons_match_opacus(output: Path, printed: str | None = None) -> list[float]:
    """Every client's ε in results.json (and, if given, in the printed output) equals Opacus'."""
    results = json.loads((output / "results.json").read_text())
    delta = results["privacy"]["delta"]
    epsilons = []
    for client in results["clients"]:
        ledger = json.loads((output / "ledgers" / f"client-{client['id']}.json").read_text())
        events = [entry["event"] for entry in ledger["entries"]]
        assert {(e["noise_multiplier"], e["sample_rate"]) for e in events} == {
            (client["noise_multiplier"], client["sample_rate"])
        }
        steps = sum(e["steps"] for e in events)
        assert steps == client["steps"] > 0
        expected = opacus_epsilon(client["sample_rate"], client["noise_multiplier"], steps, delta)
        assert client["epsilon"] == pytest.approx(expected, rel=1e-9), client["id"]
        if printed is not None:
            assert f"{expected:.3f}" in printed, (client["id"], expected)
        epsilons.append(expected)
    assert results["privacy"]["epsilon_max"] == pytest.approx(max(epsilons), rel=1e-9)
    return epsilons


def saved_shapes(output: Path) -> list[tuple[int, ...]]:
    state = torch.load(output / "model.pt", weights_only=True)
    return [tuple(value.shape) for value in state.values()]


# -- registered model and data set, on the in-process engine ---------------------------------------


def test_a_registered_model_and_dataset_train_privately_with_opacus_epsilons(tmp_path):
    config = RunConfig(
        dataset="test-blobs",
        model="test-tiny-mlp",
        clients=3,
        rounds=2,
        local_epochs=1,
        batch_size=16,
        noise_multiplier=1.1,
        output=str(tmp_path / "run"),
        reproducible=True,
    )
    plan = plan_simulation(config)  # the registered data set is planned like a built-in one
    assert (plan.feature_shape, plan.num_classes) == ((FEATURES,), CLASSES)
    results = run_in_process(config)
    assert results.finished
    assert len(results.clients) == 3
    epsilons = assert_epsilons_match_opacus(tmp_path / "run")
    # q is the real sampler's rate: batch / the client's training examples (from the plan)
    rates = {c.client_id: c.sample_rate for c in results.clients}
    for client in plan.clients:
        assert rates[client.client_id] == pytest.approx(16 / client.train_examples, rel=1e-12)
    assert [c.epsilon for c in sorted(results.clients, key=lambda c: c.client_id)] == (
        pytest.approx(epsilons, rel=1e-9)
    )
    # the registered model trained on the registered data: 6 features → 7 hidden → 3 classes
    assert saved_shapes(tmp_path / "run") == [
        (HIDDEN, FEATURES),
        (HIDDEN,),
        (CLASSES, HIDDEN),
        (3,),
    ]
    recorded = json.loads((tmp_path / "run" / "results.json").read_text())["config"]
    assert (recorded["dataset"], recorded["model"]) == ("test-blobs", "test-tiny-mlp")


def test_registered_names_are_offered_by_the_cli_and_accepted_by_the_config(capsys):
    assert {"test-tiny-mlp", "logreg", "cnn"} <= set(model_names())
    assert {"test-blobs", "digits", "csv"} <= set(dataset_names())
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["simulate", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for name in ("test-tiny-mlp", "test-blobs", "logreg", "mlp-large", "fashion-mnist"):
        assert name in help_text
    assert "MODULE:FUNCTION" in help_text
    # a registered tabular data set may be split by a column; an image one may not
    with pytest.raises(ConfigError, match="needs tabular data .*test-blobs"):
        RunConfig(dataset="digits", partition="column", partition_column="x")


def test_a_registration_is_checked_and_enforced():
    assert IMAGE_SPECS["test-squares"] == ((1, 4, 4), 2)  # a live view: nodes can check files
    with pytest.raises(DataError, match=r"shape \(1, 5, 5\).*registered with shape \(1, 4, 4\)"):
        load_dataset("test-squares")
    with pytest.raises(DataError, match="already registered"):
        register_dataset("test-blobs", kind="tabular")(lambda options: options)
    with pytest.raises(ModelError, match="already registered"):
        register_model("test-tiny-mlp")(lambda shape, classes: nn.Linear(1, 1))
    with pytest.raises(ModelError, match="module:function"):
        register_model("mine:build")
    with pytest.raises(ModelError, match=r"cannot be called as builder\(feature_shape"):
        register_model("test-no-arguments")(lambda: nn.Linear(1, 1))
    with pytest.raises(DataError, match="kind must be one of image, tabular, text"):
        register_dataset("test-audio", kind="audio")
    assert "test-no-arguments" not in model_names()


# -- a user's own builder as module:function -------------------------------------------------------

NETS = """
import math
from torch import nn


def build(feature_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(feature_shape), 5), nn.ReLU(),
                         nn.Linear(5, num_classes))


def not_a_model(feature_shape, num_classes):
    return 42


NOT_CALLABLE = "build"


def no_arguments():
    return nn.Linear(1, 1)
"""


@pytest.fixture
def nets(tmp_path, monkeypatch) -> str:
    """A user's module of builders, importable as `privet_user_nets` (on sys.path)."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "privet_user_nets.py").write_text(NETS)
    (folder / "privet_user_broken.py").write_text("import not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(folder))
    return "privet_user_nets"


def test_simulate_with_a_module_function_model_end_to_end(tmp_path, nets, capsys):
    output = tmp_path / "out"
    argv = ["simulate", "--model", f"{nets}:build", "--engine", "in-process"]
    argv += ["--clients", "2", "--rounds", "1", "--local-epochs", "1", "--output", str(output)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert_epsilons_match_opacus(output, printed)
    # digits (64 features) through the user's 5-unit hidden layer
    assert saved_shapes(output) == [(5, 64), (5,), (10, 5), (10,)]
    results = json.loads((output / "results.json").read_text())
    assert results["config"]["model"] == f"{nets}:build"  # recorded as given
    assert results["model"]["architecture"] == f"{nets}:build"
    # the same string in a run config (Flower's, a TOML file) is imported and accepted too
    assert RunConfig.from_mapping({"model": f"{nets}:build"}).model == f"{nets}:build"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("resnet", "invalid choice: 'resnet' (choose from 'logreg', 'mlp', 'mlp-large', 'cnn'"),
        ("privet_user_missing:build", "cannot import module 'privet_user_missing'"),
        (
            "privet_user_broken:build",
            "cannot import module 'privet_user_broken' (ModuleNotFoundError",
        ),
        ("privet_user_nets:biuld", "module 'privet_user_nets' has no function 'biuld'"),
        ("privet_user_nets:NOT_CALLABLE", "'NOT_CALLABLE' in 'privet_user_nets' is a str"),
        ("privet_user_nets:no_arguments", r"cannot be called as builder(feature_shape"),
        ("privet_user_nets:not_a_model", "returned int, not a torch.nn.Module"),
        ("privet_user_nets:", "is not module:function; write it like mypkg.nets:build"),
    ],
)
def test_a_bad_model_is_one_line_that_names_it_and_writes_nothing(
    tmp_path, nets, capsys, model, message
):
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(["simulate", "--model", model, "--output", str(output)]))
    assert exited.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("privet: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not output.exists()


def test_a_bad_module_function_in_a_run_config_is_a_config_error(nets):
    with pytest.raises(ConfigError, match="make it importable .* on every node"):
        RunConfig.from_mapping({"model": "privet_user_missing:build"})
    with pytest.raises(ModelError, match="returned int, not a torch.nn.Module"):
        build_model(f"{nets}:not_a_model", (4,), 2)
