"""How the interactive menu is drawn: a window of entries around the cursor, and a hint
of the keys (``client.menu`` reads the keys and runs what is chosen)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Entry:
    label: str
    detail: str = ""


def menu_view(
    title: str,
    entries: Sequence[Entry],
    cursor: int,
    typed: str,
    rows: int,
    note: str = "",
    header: str = "",
) -> RenderableType:
    """The menu as drawn: a window of ``rows`` entries around the cursor, and a hint."""
    first = 0
    if len(entries) > rows:
        first = min(max(0, cursor - rows // 2), len(entries) - rows)
    shown = range(first, min(len(entries), first + rows))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=1)
    grid.add_column(justify="right")
    grid.add_column()
    grid.add_column(style="dim")
    for i in shown:
        here = i == cursor
        grid.add_row(
            "[bold cyan]❯[/]" if here else "",
            Text(str(i + 1), style="bold cyan" if here else "cyan"),
            Text(entries[i].label, style="bold" if here else ""),
            Text(f"  {entries[i].detail}"),
        )
    more = []
    if first > 0:
        more.append(f"{first} more above")
    if shown.stop < len(entries):
        more.append(f"{len(entries) - shown.stop} more below")
    hint = f"↑↓ move · enter choose · 1–{len(entries)} pick · q {escape(entries[-1].label)}"
    if typed:
        hint = f"number: [bold]{typed}[/]_ · enter choose"
    parts: list[RenderableType] = []
    if header:
        parts.append(Text.from_markup(header))
    parts += [Text(title, style="bold"), grid]
    if more:
        parts.append(Text("  (" + ", ".join(more) + ")", style="dim"))
    if note:
        parts.append(Text(note, style="yellow"))
    parts.append(Text.from_markup(hint, style="dim"))
    return Group(*parts)
