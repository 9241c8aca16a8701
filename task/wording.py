"""Say a fix in the words of where the user runs Privet: CLI flags, or a deployment's keys.

Privet's checks phrase their fixes as `privet simulate` flags ("lower --delta"), because the
flags and Flower's run-config keys are the same names (`RunConfig.key_names`). In a deployment
there are no flags: the coordinator sets run-config keys (`flwr run --run-config "delta=1e-5"`),
and a partner's node has its own node-config keys and its own file, so a simulation hint such as
"use fewer clients" (which shrinks every shard of a shared data set) points nowhere. A message
that reaches a deployment's console, log or results.json passes through `for_deployment` at the
boundary (the ServerApp under `flwr run`, the ClientApp on a node), so the checks themselves
keep one wording.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["for_deployment", "reworded"]

_FLAG = re.compile(r"(?<![\w-])--(no-)?([a-z][a-z0-9-]*)")

# Hints that only make sense in a simulation, said for a partner's node with its own data file.
_NODE_HINTS: tuple[tuple[str, str], ...] = (("use fewer clients", "give this node more examples"),)


def for_deployment(text: str, run_keys: Iterable[str], *, own_data: bool = False) -> str:
    """`text` with each `--key` that is a run-config key said as the run-config key.

    `--delta` becomes "run-config key delta", `--no-reproducible` becomes "run-config key
    reproducible=false"; flags that are not run-config keys are left as they are (they belong to
    a command the user does run, such as `privet node`). With `own_data` (a node that trains on
    its own file) simulation-only hints are replaced by what that node's operator can do.
    """
    keys = set(run_keys)

    def key(match: re.Match[str]) -> str:
        negated, name = match.group(1), match.group(2)
        if name not in keys:
            return match.group(0)
        return f"run-config key {name}=false" if negated else f"run-config key {name}"

    worded = _FLAG.sub(key, text)
    if own_data:
        for simulation, node in _NODE_HINTS:
            worded = worded.replace(simulation, node)
    return worded


def reworded(error: BaseException, text: str) -> BaseException:
    """An exception of `error`'s type carrying `text` (its cause is `error`).

    The type is kept because it is part of the message a Flower node sends back ("DataError:
    ..."); a type that cannot be rebuilt from one string becomes a RuntimeError.
    """
    if text == str(error):
        return error
    try:
        new = type(error)(text)
    except Exception:  # noqa: BLE001 - any constructor that needs more than a message
        new = RuntimeError(f"{type(error).__name__}: {text}")
    new.__cause__ = error
    return new
