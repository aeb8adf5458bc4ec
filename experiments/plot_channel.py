"""Plot the uplink SNR (dB) over time of one link for each named scenario, one subplot each.

    python experiments/plot_channel.py --out runs/channel.png --duration 2.0

Scenarios that need an optional backend that is not installed (Sionna) are drawn as an empty
panel with a note. The PNG is written atomically (temporary file + os.replace).
"""

from __future__ import annotations

import argparse
import math
import os
import io
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hlm_gym.paths import atomic_write_bytes  # noqa: E402
from hlm_gym.wireless.channel import make_channel  # noqa: E402
from hlm_gym.wireless.rate import RateModel  # noqa: E402
from hlm_gym.wireless.scenarios import list_scenarios, load_scenario  # noqa: E402


def sample_period(sc, duration: float, dt: Optional[float]) -> float:
    """Time step: given, else fine enough for the Doppler (1/(20 f_D)), at most 1 ms, <= 20k points."""
    if dt:
        return dt
    fd = sc.doppler_hz
    step = 1e-3 if fd <= 0 else min(1e-3, 1.0 / (20.0 * fd))
    return max(step, duration / 20_000)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/channel_snr.png", help="output PNG path")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds of channel to draw")
    ap.add_argument("--dt", type=float, default=None, help="time step [s] (default: from the Doppler)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenarios", nargs="*", default=None, help="names or YAML paths (default: all bundled)")
    args = ap.parse_args(argv)
    if not args.duration > 0:
        ap.error("--duration must be > 0")

    names = args.scenarios or list_scenarios()
    cols = 2 if len(names) > 1 else 1
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        sc = load_scenario(name)
        try:
            ch = make_channel(sc, 1, np.random.default_rng(args.seed))
        except ImportError as exc:
            ax.text(0.5, 0.5, f"{sc.name}: backend not installed\n{exc}".replace(" (", "\n("), ha="center",
                    va="center", fontsize=7, transform=ax.transAxes, wrap=True)
            ax.set_title(sc.name)
            continue
        step = sample_period(sc, args.duration, args.dt)
        times = np.arange(0.0, args.duration, step)
        snr = ch.trace_db(times, link=0)
        ax.plot(times, np.maximum(snr, -40.0), lw=0.7, label="uplink SNR")
        ax.axhline(float(ch.mean_snr_db()[0]), color="k", lw=0.8, ls="--", label="large-scale mean (t=0)")
        out = RateModel(sc.rate).outage_snr_db
        if out is not None:
            ax.axhline(out, color="r", lw=0.8, ls=":", label="outage threshold")
        title = f"{sc.name}: {sc.fading.model}"
        if sc.fading.model != "none":
            title += f", {sc.fading.speed_kmh:g} km/h (f_D = {sc.doppler_hz:.1f} Hz)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time [s]")
        ax.set_ylabel("SNR [dB]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()

    out_path = os.path.abspath(args.out)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(out_path, buf.getvalue())
    plt.close(fig)
    print(out_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
