"""The extension examples in docs/architecture.md run as written (a fresh process per check)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECKS = """
import math
import dp_accounting
from privet.task.models import build_model
from privet.task.datasets import load_dataset
from privet.privacy import PrivacyLedger

model = build_model("wide-mlp", (4,), 2)
assert model(__import__("torch").zeros(3, 4)).shape == (3, 2)
data = load_dataset("blobs")
assert data.train.features.shape == (1000, 4) and data.test.features.shape == (200, 4)

ledger = PrivacyLedger("doc", "example", 1e-5)
ledger.record(1, [GaussianRelease(2.0, 6.0, 3)])
orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
reference = dp_accounting.rdp.RdpAccountant(orders)
reference.compose(dp_accounting.GaussianDpEvent(3.0), 3)
assert math.isclose(ledger.epsilon("rdp"), reference.get_epsilon(1e-5), rel_tol=1e-3), (
    ledger.epsilon("rdp"), reference.get_epsilon(1e-5))
print("ok")
"""


def test_the_documented_model_data_set_and_event_work_as_written():
    text = (REPO / "docs" / "architecture.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3, "expected the model, data set and event examples"
    program = "\n\n".join(blocks) + "\n" + CHECKS
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
