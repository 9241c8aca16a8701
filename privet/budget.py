"""`privet budget`: privacy budgets for researchers, before a run and after it.

- ε for a plan: DP-SGD (example level) or DP-FedAvg (client level), by RDP, PRV or PLD; with RDP
  also the classic conversion, so published figures (TF Privacy, older papers) can be compared.
- σ for a target ε: the smallest noise multiplier that keeps the plan within the target.
- A table and a PNG plot of ε over epochs or rounds for several σ, comparing the accountants.
- `--verify RUN_DIR`: replay a finished run's ledgers and confirm or refute the ε it reported. A
  deployment's client ledgers stay on the nodes: for a client whose ledger is not in the run folder
  the run's ε is replayed from the summary the node signed off with its report (its (σ, q, steps)
  and its ledger's entry count and digest, kept in results.json), and the output says so.
- `--verify-ledger DIR`: on a node, replay its own ledgers (its `ledger-dir`, or one file): each
  run's ε and the node's lifetime ε, with checks that each file is well-formed and consistent.

Bad input raises `BudgetError` (a ValueError) with one line naming the problem and the fix; the
`privet` command prints it as `privet: error: ...` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privet.arguments import output_file_problem, positive_int
from privet.privacy import (
    ACCOUNTANTS,
    AccountingError,
    ClientLevelRound,
    DistributedDiscreteGaussianRound,
    LedgerError,
    PoissonGaussianSteps,
    PrivacyEvent,
    PrivacyLedger,
    client_noise_for_target_epsilon,
    epsilon_for,
    noise_for_target_epsilon,
    rdp_epsilon_classic,
    update_noise_for_adaptive_clipping,
)
from privet.privacy.calibration import distributed_noise_for_target_epsilon
from privet.server.aggregation import COUNT_SENSITIVITY
from privet.server.run_output import (
    SERVER_LEDGER_OWNER,
    ResultsError,
    ResultsFile,
    RunFolder,
    read_results,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EXIT_CONFIRMED = 0
EXIT_REFUTED = 1
RELATIVE_TOLERANCE = 1e-9  # replayed vs reported ε: the same computation, so only float noise
LINE_STYLES = {"rdp": "-", "prv": "--", "pld": ":"}
DEFAULT_POINTS = 10
DEFAULT_DELTA = 1e-5


class BudgetError(ValueError):
    """A `privet budget` input problem, reported in one line."""


# -- the command line ---------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _sigma_list(text: str) -> list[float]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated noise multipliers, got {text!r}"
        )
    return [_positive_float(value) for value in values]


def add_budget_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `budget` subcommand (it inherits the parser class of `commands`)."""
    parser = commands.add_parser(
        "budget",
        help="privacy budgets: ε for a plan, σ for a target, plots, and replaying a run's ledgers",
        description=(
            "Compute ε for a DP-SGD or DP-FedAvg plan, the noise multiplier for a target ε, plot ε "
            "over epochs or rounds for several noise multipliers, or --verify a finished run by "
            "replaying its privacy ledgers."
        ),
    )
    parser.add_argument(
        "--level",
        choices=("example", "client", "distributed"),
        help="example: DP-SGD on one data set; client: DP-FedAvg over clients; distributed: "
        "client level with the clients adding the noise (--distributed-dp) (default: example)",
    )
    plan = parser.add_argument_group("example-level plan (DP-SGD)")
    plan.add_argument("--examples", type=positive_int, help="training examples N")
    plan.add_argument("--batch-size", type=positive_int, help="expected batch size B")
    plan.add_argument("--epochs", type=positive_int, help="epochs (steps = epochs·⌈N/B⌉)")
    plan.add_argument(
        "--local-epochs", type=positive_int, help="local epochs per round, with --rounds"
    )
    plan.add_argument("--steps", type=positive_int, help="DP-SGD steps, with --sample-rate")
    plan.add_argument(
        "--sample-rate",
        type=_positive_float,
        help="Poisson sampling rate q, with --steps (example) or --rounds (client)",
    )
    fed = parser.add_argument_group("client-level plan (DP-FedAvg)")
    fed.add_argument("--clients", type=positive_int, help="client population N")
    fed.add_argument(
        "--clients-per-round", type=positive_int, help="expected clients per round K (q = K/N)"
    )
    fed.add_argument("--rounds", type=positive_int, help="federated rounds")
    fed.add_argument(
        "--count-noise-std",
        type=_positive_float,
        help="adaptive clipping: noise std σ_b of the clipped-count query (shows z for the update)",
    )
    noise = parser.add_argument_group("noise and accounting")
    noise.add_argument("--noise-multiplier", type=_positive_float, help="σ (or z): ε for this")
    noise.add_argument("--target-epsilon", type=_positive_float, help="σ (or z) for this ε")
    noise.add_argument("--delta", type=_positive_float, help=f"δ (default: {DEFAULT_DELTA:g})")
    noise.add_argument(
        "--accountant",
        choices=(*ACCOUNTANTS, "all"),
        help="rdp, prv, pld or all (default: rdp; all for --plot)",
    )
    out = parser.add_argument_group("plots and verification")
    out.add_argument("--plot", metavar="FILE.png", help="write a PNG plot of ε over the plan")
    out.add_argument(
        "--sigmas", type=_sigma_list, help="noise multipliers to plot, e.g. 0.8,1.0,1.5"
    )
    out.add_argument(
        "--points",
        type=positive_int,
        help=f"points per curve (default: {DEFAULT_POINTS})",
    )
    out.add_argument("--verify", metavar="RUN_DIR", help="replay a finished run's ledgers")
    out.add_argument(
        "--verify-ledger",
        metavar="DIR",
        help="replay a node's own ledgers (its ledger-dir, or one ledger file): each run's ε and "
        "the lifetime ε (with --accountant)",
    )


# -- plans --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetPlan:
    """What the flags describe: a level, a sampling rate, and `units` units of `per_unit` each.

    A unit is what the x-axis of a plot counts: an epoch, a round, or a single step.
    """

    level: str
    sample_rate: float
    units: int
    per_unit: int
    unit: str
    description: str

    @property
    def total(self) -> int:
        """Steps (example level) or rounds (client level) in the whole plan."""
        return self.units * self.per_unit

    def events(self, noise_multiplier: float, units: int | None = None) -> list[PrivacyEvent]:
        """The plan's privacy events at `noise_multiplier`, after `units` units (default: all)."""
        count = (self.units if units is None else units) * self.per_unit
        if self.level == "client":
            return [ClientLevelRound(noise_multiplier, self.sample_rate, count)]
        if self.level == "distributed":
            return [
                DistributedDiscreteGaussianRound.at_noise_multiplier(
                    noise_multiplier, self.sample_rate, count
                )
            ]
        return [PoissonGaussianSteps(noise_multiplier, self.sample_rate, count)]


_EXAMPLE_FLAGS = ("examples", "batch_size", "epochs", "local_epochs", "steps")
_CLIENT_FLAGS = ("clients", "clients_per_round", "count_noise_std")
_PLAN_FLAGS = (
    *_EXAMPLE_FLAGS,
    *_CLIENT_FLAGS,
    "rounds",
    "sample_rate",
    "noise_multiplier",
    "target_epsilon",
    "accountant",
    "plot",
    "sigmas",
    "points",
    "delta",
    "level",
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    return [name for name in names if getattr(args, name, None) is not None]


def _require_exactly(args: argparse.Namespace, wanted: Sequence[str], shape: str) -> None:
    missing = [name for name in wanted if getattr(args, name) is None]
    if missing:
        raise BudgetError(f"{shape} also needs {', '.join(_flag(name) for name in missing)}")


def plan_from_args(args: argparse.Namespace) -> BudgetPlan:
    """The plan the flags describe; BudgetError for incomplete or conflicting combinations."""
    if args.level in ("client", "distributed"):
        return _client_plan(args)
    return _example_plan(args)


def _example_plan(args: argparse.Namespace) -> BudgetPlan:
    wrong = _given(args, _CLIENT_FLAGS)
    if wrong:
        raise BudgetError(
            f"{_flag(wrong[0])} describes a client-level plan; add --level client or drop it"
        )
    if args.steps is not None or (args.sample_rate is not None and args.examples is None):
        _require_exactly(args, ("steps", "sample_rate"), "--steps")
        extra = _given(args, ("examples", "batch_size", "epochs", "local_epochs", "rounds"))
        if extra:
            raise BudgetError(
                f"give either --steps with --sample-rate or a data-set plan, not {_flag(extra[0])}"
            )
        if args.sample_rate > 1:
            raise BudgetError(f"--sample-rate must be at most 1, got {args.sample_rate:g}")
        return BudgetPlan(
            "example",
            args.sample_rate,
            args.steps,
            1,
            "step",
            f"{args.steps} DP-SGD steps at sample rate {args.sample_rate:.6g}",
        )
    if args.sample_rate is not None:
        raise BudgetError("--sample-rate goes with --steps; a data-set plan derives q from N and B")
    _require_exactly(args, ("examples", "batch_size"), "an example-level plan")
    # Opacus' Poisson loader draws each example with q = 1/len(loader) = 1/⌈N/B⌉, and one epoch
    # is ⌈N/B⌉ steps (opacus/data_loader.py, DPDataLoader.from_data_loader).
    batches = math.ceil(args.examples / args.batch_size)
    q = 1.0 / batches
    head = (
        f"{args.examples} examples, expected batch {args.batch_size}: {batches} steps per epoch "
        f"at sample rate 1/{batches} = {q:.6g}"
    )
    if args.rounds is not None or args.local_epochs is not None:
        if args.epochs is not None:
            raise BudgetError("give either --epochs or --rounds with --local-epochs, not both")
        _require_exactly(args, ("rounds", "local_epochs"), "a federated plan")
        per_round = args.local_epochs * batches
        return BudgetPlan(
            "example",
            q,
            args.rounds,
            per_round,
            "round",
            f"{head}; {args.rounds} rounds × {args.local_epochs} local epochs = "
            f"{args.rounds * per_round} steps",
        )
    _require_exactly(args, ("epochs",), "an example-level plan")
    return BudgetPlan(
        "example",
        q,
        args.epochs,
        batches,
        "epoch",
        f"{head}; {args.epochs} epochs = {args.epochs * batches} steps",
    )


def _client_plan(args: argparse.Namespace) -> BudgetPlan:
    wrong = _given(args, _EXAMPLE_FLAGS)
    if wrong:
        raise BudgetError(
            f"{_flag(wrong[0])} describes an example-level plan; drop it or use --level example"
        )
    if args.rounds is None:
        raise BudgetError("a client-level plan needs --rounds")
    if args.sample_rate is not None:
        extra = _given(args, ("clients", "clients_per_round"))
        if extra:
            raise BudgetError(
                f"give either --sample-rate or --clients with --clients-per-round, not both"
                f" ({_flag(extra[0])})"
            )
        if args.sample_rate > 1:
            raise BudgetError(f"--sample-rate must be at most 1, got {args.sample_rate:g}")
        q = args.sample_rate
        head = f"clients sampled at rate {q:.6g}"
    else:
        _require_exactly(args, ("clients", "clients_per_round"), "a client-level plan")
        if args.clients_per_round > args.clients:
            raise BudgetError(
                f"--clients-per-round {args.clients_per_round} exceeds --clients {args.clients}"
            )
        q = args.clients_per_round / args.clients
        head = (
            f"{args.clients} clients, {args.clients_per_round} expected per round: "
            f"sample rate {q:.6g}"
        )
    return BudgetPlan(args.level, q, args.rounds, 1, "round", f"{head}; {args.rounds} rounds")


# -- running ------------------------------------------------------------------------------------


def run_budget(args: argparse.Namespace) -> int:
    """Run `privet budget` with parsed flags; return the exit status (0 ok, 1 refuted)."""
    try:
        if getattr(args, "verify_ledger", None) is not None:
            given = [name for name in _given(args, _PLAN_FLAGS) if name != "accountant"]
            if given or args.verify is not None:
                extra = _flag(given[0]) if given else "--verify"
                raise BudgetError(
                    f"--verify-ledger replays a node's ledgers and takes only --accountant; drop "
                    f"{extra}"
                )
            return verify_ledgers(Path(args.verify_ledger), args.accountant or "rdp")
        if args.verify is not None:
            given = _given(args, _PLAN_FLAGS)
            if given:
                raise BudgetError(
                    f"--verify replays a finished run and takes no plan flags; drop "
                    f"{_flag(given[0])}"
                )
            return verify_run(Path(args.verify))
        args = argparse.Namespace(**vars(args))  # fill defaults without touching the caller's
        args.level = args.level or "example"
        args.delta = DEFAULT_DELTA if args.delta is None else args.delta
        args.points = args.points or DEFAULT_POINTS
        if not 0 < args.delta < 1:
            raise BudgetError(f"--delta must be below 1, got {args.delta:g}")
        if args.sigmas is not None and args.plot is None:
            raise BudgetError("--sigmas lists the curves of a plot; add --plot FILE.png")
        plan = plan_from_args(args)
        if args.plot is not None:
            return _plot_mode(args, plan)
        if (args.noise_multiplier is None) == (args.target_epsilon is None):
            raise BudgetError("give exactly one of --noise-multiplier and --target-epsilon")
        accountants = _accountants(args.accountant)
        if plan.level == "distributed":
            accountants = _rdp_only(args.accountant)
        print(f"Plan ({plan.level} level): {plan.description}.")
        if args.target_epsilon is not None:
            _target_mode(args, plan, accountants)
        else:
            _epsilon_mode(args, plan, accountants)
        return 0
    except BudgetError:
        raise
    except ValueError as error:  # privacy's CalibrationError, LedgerError, AccountingError, ...
        raise BudgetError(str(error)) from None


def _rdp_only(choice: str | None) -> list[str]:
    """Distributed DP's bound is a Rényi one: only the RDP accountant has it."""
    if choice not in (None, "rdp", "all"):
        raise BudgetError(
            f"distributed DP is accounted by Renyi DP (Kairouz et al. 2021's bound); "
            f"--accountant {choice} has no such bound: use --accountant rdp"
        )
    return ["rdp"]


def _distributed_calibration(
    target_epsilon: float, delta: float, sample_rate: float, rounds: int, accountant: str
) -> float:
    """`distributed_noise_for_target_epsilon` in the shape of the other calibrations."""
    return distributed_noise_for_target_epsilon(target_epsilon, delta, sample_rate, rounds)


def _accountants(choice: str | None, default: str = "rdp") -> list[str]:
    chosen = choice or default
    return list(ACCOUNTANTS) if chosen == "all" else [chosen]


def _fmt(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.4f}"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _noise_line(args: argparse.Namespace, plan: BudgetPlan, z: float) -> str | None:
    """For adaptive clipping: how the total z splits between update sum and count."""
    if plan.level != "client" or args.count_noise_std is None:
        return None
    z_update = update_noise_for_adaptive_clipping(z, args.count_noise_std, COUNT_SENSITIVITY)
    multiplier = args.count_noise_std / COUNT_SENSITIVITY
    return (
        f"adaptive clipping: total z = {z:.6g} is update noise z_Δ = {z_update:.6g} plus count "
        f"noise σ_b = {args.count_noise_std:g} on the centred count (sensitivity "
        f"{COUNT_SENSITIVITY:g}, multiplier {multiplier:g})"
    )


def _epsilon_mode(args: argparse.Namespace, plan: BudgetPlan, accountants: list[str]) -> None:
    sigma = args.noise_multiplier
    name = "z" if plan.level != "example" else "σ"
    print(f"Noise multiplier {name} = {sigma:g}, δ = {args.delta:g}.")
    events = plan.events(sigma)
    rows = [
        [accountant, _fmt(epsilon_for(events, args.delta, accountant))]
        for accountant in accountants
    ]
    classic_row = "rdp" in accountants and plan.level != "distributed"
    if classic_row:
        classic = rdp_epsilon_classic(events, args.delta)
        rows.append(["rdp-classic", _fmt(classic)])
    _print_table(["accountant", "ε"], rows)
    if classic_row:
        print(
            "rdp-classic: RDP with the classic conversion ε = min_α rdp(α) − log δ/(α − 1) "
            "(Mironov 2017, Prop. 3), as TF Privacy and older papers reported it; compare "
            "published ε with this row"
        )
    line = _noise_line(args, plan, sigma)
    if line:
        print(line)


def _target_mode(args: argparse.Namespace, plan: BudgetPlan, accountants: list[str]) -> None:
    name = "z" if plan.level != "example" else "σ"
    print(f"Target ε = {args.target_epsilon:g} at δ = {args.delta:g}.")
    calibrate = {
        "client": client_noise_for_target_epsilon,
        "distributed": _distributed_calibration,
    }.get(plan.level, noise_for_target_epsilon)
    rows = []
    sigmas = {}
    for accountant in accountants:
        exact = calibrate(args.target_epsilon, args.delta, plan.sample_rate, plan.total, accountant)
        sigma = math.ceil(exact * 1e4) / 1e4  # printed rounded up, so it stays within the target
        sigmas[accountant] = sigma
        eps = epsilon_for(plan.events(sigma), args.delta, accountant)
        rows.append([accountant, f"{sigma:.4f}", _fmt(eps)])
    _print_table(["accountant", f"smallest {name}", f"ε at that {name}"], rows)
    line = _noise_line(args, plan, sigmas[accountants[0]])
    if line:
        print(line)


# -- plots --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """ε after each of `units` for one noise multiplier and one accountant (NaN: not computable)."""

    sigma: float
    accountant: str
    units: list[int]
    epsilons: list[float]


def curve_points(units: int, points: int) -> list[int]:
    """Up to `points` unit counts from 1 to `units`, evenly spread, always ending at `units`."""
    if units <= points:
        return list(range(1, units + 1))
    return sorted({max(1, round(units * (i + 1) / points)) for i in range(points)})


def compute_curves(
    plan: BudgetPlan, sigmas: Sequence[float], accountants: Sequence[str], delta: float, points: int
) -> tuple[list[Curve], list[str]]:
    """ε over the plan for every (σ, accountant), and notes on points an accountant could not do."""
    xs = curve_points(plan.units, points)
    curves, notes = [], []
    for sigma in sigmas:
        for accountant in accountants:
            values = []
            for x in xs:
                try:
                    values.append(epsilon_for(plan.events(sigma, x), delta, accountant))
                except AccountingError as error:
                    values.append(math.nan)
                    notes.append(f"{accountant} at σ = {sigma:g} after {x} {plan.unit}s: {error}")
            curves.append(Curve(sigma, accountant, xs, values))
    return curves, notes


def make_figure(curves: Sequence[Curve], plan: BudgetPlan, delta: float) -> Figure:
    """A matplotlib Figure of ε over the plan: one colour per σ, one line style per accountant.

    Built without pyplot (Figure + the Agg canvas), so no global backend or state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours: dict[float, Any] = {}
    palette = [f"C{i}" for i in range(10)]
    symbol = "z" if plan.level != "example" else "σ"
    for curve in curves:
        colour = colours.setdefault(curve.sigma, palette[len(colours) % len(palette)])
        axes.plot(
            curve.units,
            curve.epsilons,
            color=colour,
            linestyle=LINE_STYLES.get(curve.accountant, "-."),
            marker="." if len(curve.units) <= 30 else None,
            label=f"{symbol} = {curve.sigma:g}, {curve.accountant.upper()}",
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(bottom=0)
    axes.set_xlabel(f"{plan.unit}s")
    axes.set_ylabel("cumulative ε")
    level = plan.level.capitalize()
    axes.set_title(f"{level}-level ε over the plan (δ = {delta:g}, q = {plan.sample_rate:.4g})")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", ncols=2 if len(curves) > 6 else 1)
    return figure


def _save_png(figure: Figure, path: Path) -> None:
    """Write the PNG whole or not at all (a temporary file beside it, then a rename)."""
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.stem[:40]}-", suffix=".png", delete=False
        ) as handle:
            temporary = Path(handle.name)
            figure.savefig(handle, format="png", dpi=120)
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise BudgetError(
            f"cannot write --plot {path} ({error.strerror or type(error).__name__}); choose "
            "another file"
        ) from None


def _plot_mode(args: argparse.Namespace, plan: BudgetPlan) -> int:
    if args.target_epsilon is not None:
        raise BudgetError(
            "--plot draws ε for given noise; use --sigmas instead of --target-epsilon"
        )
    if args.sigmas is not None and args.noise_multiplier is not None:
        raise BudgetError("give the plot's noise multipliers once: --sigmas or --noise-multiplier")
    sigmas = args.sigmas or ([args.noise_multiplier] if args.noise_multiplier else None)
    if not sigmas:
        raise BudgetError("--plot needs --sigmas (e.g. --sigmas 0.8,1.0,1.5)")
    path = Path(args.plot)
    if path.suffix.lower() != ".png":
        raise BudgetError(f"--plot writes a PNG; name the file *.png, got {args.plot}")
    problem = output_file_problem(path)
    if problem is not None:  # before any work, so nothing is printed for a plot never written
        raise BudgetError(f"--plot {args.plot} {problem}; choose another file")
    accountants = _accountants(args.accountant, default="all")
    if plan.level == "distributed":
        accountants = _rdp_only(args.accountant)
    curves, notes = compute_curves(plan, sigmas, accountants, args.delta, args.points)
    print(f"Plan ({plan.level} level): {plan.description}.")
    print(f"Cumulative ε at δ = {args.delta:g} after each {plan.unit}:")
    header = [plan.unit] + [f"σ={c.sigma:g} {c.accountant}" for c in curves]
    rows = [
        [str(x)] + ["—" if math.isnan(c.epsilons[i]) else _fmt(c.epsilons[i]) for c in curves]
        for i, x in enumerate(curves[0].units)
    ]
    _print_table(header, rows)
    for note in notes:
        print(f"note: {note}")
    figure = make_figure(curves, plan, args.delta)
    _save_png(figure, path)
    print(f"Plot: {path}")
    return 0


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One ledger's replay: what the run reported, what the ledger gives, and whether they agree."""

    ledger: str
    reported: float | None
    replayed: float | None
    status: str

    @property
    def confirmed(self) -> bool:
        """True when the replayed ε equals the reported one (by its ledger or a node's summary)."""
        return self.status.startswith("confirmed")


def _reported_epsilon(value: object, where: str, results: Path) -> float:
    if value == "inf":
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise BudgetError(f'{results}: {where} epsilon must be a number or "inf", got {value!r}')
    return float(value)


def _same(reported: float, replayed: float) -> bool:
    if math.isinf(reported) or math.isinf(replayed):
        return reported == replayed
    return abs(reported - replayed) <= RELATIVE_TOLERANCE * max(abs(reported), abs(replayed))


def _replay(
    path: Path,
    label: str,
    reported: float | None,
    level: str,
    owner: str,
    delta: float,
    accountant: str,
    run_token: str | None = None,
) -> Verdict:
    """Replay one ledger file: the run's own ε (its entries of `run_token`) at the run's δ.

    Without a token the ledger must hold one run only (as a run folder's ledgers do); the events
    are δ-free, so a ledger whose latest run used another δ still replays at the run's.
    """
    if not path.exists():
        return Verdict(label, reported, None, "refuted: ledger missing")
    try:
        ledger = PrivacyLedger.load(path)
    except LedgerError as error:
        return Verdict(label, reported, None, f"refuted: unreadable ledger ({error})")
    if ledger.level != level or ledger.owner != owner:
        return Verdict(
            label,
            reported,
            None,
            f"refuted: ledger is {ledger.owner!r} at {ledger.level} level, expected {owner!r} "
            f"at {level} level",
        )
    runs = [token for token, _ in ledger.runs()]
    if run_token is not None and run_token in runs:
        events = ledger.run_events(run_token)
    elif len(runs) <= 1:
        events = ledger.events()
    else:
        return Verdict(
            label,
            reported,
            None,
            f"refuted: the ledger holds {len(runs)} runs and results.json names none of them "
            "(privacy.run_token)",
        )
    try:
        replayed = epsilon_for(events, delta, accountant)
    except AccountingError as error:
        return Verdict(label, reported, None, f"refuted: cannot replay ({error})")
    if reported is None:
        return Verdict(label, None, replayed, "refuted: releases recorded but no ε reported")
    if ledger.corrections and replayed > reported and not _same(reported, replayed):
        return Verdict(
            label,
            reported,
            replayed,
            f"refuted: the run under-reported ε; the correct ε is {replayed:.6g} "
            f"({'; '.join(ledger.corrections)})",
        )
    status = "confirmed" if _same(reported, replayed) else "refuted: ε differs"
    return Verdict(label, reported, replayed, status)


def _replay_summary(
    client: Mapping[str, Any], label: str, reported: float, delta: float, accountant: str
) -> Verdict:
    """Replay a client's run ε from the summary its node signed off (its ledger is on the node).

    The run's releases are `steps` DP-SGD steps at (σ, q) = (noise_multiplier, sample_rate); the
    node's lifetime ε covers them, so it may not be below the run's.
    """
    sigma, q, steps = (client.get(key) for key in ("noise_multiplier", "sample_rate", "steps"))
    ledger = client.get("ledger")
    try:
        if not isinstance(ledger, Mapping) or set(ledger) != {"entries", "sha256"}:
            raise ValueError("its ledger summary is not {entries, sha256}")
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"steps is {steps!r}, not a whole number")
        if isinstance(sigma, bool) or isinstance(q, bool):
            raise ValueError("sigma and q must be numbers")
        event = PoissonGaussianSteps(float(sigma), float(q), steps)  # type: ignore[arg-type]
        replayed = epsilon_for([event], delta, accountant) if steps else 0.0
    except (TypeError, ValueError) as error:  # AccountingError included
        return Verdict(label, reported, None, f"refuted: unusable node summary ({error})")
    lifetime = client.get("lifetime_epsilon", reported)
    lifetime_value = math.inf if lifetime == "inf" else lifetime
    if (
        isinstance(lifetime_value, bool)
        or not isinstance(lifetime_value, int | float)
        or (lifetime_value < replayed and not _same(float(lifetime_value), replayed))
    ):
        return Verdict(
            label,
            reported,
            replayed,
            f"refuted: lifetime ε {lifetime!r} is below the run's replayed ε",
        )
    status = "confirmed (node summary)" if _same(reported, replayed) else "refuted: ε differs"
    return Verdict(label, reported, replayed, status)


def _read_results(run_dir: Path) -> tuple[ResultsFile, Mapping[str, Any]]:
    """The run's results.json (read by `server.run_output`) and its config; else BudgetError."""
    if not run_dir.is_dir():
        raise BudgetError(
            f"--verify {run_dir}: no such run folder; give the folder of a finished run"
        )
    try:
        results = read_results(run_dir)
        config = results.config
    except ResultsError as error:
        raise BudgetError(str(error)) from None
    if not isinstance(results.raw.get("clients"), list):
        raise BudgetError(f'{results.path} has no "clients" list; is it a Privet results file?')
    return results, config


def _max_verdict(data: Mapping[str, Any], results: Path, clients: list[Verdict]) -> list[Verdict]:
    """The federation's figure, privacy.epsilon_max, must be the maximum of the clients' ε."""
    privacy = data.get("privacy")
    if not isinstance(privacy, dict) or "epsilon_max" not in privacy:
        return []
    reported = _reported_epsilon(privacy["epsilon_max"], "privacy.epsilon_max", results)
    label = "max over clients"
    if any(verdict.replayed is None for verdict in clients):
        return [Verdict(label, reported, None, "refuted: not every client ledger replays")]
    replayed = max((verdict.replayed or 0.0 for verdict in clients), default=0.0)
    status = "confirmed" if _same(reported, replayed) else "refuted: ε differs"
    return [Verdict(label, reported, replayed, status)]


def verify_run(run_dir: Path) -> int:
    """Replay every ledger of `run_dir` with the run's accountant and compare with results.json.

    Prints a table (ledger, reported ε, replayed ε, status); returns 0 when every reported ε is
    confirmed, 1 when any is refuted or a ledger is missing or unreported. BudgetError (exit 2)
    when `run_dir` is not a readable run, or when a ledger does not extend what the run's
    checkpoint recorded of it (missing, shortened or edited: its ε could be too low).
    """
    from privet.server.checkpoint import check_run_ledgers

    read, config = _read_results(run_dir)
    data = read.raw
    note = check_run_ledgers(run_dir)
    if note:
        print(f"note: {note}")
    results = read.path
    accountant = config.get("accountant")
    if accountant not in ACCOUNTANTS:
        raise BudgetError(
            f"{results}: config.accountant must be one of {', '.join(ACCOUNTANTS)}, got "
            f"{accountant!r}"
        )
    delta = config.get("delta")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise BudgetError(f"{results}: config.delta must be a number in (0, 1), got {delta!r}")
    folder = RunFolder(run_dir)
    ledgers = folder.ledgers
    privacy = data.get("privacy")
    token = privacy.get("run_token") if isinstance(privacy, dict) else None
    token = token if isinstance(token, str) else None
    verdicts: list[Verdict] = []
    summaries: list[str] = []
    reported_ids: set[int] = set()
    for index, client in enumerate(data["clients"]):
        client_id = client.get("id") if isinstance(client, dict) else None
        if isinstance(client_id, bool) or not isinstance(client_id, int):
            raise BudgetError(f'{results}: clients[{index}] has no integer "id"')
        reported_ids.add(client_id)
        reported = _reported_epsilon(client.get("epsilon"), f"clients[{index}]", results)
        name = f"client-{client_id}"
        path = folder.ledger(name)
        if not path.exists() and client.get("ledger") is not None:
            verdicts.append(_replay_summary(client, name, reported, delta, accountant))
            summary = client["ledger"] if isinstance(client["ledger"], dict) else {}
            summaries.append(
                f"{name}: its ledger is on its node; checked the summary the node signed off "
                f"(σ, q, steps; a ledger of {summary.get('entries')} entries, sha256 "
                f"{str(summary.get('sha256'))[:16]}…), not the ledger file — run `privet budget "
                "--verify-ledger LEDGER_DIR` on the node to check the file itself"
            )
            continue
        verdicts.append(_replay(path, name, reported, "example", name, delta, accountant, token))
    for path in sorted(ledgers.glob("client-*.json")) if ledgers.is_dir() else []:
        suffix = path.stem.removeprefix("client-")
        if suffix.isdigit() and int(suffix) not in reported_ids:
            verdicts.append(
                _replay(path, path.stem, None, "example", path.stem, delta, accountant, token)
            )
    verdicts.extend(_max_verdict(data, results, verdicts[: len(data["clients"])]))
    client_level = data.get("client_level")
    server = folder.ledger(SERVER_LEDGER_OWNER)
    if client_level is not None:
        if not isinstance(client_level, dict):
            raise BudgetError(f"{results}: client_level must be an object or null")
        reported = _reported_epsilon(client_level.get("epsilon"), "client_level", results)
        verdicts.append(_replay(server, "server", reported, "client", "server", delta, accountant))
    elif server.exists():
        verdicts.append(_replay(server, "server", None, "client", "server", delta, accountant))
    _print_verdicts(run_dir, accountant, delta, verdicts)
    for line in summaries:
        print(f"note: {line}")
    return EXIT_CONFIRMED if all(v.confirmed for v in verdicts) else EXIT_REFUTED


def _print_verdicts(run_dir: Path, accountant: str, delta: float, verdicts: list[Verdict]) -> None:
    print(f"Replaying the ledgers of {run_dir} with the {accountant} accountant at δ = {delta:g}:")

    def show(value: float | None) -> str:
        return "—" if value is None else ("∞" if math.isinf(value) else f"{value:.6f}")

    _print_table(
        ["ledger", "reported ε", "replayed ε", "status"],
        [[v.ledger, show(v.reported), show(v.replayed), v.status] for v in verdicts],
    )
    refuted = [v for v in verdicts if not v.confirmed]
    if not verdicts:
        print("No ledgers to replay: the run reported no clients.")
    elif refuted:
        print(f"REFUTED: {len(refuted)} of {len(verdicts)} ledgers do not match the reported ε.")
    else:
        print(f"CONFIRMED: all {len(verdicts)} reported ε values match their ledgers.")


# -- a node's own ledgers -----------------------------------------------------------------------

_DATA_LEDGER = re.compile(r"^data-([0-9a-f]{16})$")
_CLIENT_LEDGER = re.compile(r"^client-\d+$")


@dataclass(frozen=True)
class LedgerReplay:
    """One ledger file replayed: each run's ε at its own δ, and the lifetime ε (None: bad file)."""

    path: Path
    runs: list[tuple[str, float, list[int], int, float]]
    """(run token or "(untagged)", δ, rounds, steps, ε) per run, in order."""
    lifetime: float | None
    delta: float | None
    problem: str | None


def _name_problem(path: Path, ledger: PrivacyLedger) -> str | None:
    """Whether the file's name fits its owner (a renamed or misplaced ledger), else None."""
    stem = path.stem
    data = _DATA_LEDGER.match(stem)
    if data is not None:
        full = ledger.owner.removeprefix("data-")
        if not ledger.owner.startswith("data-") or not full.startswith(data.group(1)):
            return (
                f"the file is named for data {data.group(1)}… but is the ledger of {ledger.owner}"
            )
        return None
    if (_CLIENT_LEDGER.match(stem) or stem == SERVER_LEDGER_OWNER) and ledger.owner != stem:
        return f"the file is named {path.name} but is the ledger of {ledger.owner}"
    return None


def _stored_rdp(path: Path) -> object:
    """The informational "epsilon_rdp" the file shows (read as text; the ledger is valid JSON)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("epsilon_rdp") if isinstance(data, dict) else None


def replay_ledger(path: Path, accountant: str) -> LedgerReplay:
    """Load and replay one ledger file, checking that it is well-formed and consistent.

    Consistent: the file's name fits its owner; each run's rounds never go back; the ε the file
    shows ("epsilon_rdp", informational) is what its entries give by RDP (else it was edited).
    """
    try:
        ledger = PrivacyLedger.load(path)
    except LedgerError as error:
        return LedgerReplay(path, [], None, None, str(error))
    problem = _name_problem(path, ledger)
    rows: list[tuple[str, float, list[int], int, float]] = []
    try:
        for token, delta in ledger.runs():
            rounds = [entry.round for entry in ledger.run_entries(token)]
            if rounds != sorted(rounds):
                problem = problem or f"run {token or '(untagged)'} has rounds out of order {rounds}"
            rows.append(
                (
                    token or "(untagged)",
                    delta,
                    ledger.run_rounds(token),
                    ledger.run_steps(token),
                    ledger.run_epsilon(token, accountant),
                )
            )
        lifetime = ledger.epsilon(accountant)
        stored = _stored_rdp(path)
        if (
            isinstance(stored, int | float)
            and not isinstance(stored, bool)
            and not ledger.corrections
        ) and not _same(float(stored), ledger.epsilon("rdp")):
            problem = problem or (
                f"its epsilon_rdp {stored:.6g} is not what its entries give "
                f"({ledger.epsilon('rdp'):.6g}): the file was edited"
            )
    except (AccountingError, ValueError) as error:
        return LedgerReplay(path, rows, None, ledger.delta, f"cannot replay it ({error})")
    return LedgerReplay(path, rows, lifetime, ledger.delta, problem)


def verify_ledgers(target: Path, accountant: str) -> int:
    """`--verify-ledger`: replay every ledger in a node's ledger-dir (or one file) and print it.

    Prints per run its δ, rounds, steps and ε, and each ledger's lifetime ε at its latest run's δ;
    returns 0 when every file is well-formed and consistent, 1 (with one line naming the file and
    the reason) when one is not. BudgetError (exit 2) for a path that holds no ledger.
    """
    if accountant not in ACCOUNTANTS:
        raise BudgetError(f"--verify-ledger replays with one accountant ({', '.join(ACCOUNTANTS)})")
    if target.is_file():
        paths = [target]
    elif target.is_dir():
        paths = sorted(p for p in target.glob("*.json") if not p.name.startswith("."))
        if not paths:
            raise BudgetError(
                f"--verify-ledger {target}: no ledger files (*.json) in that folder; give the "
                "node's ledger-dir or a ledger file"
            )
    else:
        raise BudgetError(
            f"--verify-ledger {target}: no such file or folder; give the node's ledger-dir"
        )
    replays = [replay_ledger(path, accountant) for path in paths]
    print(f"Replaying {len(paths)} ledger file(s) in {target} with the {accountant} accountant:")
    rows = []
    for replay in replays:
        for token, delta, rounds, steps, epsilon in replay.runs:
            span = f"{rounds[0]}–{rounds[-1]}" if rounds else "—"
            rows.append([replay.path.name, token, f"{delta:g}", span, str(steps), _fmt6(epsilon)])
        if replay.lifetime is not None and replay.delta is not None:
            rows.append(
                [replay.path.name, "lifetime", f"{replay.delta:g}", "", "", _fmt6(replay.lifetime)]
            )
    if rows:
        _print_table(["ledger", "run", "δ", "rounds", "steps", "ε"], rows)
    bad = [replay for replay in replays if replay.problem is not None]
    for replay in bad:
        print(f"REFUTED: {replay.path}: {replay.problem}")
    if not bad:
        print(
            f"OK: {len(replays)} ledger file(s) are well-formed and consistent; the lifetime ε "
            "composes every run at the δ of the latest one"
        )
    return EXIT_REFUTED if bad else EXIT_CONFIRMED


def _fmt6(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.6f}"
