"""Torch batched HybridLM environments: the numpy vector env's semantics on a GPU when there is one.

    from hlm_gym.environments.hybrid_lm.torch_vector import HybridLMTorchVectorEnv
    env = HybridLMTorchVectorEnv(num_envs=65536, device="cuda", scenario="vehicular")
    obs, info = env.reset(seed=0)                       # obs: (n, 10) float32 tensor on the device
    obs, reward, terminated, truncated, info = env.step(actions)   # actions: (n,) integer tensor

Same options, seeding (sub-env ``i`` uses ``seed + i``), autoreset mode (``NEXT_STEP``) and
float64 arithmetic as :class:`hlm_gym.environments.hybrid_lm.vector.HybridLMVectorEnv`, so on the CPU
the trajectories are identical to the numpy implementation. Episode draws (prompt, channel
realisation, start time) use per-env numpy generators on the host; everything else stays on
the device. ``device=None`` picks CUDA when available.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hlm_gym.environments.hybrid_lm.config import EnvConfigError, make_config
from hlm_gym.environments.hybrid_lm.simulation import EpisodeDraw, build_simulation, sub_env_seeds
from hlm_gym.environments.hybrid_lm.observation import OBS_HIGH, OBS_LOW, OBS_NAMES
from hlm_gym.environments.registration import MAX_EPISODE_STEPS

F64, I64 = torch.float64, torch.int64


class HybridLMTorchVectorEnv(VectorEnv):
    """``num_envs`` HybridLM environments as torch tensors (trace mode)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, device: Optional[str | torch.device] = None, compressed: bool = False,
                 max_episode_steps: Optional[int] = MAX_EPISODE_STEPS, **kwargs: Any) -> None:
        config, _ = make_config(kwargs)
        if config.mode != "trace":
            raise EnvConfigError(f"bad option mode={config.mode!r}: the torch vector environment replays traces only")
        if int(num_envs) < 1:
            raise EnvConfigError(f"bad option num_envs={num_envs!r}: expected a positive integer")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.compressed = bool(compressed)
        self.config = config
        self.num_envs = n = int(num_envs)
        self.max_episode_steps = int(max_episode_steps) if max_episode_steps else None
        self.sim = sim = build_simulation(config, self.compressed)
        self.single_observation_space = spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        self.single_action_space = spaces.Discrete(1 + len(sim.topk) if self.compressed else 2)
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self._n_actions = int(self.single_action_space.n)
        t, b, c = sim.tables, sim.bank, sim.cost
        dev = self.device
        T = lambda x, dt=None: torch.as_tensor(np.ascontiguousarray(x), device=dev, dtype=dt)  # noqa: E731
        self._c = c
        self._sig = T(t.signals)
        self._n_rows = len(t.signals)
        self._n_opts = len(sim.topk)
        self._end = T(t.end)
        self._beta_full = T(t.beta_full, F64)
        self._acc_full = T(t.accepted_full)
        self._acc_flat = T(t.accepted.reshape(-1))
        self._beta_flat = T(t.beta.reshape(-1), F64)
        self._next_rej = T(t.next_rej, I64)
        self._starts_np = t.starts
        self._snr = T(b.snr_obs.reshape(-1))
        self._lograte = T(b.log_rate.reshape(-1))
        self._uprate = T(b.up_rate.reshape(-1), F64)
        self._upinv = T(b.up_inv.reshape(-1), F64)
        self._upwait = T(b.up_wait.reshape(-1), F64)
        self._dlwait = T(b.dl_wait.reshape(-1), F64)
        self._dlair = T(b.dl_air.reshape(-1), F64)
        self._G, self._dt = b.points, b.dt
        self._episode_draw = EpisodeDraw.of(sim)
        self._bits0 = T(np.asarray(c.bits0), F64)
        self._pend_bits = T(np.asarray(c.pend_bits), F64)
        self._inv_ref = 1.0 / sim.latency_ref
        self._skip_reward0 = -(c.dev_s * self._inv_ref)
        self._lam = float(config.risk_weight)
        self._target = float(config.risk_target)
        self._risk_error = config.risk == "error"
        self._deferred = config.verify == "deferred"
        self._mt = float(sim.max_tokens)
        self._W = config.skip_window
        z = lambda dt=I64: torch.zeros(n, dtype=dt, device=dev)  # noqa: E731
        self._row, self._start, self._j0, self._brow = z(), z(), z(), z()
        self._pending, self._steps, self._sends, self._skips, self._errors = z(), z(), z(), z(), z()
        self._time, self._risk_sum = z(F64), z(F64)
        self._ring = torch.zeros((n, self._W), dtype=I64, device=dev)
        self._ring_n = z()
        self._needs_reset = torch.zeros(n, dtype=torch.bool, device=dev)
        self._arange = torch.arange(n, device=dev)
        self._obs = torch.zeros((n, len(OBS_NAMES)), dtype=torch.float32, device=dev)
        self._gens = [seeding.np_random(None)[0] for _ in range(n)]
        self._started = False

    # ------------------------------------------------------------------ reset
    def _reset_envs(self, idx: torch.Tensor) -> None:
        prompt, brow, j0 = self._episode_draw.draw(self._gens, idx.cpu().numpy())
        dev = self.device
        self._start[idx] = torch.as_tensor(self._starts_np[prompt], device=dev)
        self._brow[idx] = torch.as_tensor(brow, device=dev)
        self._j0[idx] = torch.as_tensor(j0, device=dev)
        self._row[idx] = self._start[idx]
        for arr in (self._pending, self._steps, self._sends, self._skips, self._errors, self._ring_n):
            arr[idx] = 0
        self._time[idx] = 0.0
        self._risk_sum[idx] = 0.0
        self._ring[idx] = 0
        self._needs_reset[idx] = False

    def reset(self, *, seed: Optional[int | list] = None, options: Optional[dict] = None):
        super().reset(seed=int(seed) if isinstance(seed, (int, np.integer)) else None)
        self._gens = [seeding.np_random(s)[0] for s in sub_env_seeds(seed, self.num_envs)]
        self._reset_envs(self._arange)
        self._started = True
        self._observe(self._arange, self._row)
        return self._obs.clone(), {}

    # ------------------------------------------------------------------ observation
    def _flat_grid(self, idx) -> torch.Tensor:
        steps = torch.div(self._time[idx], self._dt).to(I64)
        return self._brow[idx] * self._G + (self._j0[idx] + steps) % self._G

    def _observe(self, idx, rows: torch.Tensor) -> None:
        obs = self._obs
        f = self._flat_grid(idx)
        obs[idx, :5] = self._sig[rows]
        obs[idx, 5] = self._snr[f]
        obs[idx, 6] = self._lograte[f]
        obs[idx, 7] = torch.clamp_max(self._pending[idx].to(F64) / self._mt, 1.0).to(torch.float32)
        obs[idx, 8] = torch.clamp_max((rows - self._start[idx]).to(F64) / self._mt, 1.0).to(torch.float32)
        obs[idx, 9] = (self._ring_n[idx].to(F64) / self._W).to(torch.float32)

    # ------------------------------------------------------------------ step
    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = torch.as_tensor(actions, device=self.device)
        if a.shape != (self.num_envs,) or a.dtype.is_floating_point or a.dtype == torch.bool:
            raise ValueError(f"invalid actions: expected an integer tensor of shape ({self.num_envs},) with values in "
                             f"0..{self._n_actions - 1}, got shape {tuple(a.shape)} dtype {a.dtype}")
        a = a.to(I64)
        if bool(((a < 0) | (a >= self._n_actions)).any()):
            raise ValueError(f"invalid actions: expected integers in 0..{self._n_actions - 1}")
        c = self._c
        resetting = torch.nonzero(self._needs_reset).reshape(-1)
        any_reset = len(resetting) > 0
        r = torch.clamp_max(self._row, self._n_rows - 1) if any_reset else self._row
        p = self._pending
        pf = p.to(F64)
        f = self._flat_grid(slice(None))
        if self._deferred:
            a = torch.where((a == 0) & self._end[r], self._n_actions - 1, a)
        skip = a == 0
        send = ~skip
        o = torch.clamp_min(a - 1, 0) if self.compressed else torch.zeros_like(a)
        up_bits = self._bits0[o] + pf * self._pend_bits[o]
        up_air = up_bits * self._upinv[f]
        srv = c.t_verify + torch.where(p > 0, c.prefill_a + c.prefill_b * pf, torch.zeros_like(pf))
        waits = self._upwait[f] + self._dlwait[f]
        dl_air = self._dlair[f]
        lat_send = c.dev_s + ((waits + (up_air + dl_air)) + srv)
        en_send = ((c.p_tx * up_air + c.p_rx * dl_air) + c.p_dev * c.dev_s) + c.p_idle * (waits + srv)
        lat = torch.where(skip, torch.full_like(lat_send, c.dev_s), lat_send)
        beta_full = self._beta_full[r]
        err = skip & ~self._acc_full[r]
        risk = err.to(F64) if self._risk_error else beta_full
        rewards = torch.where(skip, self._skip_reward0 - self._lam * (risk - self._target), -(lat_send * self._inv_ref))
        ro = r * self._n_opts + o if self.compressed else r
        acc_o = self._acc_flat[ro]
        beta_o = self._beta_flat[ro]
        new_row = r + 1
        term = self._end[r]
        rejected = send & ~acc_o
        if self._deferred:
            cpos = self._next_rej[o, torch.clamp_min(r - p, 0)]
            rw = send & (p > 0) & (cpos < r)
            cc = torch.where(rw, cpos, r)
            new_row = torch.where(rw, cc + 1, new_row)
            term = self._end[cc]
            rejected = rejected | rw
        self._pending = torch.where(skip, p + 1, torch.zeros_like(p))
        self._skips += skip
        self._sends += send
        self._errors += err
        self._risk_sum += torch.where(skip, beta_full, torch.zeros_like(beta_full))
        self._time += lat
        ri = self._steps % self._W
        sk = skip.to(I64)
        self._ring_n += sk - self._ring[self._arange, ri]
        self._ring[self._arange, ri] = sk
        self._steps += 1
        if self.max_episode_steps is not None:
            truncated = self._steps >= self.max_episode_steps
        else:
            truncated = torch.zeros_like(term)
        obs_rows = torch.where(term, new_row - 1, new_row)
        self._row = new_row
        self._observe(slice(None), obs_rows)
        if any_reset:
            term = term.clone()
            term[resetting] = False
            truncated[resetting] = False
            rewards[resetting] = 0.0
            mask = ~self._needs_reset
        else:
            mask = torch.ones_like(term)
        info: dict[str, Any] = {}
        for key, val in (("latency_s", lat), ("uplink_bits", torch.where(skip, torch.zeros_like(up_bits), up_bits)),
                         ("sent", send), ("rejected", rejected), ("beta", torch.where(skip, beta_full, beta_o)),
                         ("error", err), ("snr_db", self._snr[f].to(F64)), ("rate_bps", self._uprate[f]),
                         ("energy_j", torch.where(skip, torch.full_like(en_send, c.skip_energy), en_send))):
            info[key] = val
            info["_" + key] = mask
        if bool(term.any()):
            ntok = (self._row - self._start).to(F64)
            st = self._steps.to(F64)
            sk_n = self._skips.to(F64)
            errs = torch.zeros_like(ntok) if self._deferred else self._errors.to(F64)
            tm = self._time
            zero = torch.zeros_like(tm)
            vals = {"tokens_per_s": torch.where(tm > 0, ntok / torch.where(tm > 0, tm, torch.ones_like(tm)), zero),
                    "transmission_rate": self._sends.to(F64) / st, "skip_rate": sk_n / st,
                    "risk": torch.where(sk_n > 0, self._risk_sum / torch.clamp_min(sk_n, 1.0), zero),
                    "error_rate": torch.where(ntok > 0, errs / torch.clamp_min(ntok, 1.0), zero),
                    "tokens": ntok.to(I64), "time_s": tm.clone()}
            for key, val in vals.items():
                info[key] = torch.where(term, val, torch.zeros_like(val))
                info["_" + key] = term
        self._needs_reset = term | truncated
        if any_reset:
            self._reset_envs(resetting)
            self._observe(resetting, self._row[resetting])
        return self._obs.clone(), rewards, term, truncated, info

    def autoreset_now(self, idx) -> torch.Tensor:
        """Reset the sub-environments ``idx`` at once (same-step autoreset, for SB3); returns their observations."""
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)
        if len(idx):
            self._reset_envs(idx)
            self._observe(idx, self._row[idx])
        return self._obs[idx].clone()


class NumpyView:
    """A torch vector env seen through numpy arrays (actions in, observations/rewards/infos out).

    Lets the SB3 adapter (:class:`hlm_gym.environments.hybrid_lm.sb3.HybridLMSB3VecEnv`), which works on
    numpy, drive the torch env: the simulation runs on the env's device and only the
    ``(n, 10)`` observations, rewards, flags and info arrays cross to the host each step.
    """

    def __init__(self, env: HybridLMTorchVectorEnv) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space

    @staticmethod
    def _np(x):
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._np(obs), {k: self._np(v) for k, v in info.items()}

    def step(self, actions: np.ndarray):
        a = torch.as_tensor(np.asarray(actions, dtype=np.int64), device=self.env.device)
        obs, rew, term, trunc, info = self.env.step(a)
        return (self._np(obs), self._np(rew), self._np(term), self._np(trunc),
                {k: self._np(v) for k, v in info.items()})

    def autoreset_now(self, idx: np.ndarray) -> np.ndarray:
        return self._np(self.env.autoreset_now(idx))

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name: str):
        return getattr(self.env, name)

