"""Prompt object pulls in Flower 1.42: look again for a message's objects after 0.05 s, not 1 s.

Why: a Flower 1.42 SuperNode hands a message to its ClientApp process as soon as the message is
listed, while it is still pulling the message's objects (the model's arrays) from the SuperLink.
The ClientApp asks the SuperNode for them at once, finds them missing, and Flower's
`pull_objects` waits 1 s, then 2 s, then 4 s (± 20%) before asking again: a deployed message
spent about 3 s waiting for arrays that arrived a few tenths of a second after the first ask
(measured with `PRIVET_NODE_PROFILE`). The ServerApp's `HttpGrid` pulls replies with the same
defaults.

What: `prompt_object_pulls()` changes only the default back-off of Flower's two pulling
functions, in the calling process: first retry after PROMPT_BACKOFF_S, doubling up to
PROMPT_BACKOFF_CAP_S (Flower: 1 s up to 10 s). Nothing else of Flower's changes (its limits on
tries and time stay). It is applied by the processes Privet runs Flower code in (a `privet node`
message's process, the ServerApp under `flwr run`), and only on the flwr release it was written
against; elsewhere it changes nothing and says so.
"""

from __future__ import annotations

__all__ = ["FLOWER_VERSION", "PROMPT_BACKOFF_CAP_S", "PROMPT_BACKOFF_S", "prompt_object_pulls"]

FLOWER_VERSION = "1.42.0"
PROMPT_BACKOFF_S = 0.05
PROMPT_BACKOFF_CAP_S = 0.5


def prompt_object_pulls() -> bool:
    """Make Flower's object pulls in this process retry promptly; False where flwr differs."""
    import flwr
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    defaults = [function.__kwdefaults__ for function in functions]
    if flwr.__version__ != FLOWER_VERSION or not all(
        kw is not None and {"initial_backoff", "backoff_cap"} <= kw.keys() for kw in defaults
    ):
        return False
    for kw in defaults:
        assert kw is not None
        kw["initial_backoff"] = PROMPT_BACKOFF_S
        kw["backoff_cap"] = PROMPT_BACKOFF_CAP_S
    return True
