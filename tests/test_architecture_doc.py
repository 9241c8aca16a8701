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

from privet.task.config import RunConfig
from privet.task.task import build_task_model, task_named

head_only = task_named("head-only")
mlp = build_task_model(head_only, "mlp", (4,), 2, 0)
assert head_only.travelling(mlp) == ["5.weight", "5.bias"], head_only.travelling(mlp)
assert RunConfig(task="head-only", model="mlp").task == "head-only"

from privet.server.federation_privacy import FederationPrivacy
from privet.server.sampling import ClientSampler
from privet.server.strategy import PrivetFedAvg
from flwr.app import ArrayRecord

strategy = PrivetFedAvg(
    FederationPrivacy(),
    sampler=ClientSampler(np.random.default_rng(0), rate=1.0),
    optimizer=ServerMomentum(0.5),
)
weights = [np.zeros(2, dtype=np.float32)]
first = strategy._next_model(1, weights, [np.ones(2)])[0].to_numpy_ndarrays()
second = strategy._next_model(2, first, [np.ones(2)])[0].to_numpy_ndarrays()
assert first[0].tolist() == [1.0, 1.0] and second[0].tolist() == [2.5, 2.5], (first, second)
print("ok")
"""


def test_the_documented_model_data_set_task_event_and_strategy_part_work_as_written():
    text = (REPO / "docs" / "architecture.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 5, "expected the model, data set, task, event and strategy-part examples"
    program = "\n\n".join(blocks) + "\n" + CHECKS
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
