"""Sizes as people write and read them: binary (IEC) units, as every size and speed
warren shows uses them (``12MiB``, ``50 GiB``, ``1.5 TiB``)."""

from __future__ import annotations

import re

from warren.errors import UsageError

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def human_size(n: float) -> str:
    """Binary (IEC) units, one decimal: every size and speed the client shows uses them."""
    value, unit = scaled(n)
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def scaled(n: float) -> tuple[float, str]:
    """``n`` bytes in the largest unit that keeps it under 1024 once rounded (1023.96 KiB
    is shown as 1.0 MiB, not 1024.0 KiB)."""
    for power, unit in enumerate(UNITS):
        value = n / 1024**power
        if abs(round(value, 1)) < 1024 or unit == UNITS[-1]:
            return value, unit
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """``12MiB``, ``50 GiB``, ``1.5T``, ``4096``: bytes. K, M, G and T are binary (KiB...),
    as warren shows them; anything else is one sentence (exit 2)."""
    found = _SIZE.match(text)
    if found is None:
        raise UsageError(f"{text!r} is not a size: write it like 12MiB, 50GiB or 4096.")
    number, unit = found.groups()
    letter = (unit or "B")[0].upper()
    power = 0 if letter == "B" else "KMGT".index(letter) + 1
    return int(float(number) * 1024**power)
