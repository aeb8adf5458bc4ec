"""The upper envelope (front) of ``(risk, tokens/s)`` points, shared by the dominance check of
``hlm-gym compare`` and its Pareto plots."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["analytic_front"]


def analytic_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper envelope ``tokens/s(risk)`` of ``(risk, tokens/s)`` points: sorted by risk, each point
    kept only if it beats every point of lower or equal risk (a non-decreasing staircase)."""
    pts = sorted((float(r), float(t)) for r, t in points if math.isfinite(r) and math.isfinite(t))
    front: list[tuple[float, float]] = []
    for r, t in pts:
        if front and r == front[-1][0]:
            if t > front[-1][1]:
                front[-1] = (r, t)
            continue
        if not front or t > front[-1][1]:
            front.append((r, t))
    return front
