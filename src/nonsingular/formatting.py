"""How numbers read in tables and sentences: accuracies as percentages, differences as percentage points.

One definition for the CLI's tables and the study's report, so the same fraction never reads two ways. A missing
number (None: no cell, no seed, no certificate) reads "-".
"""

from __future__ import annotations

__all__ = ["percent", "points"]


def percent(fraction: float | None, digits: int = 1) -> str:
    """0.9754 -> "97.5%"; None -> "-"."""
    return "-" if fraction is None else f"{100 * fraction:.{digits}f}%"


def points(fraction: float | None, spec: str = "+.2f") -> str:
    """A fraction as percentage points in format `spec` (0.0123 -> "+1.23" with "+.2f"); None -> "-"."""
    return "-" if fraction is None else format(100 * fraction, spec)
