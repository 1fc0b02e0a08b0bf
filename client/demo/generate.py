"""Make the three demo files the interactive menu offers: ``python -m client.demo.generate``.

The menu lets someone try warren before they have picked a file of their own, so the client
ships a text, an image and a sound of a few hundred KiB each: big enough to show a progress
bar and more than one chunk's worth of work, small enough to keep the package light. They are
made here rather than downloaded so their origin and licence are plain, and byte for byte
the same on every run: a pseudo-random generator of our own (not ``random``, whose streams
may change between Python versions) and nothing but +, -, * and / on floats (no ``math.sin``,
whose last bit may differ between C libraries). Only zlib's compressor, for the PNG, is
outside our hands; ``--check`` says whether the shipped files still match.
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import textwrap
import wave
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
MASK64 = (1 << 64) - 1


class Rng:
    """splitmix64: tiny, well mixed, and the same stream everywhere."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def pick(self, items: Sequence[str]) -> str:
        return items[self.below(len(items))]


# -- notes.txt: a field guide to an imaginary warren ---------------------------------------

ADJECTIVES = (
    "quiet", "patient", "sandy", "narrow", "ancient", "restless", "hidden", "careful", "damp",
    "golden", "crooked", "sleepy", "watchful", "distant", "mossy", "humble", "bright", "windy",
    "tangled", "generous", "silver", "forgotten", "steady", "curious",
)  # fmt: skip
NOUNS = (
    "rabbit", "tunnel", "burrow", "meadow", "hedge", "warren", "keeper", "messenger", "chamber",
    "lantern", "ledger", "root", "clover field", "river bank", "storehouse", "doorway", "elder",
    "courier", "map", "signal", "orchard", "hill", "archive", "bell",
)  # fmt: skip
VERBS = (
    "carried", "counted", "guarded", "copied", "remembered", "answered", "dug", "followed",
    "repaired", "watched", "sorted", "mended", "announced", "wrote down", "hid", "found",
    "shared", "checked", "delivered", "kept",
)  # fmt: skip
PLACES = (
    "under the old oak", "beyond the stream", "at the edge of the wood", "in the lower tunnels",
    "near the eastern gate", "behind the bramble", "on the chalk hill", "by the ruined wall",
    "in the deep chambers", "along the hedgerow", "past the stone bridge", "in the long grass",
)  # fmt: skip
TIMES = (
    "At dawn", "Before the rain", "Every evening", "In the long winter", "When the moon rose",
    "By midday", "After the storm", "Once a season", "Late at night", "In early spring",
)  # fmt: skip
THINGS = (
    "every seed", "each message", "a second copy", "the winter stores", "the names of the fallen",
    "the count of the days", "a small bundle of letters", "the news from the south",
    "a map of the tunnels", "the oldest songs",
)  # fmt: skip
MORALS = (
    "nothing kept in one place is ever truly safe",
    "a thing is stored only when two have seen it stored",
    "the tunnel that is checked is the tunnel that holds",
    "a message without an answer is a message still travelling",
    "the careful are rarely in a hurry and never late",
    "what is counted twice is counted well",
    "a lost keeper is mourned, but the ledger goes on",
    "the slowest runner still arrives if the path is marked",
)  # fmt: skip

SENTENCES = (
    "{Time}, the {adj} {noun} {verb} {thing} {place}.",
    "The {noun} {verb} {thing}, and the {adj2} {noun2} {verb2} it again {place}.",
    "Nobody remembers who first {verb} {thing}, but the {noun}s say {moral}.",
    "{Time}, a {adj} {noun2} appeared {place} and {verb2} {thing}.",
    "It is said {place} that {moral}.",
    "The {adj} {noun}s {verb} {thing} twice, for {moral}.",
    "When the {noun} fell silent, the {adj2} {noun2} {verb2} {thing} in its place.",
    "{Time}, {thing} was carried {place}, and the {noun}s waited for the answer.",
)


def _sentence(rng: Rng) -> str:
    template = rng.pick(SENTENCES)
    text = template.format(
        Time=rng.pick(TIMES),
        adj=rng.pick(ADJECTIVES),
        adj2=rng.pick(ADJECTIVES),
        noun=rng.pick(NOUNS),
        noun2=rng.pick(NOUNS),
        verb=rng.pick(VERBS),
        verb2=rng.pick(VERBS),
        thing=rng.pick(THINGS),
        place=rng.pick(PLACES),
        moral=rng.pick(MORALS),
    )
    return text[0].upper() + text[1:]


def notes_txt(chapters: int = 30) -> bytes:
    """About 300 KiB of readable prose, wrapped at 72 columns like a plain-text book."""
    rng = Rng(2024)
    out = [
        "THE WARREN ALMANAC",
        "",
        "Being a field guide to the tunnels, their keepers and their habits.",
        "(Generated by warren's client/demo/generate.py; free to copy.)",
        "",
    ]
    for number in range(1, chapters + 1):
        title = f"Chapter {number}. The {rng.pick(ADJECTIVES).title()} {rng.pick(NOUNS).title()}"
        out += ["", title, "=" * len(title), ""]
        for _paragraph in range(14 + rng.below(6)):
            words = " ".join(_sentence(rng) for _ in range(4 + rng.below(5)))
            out += [*textwrap.wrap(words, width=72), ""]
    out.append("THE END")
    return ("\n".join(out) + "\n").encode("ascii")


# -- picture.png: the Mandelbrot set, with a little film grain ------------------------------

# Colour stops the escape count cycles through: deep blue, cyan, white, gold, crimson, violet.
PALETTE = (
    (9, 12, 60), (20, 90, 180), (80, 200, 230), (240, 250, 255),
    (250, 200, 60), (220, 70, 40), (120, 20, 90), (30, 10, 70),
)  # fmt: skip
BAND = 4  # escape counts per colour stop


def _colour(n: int) -> tuple[int, int, int]:
    i, frac = divmod(n, BAND)
    a = PALETTE[i % len(PALETTE)]
    b = PALETTE[(i + 1) % len(PALETTE)]
    return (
        (a[0] * (BAND - frac) + b[0] * frac) // BAND,
        (a[1] * (BAND - frac) + b[1] * frac) // BAND,
        (a[2] * (BAND - frac) + b[2] * frac) // BAND,
    )


def _escape_count(cr: float, ci: float, limit: int) -> int:
    """Iterations before z escapes; ``limit`` for points in the set."""
    q = (cr - 0.25) * (cr - 0.25) + ci * ci
    if q * (q + (cr - 0.25)) <= 0.25 * ci * ci or (cr + 1) * (cr + 1) + ci * ci <= 0.0625:
        return limit  # inside the main cardioid or the period-2 bulb: skip the loop
    zr = zi = 0.0
    for n in range(limit):
        zr2, zi2 = zr * zr, zi * zi
        if zr2 + zi2 > 4.0:
            return n
        zi = 2 * zr * zi + ci
        zr = zr2 - zi2 + cr
    return limit


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def picture_png(width: int = 600, height: int = 400, limit: int = 96) -> bytes:
    """A 600×400 RGB PNG written with zlib and struct alone (no imaging library needed)."""
    rng = Rng(1978)
    x0, x1, y0, y1 = -2.35, 0.95, -1.1, 1.1
    colours = [_colour(n) for n in range(limit)]
    rows = []
    for y in range(height):
        ci = y0 + (y1 - y0) * y / (height - 1)
        row = bytearray(b"\x00")  # filter type 0: the grain would defeat the others anyway
        for x in range(width):
            n = _escape_count(x0 + (x1 - x0) * x / (width - 1), ci, limit)
            if n == limit:  # the set itself: a dark vertical gradient
                r, g, b = 4, 4 + 12 * y // height, 24 + 30 * y // height
            else:
                r, g, b = colours[n]
            grain = rng.next()
            row += bytes(
                (
                    max(0, min(255, r + (grain & 7) - 4)),
                    max(0, min(255, g + ((grain >> 3) & 7) - 4)),
                    max(0, min(255, b + ((grain >> 6) & 7) - 4)),
                )
            )
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    text = b"Software\x00warren client/demo/generate.py"
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"tEXt", text),
            _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9)),
            _png_chunk(b"IEND", b""),
        )
    )


# -- chime.wav: a four-note bell arpeggio ---------------------------------------------------

RATE = 44100
TAU = 6.283185307179586
# (start in seconds, fundamental in Hz): C5, E5, G5, C6 and a final chord an octave lower.
NOTES = (
    (0.00, 523.25), (0.35, 659.25), (0.70, 783.99), (1.05, 1046.50),
    (1.60, 261.63), (1.60, 329.63), (1.60, 392.00),
)  # fmt: skip
# A bell's partials are not harmonic: (ratio to the fundamental, loudness, seconds to fade).
PARTIALS = ((1.0, 1.0, 1.2), (2.76, 0.45, 0.5), (5.40, 0.2, 0.25), (0.5, 0.25, 1.8))


def _cos_sin(x: float) -> tuple[float, float]:
    """cos and sin of a small angle by their series: the same bits on every C library."""
    c = s = 0.0
    term = 1.0
    for k in range(1, 40):
        if k % 2:
            c += term if k % 4 == 1 else -term
        else:
            s += term if k % 4 == 2 else -term
        term = term * x / k
    return c, s


def chime_wav(seconds: float = 4.0) -> bytes:
    """Mono 16-bit PCM at 44.1 kHz, every oscillator a rotation so no sine is ever called."""
    total = int(seconds * RATE)
    mix = [0.0] * total
    for start, freq in NOTES:
        first = int(start * RATE)
        for ratio, loudness, fade in PARTIALS:
            cw, sw = _cos_sin(TAU * freq * ratio / RATE)
            decay = 1.0 - 1.0 / (fade * RATE)  # the envelope loses 1/e every `fade` seconds
            attack = int(0.004 * RATE)
            c, s, level = 1.0, 0.0, loudness
            for i in range(first, total):
                if level < 1e-5:
                    break  # inaudible from here on
                ramp = min(1.0, (i - first + 1) / attack)
                mix[i] += s * level * ramp
                c, s = c * cw - s * sw, s * cw + c * sw
                level *= decay
    peak = max(abs(v) for v in mix) or 1.0
    scale = 0.8 * 32767 / peak
    pcm = struct.pack(f"<{total}h", *(round(v * scale) for v in mix))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return buf.getvalue()


DEMOS: dict[str, Callable[[], bytes]] = {
    "notes.txt": notes_txt,
    "picture.png": picture_png,
    "chime.wav": chime_wav,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.demo.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file differs"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, make in DEMOS.items():
        data = make()
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
            continue
        path.write_bytes(data)
        print(f"{path}: {len(data) / 1024:.1f} KiB")
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python -m client.demo.generate", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
