"""Time-varying wireless channel for a batch of independent device <-> base-station links.

Instantaneous uplink SNR of link i at elapsed time t (since its reset)::

    SNR_i(t) = mean_snr_i * 10^(S_i(t)/10) * |h_i(t)|^2

* ``mean_snr_i``: large scale, drawn at reset: the scenario's ``link.mean_snr_db`` (optionally
  uniform in a range), or the link budget P_tx + G - PL(d_i) - (N0 + 10 log10 B + NF) with the
  path loss of :func:`hlm_gym.wireless.propagation.pathloss_db` (log-distance, or 3GPP TR 38.901
  UMi/UMa street LOS/NLOS).
  The distance is fixed per episode (mobility moves the fading and shadowing only).
* ``S_i(t)``: log-normal shadowing [dB], N(0, sigma^2): constant per episode, or, with
  ``link.shadowing_decorrelation_m``, a sum of 8 sinusoids with Cauchy-distributed frequencies
  whose autocorrelation is exp(-v tau / d_corr) (Gudmundson's model in time).
* ``h_i(t)``: small-scale fading from :mod:`hlm_gym.wireless.fading` (none, block, Jakes sum of
  sinusoids, or a Sionna TDL table), E|h|^2 = 1.

Downlink SNR = the same with mean + ``scenario.downlink_offset_db`` and the uplink's fading
(``shared``) or an independent realisation. Everything is a function of elapsed time, so
``advance(dt)`` only adds dt to a per-link clock; ``snr_db()`` evaluates at the clock (cached until
the next ``advance``/``reset``).

API (the environment composes this with the pure cost account in :mod:`hlm_gym.wireless.cost`)::

    ch = make_channel(sc, n_links=1024, rng=np.random.default_rng(0))  # or Channel(sc, n, rng)
    ch.reset(rng, mask=None)         # re-draw all / masked links, clocks to 0
    ch.advance(dt_s)                 # scalar or (n,) elapsed seconds
    ch.snr_db(); ch.uplink_rate_bps(); ch.downlink_rate_bps()          # (n,)
    ch.snr_db_at(offsets, idx); ch.snr_db_grid(offsets)  # the future, without advancing
    w, a = ch.uplink_transfer(bits, offset_s)   # outage wait and airtime of an upload (no state change)
    cost = ch.token_cost(sent=..., pending=..., topk=...)              # full account, see below
    ch.advance(cost.latency_s)

``token_cost`` charges SLM compute first, then the upload starting ``device_compute_s`` later,
the base station's compute, then the downlink; all evaluated on the future channel without
changing it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Optional

import numpy as np

from hlm_gym.wireless.fading import (
    BlockFading,
    FadingProcess,
    NoFading,
    SumOfSinusoidsFading,
    TableFading,
    sionna_tdl_power_table,
)
from hlm_gym.wireless.cost import TokenCost, compute_times, payload_bits, token_cost
from hlm_gym.wireless.propagation import mean_snr_db_from_budget
from hlm_gym.wireless.rate import RateModel

if TYPE_CHECKING:  # pragma: no cover
    from hlm_gym.wireless.scenarios import Scenario

__all__ = [
    "Channel",
    "Transfer",
    "Shadowing",
    "make_channel",
    "make_fading",
]


class Shadowing:
    """Log-normal shadowing [dB] per link: constant per episode, or time-correlated.

    With ``decorrelation_m`` and ``speed_mps`` > 0: S(t) = sigma sqrt(2/M) sum_m cos(2 pi (f_m t + p_m)),
    f_m ~ |Cauchy(0, v / (2 pi d_corr))|, whose ensemble autocorrelation is
    sigma^2 exp(-v |tau| / d_corr) (the characteristic function of the Cauchy law). It is
    evaluated on a time grid of ``grid_s`` = d_corr / (100 v) and held in between (it moves by
    ~1 % of its decorrelation per grid step), so it is still a function of elapsed time alone.
    """

    def __init__(self, n_links: int, std_db: float, decorrelation_m: Optional[float] = None,
                 speed_mps: float = 0.0, n_sinusoids: int = 8) -> None:
        n = int(n_links)
        self.n_links, self.std_db = n, float(std_db)
        self.correlated = bool(decorrelation_m) and speed_mps > 0 and std_db > 0
        self._gamma = speed_mps / (2.0 * math.pi * decorrelation_m) if self.correlated else 0.0
        self.grid_s = decorrelation_m / (100.0 * speed_mps) if self.correlated else math.inf
        self._m = int(n_sinusoids)
        self._value = np.zeros(n)
        if self.correlated:
            self._freq = np.zeros((n, self._m))
            self._phase = np.zeros((n, self._m))

    def reset(self, rng: np.random.Generator, idx: Optional[np.ndarray] = None) -> None:
        """Draw shadowing (or its oscillators) for links ``idx``."""
        if self.std_db == 0:
            return
        sel = slice(None) if idx is None else idx
        k = self.n_links if idx is None else len(idx)
        if self.correlated:
            self._freq[sel] = np.abs(rng.standard_cauchy((k, self._m))) * self._gamma
            self._phase[sel] = rng.random((k, self._m))
        else:
            self._value[sel] = rng.normal(0.0, self.std_db, k)

    def grid_index(self, t: np.ndarray) -> np.ndarray:
        """Index of the time-grid cell holding each time (all zeros when constant)."""
        if not self.correlated:
            return np.zeros(t.shape, dtype=np.int64)
        return np.floor(t / self.grid_s).astype(np.int64)

    def db(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """Shadowing [dB] at elapsed times ``t`` for links ``idx``."""
        if not self.correlated:
            return self._value if idx is None else self._value[idx]
        f = self._freq if idx is None else self._freq[idx]
        p = self._phase if idx is None else self._phase[idx]
        tq = self.grid_index(t) * self.grid_s
        x = f * tq[:, None] + p
        x -= np.rint(x)
        c = np.cos((2.0 * np.pi) * x.astype(np.float32)).sum(axis=1, dtype=np.float64)
        return self.std_db * math.sqrt(2.0 / self._m) * c


def make_fading(scenario: "Scenario", n_links: int) -> FadingProcess:
    """The small-scale fading process a scenario asks for (parameters drawn later, at reset)."""
    fd = scenario.fading
    k = fd.k_factor if fd.distribution == "rician" else 0.0
    if fd.model == "none":
        return NoFading(n_links)
    if fd.model == "jakes":
        return SumOfSinusoidsFading(n_links, scenario.doppler_hz, k, fd.n_sinusoids, math.radians(fd.los_aoa_deg))
    if fd.model == "block":
        return BlockFading(n_links, scenario.coherence_time_s, k)
    if fd.model == "sionna":
        table, ts = sionna_tdl_power_table(fd.sionna, scenario.link.carrier_hz, scenario.speed_mps)
        return TableFading(n_links, table, ts)
    raise ValueError(f"unknown fading model {fd.model!r}")


def make_channel(scenario: "Scenario", n_links: int, rng: np.random.Generator) -> "Channel":
    """A :class:`Channel` of ``n_links`` independent links of ``scenario``, reset with ``rng``."""
    return Channel(scenario, n_links, rng)


class Transfer(NamedTuple):
    """Outcome of a transfer: ``wait_s`` spent in outage before/while sending, ``airtime_s`` sending."""

    wait_s: np.ndarray
    airtime_s: np.ndarray


class Channel:
    """Vectorised time-varying uplink/downlink channel for ``n_links`` independent links.

    All randomness comes from the ``numpy.random.Generator`` given at construction / ``reset``.
    """

    def __init__(self, scenario: "Scenario", n_links: int, rng: np.random.Generator) -> None:
        if int(n_links) < 1:
            raise ValueError("n_links must be >= 1")
        self.scenario = scenario
        self.n_links = n = int(n_links)
        self.rate_model = RateModel(scenario.rate)
        self._up_bw = scenario.link.bandwidth_hz
        self._dl_bw = scenario.downlink_bandwidth_hz
        self._dl_offset_db = scenario.downlink_offset_db
        self._up_fading = make_fading(scenario, n)
        self._dl_fading = self._up_fading if scenario.downlink.fading == "shared" else make_fading(scenario, n)
        self._shadow = Shadowing(n, scenario.shadowing_std_db, scenario.link.shadowing_decorrelation_m,
                                 scenario.speed_mps)
        self._mean_snr_db = np.zeros(n)
        self._base_lin = np.ones(n)
        self._grid = np.zeros(n, dtype=np.int64)
        self._dl_gain = 10.0 ** (self._dl_offset_db / 10.0)
        self._t = np.zeros(n)
        self._rng = rng
        self._cache: dict[str, np.ndarray] = {}
        self.reset(rng)

    # ---------------------------------------------------------------- state
    def reset(self, rng: Optional[np.random.Generator] = None, mask: Optional[np.ndarray] = None) -> None:
        """Re-draw large-scale and fading parameters of all links (or ``mask``ed ones); clocks to 0.

        ``rng`` defaults to the generator given at construction. Links outside ``mask`` are untouched.
        """
        if rng is not None:
            self._rng = rng
        rng = self._rng
        if mask is None:
            idx = None
            k = self.n_links
        else:
            mask = np.asarray(mask)
            idx = np.flatnonzero(mask) if mask.dtype == bool else np.asarray(mask, dtype=np.int64)
            k = len(idx)
            if k == 0:
                return
        sel = slice(None) if idx is None else idx
        lk = self.scenario.link
        if lk.mean_snr_db is not None:
            hi = lk.mean_snr_db if lk.mean_snr_db_max is None else lk.mean_snr_db_max
            self._mean_snr_db[sel] = rng.uniform(lk.mean_snr_db, hi, k) if hi > lk.mean_snr_db else lk.mean_snr_db
        else:
            if lk.distance_max_m is not None and lk.distance_max_m > lk.distance_m:
                d = np.sqrt(rng.uniform(lk.distance_m ** 2, lk.distance_max_m ** 2, k))  # uniform over the annulus
            else:
                d = np.full(k, lk.distance_m)
            self._mean_snr_db[sel] = mean_snr_db_from_budget(lk, d)
        self._shadow.reset(rng, idx)
        # large scale in linear form at the current shadowing grid cell (cell -1: to be computed)
        self._grid[sel] = -1
        if not self._shadow.correlated:
            self._base_lin[sel] = 10.0 ** ((self._mean_snr_db[sel] + self._shadow.db(np.zeros(k), idx)) / 10.0)
            self._grid[sel] = 0
        self._up_fading.reset(rng, idx)
        if self._dl_fading is not self._up_fading:
            self._dl_fading.reset(rng, idx)
        self._t[sel] = 0.0
        self._cache.clear()

    def advance(self, dt_s: "float | np.ndarray") -> None:
        """Move every link's clock on by ``dt_s`` seconds (scalar or shape (n,), >= 0)."""
        dt = np.asarray(dt_s, dtype=float)
        if dt.ndim == 0:
            if not dt >= 0:
                raise ValueError(f"dt_s must be >= 0, got {float(dt)}")
            self._t += float(dt)
        else:
            if dt.shape != (self.n_links,):
                raise ValueError(f"dt_s must be a scalar or shape ({self.n_links},), got {dt.shape}")
            if not dt.min() >= 0:
                raise ValueError("dt_s must be >= 0")
            self._t += dt
        self._cache.clear()

    @property
    def time_s(self) -> np.ndarray:
        """Elapsed time of each link since its last reset [s] (a copy)."""
        return self._t.copy()

    # ---------------------------------------------------------------- evaluation at any time
    def _base(self, t: np.ndarray, idx: Optional[np.ndarray]) -> np.ndarray:
        """Large-scale SNR (linear, incl. shadowing) at times ``t``; cached per shadowing grid cell."""
        if not self._shadow.correlated:
            return self._base_lin if idx is None else self._base_lin[idx]
        if idx is None:
            g = self._shadow.grid_index(t)
            stale = np.flatnonzero(g != self._grid)
            if len(stale):
                self._base_lin[stale] = 10.0 ** ((self._mean_snr_db[stale] + self._shadow.db(t[stale], stale)) / 10.0)
                self._grid[stale] = g[stale]
            return self._base_lin
        return 10.0 ** ((self._mean_snr_db[idx] + self._shadow.db(t, idx)) / 10.0)

    def _snr_lin(self, t: np.ndarray, idx: Optional[np.ndarray], downlink: bool) -> np.ndarray:
        base = self._base(t, idx)
        if downlink:
            return (base * self._dl_gain) * self._dl_fading.power(t, idx)
        return base * self._up_fading.power(t, idx)

    _EVAL_CHUNK = 1 << 16  # links x times evaluated per vectorised call (bounds temporary memory)

    def _snr_lin_chunked(self, t: np.ndarray, idx: np.ndarray, downlink: bool) -> np.ndarray:
        if len(idx) <= self._EVAL_CHUNK:
            return self._snr_lin(t, idx, downlink)
        out = np.empty(len(idx))
        for a in range(0, len(idx), self._EVAL_CHUNK):
            b = a + self._EVAL_CHUNK
            out[a:b] = self._snr_lin(t[a:b], idx[a:b], downlink)
        return out

    def snr_db_at(self, offset_s: "float | np.ndarray" = 0.0, idx: Optional[np.ndarray] = None,
                  downlink: bool = False) -> np.ndarray:
        """SNR [dB] at clock + ``offset_s`` (for links ``idx``, which may repeat) without advancing.

        ``offset_s``: scalar or one offset per entry of ``idx`` (per link when ``idx`` is None).
        Large requests are evaluated in chunks.
        """
        off = np.asarray(offset_s, dtype=float)
        if idx is None:
            if not np.any(off):
                with np.errstate(divide="ignore"):
                    return 10.0 * np.log10(self._snr_lin(self._t, None, downlink))
            idx = np.arange(self.n_links)  # evaluation away from the clock: bypass the cache
        idx = np.asarray(idx, dtype=np.int64)
        t = np.broadcast_to(self._t[idx] + off, idx.shape).astype(float)
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(self._snr_lin_chunked(t, idx, downlink))

    def snr_db_grid(self, offsets_s: np.ndarray, idx: Optional[np.ndarray] = None,
                    downlink: bool = False) -> np.ndarray:
        """SNR [dB] of links ``idx`` (all when None) at clock + each of ``offsets_s``: shape (m, K).

        Exact at every point (shadowing included); evaluated in chunks; does not advance.
        """
        offs = np.asarray(offsets_s, dtype=float).reshape(-1)
        links = np.arange(self.n_links) if idx is None else np.asarray(idx, dtype=np.int64)
        tt = (self._t[links][:, None] + offs[None, :]).reshape(-1)
        ii = np.repeat(links, len(offs))
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(self._snr_lin_chunked(tt, ii, downlink)).reshape(len(links), len(offs))

    def trace_db(self, times_s: np.ndarray, link: int = 0, downlink: bool = False) -> np.ndarray:
        """SNR [dB] of one link at the given elapsed times (since its reset), without advancing."""
        times = np.asarray(times_s, dtype=float).reshape(-1)
        idx = np.full(times.shape, int(link), dtype=np.int64)
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(self._snr_lin_chunked(times, idx, downlink))

    # ---------------------------------------------------------------- evaluation now (cached)
    def _now(self, key: str) -> np.ndarray:
        v = self._cache.get(key)
        if v is None:
            if key == "up":
                v = self._snr_lin(self._t, None, False)
            elif key == "dl":
                v = self._snr_lin(self._t, None, True)
            elif key == "up_rate":
                v = self.rate_model.rate_bps(self._now("up"), self._up_bw)
            elif key == "dl_rate":
                v = self.rate_model.rate_bps(self._now("dl"), self._dl_bw)
            else:  # pragma: no cover
                raise KeyError(key)
            self._cache[key] = v
        return v

    def mean_snr_db(self) -> np.ndarray:
        """Large-scale uplink mean SNR [dB] now (path loss / configured mean + shadowing)."""
        return 10.0 * np.log10(self._base(self._t, None))

    def fading_gain(self) -> np.ndarray:
        """Complex small-scale uplink gain h now (not available for the table backend)."""
        return self._up_fading.gain(self._t)

    def fading_power(self) -> np.ndarray:
        """Small-scale uplink power gain |h|^2 now."""
        return self._up_fading.power(self._t)

    def snr_linear(self) -> np.ndarray:
        """Instantaneous uplink SNR (linear), shape (n,)."""
        return self._now("up").copy()

    def snr_db(self) -> np.ndarray:
        """Instantaneous uplink SNR [dB], shape (n,)."""
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(self._now("up"))

    def downlink_snr_db(self) -> np.ndarray:
        """Instantaneous downlink SNR [dB], shape (n,)."""
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(self._now("dl"))

    def uplink_rate_bps(self) -> np.ndarray:
        """Instantaneous uplink rate [bit/s] (0 in outage), shape (n,)."""
        return self._now("up_rate").copy()

    def downlink_rate_bps(self) -> np.ndarray:
        """Instantaneous downlink rate [bit/s] (0 in outage), shape (n,)."""
        return self._now("dl_rate").copy()

    # ---------------------------------------------------------------- transfers
    def uplink_transfer(self, bits: np.ndarray, offset_s: "float | np.ndarray" = 0.0) -> Transfer:
        """Outage wait and airtime of uploading ``bits`` (n,) starting at clock + ``offset_s``.

        Does not change the channel. Model ``rate.airtime``:

        * ``start``: if the rate at the start is 0 (outage), wait in slots of ``rate.slot_s``
          until it is not (at most ``rate.max_wait_slots``, then send at the outage-threshold
          rate); airtime = bits / rate when transmission starts.
        * ``integrate``: per slot, deliver rate(t_k) * slot bits (0 in outage: those slots are
          ``wait_s``) until all bits are through; outage slots beyond ``max_wait_slots`` and
          slots beyond ``max_integration_steps`` are settled at the outage-threshold rate.

        During a transfer the large-scale SNR (path loss + shadowing) is held at its value when
        the transfer starts; the small-scale fading is re-evaluated at every slot.
        """
        return self._transfer(bits, offset_s, downlink=False)

    def downlink_transfer(self, bits: np.ndarray, offset_s: "float | np.ndarray" = 0.0) -> Transfer:
        """As :meth:`uplink_transfer`, for the downlink."""
        return self._transfer(bits, offset_s, downlink=True)

    def _rate_grid(self, t0: np.ndarray, offsets: np.ndarray, idx: np.ndarray, downlink: bool) -> np.ndarray:
        """Rates at t0[i] + offsets[k] for links idx[i], shape (m, K); the large-scale SNR is held
        at its value at t0 (shadowing moves over metres, a transfer over milliseconds)."""
        base = self._base(t0, idx)
        fading = self._dl_fading if downlink else self._up_fading
        snr = (base * (self._dl_gain if downlink else 1.0))[:, None] * fading.power_grid(t0, offsets, idx)
        return self.rate_model.rate_bps(snr, self._dl_bw if downlink else self._up_bw)

    def _chunk_cap(self, m: int) -> int:
        """Most slots per vectorised chunk for m links (bounds temporary memory to ~2M elements)."""
        width = getattr(self._up_fading, "n_sinusoids", 1)
        return max(4, int(2_000_000 // max(1, m * width)))

    def _transfer(self, bits: np.ndarray, offset_s: "float | np.ndarray", downlink: bool) -> Transfer:
        n = self.n_links
        bits = np.broadcast_to(np.asarray(bits, dtype=float), (n,))
        off = np.broadcast_to(np.asarray(offset_s, dtype=float), (n,))
        wait = np.zeros(n)
        air = np.zeros(n)
        idx = np.flatnonzero(bits > 0)
        if len(idx) == 0:
            return Transfer(wait, air)
        cfg = self.rate_model.cfg
        slot = cfg.slot_s
        fallback = self.rate_model.fallback_rate_bps(self._dl_bw if downlink else self._up_bw)
        t0 = self._t[idx] + off[idx]
        if cfg.airtime == "start":
            rate = self._rate_grid(t0, np.zeros(1), idx, downlink)[:, 0]
            w = np.zeros(len(idx))
            todo = np.flatnonzero(rate <= 0)
            k_done = 0
            chunk = 16
            while len(todo) and k_done < cfg.max_wait_slots:
                chunk = min(chunk, self._chunk_cap(len(todo)))
                ks = np.arange(k_done + 1, min(k_done + chunk, cfg.max_wait_slots) + 1)
                r = self._rate_grid(t0[todo], ks * slot, idx[todo], downlink)
                ok = r > 0
                hit = ok.any(axis=1)
                first = ok.argmax(axis=1)
                got = todo[hit]
                rate[got] = r[hit, first[hit]]
                w[got] = ks[first[hit]] * slot
                todo = todo[~hit]
                k_done = int(ks[-1])
                chunk = min(chunk * 2, 1024)
            if len(todo):
                w[todo] = cfg.max_wait_slots * slot
                rate[todo] = fallback
            wait[idx] = w
            air[idx] = bits[idx] / rate
            return Transfer(wait, air)
        # integrate: piecewise-constant rate per slot
        remaining = bits[idx].copy()
        w = np.zeros(len(idx))
        a = np.zeros(len(idx))
        todo = np.arange(len(idx))
        cap = cfg.max_wait_slots
        k_done = 0
        # chunk length from the expected number of slots (rate at the start, then the running average)
        avg_rate = np.maximum(self._rate_grid(t0, np.zeros(1), idx, downlink)[:, 0], fallback)
        while len(todo) and k_done < cfg.max_integration_steps:
            need = remaining[todo] / (avg_rate[todo] * slot)
            chunk = int(np.clip(np.ceil(1.3 * np.median(need)) + 1, 4, self._chunk_cap(len(todo))))
            ks = np.arange(k_done, min(k_done + chunk, cfg.max_integration_steps))
            r = self._rate_grid(t0[todo], ks * slot, idx[todo], downlink)
            outage = r <= 0
            # outage slots beyond the wait cap are served at the fallback rate instead
            waited = np.rint(w[todo] / slot)[:, None] + np.cumsum(outage, axis=1)
            r = np.where(outage & (waited > cap), fallback, r)
            outage = r <= 0
            n_out = np.cumsum(outage, axis=1)
            delivered = np.cumsum(r * slot, axis=1)
            rem = remaining[todo]
            done = delivered >= rem[:, None]
            fin = done.any(axis=1)
            rows = np.arange(len(todo))
            j = done.argmax(axis=1)
            # finished links: slots before j are whole (sending or waiting), slot j partly used
            before = np.where(j > 0, delivered[rows, np.maximum(j - 1, 0)], 0.0)
            out_before = n_out[rows, j] - outage[rows, j]
            rj = np.where(fin, r[rows, j], 1.0)
            w_fin = out_before * slot
            a_fin = (j - out_before) * slot + (rem - before) / rj
            # unfinished links: every slot of the chunk is used
            w_run = n_out[:, -1] * slot
            a_run = (len(ks) - n_out[:, -1]) * slot
            w[todo] += np.where(fin, w_fin, w_run)
            a[todo] += np.where(fin, a_fin, a_run)
            remaining[todo] = np.where(fin, 0.0, rem - delivered[:, -1])
            avg_rate[todo] = np.maximum(delivered[:, -1] / (len(ks) * slot), fallback)
            todo = todo[~fin]
            k_done = int(ks[-1]) + 1
        if len(todo):  # step cap reached: the rest at the fallback rate
            a[todo] += remaining[todo] / fallback
        wait[idx] = w
        air[idx] = a
        return Transfer(wait, air)

    # ---------------------------------------------------------------- composed account
    def token_cost(self, *, sent: np.ndarray, pending: "np.ndarray | int" = 0,
                   topk: "np.ndarray | int | None" = None, vocab_size: Optional[int] = None,
                   uncertainty_samples: "np.ndarray | int | None" = None) -> TokenCost:
        """Full per-token account on this channel, evaluated on its future without advancing it.

        Order of events per link: SLM (+ uncertainty) compute on the device; upload starting then
        (:meth:`uplink_transfer`); base-station verification + catch-up; downlink. Then call
        ``advance(cost.latency_s)``.
        """
        sc = self.scenario
        up_bits, dl_bits = payload_bits(sc.payload, sent=sent, pending=pending, topk=topk,
                                        vocab_size=vocab_size, n=self.n_links)
        dev_s, srv_s = compute_times(sc.compute, sent=sent, pending=pending,
                                     uncertainty_samples=uncertainty_samples, n=self.n_links)
        up = self.uplink_transfer(up_bits, dev_s)
        dl = self.downlink_transfer(dl_bits, dev_s + up.wait_s + up.airtime_s + srv_s)
        return token_cost(sc, sent=sent, pending=pending, topk=topk, vocab_size=vocab_size,
                          uncertainty_samples=uncertainty_samples, up_wait_s=up.wait_s,
                          up_airtime_s=up.airtime_s, down_wait_s=dl.wait_s, down_airtime_s=dl.airtime_s)
