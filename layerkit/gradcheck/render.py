"""Rich rendering of a :class:`layerkit.gradcheck.report.GradCheckReport`: tables, failure details, verdict."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skipped": "cyan"}


def _checked(r) -> str:
    if r.strategy == "exhaustive":
        return f"all {r.checked}"
    if r.strategy.startswith("sampled"):
        return f"{r.checked} of {r.total:,}"
    if "direction" in r.strategy:
        return f"{r.checked} directions" + (", nudged" if "nudged" in r.strategy else "")
    return r.strategy


def _status(r) -> str:
    text = f"[{STYLE[r.status]}]{r.status}[/]"
    if r.kinks:
        text += f" [cyan](skipped: kink x{r.kinks})[/]"
    return text


def _table(rows, what: str) -> Table:
    table = Table(header_style="bold")
    for name, justify in (("layer", "left"), ("tensor", "left"), ("shape", "left"), (what, "right"),
                          ("max rel error", "right"), ("status", "left")):
        table.add_column(name, justify=justify, no_wrap=name in ("layer", "tensor"))
    for r in rows:
        layer = f"{r.layer} [dim]({r.layer_type})[/]" if r.layer_type and not r.layer.startswith("(") else r.layer
        err = "-" if r.max_rel_error is None else f"{r.max_rel_error:.1e}"
        table.add_row(layer, r.tensor, "x".join(map(str, r.shape)) or "-", _checked(r), err, _status(r))
    return table


def describe(r) -> list[str]:
    """Plain-text lines explaining one failed or warned check; they name the method whose gradient
    was checked (the one training calls) when it is not ``backward``."""
    scope = "end to end" if r.scope == "model" else "in isolation"
    if getattr(r, "via", "backward") != "backward":
        scope += f", through {r.via}"
    lines = [f"{r.label} ({scope}): {r.status.upper()}" + (f": {r.message}" if r.message else "")]
    w = r.worst
    if w is not None:
        where = w.index if isinstance(w.index, str) else "[" + ", ".join(map(str, w.index)) + "]"
        lines.append(f"  worst at {where}: analytic {w.analytic:.8g}, numeric {w.numeric:.8g}, "
                     f"relative error {w.rel_error:.2e}")
        if w.sweep:
            lines.append("  error vs step: " + "  ".join(f"{h:.0e}: {e:.1e}" for h, _, e in w.sweep))
        if w.diagnosis:
            lines.append(f"  {w.diagnosis}")
    return lines


def render_report(report, console: Console | None = None) -> None:
    console = console or Console()
    s = report.settings
    # headings as plain lines: a table title wraps at the table's width
    console.print(f"[bold]{report.model}: each layer in isolation[/] (batch {s.get('batch_size')}, "
                  f"{s.get('inputs')} inputs, float64)")
    console.print(_table(report.layer_rows, "checked"))
    if report.model_rows:
        console.print("[bold]End to end:[/] the loss gradient w.r.t. every parameter, along random directions")
        console.print(_table(report.model_rows, "checked"))
    for r in report.rows:
        if r.status in ("fail", "warn"):
            for line in describe(r):
                console.print(line, markup=False, highlight=False)
    if report.checks:
        failed = [c for c in report.checks if c.status == "fail"]
        console.print(f"[bold]Contract checks:[/] {len(report.checks) - len(failed)} of {len(report.checks)} pass")
        for c in failed:
            where = f"{c.layer} ({c.example})" if c.example else c.layer
            console.print(f"{where}: check {c.check} failed [{c.member}]: {c.message}", markup=False, highlight=False)
    if report.blame:
        console.print(f"blame: {report.blame}", markup=False, highlight=False)
    style = "bold green" if report.ok else "bold red"
    console.print(f"[{style}]{escape(report.verdict())}[/]")
