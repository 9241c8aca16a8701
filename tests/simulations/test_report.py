"""`simulations.report`: self-contained HTML of real runs and sweeps, every ε checked.

The runs are real in-process simulations on scikit-learn's digits (a few seconds in all). Every
ε the report prints is tagged (`<span class="eps" data-eps=...>`); each one is recomputed here
from the run's ledgers with Opacus' RDP analysis functions — never with Privet's accountant.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from privet.server.checkpoint import RUN_LOCK_FILE
from privet.simulations import plots
from privet.simulations.inprocess_engine import run_in_process
from privet.simulations.report import (
    ReportError,
    SweepPoint,
    build_report,
    format_epsilon,
    load_sweep,
    privacy_utility_curves,
    write_report,
)
from privet.task.config import RunConfig
from tests.reference_accounting import opacus_epsilon

IMG = re.compile(r"<img\b[^>]*>")
SRC = re.compile(r'src="([^"]*)"')
EPS_SPAN = re.compile(r'<span class="eps" data-eps="([^"]+)">([^<]+)</span>')


def simulate(folder: Path, **settings) -> Path:
    run_in_process(RunConfig(output=str(folder), reproducible=True, **settings))
    return folder


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Five real runs, each exercising one part of the report."""
    base = tmp_path_factory.mktemp("report-runs")
    return {
        # example-level DP only, 4 clients: one privacy sentence per client, no clipping plot
        "plain": simulate(base / "plain", clients=4, rounds=2),
        # client-level DP + secure aggregation; round 2 samples nobody and is skipped
        "client_level": simulate(
            base / "client_level",
            clients=6,
            rounds=3,
            client_noise_multiplier=1.0,
            clients_per_round=3,
            delta=1e-3,
            secure_aggregation=True,
        ),
        "adaptive": simulate(
            base / "adaptive",
            clients=6,
            rounds=3,
            client_noise_multiplier=1.0,
            clients_per_round=3,
            delta=1e-3,
            adaptive_clipping=True,
            clip_count_stddev=1.0,
        ),
        # every client declines round 2 (its budget would be exceeded): the run stops
        "budget": simulate(base / "budget", clients=4, rounds=4, epsilon_budget=5.0),
        # more clients than one line each: a band in the ε plot, the client table folded
        "many": simulate(base / "many", clients=25, rounds=2, local_epochs=1),
    }


SWEEP_EPSILONS = (2.0, 8.0)
SWEEP_PARTITIONS = (("iid", 0.5), ("dirichlet", 0.3))


@pytest.fixture(scope="session")
def sweep(tmp_path_factory) -> Path:
    """A sweep folder as `privet sweep` lays it out: 2 ε × 2 partitions × 2 seeds = 8 runs.

    Six ran; run-005 failed (error.txt) and run-007 is pending (no folder), so the points at
    ε = 8 average one seed and the others two.
    """
    folder = tmp_path_factory.mktemp("report-sweep")
    entries = []
    index = 0
    for epsilon in SWEEP_EPSILONS:
        for partition, alpha in SWEEP_PARTITIONS:
            for seed in (0, 1):
                name = f"run-{index:03d}"
                index += 1
                values = {
                    "target-epsilon": epsilon,
                    "partition": partition,
                    "alpha": alpha,
                    "seed": seed,
                }
                entries.append({"name": name, "values": values})
                run_dir = folder / "runs" / name
                if name == "run-005":
                    run_dir.mkdir(parents=True)
                    (run_dir / "error.txt").write_text("ConfigError: something went wrong\n")
                elif name != "run-007":
                    simulate(
                        run_dir,
                        clients=3,
                        rounds=2,
                        local_epochs=1,
                        target_epsilon=epsilon,
                        partition=partition,
                        alpha=alpha,
                        seed=seed,
                    )
    spec = {
        "format": "privet-sweep",
        "version": 1,
        "engine": "in-process",
        "base": {"clients": 3, "rounds": 2, "local-epochs": 1},
        "vary": {
            "target-epsilon": list(SWEEP_EPSILONS),
            "partition/alpha": [list(p) for p in SWEEP_PARTITIONS],
            "seed": [0, 1],
        },
        "runs": entries,
    }
    (folder / "sweep.json").write_text(json.dumps(spec, indent=2))
    return folder


@pytest.fixture(scope="session")
def reports(runs, sweep) -> dict[str, str]:
    """Each fixture's report, written to its folder's report.html and read back."""
    pages = {}
    for name, folder in [*runs.items(), ("sweep", sweep)]:
        path = write_report(folder)
        assert path == folder / "report.html"
        pages[name] = path.read_text(encoding="utf-8")
    return pages


# -- independent privacy numbers ---------------------------------------------------------------


def expected_epsilons(run_dir: Path, prefix: str = "") -> dict[str, float]:
    """Every ε a run's report may print, recomputed from what its ledgers say ran."""
    results = json.loads((run_dir / "results.json").read_text())
    delta = results["privacy"]["delta"]
    expected: dict[str, float] = {}
    for client in results["clients"]:
        ledger = json.loads((run_dir / "ledgers" / f"client-{client['id']}.json").read_text())
        events = [entry["event"] for entry in ledger["entries"]]
        # one σ and one q per client: its ε is one composition of all its steps
        assert {(e["noise_multiplier"], e["sample_rate"]) for e in events} <= {
            (client["noise_multiplier"], client["sample_rate"])
        }
        steps = sum(e["steps"] for e in events)
        assert steps == client["steps"]
        sigma, q = client["noise_multiplier"], client["sample_rate"]
        expected[f"{prefix}example:client:{client['id']}"] = opacus_epsilon(q, sigma, steps, delta)
    clients = [v for k, v in expected.items() if ":client:" in k]
    expected[f"{prefix}example:max"] = max(clients, default=0.0)
    if results["client_level"] is not None:
        ledger = json.loads((run_dir / "ledgers" / "server.json").read_text())
        events = [entry["event"] for entry in ledger["entries"]]
        releases = sum(e["rounds"] for e in events)
        # the update noise and the count noise of adaptive clipping compose to one z
        z_parts = {
            (e["noise_multiplier"], e["count_noise_std"], e["count_sensitivity"], e["sample_rate"])
            for e in events
        }
        assert len(z_parts) == 1
        z_update, count_std, count_sensitivity, q = z_parts.pop()
        z_count = None if count_std is None else count_std / count_sensitivity
        z = z_update if z_count is None else (z_update**-2 + z_count**-2) ** -0.5
        assert z == pytest.approx(results["client_level"]["noise_multiplier"], rel=1e-12)
        expected[f"{prefix}client-level"] = opacus_epsilon(q, z, releases, delta)
    return expected


def printed_epsilons(page: str) -> list[tuple[str, str]]:
    return EPS_SPAN.findall(page)


def assert_no_untagged_epsilon(page: str) -> None:
    """No ε value is printed outside a checked tag ("ε = 1.234" in running text).

    "ε ≤ B" is a configured target or budget, not a privacy number the run spent.
    """
    untagged = re.sub(r"<[^>]+>", "", re.sub(EPS_SPAN, "", page)).replace("ε ≤", "")
    assert not re.search(r"ε\S*\s*=\s*\d", untagged)


@pytest.mark.long
@pytest.mark.parametrize("name", ["plain", "client_level", "adaptive", "budget", "many"])
def test_every_printed_epsilon_of_a_run_matches_opacus(runs, reports, name):
    page = reports[name]
    expected = expected_epsilons(runs[name])
    printed = printed_epsilons(page)
    assert {ident for ident, _ in printed} == set(expected)  # every client, the max, client level
    for ident, text in printed:
        assert text == f"{expected[ident]:.3f}", ident
    assert_no_untagged_epsilon(page)


def test_every_printed_epsilon_of_a_sweep_matches_opacus(sweep, reports):
    page = reports["sweep"]
    expected: dict[str, float] = {}
    for run_dir in sorted((sweep / "runs").iterdir()):
        if (run_dir / "results.json").exists():
            expected.update(expected_epsilons(run_dir, prefix=f"run:{run_dir.name}:"))
    printed = printed_epsilons(page)
    assert {ident for ident, _ in printed} == set(expected)
    for ident, text in printed:
        assert text == f"{expected[ident]:.3f}", ident
    assert_no_untagged_epsilon(page)
    # the runs table and each run's own section both show its max ε
    assert sum(1 for ident, _ in printed if ident == "run:run-000:example:max") >= 2


def test_format_epsilon():
    assert format_epsilon(7.99949) == "7.999"
    assert format_epsilon(math.inf) == "∞"


# -- a self-contained page ----------------------------------------------------------------------


def assert_self_contained(page: str) -> list[Image.Image]:
    """No script, no external reference; every image an embedded, valid PNG. Returns them."""
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "url(" not in page
    assert not re.search(r"https?://", page)
    assert not re.search(r'href="(?!#)', page)  # only links within the page
    images = []
    tags = IMG.findall(page)
    assert tags
    assert len(SRC.findall(page)) == len(tags)  # no src= other than the images'
    for tag in tags:
        (src,) = SRC.findall(tag)
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix) :], validate=True)
        Image.open(io.BytesIO(data)).verify()
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG"
        assert 400 <= image.width <= 1200 and 250 <= image.height <= 500, image.size
        assert 'alt="' in tag
        images.append(image)
    return images


def test_run_report_sections_and_plots(reports):
    page = reports["plain"]
    images = assert_self_contained(page)
    for heading in (
        "Summary",
        "Privacy statement",
        "Accuracy per round",
        "ε per round",
        "Privacy–utility",
        "Clipping",
        "Noise σ",
        "Participation, dropouts and declines",
        "What is not covered",
    ):
        assert f">{heading}</h" in page, heading
    # accuracy, ε, privacy–utility, σ, participation; no clipping statistic in this run
    assert len(images) == 5
    assert "no clipping plot" in page
    assert "does not release the per-example clipping fraction of DP-SGD" in page
    for row in ("Data set", "Model", "Rounds completed / planned", "Final test accuracy"):
        assert f"<th>{row}</th>" in page
    assert "<td>2 / 2</td>" in page
    assert "Noise source" in page and "seed=0" in page


def test_statement_names_each_of_few_clients(runs, reports):
    page = reports["plain"]
    results = json.loads((runs["plain"] / "results.json").read_text())
    text = re.sub(r"<[^>]+>", "", page)
    for client in results["clients"]:
        k = client["id"]
        sentence = re.search(
            rf"Each example of client {k} is protected at \(ε, δ\) = \([0-9.]+, 1e-05\) "
            rf"against anyone who saw what client {k} sent — the server included — over all "
            rf"(\d+) rounds? it took part in \(σ = ([0-9.]+), sampling rate q = ([0-9.]+), "
            rf"(\d+) steps, RDP accountant",
            text,
        )
        assert sentence, k
        rounds, sigma, q, steps = sentence.groups()
        assert int(rounds) == client["rounds_participated"]
        assert float(sigma) == pytest.approx(client["noise_multiplier"], rel=1e-3)
        assert float(q) == pytest.approx(client["sample_rate"], rel=1e-3)
        assert int(steps) == client["steps"]
    assert "never averaged across clients" in text
    assert "Client-level DP was off" in text
    assert "Secure aggregation was off" in text


def test_not_covered_says_counts_local_metrics_and_seeded_noise(reports):
    text = re.sub(r"<[^>]+>", "", reports["plain"])
    not_covered = text.split("What is not covered", 1)[1]
    assert "number of examples each client holds is sent to the server in the clear" in (
        not_covered
    )
    assert "released without noise" in not_covered
    assert "seeded from seed = 0" in not_covered
    # The guarantee of a seeded run holds only against someone who does not know the seed.
    assert "only against someone who does not know the seed" in not_covered
    assert "--no-reproducible" in not_covered


def test_many_clients_band_plot_and_folded_table(runs, reports):
    page = reports["many"]
    assert_self_contained(page)
    assert "With 25 clients the band spans" in page
    folded = re.search(r"<details>(<summary>ε of all 25 clients.*?)</details>", page, re.S)
    assert folded, "the client table of more than 20 clients starts folded"
    assert folded.group(1).count("<tr>") == 1 + 25
    # the statement names the largest client in a sentence, not 25 sentences
    assert page.count("Each example of client ") == 2  # the general one and the largest


def test_client_level_and_secure_aggregation_statement(runs, reports):
    page = reports["client_level"]
    images = assert_self_contained(page)
    results = json.loads((runs["client_level"] / "results.json").read_text())
    rounds = results["rounds"]
    ok = [r["secure_aggregation"] for r in rounds if r["secure_aggregation"]["status"] == "ok"]
    failed = [r["round"] for r in rounds if r["secure_aggregation"]["status"] == "failed"]
    assert failed == [2]  # seed 0 samples nobody in round 2 (a fixture fact this test relies on)
    threshold = min(s["threshold"] for s in ok)
    smallest = min(len(s["survivors"]) for s in ok)
    text = re.sub(r"<[^>]+>", "", page)
    assert f"The server saw only sums of at least t = {threshold} clients" in text
    assert f"the smallest sum it unmasked covered {smallest} clients" in text
    assert f"succeeded in {len(ok)} of {len(rounds)} rounds" in text
    assert "Round 2 failed and was skipped" in text
    assert "adding or removing a whole client" in text
    assert "trusted-server model" in text
    releases = results["client_level"]["rounds"]
    assert f"over the {releases} rounds in which it released a noised sum" in text
    assert "noise multiplier z = 1" in text and "q = 0.5 per round" in text
    # 6 clients: the general sentence, the largest client's, and the table (open)
    assert "<details open><summary>ε of all 6 clients" in page
    # clipping: nothing varies (fixed S, no coordinate clipped), so it is said, not plotted
    clipped = sum(s["quantization_clipped"] for s in ok)
    assert clipped == 0
    assert "Secure aggregation clipped no coordinate to its quantization range" in text
    assert "clipped to a fixed L2 norm S = 1." in text
    assert "there is no clipping plot" in text
    assert len(images) == 5
    wide = [image for image in images if image.width >= 800]  # ε and privacy–utility: 2 panels
    assert len(wide) == 2


def test_adaptive_clipping_plots_noised_fraction_and_clip_norm(reports):
    page = reports["adaptive"]
    images = assert_self_contained(page)
    text = re.sub(r"<[^>]+>", "", page)
    assert "fraction of client updates within the clip norm S, released with noise" in text
    assert "adaptive clipping tracks a quantile" in text
    assert "shared between the update sum (z_Δ = 1.155)" in text
    assert len(images) == 6  # accuracy, ε, privacy–utility, clipping, σ, participation


def test_declines_and_stop_reason(runs, reports):
    page = reports["budget"]
    assert_self_contained(page)
    results = json.loads((runs["budget"] / "results.json").read_text())
    assert results["stop_reason"]
    text = re.sub(r"<[^>]+>", "", page)
    assert f"stopped early: {results['stop_reason']}" in text
    at = {d["round"] for d in results["declined"]}
    assert at == {2}
    ids = ", ".join(str(d["id"]) for d in sorted(results["declined"], key=lambda d: d["id"]))
    assert (
        f"Declines (example-level budget ε ≤ 5, enforced before training): from round 2: "
        f"clients {ids}." in text
    )


def test_unfinished_run_is_reported_as_unfinished(runs, tmp_path):
    folder = tmp_path / "unfinished"
    shutil.copytree(runs["plain"], folder)
    results = json.loads((folder / "results.json").read_text())
    results["finished"] = False
    results["rounds"] = results["rounds"][:1]
    (folder / "results.json").write_text(json.dumps(results))
    page = build_report(folder)
    assert_self_contained(page)
    text = re.sub(r"<[^>]+>", "", page)
    assert "This run did not finish" in text and "privet budget --verify" in text
    assert "1 / 2" in text


def test_a_failed_run_shows_its_failure_reason_and_warnings(runs, tmp_path):
    folder = tmp_path / "failed"
    shutil.copytree(runs["plain"], folder)
    results = json.loads((folder / "results.json").read_text())
    results["finished"] = False
    results["failure_reason"] = (
        "round 2: 1 client update reached the model, fewer than min-trained 2"
    )
    results["warnings"] = ["client 1 failed in round 2 (last at train: ConfigError: <bad delta>)"]
    (folder / "results.json").write_text(json.dumps(results))
    page = build_report(folder)
    assert_self_contained(page)
    assert "&lt;bad delta&gt;" in page  # escaped
    text = re.sub(r"<[^>]+>", "", page)
    assert "no — the run failed: round 2: 1 client update reached the model" in text
    assert "client 1 failed in round 2 (last at train: ConfigError:" in text
    results["warnings"] = [3]
    (folder / "results.json").write_text(json.dumps(results))
    with pytest.raises(ReportError, match="warnings"):
        build_report(folder)


# -- sweeps --------------------------------------------------------------------------------------


def test_sweep_report(sweep, reports):
    page = reports["sweep"]
    images = assert_self_contained(page)
    text = re.sub(r"<[^>]+>", "", page)
    assert "8 runs (6 done, 1 failed, 1 pending)" in text
    assert "failed: ConfigError: something went wrong" in text
    runs_table = page.split("<h2>Runs</h2>", 1)[1].split("</table>", 1)[0]
    assert runs_table.count("<tr>") == 1 + 8
    for header in ("target-epsilon", "partition", "alpha", "seed", "status", "max ε (example)"):
        assert f"<th>{header}</th>" in runs_table
    for name in ("run-000", "run-006"):
        assert f'<a href="#run-{name[4:]}"' not in runs_table  # anchors are "run-" + the name
        assert f'<a href="#run-{name}">{name}</a>' in runs_table
        assert f'<details class="run" id="run-{name}">' in page
    assert 'id="run-run-005"' not in page and 'id="run-run-007"' not in page
    assert "one line per setting (2: partition=iid, alpha=0.5; partition=dirichlet, alpha=0.3)" in (
        text
    )
    assert "Along a line the privacy knob varies (target-epsilon)" in text
    assert "Each point averages 1–2 seeds (fewer where a run is not done)" in text
    # privacy–utility, all runs' accuracy, and 5 plots for each of the 6 runs in detail
    assert len(images) == 2 + 6 * 5
    assert len(page) < 2_500_000


def test_sweep_with_interrupted_and_unreadable_runs(runs, tmp_path):
    folder = tmp_path / "sweep"
    names = ["run-000", "run-001", "run-002"]
    for name in names:
        shutil.copytree(runs["plain"], folder / "runs" / name)
    interrupted = folder / "runs" / "run-001"
    results = json.loads((interrupted / "results.json").read_text())
    results["finished"] = False
    (interrupted / "results.json").write_text(json.dumps(results))
    (interrupted / "checkpoint.json").write_text("{}")
    (folder / "runs" / "run-002" / "results.json").write_text('{"rounds": [')
    spec = {
        "format": "privet-sweep",
        "version": 1,
        "base": {},
        "vary": {"seed": [0, 1, 2]},
        "runs": [{"name": name, "values": {"seed": i}} for i, name in enumerate(names)],
    }
    (folder / "sweep.json").write_text(json.dumps(spec))
    sweep = load_sweep(folder)
    assert [r.status for r in sweep.runs] == ["done", "interrupted", "unreadable"]
    assert "2 of 2 rounds recorded" in sweep.runs[1].reason
    assert "run-002/results.json is not valid JSON" in sweep.runs[2].reason
    page = write_report(folder).read_text()
    assert_self_contained(page)
    text = re.sub(r"<[^>]+>", "", page)
    assert "3 runs (1 done, 1 interrupted, 1 unreadable)" in text
    assert 'id="run-run-001"' in page  # an interrupted run's partial results are shown
    assert "No privacy knob varies in this sweep, so each setting is one point" in text
    assert "Each point averages 1 seed;" in text


def test_privacy_utility_curves_group_settings_and_average_seeds():
    points = []
    accuracy = {("iid", 0): 0.80, ("iid", 1): 0.84, ("dirichlet", 0): 0.60, ("dirichlet", 1): 0.70}
    for epsilon in (1.0, 3.0, 8.0):
        for partition, alpha in (("iid", 0.5), ("dirichlet", 0.1)):
            for seed in (0, 1):
                points.append(
                    SweepPoint(
                        name=f"{epsilon}-{partition}-{seed}",
                        values={
                            "target-epsilon": epsilon,
                            "partition": partition,
                            "alpha": alpha,
                            "seed": seed,
                        },
                        epsilon=epsilon * (1.0 - 0.01 * seed),
                        accuracy=accuracy[(partition, seed)] + epsilon / 100,
                    )
                )
    points.reverse()  # order in: any; order out: by setting's first appearance, then by ε
    curves = privacy_utility_curves(points)
    assert [c.label for c in curves] == [
        "partition=dirichlet, alpha=0.1",
        "partition=iid, alpha=0.5",
    ]
    for curve, (low, high) in zip(curves, [(0.60, 0.70), (0.80, 0.84)], strict=True):
        assert len(curve.points) == 3
        assert [p.knobs for p in curve.points] == [
            (("target-epsilon", e),) for e in (1.0, 3.0, 8.0)
        ]
        for point, epsilon in zip(curve.points, (1.0, 3.0, 8.0), strict=True):
            assert point.seeds == 2
            assert point.x == pytest.approx(epsilon * 0.995)
            assert (point.x_min, point.x_max) == pytest.approx((epsilon * 0.99, epsilon))
            assert point.y == pytest.approx((low + high) / 2 + epsilon / 100)
            assert (point.y_min, point.y_max) == pytest.approx(
                (low + epsilon / 100, high + epsilon / 100)
            )


def test_privacy_utility_curves_edge_cases():
    def point(name, values, epsilon=1.0, accuracy=0.5):
        return SweepPoint(name, values, epsilon, accuracy)

    # every privacy knob is on the x axis, never a setting; an infinite ε is left out
    curves = privacy_utility_curves(
        [
            point("a", {"noise-multiplier": 1.0, "client-noise-multiplier": 0.5, "lr": 0.1}),
            point("b", {"noise-multiplier": 2.0, "client-noise-multiplier": 0.5, "lr": 0.1}),
            point(
                "c",
                {"noise-multiplier": 0.0, "client-noise-multiplier": 0.5, "lr": 0.1},
                epsilon=math.inf,
            ),
            point("d", {"noise-multiplier": 1.0, "client-noise-multiplier": 0.5, "lr": 0.5}),
        ]
    )
    assert [(c.label, [p.runs for p in c.points]) for c in curves] == [
        ("lr=0.1", [("a",), ("b",)]),
        ("lr=0.5", [("d",)]),
    ]
    # nothing but seeds varies: one curve, one point of all runs
    (curve,) = privacy_utility_curves([point("x", {"seed": 0}), point("y", {"seed": 1})])
    assert curve.label == "all runs" and curve.points[0].seeds == 2
    assert privacy_utility_curves([]) == []


# -- the figures ---------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    Image.open(io.BytesIO(data)).verify()
    return Image.open(io.BytesIO(data)).size


def test_epsilon_plot_of_a_thousand_clients_is_a_band_and_stays_small():
    rounds = list(range(1, 51))
    by_client = {str(k): [0.05 * r * (1 + k / 1000) for r in rounds] for k in range(1000)}
    data = plots.epsilon_per_round(rounds, by_client, [0.1 * r for r in rounds])
    assert png_size(data) == (900, 350)
    assert len(data) < 150_000  # a band, not 1000 lines


def test_every_plot_is_a_png_of_the_expected_size():
    rounds = [1, 2, 3]
    assert png_size(plots.accuracy_per_round(rounds, [0.5, 0.6, 0.7], [0.4, None, 0.6], 0.1)) == (
        600,
        350,
    )
    assert png_size(plots.epsilon_per_round(rounds, {"0": [1, 2, 3]})) == (600, 350)
    assert png_size(plots.noise_multipliers([str(k) for k in range(50)], [1.0] * 50)) == (600, 350)
    assert png_size(plots.participation(rounds, {"sampled": [3, 3, 3], "declined": [0, 1, 2]})) == (
        600,
        350,
    )
    assert png_size(plots.clipping(rounds, [0.5, -0.1, 1.2], [1.0, 1.1, 1.2], [0, 0, 3])) == (
        1200,
        350,
    )
    with pytest.raises(ValueError):
        plots.clipping(rounds)
    line = plots.Line("x", [1.0, math.inf], [0.5, 0.6], [0.4, 0.5], [0.6, 0.7])
    panel = plots.UtilityPanel("t", "ε", [line])
    assert png_size(plots.privacy_utility([panel, panel])) == (900, 350)
    run = plots.RunLine("r", 0, "all runs", [0, 1], [0.1, 0.5])
    assert png_size(plots.accuracy_of_runs([run])) == (600, 350)


# -- bad input and atomic writes -----------------------------------------------------------------


def results_of(runs) -> dict:
    return json.loads((runs["plain"] / "results.json").read_text())


def corrupt(name, runs, folder: Path) -> None:
    """Make `folder` one kind of bad input."""
    good = results_of(runs)
    if name == "missing folder":
        return
    folder.mkdir()
    if name == "empty folder":
        return
    if name == "truncated results.json":
        (folder / "results.json").write_text(json.dumps(good)[:200])
    elif name == "results.json not an object":
        (folder / "results.json").write_text("[1, 2]")
    elif name == "results.json without rounds":
        del good["rounds"]
        (folder / "results.json").write_text(json.dumps(good))
    elif name == "accuracy not a number":
        good["rounds"][0]["accuracy"] = "high"
        (folder / "results.json").write_text(json.dumps(good))
    elif name == "client without epsilon":
        del good["clients"][0]["epsilon"]
        (folder / "results.json").write_text(json.dumps(good))
    elif name == "not a sweep":
        (folder / "sweep.json").write_text('{"format": "something-else", "version": 1}')
    elif name == "newer sweep":
        (folder / "sweep.json").write_text('{"format": "privet-sweep", "version": 2}')
    elif name == "unsafe run name":
        spec = {"format": "privet-sweep", "version": 1, "runs": [{"name": "../x", "values": {}}]}
        (folder / "sweep.json").write_text(json.dumps(spec))
    elif name == "binary results.json":
        (folder / "results.json").write_bytes(b"\xff\xfe\x00garbage")
    else:
        raise AssertionError(name)


BAD_INPUTS = {
    "missing folder": "does not exist; pass a run's or a sweep's output folder",
    "empty folder": "has no results.json or sweep.json; pass a run's or a sweep's output folder",
    "truncated results.json": "results.json is not valid JSON",
    "results.json not an object": "the file is list, expected an object",
    "results.json without rounds": "rounds is missing, expected a list",
    "accuracy not a number": "rounds[0].accuracy is 'high', expected a number",
    "client without epsilon": "clients[0].epsilon is missing, expected a number",
    "not a sweep": "format is 'something-else'; not a Privet sweep file",
    "newer sweep": "sweep version 2 is not 1",
    "unsafe run name": "runs[0].name is '../x'",
    "binary results.json": "results.json is not UTF-8 text",
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, name):
    folder = tmp_path / "bad"
    corrupt(name, runs, folder)
    output = tmp_path / "out" / "report.html"
    with pytest.raises(ReportError) as caught:
        write_report(folder, output)
    message = str(caught.value)
    assert "\n" not in message
    assert BAD_INPUTS[name] in message
    assert str(folder) in message  # names the file or folder
    assert not output.exists()
    assert not (folder / "report.html").exists()


def test_output_that_is_a_folder(runs, tmp_path):
    with pytest.raises(ReportError, match="is a folder; name the HTML file"):
        write_report(runs["plain"], tmp_path)


def temporary_files(folder: Path) -> list[str]:
    """Hidden files in a run folder other than its writer lock (which belongs to the run)."""
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != RUN_LOCK_FILE
    )


def test_existing_report_is_replaced_atomically(runs, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(runs["plain"], folder)
    target = folder / "report.html"
    target.write_text("old report")
    assert write_report(folder, title="Second <try>") == target
    page = target.read_text()
    assert "<title>Second &lt;try&gt;</title>" in page
    # no temporary file is left beside it (the run's writer lock is the run's, not the report's)
    assert temporary_files(folder) == []
    # a failing report leaves the one before it untouched
    (folder / "results.json").write_text("{")
    with pytest.raises(ReportError):
        write_report(folder)
    assert target.read_text() == page
    assert temporary_files(folder) == []
