"""Client sampling: Poisson (amplifies client-level DP) and fixed-size (example-level only)."""

from __future__ import annotations

import numpy as np
import pytest

from privet.cli import main
from privet.server.sampling import fixed_size_sample, poisson_sample, sample_clients
from privet.task.config import ConfigError, RunConfig


def test_fixed_size_sample_has_exactly_k_distinct_members_from_the_population():
    rng = np.random.default_rng(0)
    population = list(range(100, 150))
    for _ in range(200):
        sample = fixed_size_sample(population, 7, rng)
        assert len(sample) == 7 and len(set(sample)) == 7
        assert set(sample) <= set(population) and sample == sorted(sample)


def test_fixed_size_sample_is_uniform_over_clients():
    rng = np.random.default_rng(1)
    counts = np.zeros(20)
    draws = 4000
    for _ in range(draws):
        for client in fixed_size_sample(range(20), 5, rng):
            counts[client] += 1
    expected = draws * 5 / 20  # 1000 each
    # Each count is hypergeometric-ish with sd ~ 27; 6 sd either side is a broken sampler.
    assert np.all(np.abs(counts - expected) < 6 * 27), counts


def test_fixed_size_sample_ignores_discovery_order_and_takes_all_when_too_few():
    first = fixed_size_sample([5, 1, 9, 3, 7], 2, np.random.default_rng(4))
    again = fixed_size_sample([9, 7, 5, 3, 1], 2, np.random.default_rng(4))
    assert first == again
    assert fixed_size_sample([3, 1], 5, np.random.default_rng(0)) == [1, 3]


def test_sample_clients_dispatches_on_the_scheme():
    ids = list(range(30))
    assert sample_clients(ids, "poisson", 0.3, 0, np.random.default_rng(2)) == poisson_sample(
        ids, 0.3, np.random.default_rng(2)
    )
    assert sample_clients(ids, "fixed", 0.0, 4, np.random.default_rng(2)) == fixed_size_sample(
        ids, 4, np.random.default_rng(2)
    )
    with pytest.raises(ValueError, match="unknown client sampling 'stratified'"):
        sample_clients(ids, "stratified", 0.3, 4, np.random.default_rng(2))


def test_fixed_size_sampling_is_refused_with_client_level_dp():
    with pytest.raises(ConfigError, match="client-sampling 'fixed' cannot be used with client"):
        RunConfig(
            clients=20,
            clients_per_round=5,
            client_sampling="fixed",
            client_noise_multiplier=1.0,
            delta=1e-3,
        )
    with pytest.raises(ConfigError, match="unknown client-sampling 'uniform'"):
        RunConfig(client_sampling="uniform")


def test_the_cli_refuses_fixed_sampling_with_client_level_dp_in_one_line(capsys, tmp_path):
    status = main(
        [
            "simulate",
            "--clients",
            "20",
            "--clients-per-round",
            "5",
            "--client-sampling",
            "fixed",
            "--client-noise-multiplier",
            "1",
            "--delta",
            "1e-3",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith("privet: error: client-sampling 'fixed' cannot be used")
    assert not (tmp_path / "out").exists()
