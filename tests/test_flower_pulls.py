"""Flower's object pulls retry promptly where Privet runs Flower code (task.flower_pulls)."""

import subprocess
import sys


def test_prompt_object_pulls_sets_only_the_back_off_of_flowers_pull_functions():
    """Run in a fresh interpreter: the change is per process, and the test must not leak it."""
    code = """
import flwr
from flwr.supercore.inflatable import inflatable_utils as iu
from privet.task.flower_pulls import PROMPT_BACKOFF_CAP_S, PROMPT_BACKOFF_S, prompt_object_pulls
before = [dict(f.__kwdefaults__) for f in (iu.pull_objects, iu.pull_and_inflate_object_from_tree)]
assert before[0]["initial_backoff"] == 1 and before[0]["backoff_cap"] == 10, before
assert prompt_object_pulls() is True
for f, old in zip((iu.pull_objects, iu.pull_and_inflate_object_from_tree), before):
    now = f.__kwdefaults__
    assert now["initial_backoff"] == PROMPT_BACKOFF_S and now["backoff_cap"] == PROMPT_BACKOFF_CAP_S
    assert {k: v for k, v in now.items() if k not in ("initial_backoff", "backoff_cap")} == {
        k: v for k, v in old.items() if k not in ("initial_backoff", "backoff_cap")
    }
flwr.__version__ = "0.0.0"
assert prompt_object_pulls() is False  # another release: nothing assumed
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_missing_object_is_asked_for_again_within_a_tenth_of_a_second():
    """The behaviour that matters: an object that appears 0.2 s late is fetched ~0.2 s later."""
    code = """
import time
from flwr.supercore.inflatable import inflatable_utils as iu
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
from privet.task.flower_pulls import prompt_object_pulls
prompt_object_pulls()
start = time.monotonic()
def pull(object_id):
    if time.monotonic() - start < 0.2:
        raise ObjectUnavailableError(object_id)
    return b"x"
iu.pull_objects(["a"], pull)
print(round(time.monotonic() - start, 3))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < 0.6  # Flower's default back-off would take ≥ 0.8 s (1 s ± 20%)
