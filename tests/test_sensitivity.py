"""The sensitivity of every release, measured from the code that makes it.

An accountant turns a noise multiplier into ε, and a noise multiplier is noise divided by
sensitivity: the most one unit (one example, one client) can move what is released. Papers state
that sensitivity for the mechanism they describe; these tests measure it for the mechanism Privet
runs. Each feeds the release function two neighbouring inputs (one example or one client added),
with the noise held fixed, constructs the worst cases (an update far outside the clip bound,
norms at exactly the bound or just above it within the float tolerance, all clients within the
clip bound against none, coordinates on the rounding grid's half steps), and compares the largest
change of the released value with the sensitivity the accountant is given.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privet.client.local_plan import LocalPlan
from privet.client.trainer import train_locally
from privet.privacy.secagg import QuantizationSpec, SecAggConfig, SecAggServer, build_graph
from privet.privacy.secagg.protocol import SecAggClient, run_round
from privet.privacy.secagg.quantization import rounded_norm
from privet.privacy.secagg.update_vector import decode_update_sum, encode_update
from privet.server.aggregation import CLIP_TOLERANCE, ClientUpdate, l2_norm
from privet.server.client_dp import make_aggregator, plan_client_level
from privet.task.config import RunConfig
from privet.task.datasets import ArrayDataset
from privet.task.models import build_model, get_weights

FLOAT_SLACK = 1e-9  # relative: float64 summation order, nothing more


# -- example level: one DP-SGD step (Opacus, through Privet's trainer) ----------------------------


def _one_step_gradient_sum(model_name: str, data: ArrayDataset, clip: float) -> np.ndarray:
    """Σ of clipped per-example gradients of one noiseless DP-SGD step, read off the weights.

    With q = 1 every example is in the batch; Opacus divides the sum by the expected batch size
    n·q and SGD subtracts lr times that, so the sum is −(w' − w)·n / lr.
    """
    n = len(data)
    model = build_model(model_name, data.feature_shape, data.num_classes, seed=0)
    before = np.concatenate([w.ravel() for w in get_weights(model)]).astype(np.float64)
    plan = LocalPlan(
        num_examples=n, sample_rate=1.0, steps_per_round=1, planned_rounds=1, noise_multiplier=0.0
    )
    lr = 0.5
    result = train_locally(
        model,
        data,
        plan,
        batch_size=n,
        max_grad_norm=clip,
        learning_rate=lr,
        local_epochs=1,
        seed=3,
        device=torch.device("cpu"),
    )
    after = np.concatenate([w.ravel() for w in result.weights]).astype(np.float64)
    assert result.events[0].noise_multiplier == 0.0 and result.events[0].sample_rate == 1.0
    return -(after - before) * n / lr


@pytest.mark.parametrize("model_name", ["logreg", "cnn"])  # ghost clipping; per-sample hooks
def test_one_dp_sgd_step_moves_by_at_most_the_clip_norm_per_example(model_name):
    rng = np.random.default_rng(0)
    n, clip = 16, 0.7
    features = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    base = ArrayDataset(features, labels, 3)
    worst = []
    for scale in (1e3, 1.0, 1e-3):  # a huge gradient, an ordinary one, a tiny one
        extra = (rng.normal(size=(1, 1, 8, 8)) * scale).astype(np.float32)
        neighbour = ArrayDataset(
            np.concatenate([features, extra]), np.concatenate([labels, [2]]), 3
        )
        change = _one_step_gradient_sum(model_name, neighbour, clip) - _one_step_gradient_sum(
            model_name, base, clip
        )
        worst.append(float(np.linalg.norm(change)))
    # float32 training: the recovered sum carries float32 round-off
    assert max(worst) <= clip * (1 + 1e-4), worst
    assert worst[0] == pytest.approx(clip, rel=1e-3)  # the huge gradient was clipped to C exactly


# -- client level: the noised update sum and the adaptive-clipping count --------------------------


def _adaptive_config(**overrides: object) -> RunConfig:
    settings: dict[str, object] = {
        "clients": 20,
        "clients_per_round": 5,
        "client_noise_multiplier": 1.0,
        "client_clip_norm": 1.5,
        "adaptive_clipping": True,
        "clip_count_stddev": 2.0,
    }
    settings.update(overrides)
    return RunConfig(**settings)  # type: ignore[arg-type]


def _release(config: RunConfig, updates: list[ClientUpdate], shapes, seed: int = 7):
    """One round's release by the server's real aggregator, with the noise drawn from `seed`."""
    plan = plan_client_level(config)
    assert plan is not None
    aggregator = make_aggregator(plan, config, np.random.default_rng(seed))
    return plan, aggregator.aggregate(updates, shapes)


def _update(client_id: int, norm: float, rng: np.random.Generator, within: bool) -> ClientUpdate:
    parts = [rng.normal(size=(4, 3)), rng.normal(size=(3,))]
    scale = norm / l2_norm(parts)
    return ClientUpdate(client_id, [(p * scale).astype(np.float32) for p in parts], 10, within)


@pytest.mark.parametrize(
    "extra_norm",
    [1.0, 1 + 0.9 * CLIP_TOLERANCE],  # exactly S; above S within the float slack
)
def test_the_noised_update_sum_moves_by_at_most_the_clip_norm(extra_norm):
    config = _adaptive_config()
    clip = config.client_clip_norm
    rng = np.random.default_rng(1)
    shapes = [(4, 3), (3,)]
    others = [_update(i, clip * rng.uniform(0.2, 1.0), rng, True) for i in range(4)]
    extra = _update(9, clip * extra_norm, rng, True)
    plan, without = _release(config, others, shapes)
    _, with_extra = _release(config, [*others, extra], shapes)
    assert with_extra.aggregated == [0, 1, 2, 3, 9]
    moved = l2_norm(
        [
            (a - b) * plan.expected_clients
            for a, b in zip(with_extra.mean_update, without.mean_update, strict=True)
        ]
    )
    # The accountant's update-sum multiplier z_Δ is noise / S: the sum may move by S, no more.
    assert moved <= clip * (1 + FLOAT_SLACK)
    assert moved == pytest.approx(clip, rel=1e-6)


@pytest.mark.parametrize("extra_within", [True, False])
@pytest.mark.parametrize("others_within", [True, False])  # all within the clip bound vs none
def test_the_adaptive_clipping_count_moves_by_its_recorded_sensitivity(others_within, extra_within):
    config = _adaptive_config()
    rng = np.random.default_rng(2)
    shapes = [(4, 3), (3,)]
    others = [_update(i, 0.5, rng, others_within) for i in range(5)]
    extra = _update(9, 0.5, rng, extra_within)
    plan, without = _release(config, others, shapes)
    _, with_extra = _release(config, [*others, extra], shapes)
    moved = abs(with_extra.noised_within_fraction - without.noised_within_fraction)
    moved *= plan.expected_clients  # back from a fraction to counts
    event = plan.round_event()
    # What the ledger charges for the count: noise std over this sensitivity.
    assert event.count_noise_std == config.count_stddev
    assert moved <= event.count_sensitivity * (1 + FLOAT_SLACK)
    assert moved == pytest.approx(event.count_sensitivity, rel=1e-9)  # the worst case is reached
    assert plan.adaptive_summary()["count_sensitivity"] == event.count_sensitivity


# -- secure aggregation: what the unmasked sum can move by ----------------------------------------


def _secure_sum(inputs: dict[int, np.ndarray], spec: QuantizationSpec, length: int) -> np.ndarray:
    """The real protocol's unmasked sum of `inputs` (every client survives)."""
    ids = sorted(inputs)
    graph = build_graph(ids)
    config = SecAggConfig(
        round_id=1, threshold=len(ids) // 2 + 1, bits=int(spec.bits), vector_length=length
    )
    clients = [SecAggClient(u, config) for u in ids]
    return run_round(clients, SecAggServer(config, graph), inputs).aggregate


@pytest.mark.parametrize("shape", ["spike", "spread"])
def test_the_secure_sum_moves_by_at_most_the_clip_norm_after_rounding(shape):
    # Coarse grid, many coordinates: unconditioned stochastic rounding would inflate the norm of
    # an update at exactly S by up to step·√d (here 0.78·S).
    clip, d, levels, n = 1.0, 10_000, 2**8, 3
    spec = QuantizationSpec(clip, n + 1, levels=levels)
    rng = np.random.default_rng(3)
    if shape == "spike":  # one coordinate at S, every other at 0: a half step off the grid
        update = np.zeros(d)
        update[0] = clip
    else:
        update = rng.normal(size=d)
        update *= clip / np.linalg.norm(update)

    def encoded(seed: int) -> np.ndarray:
        return encode_update(
            [update], 1.0, True, spec, np.random.default_rng(seed), norm_bound=clip
        ).values

    others = {u: encoded(10 + u) for u in range(n)}
    extra = encoded(99)
    assert rounded_norm(extra[:-1], spec) <= clip  # what the client adds, as integers stand for
    without, count_without = decode_update_sum(_secure_sum(others, spec, d + 1), n, spec, [(d,)])
    with_extra, count_with = decode_update_sum(
        _secure_sum({**others, 7: extra}, spec, d + 1), n + 1, spec, [(d,)]
    )
    moved = float(np.linalg.norm(with_extra[0] - without[0]))
    assert moved <= clip * (1 + FLOAT_SLACK)
    assert moved > 0.9 * clip  # the bound holds by rounding, not by shrinking the update away
    assert count_with - count_without == 1


def test_plain_rounding_would_exceed_the_bound_the_noise_is_calibrated_to():
    """Why the rounding is conditional: the spike above, rounded without the bound."""
    clip, d = 1.0, 10_000
    spec = QuantizationSpec(clip, 4, levels=2**8)
    update = np.zeros(d)
    update[0] = clip
    plain = encode_update([update], 1.0, True, spec, np.random.default_rng(0)).values
    assert rounded_norm(plain[:-1], spec) > 1.05 * clip


# -- client level, distributed DP: what each client adds to the sum before its noise ---------------


@pytest.mark.parametrize("bits", [16, 12])
@pytest.mark.parametrize(
    "kind", ["at-the-bound", "far-outside", "one-spike", "half-steps", "all-equal"]
)
def test_a_clients_share_of_the_distributed_sum_moves_it_by_at_most_the_recorded_bound(bits, kind):
    """Zero-out neighbours: the sum with a client's update against the sum with zeros instead.

    Both go through the client's own encoding (`DistributedDpSpec.encode`: clip, rotate, round,
    noise, reduce mod m) with the noise held fixed; the difference, read in [−m/2, m/2), is what
    the client's update moves the sum by. Its L2 norm must stay within `norm_bound`, the
    sensitivity the event records.
    """
    import os

    from privet.privacy.distributed_dp import plan_spec
    from privet.privacy.rotation import rotate
    from privet.privacy.secagg.crypto import SeededRandom

    dimension = 3000
    spec = plan_spec(
        clip_norm=1.0,
        noise_multiplier=1.0,
        clients=20,
        noise_fraction=0.7,
        dimension=dimension,
        bits=bits,
        rotation_seed=os.urandom(16),
    )
    rng = np.random.default_rng(bits)
    if kind == "at-the-bound":
        update = rng.normal(size=dimension)
        update /= np.linalg.norm(update)
    elif kind == "far-outside":
        update = rng.normal(size=dimension) * 1e3
    elif kind == "one-spike":
        update = np.zeros(dimension)
        update[7] = 1.0
    elif kind == "half-steps":  # rotated coordinates on the grid's half steps: rounding's worst
        grid = (np.floor(rng.normal(size=spec.padded_dimension) * 3) + 0.5) * spec.scale
        update = np.asarray(rotate(grid, spec.rotation_seed))[:dimension]  # any real vector
        update *= 1.0 / np.linalg.norm(update)
    else:
        update = np.full(dimension, 1.0 / np.sqrt(dimension))
    worst = 0.0
    for trial in range(8):
        seed = bytes([trial]) * 32  # the same noise in both neighbours

        released = [
            spec.encode([values], np.random.default_rng(trial), SeededRandom(seed)).astype(np.int64)
            for values in (update, np.zeros(dimension))
        ]
        difference = spec.centred(np.mod(released[0] - released[1], spec.modulus))
        worst = max(worst, float(np.linalg.norm(difference.astype(np.float64))))
    assert worst <= spec.norm_bound
    assert worst > 0.5 * spec.norm_bound  # the bound is not vacuous: a unit update comes close
