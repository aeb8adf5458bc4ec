"""The ONE step kernel of the HybridLM family, shared by the single, numpy and torch envs.

:class:`HybridLMKernel` holds the state of ``n`` environments (Python scalars for one env,
numpy arrays or torch tensors for a batch, see :mod:`hlm_gym.environments.backends`) and
advances it by one decision: the token cost account (:class:`hlm_gym.wireless.cost.CostModel`),
the reward, the trace replay (incl. ``verify="deferred"`` rewinds), the skip window, and the
observation (:func:`hlm_gym.environments.hybrid_lm.observation.write_observation`). The
Gymnasium classes around it only add their interface: the single env's info dicts and
rendering, the vector envs' autoreset and info masks. Live mode supplies only what differs: the
signals and the acceptance of a real draft (:meth:`HybridLMKernel.step` takes a ``draft``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from hlm_gym.environments.backends import ALL
from hlm_gym.environments.hybrid_lm.observation import write_observation
from hlm_gym.environments.hybrid_lm.simulation import Simulation

__all__ = ["HybridLMKernel", "Draft", "EPISODE_KEYS", "STEP_KEYS"]

STEP_KEYS = ("latency_s", "uplink_bits", "sent", "rejected", "beta", "error", "snr_db", "rate_bps", "energy_j")
EPISODE_KEYS = ("tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate", "tokens", "time_s")


@dataclass(slots=True)
class Draft:
    """What a decision needs to know of the current draft, per environment.

    ``beta_full``/``accepted_full``: rejection probability and acceptance against the full
    distribution; ``beta``/``accepted``: the same for the chosen upload option; ``end``: the
    response ends with this token. Trace mode reads them from the trace tables inside
    :meth:`HybridLMKernel.step`; live mode passes them from the real models.
    """

    beta_full: Any
    accepted_full: Any
    beta: Any
    accepted: Any
    end: Any


class HybridLMKernel:
    """State and dynamics of ``n`` HybridLM environments on an array backend ``xp``."""

    def __init__(self, sim: Simulation, xp: Any, n: int, compressed: bool) -> None:
        self.sim, self.xp, self.n = sim, xp, n
        cfg, t, b, c = sim.config, sim.tables, sim.bank, sim.cost
        self.compressed = compressed
        self.n_actions = 1 + len(sim.topk) if compressed else 2
        self.n_opts = len(sim.topk)
        self.n_rows = len(t.signals)
        self.cost = c
        # trace tables (flat, for gathers)
        self.sig = xp.table(t.signals, "f32")
        self.end = xp.table(t.end, "b")
        self.beta_full = xp.table(t.beta_full, "f")
        self.acc_full = xp.table(t.accepted_full, "b")
        self.acc_opt = xp.table(t.accepted.reshape(-1), "b")
        self.beta_opt = xp.table(t.beta.reshape(-1), "f")
        self.next_rej = xp.table(t.next_rej.reshape(-1), "i")
        self.starts = t.starts
        # channel bank (flat over realisation x grid point)
        self.G, self.dt = b.points, b.dt
        # one record per grid point, so a step gathers each env's channel in one memory access
        self.channel = xp.records(np.stack([b.up_wait, b.up_inv, b.dl_wait, b.dl_air, b.up_rate,
                                            b.snr_obs.astype(np.float64), b.log_rate.astype(np.float64)],
                                           axis=-1).reshape(-1, 7))
        self.bits0 = xp.table(np.asarray(c.bits0), "f")
        self.pend_bits = xp.table(np.asarray(c.pend_bits), "f")
        # reward
        self.inv_ref = 1.0 / sim.latency_ref
        self.skip_reward0 = -(c.dev_s * self.inv_ref)
        self.risk_weight: Any = float(cfg.risk_weight)
        self.risk_target: Any = float(cfg.risk_target)
        self._risk_on = self.risk_weight != 0.0
        self.risk_error = cfg.risk == "error"
        self.deferred = cfg.verify == "deferred"
        self.max_tokens = float(sim.max_tokens)
        self.window = cfg.skip_window
        # state
        z = xp.zeros
        self.row, self.start, self.j0, self.brow = z(n), z(n), z(n), z(n)
        self.pending, self.steps, self.sends, self.skips, self.errors = z(n), z(n), z(n), z(n), z(n)
        self.time, self.risk_sum = z(n, "f"), z(n, "f")
        self.ring = xp.ring(n, self.window)
        self.ring_n = z(n)
        self._channel_now: Any = None  # the channel records of the last full observation (a memo)

    def set_reward_weights(self, risk_weight: Any, risk_target: Any) -> None:
        """Per-environment reward parameters (batched backends): ``risk_weight`` and ``risk_target``
        of shape ``(n,)`` (or scalars), so one batch serves a population of reward settings."""
        w = np.broadcast_to(np.asarray(risk_weight, dtype=np.float64), (self.n,)).copy()
        r = np.broadcast_to(np.asarray(risk_target, dtype=np.float64), (self.n,)).copy()
        self.risk_weight, self.risk_target = self.xp.table(w, "f"), self.xp.table(r, "f")
        self._risk_on = bool(np.any(w != 0.0))

    def __getstate__(self) -> dict:
        """Picklable state (``copy.deepcopy``, ``pickle``): ``memoryview`` tables as arrays, named."""
        views = [k for k, v in self.__dict__.items() if isinstance(v, memoryview)]
        state = {k: (np.asarray(v) if k in views else v) for k, v in self.__dict__.items()}
        return state | {"_memoryviews": views}

    def __setstate__(self, state: dict) -> None:
        views = state.pop("_memoryviews")
        self.__dict__.update(state)
        for k in views:  # the scalar backend reads its 1-D tables through memoryviews
            self.__dict__[k] = memoryview(state[k])

    # ------------------------------------------------------------------ episodes
    def reset(self, idx: Any, prompt: Any, brow: Any, j0: Any) -> None:
        """Start new episodes in environments ``idx`` (prompt, bank realisation, start phase)."""
        xp = self.xp
        start, brow, j0 = xp.from_host(self.starts[prompt]), xp.from_host(brow), xp.from_host(j0)
        self.start = xp.assign(self.start, idx, start)
        self.row = xp.assign(self.row, idx, start)
        self.brow = xp.assign(self.brow, idx, brow)
        self.j0 = xp.assign(self.j0, idx, j0)
        for name in ("pending", "steps", "sends", "skips", "errors", "ring_n"):
            setattr(self, name, xp.assign(getattr(self, name), idx, 0))
        self.time = xp.assign(self.time, idx, 0.0)
        self.risk_sum = xp.assign(self.risk_sum, idx, 0.0)
        self.ring = xp.ring_clear(self.ring, idx)
        if idx is ALL or idx is None or self._channel_now is None:
            self._channel_now = None
        else:  # the reset envs' channel moved: refresh their records of the memo
            self._channel_now = xp.assign(self._channel_now, idx, xp.take_records(self.channel, self.grid(idx)))

    def grid(self, idx: Any = ALL) -> Any:
        """Flat bank index (realisation x grid point) of each environment's channel now."""
        if idx is ALL:
            j0, time, brow = self.j0, self.time, self.brow
        else:
            g = self.xp.gather
            j0, time, brow = g(self.j0, idx), g(self.time, idx), g(self.brow, idx)
        return brow * self.G + (j0 + self.xp.floor_int(time / self.dt)) % self.G

    def last_rows(self, term: Any) -> Any:
        """The trace rows to observe after a step: the last row of an ended episode, else the current one."""
        return self.xp.where(term, self.row - 1, self.row)

    def observe(self, obs: Any, idx: Any = ALL, rows: Any = None, signals: Any = None) -> None:
        """Write the observation of environments ``idx`` into ``obs`` (signals of trace ``rows``,
        or the given ``signals`` in live mode)."""
        xp = self.xp
        if idx is ALL:
            row, start, pending, ring_n = self.row, self.start, self.pending, self.ring_n
        else:
            g = xp.gather
            row, start, pending, ring_n = g(self.row, idx), g(self.start, idx), g(self.pending, idx), g(self.ring_n, idx)
        if rows is None:
            rows = row
        if signals is None:
            signals = xp.take_rows(self.sig, rows)
        records = xp.take_records(self.channel, self.grid(idx))
        if idx is ALL:  # the channel now, which the next step starts from (time has not moved)
            self._channel_now = records
        *_, snr, log_rate = xp.fields(records)
        write_observation(xp, obs, idx, signals, snr, log_rate, pending,
                          rows - start, ring_n, self.max_tokens, self.window)

    # ------------------------------------------------------------------ a decision
    def send_action(self, a: Any, r: Any) -> Any:
        """The actions at rows ``r``, a skip of a response's last token turned into a full send (deferred)."""
        if not self.deferred:
            return a
        return self.xp.where((a == 0) & self.xp.take(self.end, r), self.n_actions - 1, a)

    def option(self, a: Any) -> Any:
        """The upload option (index into ``topk``) of an action (0 for a skip)."""
        return self.xp.maximum(a - 1, 0) if self.compressed else a * 0

    def step(self, a: Any, r: Any, o: Any, draft: Optional[Draft] = None) -> tuple[Any, Any, dict, Any, Any]:
        """Apply actions ``a`` (upload options ``o``) at trace rows ``r`` to every environment.

        ``draft``: ``None`` replays the trace (the recorded draft, deferred rewinds from the
        trace's rejection index); live mode passes the real draft's :class:`Draft` and advances
        one row per decision. Returns ``(reward, terminated, info, rewind, rewound)``: ``info``
        holds :data:`STEP_KEYS`; ``rewound`` flags a deferred block cut at row ``rewind``.
        """
        xp, c = self.xp, self.cost
        take, where, not_ = xp.take, xp.where, xp.logical_not
        if draft is None:
            beta_full, acc_full, term = take(self.beta_full, r), take(self.acc_full, r), take(self.end, r)
            if self.n_opts == 1:  # the only option is the full distribution
                beta_o, acc_o = beta_full, acc_full
            else:
                ro = r * self.n_opts + o
                beta_o, acc_o = take(self.beta_opt, ro), take(self.acc_opt, ro)
        else:
            beta_full, acc_full, beta_o, acc_o, term = (draft.beta_full, draft.accepted_full, draft.beta,
                                                        draft.accepted, draft.end)
        p = self.pending
        records, self._channel_now = self._channel_now, None
        if records is None:
            records = xp.take_records(self.channel, self.grid())
        up_wait, up_inv, dl_wait, dl_air, up_rate, snr, _ = xp.fields(records)
        skip = a == 0
        send = not_(skip)
        # the token cost account of a send (one formula: CostModel.send_terms), a skip costs device compute
        if self.n_opts == 1:
            bits0, pend_bits = c.bits0[0], c.pend_bits[0]
        else:
            bits0, pend_bits = take(self.bits0, o), take(self.pend_bits, o)
        lat_send, up_bits, en_send = c.send_terms(bits0, pend_bits, xp.f64(p),
                                                  up_wait, up_inv, dl_wait, dl_air, where)
        lat = where(skip, c.dev_s, lat_send)
        err = skip & not_(acc_full)
        risk = xp.f64(err) if self.risk_error else beta_full
        skip_reward = self.skip_reward0
        if self._risk_on:  # (a zero weight ignores the risk entirely)
            skip_reward = skip_reward - self.risk_weight * (risk - self.risk_target)
        reward = where(skip, skip_reward, -(lat_send * self.inv_ref))
        new_row = r + 1
        rejected = send & not_(acc_o)
        rewind, rewound = r, send & False
        if self.deferred and draft is None:
            cpos = take(self.next_rej, o * self.n_rows + xp.maximum(r - p, 0))
            rewound = send & (p > 0) & (cpos < r)
            rewind = where(rewound, cpos, r)
            new_row = where(rewound, rewind + 1, new_row)
            term = take(self.end, rewind)
            rejected = rejected | rewound
        # state
        self.pending = where(skip, p + 1, 0)
        self.skips = self.skips + skip
        self.sends = self.sends + send
        self.errors = self.errors + err
        self.risk_sum = self.risk_sum + where(skip, beta_full, 0.0)
        self.time = self.time + lat
        sk = skip * 1
        self.ring_n = self.ring_n + sk - xp.ring_swap(self.ring, self.steps % self.window, sk)
        self.steps = self.steps + 1
        self.row = new_row
        info = {"latency_s": lat, "uplink_bits": where(skip, 0.0, up_bits), "sent": send, "rejected": rejected,
                "beta": where(skip, beta_full, beta_o), "error": err, "snr_db": snr,
                "rate_bps": up_rate, "energy_j": where(skip, c.skip_energy, en_send)}
        return reward, term, info, rewind, rewound

    # ------------------------------------------------------------------ metrics
    def episode_metrics(self, idx: Any = ALL) -> dict[str, Any]:
        """End-of-episode metrics of environments ``idx``."""
        xp = self.xp
        g = lambda a: xp.f64(xp.gather(a, idx))  # noqa: E731
        ntok = g(self.row) - g(self.start)
        tm = xp.gather(self.time, idx)
        st, sk = g(self.steps), g(self.skips)
        errs = ntok * 0.0 if self.deferred else g(self.errors)  # deferred verification leaves no errors
        return {"tokens_per_s": xp.where(tm > 0, ntok / xp.where(tm > 0, tm, 1.0), 0.0),
                "transmission_rate": g(self.sends) / st, "skip_rate": sk / st,
                "risk": xp.where(sk > 0, xp.gather(self.risk_sum, idx) / xp.maximum(sk, 1.0), 0.0),
                "error_rate": xp.where(ntok > 0, errs / xp.maximum(ntok, 1.0), 0.0),
                "tokens": xp.floor_int(ntok), "time_s": tm}
