"""The client's side of secure aggregation, as plain code (no Flower).

A Flower ClientApp starts afresh for each message, so the client keeps its protocol state as plain
data between the four messages of a round:

- ``query.secagg_advertise_keys``: `begin` makes the round's keys, returns the public halves;
- ``query.secagg_share_keys``: `answer` shares the secrets with the neighbours;
- TRAIN: the client trains, clips, and `answer` masks the update at once, so the plain update is
  never stored between messages;
- ``query.secagg_unmask``: `answer` returns the shares that remove the masks.

With stage folding the next round's first two stages ride in this round's TRAIN and unmask
messages (`server.secure_aggregation.KeysAhead`), so a node can hold two rounds' states at once;
the ClientApp keeps one per round id (`client.app`).

Secrets come from ``os.urandom`` in every engine; only the stochastic-rounding dither (not a
secret) is seeded, so a simulation stays reproducible. Once a round is over, or a stage failed,
the state holds no secret.

When the client's own checks refuse a request (a threshold that is not a strict majority of its
neighbourhood, both secrets of one peer, too few neighbours or survivors), `answer` logs it and
replies with a `Refusal` naming the round and stage instead of the stage's message, so the server
can count refusals apart from crashes; the client's state is then ``"done"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from privet.privacy.discrete_noise import noise_source
from privet.privacy.distributed_dp import DistributedDpError, DistributedDpSpec
from privet.privacy.secagg import (
    KeysBroadcast,
    QuantizationSpec,
    Refusal,
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggProtocolError,
    SecAggRefusal,
    SharesDelivery,
    UnmaskRequest,
)
from privet.privacy.secagg.protocol import DONE_STAGE, ClientState
from privet.privacy.secagg.update_vector import encode_update
from privet.privacy.secagg.wire import (
    WireMessage,
    decode_request,
    encode_request,
    from_wire,
    to_wire,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecAggRequest:
    """What the server fixed for this round's secure sum (sent with the TRAIN message)."""

    config: SecAggConfig
    spec: QuantizationSpec
    distributed: DistributedDpSpec | None = None
    """Under distributed DP, how to encode and noise the update (``ddp-*`` keys)."""

    @classmethod
    def from_train_config(
        cls, values: Mapping[str, object], clip_norm: float | None
    ) -> SecAggRequest | None:
        """Parse the ``secagg-*`` (and ``ddp-*``) keys; None when the round is not secure."""
        decoded = decode_request(values, clip_norm)
        if decoded is None:
            return None
        try:
            distributed = DistributedDpSpec.from_config(values)
        except DistributedDpError as error:
            raise SecAggProtocolError(str(error)) from None
        config, spec = decoded
        if distributed is not None:
            if distributed.bits != config.bits:
                raise SecAggProtocolError(
                    "distributed DP: the ring differs from secure aggregation's"
                )
            if distributed.padded_dimension != config.vector_length:
                raise SecAggProtocolError(
                    "distributed DP: the vector length differs from secure aggregation's"
                )
            if distributed.min_survivors < config.threshold:
                raise SecAggProtocolError(
                    f"distributed DP: the noise is sized for {distributed.min_survivors} "
                    f"survivors, fewer than the threshold {config.threshold}"
                )
        return cls(config, spec, distributed)

    @property
    def update_length(self) -> int:
        """How many update values the secure vector holds (before any padding or count)."""
        if self.distributed is not None:
            return self.distributed.dimension
        return self.config.vector_length - 1

    def to_train_config(self) -> dict[str, int | float | bytes]:
        """The ``secagg-*`` keys (the clip norm travels apart), to keep beside the input."""
        keys: dict[str, int | float | bytes] = dict(encode_request(self.config, self.spec))
        if self.distributed is not None:
            keys.update(self.distributed.to_config())
        return keys


def begin(
    client_id: int,
    request: SecAggRequest,
    num_params: int | None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> tuple[ClientState, WireMessage]:
    """Stage 0: a fresh client for this round; returns its state and its advertised keys.

    ``num_params`` (when known) is checked against the server's vector length now; otherwise
    the masked-input stage checks the update's length.
    """
    if num_params is not None and request.update_length != num_params:
        raise SecAggProtocolError(
            f"server expects {request.update_length} update values, the model has {num_params}"
        )
    client = SecAggClient(client_id, request.config, random_bytes)
    advertised = client.advertise_keys()
    return client.to_state(), to_wire(advertised)


@dataclass(frozen=True)
class PendingInput:
    """The client's clipped float update, waiting for the masked-input stage."""

    update: Sequence[np.ndarray]
    within_clip: bool
    spec: QuantizationSpec
    dither_seed: int
    norm_bound: float | None = None
    """Under client-level DP, the clip norm S the server's noise is calibrated to: the rounding
    is then conditional, so the rounded update's norm stays within S (None: plain rounding)."""
    distributed: DistributedDpSpec | None = None
    """Under distributed DP, the round's encoding: the client adds its noise share itself."""
    noise_seed: bytes | None = None
    """A reproducible simulation's seed for that noise; None: the operating system's randomness."""
    min_noise_multiplier: float | None = None
    """The z of the run's own plan: a round whose t shares would carry less is refused."""


def answer(
    stage: str,
    state: Mapping[str, object],
    message: Mapping[str, object],
    pending: PendingInput | None = None,
    weight: float | None = None,
) -> tuple[ClientState, WireMessage, int]:
    """Answer one stage; returns (new state, reply, coordinates clipped by quantization).

    If the client refuses the request, the reply is a `Refusal` and the new state is ``"done"``
    (see `is_done`). If the stage raises, the caller must discard the state: the round is over
    for this client.
    """
    client = SecAggClient.from_state(state)
    clipped = 0
    try:
        if stage == "share_keys":
            reply = to_wire(client.share_keys(from_wire(KeysBroadcast, message)))
        elif stage == "masked_input":
            if pending is None or weight is None:
                raise SecAggProtocolError("masked input requested but this client has no update")
            dither = np.random.default_rng(pending.dither_seed)
            if pending.distributed is not None:
                check_noise_share(pending.distributed, pending.min_noise_multiplier)
                try:
                    values = pending.distributed.encode(
                        pending.update, dither, noise_source(pending.noise_seed)
                    )
                except DistributedDpError as error:
                    raise SecAggProtocolError(str(error)) from None
            else:
                encoded = encode_update(
                    pending.update,
                    weight,
                    pending.within_clip,
                    pending.spec,
                    dither,
                    pending.norm_bound,
                )
                clipped = encoded.clipped
                values = encoded.values
            reply = to_wire(client.masked_input(from_wire(SharesDelivery, message), values))
        elif stage == "unmask":
            reply = to_wire(client.unmask(from_wire(UnmaskRequest, message)))
        else:
            raise SecAggProtocolError(f"unknown secure-aggregation stage {stage[:40]!r}")
    except (SecAggRefusal, SecAggAbort) as exc:
        # The client's own safety checks said no: tell the server, keep no secret.
        client.close()
        logger.warning(
            "client %d refuses secure-aggregation stage '%s' and leaves the round: %s",
            client.client_id,
            stage,
            exc,
        )
        refusal = Refusal(client.client_id, client.config.round_id, stage, str(exc))
        return client.to_state(), to_wire(refusal), 0
    return client.to_state(), reply, clipped


def check_noise_share(spec: DistributedDpSpec, planned: float | None) -> None:
    """Refuse a distributed-DP round whose t noise shares would carry less than the run's z.

    The client sizes nothing itself: the server picks σ² and t. A server that asked for less noise
    than the run's plan would get a sum noised below what every printed ε assumes, so the client
    checks √(t·σ²)/Δ against the z its own configuration calibrates, and refuses (a `Refusal`,
    counted by the server) rather than mask an under-noised update.
    """
    if planned is None:
        return
    carried = spec.total_noise_multiplier(spec.min_survivors)
    if carried < planned * (1 - 1e-9):
        raise SecAggRefusal(
            f"distributed DP: the round's {spec.min_survivors} noise shares carry z = "
            f"{carried:.6g}, less than the run's z = {planned:.6g}"
        )


def is_done(state: Mapping[str, object]) -> bool:
    """Whether a state returned by `answer` ends the client's round (answered or refused)."""
    return state.get("stage") == DONE_STAGE
