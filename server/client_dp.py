"""Client-level DP settings of a run: the noise for the update sum, and its privacy event."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privet.privacy import (
    CalibrationError,
    ClientLevelRound,
    client_noise_for_target_epsilon,
    update_noise_for_adaptive_clipping,
)
from privet.privacy.calibration import distributed_noise_for_target_epsilon
from privet.server.aggregation import COUNT_SENSITIVITY, AdaptiveClipping, ClientLevelAggregator
from privet.task.config import ConfigError, RunConfig


@dataclass(frozen=True)
class ClientLevelPlan:
    """DP-FedAvg parameters: total noise z, the part of it on the update sum, and sampling."""

    total_noise_multiplier: float
    update_noise_multiplier: float
    sample_rate: float
    expected_clients: float
    adaptive: AdaptiveClipping | None

    @property
    def count_sensitivity(self) -> float | None:
        """The sensitivity of the count `ClientLevelAggregator.release_sum` releases, if any."""
        return None if self.adaptive is None else COUNT_SENSITIVITY

    def round_event(self) -> ClientLevelRound:
        """The privacy event of one DP-FedAvg round (update sum plus, if adaptive, the count)."""
        return ClientLevelRound(
            noise_multiplier=self.update_noise_multiplier,
            sample_rate=self.sample_rate,
            rounds=1,
            count_noise_std=None if self.adaptive is None else self.adaptive.count_stddev,
            count_sensitivity=self.count_sensitivity,
        )

    def adaptive_summary(self) -> dict[str, float] | None:
        """Adaptive clipping's count query as results.json records it (None when off)."""
        if self.adaptive is None:
            return None
        assert self.count_sensitivity is not None
        return {
            "count_stddev": self.adaptive.count_stddev,
            "count_sensitivity": self.count_sensitivity,
            "count_noise_multiplier": self.adaptive.count_stddev / self.count_sensitivity,
            "target_quantile": self.adaptive.target_quantile,
            "learning_rate": self.adaptive.learning_rate,
        }


def plan_client_level(config: RunConfig) -> ClientLevelPlan | None:
    """The run's DP-FedAvg plan (σ calibrated from a target if asked), or None when it is off."""
    if not config.client_level_dp:
        return None
    q = config.client_sample_rate
    if config.distributed_dp and config.client_target_epsilon is not None:
        try:
            z = distributed_noise_for_target_epsilon(
                config.client_target_epsilon, config.delta, q, config.rounds
            )
        except CalibrationError as error:
            raise ConfigError(f"distributed DP: {error}") from None
    elif config.client_target_epsilon is not None:
        z = client_noise_for_target_epsilon(
            config.client_target_epsilon, config.delta, q, config.rounds, config.accountant
        )
    else:
        assert config.client_noise_multiplier is not None
        z = config.client_noise_multiplier
    adaptive = None
    z_update = z
    if config.adaptive_clipping:
        adaptive = AdaptiveClipping(
            config.target_quantile, config.clip_learning_rate, config.count_stddev
        )
        try:
            z_update = update_noise_for_adaptive_clipping(z, config.count_stddev, COUNT_SENSITIVITY)
        except ValueError as error:
            raise ConfigError(
                f"adaptive clipping cannot fit in the noise budget: {error}; raise "
                "--clip-count-stddev or --clients-per-round, or give more noise"
            ) from None
    return ClientLevelPlan(z, z_update, q, float(config.expected_clients_per_round), adaptive)


def make_aggregator(
    plan: ClientLevelPlan, config: RunConfig, rng: np.random.Generator
) -> ClientLevelAggregator:
    """The aggregator that applies `plan` starting from the configured clip norm."""
    return ClientLevelAggregator(
        update_noise_multiplier=plan.update_noise_multiplier,
        clip_norm=config.client_clip_norm,
        expected_clients=plan.expected_clients,
        rng=rng,
        adaptive=plan.adaptive,
    )
