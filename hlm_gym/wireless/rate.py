"""Achievable rate from SNR: Shannon with an SNR gap, or an MCS table with outage.

Pure, vectorised functions of SNR arrays; no channel state. :class:`RateModel` wraps a
:class:`hlm_gym.wireless.scenarios.RateConfig`:

* ``shannon``: R = B log2(1 + SNR / Gamma), Gamma = 10^(gap_db/10) (Gamma = 1 is capacity),
  optionally capped at ``max_spectral_efficiency`` and 0 below ``outage_snr_db``;
* ``mcs``: R = B * eff_i for the highest row i with SNR_dB >= min_snr_db_i; R = 0 (outage) below
  the lowest row.

``fallback_rate_bps`` is the rate exactly at the outage threshold (lowest MCS row, or Shannon at
``outage_snr_db``); the airtime model charges it when an upload has waited the maximum number of
slots and must still go out (see :meth:`hlm_gym.wireless.channel.Channel.uplink_transfer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from hlm_gym.wireless.scenarios import RateConfig, Scenario

__all__ = ["shannon_rate_bps", "mcs_spectral_efficiency", "RateModel", "effective_rates"]


def shannon_rate_bps(snr_linear: np.ndarray, bandwidth_hz: float | np.ndarray, gap_db: float = 0.0,
                     max_spectral_efficiency: Optional[float] = None) -> np.ndarray:
    """B log2(1 + SNR / Gamma) [bit/s], Gamma = 10^(gap_db/10), optionally capped."""
    se = np.log2(1.0 + np.asarray(snr_linear, dtype=float) / 10.0 ** (gap_db / 10.0))
    if max_spectral_efficiency is not None:
        se = np.minimum(se, max_spectral_efficiency)
    return bandwidth_hz * se


def mcs_spectral_efficiency(snr_db: np.ndarray, table: Sequence[tuple[float, float]]) -> np.ndarray:
    """Efficiency [bit/s/Hz] of the highest row (min_snr_db, eff) with snr_db >= min_snr_db; 0 below all."""
    thr = np.array([r[0] for r in table], dtype=float)
    eff = np.concatenate([[0.0], np.array([r[1] for r in table], dtype=float)])
    return eff[np.searchsorted(thr, np.asarray(snr_db, dtype=float), side="right")]


class RateModel:
    """Rate [bit/s] as a function of linear SNR and bandwidth, from a ``RateConfig``."""

    def __init__(self, cfg: "RateConfig") -> None:
        self.cfg = cfg
        self._gap = 10.0 ** (cfg.gap_db / 10.0)
        if cfg.model == "mcs":
            self._thr = np.array([r[0] for r in cfg.mcs_table], dtype=float)
            self._eff = np.concatenate([[0.0], [r[1] for r in cfg.mcs_table]])
            self._outage_lin = 10.0 ** (self._thr[0] / 10.0)
        else:
            self._outage_lin = None if cfg.outage_snr_db is None else 10.0 ** (cfg.outage_snr_db / 10.0)

    @property
    def outage_snr_db(self) -> Optional[float]:
        """SNR [dB] below which the rate is 0 (None: never in outage)."""
        return None if self._outage_lin is None else float(10.0 * np.log10(self._outage_lin))

    def spectral_efficiency(self, snr_linear: np.ndarray) -> np.ndarray:
        """Spectral efficiency [bit/s/Hz] at linear SNR (0 in outage)."""
        snr = np.asarray(snr_linear, dtype=float)
        if self.cfg.model == "mcs":
            with np.errstate(divide="ignore"):
                snr_db = 10.0 * np.log10(snr)
            return self._eff[np.searchsorted(self._thr, snr_db, side="right")]
        se = np.log2(1.0 + snr / self._gap)
        if self.cfg.max_spectral_efficiency is not None:
            se = np.minimum(se, self.cfg.max_spectral_efficiency)
        if self._outage_lin is not None:
            se = np.where(snr < self._outage_lin, 0.0, se)
        return se

    def rate_bps(self, snr_linear: np.ndarray, bandwidth_hz: float) -> np.ndarray:
        """Rate [bit/s] at linear SNR over ``bandwidth_hz`` (0 in outage)."""
        return bandwidth_hz * self.spectral_efficiency(snr_linear)

    def fallback_rate_bps(self, bandwidth_hz: float) -> float:
        """Rate at the outage threshold: what an upload gets after waiting the maximum time."""
        if self.cfg.model == "mcs":
            return float(bandwidth_hz * self._eff[1])
        if self._outage_lin is None:  # never in outage: only reached for SNR == 0 (no signal)
            return float(bandwidth_hz * np.log2(1.0 + 1e-3 / self._gap))
        return float(bandwidth_hz * self.spectral_efficiency(np.array([self._outage_lin]))[0])


def effective_rates(scenario: "Scenario", rate: np.ndarray, bw: float) -> tuple[np.ndarray, np.ndarray]:
    """``(wait, 1/rate)`` of the token cost account's instantaneous-rate path: an outage (rate 0) waits the
    capped ``max_wait_slots`` slots, then goes out at the fallback rate."""
    rm = RateModel(scenario.rate)
    slot_cap = scenario.rate.max_wait_slots * scenario.rate.slot_s
    outage = rate <= 0
    r_eff = np.where(outage, rm.fallback_rate_bps(bw), rate)
    return np.where(outage, slot_cap, 0.0), 1.0 / r_eff
