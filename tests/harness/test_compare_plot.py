"""The Pareto plots of ``hlm-gym compare``: PPO numbers never overlap, the log tokens/s axis has
labelled ticks inside a narrow band, and the same rows give the same PNG bytes."""

from __future__ import annotations

import math

import pytest

from hlm_gym.harness.compare_plot import PPO_LABEL_GID, log_ticks, pareto_figure, pareto_png, run_tag

SCENARIO = "crowded"


def _row(family: str, policy: str, risk: float, tps: float, err: float) -> dict:
    return {"scenario": SCENARIO, "family": family, "policy": policy, "tokens_per_s": tps, "tokens_per_s_ci": 0.3,
            "risk": risk, "risk_ci": 0.01, "error_rate": err, "error_rate_ci": 0.01, "episodes": 200}


def narrow_rows() -> list[dict]:
    """8 PPO points in risk 0.40-0.50 and 14-19 tokens/s, a U-HLM threshold sweep over the same band,
    a channel-aware rule, an undefined row (a note: not plotted) and another scenario's row."""
    ppo = [f"ppo:lambda={lam}" for lam in (1, 2, 3, 5)] + [f"ppo:lambda=10,target={t}" for t in (0.2, 0.3, 0.4, 0.45)]
    rows = [_row("ppo", p, 0.40 + 0.1 * i / 7, 14 + 5 * ((i * 3) % 8) / 7, 0.10 + 0.02 * i) for i, p in enumerate(ppo)]
    rows += [_row("uhlm-threshold", f"threshold:{0.5 + 0.05 * k:g}", 0.40 + 0.01 * k, 14 + 0.5 * k, 0.08 + 0.02 * k)
             for k in range(11)]
    rows += [_row("channel-aware", f"channel-aware:lambda={lam}", 0.45, 15 + lam, 0.15) for lam in (1, 2)]
    rows.append(_row("ltt", "ltt:delta=0.1", math.nan, math.nan, math.nan) | {"note": "undefined"})
    rows.append(_row("ppo", "ppo:lambda=1", 0.3, 30.0, 0.2) | {"scenario": "elsewhere"})
    return rows


def crowded_rows() -> list[dict]:
    """As in the shipped plots: the U-HLM sweep spans risk 0-0.5 and 6-38 tokens/s, and the 8 PPO
    points crowd into risk 0.44-0.47 and 14-19 tokens/s (some almost on top of each other)."""
    ppo = [f"ppo:lambda={lam}" for lam in (1, 2, 3, 5)] + [f"ppo:lambda=10,target={t}" for t in (0.2, 0.3, 0.4, 0.45)]
    at = [(0.445, 17.0), (0.447, 17.3), (0.450, 16.8), (0.455, 15.0), (0.46, 14.2), (0.44, 18.9), (0.465, 14.6),
          (0.446, 16.9)]
    rows = [_row("ppo", p, r, t, r / 3) for p, (r, t) in zip(ppo, at)]
    sweep = [(0.0, 6.1), (0.1, 6.3), (0.2, 6.6), (0.3, 7.0), (0.38, 7.8), (0.42, 9.0), (0.44, 10.6), (0.46, 12.5),
             (0.5, 38.5)]
    rows += [_row("uhlm-threshold", f"threshold:{k / 10:g}", r, t, r / 2) for k, (r, t) in enumerate(sweep)]
    return rows


@pytest.fixture
def crowded():
    fig = pareto_figure(crowded_rows(), SCENARIO)
    fig.canvas.draw()
    return fig


@pytest.fixture
def narrow():
    fig = pareto_figure(narrow_rows(), SCENARIO)
    fig.canvas.draw()
    return fig


def test_the_ppo_numbers_never_overlap(crowded):
    renderer = crowded.canvas.get_renderer()
    for ax in crowded.axes[:2]:
        labels = [t for t in ax.texts if t.get_gid() == PPO_LABEL_GID]
        assert sorted(t.get_text() for t in labels) == [str(i) for i in range(1, 9)]
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), f"PPO labels overlap: {a} and {b}"
    # the points are crowded: some lie closer together (in pixels) than a label is wide
    ax = crowded.axes[0]
    xy = [ax.transData.transform((r["risk"], r["tokens_per_s"])) for r in crowded_rows() if r["family"] == "ppo"]
    closest = min(math.dist(a, b) for i, a in enumerate(xy) for b in xy[i + 1:])
    assert closest < min(b.width for b in boxes)


def test_the_key_names_every_ppo_run(narrow):
    key = "\n".join(t.get_text() for t in narrow.texts)
    for i, tag in enumerate(["λ=1", "λ=2", "λ=3", "λ=5", "λ=10, R=0.2", "λ=10, R=0.3", "λ=10, R=0.4", "λ=10, R=0.45"], 1):
        assert f"{i:>2}  {tag}\n" in key + "\n"
    assert "30" not in key  # the other scenario's run is not keyed
    assert "ppo:lambda=1" not in key and run_tag("ppo:lambda=10,target=0.3") == "λ=10, R=0.3"


def test_the_log_axis_has_labelled_ticks_inside_a_narrow_band(narrow):
    ax = narrow.axes[0]
    assert ax.get_yscale() == "log"
    labelled = [(t.get_loc(), t.label1.get_text()) for t in ax.yaxis.get_major_ticks() if t.label1.get_text()]
    inside = [(v, s) for v, s in labelled if 14 <= v <= 19.3]
    assert len(inside) >= 3, labelled
    assert all(s == f"{v:g}" for v, s in inside)
    assert not any(t.label1.get_text() for t in ax.yaxis.get_minor_ticks())


@pytest.mark.parametrize("lo,hi", [(14, 19), (13.5, 41), (5.5, 42), (3.2, 40), (0.05, 900), (14.0, 14.6), (1, 10)])
def test_log_ticks_cover_the_range(lo, hi):
    ticks = log_ticks(lo, hi)
    assert len(ticks) >= 3 and all(lo <= t <= hi for t in ticks) and ticks == sorted(set(ticks))
    assert all(f"{t:g}" == f"{t:.12g}" for t in ticks), ticks  # short, clean labels


def test_the_same_rows_give_the_same_bytes():
    rows = crowded_rows() + narrow_rows()
    first = pareto_png(rows, SCENARIO)
    assert first.startswith(b"\x89PNG") and pareto_png([dict(r) for r in rows], SCENARIO) == first


def test_a_scenario_without_ppo_runs_still_renders():
    rows = [r for r in narrow_rows() if r["family"] != "ppo"]
    assert pareto_png(rows, SCENARIO).startswith(b"\x89PNG")
