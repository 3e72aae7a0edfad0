"""Terminal rendering of what the flows return: rich tables on a terminal, the same text plain elsewhere."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from denseflow.model.evaluation.summary import (
    GATE_HEADER,
    SYSTEM_HEADER,
    choice_lines,
    gate_rows,
    outcome_lines,
    system_rows,
)


def _table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=title, title_justify="left")
    for position, name in enumerate(header):
        table.add_column(name, justify="left" if position == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_retrain_summary(summary: dict, console: Console | None = None) -> None:
    """The systems side by side, the choices made on dev, the gate's figures and what is served now."""
    # Piped or logged (not a terminal), rich would wrap at 80 columns: give the table room instead.
    console = console or Console(width=None if sys.stdout.isatty() else 132)
    split = "test"
    console.print(
        _table(
            f"{summary['registered_model']} version {summary['version']} — {split}", SYSTEM_HEADER, system_rows(summary)
        )
    )
    for line in choice_lines(summary):
        console.print(line, markup=False)  # settings such as "[a-z0-9]+" are text, not markup
    promotion = summary["promotion"]
    rows = gate_rows(promotion)
    if rows:
        header = (GATE_HEADER[0], GATE_HEADER[1], promotion.get("metric", "metric"), GATE_HEADER[3])
        console.print(_table(f"promotion gate: {promotion['decision']}", header, rows))
    for line in outcome_lines(summary):
        console.print(line)
    if summary.get("mlflow_run_url"):
        console.print(f"MLflow run: {summary['mlflow_run_url']}")


def print_search_result(result, index_name: str, console: Console | None = None) -> None:  # noqa: ANN001 - SearchResult
    """Rank, score, id, title and a snippet with the query's terms highlighted (plain text when not a TTY)."""
    from rich.text import Text

    console = console or Console(highlight=False)
    console.print(
        f"index {index_name}/{result.index_version}, mode {result.mode}, model {result.model}, "
        f"encode {result.encode_ms:.1f} ms, search {result.search_ms:.2f} ms",
        style="dim",
    )
    for hit in result.hits:
        header = Text(f"{hit.rank:>3}  {hit.score:.4f}  {hit.doc_id}  ")
        header.append(hit.title or "", style="bold")
        console.print(header)
        if hit.snippet is not None:
            body = Text(("…" if hit.snippet.leading else "") + hit.snippet.text + ("…" if hit.snippet.trailing else ""))
            offset = 1 if hit.snippet.leading else 0
            for start, end in hit.snippet.spans:
                body.stylize("bold yellow", start + offset, end + offset)
            body.pad_left(5)
            console.print(body)
        if hit.text is not None:
            console.print(Text(hit.text), style="dim")
