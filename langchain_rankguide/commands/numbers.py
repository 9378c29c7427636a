"""Comma-separated numbers given on the command line (``--thresholds=-2.2,-2.5``)."""

from __future__ import annotations

import math

from langchain_rankguide.errors import RankGuideError


def number_list(text: str, option: str) -> list[float]:
    """Parse ``"-2.2,-2.5"`` into finite floats; a clear error names ``option`` otherwise.

    Example:
        >>> number_list("-2.2, -2.5,", "--thresholds")
        [-2.2, -2.5]
    """
    try:
        numbers = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        numbers = []
    if not numbers or not all(math.isfinite(n) for n in numbers):
        raise RankGuideError(f"{option}: {text!r} is not a comma-separated list of numbers")
    return numbers
