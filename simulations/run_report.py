"""One run's report: its summary, privacy statement and plots, from a `RunData`.

`RunSections` writes the HTML sections of one run; `run_report_html` puts them on a page. The
sweep report reuses `RunSections` for each run's collapsible section (with a prefix that keeps
ε tags unique in the page, and a heading level one lower). Every number comes from what the run
recorded: nothing is recomputed here, only stated with the parameters it came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from privet.server.run_output import ClientData, ClientLevelData
from privet.simulations import plots
from privet.simulations.report_data import RunData
from privet.simulations.report_html import (
    duration,
    eps_span,
    esc,
    figure,
    id_list,
    num,
    page,
    table,
)

__all__ = ["RunSections", "run_report_html"]


CLIENT_SENTENCES_MAX = 5  # up to this many clients: one sentence each; beyond: a table
CLIENT_TABLE_OPEN_MAX = 20  # the client table starts unfolded up to this many clients

ACCOUNTANT_NAMES = {
    "rdp": "RDP accountant (Rényi DP: Opacus' analysis, orders up to 16384)",
    "prv": "PRV accountant (Opacus)",
    "pld": "PLD accountant (Google dp-accounting)",
}


def _count_query(cl: ClientLevelData) -> str:
    """The count query's noise and sensitivity, when results.json records them."""
    if cl.count_stddev is None or cl.count_sensitivity is None:
        return ""
    return (
        f" (std σ_b = {num(cl.count_stddev)} at sensitivity {num(cl.count_sensitivity)}, "
        f"multiplier {num(cl.count_stddev / cl.count_sensitivity)})"
    )


class RunSections:
    """The HTML sections of one run's report; `prefix` keeps ε tags unique inside a sweep."""

    def __init__(self, run: RunData, prefix: str = "", level: int = 2) -> None:
        self.run = run
        self.prefix = prefix
        self.h = level

    def heading(self, text: str, depth: int = 0) -> str:
        level = min(6, self.h + depth)
        return f"<h{level}>{text}</h{level}>"

    def eps(self, value: float, ident: str) -> str:
        return eps_span(value, f"{self.prefix}{ident}")

    # Summary ------------------------------------------------------------------------------

    def summary(self) -> str:
        run, config = self.run, self.run.config
        rows: list[tuple[str, str]] = []
        rows.append(
            ("Data set", esc(f"{config.get('dataset', '—')}, partition {_partition(config)}"))
        )
        rows.append(("Model", esc(config.get("model", "—"))))
        per_round = config.get("clients_per_round")
        clients = config.get("clients", "—")
        rows.append(("Clients", esc(clients)))
        rows.append(
            (
                "Clients per round",
                esc(_per_round(per_round, config.get("client_sampling"), clients)),
            )
        )
        planned = run.planned_rounds
        last = run.rounds[-1].round if run.rounds else 0
        rows.append(("Rounds completed / planned", esc(f"{last} / {planned or '—'}")))
        rows.append(
            (
                "Local training",
                esc(
                    f"{config.get('local_epochs', '—')} epochs per round, batch "
                    f"{config.get('batch_size', '—')}, learning rate {config.get('lr', '—')}"
                ),
            )
        )
        rows.append(("Engine", esc(run.engine or "—")))
        if run.finished:
            state = "yes" + (f" — stopped early: {run.stop_reason}" if run.stop_reason else "")
        elif run.failure_reason:
            state = f"no — the run failed: {run.failure_reason}"
        else:
            state = "no — the run did not finish; this report shows the rounds it recorded"
        rows.append(("Finished", esc(state)))
        if run.warnings:
            items = "".join(f"<li>{esc(line)}</li>" for line in run.warnings)
            rows.append(("Warnings", f"<ul>{items}</ul>"))
        if run.resumed_after:
            rows.append(("Resumed after rounds", esc(", ".join(map(str, run.resumed_after)))))
        if run.rounds:
            best = max(run.rounds, key=lambda r: r.accuracy)
            rows.append(("Final test accuracy", esc(f"{run.rounds[-1].accuracy:.4f}")))
            rows.append(("Best test accuracy", esc(f"{best.accuracy:.4f} (round {best.round})")))
        if run.initial_accuracy is not None:
            rows.append(("Initial test accuracy", esc(f"{run.initial_accuracy:.4f}")))
        rows.append(
            (
                "Example-level privacy",
                f"max ε = {self.eps(run.epsilon_max, 'example:max')} at δ = "
                f"{esc(f'{run.delta:g}')} over all clients ({esc(_accountant(run.accountant))})",
            )
        )
        cl = run.client_level
        rows.append(
            (
                "Client-level privacy",
                "off"
                if cl is None
                else f"ε = {self.eps(cl.epsilon, 'client-level')} at δ = {esc(f'{cl.delta:g}')}"
                f" (whole client, {cl.rounds} noised releases)",
            )
        )
        rows.append(("Secure aggregation", "on" if run.secure_aggregation is not None else "off"))
        rows.append(("Wall time", esc(duration(run.wall_time_s))))
        rows.append(("Privet version", esc(run.version or "—")))
        rows.append(("Noise source", esc(run.noise_source or "—")))
        body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        return f'{self.heading("Summary")}<table class="kv">{body}</table>'

    # Plots --------------------------------------------------------------------------------

    def figures(self) -> str:
        run = self.run
        parts = [self.heading("Plots")]
        if not run.rounds:
            parts.append("<p>No round finished: there is nothing to plot.</p>")
            return "".join(parts)
        rounds = [r.round for r in run.rounds]
        parts.append(self.heading("Accuracy per round", 1))
        parts.append(
            figure(
                plots.accuracy_per_round(
                    rounds,
                    [r.accuracy for r in run.rounds],
                    [r.local_accuracy for r in run.rounds],
                    run.initial_accuracy,
                ),
                "test accuracy per round",
                "Accuracy of the global model on the server's held-out test set after each "
                "round (round 0: the initial model). Local accuracy is the clients' own "
                "held-out data, example-weighted, released without noise.",
            )
        )
        parts.append(self.heading("ε per round", 1))
        parts.append(self._epsilon_figure(rounds))
        parts.append(self.heading("Privacy–utility", 1))
        parts.append(self._utility_figure())
        parts.append(self.heading("Clipping", 1))
        parts.append(self._clipping(rounds))
        parts.append(self.heading("Noise σ", 1))
        parts.append(self._noise())
        parts.append(self.heading("Participation, dropouts and declines", 1))
        parts.append(self._participation(rounds))
        return "".join(parts)

    def _epsilon_figure(self, rounds: list[int]) -> str:
        run = self.run
        ids: dict[str, None] = {str(c.id): None for c in run.clients}
        for record in run.rounds:
            ids.update(dict.fromkeys(record.epsilon_by_client))
        ordered = sorted(ids, key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))
        by_client = {
            client: [r.epsilon_by_client.get(client, 0.0) for r in run.rounds] for client in ordered
        }
        client_level = _carried(run)
        population = run.config.get("clients")
        untrained = (
            population - len(by_client)
            if isinstance(population, int) and population > len(by_client)
            else 0
        )
        many = len(by_client) > plots.MAX_CLIENT_LINES
        caption = (
            f"Cumulative example-level ε of each client after each round, at δ = "
            f"{run.delta:g} ({_accountant(run.accountant)}); a client that has not trained yet "
            "is at 0. "
            + (
                f"With {len(by_client)} clients the band spans the smallest to the largest "
                "client; the red line, the largest, is the federation's ε. "
                if many
                else "Clients with equal ε share one line (the last drawn shows). "
            )
            + (
                f"{untrained} of {population} clients never trained and are not drawn (ε = 0). "
                if untrained
                else ""
            )
            + (
                "Right: the client-level ε (adding or removing a whole client); it grows only "
                "in rounds in which the server released a noised sum."
                if any(v is not None for v in client_level)
                else ""
            )
        )
        png = plots.epsilon_per_round(rounds, by_client, client_level)
        return figure(png, "epsilon per round per client", esc(caption))

    def _utility_figure(self) -> str:
        run = self.run
        panels = []
        xs = [0.0] + [r.epsilon_max for r in run.rounds]
        ys = [run.initial_accuracy] + [r.accuracy for r in run.rounds]
        keep = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        panels.append(
            plots.UtilityPanel(
                title="Accuracy vs example-level ε",
                xlabel=f"max ε over clients (δ = {run.delta:g})",
                lines=[plots.Line("", [x for x, _ in keep], [y for _, y in keep])],
            )
        )
        if run.client_level is not None:
            carried = _carried(run)
            points = [(0.0, run.initial_accuracy)] + [
                (eps, r.accuracy) for eps, r in zip(carried, run.rounds, strict=True)
            ]
            keep = [(x, y) for x, y in points if y is not None and x is not None]
            panels.append(
                plots.UtilityPanel(
                    title="Accuracy vs client-level ε",
                    xlabel=f"client-level ε (δ = {run.client_level.delta:g})",
                    lines=[plots.Line("", [x for x, _ in keep], [y for _, y in keep])],
                )
            )
        return figure(
            plots.privacy_utility(panels),
            "accuracy versus epsilon",
            "Test accuracy after round r against the privacy spent by the end of round r "
            "(the first point is the initial model, before any release). A run has one point "
            "per round; a sweep report draws one line per setting.",
        )

    def _clipping(self, rounds: list[int]) -> str:
        run = self.run
        within = [r.noised_within_fraction for r in run.rounds]
        norms = [r.clip_norm for r in run.rounds]
        secure = [r.secure_aggregation or {} for r in run.rounds]
        quantized = [
            _optional_float(s.get("quantization_clipped")) if s.get("status") == "ok" else None
            for s in secure
        ]
        has_within = any(v is not None for v in within)
        adaptive = run.client_level is not None and run.client_level.adaptive_clipping
        has_norms = any(v is not None for v in norms) and (
            adaptive or len({v for v in norms if v is not None}) > 1
        )
        recorded = [v for v in quantized if v is not None]
        has_quantized = run.secure_aggregation is not None and any(v > 0 for v in recorded)
        why = (
            "Privet does not release the per-example clipping fraction of DP-SGD: it depends "
            "on the client's data and would itself need noise to be released."
        )
        facts = []
        if run.secure_aggregation is not None and recorded and not has_quantized:
            facts.append(
                "Secure aggregation clipped no coordinate to its quantization range in any "
                "round (such coordinates are counted, never silent)."
            )
        fixed = {v for v in norms if v is not None}
        if run.client_level is not None and not has_norms and len(fixed) == 1:
            facts.append(f"Client updates were clipped to a fixed L2 norm S = {num(fixed.pop())}.")
        if not (has_within or has_norms or has_quantized):
            if facts:
                return (
                    f"<p>{esc(' '.join(facts))} No clipping statistic changes over this run, so "
                    f"there is no clipping plot. {esc(why)}</p>"
                )
            return (
                f"<p>No clipping statistic was recorded in this run, so there is no clipping "
                f"plot. {esc(why)} Client-level DP (with its noised fraction of updates within "
                "the clip norm, and adaptive clipping) and secure aggregation (coordinates "
                "clipped in quantization) record theirs.</p>"
            )
        notes = []
        if has_within:
            notes.append(
                "the fraction of client updates within the clip norm S, released with noise "
                "(so it can leave [0, 1])"
            )
        if has_norms:
            notes.append(
                "the clip norm S of client updates"
                + (" (adaptive clipping tracks a quantile of the update norms)" if adaptive else "")
            )
        if has_quantized:
            notes.append(
                "the coordinates clipped to the quantization range in secure aggregation "
                "(counted, never silent)"
            )
        png = plots.clipping(
            rounds,
            within if has_within else None,
            norms if has_norms else None,
            quantized if has_quantized else None,
        )
        caption = f"Per round: {'; '.join(notes)}. {' '.join(facts)} {why}"
        return figure(png, "clipping statistics per round", esc(caption.replace("  ", " ")))

    def _noise(self) -> str:
        run = self.run
        parts = []
        clip = run.config.get("max_grad_norm")
        if run.clients:
            png = plots.noise_multipliers(
                [str(c.id) for c in run.clients], [c.noise_multiplier for c in run.clients]
            )
            target = run.config.get("target_epsilon")
            how = (
                f"calibrated by each client for its own data-set size to reach ε ≤ {target:g} "
                "by the end of the planned run"
                if isinstance(target, int | float) and run.config.get("noise_multiplier") is None
                else "as configured"
            )
            parts.append(
                figure(
                    png,
                    "noise multiplier per client",
                    esc(
                        f"Each client's DP-SGD noise multiplier σ ({how}); the noise added to "
                        f"each step's clipped gradient sum has standard deviation σ·C with "
                        f"per-example clip norm C = {num(_optional_float(clip))}."
                    ),
                )
            )
        else:
            parts.append("<p>No client has trained, so no noise multiplier was recorded.</p>")
        cl = run.client_level
        if cl is not None and cl.mechanism is not None:
            text = (
                f"Client level: every sampled client adds its share of {cl.mechanism} noise to "
                "its clipped, rotated and rounded update before masking; the shares of the "
                f"survivors sum to at least z = {num(cl.noise_multiplier)} times the norm bound"
            )
            parts.append(f"<p>{esc(text)}.</p>")
        elif cl is not None:
            text = (
                f"Client level: the server adds Gaussian noise of standard deviation z·S to the "
                f"sum of clipped client updates, z = {num(cl.noise_multiplier)}"
            )
            if cl.adaptive_clipping and cl.update_noise_multiplier is not None:
                text += (
                    f" in total: z_Δ = {num(cl.update_noise_multiplier)} on the update sum, "
                    "the rest on the noised count adaptive clipping uses" + _count_query(cl)
                )
            if cl.clip_norm_final is not None:
                text += f"; final clip norm S = {num(cl.clip_norm_final)}"
            parts.append(f"<p>{esc(text)}.</p>")
        return "".join(parts)

    def _participation(self, rounds: list[int]) -> str:
        run = self.run
        dropped = [len((r.secure_aggregation or {}).get("dropped") or []) for r in run.rounds]
        series: dict[str, list[int]] = {
            "sampled": [r.sampled for r in run.rounds],
            "trained (aggregated)": [r.clients_trained for r in run.rounds],
        }
        optional = {
            "declined (budget)": [r.declined for r in run.rounds],
            "failed (dropped out)": [r.failed for r in run.rounds],
            "rejected (update)": [r.rejected for r in run.rounds],
            "dropped in secure aggregation": dropped,
        }
        quiet = [name.split(" (")[0] for name, values in optional.items() if not any(values)]
        series.update({name: values for name, values in optional.items() if any(values)})
        png = plots.participation(rounds, series)
        caption = (
            "Clients per round: sampled by the server; trained and aggregated into the model; "
            "declined (their ε budget would have been exceeded); failed or timed out; "
            "rejected by the server's checks; dropped during secure aggregation. "
        )
        if quiet:
            caption += f"None {_or_list(quiet)} in any round."
        parts = [figure(png, "participation per round", esc(caption))]
        if run.declined:
            budget = run.config.get("epsilon_budget")
            by_round: dict[int, list[int]] = {}
            for client, at in run.declined:
                by_round.setdefault(at, []).append(client)
            text = "; ".join(
                f"from round {at}: client{'s' if len(c) > 1 else ''} {id_list(sorted(c))}"
                for at, c in sorted(by_round.items())
            )
            parts.append(
                f"<p>Declines (example-level budget ε ≤ {esc(num(_optional_float(budget)))}, "
                f"enforced before training): {esc(text)}.</p>"
            )
        return "".join(parts)

    # Privacy statement --------------------------------------------------------------------

    def statement(self) -> str:
        run = self.run
        parts = [self.heading("Privacy statement")]
        if not run.finished:
            parts.append(
                '<p class="warning">This run did not finish: the statement covers the '
                f"{len(run.rounds)} rounds results.json recorded. The ledgers "
                "(<code>ledgers/</code>) are written before each release and may hold one that "
                "results.json lacks; check them with "
                f"<code>privet budget --verify {esc(run.path)}</code>.</p>"
            )
        parts.append(self.heading("Each example of each client (example-level DP)", 1))
        parts.append(self._example_level())
        parts.append(self.heading("Each client as a whole (client-level DP)", 1))
        parts.append(self._client_level())
        parts.append(self.heading("What the server saw (secure aggregation)", 1))
        parts.append(self._secure_aggregation())
        parts.append(self.heading("What is not covered", 1))
        parts.append(self._not_covered())
        if self.run.audit is not None:
            parts.append(self.heading("Empirical audit (privet audit)", 1))
            parts.append(self._audit(self.run.audit))
        return "".join(parts)

    def _audit(self, audit: Mapping[str, Any]) -> str:
        """The audit's bound beside the accounted ε, and what a lower bound means."""
        if audit.get("finished") is False:
            return (
                '<p class="warning">The audit of this run did not finish: '
                f"{esc(str(audit.get('reason', 'no reason recorded')))}.</p>"
            )
        bound, claim = float(audit["epsilon_lower_bound"]), float(audit["epsilon_accounted"])
        confidence = 100 * float(audit["confidence"])
        passed = bound <= claim
        verdict = (
            f"<p>With {confidence:g}% confidence, ε ≥ <b>{bound:.3f}</b>, measured from "
            f"{int(audit['canaries'])} canaries ({esc(str(audit.get('level', '?')))} level; "
            f"{esc(str(audit.get('threat_model', '')))}). The accountant claims "
            f"ε = {claim:.3f}: the audit confirms {100 * bound / claim if claim else 0:.0f}% "
            "of it.</p>"
        )
        if not passed:
            verdict += (
                '<p class="warning">The lower bound is above the accounted ε: the noise, the '
                "sampling or the accounting is not what this run claims. Its ε cannot be "
                "trusted.</p>"
            )
        meaning = (
            "<p>A lower bound is what the canaries prove the mechanism leaks at least; the "
            "accounted ε is what it is proven to leak at most. A bound far below ε is expected "
            "when the attacker sees little (only the final model); with gradient canaries and "
            "every step in view it comes close. A bound above ε is never expected.</p>"
        )
        return verdict + meaning

    def _client_sentence(self, client: ClientData) -> str:
        if client.steps == 0:
            return (
                f"Client {client.id} never trained and released nothing: ε = "
                f"{self.eps(client.epsilon, f'example:client:{client.id}')}."
            )
        rounds = client.rounds_participated
        over = (
            f"over all {rounds} round{'s' if rounds != 1 else ''} it took part in"
            if rounds is not None
            else "over every round it took part in"
        )
        return (
            f"Each example of client {client.id} is protected at (ε, δ) = "
            f"({self.eps(client.epsilon, f'example:client:{client.id}')}, "
            f"{esc(f'{client.delta:g}')}) against anyone who saw what client {client.id} sent "
            f"— the server included — {over} (σ = {num(client.noise_multiplier)}, sampling "
            f"rate q = {num(client.sample_rate)}, {client.steps} steps, "
            f"{esc(_accountant(self.run.accountant))})."
        )

    def _example_level(self) -> str:
        run = self.run
        clients = run.clients
        population = run.config.get("clients")
        if not clients:
            return (
                '<div class="statement"><p>No client has trained yet: nothing was released, '
                f"and the federation's ε is {self.eps(0.0, 'example:max')}.</p></div>"
            )
        top = max(clients, key=lambda c: c.epsilon)
        parts = ['<div class="statement">']
        if len(clients) <= CLIENT_SENTENCES_MAX:
            parts.append("<ul>")
            parts.extend(f"<li>{self._client_sentence(c)}</li>" for c in clients)
            parts.append("</ul>")
        else:
            parts.append(
                f"<p>Each example of client <i>k</i> is protected at (ε<sub>k</sub>, δ) against "
                "anyone who saw what client <i>k</i> sent — the server included — over all the "
                f"rounds it took part in; the table below gives ε<sub>k</sub> for all "
                f"{len(clients)} clients. The largest:</p><p>{self._client_sentence(top)}</p>"
            )
        parts.append(
            f"<p>The noise is added on the client, before anything leaves it. Client data sets "
            f"are disjoint, so an example is protected at its own client's ε; the federation's "
            f"figure is the largest, <b>ε = {self.eps(run.epsilon_max, 'example:max')}</b> "
            f"(client {top.id}). ε is cumulative over the whole run and never averaged across "
            "clients.</p>"
        )
        if isinstance(population, int) and population > len(clients):
            missing = population - len(clients)
            parts.append(
                f"<p>{missing} of {population} clients never trained and released nothing.</p>"
            )
        parts.append("</div>")
        if len(clients) > CLIENT_SENTENCES_MAX:
            rows = [
                [
                    esc(c.id),
                    esc(c.num_examples if c.num_examples is not None else "—"),
                    self.eps(c.epsilon, f"example:client:{c.id}"),
                    esc(f"{c.delta:g}"),
                    esc(num(c.noise_multiplier)),
                    esc(num(c.sample_rate)),
                    esc(c.steps),
                    esc(c.rounds_participated if c.rounds_participated is not None else "—"),
                ]
                for c in clients
            ]
            client_table = table(
                ["client", "examples", "ε", "δ", "σ", "q", "steps", "rounds"],
                rows,
                numeric={0, 1, 2, 3, 4, 5, 6, 7},
            )
            opened = " open" if len(clients) <= CLIENT_TABLE_OPEN_MAX else ""
            parts.append(
                f"<details{opened}><summary>ε of all {len(clients)} clients (δ = "
                f"{esc(f'{run.delta:g}')}, {esc(_accountant(run.accountant))})</summary>"
                f"{client_table}</details>"
            )
        return "".join(parts)

    def _client_level(self) -> str:
        run = self.run
        cl = run.client_level
        if cl is None:
            return (
                "<p>Client-level DP was off: there is no guarantee for a client's participation "
                "or its data set as a whole, only for its examples one at a time (above).</p>"
            )
        noise = f"noise multiplier z = {num(cl.noise_multiplier)}"
        if cl.adaptive_clipping and cl.update_noise_multiplier is not None:
            noise += (
                f", shared between the update sum (z_Δ = {num(cl.update_noise_multiplier)}) "
                "and the noised count adaptive clipping uses" + _count_query(cl)
            )
        secure = (
            " Secure aggregation does not change this: the server unmasks the sum, then adds "
            "the noise."
            if run.secure_aggregation is not None
            else ""
        )
        if cl.mechanism is not None:
            return self._distributed_client_level(cl, noise)
        return (
            '<div class="statement"><p>With respect to adding or removing a whole client — all '
            "of its examples at once — the sequence of models the server released is "
            f"(ε, δ) = ({self.eps(cl.epsilon, 'client-level')}, {esc(f'{cl.delta:g}')})-DP over "
            f"the {cl.rounds} round{'s' if cl.rounds != 1 else ''} in which it released a "
            f"noised sum ({esc(noise)}; each client sampled with probability "
            f"q = {esc(num(cl.sample_rate))} per round; {esc(_accountant(run.accountant))}).</p>"
            "<p>The noise is added by the server: this is the trusted-server model, in which "
            f"the server sees the sum of the clipped updates before the noise.{secure}</p></div>"
        )

    def _distributed_client_level(self, cl: ClientLevelData, noise: str) -> str:
        """The statement of a run whose clients added the noise (distributed DP)."""
        against = cl.epsilon_against_server
        server = (
            ""
            if against is None
            else (
                " The server itself chose who took part and saw who answered, so for it "
                "sampling amplifies nothing: over the rounds a client's update was summed in, "
                f"its ε is at most {self.eps(against, 'client-level-server')} (the largest over "
                "clients)."
            )
        )
        unamplified = sum(1 for r in self.run.rounds if _unamplified(r.secure_aggregation))
        weak = (
            f" {unamplified} of these rounds had dropouts or released nothing: whether they ran, "
            "or the noise they carried, depended on who was sampled, so they were charged "
            "without the sampling's amplification."
            if unamplified
            else ""
        )
        return (
            '<div class="statement"><p>Distributed DP: every sampled client noised its own '
            "update before masking it, so the server saw only sums already carrying the DP "
            "noise, and added none. With respect to one client's update, the sequence of models "
            f"is (ε, δ) = ({self.eps(cl.epsilon, 'client-level')}, {esc(f'{cl.delta:g}')})-DP "
            f"over the {cl.rounds} round{'s' if cl.rounds != 1 else ''} it was charged for "
            f"({esc(noise)}; each client sampled with probability "
            f"q = {esc(num(cl.sample_rate))} per round; Rényi DP: the sampled Gaussian's "
            "series with the discrete correction of Kairouz, Liu and Steinke 2021 for rounds in "
            "which nobody dropped, joint convexity for the others), for whoever does not know "
            f"who took part or how many.{weak}{server}</p></div>"
        )

    def _secure_aggregation(self) -> str:
        run = self.run
        if run.secure_aggregation is None:
            return (
                "<p>Secure aggregation was off: the server saw each client's update on its own "
                "(each protected by that client's example-level DP above).</p>"
            )
        rounds = [(r.round, r.secure_aggregation or {}) for r in run.rounds]
        ok = [(n, s) for n, s in rounds if s.get("status") == "ok"]
        failed = [(n, s) for n, s in rounds if s.get("status") == "failed"]
        parts = ['<div class="statement">']
        if ok:
            thresholds = [
                int(s["threshold"]) for _, s in ok if isinstance(s.get("threshold"), int | float)
            ]
            smallest = min(len(s.get("survivors") or []) for _, s in ok)
            t = min(thresholds) if thresholds else None
            sums = f"sums of at least t = {t} clients'" if t is not None else "sums of clients'"
            parts.append(
                f"<p>The server saw only {sums} quantized updates, never a single client's "
                "update (against an "
                "honest-but-curious server and up to t − 1 colluding clients); the smallest sum "
                f"it unmasked covered {smallest} clients. Secure aggregation succeeded in "
                f"{len(ok)} of {len(rounds)} rounds.</p>"
            )
        else:
            parts.append(
                "<p>No round was aggregated securely: the server unmasked no sum and the model "
                "never changed through secure aggregation.</p>"
            )
        if failed:
            reasons = sorted({str(s.get("reason") or "no reason recorded") for _, s in failed})
            parts.append(
                f"<p>Round{'s' if len(failed) > 1 else ''} {esc(id_list([n for n, _ in failed]))} "
                "failed and {} skipped: the model stayed as it was ({}). The example-level ε of "
                "clients that trained in a skipped round is still charged.</p>".format(
                    "were" if len(failed) > 1 else "was", esc("; ".join(reasons))
                )
            )
        dropped = [(n, len(s.get("dropped") or [])) for n, s in ok if s.get("dropped")]
        if dropped:
            text = ", ".join(f"round {n}: {k}" for n, k in dropped[:12])
            if len(dropped) > 12:
                text += f" and {len(dropped) - 12} more rounds"
            parts.append(
                f"<p>Clients dropped out during the protocol ({esc(text)}); their masks were "
                "removed with the other clients' shares and the sum covered those that "
                "remained.</p>"
            )
        clipped = sum(int(s.get("quantization_clipped") or 0) for _, s in ok)
        if clipped:
            parts.append(
                f"<p>{clipped} coordinates were clipped to the quantization range over the run "
                "(see the clipping plot).</p>"
            )
        parts.append(
            "<p>Not covered: a server that lies about who dropped out (no active-adversary "
            "consistency check), and a malicious client's own update, which the server cannot "
            "check under masking.</p></div>"
        )
        return "".join(parts)

    def _not_covered(self) -> str:
        run = self.run
        items = [
            "The number of examples each client holds is sent to the server in the clear "
            "(FedAvg weights by it).",
            "The accuracy and loss each client reports from local evaluation (on a held-out "
            "part of its data that is never trained on) are released without noise.",
        ]
        if run.config.get("reproducible"):
            seed = run.config.get("seed")
            items.append(
                f"The noise came from generators seeded from seed = {seed}: a reproducible "
                "simulation. Every ε above then holds only against someone who does not know "
                "the seed — whoever knows it can recompute and subtract the noise. The real "
                "guarantee needs --no-reproducible (the default of every deployment), which "
                "draws the noise from the operating system's randomness."
            )
        elif run.noise_source:
            items.append(f"Noise source: {run.noise_source}.")
        if run.secure_aggregation is not None or any(r.failed for r in run.rounds):
            items.append(
                "The accountant treats dropouts and skipped rounds as independent of the data."
            )
        body = "".join(f"<li>{esc(item)}</li>" for item in items)
        return f"<ul>{body}</ul>"

    def body(self) -> str:
        return self.summary() + self.statement() + self.figures()


def _carried(run: RunData) -> list[float | None]:
    """Client-level ε after each round: a round without a release (skipped) keeps the last ε.

    None everywhere when the run had no client-level DP; 0 before the first release.
    """
    if run.client_level is None:
        return [None] * len(run.rounds)
    values: list[float | None] = []
    last = 0.0
    for record in run.rounds:
        if record.epsilon_client_level is not None:
            last = record.epsilon_client_level
        values.append(last)
    return values


def _per_round(per_round: Any, sampling: Any, clients: Any) -> str:
    if not per_round:
        return f"all ({clients})"
    if sampling == "fixed":
        return f"{per_round} (fixed-size sample each round)"
    return f"{per_round} expected (Poisson sampling)"


def _partition(config: Mapping[str, Any]) -> str:
    partition = config.get("partition", "—")
    if partition == "dirichlet":
        return f"dirichlet (α = {config.get('alpha')})"
    if partition == "column":
        return f"by column {config.get('partition_column')}"
    return str(partition)


def _accountant(name: str) -> str:
    return ACCOUNTANT_NAMES.get(name, f"{name} accountant")


def _optional_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _or_list(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + f" or {words[-1]}"


def run_report_html(run: RunData, title: str) -> str:
    """The complete HTML page of one run."""
    state = "finished" if run.finished else "did not finish"
    subtitle = esc(f"Run {run.path} — {state}; Privet {run.version or '?'}")
    return page(title, subtitle, RunSections(run).body())


def _unamplified(secure: dict[str, Any] | None) -> bool:
    """Whether a distributed-DP round was charged without amplification (dropouts, no release)."""
    if not secure:
        return False
    if secure.get("status") == "failed":
        return True
    details = secure.get("distributed_dp")
    return isinstance(details, dict) and details.get("amplified_by_sampling") is False
