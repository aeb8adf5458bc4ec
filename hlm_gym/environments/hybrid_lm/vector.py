"""Native numpy batched HybridLM environments (``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``).

Same semantics as :class:`hlm_gym.environments.hybrid_lm.env.HybridLMEnv` in trace mode, for
``num_envs`` independent sub-environments stepped with array operations. Sub-environment
``i`` reset with ``seed`` uses ``seed + i`` (like ``SyncVectorEnv``), so its trajectory is
identical to a single environment's (wrapped in ``TimeLimit(max_episode_steps)``).
Autoreset mode ``NEXT_STEP``: the step after a sub-environment ends resets it (its action is
ignored, reward 0, ``terminated = truncated = False``). Episode metrics
(``tokens_per_s``, ...) are in ``info`` with the ``_key`` masks of Gymnasium's vector info.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hlm_gym.environments.hybrid_lm.config import EnvConfigError, make_config
from hlm_gym.environments.hybrid_lm.simulation import EpisodeDraw, build_simulation, sub_env_seeds
from hlm_gym.environments.hybrid_lm.observation import OBS_HIGH, OBS_LOW, OBS_NAMES
from hlm_gym.environments.registration import MAX_EPISODE_STEPS

STEP_KEYS = ("latency_s", "uplink_bits", "sent", "rejected", "beta", "error", "snr_db", "rate_bps", "energy_j")
EPISODE_KEYS = ("tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate", "tokens", "time_s")


class HybridLMVectorEnv(VectorEnv):
    """``num_envs`` HybridLM environments in numpy (trace mode only); options as the single env."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
    compressed = False

    def __init__(self, num_envs: int = 1, max_episode_steps: Optional[int] = MAX_EPISODE_STEPS,
                 render_mode: Optional[str] = None, **kwargs: Any) -> None:
        config, _ = make_config(kwargs)
        if config.mode != "trace":
            raise EnvConfigError(f"bad option mode={config.mode!r}: the vector environments replay traces only; "
                                 "use the single environment for mode='live'")
        if render_mode is not None:
            raise EnvConfigError(f"bad option render_mode={render_mode!r}: the vector environment does not render")
        if int(num_envs) < 1:
            raise EnvConfigError(f"bad option num_envs={num_envs!r}: expected a positive integer")
        self.config = config
        self.num_envs = n = int(num_envs)
        self.max_episode_steps = int(max_episode_steps) if max_episode_steps else None
        self.render_mode = None
        self.sim = sim = build_simulation(config, self.compressed)
        self.single_observation_space = spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        self.single_action_space = spaces.Discrete(1 + len(sim.topk) if self.compressed else 2)
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self._n_actions = int(self.single_action_space.n)
        t, b, c = sim.tables, sim.bank, sim.cost
        self._t_tab, self._bank, self._cost = t, b, c
        self._acc_full = t.accepted_full
        self._bits0 = np.asarray(c.bits0, dtype=np.float64)
        self._pend_bits = np.asarray(c.pend_bits, dtype=np.float64)
        self._inv_ref = 1.0 / sim.latency_ref
        self._lam = float(config.risk_weight)
        self._target = float(config.risk_target)
        self._risk_error = config.risk == "error"
        self._deferred = config.verify == "deferred"
        self._mt = float(sim.max_tokens)
        self._W = config.skip_window
        self._gens: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(n)]
        z = lambda dt=np.int64: np.zeros(n, dtype=dt)  # noqa: E731
        self._row, self._start, self._j0, self._brow = z(), z(), z(), z()
        self._pending, self._steps, self._sends, self._skips, self._errors = z(), z(), z(), z(), z()
        self._time, self._risk_sum = z(np.float64), z(np.float64)
        self._hist = z()
        self._ring_n = z()
        if self._W > 62:
            raise EnvConfigError(f"bad option skip_window={self._W}: the vector environments support at most 62")
        self._hist_mask = np.int64((1 << self._W) - 1)
        self._needs_reset = np.zeros(n, dtype=bool)
        self._arange = np.arange(n)
        self._obs = np.zeros((n, len(OBS_NAMES)), dtype=np.float32)
        self._started = False
        # flat views for fast gathers
        self._sig = t.signals
        self._n_rows = len(t.signals)
        self._n_opts = len(sim.topk)
        self._acc_flat = t.accepted.reshape(-1) if self.compressed else np.ascontiguousarray(t.accepted[:, 0])
        self._beta_flat = t.beta.reshape(-1) if self.compressed else np.ascontiguousarray(t.beta[:, 0])
        self._snr_flat, self._lograte_flat = b.snr_obs.reshape(-1), b.log_rate.reshape(-1)
        self._uprate_flat, self._upinv_flat = b.up_rate.reshape(-1), b.up_inv.reshape(-1)
        self._upwait_flat, self._dlwait_flat = b.up_wait.reshape(-1), b.dl_wait.reshape(-1)
        self._dlair_flat = b.dl_air.reshape(-1)
        self._waits_flat = (b.up_wait + b.dl_wait).reshape(-1)
        self._bits0_s, self._pend_bits_s = float(c.bits0[0]), float(c.pend_bits[0])
        self._episode_draw = EpisodeDraw.of(sim)
        self._skip_reward0 = -(c.dev_s * self._inv_ref)
        self._zeros_i = np.zeros(n, dtype=np.int64)
        G = b.points
        self._g_mask = G - 1 if G & (G - 1) == 0 else None
        self._true = np.ones(n, dtype=bool)
        self._false = np.zeros(n, dtype=bool)

    # ------------------------------------------------------------------ reset
    def _reset_envs(self, idx: np.ndarray) -> None:
        prompt, brow, j0 = self._episode_draw.draw(self._gens, idx)
        self._start[idx] = self._t_tab.starts[prompt]
        self._brow[idx] = brow
        self._j0[idx] = j0
        self._row[idx] = self._start[idx]
        for arr in (self._pending, self._steps, self._sends, self._skips, self._errors, self._ring_n):
            arr[idx] = 0
        self._time[idx] = 0.0
        self._risk_sum[idx] = 0.0
        self._hist[idx] = 0
        self._needs_reset[idx] = False

    def reset(self, *, seed: Optional[int | list] = None, options: Optional[dict] = None):
        super().reset(seed=int(seed) if isinstance(seed, (int, np.integer)) else None)
        self._gens = [seeding.np_random(s)[0] for s in sub_env_seeds(seed, self.num_envs)]
        self._reset_envs(self._arange)
        self._started = True
        self._observe(self._arange, self._row)
        return self._obs.copy(), {}

    # ------------------------------------------------------------------ observation
    def _flat_grid(self, idx) -> np.ndarray:
        """Index into the flattened (R * G) bank arrays of each env's channel now."""
        G = self._bank.points
        steps = self._j0[idx] + (self._time[idx] / self._bank.dt).astype(np.int64)
        if self._g_mask is not None:  # G a power of two: & equals % for non-negative ints
            return self._brow[idx] * G + (steps & self._g_mask)
        return self._brow[idx] * G + steps % G

    def _observe(self, idx, rows: np.ndarray) -> None:
        obs = self._obs
        f = self._flat_grid(idx)
        obs[idx, :5] = self._sig.take(rows, axis=0)
        obs[idx, 5] = self._snr_flat.take(f)
        obs[idx, 6] = self._lograte_flat.take(f)
        obs[idx, 7] = np.minimum(self._pending[idx] / self._mt, 1.0)
        obs[idx, 8] = np.minimum((rows - self._start[idx]) / self._mt, 1.0)
        obs[idx, 9] = self._ring_n[idx] / self._W

    # ------------------------------------------------------------------ step
    def _check_actions(self, actions) -> np.ndarray:
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"invalid actions: expected an integer array of shape ({self.num_envs},) with values in "
                             f"0..{self._n_actions - 1}, got shape {a.shape} dtype {a.dtype}")
        if a.min() < 0 or a.max() >= self._n_actions:
            bad = np.unique(a[(a < 0) | (a >= self._n_actions)])[:8]
            raise ValueError(f"invalid actions {bad.tolist()}: expected integers in 0..{self._n_actions - 1}")
        return a

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = self._check_actions(actions)
        n = self.num_envs
        t, c = self._t_tab, self._cost
        resetting = np.flatnonzero(self._needs_reset)
        allx = slice(None)
        # every env is stepped; the ones being reset are overwritten afterwards (rows clipped to stay valid)
        r = self._row if not len(resetting) else np.minimum(self._row, self._n_rows - 1)
        p = self._pending
        f = self._flat_grid(allx)
        if self._deferred:
            a = np.where((a == 0) & t.end.take(r), self._n_actions - 1, a)
        skip = a == 0
        send = ~skip
        if self.compressed:
            o = np.maximum(a - 1, 0)
            up_bits = self._bits0.take(o) + p * self._pend_bits.take(o)
        else:
            o = self._zeros_i
            up_bits = self._bits0_s + p * self._pend_bits_s
        up_air = up_bits * self._upinv_flat.take(f)
        srv = c.t_verify + np.where(p > 0, c.prefill_a + c.prefill_b * p, 0.0)
        waits = self._waits_flat.take(f)  # up_wait + dl_wait, precomputed (same float sum)
        dl_air = self._dlair_flat.take(f)
        lat_send = c.dev_s + ((waits + (up_air + dl_air)) + srv)
        en_send = ((c.p_tx * up_air + c.p_rx * dl_air) + c.p_dev * c.dev_s) + c.p_idle * (waits + srv)
        lat = np.where(skip, c.dev_s, lat_send)
        beta_full = t.beta_full.take(r)
        acc_full_r = self._acc_full.take(r)
        err = skip & ~acc_full_r
        risk = err.astype(np.float64) if self._risk_error else beta_full
        rewards = np.where(skip, self._skip_reward0 - self._lam * (risk - self._target), -(lat_send * self._inv_ref))
        if self.compressed:
            ro = r * self._n_opts + o
            acc_o = self._acc_flat.take(ro)
            beta_o = self._beta_flat.take(ro)
        else:  # the only option is the full distribution
            acc_o = acc_full_r
            beta_o = beta_full
        new_row = r + 1
        term = t.end.take(r)
        rejected = send & ~acc_o
        if self._deferred:
            cpos = t.next_rej[o, np.maximum(r - p, 0)]
            rw = send & (p > 0) & (cpos < r)
            if rw.any():
                cc = np.where(rw, cpos, r)
                new_row = np.where(rw, cc + 1, new_row)
                term = t.end[cc]
                rejected = rejected | rw
        self._pending = np.where(skip, p + 1, 0)
        self._skips += skip
        self._sends += send
        self._errors += err
        self._risk_sum += np.where(skip, beta_full, 0.0)
        self._time += lat
        steps = self._steps
        # skip history of the last W decisions as bits (W <= 62): the count is a popcount
        self._hist = ((self._hist << 1) | skip) & self._hist_mask
        self._ring_n = np.bitwise_count(self._hist).astype(np.int64)
        steps += 1
        truncated = (steps >= self.max_episode_steps) if self.max_episode_steps is not None else self._false
        obs_rows = np.where(term, new_row - 1, new_row)
        self._row = new_row
        self._observe(allx, obs_rows)
        info: dict[str, Any] = {}
        ended = np.flatnonzero(term)
        if len(resetting):
            term[resetting] = False
            truncated[resetting] = False
            rewards[resetting] = 0.0
            ended = np.flatnonzero(term)
            mask = ~self._needs_reset
        else:
            mask = self._true
        for key, val in (("latency_s", lat), ("uplink_bits", np.where(skip, 0.0, up_bits)), ("sent", send),
                         ("rejected", rejected), ("beta", np.where(skip, beta_full, beta_o)), ("error", err),
                         ("snr_db", self._snr_flat.take(f).astype(np.float64)), ("rate_bps", self._uprate_flat.take(f)),
                         ("energy_j", np.where(skip, c.skip_energy, en_send))):
            info[key] = val
            info["_" + key] = mask
        if len(ended):
            emask = np.zeros(n, dtype=bool)
            emask[ended] = True
            ntok = (self._row[ended] - self._start[ended]).astype(np.float64)
            tm = self._time[ended]
            st = self._steps[ended].astype(np.float64)
            sk_n = self._skips[ended]
            errs = np.zeros(len(ended)) if self._deferred else self._errors[ended].astype(np.float64)
            vals = {"tokens_per_s": np.where(tm > 0, ntok / np.where(tm > 0, tm, 1.0), 0.0),
                    "transmission_rate": self._sends[ended] / st, "skip_rate": sk_n / st,
                    "risk": np.where(sk_n > 0, self._risk_sum[ended] / np.maximum(sk_n, 1), 0.0),
                    "error_rate": np.where(ntok > 0, errs / np.maximum(ntok, 1.0), 0.0),
                    "tokens": ntok.astype(np.int64), "time_s": tm}
            for key, val in vals.items():
                full = np.zeros(n, dtype=val.dtype)
                full[ended] = val
                info[key] = full
                info["_" + key] = emask
        self._needs_reset = term | truncated
        if len(resetting):
            self._reset_envs(resetting)
            self._observe(resetting, self._row[resetting])
        return self._obs.copy(), rewards, term, truncated, info


    def autoreset_now(self, idx: np.ndarray) -> np.ndarray:
        """Reset the sub-environments ``idx`` at once (same-step autoreset, for SB3); returns their observations."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx):
            self._reset_envs(idx)
            self._observe(idx, self._row[idx])
        return self._obs[idx].copy()


class HybridLMCompressedVectorEnv(HybridLMVectorEnv):
    """Numpy batched ``HybridLMCompressed-v0`` (the action also picks the top-k size)."""

    compressed = True
