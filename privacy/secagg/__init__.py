"""Secure aggregation (Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al. 2020).

Plain code with no Flower imports, driven by the adapters in `server/` and `client/`:

- `privacy.secagg.quantization`: clipped floats → integers mod 2^b that cannot overflow, and back.
- `privacy.secagg.crypto`: X25519, HKDF-SHA256, ChaCha20-Poly1305 and the ChaCha20 mask PRG.
- `privacy.secagg.shamir`: t-of-n sharing of 32-byte secrets.
- `privacy.secagg.protocol`: the four-stage client and server state machines and their messages.
"""

from privet.privacy.secagg.crypto import SecAggCryptoError, SecAggError, SeededRandom, expand_mask
from privet.privacy.secagg.protocol import (
    STAGES,
    STATE_SCHEMA,
    AdvertiseKeys,
    KeysBroadcast,
    MaskedInput,
    Refusal,
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggProtocolError,
    SecAggRefusal,
    SecAggResult,
    SecAggServer,
    SecAggSplit,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskShares,
    build_graph,
    default_degree,
    run_round,
)
from privet.privacy.secagg.quantization import (
    QuantizationError,
    QuantizationSpec,
    QuantizedUpdate,
    dequantize_sum,
    quantize,
    required_bits,
    sum_mod,
)
from privet.privacy.secagg.shamir import ShamirError

__all__ = [
    "STAGES",
    "STATE_SCHEMA",
    "AdvertiseKeys",
    "KeysBroadcast",
    "MaskedInput",
    "QuantizationError",
    "QuantizationSpec",
    "QuantizedUpdate",
    "Refusal",
    "SecAggAbort",
    "SecAggClient",
    "SecAggConfig",
    "SecAggCryptoError",
    "SecAggError",
    "SecAggProtocolError",
    "SecAggRefusal",
    "SecAggResult",
    "SecAggServer",
    "SecAggSplit",
    "SeededRandom",
    "ShamirError",
    "ShareKeys",
    "SharesDelivery",
    "UnmaskRequest",
    "UnmaskShares",
    "build_graph",
    "default_degree",
    "dequantize_sum",
    "expand_mask",
    "quantize",
    "required_bits",
    "run_round",
    "sum_mod",
]
