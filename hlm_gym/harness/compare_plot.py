"""The Pareto plots of ``hlm-gym compare``: tokens/s against risk and error rate, one PNG per scenario.

matplotlib is imported inside the functions only, so importing this module (and ``hlm-gym --help``)
stays free of it.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

from hlm_gym.harness.hybrid_lm import SWEEP_FAMILY

__all__ = ["pareto_png"]

ANALYTIC_FAMILY = SWEEP_FAMILY  # as in compare.py: the default env family's reference sweep


def _front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper envelope of ``(risk, tokens/s)`` points, as ``compare.analytic_front`` computes it
    (repeated here: importing compare from this module would make an import cycle)."""
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


def pareto_png(rows: list[dict[str, Any]], scenario: str) -> bytes:
    """Tokens/s against risk (left) and error rate (right) for one scenario: PPO and the analytic rules."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=100, sharey=True)
    mine = [r for r in rows if r["scenario"] == scenario and not r.get("note")]
    styles = {ANALYTIC_FAMILY: ("tab:blue", "o", "U-HLM threshold sweep (u_th; always = -inf)"),
              "uhlm": ("tab:cyan", "s", "U-HLM fitted (averse/prone)"),
              "ltt": ("tab:green", "^", "Learn-then-Test"),
              "channel-aware": ("tab:purple", "D", "channel-aware rule"),
              "ppo": ("tab:red", "*", "PPO (λ and risk-target R sweeps)")}
    for ax, metric, xlabel in ((axes[0], "risk", "risk (mean rejection probability of skipped tokens)"),
                               (axes[1], "error_rate", "error rate (skipped tokens that would be rejected / tokens)")):
        for fam, (colour, marker, label) in styles.items():
            pts = sorted((r[metric], r["tokens_per_s"], r[metric + "_ci"], r["tokens_per_s_ci"], r["policy"])
                         for r in mine if r["family"] == fam)
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [p[1] for p in pts]
            ax.errorbar(x, y, xerr=[p[2] for p in pts], yerr=[p[3] for p in pts], fmt=marker, color=colour,
                        label=label, ms=9 if fam == "ppo" else 5, capsize=2, lw=0.8)
            if fam in (ANALYTIC_FAMILY, "ppo"):
                front = _front(list(zip(x, y)))
                ax.plot([p[0] for p in front], [p[1] for p in front], "-", color=colour, lw=1.2, alpha=0.8)
            if fam == "ppo":
                for p in pts:
                    tag = p[4].split(":", 1)[-1].replace("lambda=", "λ=").replace("target=", "R=")
                    ax.annotate(tag, (p[0], p[1]), textcoords="offset points",
                                xytext=(5, 4), fontsize=7, color=colour)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")  # the check is relative (10% more tokens/s): equal ratios, equal distances
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    axes[0].yaxis.set_major_formatter(plain)
    axes[0].yaxis.set_minor_formatter(plain)
    axes[0].set_ylabel("tokens/s (simulated, log scale)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{scenario}: learned vs analytic (test split)")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
