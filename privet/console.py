"""What `privet simulate` shows a person: the plan, a progress bar over rounds, the final tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from privet.server.results import RoundRecord, RunResults
from privet.server.run_output import RESULTS_FILE
from privet.simulations.plan import SimulationPlan

MAX_CLIENT_ROWS = 20


def _eps(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3f}"


def _secagg_note(record: RoundRecord) -> str:
    """A short note when the round's secure sum failed, so a skipped round is never silent."""
    outcome = record.secure_aggregation or {}
    if outcome.get("status") == "failed":
        return ", secure sum failed: round skipped"
    return ", no client update reached the model" if record.no_update is not None else ""


class SimulationConsole:
    """Terminal output of a simulation (plain text when the output is not a terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()

    def show_plan(self, plan: SimulationPlan) -> None:
        """One paragraph: data, clients, and the privacy each client is planned to spend."""
        config = plan.config
        sizes = [client.train_examples for client in plan.clients]
        sigmas = sorted({round(client.local.noise_multiplier, 6) for client in plan.clients})
        sigma_text = f"{sigmas[0]:.4g}" if len(sigmas) == 1 else f"{sigmas[0]:.4g}–{sigmas[-1]:.4g}"
        self.console.print(
            f"[bold]Privet[/bold] {config.dataset}: {config.clients} clients × {config.rounds} "
            f"rounds × {config.local_epochs} local epochs, model {config.model}, "
            f"{min(sizes)}–{max(sizes)} training examples per client, test set {plan.test_examples}"
        )
        self.console.print(
            f"DP-SGD per client: clip norm {config.max_grad_norm:g}, "
            f"noise multiplier {sigma_text}, "
            f"planned ε ≤ {_eps(plan.planned_epsilon_max)} at δ = {config.delta:g} "
            f"({config.accountant.upper()})"
            + (
                f", budget ε ≤ {config.epsilon_budget:g}"
                if config.epsilon_budget is not None
                else ""
            )
        )
        level = plan.client_level
        if level is None and config.clients_per_round is not None:
            how = (
                f"exactly {config.clients_per_round}"
                if config.client_sampling == "fixed"
                else f"each with probability {config.client_sample_rate:.3g} "
                f"(about {config.clients_per_round})"
            )
            self.console.print(f"Clients per round: {how} of {config.clients}")
        if level is not None:
            self.console.print(
                f"Client-level DP-FedAvg: clip norm {config.client_clip_norm:g}"
                f"{' (adaptive)' if level.adaptive else ''}, noise multiplier "
                f"{level.total_noise_multiplier:.4g}, {level.expected_clients:g} of "
                f"{config.clients} clients per round (q = {level.sample_rate:.3g})"
            )
        if config.secure_aggregation:
            t = config.secagg_threshold
            threshold = f"{t:.3g} of each neighbourhood" if t <= 1 else f"{t:g} clients"
            self.console.print(
                f"Secure aggregation (SecAgg+): the server sees only sums; threshold {threshold}, "
                f"updates clipped to {config.update_clip_norm:g} and quantized to "
                f"{config.secagg_levels} levels, {config.secagg_timeout:g} s per stage"
            )
        if plan.missing is not None and plan.missing.affected_rows:
            source = config.data_file or config.data_dir or config.dataset
            line = escape(plan.missing.describe(source))
            self.console.print(f"[yellow]Missing values: {line}[/yellow]")

    @contextmanager
    def progress(self, total_rounds: int) -> Iterator[Callable[[RoundRecord], None]]:
        """A progress bar over rounds; yields the callback that advances it."""
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task("rounds", total=total_rounds)

            def on_round(record: RoundRecord) -> None:
                bar.update(
                    task,
                    completed=record.round,
                    description=(
                        f"round {record.round}: accuracy {record.accuracy:.3f}, "
                        f"max ε {_eps(record.epsilon_max)}" + _secagg_note(record)
                    ),
                )

            yield on_round

    def show_results(self, results: RunResults) -> None:
        """The per-round table, the per-client privacy table, and where the files are."""
        where = results.evaluation or "the server-side test set"
        rounds = Table(title=f"Rounds (scored on {escape(where)})")
        for column in ("round", "accuracy", "loss", "max ε"):
            rounds.add_column(column, justify="right")
        for record in results.rounds:
            rounds.add_row(
                str(record.round),
                f"{record.accuracy:.4f}",
                f"{record.loss:.4f}",
                _eps(record.epsilon_max),
            )
        self.console.print(rounds)
        clients = Table(
            title=f"Privacy spent per client (δ = {results.config.delta:g}, "
            f"{results.config.accountant.upper()})"
        )
        for column in ("client", "examples", "ε", "σ", "q", "steps"):
            clients.add_column(column, justify="right")
        shown = results.clients
        if len(shown) > MAX_CLIENT_ROWS:
            # Many clients: the first few and the one(s) at the federation's ε (the maximum).
            top = max(client.epsilon for client in shown)
            head = shown[: MAX_CLIENT_ROWS // 2]
            shown = head + [c for c in shown if c.epsilon == top and c not in head][:1]
            clients.caption = (
                f"{len(shown)} of {len(results.clients)} clients shown, including one at the "
                f"maximum ε; all are in {RESULTS_FILE}"
            )
        for client in shown:
            clients.add_row(
                str(client.client_id),
                str(client.num_examples),
                _eps(client.epsilon),
                f"{client.noise_multiplier:.4g}",
                f"{client.sample_rate:.4g}",
                str(client.steps),
            )
        self.console.print(clients)
        if results.client_level is not None:
            self.console.print(
                f"Client-level ε = {_eps(results.client_level['epsilon'])} at δ = "
                f"{results.config.delta:g} over {results.client_level['rounds']} rounds"
            )
            against = results.client_level.get("epsilon_against_server")
            if against is not None:
                self.console.print(
                    "Distributed DP: the clients added the noise; the server saw only noised "
                    f"sums. Against the server, which knows who took part: ε = {_eps(against)}"
                )
        for declined, at in sorted(results.declines.items()):
            self.console.print(f"Client {declined} declined from round {at} on (budget).")
        for warning in results.warnings():
            self.console.print(f"[yellow]Warning: {escape(warning)}.[/yellow]")
        if results.stop_reason and results.stop_reason not in (results.failure_reason or ""):
            self.console.print(f"[yellow]Stopped early: {results.stop_reason}.[/yellow]")
        if results.failure_reason:
            self.console.print(f"[red]The run failed: {escape(results.failure_reason)}.[/red]")
        elif not results.finished:
            self.console.print("[red]The run did not finish.[/red]")
        self.console.print(f"Results: {results.config.output}/{RESULTS_FILE}")
