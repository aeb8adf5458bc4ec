"""The Pareto plots of ``hlm-gym compare``: tokens/s against the env family's risk axis (and its
error axis, when it has one), one PNG per scenario.

What is drawn comes from the env family (:class:`~hlm_gym.harness.family.EnvFamily`): the panels'
metrics (``risk_metric``, ``error_metric``) and axis labels (``labels["axis:<metric>"]``), the
analytic families' colours, markers and legend labels (``plot_styles``; a family without them gets
a colour per analytic family of the rows) and the reference sweep whose front is drawn
(``sweep_family``). HybridLM: tokens/s against risk and error rate, the U-HLM threshold front.

The PPO points are numbered on the plot (numbers placed so that no two overlap) and a key beside the
panels says which run each number is; the log tokens/s axis gets labelled ticks spread over the
data's range, however narrow. matplotlib is imported inside the functions only, so importing this
module (and ``hlm-gym --help``) stays free of it. Same rows, same PNG bytes.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

from hlm_gym.harness.families import DEFAULT_ENV_ID, family_for
from hlm_gym.harness.front import analytic_front
from hlm_gym.harness.hybrid_lm import SWEEP_FAMILY

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["pareto_png", "pareto_figure", "log_ticks", "run_tag", "PPO_LABEL_GID", "PPO_STYLE"]

ANALYTIC_FAMILY = SWEEP_FAMILY  # as in compare.py: the default env family's reference sweep
PPO_LABEL_GID = "ppo-label"  # the gid of the number beside each PPO point (tests find them by it)

PPO_STYLE = ("tab:red", "*", "PPO (λ and risk-target R sweeps; numbers: see key)")
_CYCLE = (("tab:blue", "o"), ("tab:green", "^"), ("tab:orange", "v"), ("tab:purple", "D"), ("tab:cyan", "s"),
          ("tab:olive", "P"), ("tab:brown", "X"), ("tab:pink", "h"), ("tab:gray", "p"))
# Tick mantissas per decade, coarse to fine; finer sets are roughly evenly spaced on a log axis.
_MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0),
              (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0),
              tuple([1 + i / 10 for i in range(10)] + [2 + i / 5 for i in range(10)]
                    + [4 + i / 2 for i in range(12)]))
_MIN_TICKS = 6
_RADII_PT = (5.0, 10.0, 16.0, 24.0, 34.0)  # label distances from the marker tried first (points)
_DIRECTIONS = ((1, 1), (1, 0), (0, 1), (1, -1), (-1, 1), (-1, 0), (0, -1), (-1, -1))  # NE E N SE NW W S SW


def _marker_size(family: str) -> float:
    """The marker size (points) of a family's points: PPO stands out."""
    return 9.0 if family == "ppo" else 5.0


def run_tag(policy: str) -> str:
    """The short name of a PPO run in the key: ``ppo:lambda=10,target=0.3`` -> ``λ=10, R=0.3``."""
    return policy.split(":", 1)[-1].replace("lambda=", "λ=").replace("target=", "R=").replace(",", ", ")


def log_ticks(lo: float, hi: float, min_ticks: int = _MIN_TICKS) -> list[float]:
    """Major tick values for a log axis showing ``[lo, hi]`` (``0 < lo < hi``): the coarsest set of
    "nice" values per decade (1; 1-2-5; ...; steps of 0.1 from 1 to 2) that puts at least
    ``min_ticks`` ticks inside the range (six by default: a crowded band of a wide range still gets
    some); a plain linear 1-2-2.5-5 choice when even the finest
    does not (a range narrower than about 20%)."""
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"log_ticks needs 0 < lo < hi, got {lo!r}, {hi!r}")
    first, last = math.floor(math.log10(lo)), math.floor(math.log10(hi))
    for mantissas in _MANTISSAS:
        ticks = sorted({float(f"{m * 10.0 ** k:.12g}") for k in range(first, last + 1) for m in mantissas})
        inside = [t for t in ticks if lo <= t <= hi]
        if len(inside) >= min_ticks:
            return inside
    from matplotlib.ticker import MaxNLocator

    linear = MaxNLocator(nbins=min_ticks + 1, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    return [float(f"{t:.12g}") for t in linear if lo <= t <= hi]


def _overlaps(a: Any, b: Any, pad: float = 1.0) -> bool:
    """Whether display bboxes ``a`` and ``b`` come closer than ``pad`` pixels."""
    return a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad


def _place_labels(ax: Axes, points: list[tuple[float, float, str]], markers: list[tuple[float, ...]],
                  colour: str) -> None:
    """Write each ``(x, y, number)`` of ``points`` beside its marker, none overlapping another.

    Deterministic greedy placement in display coordinates, points taken in display order (left to
    right, bottom to top): the first offset of ``_RADII_PT`` x ``_DIRECTIONS`` that overlaps no
    number placed before, no marker and stays inside the axes; failing that, the first that
    overlaps no number placed before, trying ever larger distances (the numbers placed before are
    finite and bounded, so one is always found). A number set off further than the nearest
    distance gets a thin leader line to its point.
    """
    from matplotlib.patheffects import withStroke
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    to_display = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    obstacles = []  # each point's marker (a square of its size) and error bars (thin boxes)
    for x, y, size, xci, yci in markers:
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        (u, v), half, bar = to_display((x, y)), size * px / 2, 1.5 * px
        obstacles.append(Bbox.from_extents(u - half, v - half, u + half, v + half))
        for x0, y0, x1, y1 in ((x - xci, y, x + xci, y), (x, y - yci, x, y + yci)):
            if all(map(math.isfinite, (x0, y0, x1, y1))) and y0 > 0:
                (a, b), (c, d) = to_display((x0, y0)), to_display((x1, y1))
                obstacles.append(Bbox.from_extents(min(a, c) - bar, min(b, d) - bar, max(a, c) + bar, max(b, d) + bar))
    order = sorted((tuple(to_display((x, y))), n, (x, y)) for x, y, n in points
                   if math.isfinite(x) and math.isfinite(y))
    placed: list[Any] = []
    for _, number, xy in order:
        label = ax.annotate(number, xy, textcoords="offset points", xytext=(0, 0), fontsize=7,
                            fontweight="bold", color=colour, annotation_clip=False, gid=PPO_LABEL_GID,
                            path_effects=[withStroke(linewidth=2.5, foreground="white")])

        def box_at(radius: float, d: tuple[int, int]) -> Any:
            label.xyann = (d[0] * radius, d[1] * radius)
            label.set_ha({1: "left", 0: "center", -1: "right"}[d[0]])
            label.set_va({1: "bottom", 0: "center", -1: "top"}[d[1]])
            return label.get_window_extent(renderer)

        choice = None
        fallback = None
        for radius in _RADII_PT:
            for d in _DIRECTIONS:
                box = box_at(radius, d)
                if any(_overlaps(box, p) for p in placed):
                    continue
                fallback = fallback or (radius, d)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if inside and not any(_overlaps(box, o, 0.0) for o in obstacles):
                    choice = (radius, d)
                    break
            if choice:
                break
        radius = _RADII_PT[-1]
        while choice is None and fallback is None:
            radius *= 1.5
            for d in _DIRECTIONS:
                if not any(_overlaps(box_at(radius, d), p) for p in placed):
                    fallback = (radius, d)
                    break
        radius, d = choice or fallback
        placed.append(box_at(radius, d))
        if radius > _RADII_PT[0]:
            ax.annotate("", xy, textcoords="offset points", xytext=(d[0] * radius, d[1] * radius),
                        annotation_clip=False,
                        arrowprops=dict(arrowstyle="-", color=colour, lw=0.5, alpha=0.7, shrinkA=0, shrinkB=4))


def _styles(family: Any, rows: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """``analytic family -> (colour, marker, legend label)`` for ``family``'s plots, PPO last: its
    ``plot_styles``, else a colour and marker per analytic family of ``rows`` (its name as label)."""
    if family.plot_styles:
        styles = {fam: (colour, marker, label) for fam, colour, marker, label in family.plot_styles}
    else:
        names = [f for f in dict.fromkeys(r["family"] for r in rows) if f not in ("ppo", "ppo-seed")]
        names.sort(key=lambda f: f != family.sweep_family)  # the reference sweep first (blue)
        styles = {f: (*_CYCLE[i % len(_CYCLE)], f) for i, f in enumerate(names)}
    return styles | {"ppo": PPO_STYLE}


def _panels(family: Any) -> tuple[tuple[str, str], ...]:
    """``(metric, axis label)`` per panel: the family's risk axis, then its error axis if any."""
    metrics = (family.risk_metric,) + (() if family.error_metric is None else (family.error_metric,))
    return tuple((m, family.labels.get(f"axis:{m}", m.replace("_", " "))) for m in metrics)


def pareto_figure(rows: list[dict[str, Any]], scenario: str, env_id: str = DEFAULT_ENV_ID) -> Figure:
    """The Pareto figure of one scenario (a matplotlib Figure on an Agg canvas, outside pyplot):
    tokens/s (log) against ``env_id``'s family's risk axis (left) and its error axis (right; HybridLM:
    risk and error rate) for PPO and the analytic rules, the fronts of PPO and of the family's
    reference sweep drawn.

    PPO runs are numbered 1..n in the order of ``rows``; the numbers sit beside their points
    without overlapping and a key at the right gives each run's λ (and risk target R).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    family = family_for(env_id)
    panels = _panels(family)
    mine = [r for r in rows if r["scenario"] == scenario and not r.get("note")]
    styles = _styles(family, mine)
    fig = Figure(figsize=(12.5, 4.8) if len(panels) == 2 else (4.5 + 4.0 * len(panels), 4.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    ppo = [r for r in mine if r["family"] == "ppo"]
    numbers = {id(r): str(i) for i, r in enumerate(ppo, 1)}
    for ax, (metric, xlabel) in zip(axes, panels):
        for fam, (colour, marker, label) in styles.items():
            fam_rows = sorted((r for r in mine if r["family"] == fam), key=lambda r: (r[metric], r["tokens_per_s"]))
            if not fam_rows:
                continue
            x = [r[metric] for r in fam_rows]
            y = [r["tokens_per_s"] for r in fam_rows]
            ax.errorbar(x, y, xerr=[r.get(metric + "_ci", 0.0) for r in fam_rows],
                        yerr=[r["tokens_per_s_ci"] for r in fam_rows],
                        fmt=marker, color=colour, label=label, ms=_marker_size(fam), capsize=2, lw=0.8)
            if fam in (family.sweep_family, "ppo"):
                front = analytic_front(list(zip(x, y)))
                ax.plot([p[0] for p in front], [p[1] for p in front], "-", color=colour, lw=1.2, alpha=0.8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")  # the check is relative (10% more tokens/s): equal ratios, equal distances
    axes[0].set_ylabel("tokens/s (simulated, log scale)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{scenario}: learned vs analytic (test split)")
    right = 1.0
    if ppo:
        key = "PPO runs\n" + "\n".join(f"{numbers[id(r)]:>2}  {run_tag(r['policy'])}" for r in ppo)
        text = fig.text(0.995, 0.88, key, ha="right", va="top", ma="left", fontsize=8, linespacing=1.4, color=PPO_STYLE[0],
                        bbox=dict(boxstyle="round,pad=0.4", fc="white", ec="0.7"))
        width = text.get_window_extent(fig.canvas.get_renderer()).width / fig.bbox.width
        right = 0.995 - width - 0.012
    fig.tight_layout(rect=(0, 0, right, 1))
    lo, hi = axes[0].get_ylim()  # autoscaled (errorbars included); frozen so ticks and labels fit it
    axes[0].set_ylim(lo, hi)
    for ax in axes:
        ax.set_xlim(*ax.get_xlim())
    if 0 < lo < hi:
        axes[0].yaxis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
        axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].yaxis.set_minor_formatter(NullFormatter())
    for ax, (metric, _) in zip(axes, panels):
        markers = [(r[metric], r["tokens_per_s"], _marker_size(r["family"]), r.get(metric + "_ci", math.nan),
                    r["tokens_per_s_ci"])
                   for r in mine]
        ax_points = [(r[metric], r["tokens_per_s"], numbers[id(r)]) for r in ppo]
        _place_labels(ax, ax_points, markers, PPO_STYLE[0])
    return fig


def pareto_png(rows: list[dict[str, Any]], scenario: str, env_id: str = DEFAULT_ENV_ID) -> bytes:
    """Tokens/s against the risk axis (left) and error axis (right) of ``env_id``'s family for one
    scenario, as PNG bytes (see ``pareto_figure``); the same rows give the same bytes."""
    fig = pareto_figure(rows, scenario, env_id)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
