"""Durations and sizes as CLI options take them (`7d`, `90s`, `512MiB`), checked where they enter."""

from __future__ import annotations

DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(
    text: str, option: str = "--call-retention", least_s: float = 60.0, allow_zero: bool = False
) -> float:
    """A duration option: seconds, or a number with s, m, h or d (at least `least_s`, or 0 when
    `allow_zero`), at most ten years."""
    raw = text.strip().lower()
    unit = DURATION_UNITS.get(raw[-1:], None)
    number = raw[:-1] if unit else raw
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a duration such as 3600, 12h or 7d") from None
    if allow_zero and seconds == 0:
        return 0.0
    if not least_s <= seconds <= 10 * 365 * 86400:
        lower = f"{least_s:g} s" + (" (or 0)" if allow_zero else "")
        raise ValueError(f"{option} {text!r} must be between {lower} and ten years")
    return seconds


SIZE_UNITS = {
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


def parse_size(text: str, option: str) -> int:
    """A size option: bytes, or a number with KiB, MiB, GiB, TiB (or KB, MB, GB, TB); at least 1 MiB."""
    raw = text.strip().lower().replace(" ", "")
    unit = next((u for u in sorted(SIZE_UNITS, key=len, reverse=True) if raw.endswith(u)), None)
    number = raw[: -len(unit)] if unit else raw.removesuffix("b")
    try:
        size = int(float(number) * (SIZE_UNITS[unit] if unit else 1))
    except (ValueError, OverflowError):
        raise ValueError(f"{option} {text!r} is not a size such as 512MiB or 2GiB") from None
    if not 2**20 <= size <= 2**50:
        raise ValueError(f"{option} {text!r} must be between 1 MiB and 1 PiB")
    return size
