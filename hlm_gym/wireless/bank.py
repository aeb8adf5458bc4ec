"""A bank of channel realisations sampled on a time grid, as the quantities the cost account needs.

:class:`ChannelBank` holds ``R`` realisations of a scenario's channel
(:class:`hlm_gym.wireless.channel.Channel`) sampled every ``dt`` seconds at ``G`` grid points,
turned into the per-grid-point uplink/downlink waits, inverse rates and airtimes of the token
cost account (:class:`hlm_gym.wireless.cost.CostModel`, instantaneous-rate path). Built once per
(scenario, grid, seed) and shared by all environments of a process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from hlm_gym.wireless.channel import make_channel
from hlm_gym.wireless.cost import downlink_bits
from hlm_gym.wireless.rate import RateModel, effective_rates

if TYPE_CHECKING:  # pragma: no cover
    from hlm_gym.wireless.scenarios import Scenario

#: Seconds of channel a bank covers at least (before the grid-point bounds of :func:`bank_shape`).
BANK_SECONDS = 20.0
#: Grid points of all realisations together (sets the default number of realisations).
BANK_TOTAL_POINTS = 1 << 19


def bank_shape(dt: float, size: Optional[int] = None, points: Optional[int] = None) -> tuple[int, int]:
    """(realisations, grid points) of a channel bank for grid step ``dt`` (``None``: the defaults)."""
    if points is None:
        need = int(math.ceil(BANK_SECONDS / dt))
        points = min(max(1 << max(need - 1, 1).bit_length(), 4096), 65536)
    if size is None:
        size = min(max(BANK_TOTAL_POINTS // points, 8), 64)
    return int(size), int(points)


def auto_dt(scenario: "Scenario") -> float:
    """Grid step [s] for a scenario: a quarter of its coherence time in [0.5 ms, 20 ms] (20 ms when static)."""
    tc = scenario.coherence_time_s
    if not math.isfinite(tc):
        return 0.02
    return float(min(max(tc / 4.0, 5e-4), 0.02))


# ------------------------------------------------------------------------------ channel bank
@dataclass
class ChannelBank:
    """Grid samples of ``R`` channel realisations, as the quantities the cost account needs.

    Arrays are ``(R, G)``: ``snr_obs`` (uplink SNR dB, clipped, float32), ``log_rate``
    (``log10(1 + uplink rate)``, clipped, float32), ``up_rate`` (bit/s), ``up_wait``
    (outage wait charged, s), ``up_inv`` (1 / effective uplink rate, s/bit), ``dl_wait``
    and ``dl_air`` (downlink wait and airtime of the returned token, s).
    """

    dt: float
    snr_obs: np.ndarray
    log_rate: np.ndarray
    up_rate: np.ndarray
    up_wait: np.ndarray
    up_inv: np.ndarray
    dl_wait: np.ndarray
    dl_air: np.ndarray
    mean_snr_db: np.ndarray

    @property
    def size(self) -> int:
        """Number of realisations ``R``."""
        return self.snr_obs.shape[0]

    @property
    def points(self) -> int:
        """Grid points per realisation ``G``."""
        return self.snr_obs.shape[1]


_BANK_CACHE: dict[tuple, ChannelBank] = {}


def channel_bank(scenario: "Scenario", dt: float, size: int, points: int, seed: int, vocab_size: int,
                 snr_clip: tuple[float, float], log_rate_clip: tuple[float, float]) -> ChannelBank:
    """The (cached) :class:`ChannelBank` of a scenario; ``snr_obs``/``log_rate`` clipped to the given ranges."""
    key = (repr(scenario.to_dict()), float(dt), int(size), int(points), int(seed), int(vocab_size),
           tuple(snr_clip), tuple(log_rate_clip))
    bank = _BANK_CACHE.get(key)
    if bank is not None:
        return bank
    ch = make_channel(scenario, n_links=size, rng=np.random.default_rng(seed))
    times = np.tile(np.arange(points, dtype=float) * dt, size)
    idx = np.repeat(np.arange(size), points)
    up_db = ch.snr_db_at(times, idx).reshape(size, points)
    dl_db = ch.snr_db_at(times, idx, downlink=True).reshape(size, points)
    rm = RateModel(scenario.rate)
    with np.errstate(over="ignore"):
        up_rate = rm.rate_bps(10.0 ** (up_db / 10.0), scenario.link.bandwidth_hz)
        dl_rate = rm.rate_bps(10.0 ** (dl_db / 10.0), scenario.downlink_bandwidth_hz)
    up_wait, up_inv = effective_rates(scenario, up_rate, scenario.link.bandwidth_hz)
    dl_wait, dl_inv = effective_rates(scenario, dl_rate, scenario.downlink_bandwidth_hz)
    dl_bits = downlink_bits(scenario.payload, vocab_size)
    bank = ChannelBank(
        dt=float(dt),
        snr_obs=np.clip(np.nan_to_num(up_db, neginf=snr_clip[0]), *snr_clip).astype(np.float32),
        log_rate=np.clip(np.log10(1.0 + up_rate), *log_rate_clip).astype(np.float32),
        up_rate=up_rate, up_wait=up_wait, up_inv=up_inv, dl_wait=dl_wait, dl_air=dl_bits * dl_inv,
        mean_snr_db=np.asarray(ch.mean_snr_db()),
    )
    if len(_BANK_CACHE) > 16:
        _BANK_CACHE.clear()
    _BANK_CACHE[key] = bank
    return bank
