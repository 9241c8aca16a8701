"""The HTML building blocks of the report: escaping, numbers, ε, figures, tables, the page.

Every page the report writes (one run's, a sweep's) is made of these, so a number, an ε or a
table looks the same wherever it appears. Every printed ε goes through `eps_span`, which tags it
with what it is (`data-eps`) so that the tests can recompute each one. `page` wraps a body in a
complete, self-contained document: the style sheet is inline and plots are embedded as base64
PNGs, with nothing to fetch.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "STYLE",
    "duration",
    "eps_span",
    "esc",
    "figure",
    "format_epsilon",
    "id_list",
    "num",
    "page",
    "table",
]


def esc(value: Any) -> str:
    """`value` as text, escaped for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def format_epsilon(value: float) -> str:
    """ε as every part of the report prints it: three decimals, ∞ for an unbounded loss."""
    return "∞" if math.isinf(value) else f"{value:.3f}"


def eps_span(value: float, ident: str) -> str:
    """A printed ε, tagged with what it is (`data-eps`) so tests can check every single one."""
    return f'<span class="eps" data-eps="{esc(ident)}">{format_epsilon(value)}</span>'


def num(value: float | None, digits: int = 4) -> str:
    """A number to `digits` significant digits; ∞ if infinite, — if not recorded."""
    if value is None:
        return "—"
    return "∞" if math.isinf(value) else f"{value:.{digits}g}"


def duration(seconds: float | None) -> str:
    """A wall time as people read it: 12.3 s, 4 min 05 s, 1 h 02 min; — if unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _img(png: bytes, alt: str) -> str:
    """An <img> of `png`, embedded as a base64 data URI (nothing to fetch)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def figure(png: bytes, alt: str, caption: str) -> str:
    """A plot with its caption (`caption` is HTML, already escaped)."""
    return f"<figure>{_img(png, alt)}<figcaption>{caption}</figcaption></figure>"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """An HTML table from escaped cells; columns in `numeric` are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def id_list(ids: Sequence[int], limit: int = 12) -> str:
    """`1, 2, 3 and 4 more`: at most `limit` client or round numbers, then a count."""
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #1d2125; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem;
     margin-top: 2rem; }
h3 { font-size: 1.08rem; margin-top: 1.4rem; }
h4 { font-size: 1rem; margin-top: 1.2rem; }
.sub { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .55rem; text-align: left;
         vertical-align: top; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { white-space: nowrap; }
table.kv th { width: 15rem; font-weight: 600; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e8ec; }
figcaption { color: #57606a; font-size: .88rem; max-width: 56rem; }
.statement { background: #f6fbf7; border-left: 4px solid #2e7d4f; padding: .4rem 1rem;
             margin: .8rem 0; }
.warning { background: #fff8e6; border-left: 4px solid #c78a00; padding: .4rem 1rem; }
details { margin: .5rem 0; }
details.run { border: 1px solid #d0d7de; border-radius: 6px; padding: .3rem .8rem; }
details.run > summary { font-weight: 600; cursor: pointer; }
.status-done { color: #2e7d4f; } .status-failed, .status-unreadable { color: #b42318; }
.status-interrupted { color: #c78a00; } .status-pending { color: #57606a; }
code { background: #f3f5f7; padding: 0 .25rem; border-radius: 3px; }
"""


def page(title: str, subtitle: str, body: str) -> str:
    """The complete, self-contained HTML document (`subtitle` and `body` are HTML)."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{esc(title)}</h1>\n<p class="sub">{subtitle}</p>\n{body}\n</body>\n</html>\n'
    )
