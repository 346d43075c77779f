"""Printing for people (rich tables, one line per fact) and for scripts (--json). rich loads only when a table
is printed: a command that prints a line should start fast."""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, Any, Iterable

import click

if TYPE_CHECKING:
    from rich.console import Console


@functools.cache
def console() -> Console:
    from rich.console import Console
    # Piped output is not cut to 80 columns: scripts and logs get whole rows (or use --json).
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=list))


def echo_lines(lines: Iterable[str]) -> None:
    for line in lines:
        click.echo(line)


def show_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table
    table = Table(title=title, title_justify="left", show_edge=False)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*row)
    console().print(table)


def show_fields(doc: dict[str, Any], keys: Iterable[str], width: int) -> None:
    """One `key value` line per key; lists joined with commas, empty values as '-'."""
    for key in keys:
        value = doc[key]
        click.echo(f"{key:{width}} {', '.join(value) if isinstance(value, (list, tuple)) else (value or '-')}")
