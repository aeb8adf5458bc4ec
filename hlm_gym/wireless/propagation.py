"""Large-scale propagation: path loss, receiver noise, link-budget mean SNR and shadowing std.

The bottom of the wireless layer: pure functions of numbers and arrays, importing nothing else
of the package. :func:`mean_snr_db_from_budget` reads a link description by attribute (a
:class:`hlm_gym.wireless.scenarios.LinkConfig` satisfies :class:`LinkBudget`), so the scenario
module can use these helpers without this module knowing about scenarios.
"""

from __future__ import annotations

import math
from typing import Optional, Protocol

import numpy as np

__all__ = [
    "SPEED_OF_LIGHT",
    "LinkBudget",
    "PathLossParams",
    "default_shadowing_std_db",
    "noise_power_dbm",
    "pathloss_db",
    "mean_snr_db_from_budget",
]

#: Speed of light in vacuum [m/s].
SPEED_OF_LIGHT = 299_792_458.0
# 3GPP TR 38.901 Table 7.4.1-1: shadow-fading std [dB] per path-loss model.
_SF_STD_DB = {"log-distance": 0.0, "umi-los": 4.0, "umi-nlos": 7.82, "uma-los": 4.0, "uma-nlos": 6.0}


class PathLossParams(Protocol):
    """The path-loss parameters :func:`mean_snr_db_from_budget` reads (``PathLossConfig`` has them)."""

    model: str
    ref_loss_db: Optional[float]
    ref_distance_m: float
    exponent: float
    h_bs_m: float
    h_ut_m: float


class LinkBudget(Protocol):
    """The link-budget terms :func:`mean_snr_db_from_budget` reads (``LinkConfig`` has them)."""

    carrier_hz: float
    bandwidth_hz: float
    tx_power_dbm: float
    noise_density_dbm_hz: float
    noise_figure_db: float
    antenna_gain_db: float
    pathloss: PathLossParams


def default_shadowing_std_db(model: str) -> float:
    """Shadowing std [dB] of a path-loss model (TR 38.901 Table 7.4.1-1; 0 for log-distance)."""
    return _SF_STD_DB[model]


def noise_power_dbm(noise_density_dbm_hz: float, bandwidth_hz: float, noise_figure_db: float) -> float:
    """Receiver noise power N0 + 10 log10(B) + NF [dBm]."""
    return noise_density_dbm_hz + 10.0 * math.log10(bandwidth_hz) + noise_figure_db


def pathloss_db(model: str, distance_2d_m: np.ndarray, carrier_hz: float, *, h_bs_m: float = 10.0,
                h_ut_m: float = 1.5, ref_loss_db: Optional[float] = None, ref_distance_m: float = 1.0,
                exponent: float = 3.0) -> np.ndarray:
    """Path loss [dB] (without shadowing).

    ``log-distance``: ref_loss_db + 10 exponent log10(d / ref_distance_m); ref_loss_db None is
    free space at the reference distance, 20 log10(4 pi d0 f_c / c).
    ``umi-los``/``umi-nlos``/``uma-los``/``uma-nlos``: 3GPP TR 38.901 Table 7.4.1-1, with d_3D
    from the antenna heights, f_c in GHz, breakpoint d'_BP = 4 h'_BS h'_UT f_c / c, h_E = 1 m
    (UMa: exact for h_UT <= 13 m). NLOS = max(LOS, NLOS') as in the table.
    """
    d2 = np.asarray(distance_2d_m, dtype=float)
    if model == "log-distance":
        if ref_loss_db is None:
            ref_loss_db = 20.0 * math.log10(4.0 * math.pi * ref_distance_m * carrier_hz / SPEED_OF_LIGHT)
        return ref_loss_db + 10.0 * exponent * np.log10(d2 / ref_distance_m)
    fc_ghz = carrier_hz / 1e9
    d3 = np.sqrt(d2 ** 2 + (h_bs_m - h_ut_m) ** 2)
    d_bp = 4.0 * (h_bs_m - 1.0) * (h_ut_m - 1.0) * carrier_hz / SPEED_OF_LIGHT
    if model.startswith("umi"):
        pl1 = 32.4 + 21.0 * np.log10(d3) + 20.0 * math.log10(fc_ghz)
        pl2 = (32.4 + 40.0 * np.log10(d3) + 20.0 * math.log10(fc_ghz)
               - 9.5 * math.log10(d_bp ** 2 + (h_bs_m - h_ut_m) ** 2))
        los = np.where(d2 < d_bp, pl1, pl2)
        if model == "umi-los":
            return los
        nlos = 35.3 * np.log10(d3) + 22.4 + 21.3 * math.log10(fc_ghz) - 0.3 * (h_ut_m - 1.5)
        return np.maximum(los, nlos)
    if model.startswith("uma"):
        pl1 = 28.0 + 22.0 * np.log10(d3) + 20.0 * math.log10(fc_ghz)
        pl2 = (28.0 + 40.0 * np.log10(d3) + 20.0 * math.log10(fc_ghz)
               - 9.0 * math.log10(d_bp ** 2 + (h_bs_m - h_ut_m) ** 2))
        los = np.where(d2 < d_bp, pl1, pl2)
        if model == "uma-los":
            return los
        nlos = 13.54 + 39.08 * np.log10(d3) + 20.0 * math.log10(fc_ghz) - 0.6 * (h_ut_m - 1.5)
        return np.maximum(los, nlos)
    raise ValueError(f"unknown path-loss model {model!r}")


def mean_snr_db_from_budget(link: LinkBudget, distance_m: np.ndarray) -> np.ndarray:
    """Uplink mean SNR [dB] at the given distances from the link budget (no shadowing)."""
    pl = link.pathloss
    loss = pathloss_db(pl.model, distance_m, link.carrier_hz, h_bs_m=pl.h_bs_m, h_ut_m=pl.h_ut_m,
                       ref_loss_db=pl.ref_loss_db, ref_distance_m=pl.ref_distance_m, exponent=pl.exponent)
    noise = noise_power_dbm(link.noise_density_dbm_hz, link.bandwidth_hz, link.noise_figure_db)
    return link.tx_power_dbm + link.antenna_gain_db - loss - noise
