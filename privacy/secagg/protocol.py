"""Secure aggregation as plain state machines: one `SecAggClient` per client, one `SecAggServer`.

The protocol is that of Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS 2017 (Fig. 4, honest-but-curious variant, without the consistency-check
round that only matters against an active server), with the sparse neighbourhood graph of SecAgg+:
Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020. Each
client masks with, and secret-shares to, its graph neighbours only; the threshold t applies to each
closed neighbourhood {u} ∪ N(u).

Stages (the server's method that consumes the clients' replies is in brackets):

0. advertise keys: each client makes two X25519 key pairs, c (encrypts shares) and s (pairwise
   masks). [`SecAggServer.receive_keys`] forwards each survivor its neighbours' public keys.
1. share keys: each client draws a self-mask seed b_u and Shamir-shares b_u and its s private key
   among its closed neighbourhood, encrypting each neighbour's shares under the pairwise AEAD key.
   [`SecAggServer.route_shares`] delivers each ciphertext to its receiver.
2. masked input: y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv) mod 2^b over the
   neighbours v whose shares arrived. [`SecAggServer.collect_masked`] tells each survivor which of
   its neighbours survived and which dropped.
3. unmask: a client returns shares of b_v for surviving v and of s_v's private key for dropped v,
   and refuses to give both for one peer (that would let the server unmask v's input).
   [`SecAggServer.unmask`] reconstructs, removes the masks, and returns the sum mod 2^b.

Every server method takes the replies that arrived (before the adapter's timeout); absent clients
are dropouts. If a neighbourhood has fewer than t live holders where shares are needed, the server
raises `SecAggAbort` naming the stage; it never returns a partial sum. Messages hold only ints,
bytes, strs and tuples of them, so an adapter can copy them into Flower records.

Three checks keep a server from learning more than the sum of a connected set of clients:

- The client checks the threshold itself. At share keys it knows its closed neighbourhood (the
  broadcast's neighbours and itself) and refuses, with `SecAggRefusal` and before any share is
  made, a round whose t is not a strict majority of it (or is below 2). With 2t > |closed| no two
  disjoint sets of t holders exist, so a server that tells different holders different stories
  cannot rebuild both b_u and s_u; a server that shows a client fewer neighbours only shrinks the
  set the shares go to. With t = 1 a server could rebuild b_u from the client's own share.
- The server checks that the clients whose masked inputs it sums are connected in the masking
  graph (`SecAggServer.collect_masked`). Masks cancel within each connected group, so unmasking a
  split set of survivors would reveal each group's sum; the round aborts with `SecAggSplit`.
- Every client → server message carries the round id and its stage. The round id is fresh and
  random each round (`server.secure_aggregation.plan_round`), so a reply from another round or run
  never matches. A stale, misaddressed or duplicate reply, or a client's `Refusal`, drops only that
  client (with a logged reason, see `SecAggServer.rejected` and `SecAggServer.refusals`); the round
  goes on if enough others survive.

A Flower ClientApp starts afresh for every message, so a client can leave and re-enter as plain
data between its calls: `SecAggClient.to_state` gives a flat dict of ints, strs, bytes and lists of
them (what a ConfigRecord accepts), and `SecAggClient.from_state` checks it strictly and resumes.
The state records the stage, so a client restored after `unmask` still refuses a second request.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import numpy as np

from privet.privacy.secagg import shamir
from privet.privacy.secagg.crypto import (
    KEY_BYTES,
    SEED_BYTES,
    RandomSource,
    SecAggCryptoError,
    SecAggError,
    agree,
    decrypt_shares,
    derive_mask_seed,
    derive_share_key,
    encrypt_shares,
    expand_mask,
    generate_private_key,
    load_private_key,
    private_bytes,
    public_bytes,
    ring_dtype,
)

STAGES = ("advertise_keys", "share_keys", "masked_input", "unmask")
_MAX_ID = 2**64 - 2  # Shamir x-coordinate is id + 1, packed as an unsigned 64-bit int
_BUNDLE = struct.Struct(">QQ")
_REASON_CHARS = 200  # a client's refusal reason is its own text: logged, but kept short

logger = logging.getLogger(__name__)

STATE_SCHEMA = 1
"""Version of the plain-data client state written by `SecAggClient.to_state`."""
DONE_STAGE = "done"
"""The state's ``stage`` once the client has answered (or refused) its last request."""
_STATE_STAGES = (*STAGES, DONE_STAGE)
_STATE_HEADER = ("schema", "stage", "client_id", "round_id", "threshold", "bits", "vector_length")
_HELD = ("held_ids", "self_mask_shares", "key_shares")
_STATE_KEYS: dict[str, tuple[str, ...]] = {  # keys beyond the header, by stage (the next call)
    "advertise_keys": (),
    "share_keys": ("cipher_private_key", "mask_private_key"),
    "masked_input": (
        "mask_private_key",
        "self_mask_seed",
        "neighbour_ids",
        "share_keys",
        "mask_public_keys",
        *_HELD,
    ),
    "unmask": _HELD,
    DONE_STAGE: (),
}
ClientState = dict[str, int | bytes | list[int] | list[bytes] | str]
"""A client's state as plain data that fits a Flower ConfigRecord (no nesting, no dicts)."""


class SecAggAbort(SecAggError):  # noqa: N818 (the name the design uses)
    """Too few clients survived a stage to finish the round; no (partial) sum is released."""

    def __init__(self, stage: str, message: str, alive: int, needed: int) -> None:
        """Record the stage and the counts; ``message`` says which neighbourhood fell short."""
        super().__init__(f"secure aggregation aborted at stage '{stage}': {message}")
        self.stage = stage
        self.alive = alive
        self.needed = needed


class SecAggSplit(SecAggAbort):
    """The surviving clients are not connected in the masking graph; no sum is released.

    Pairwise masks cancel within each connected group of survivors, so unmasking their sum would
    also reveal the sum of every group. ``alive`` is the largest group, ``needed`` all survivors.
    """

    def __init__(self, stage: str, sizes: Sequence[int]) -> None:
        """Record the stage and the sizes of the groups, largest first."""
        self.sizes = tuple(sorted(sizes, reverse=True))
        survivors = sum(self.sizes)
        super().__init__(
            stage,
            f"the {survivors} surviving clients are not connected in the masking graph (groups "
            f"of {', '.join(map(str, self.sizes))}); unmasking would reveal each group's sum",
            self.sizes[0],
            survivors,
        )


class SecAggProtocolError(SecAggError):
    """A message out of order, for the wrong round or client, or malformed."""


class SecAggRefusal(SecAggError):  # noqa: N818 (a refusal, not a fault)
    """A client refuses a request that would reveal a peer's input (both secrets of one peer)."""


# ---------------------------------------------------------------------------------------------
# Configuration and neighbourhood graph


@dataclass(frozen=True)
class SecAggConfig:
    """What server and clients agree on before a round.

    Attributes:
        round_id: binds every ciphertext, derived key and client reply to this round (fresh keys
            each round). The server draws it at random for every round, so that it also tells
            runs apart.
        threshold: t, the shares needed to rebuild a secret, per closed neighbourhood. Must be more
            than half of every closed neighbourhood, so that the server cannot obtain both secrets
            of a client by telling different holders different stories; each client checks this
            itself, against the neighbours it is told, before it makes any share.
        bits: ring size 2^bits of the inputs (from `QuantizationSpec.bits`).
        vector_length: number of coordinates of every input.

    """

    round_id: int
    threshold: int
    bits: int
    vector_length: int

    def __post_init__(self) -> None:
        """Validate the fields."""
        for name in ("round_id", "threshold", "bits", "vector_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SecAggProtocolError(f"{name} must be an int, got {value!r}")
        if not 0 <= self.round_id < 2**64:
            raise SecAggProtocolError(f"round_id must fit in 64 bits, got {self.round_id}")
        if self.threshold < 1:
            raise SecAggProtocolError(f"threshold must be at least 1, got {self.threshold}")
        if not 1 <= self.bits <= 62:
            raise SecAggProtocolError(f"bits must be in [1, 62], got {self.bits}")
        if self.vector_length < 1:
            raise SecAggProtocolError(f"vector_length must be positive, got {self.vector_length}")

    @property
    def context(self) -> bytes:
        """HKDF context that ties derived keys to this round."""
        return struct.pack(">Q", self.round_id)


Graph = Mapping[int, frozenset[int]]


def default_degree(num_clients: int) -> int:
    """Neighbourhood size of order log n (Bell et al. 2020): 2·⌈log2 n⌉, at most n − 1."""
    return min(num_clients - 1, 2 * math.ceil(math.log2(max(num_clients, 2))))


def _randbelow(n: int, random_bytes: RandomSource) -> int:
    bits = max(1, (n - 1).bit_length())
    while True:
        value = int.from_bytes(random_bytes(8), "big") & ((1 << bits) - 1)
        if value < n:
            return value


def build_graph(
    client_ids: Iterable[int],
    degree: int | None = None,
    random_bytes: RandomSource = os.urandom,
) -> dict[int, frozenset[int]]:
    """The neighbourhood graph: complete if ``degree`` is None or ≥ n − 1, else random Harary.

    The random Harary graph (Bell et al. 2020, §3; as in SecAgg+) places the clients on a ring in
    a uniformly random order and joins each to the degree/2 nearest clients on either side, so
    every client has exactly ``degree`` neighbours (``degree`` must be even).
    """
    ids = list(client_ids)
    if len(set(ids)) != len(ids) or any(
        isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= _MAX_ID for i in ids
    ):
        raise SecAggProtocolError(f"client ids must be distinct ints in [0, {_MAX_ID}]")
    n = len(ids)
    if n < 2:
        raise SecAggProtocolError(f"secure aggregation needs at least 2 clients, got {n}")
    if degree is None or degree >= n - 1:
        return {u: frozenset(v for v in ids if v != u) for u in ids}
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 2 or degree % 2:
        raise SecAggProtocolError(f"graph degree must be an even int of at least 2, got {degree}")
    order = list(ids)
    for i in range(n - 1, 0, -1):  # Fisher–Yates with cryptographic randomness
        j = _randbelow(i + 1, random_bytes)
        order[i], order[j] = order[j], order[i]
    graph: dict[int, set[int]] = {u: set() for u in ids}
    for pos, u in enumerate(order):
        for step in range(1, degree // 2 + 1):
            v = order[(pos + step) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: frozenset(vs) for u, vs in graph.items()}


# ---------------------------------------------------------------------------------------------
# Messages (ints, bytes and tuples only)


@dataclass(frozen=True)
class AdvertiseKeys:
    """Client → server, stage 0: the client's two X25519 public keys (32 bytes each).

    Like every client → server message it names the round id and the stage it answers, so that
    the server can drop a stale or misdirected reply instead of mixing it into this round.
    """

    client_id: int
    round_id: int
    stage: str
    cipher_public_key: bytes
    mask_public_key: bytes


@dataclass(frozen=True)
class KeysBroadcast:
    """Server → client, stage 1: the public keys of the client's neighbours that advertised."""

    round_id: int
    client_id: int
    neighbour_ids: tuple[int, ...]
    cipher_public_keys: tuple[bytes, ...]
    mask_public_keys: tuple[bytes, ...]


@dataclass(frozen=True)
class ShareKeys:
    """Client → server, stage 1: one AEAD ciphertext of shares per neighbour."""

    client_id: int
    round_id: int
    stage: str
    receiver_ids: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class SharesDelivery:
    """Server → client, stage 2: the ciphertexts addressed to this client by surviving senders."""

    round_id: int
    client_id: int
    sender_ids: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class MaskedInput:
    """Client → server, stage 2: the masked vector, ``bits`` bits per value (`encode_vector`)."""

    client_id: int
    round_id: int
    stage: str
    masked: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Server → client, stage 3: which neighbours survived (b shares) or dropped (key shares)."""

    round_id: int
    client_id: int
    survivor_ids: tuple[int, ...]
    dropped_ids: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskShares:
    """Client → server, stage 3: self-mask shares of survivors, key shares of dropped peers."""

    client_id: int
    round_id: int
    stage: str
    survivor_ids: tuple[int, ...]
    self_mask_shares: tuple[bytes, ...]
    dropped_ids: tuple[int, ...]
    key_shares: tuple[bytes, ...]


@dataclass(frozen=True)
class Refusal:
    """Client → server, any stage: the client will not answer this stage or the rest of the round.

    Sent in place of the stage's reply when the client's own checks refuse the server's request
    (a weak threshold, both secrets of one peer, too few neighbours), so that the server can tell
    a refusal from a crash and count it. ``reason`` is one line for the logs; it holds no secret.
    """

    client_id: int
    round_id: int
    stage: str
    reason: str


@dataclass(frozen=True)
class SecAggResult:
    """The server's output: the sum mod 2^bits of the survivors' inputs, and who they were."""

    aggregate: np.ndarray
    survivor_ids: tuple[int, ...]
    dropped_ids: tuple[int, ...]


def packed_bytes(length: int, bits: int) -> int:
    """Bytes of a masked vector on the wire: ``bits`` bits per value, packed, rounded up."""
    return (length * bits + 7) // 8


def encode_vector(values: np.ndarray, bits: int) -> bytes:
    """Values mod 2^bits packed ``bits`` bits each, least significant bit first (the wire form).

    Packed, a 16-bit ring sends 2 bytes a value and a 12-bit ring 1.5, so fewer bits are fewer
    bytes up (distributed DP's point of choosing them). Value i starts at bit i·bits; its bytes
    are OR-ed into place one byte position at a time (from 8 bits up no two values share a byte
    position within one pass; narrower widths add the bytes with `np.bincount`, which is the same
    on disjoint bit fields).
    """
    words = np.ascontiguousarray(values, dtype="<u8")
    count = words.size
    if bits % 8 == 0:
        return words.view(np.uint8).reshape(count, 8)[:, : bits // 8].tobytes()
    size = packed_bytes(count, bits)
    if bits > 56 or count == 0:
        planes = np.unpackbits(words.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
        return np.packbits(planes[:, :bits].ravel(), bitorder="little").tobytes()
    first, shift = _bit_positions(count, bits)
    shifted = words << shift
    packed = np.zeros(size + 8, dtype=np.uint8)
    for k in range((bits + 7) // 8 + 1):
        piece = ((shifted >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.uint8)
        if bits >= 8:
            packed[first + k] |= piece
        else:
            packed += np.bincount(first + k, weights=piece, minlength=size + 8).astype(np.uint8)
    return packed[:size].tobytes()


def decode_vector(data: bytes, length: int, bits: int) -> np.ndarray:
    """Inverse of `encode_vector`, checking the length (and that the padding bits are zero)."""
    if not isinstance(data, bytes) or len(data) != packed_bytes(length, bits):
        raise SecAggProtocolError(f"masked vector must be {packed_bytes(length, bits)} bytes")
    raw = np.frombuffer(data, dtype=np.uint8)
    spare = length * bits % 8
    if spare and int(raw[-1]) >> spare:
        raise SecAggProtocolError("masked vector has non-zero padding bits")
    if bits % 8 == 0:
        wide = np.zeros((length, 8), dtype=np.uint8)
        wide[:, : bits // 8] = raw.reshape(length, bits // 8)
        return wide.view("<u8").ravel().astype(ring_dtype(bits))
    if bits > 56:
        stream = np.unpackbits(raw, bitorder="little")
        planes = np.zeros((length, 64), dtype=np.uint8)
        planes[:, :bits] = stream[: length * bits].reshape(length, bits)
        words = np.packbits(planes, axis=1, bitorder="little").view("<u8").ravel()
        return words.astype(ring_dtype(bits))
    padded = np.concatenate([raw, np.zeros(8, dtype=np.uint8)])
    first, shift = _bit_positions(length, bits)
    words = np.zeros(length, dtype=np.uint64)
    for k in range((bits + 7) // 8 + 1):  # the bytes value i spans, from byte (i·bits) // 8
        words |= padded[first + k].astype(np.uint64) << np.uint64(8 * k)
    return ((words >> shift) & np.uint64((1 << bits) - 1)).astype(ring_dtype(bits))


def _bit_positions(count: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """For values packed ``bits`` bits each: each one's first byte and its bit offset in it."""
    offsets = np.arange(count, dtype=np.uint64) * np.uint64(bits)
    return (offsets >> np.uint64(3)).astype(np.int64), offsets & np.uint64(7)


def _x(client_id: int) -> int:
    """Shamir x-coordinate of a client (0 is the secret's own coordinate, so shift by one)."""
    return client_id + 1


# ---------------------------------------------------------------------------------------------
# Client


class SecAggClient:
    """One client's side of one round. Call its four methods in order; each returns a message.

    ``random_bytes`` is the source of every secret (keys, self-mask seed, Shamir coefficients,
    nonces): ``os.urandom`` in a deployment; a simulation may pass a `SeededRandom`.
    """

    def __init__(
        self,
        client_id: int,
        config: SecAggConfig,
        random_bytes: RandomSource = os.urandom,
    ) -> None:
        """Prepare the client; no secret is drawn before `advertise_keys`."""
        if isinstance(client_id, bool) or not isinstance(client_id, int):
            raise SecAggProtocolError(f"client id must be an int, got {client_id!r}")
        if not 0 <= client_id <= _MAX_ID:
            raise SecAggProtocolError(f"client id must be in [0, {_MAX_ID}], got {client_id}")
        self.client_id = client_id
        self.config = config
        self._random = random_bytes
        self._stage = 0
        self._self_shares: dict[int, bytes] = {}  # peer -> my share of b_peer
        self._key_shares: dict[int, bytes] = {}  # peer -> my share of s_peer's private key
        self._share_keys: dict[int, bytes] = {}
        self._mask_public: dict[int, bytes] = {}

    def _advance(self, expected: int, name: str) -> None:
        if self._stage != expected:
            raise SecAggProtocolError(
                f"client {self.client_id}: '{name}' called out of order (stage {self._stage})"
            )
        self._stage = expected + 1

    def _check_header(self, round_id: int, client_id: int) -> None:
        if round_id != self.config.round_id or client_id != self.client_id:
            raise SecAggProtocolError(
                f"client {self.client_id} (round {self.config.round_id}) got a message for "
                f"client {client_id} in round {round_id}"
            )

    def _refuse_weak_threshold(self, closed: int) -> None:
        """Refuse a threshold that is not a strict majority of the closed neighbourhood, or is 1.

        ``closed`` counts the client and the neighbours the server listed. If 2t ≤ closed, two
        disjoint sets of t holders exist: a server telling one set that this client survived and
        the other that it dropped would rebuild both its self-mask seed and its mask key, hence
        its input. With t = 1 the client's own share of its seed rebuilds it. The client checks
        this itself (not trusting the server's plan) before it makes any share.
        """
        t = self.config.threshold
        if t < 2 or 2 * t <= closed:
            raise SecAggRefusal(
                f"client {self.client_id} refuses: threshold {t} is not a strict majority of its "
                f"closed neighbourhood of {closed} (or is below 2)"
            )

    def close(self) -> None:
        """End this client's round (after a refusal or failure): forget every secret.

        Its state is then ``"done"`` and it answers no further request.
        """
        self._stage = len(STAGES)
        for name in ("_c_key", "_s_key", "_self_seed"):
            self.__dict__.pop(name, None)
        self._self_shares.clear()
        self._key_shares.clear()
        self._share_keys.clear()
        self._mask_public.clear()

    def advertise_keys(self) -> AdvertiseKeys:
        """Stage 0: make the c and s key pairs and publish their public halves."""
        self._advance(0, "advertise_keys")
        self._c_key = generate_private_key(self._random)
        self._s_key = generate_private_key(self._random)
        return AdvertiseKeys(
            self.client_id,
            self.config.round_id,
            STAGES[0],
            public_bytes(self._c_key),
            public_bytes(self._s_key),
        )

    def share_keys(self, message: KeysBroadcast) -> ShareKeys:
        """Stage 1: Shamir-share b_u and the s private key to the neighbours, encrypted per pair."""
        self._advance(1, "share_keys")
        self._check_header(message.round_id, message.client_id)
        ids = tuple(message.neighbour_ids)
        if not (len(ids) == len(message.cipher_public_keys) == len(message.mask_public_keys)):
            raise SecAggProtocolError("key broadcast has lists of different lengths")
        if len(set(ids)) != len(ids) or self.client_id in ids:
            raise SecAggProtocolError("key broadcast lists a neighbour twice or the client itself")
        t = self.config.threshold
        self._refuse_weak_threshold(len(ids) + 1)
        if len(ids) + 1 < t:
            raise SecAggAbort(
                "share_keys",
                f"client {self.client_id} has {len(ids) + 1} live neighbourhood members, needs {t}",
                len(ids) + 1,
                t,
            )
        keys = (*message.cipher_public_keys, *message.mask_public_keys)
        keys += (public_bytes(self._c_key), public_bytes(self._s_key))
        if len(set(keys)) != len(keys):
            raise SecAggProtocolError("key broadcast contains repeated public keys")
        ctx = self.config.context
        for v, c_pub, s_pub in zip(
            ids, message.cipher_public_keys, message.mask_public_keys, strict=True
        ):
            self._share_keys[v] = derive_share_key(agree(self._c_key, c_pub), ctx)
            self._mask_public[v] = s_pub
        self._self_seed = self._random(32)
        holders = [_x(v) for v in (*ids, self.client_id)]
        b_shares = shamir.split(self._self_seed, t, holders, self._random)
        s_shares = shamir.split(private_bytes(self._s_key), t, holders, self._random)
        me = _x(self.client_id)
        self._self_shares[self.client_id] = b_shares[me]
        self._key_shares[self.client_id] = s_shares[me]
        ciphertexts = []
        for v in ids:
            bundle = _BUNDLE.pack(self.client_id, v) + b_shares[_x(v)] + s_shares[_x(v)]
            ciphertexts.append(
                encrypt_shares(
                    self._share_keys[v],
                    bundle,
                    self.client_id,
                    v,
                    self.config.round_id,
                    self._random,
                )
            )
        return ShareKeys(self.client_id, self.config.round_id, STAGES[1], ids, tuple(ciphertexts))

    def masked_input(self, message: SharesDelivery, values: np.ndarray) -> MaskedInput:
        """Stage 2: decrypt the shares received, then mask ``values`` (ints in [0, 2^bits))."""
        self._advance(2, "masked_input")
        self._check_header(message.round_id, message.client_id)
        cfg = self.config
        senders = tuple(message.sender_ids)
        if len(senders) != len(message.ciphertexts) or len(set(senders)) != len(senders):
            raise SecAggProtocolError("share delivery has repeated senders or mismatched lists")
        unknown = set(senders) - set(self._share_keys)
        if unknown:
            raise SecAggProtocolError(f"share delivery from non-neighbours {sorted(unknown)}")
        if len(senders) + 1 < cfg.threshold:
            raise SecAggAbort(
                "masked_input",
                f"client {self.client_id} has {len(senders) + 1} live neighbourhood members, "
                f"needs {cfg.threshold}",
                len(senders) + 1,
                cfg.threshold,
            )
        size = shamir.SHARE_BYTES
        for v, blob in zip(senders, message.ciphertexts, strict=True):
            plain = decrypt_shares(self._share_keys[v], blob, v, self.client_id, cfg.round_id)
            if len(plain) != _BUNDLE.size + 2 * size:
                raise SecAggCryptoError(f"share bundle from client {v} has the wrong length")
            if _BUNDLE.unpack(plain[: _BUNDLE.size]) != (v, self.client_id):
                raise SecAggCryptoError(f"share bundle from client {v} names the wrong pair")
            body = plain[_BUNDLE.size :]
            self._self_shares[v] = body[:size]
            self._key_shares[v] = body[size:]
        x = np.asarray(values)
        if x.shape != (cfg.vector_length,) or not np.issubdtype(x.dtype, np.integer):
            raise SecAggProtocolError(
                f"input must be an integer vector of length {cfg.vector_length}, got "
                f"{x.dtype} {x.shape}"
            )
        if x.size and (int(x.min()) < 0 or int(x.max()) >= 1 << cfg.bits):
            raise SecAggProtocolError(f"input values must lie in [0, 2^{cfg.bits})")
        dtype = ring_dtype(cfg.bits)
        # Wrapping arithmetic mod 2^32 or 2^64 is arithmetic mod 2^bits once reduced at the end.
        y = x.astype(dtype)
        y += expand_mask(self._self_seed, cfg.vector_length, cfg.bits)
        for v in senders:
            seed = derive_mask_seed(agree(self._s_key, self._mask_public[v]), cfg.context)
            p = expand_mask(seed, cfg.vector_length, cfg.bits)
            if v > self.client_id:
                y += p
            else:
                y -= p
        y &= dtype.type((1 << cfg.bits) - 1)
        self._masked_with = frozenset(senders)
        return MaskedInput(self.client_id, cfg.round_id, STAGES[2], encode_vector(y, cfg.bits))

    def unmask(self, message: UnmaskRequest) -> UnmaskShares:
        """Stage 3: reveal b shares of survivors and key shares of dropped peers, never both."""
        self._advance(3, "unmask")
        self._check_header(message.round_id, message.client_id)
        survivors = tuple(message.survivor_ids)
        dropped = tuple(message.dropped_ids)
        both = set(survivors) & set(dropped)
        if both:
            raise SecAggRefusal(
                f"client {self.client_id} refuses: asked for both secrets of clients {sorted(both)}"
            )
        if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            raise SecAggProtocolError("unmask request lists a client twice")
        if self.client_id in dropped or self.client_id not in survivors:
            raise SecAggRefusal(f"client {self.client_id} refuses: request marks it as dropped")
        unknown = (set(survivors) | set(dropped)) - set(self._self_shares)
        if unknown:
            raise SecAggProtocolError(
                f"client {self.client_id} holds no shares of clients {sorted(unknown)}"
            )
        if len(survivors) < self.config.threshold:
            raise SecAggAbort(
                "unmask",
                f"client {self.client_id} was told {len(survivors)} neighbourhood members "
                f"survived, "
                f"needs {self.config.threshold}",
                len(survivors),
                self.config.threshold,
            )
        return UnmaskShares(
            self.client_id,
            self.config.round_id,
            STAGES[3],
            survivors,
            tuple(self._self_shares[v] for v in survivors),
            dropped,
            tuple(self._key_shares[v] for v in dropped),
        )

    # -----------------------------------------------------------------------------------------
    # Plain-data state (a Flower ClientApp starts afresh for every message)

    def to_state(self) -> ClientState:
        """The client as plain data that fits a Flower ConfigRecord; resume with `from_state`.

        Values are ints, strs, bytes and homogeneous lists of them (maps become parallel lists
        sorted by peer id); ``schema`` is `STATE_SCHEMA` and ``stage`` names the call the client
        expects next, or ``"done"``. The state keeps only what that call needs: before
        ``share_keys`` the two raw 32-byte private keys; before ``masked_input`` the s private
        key, the self-mask seed, the pairwise AEAD keys, the neighbours' mask public keys and the
        client's own shares; before ``unmask`` only the shares it holds. Once ``unmask`` has
        been answered or refused, or after a call that failed midway, the stage is ``"done"``
        and no secret is kept, so a restored client refuses every further request.

        The state holds private keys and shares: store it where only this client can read it.
        """
        stage = _STATE_STAGES[min(self._stage, len(_STATE_STAGES) - 1)]
        if (stage == "share_keys" and not hasattr(self, "_s_key")) or (
            stage in ("masked_input", "unmask") and self.client_id not in self._self_shares
        ):
            stage = DONE_STAGE  # the previous call failed midway: nothing can follow it
        cfg = self.config
        state: ClientState = {
            "schema": STATE_SCHEMA,
            "stage": stage,
            "client_id": self.client_id,
            "round_id": cfg.round_id,
            "threshold": cfg.threshold,
            "bits": cfg.bits,
            "vector_length": cfg.vector_length,
        }
        if stage == "share_keys":
            state["cipher_private_key"] = private_bytes(self._c_key)
            state["mask_private_key"] = private_bytes(self._s_key)
        elif stage == "masked_input":
            nbrs = sorted(self._share_keys)
            state["mask_private_key"] = private_bytes(self._s_key)
            state["self_mask_seed"] = self._self_seed
            state["neighbour_ids"] = nbrs
            state["share_keys"] = [self._share_keys[v] for v in nbrs]
            state["mask_public_keys"] = [self._mask_public[v] for v in nbrs]
        if stage in ("masked_input", "unmask"):
            held = sorted(self._self_shares)
            state["held_ids"] = held
            state["self_mask_shares"] = [self._self_shares[v] for v in held]
            state["key_shares"] = [self._key_shares[v] for v in held]
        return state

    @classmethod
    def from_state(
        cls, state: Mapping[str, object], random_bytes: RandomSource = os.urandom
    ) -> SecAggClient:
        """Rebuild a client from `to_state`'s output, checking every key strictly.

        ``random_bytes`` serves the calls still to come (``os.urandom`` in a deployment). A
        missing, unexpected or malformed key raises a one-line `SecAggProtocolError` naming it.
        """
        if not isinstance(state, Mapping):
            raise SecAggProtocolError(
                f"secagg client state must be a mapping, got {type(state).__name__}"
            )
        r = _StateReader(state)
        schema = r.integer("schema")
        if schema != STATE_SCHEMA:
            r.fail("schema", f"unsupported schema {schema}, expected {STATE_SCHEMA}")
        stage = r.text("stage")
        if stage not in _STATE_STAGES:
            r.fail("stage", f"unknown stage {stage[:40]!r}, expected one of {_STATE_STAGES}")
        unexpected = sorted(set(state) - set(_STATE_HEADER) - set(_STATE_KEYS[stage]), key=str)
        if unexpected:
            raise SecAggProtocolError(
                f"secagg client state: unexpected key {str(unexpected[0])[:60]!r} at stage "
                f"'{stage}'"
            )
        client_id = r.client_id("client_id")
        try:
            config = SecAggConfig(
                round_id=r.integer("round_id"),
                threshold=r.integer("threshold"),
                bits=r.integer("bits"),
                vector_length=r.integer("vector_length"),
            )
        except SecAggProtocolError as exc:
            raise SecAggProtocolError(f"secagg client state: malformed config: {exc}") from None
        client = cls(client_id, config, random_bytes)
        client._stage = _STATE_STAGES.index(stage)
        if stage == "share_keys":
            client._c_key = load_private_key(r.blob("cipher_private_key", KEY_BYTES))
            client._s_key = load_private_key(r.blob("mask_private_key", KEY_BYTES))
        elif stage == "masked_input":
            client._s_key = load_private_key(r.blob("mask_private_key", KEY_BYTES))
            client._self_seed = r.blob("self_mask_seed", SEED_BYTES)
            nbrs = r.id_list("neighbour_ids")
            if client_id in nbrs:
                r.fail("neighbour_ids", "lists the client itself")
            if len(nbrs) + 1 < config.threshold:
                r.fail("neighbour_ids", f"{len(nbrs)} neighbours cannot meet the threshold")
            share_keys = r.blob_list("share_keys", KEY_BYTES, len(nbrs))
            mask_public = r.blob_list("mask_public_keys", KEY_BYTES, len(nbrs))
            client._share_keys = dict(zip(nbrs, share_keys, strict=True))
            client._mask_public = dict(zip(nbrs, mask_public, strict=True))
        if stage in ("masked_input", "unmask"):
            held = r.id_list("held_ids")
            if client_id not in held:
                r.fail("held_ids", "lacks the client's own shares")
            if stage == "masked_input" and held != [client_id]:
                r.fail("held_ids", "lists peers' shares before they were delivered")
            size = shamir.SHARE_BYTES
            client._self_shares = dict(
                zip(held, r.blob_list("self_mask_shares", size, len(held)), strict=True)
            )
            client._key_shares = dict(
                zip(held, r.blob_list("key_shares", size, len(held)), strict=True)
            )
        return client


class _StateReader:
    """Typed, strict access to a client state; every failure is a one-line protocol error."""

    def __init__(self, state: Mapping[str, object]) -> None:
        self._state = state

    @staticmethod
    def fail(key: str, what: str) -> NoReturn:
        raise SecAggProtocolError(f"secagg client state: malformed key '{key}': {what}")

    def _get(self, key: str) -> object:
        if key not in self._state:
            raise SecAggProtocolError(f"secagg client state: missing key '{key}'")
        return self._state[key]

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an int, got {type(value).__name__}")
        return value

    def client_id(self, key: str) -> int:
        value = self.integer(key)
        if not 0 <= value <= _MAX_ID:
            self.fail(key, f"client ids lie in [0, {_MAX_ID}]")
        return value

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            self.fail(key, f"expected a str, got {type(value).__name__}")
        return value

    def blob(self, key: str, size: int) -> bytes:
        value = self._get(key)
        if not isinstance(value, bytes) or len(value) != size:
            self.fail(key, f"expected {size} bytes, got {_describe(value)}")
        return value

    def _list(self, key: str) -> list[object]:
        value = self._get(key)
        if not isinstance(value, list):
            self.fail(key, f"expected a list, got {type(value).__name__}")
        return value

    def id_list(self, key: str) -> list[int]:
        values = self._list(key)
        ids = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(ids) != len(values):
            self.fail(key, "expected a list of ints")
        if any(not 0 <= v <= _MAX_ID for v in ids):
            self.fail(key, f"client ids lie in [0, {_MAX_ID}]")
        if ids != sorted(set(ids)):
            self.fail(key, "ids must be distinct and sorted")
        return ids

    def blob_list(self, key: str, size: int, count: int) -> list[bytes]:
        values = self._list(key)
        if len(values) != count:
            self.fail(key, f"expected {count} entries, got {len(values)}")
        blobs: list[bytes] = []
        for v in values:
            if not isinstance(v, bytes) or len(v) != size:
                self.fail(key, f"expected entries of {size} bytes, got {_describe(v)}")
            blobs.append(v)
        return blobs


def _describe(value: object) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# Server

_M = TypeVar("_M", AdvertiseKeys, ShareKeys, MaskedInput, UnmaskShares)
_Check = Callable[[bytes], str | None]
"""Checks a rebuilt secret: None if it is right, else why not."""


def _components(nodes: frozenset[int], graph: Graph) -> list[frozenset[int]]:
    """The connected components of the subgraph of ``graph`` induced on ``nodes``."""
    left = set(nodes)
    parts = []
    while left:
        start = min(left)
        seen, todo = {start}, [start]
        while todo:
            for v in graph[todo.pop()] & nodes:
                if v not in seen:
                    seen.add(v)
                    todo.append(v)
        left -= seen
        parts.append(frozenset(seen))
    return parts


def _one_line(text: str) -> str:
    """A client-supplied text as one short line, safe to log."""
    return " ".join(str(text).split())[:_REASON_CHARS]


class SecAggServer:
    """The server's side of one round: four methods, each taking the replies that arrived.

    The server learns the sum of the inputs of the clients that sent a masked input, provided every
    needed secret has t live holders and those clients are connected in the graph; otherwise it
    raises `SecAggAbort`. A reply for another round or stage, or a second reply from one client in
    a stage, drops that client from the round (`rejected`); a `Refusal` drops it too (`refusals`).
    """

    def __init__(self, config: SecAggConfig, graph: Graph) -> None:
        """Check the graph (symmetric, no self-loops) and that t fits every neighbourhood."""
        self.config = config
        if config.threshold < 2:
            raise SecAggProtocolError(
                f"threshold {config.threshold} is below 2: a client's own share would rebuild its "
                "self mask"
            )
        self.graph: dict[int, frozenset[int]] = {u: frozenset(vs) for u, vs in graph.items()}
        for u, vs in self.graph.items():
            if u in vs or any(v not in self.graph or u not in self.graph[v] for v in vs):
                raise SecAggProtocolError(f"graph is not symmetric or has a self-loop at {u}")
            closed = len(vs) + 1
            if not closed / 2 < config.threshold <= closed:
                raise SecAggProtocolError(
                    f"threshold {config.threshold} must exceed half of, and fit in, client {u}'s "
                    f"neighbourhood of {closed}"
                )
        self._stage = 0
        self._public: dict[int, AdvertiseKeys] = {}
        self._alive: list[frozenset[int]] = [frozenset(self.graph)]
        self._masked: dict[int, np.ndarray] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self.rejected: dict[int, str] = {}
        """Clients dropped for a bad reply (stale, misaddressed, duplicate, malformed): why."""
        self.refusals: dict[int, str] = {}
        """Clients that refused a stage (`Refusal`): the stage."""

    def _advance(self, expected: int) -> None:
        if self._stage != expected:
            raise SecAggProtocolError(f"server stage '{STAGES[expected]}' called out of order")
        self._stage = expected + 1

    def _next_stage(self) -> str:
        """The stage whose replies the server takes next."""
        return STAGES[min(self._stage, len(STAGES) - 1)]

    def reject(self, client_id: int, stage: str, reason: str) -> None:
        """Drop ``client_id`` from the round for a bad reply in ``stage``; log why.

        Its replies are ignored from now on, so it counts as a dropout of ``stage``. Adapters
        call this for replies they cannot parse; the stage methods call it for stale and
        duplicate replies.
        """
        if client_id in self.rejected or client_id in self.refusals:
            return
        self.rejected[client_id] = f"{stage}: {reason}"
        logger.warning(
            "secure aggregation: client %d dropped at '%s': %s", client_id, stage, reason
        )

    def refuse(self, refusal: Refusal) -> None:
        """Take a client's `Refusal` of the current stage: drop it from the round and count it.

        A refusal for another round or stage is stale: the client is dropped as for any stale
        reply, but not counted as refusing.
        """
        stage = self._next_stage()
        cid = refusal.client_id
        if cid not in self._alive[-1] or cid in self.rejected or cid in self.refusals:
            return
        if refusal.round_id != self.config.round_id or refusal.stage != stage:
            self.reject(
                cid, stage, self._foreign(refusal.round_id, refusal.stage, stage, "refusal")
            )
            return
        self.refusals[cid] = stage
        logger.warning(
            "secure aggregation: client %d refused stage '%s': %s",
            cid,
            stage,
            _one_line(refusal.reason),
        )

    def _foreign(self, round_id: int, stage: str, expected: str, what: str) -> str:
        """Why a reply bound to another round, or to another stage than ``expected``, is dropped."""
        if round_id != self.config.round_id:
            return f"stale {what}: bound to another round (round id {round_id})"
        return f"{what} for stage {_one_line(stage)[:40]!r} in stage '{expected}'"

    def _index(self, replies: Iterable[_M], stage: int) -> dict[int, _M]:
        """Index the stage's replies by client; drop stale, duplicate and out-of-round ones."""
        name = STAGES[stage]
        by_id: dict[int, _M] = {}
        twice: set[int] = set()
        previous = self._alive[-1]
        for reply in replies:
            cid = reply.client_id
            if cid in self.rejected or cid in self.refusals:
                continue
            if cid not in previous:
                logger.warning(
                    "secure aggregation: ignored a '%s' reply from client %d, which is not in "
                    "this stage",
                    name,
                    cid,
                )
                continue
            if reply.round_id != self.config.round_id or reply.stage != name:
                self.reject(cid, name, self._foreign(reply.round_id, reply.stage, name, "reply"))
                by_id.pop(cid, None)
                continue
            if cid in by_id or cid in twice:
                twice.add(cid)
                by_id.pop(cid, None)
                continue
            by_id[cid] = reply
        for cid in sorted(twice):
            self.reject(cid, name, "replied more than once in this stage")
        return by_id

    def _abort(self, stage: str, message: str, alive: int, needed: int) -> SecAggAbort:
        self._stage = len(STAGES) + 1  # no further calls
        return SecAggAbort(stage, message, alive, needed)

    def _require_connected(self, stage: str, survivors: frozenset[int]) -> None:
        """The clients to be summed must form one connected group in the masking graph."""
        parts = _components(survivors, self.graph)
        if len(parts) > 1:
            self._stage = len(STAGES) + 1  # no further calls
            raise SecAggSplit(stage, [len(part) for part in parts])

    def _require_holders(self, stage: str, owners: Iterable[int], holders: frozenset[int]) -> None:
        """Every owner's secrets need t live holders in its closed neighbourhood."""
        t = self.config.threshold
        total = len(holders)
        if total < t:
            raise self._abort(stage, f"{total} clients alive, threshold {t}", total, t)
        for u in sorted(owners):
            live = len((self.graph[u] | {u}) & holders)
            if live < t:
                raise self._abort(
                    stage,
                    f"client {u}'s neighbourhood has {live} live share holders, threshold {t} "
                    f"({total} clients alive)",
                    live,
                    t,
                )

    def receive_keys(self, replies: Iterable[AdvertiseKeys]) -> dict[int, KeysBroadcast]:
        """Stage 0 → 1: record the advertised keys and send each client its neighbours' keys."""
        self._advance(0)
        got = self._index(replies, 0)
        self._drop_bad_keys(got)
        u1 = frozenset(got)
        self._require_holders(STAGES[0], u1, u1)
        self._public = dict(got)
        self._alive.append(u1)
        out = {}
        for u in sorted(u1):
            nbrs = tuple(sorted(self.graph[u] & u1))
            out[u] = KeysBroadcast(
                self.config.round_id,
                u,
                nbrs,
                tuple(got[v].cipher_public_key for v in nbrs),
                tuple(got[v].mask_public_key for v in nbrs),
            )
        return out

    def _drop_bad_keys(self, got: dict[int, AdvertiseKeys]) -> None:
        """Drop clients whose public keys no honest client would accept (before any broadcast).

        A key that is not a valid X25519 point of full order, a client whose two keys are equal,
        and a key that two clients advertised would make every neighbour fail at share keys
        ("key broadcast contains repeated public keys" or a refused agreement). Fresh keys are
        drawn every round and no client sees another's before it has advertised its own, so a
        key held by two clients means both are faulty or colluding: both are dropped.
        """
        holders: dict[bytes, list[int]] = {}
        for u, reply in sorted(got.items()):
            problem = _public_key_problem(reply.cipher_public_key) or _public_key_problem(
                reply.mask_public_key
            )
            if problem is None and reply.cipher_public_key == reply.mask_public_key:
                problem = "its two public keys are the same"
            if problem is not None:
                self.reject(u, STAGES[0], problem)
                del got[u]
                continue
            for key in {reply.cipher_public_key, reply.mask_public_key}:
                holders.setdefault(key, []).append(u)
        for owners in holders.values():
            if len(owners) > 1:
                for u in owners:
                    others = ", ".join(str(v) for v in owners if v != u)
                    self.reject(
                        u, STAGES[0], f"advertised a public key that client {others} did too"
                    )
                    got.pop(u, None)

    def route_shares(self, replies: Iterable[ShareKeys]) -> dict[int, SharesDelivery]:
        """Stage 1 → 2: deliver each surviving client the ciphertexts addressed to it."""
        self._advance(1)
        got = self._index(replies, 1)
        u1 = self._alive[-1]
        for u, reply in sorted(got.items()):
            if len(reply.receiver_ids) != len(reply.ciphertexts) or set(reply.receiver_ids) != (
                self.graph[u] & u1
            ):
                self.reject(u, STAGES[1], "did not encrypt shares to its neighbours")
                del got[u]
        u2 = frozenset(got)
        self._require_holders(STAGES[1], u2, u2)
        self._alive.append(u2)
        inbox: dict[int, dict[int, bytes]] = {v: {} for v in u2}
        for u in sorted(u2):
            for v, blob in zip(got[u].receiver_ids, got[u].ciphertexts, strict=True):
                if v in u2:
                    inbox[v][u] = blob
        return {
            v: SharesDelivery(
                self.config.round_id, v, tuple(sorted(msgs)), tuple(msgs[u] for u in sorted(msgs))
            )
            for v, msgs in inbox.items()
        }

    def collect_masked(self, replies: Iterable[MaskedInput]) -> dict[int, UnmaskRequest]:
        """Stage 2 → 3: keep the masked inputs; ask each survivor for the shares to unmask.

        Before any request goes out, the survivors must pass the threshold checks and be
        connected in the graph (else `SecAggAbort` / `SecAggSplit`). A masked vector of the
        wrong size or range drops its sender.
        """
        self._advance(2)
        masked: dict[int, np.ndarray] = {}
        for u, reply in sorted(self._index(replies, 2).items()):
            try:
                masked[u] = decode_vector(reply.masked, self.config.vector_length, self.config.bits)
            except SecAggProtocolError as exc:
                self.reject(u, STAGES[2], str(exc))
        u2 = self._alive[-1]
        u3 = frozenset(masked)
        dropped = u2 - u3
        self._require_holders(STAGES[2], u3, u3)
        self._require_dropped_holders(STAGES[2], dropped, u3)
        self._require_connected(STAGES[2], u3)
        self._masked = masked
        self._alive.append(u3)
        self._requests = {
            u: UnmaskRequest(
                self.config.round_id,
                u,
                tuple(sorted((self.graph[u] | {u}) & u3)),
                tuple(sorted(self.graph[u] & dropped)),
            )
            for u in sorted(u3)
        }
        return dict(self._requests)

    def _require_dropped_holders(
        self, stage: str, dropped: Iterable[int], holders: frozenset[int]
    ) -> None:
        """A dropped client's key must be rebuilt if any live neighbour masked with it."""
        t = self.config.threshold
        for d in sorted(dropped):
            live = len(self.graph[d] & holders)
            if 0 < live < t:
                raise self._abort(
                    stage,
                    f"dropped client {d} has {live} live share holders, threshold {t} "
                    f"({len(holders)} clients alive)",
                    live,
                    t,
                )

    def unmask(self, replies: Iterable[UnmaskShares]) -> SecAggResult:
        """Stage 3 → result: rebuild the secrets, strip the masks, return the sum mod 2^bits.

        A holder whose reply does not answer its request (other clients, wrong counts, shares
        of the wrong size) is dropped. A share that does not fit its secret (reconstruction
        fails, or a rebuilt mask key does not match its public key) is traced to its holder
        when the other holders' shares rebuild the secret without it (at least t + 1 shares
        arrived); that holder is dropped and the secrets are rebuilt without its shares. With
        only t shares the culprit cannot be told apart: `SecAggCryptoError`, the round fails.
        """
        self._advance(3)
        got = self._index(replies, 3)
        cfg = self.config
        u2, u3 = self._alive[2], self._alive[3]
        dropped = u2 - u3
        for h, reply in sorted(got.items()):
            problem = self._unmask_reply_problem(reply, self._requests[h])
            if problem is not None:
                self.reject(h, STAGES[3], problem)
                del got[h]
        t = cfg.threshold
        while True:
            u4 = frozenset(got)
            self._require_holders(STAGES[3], u3, u4)
            self._require_dropped_holders(STAGES[3], dropped, u4)
            b_shares: dict[int, dict[int, bytes]] = {u: {} for u in u3}
            k_shares: dict[int, dict[int, bytes]] = {d: {} for d in dropped}
            holder_of: dict[int, int] = {}
            for h, reply in got.items():
                holder_of[_x(h)] = h
                for v, share in zip(reply.survivor_ids, reply.self_mask_shares, strict=True):
                    b_shares[v][_x(h)] = share
                for d, share in zip(reply.dropped_ids, reply.key_shares, strict=True):
                    k_shares[d][_x(h)] = share
            try:
                seeds = {
                    u: self._rebuild(b_shares[u], t, f"self-mask seed of client {u}", None)
                    for u in sorted(u3)
                }
                keys = {
                    d: self._rebuild(
                        k_shares[d], t, f"mask key of dropped client {d}", self._key_check(d), d
                    )
                    for d in sorted(dropped)
                    if self.graph[d] & u3
                }
            except _BadShares as bad:
                culprit = _odd_one_out(bad.shares, t, bad.check)
                if culprit is None and bad.owner is not None and _all_agree(bad.shares, t):
                    # Every t of the shares rebuild the same key, and it is not the one the
                    # owner advertised: the owner shared another key than it advertised.
                    self.reject(
                        bad.owner, STAGES[3], "its key shares rebuild a key it did not advertise"
                    )
                    self._stage = len(STAGES) + 1  # no further calls
                    raise SecAggCryptoError(
                        f"cannot rebuild the {bad.what}: {bad.error}; its {len(bad.shares)} "
                        f"shares agree, so client {bad.owner} advertised a key it did not share"
                    ) from None
                if culprit is None:
                    self._stage = len(STAGES) + 1  # no further calls
                    raise SecAggCryptoError(
                        f"cannot rebuild the {bad.what}: {bad.error}; with {len(bad.shares)} "
                        f"shares for threshold {t} the bad share cannot be traced to its holder"
                    ) from None
                h = holder_of[culprit]
                self.reject(h, STAGES[3], f"returned a share that does not fit the {bad.what}")
                del got[h]
                continue
            break
        dtype = ring_dtype(cfg.bits)
        total = np.zeros(cfg.vector_length, dtype=dtype)  # wraps; reduced mod 2^bits at the end
        for u in sorted(u3):
            total += self._masked[u]
            total -= expand_mask(seeds[u], cfg.vector_length, cfg.bits)
        for d, raw in sorted(keys.items()):
            s_key = load_private_key(raw)
            for u in sorted(self.graph[d] & u3):
                seed = derive_mask_seed(agree(s_key, self._public[u].mask_public_key), cfg.context)
                p = expand_mask(seed, cfg.vector_length, cfg.bits)
                # u added +p if d > u and −p if d < u; undo it.
                if d > u:
                    total -= p
                else:
                    total += p
        total &= dtype.type((1 << cfg.bits) - 1)
        self._alive.append(frozenset(got))
        self._masked.clear()
        return SecAggResult(
            total.astype(np.uint64), tuple(sorted(u3)), tuple(sorted(set(self.graph) - u3))
        )

    @staticmethod
    def _unmask_reply_problem(reply: UnmaskShares, asked: UnmaskRequest) -> str | None:
        """Why an unmask reply does not answer its request, or None."""
        if (
            tuple(reply.survivor_ids) != asked.survivor_ids
            or tuple(reply.dropped_ids) != asked.dropped_ids
            or len(reply.self_mask_shares) != len(asked.survivor_ids)
            or len(reply.key_shares) != len(asked.dropped_ids)
        ):
            return "did not return the shares it was asked for"
        shares = (*reply.self_mask_shares, *reply.key_shares)
        if any(not isinstance(x, bytes) or len(x) != shamir.SHARE_BYTES for x in shares):
            return f"returned shares that are not {shamir.SHARE_BYTES} bytes"
        return None

    def _key_check(self, client_id: int) -> _Check:
        """A check that a rebuilt private key is the one `client_id` advertised."""
        public = self._public[client_id].mask_public_key

        def matches(raw: bytes) -> str | None:
            if public_bytes(load_private_key(raw)) != public:
                return "the rebuilt key does not match its public key"
            return None

        return matches

    @staticmethod
    def _rebuild(
        shares: Mapping[int, bytes],
        threshold: int,
        what: str,
        check: _Check | None,
        owner: int | None = None,
    ) -> bytes:
        """Rebuild a secret (and check it), or raise `_BadShares` naming what failed."""
        problem = _try_rebuild(shares, threshold, check)
        if isinstance(problem, bytes):
            return problem
        raise _BadShares(what, problem, shares, check, owner)


class _BadShares(Exception):  # noqa: N818 (internal signal, never leaves `unmask`)
    """The shares of one secret do not rebuild it."""

    def __init__(
        self,
        what: str,
        error: str,
        shares: Mapping[int, bytes],
        check: _Check | None,
        owner: int | None,
    ) -> None:
        super().__init__(what)
        self.what, self.error, self.shares, self.check = what, error, dict(shares), check
        self.owner = owner


def _try_rebuild(shares: Mapping[int, bytes], threshold: int, check: _Check | None) -> bytes | str:
    """The rebuilt secret, or why it could not be rebuilt (a str)."""
    try:
        secret = shamir.reconstruct(shares, threshold)
    except shamir.ShamirError as exc:
        return str(exc)
    problem = None if check is None else check(secret)
    return secret if problem is None else problem


def _odd_one_out(shares: Mapping[int, bytes], threshold: int, check: _Check | None) -> int | None:
    """The one share index without which the others rebuild the secret, or None if not unique.

    Needs at least t + 1 shares. A random-looking bad share makes every reconstruction that
    uses it fail (the result is not a 32-byte secret, or not the advertised key), so leaving
    out each share in turn singles it out; a share crafted to shift the secret cannot be caught
    this way (the protocol's threat model is an honest-but-curious server and clients).
    """
    if len(shares) <= threshold:
        return None
    fits = [
        x
        for x in sorted(shares)
        if isinstance(
            _try_rebuild({y: v for y, v in shares.items() if y != x}, threshold, check), bytes
        )
    ]
    return fits[0] if len(fits) == 1 else None


def _all_agree(shares: Mapping[int, bytes], threshold: int) -> bool:
    """Whether at least t + 1 shares are consistent: leaving out any one rebuilds one secret."""
    if len(shares) <= threshold:
        return False
    secrets = {
        _try_rebuild({y: v for y, v in shares.items() if y != x}, threshold, None)
        for x in sorted(shares)
    }
    return len(secrets) == 1 and isinstance(next(iter(secrets)), bytes)


def _public_key_problem(key: object) -> str | None:
    """Why an advertised X25519 public key is unusable (wrong size, low order), or None."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        return f"a public key is not {KEY_BYTES} bytes"
    try:
        agree(generate_private_key(), key)  # a throwaway key: only the point is checked
    except SecAggCryptoError:
        return "a public key is a low-order point"
    return None


def run_round(
    clients: Sequence[SecAggClient],
    server: SecAggServer,
    inputs: Mapping[int, np.ndarray],
    drop_before: Mapping[str, Iterable[int]] | None = None,
) -> SecAggResult:
    """Drive one in-process round (for simulations and tests).

    ``drop_before`` maps a stage name to the clients that go silent before replying in it (and
    stay silent afterwards).
    """
    drops = {stage: set(ids) for stage, ids in (drop_before or {}).items()}
    if set(drops) - set(STAGES):
        raise SecAggProtocolError(f"unknown stages {sorted(set(drops) - set(STAGES))}")
    by_id = {c.client_id: c for c in clients}
    gone: set[int] = set()

    def alive(stage: str, addressed: Iterable[int]) -> list[int]:
        gone.update(drops.get(stage, ()))
        return [u for u in addressed if u not in gone]

    keys = [by_id[u].advertise_keys() for u in alive(STAGES[0], by_id)]
    broadcasts = server.receive_keys(keys)
    shares = [by_id[u].share_keys(broadcasts[u]) for u in alive(STAGES[1], broadcasts)]
    deliveries = server.route_shares(shares)
    masked = [by_id[u].masked_input(deliveries[u], inputs[u]) for u in alive(STAGES[2], deliveries)]
    requests = server.collect_masked(masked)
    return server.unmask([by_id[u].unmask(requests[u]) for u in alive(STAGES[3], requests)])
