"""A deployed round against the same round in process: the README's federation, timed.

What: the README's secure deployment on 127.0.0.1 (TLS, node authentication, the Fleet gateway,
an app signed by the coordinator, `node-clients`), with ``--nodes`` nodes (default 4) that each
hold their own CSV (digits, disjoint rows) and train with Opacus DP-SGD at target ε 4, for
``--rounds`` rounds (default 4), in four set-ups run one after another in this process' children:

- ``warm/plain`` and ``warm/secure``: nodes started with ``privet node`` (README), without and with
  secure aggregation;
- ``cold/plain`` and ``cold/secure``: nodes started with Flower's plain ``flower-supernode`` (a
  fresh ClientApp process, and fresh imports, for every message), the baseline.

The reference is the in-process engine on the same configuration (the coordinator's test CSV,
encoded with the same schema, split into ``--nodes`` clients, so the clients' row counts differ
from the nodes' files by a few tens of rows each; the model, DP plan, rounds and secure
aggregation are the same).

Timing: the parent polls the server's ``checkpoint.json`` every 0.05 s and stamps the moment each
round first appears there (after the round's aggregation, evaluation and checkpoint). A round's
time is the gap between two stamps; ``steady round`` is the median over rounds 2..R (round 1 also
holds discovery); ``first update`` is the moment node 0's ledger first records a release, from
``flwr run``'s start (an upper bound on its first training step). The in-process engine is timed
the same way through its round callback.

Ratios printed: deployed steady round / in-process steady round, and secure / plain for each kind
of node. A set-up that does not finish all rounds is an error, not a measurement.

The issue's bound for a deployed round is 3x the in-process round plus one network round trip per
stage. Each deployed run measures its round trips itself: with ``link-check`` (``--link-checks``,
default 3) the server times bare exchanges with every node before round 1 (`server.link_check`):
an empty message (the size of a key stage) and the model out and back (the size of a TRAIN
stage). ``bound`` is 3 x in-process steady + model RTT + (stages - 1) x empty RTT, with 1 stage
plain and 2 secure (a steady secure round's keys were exchanged during the round before: stage
folding, `server.secure_aggregation.KeysAhead`); ``within`` says whether the steady round is at
most that. Round 1 and ``first update`` are printed without the link check's time (it runs
before round 1).

    .venv/bin/python -m benchmarks.deployed_round                # 4 nodes, 4 rounds (~8-12 min)
    .venv/bin/python -m benchmarks.deployed_round --setups warm/plain,warm/secure --rounds 3
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.federation import BIN, Federation, FederationData, copy_app, node_files

SETUPS = ("warm/plain", "warm/secure", "cold/plain", "cold/secure")


@dataclass
class Timing:
    """When each round ended, from the start of the run, and when node 0 first released."""

    setup: str
    round_ends: list[float] = field(default_factory=list)
    first_update: float | None = None
    exchanges: list[int] = field(default_factory=list)
    """Exchanges with the nodes each round took (results.json; 1 for a plain round)."""
    error: str | None = None
    link_check: dict | None = None
    """results.json's ``link_check`` (bare exchanges timed before round 1), deployed set-ups."""

    @property
    def link_check_s(self) -> float:
        """Seconds the link check took before round 1 (0 without one)."""
        if not self.link_check:
            return 0.0
        return float(sum(self.link_check["empty_s"]) + sum(self.link_check["model_s"]))

    @property
    def steady(self) -> float | None:
        gaps = [b - a for a, b in zip(self.round_ends, self.round_ends[1:], strict=False)]
        return statistics.median(gaps) if gaps else None


RESULTS_WITHIN_S = 60.0
"""How long after its last round the server may take to write results.json."""
STAGES = {"plain": 1, "secure": 2}
"""Exchanges of a steady round: TRAIN; or TRAIN + masked input and unmask, which carry the next
round's advertise-keys and share-keys stages (local evaluation runs in the last round only)."""


def run_config(
    data: FederationData, output: Path, nodes: int, rounds: int, secure: bool, link_checks: int
) -> str:
    """The run configuration every set-up shares (README's keys)."""
    return (
        f"{data.run_keys()} clients={nodes} link-check={link_checks} "
        f"rounds={rounds} local-epochs=1 target-epsilon=4.0 "
        f"secure-aggregation={'true' if secure else 'false'} secagg-timeout=60 "
        f"round-timeout=120 local-evaluation='last-round' output='{output}'"
    )


def _released(ledgers: Path) -> bool:
    """Whether node 0's ledger folder holds a ledger with a release (its first update)."""
    for path in ledgers.glob("*.json"):
        try:
            if json.loads(path.read_text())["entries"]:
                return True
        except (OSError, ValueError, KeyError):
            continue
    return False


def checkpoint_round(output: Path) -> int:
    try:
        return int(json.loads((output / "checkpoint.json").read_text())["round"])
    except (OSError, ValueError, KeyError):
        return 0


def time_deployment(  # noqa: PLR0913
    root: Path, setup: str, nodes: int, rounds: int, limit_s: float, link_checks: int
) -> Timing:
    """One deployed run of `setup`; its round stamps."""
    kind, mode = setup.split("/")
    timing = Timing(setup)
    data = node_files(root, nodes)
    output = root / "server-output"
    federation = Federation(root / "deploy")
    spec = federation.publish(copy_app(root))
    try:
        federation.start_superlink()
        federation.start_gateway()
        names = [f"node{k}" for k in range(nodes)]
        keys = federation.register(*names)
        for k, name in enumerate(names):
            federation.start_node(
                name,
                keys[name],
                f"client-id={k} {data.node_keys(k)} ledger-dir='{root / f'ledger-{k}'}'",
                warm=kind == "warm",
            )
        deadline = time.monotonic() + 120
        while federation.online_nodes() < nodes:
            if time.monotonic() > deadline:
                timing.error = "the nodes did not come online within 120 s"
                return timing
            time.sleep(0.5)
        config = run_config(data, output, nodes, rounds, mode == "secure", link_checks)
        clients = federation.node_clients({name: k for k, name in enumerate(names)})
        config += f" node-clients='{clients}'"
        ledgers = root / "ledger-0"
        start = time.monotonic()
        flwr_run = federation.start(
            "flwr-run", [str(BIN / "flwr"), "run", spec, "privet", "--run-config", config]
        )
        seen = 0
        while seen < rounds and time.monotonic() - start < limit_s:
            if flwr_run.poll() not in (None, 0):  # refused (the run never started)
                timing.error = f"flwr run exited with {flwr_run.returncode}: " + " | ".join(
                    federation.log("flwr-run").strip().splitlines()[-3:]
                )
                return timing
            now = checkpoint_round(output)
            while seen < now:
                seen += 1
                timing.round_ends.append(time.monotonic() - start)
            if timing.first_update is None and _released(ledgers):
                timing.first_update = time.monotonic() - start
            time.sleep(0.05)
        if seen < rounds:
            timing.error = f"{seen} of {rounds} rounds within {limit_s:.0f} s"
        else:
            results = _results(output, RESULTS_WITHIN_S)
            timing.link_check = results.get("link_check")
            timing.exchanges = [
                int((r.get("secure_aggregation") or {}).get("exchanges", 1))
                for r in results.get("rounds", [])
            ]
    finally:
        federation.close()
    return timing


def _results(output: Path, limit_s: float) -> dict:
    """results.json, once the run has written the link check into it ({} if it never does)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            results = json.loads((output / "results.json").read_text())
            if "link_check" in results:
                return results
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return {}


def time_in_process(root: Path, nodes: int, rounds: int, secure: bool) -> Timing:
    """The same configuration on the in-process engine, timed through its round callback."""
    from privet.simulations.engines import run_simulation_with
    from privet.task.config import RunConfig

    data = node_files(root, nodes)
    config = RunConfig.from_mapping(
        {
            "dataset": "csv",
            "data-file": str(data.test),
            "schema-file": str(data.schema),
            "clients": nodes,
            "rounds": rounds,
            "local-epochs": 1,
            "target-epsilon": 4.0,
            "secure-aggregation": secure,
            "local-evaluation": "last-round",
            "output": str(root / "in-process"),
        }
    )
    timing = Timing(f"in-process/{'secure' if secure else 'plain'}")
    start = time.monotonic()
    results = run_simulation_with(
        "in-process", config, lambda *_: timing.round_ends.append(time.monotonic() - start)
    )
    if not results.finished:
        timing.error = results.failure_reason or "did not finish"
    return timing


def _row(timing: Timing, reference: Timing | None) -> str:
    """One set-up's figures; for a deployment, its bound: 3x in process + one RTT per stage."""
    mode = timing.setup.split("/")[1]
    deployed = not timing.setup.startswith("in-")
    lead = timing.link_check_s  # the link check runs before round 1: not part of the run's work
    first = f"{timing.first_update - lead:.1f}" if timing.first_update is not None else ""
    steady = f"{timing.steady:.2f}" if timing.steady else ""
    ratio = bound = within = empty = model = ""
    if deployed and timing.steady and reference and reference.steady:
        ratio = f"{timing.steady / reference.steady:.1f}x"
    link = timing.link_check
    if deployed and link and timing.steady and reference and reference.steady:
        empty, model = f"{link['empty_median_s']:.2f}", f"{link['model_median_s']:.2f}"
        limit = (
            3 * reference.steady
            + link["model_median_s"]
            + (STAGES[mode] - 1) * link["empty_median_s"]
        )
        bound, within = f"{limit:.2f}", "yes" if timing.steady <= limit else "no"
    return (
        f"{timing.round_ends[0] - lead:>10.1f}{steady:>10}{first:>14}{ratio:>15}"
        f"{empty:>13}{model:>13}{bound:>9}{within:>8}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"of {', '.join(SETUPS)}")
    parser.add_argument("--limit", type=float, default=600, help="seconds a set-up may take")
    parser.add_argument("--json", type=Path, help="also write the timings here")
    parser.add_argument(
        "--link-checks", type=int, default=3, help="bare exchanges of each kind before round 1"
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every federation started here is stopped by its PIDs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    setups = [s for s in args.setups.split(",") if s]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown or args.nodes < 2 or args.rounds < 2 or not 1 <= args.link_checks <= 100:
        parser.error(
            f"choose set-ups from {SETUPS}, at least 2 nodes and 2 rounds, 1 to 100 link checks"
        )
    timings: dict[str, Timing] = {}
    with tempfile.TemporaryDirectory(prefix="privet-deployed-") as tmp:
        root = Path(tmp)
        for mode in ("plain", "secure"):
            if any(s.endswith(mode) for s in setups):
                folder = root / f"in-process-{mode}"
                folder.mkdir()
                timings[f"in-process/{mode}"] = time_in_process(
                    folder, args.nodes, args.rounds, mode == "secure"
                )
        for setup in setups:
            folder = root / setup.replace("/", "-")
            folder.mkdir()
            print(f"running {setup} ...", file=sys.stderr, flush=True)
            timings[setup] = time_deployment(
                folder, setup, args.nodes, args.rounds, args.limit, args.link_checks
            )
    print(
        f"\nDeployed rounds, {args.nodes} nodes on 127.0.0.1 (TLS, node authentication, gateway), "
        f"{args.rounds} rounds, digits CSV, Opacus DP-SGD at target ε 4"
    )
    print(
        f"{'set-up':<20}{'round 1 s':>10}{'steady s':>10}{'1st update s':>14}{'vs in-process':>15}"
        f"{'empty RTT s':>13}{'model RTT s':>13}{'bound s':>9}{'within':>8}"
    )
    for name, timing in timings.items():
        if timing.error:
            print(f"{name:<20}ERROR: {timing.error}")
            continue
        reference = timings.get("in-process/" + name.split("/")[1])
        print(f"{name:<20}{_row(timing, reference)}")
    for name, timing in timings.items():
        if timing.exchanges and name.endswith("secure"):
            print(f"exchanges per round ({name}): {', '.join(map(str, timing.exchanges))}")
    for kind in ("warm", "cold"):
        plain, secure = timings.get(f"{kind}/plain"), timings.get(f"{kind}/secure")
        if plain and secure and plain.steady and secure.steady:
            print(f"secure / plain ({kind} nodes): {secure.steady / plain.steady:.2f}")
    warm, cold = timings.get("warm/plain"), timings.get("cold/plain")
    if warm and cold and warm.steady and cold.steady:
        print(f"cold / warm nodes (plain): {cold.steady / warm.steady:.2f}")
    if args.json:
        args.json.write_text(json.dumps({k: vars(v) for k, v in timings.items()}, indent=1))
    return 1 if any(t.error for t in timings.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
