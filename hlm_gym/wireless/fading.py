"""Small-scale fading processes for a batch of independent links, evaluated at elapsed times.

Every process is a *pure function of elapsed time* given per-link parameters drawn at reset, so
the channel state advances with time, not with calls: evaluating at t = 0.3 s gives the same value
whether the environment got there in one step or in three. All processes have E|h|^2 = 1.

* :class:`NoFading`: h = 1.
* :class:`SumOfSinusoidsFading`: continuous Clarke/Jakes fading, Rayleigh or Rician.
  Scattered part (Zheng & Xiao, IEEE Trans. Commun. 2003, "improved" sum-of-sinusoids, with the
  arrival angle stratified per oscillator as in Sionna's TDL)::

      h_s(t) = sqrt(2/M) sum_n exp(j psi_n) cos(2 pi f_D cos(alpha_n) t + phi_n),
      alpha_n = (2 pi n - pi + theta_n) / (4 M),   psi_n, phi_n, theta_n ~ U[-pi, pi).

  The ensemble autocorrelation E[h_s(t+tau) h_s(t)^*] is exactly J0(2 pi f_D tau) for any M
  (alpha_n is marginally uniform on [0, pi/2)); E|h_s|^2 = 1. The marginal is only
  asymptotically Gaussian: Var|h_s|^2 = 1 - 1/(2M) instead of 1 (M = 16: 3 % low).
  Rician: h = sqrt(K/(K+1)) exp(j(2 pi f_D cos(theta_0) t + phi_0)) + sqrt(1/(K+1)) h_s.
* :class:`BlockFading`: h constant within blocks of length T_c, i.i.d. CN(0, 1) (+ LOS term)
  across blocks, block edges at a random per-link offset. The block gain is a counter-based hash
  of (link key, block index), so it too is a function of time alone.
* :class:`TableFading`: power gains from a pre-generated table (e.g. Sionna TDL realisations,
  :func:`sionna_tdl_power_table`), linearly interpolated at elapsed time; each link reads one
  row from a random start offset, wrapping around at the end (the table is periodic: make it
  longer than an episode).

All methods take ``t`` (elapsed seconds, shape (m,)) and ``idx`` (link indices, shape (m,), or
None for all links in order; indices may repeat, e.g. to evaluate one link at many times).
Random draws come only from the ``numpy.random.Generator`` passed to ``reset``.
"""

from __future__ import annotations

import functools
import math
import os
import io
from typing import TYPE_CHECKING, Optional

import numpy as np

from hlm_gym.paths import atomic_write_bytes
from hlm_gym.wireless.propagation import SPEED_OF_LIGHT

if TYPE_CHECKING:  # pragma: no cover
    from hlm_gym.wireless.scenarios import SionnaConfig

__all__ = [
    "FadingProcess",
    "NoFading",
    "SumOfSinusoidsFading",
    "BlockFading",
    "TableFading",
    "sionna_tdl_power_table",
    "SIONNA_INSTALL_HINT",
]

TWO_PI = 2.0 * np.pi
SIONNA_INSTALL_HINT = "pip install 'hlm-gym[sionna]'"
_U64 = np.uint64


class FadingProcess:
    """Base class: per-link small-scale fading h(t) with E|h|^2 = 1, a function of elapsed time."""

    n_links: int

    def reset(self, rng: np.random.Generator, idx: Optional[np.ndarray] = None) -> None:
        """Re-draw the parameters of links ``idx`` (all when None) from ``rng``."""
        raise NotImplementedError

    def gain(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """Complex gain h at elapsed times ``t`` for links ``idx``."""
        raise NotImplementedError

    def power(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """Power gain |h|^2 at elapsed times ``t`` for links ``idx``."""
        h = self.gain(t, idx)
        return h.real * h.real + h.imag * h.imag

    def power_grid(self, t0: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """|h|^2 at times t0[i] + offsets[k] for links idx[i]; shape (len(idx), len(offsets))."""
        tt = (t0[:, None] + offsets[None, :]).ravel()
        return self.power(tt, np.repeat(idx, len(offsets))).reshape(len(idx), len(offsets))

    def _check(self, t: np.ndarray, idx: Optional[np.ndarray]) -> int:
        m = self.n_links if idx is None else len(idx)
        if t.shape != (m,):
            raise ValueError(f"t must have shape ({m},), got {t.shape}")
        return m


class NoFading(FadingProcess):
    """No small-scale fading: h = 1 for every link at every time."""

    def __init__(self, n_links: int) -> None:
        self.n_links = int(n_links)

    def reset(self, rng: np.random.Generator, idx: Optional[np.ndarray] = None) -> None:
        """Nothing to draw."""

    def gain(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """All ones (complex)."""
        return np.ones(self._check(t, idx), dtype=complex)

    def power(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """All ones."""
        return np.ones(self._check(t, idx))

    def power_grid(self, t0: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """All ones."""
        return np.ones((len(idx), len(offsets)))


class SumOfSinusoidsFading(FadingProcess):
    """Continuous Clarke/Jakes Rayleigh/Rician fading by an M-oscillator sum of sinusoids.

    ``doppler_hz``: maximum Doppler f_D = v f_c / c; ``k_factor``: linear Rician K (0 = Rayleigh);
    ``los_aoa_rad``: angle between the LOS ray and the direction of motion (LOS Doppler
    f_D cos(los_aoa_rad)). f_D = 0 gives a frozen random realisation per link.
    """

    def __init__(self, n_links: int, doppler_hz: float, k_factor: float = 0.0, n_sinusoids: int = 16,
                 los_aoa_rad: float = math.acos(0.7)) -> None:
        if doppler_hz < 0 or k_factor < 0 or n_sinusoids < 1:
            raise ValueError("need doppler_hz >= 0, k_factor >= 0, n_sinusoids >= 1")
        n, m = int(n_links), int(n_sinusoids)
        self.n_links, self.n_sinusoids = n, m
        self.doppler_hz, self.k_factor = float(doppler_hz), float(k_factor)
        self._f_los = self.doppler_hz * math.cos(los_aoa_rad)
        self._a_los = math.sqrt(k_factor / (k_factor + 1.0))
        self._scale = math.sqrt(2.0 / m) * math.sqrt(1.0 / (k_factor + 1.0))
        self._freq = np.zeros((n, m))  # Hz
        self._phase = np.zeros((n, m))  # cycles
        self._wr = np.zeros((n, m), dtype=np.float32)
        self._wi = np.zeros((n, m), dtype=np.float32)
        self._los_phase = np.zeros(n)  # cycles
        self._x = np.empty((n, m))  # work buffers for the all-links path
        self._r = np.empty((n, m))
        self._y = np.empty((n, m), dtype=np.float32)

    def reset(self, rng: np.random.Generator, idx: Optional[np.ndarray] = None) -> None:
        """Draw arrival angles, oscillator phases and weights (and the LOS phase) for ``idx``."""
        sel = slice(None) if idx is None else idx
        k = self.n_links if idx is None else len(idx)
        m = self.n_sinusoids
        theta = rng.uniform(-np.pi, np.pi, (k, m))
        alpha = (TWO_PI * np.arange(1, m + 1) - np.pi + theta) / (4.0 * m)
        self._freq[sel] = self.doppler_hz * np.cos(alpha)
        self._phase[sel] = rng.random((k, m))
        psi = rng.uniform(-np.pi, np.pi, (k, m))
        self._wr[sel] = self._scale * np.cos(psi)
        self._wi[sel] = self._scale * np.sin(psi)
        self._los_phase[sel] = rng.random(k)

    def _iq(self, t: np.ndarray, idx: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        m = self._check(t, idx)
        if idx is None:
            f, p, wr, wi, x, r, y = self._freq, self._phase, self._wr, self._wi, self._x, self._r, self._y
        else:
            f, p, wr, wi = self._freq[idx], self._phase[idx], self._wr[idx], self._wi[idx]
            x, r = np.empty((m, self.n_sinusoids)), np.empty((m, self.n_sinusoids))
            y = np.empty((m, self.n_sinusoids), dtype=np.float32)
        # phase in cycles, reduced to [-0.5, 0.5] in float64, then a float32 cosine (fast, exact enough)
        np.multiply(f, t[:, None], out=x)
        np.add(x, p, out=x)
        np.rint(x, out=r)
        np.subtract(x, r, out=x)
        np.multiply(x, TWO_PI, out=y, casting="same_kind")
        np.cos(y, out=y)
        re = np.einsum("nm,nm->n", y, wr)  # float32
        im = np.einsum("nm,nm->n", y, wi)
        if self._a_los > 0.0:
            lp = self._los_phase if idx is None else self._los_phase[idx]
            xl = self._f_los * t + lp
            xl -= np.rint(xl)
            arg = (TWO_PI * xl).astype(np.float32)
            a = np.float32(self._a_los)
            re += a * np.cos(arg)
            im += a * np.sin(arg)
        return re, im

    def gain(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """Complex gain h(t)."""
        re, im = self._iq(t, idx)
        return re.astype(float) + 1j * im.astype(float)

    def power_grid(self, t0: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """|h|^2 on a (links, offsets) grid by broadcasting (no per-sample parameter copies)."""
        tt = t0[:, None] + offsets[None, :]  # (m, K)
        x = self._freq[idx][:, None, :] * tt[:, :, None]
        x += self._phase[idx][:, None, :]
        x -= np.rint(x)
        y = (x * TWO_PI).astype(np.float32)
        np.cos(y, out=y)
        re = np.einsum("nkm,nm->nk", y, self._wr[idx]).astype(float)
        im = np.einsum("nkm,nm->nk", y, self._wi[idx]).astype(float)
        if self._a_los > 0.0:
            xl = self._f_los * tt + self._los_phase[idx][:, None]
            xl -= np.rint(xl)
            arg = (TWO_PI * xl).astype(np.float32)
            re += self._a_los * np.cos(arg)
            im += self._a_los * np.sin(arg)
        return re * re + im * im

    def power(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """|h(t)|^2 (float64)."""
        re, im = self._iq(t, idx)
        re *= re
        im *= im
        return np.add(re, im, dtype=float)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (uint64 -> well-mixed uint64), vectorised; wraps modulo 2^64."""
    z = z + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


class BlockFading(FadingProcess):
    """Block fading: i.i.d. CN(0,1) scattered gain (+ constant LOS term) per block of ``coherence_time_s``.

    Block b of link i covers t + offset_i in [b T_c, (b+1) T_c); its gain is a deterministic hash
    of (key_i, b), so the process is a function of elapsed time alone. With the random offset,
    E[h(t+tau) h(t)^*] = K/(K+1) + max(0, 1 - tau/T_c)/(K+1).
    """

    def __init__(self, n_links: int, coherence_time_s: float, k_factor: float = 0.0) -> None:
        if not coherence_time_s > 0 or k_factor < 0:
            raise ValueError("need coherence_time_s > 0 and k_factor >= 0")
        n = int(n_links)
        self.n_links, self.coherence_time_s, self.k_factor = n, float(coherence_time_s), float(k_factor)
        self._a_los = math.sqrt(k_factor / (k_factor + 1.0))
        self._s = math.sqrt(1.0 / (k_factor + 1.0))
        self._key = np.zeros(n, dtype=np.uint64)
        self._offset = np.zeros(n)
        self._los = np.ones(n, dtype=complex)
        self._cached_block = np.full(n, -1, dtype=np.int64)  # all-links cache: block index -> gain
        self._cached_gain = np.ones(n, dtype=complex)

    def reset(self, rng: np.random.Generator, idx: Optional[np.ndarray] = None) -> None:
        """Draw the hash key, block offset and LOS phase of links ``idx``."""
        sel = slice(None) if idx is None else idx
        k = self.n_links if idx is None else len(idx)
        self._key[sel] = rng.integers(0, np.iinfo(np.uint64).max, size=k, dtype=np.uint64, endpoint=True)
        self._offset[sel] = rng.random(k) * self.coherence_time_s
        self._los[sel] = np.exp(1j * TWO_PI * rng.random(k))
        self._cached_block[sel] = -1

    def _uniforms(self, t: np.ndarray, idx: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        self._check(t, idx)
        key = self._key if idx is None else self._key[idx]
        off = self._offset if idx is None else self._offset[idx]
        block = np.floor((t + off) / self.coherence_time_s).astype(np.uint64)
        base = _splitmix64(key ^ _splitmix64(block))
        z1 = _splitmix64(base)
        z2 = _splitmix64(base ^ _U64(0xD1B54A32D192ED03))
        scale = 2.0 ** -53
        return (z1 >> _U64(11)).astype(float) * scale, (z2 >> _U64(11)).astype(float) * scale

    def _block_gain(self, t: np.ndarray, idx: Optional[np.ndarray]) -> np.ndarray:
        u1, u2 = self._uniforms(t, idx)
        h = np.sqrt(-np.log1p(-u1)) * np.exp(1j * TWO_PI * u2) * self._s
        if self._a_los > 0.0:
            h = h + self._a_los * (self._los if idx is None else self._los[idx])
        return h

    def gain(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """Complex gain of the current block (all-links calls recompute only links whose block changed)."""
        if idx is not None:
            return self._block_gain(t, idx)
        self._check(t, idx)
        block = np.floor((t + self._offset) / self.coherence_time_s).astype(np.int64)
        stale = np.flatnonzero(block != self._cached_block)
        if len(stale):
            self._cached_gain[stale] = self._block_gain(t[stale], stale)
            self._cached_block[stale] = block[stale]
        return self._cached_gain.copy()


class TableFading(FadingProcess):
    """Power gains read from a (rows, samples) table at elapsed time (linear interpolation).

    Each link reads row r_i from start offset t0_i (both drawn at reset); time wraps around
    the table length (periodic extension). Complex gains are not stored.
    """

    def __init__(self, n_links: int, table: np.ndarray, sample_period_s: float) -> None:
        table = np.ascontiguousarray(table, dtype=np.float32)
        if table.ndim != 2 or table.shape[1] < 2 or not sample_period_s > 0:
            raise ValueError("table must be (rows, samples >= 2) and sample_period_s > 0")
        n = int(n_links)
        self.n_links, self.table, self.sample_period_s = n, table, float(sample_period_s)
        self._flat = table.reshape(-1)
        self._row = np.zeros(n, dtype=np.int64)
        self._t0 = np.zeros(n)

    @property
    def duration_s(self) -> float:
        """Length of one table row in seconds."""
        return self.table.shape[1] * self.sample_period_s

    def reset(self, rng: np.random.Generator, idx: Optional[np.ndarray] = None) -> None:
        """Draw the row and start offset of links ``idx``."""
        sel = slice(None) if idx is None else idx
        k = self.n_links if idx is None else len(idx)
        self._row[sel] = rng.integers(0, self.table.shape[0], size=k)
        self._t0[sel] = rng.random(k) * self.duration_s

    def power(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """Interpolated power gain at elapsed times ``t``."""
        self._check(t, idx)
        row = self._row if idx is None else self._row[idx]
        t0 = self._t0 if idx is None else self._t0[idx]
        ns = self.table.shape[1]
        pos = np.mod(t + t0, self.duration_s) / self.sample_period_s
        i0 = np.minimum(pos.astype(np.int64), ns - 1)
        frac = pos - i0
        base = row * ns
        g0 = self._flat[base + i0]
        g1 = self._flat[base + (i0 + 1) % ns]
        return g0 + frac * (g1 - g0)

    def gain(self, t: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """Not available: the table holds power gains only."""
        raise NotImplementedError("TableFading stores power gains only; use power()")


# --------------------------------------------------------------------------------------------
# Sionna TDL table generation (optional dependency, imported lazily)
# --------------------------------------------------------------------------------------------
def _import_sionna_tdl():  # noqa: ANN202 - returns (TDL class, config)
    try:
        from sionna.phy import config
        from sionna.phy.channel.tr38901 import TDL
    except ImportError as exc:
        raise ImportError(f"the Sionna fading backend needs sionna-no-rt: {SIONNA_INSTALL_HINT} ({exc})") from exc
    return TDL, config


def sionna_sample_period_s(cfg: "SionnaConfig", doppler_hz: float) -> float:
    """Table sample period: configured, else min(1 ms, 1 / (20 f_D))."""
    if cfg.sample_period_s is not None:
        return float(cfg.sample_period_s)
    if doppler_hz <= 0:
        raise ValueError("sample_period_s is required when the Doppler shift is 0")
    return min(1e-3, 1.0 / (20.0 * doppler_hz))


@functools.lru_cache(maxsize=8)
def _generate_tdl_table(tdl_model: str, delay_spread_s: float, carrier_hz: float, speed_mps: float,
                        sample_period_s: float, n_samples: int, n_realisations: int, reduction: str,
                        subcarrier_hz: float, n_sinusoids: int, seed: int) -> np.ndarray:
    import torch

    TDL, config = _import_sionna_tdl()
    kwargs = dict(model=tdl_model, carrier_frequency=carrier_hz, num_sinusoids=n_sinusoids,
                  min_speed=speed_mps, max_speed=speed_mps, precision="single", device="cpu")
    if tdl_model in ("A", "B", "C", "D", "E"):
        kwargs["delay_spread"] = delay_spread_s
    tdl = TDL(**kwargs)
    n_paths = int(tdl.num_clusters)
    # Sionna draws all time steps of a realisation at once: bound the per-call tensor size.
    per_real = n_paths * n_samples * n_sinusoids
    chunk = max(1, int(4_000_000 // per_real))
    gen = config.torch_rng("cpu")  # Sionna's own generator: seed it for this call, restore after
    state = gen.get_state()
    out = np.empty((n_realisations, n_samples), dtype=np.float32)
    try:
        gen.manual_seed(int(seed))
        with torch.no_grad():
            for start in range(0, n_realisations, chunk):
                b = min(chunk, n_realisations - start)
                a, tau = tdl(batch_size=b, num_time_steps=n_samples, sampling_frequency=1.0 / sample_period_s)
                a = a[:, 0, 0, 0, 0]  # [b, paths, time]
                if reduction == "wideband":
                    p = (a.real ** 2 + a.imag ** 2).sum(dim=1)
                else:
                    ph = torch.exp(-2j * math.pi * subcarrier_hz * tau[:, 0, 0].to(torch.float64)).to(a.dtype)
                    h = (a * ph[:, :, None]).sum(dim=1)
                    p = h.real ** 2 + h.imag ** 2
                out[start:start + b] = p.numpy()
    finally:
        gen.set_state(state)
    out.setflags(write=False)
    return out


def sionna_tdl_power_table(cfg: "SionnaConfig", carrier_hz: float, speed_mps: float) -> tuple[np.ndarray, float]:
    """Generate (or load from ``cfg.table_file``) a (n_realisations, samples) power-gain table.

    Uses Sionna's 3GPP TR 38.901 TDL model with speed ``speed_mps`` (all realisations), reduced to
    a flat power gain per time sample (see ``SionnaConfig.reduction``). Deterministic for a
    given ``cfg.seed`` (Sionna's generator is seeded for the call and restored). Results are
    memoised per process; with ``table_file`` the table is stored as ``.npz`` (written
    atomically) and reused while its parameters match. Returns (table, sample_period_s).
    """
    doppler = speed_mps * carrier_hz / SPEED_OF_LIGHT
    ts = sionna_sample_period_s(cfg, doppler)
    n_samples = max(2, int(math.ceil(cfg.duration_s / ts)))
    params = dict(tdl_model=cfg.tdl_model, delay_spread_s=float(cfg.delay_spread_s), carrier_hz=float(carrier_hz),
                  speed_mps=float(speed_mps), sample_period_s=ts, n_samples=n_samples,
                  n_realisations=int(cfg.n_realisations), reduction=cfg.reduction,
                  subcarrier_hz=float(cfg.subcarrier_hz), n_sinusoids=int(cfg.n_sinusoids), seed=int(cfg.seed))
    path = cfg.table_file
    if path and os.path.isfile(path):
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k].item() for k in params if k in z.files}
            if stored == params:
                return z["table"].astype(np.float32), ts
    table = _generate_tdl_table(**params)
    if path:
        buf = io.BytesIO()
        np.savez(buf, table=table, **params)
        atomic_write_bytes(path, buf.getvalue())
    return table, ts
