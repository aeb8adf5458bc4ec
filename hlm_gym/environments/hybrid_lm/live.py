"""Live mode of the HybridLM family: the real SLM-LLM pair in the loop instead of a trace.

The model side is :class:`hlm_gym.lm.batch_decoding.BatchedSession` (responses decoded
together with both models' KV caches, the LLM's distribution known at every position); the
environment side is the family's ONE kernel
(:class:`~hlm_gym.environments.hybrid_lm.kernel.HybridLMKernel`), which receives each real
draft's verdict and rejection probability as a :class:`~hlm_gym.environments.hybrid_lm.kernel.Draft`.
A skipped draft gets its exact ``beta`` and a realised verdict (the uniform its verification
would have drawn), so live episodes report ``risk`` and ``error_rate`` like trace episodes.

* :class:`LiveBatch`: ``n`` live episodes run together (no autoreset), what
  ``hlm-gym evaluate --mode live`` drives;
* :func:`load_live_pair`, :func:`live_decoder_config`, :func:`live_signals`,
  :func:`live_draft`: what the single env (``mode="live"``) shares with it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from hlm_gym.environments.backends import NumpyOps
from hlm_gym.environments.hybrid_lm.kernel import Draft, HybridLMKernel
from hlm_gym.environments.hybrid_lm.observation import OBS_HIGH, OBS_LOW, OBS_NAMES
from hlm_gym.environments.hybrid_lm.simulation import Simulation

__all__ = ["LiveBatch", "load_live_pair", "live_decoder_config", "live_signals", "live_draft"]


def load_live_pair(sim: Simulation, pair: Any = None, stacklevel: int = 3) -> Any:
    """The model pair of live mode: ``pair`` if given, else the env options' ``slm``/``llm`` (default:
    the trace's specs) on ``device``; warns when it is not the pair the trace was recorded with."""
    from hlm_gym.lm.models import load_pair

    meta, cfg = sim.traces.meta, sim.config
    if pair is None:
        pair = load_pair(slm=cfg.slm or meta.get("slm_spec"), llm=cfg.llm or meta.get("llm_spec"), device=cfg.device)
    for role in ("slm", "llm"):
        want, got = meta.get(f"{role}_fingerprint"), getattr(pair, f"{role}_fingerprint", None)
        if want and got and want != got:
            warnings.warn(f"live mode: the {role.upper()} ({got[:12]}...) is not the one the trace "
                          f"{sim.traces.path} was recorded with ({want[:12]}...); live and trace mode "
                          "will not agree. Rebuild the traces with 'hlm-gym traces build'.", stacklevel=stacklevel)
    return pair


def live_decoder_config(meta: Mapping[str, Any]) -> Any:
    """The decoding settings a trace was recorded with (its metadata ``meta``: mode, length,
    temperature, top-p, K, theta_max)."""
    from hlm_gym.lm.decoding import DecoderConfig

    return DecoderConfig(mode=meta["mode"], max_new_tokens=int(meta["max_new_tokens"]),
                         temperature=float(meta["temperature"]), top_p=float(meta.get("top_p", 1.0)), k=int(meta["k"]),
                         theta_max=float(meta["theta_max"]), stop_at_eos=bool(meta.get("stop_at_eos", True)))


def live_signals(signals: dict[str, np.ndarray], vocab_size: int) -> np.ndarray:
    """The observation's five draft signals ``(n, 5)`` (float32, clipped) from a session's signal arrays."""
    sat = np.nan_to_num(np.asarray(signals["saturation"], dtype=np.float64), nan=0.0)
    v = np.stack([signals["u"], np.asarray(signals["entropy"]) / math.log(vocab_size), signals["top1_prob"],
                  signals["margin"], sat], axis=-1)
    return np.clip(v, OBS_LOW[:5], OBS_HIGH[:5]).astype(np.float32)


def live_draft(res: Any) -> Draft:
    """The kernel's :class:`Draft` of a session's :class:`~hlm_gym.lm.batch_decoding.StepResult`
    (arrays over its rows): the full distribution's beta and realised verdict, the upload's."""
    return Draft(beta_full=res.beta_full.astype(np.float64), accepted_full=res.accepted_full.astype(bool),
                 beta=res.beta.astype(np.float64), accepted=res.accepted.astype(bool), end=res.end.astype(bool))


class LiveBatch:
    """``n`` live episodes of one simulation, decoded together on the real pair.

    :meth:`reset` starts episode ``i`` on prompt ``prompts[i]`` (its per-prompt seed of the
    trace), channel realisation ``brows[i]`` and start phase ``j0s[i]``; :meth:`step` applies one
    action per episode and returns ``(obs, reward, terminated, info)`` arrays over all ``n``
    (``terminated`` is True on the step an episode ends; afterwards its entries are not
    meaningful, see ``valid`` in ``info`` and :attr:`running`); ``final[i]``: episode ``i``'s end-of-episode metrics (the kernel's
    :data:`~hlm_gym.environments.hybrid_lm.kernel.EPISODE_KEYS`) once it has ended.
    ``send_only`` marks episodes whose drafts are all sent whatever the action (the fidelity
    reference: the LLM-alone response).
    """

    def __init__(self, sim: Simulation, pair: Any, compressed: bool) -> None:
        self.sim, self.pair, self.compressed = sim, pair, compressed
        self.decoder = live_decoder_config(sim.traces.meta)

    def reset(self, prompts: Sequence[int], brows: Sequence[int], j0s: Sequence[int],
              send_only: Optional[Sequence[bool]] = None) -> np.ndarray:
        """Start the episodes; returns the first observations ``(n, obs_dim)``."""
        from hlm_gym.lm.batch_decoding import BatchedSession

        traces = self.sim.traces
        self.n = n = len(prompts)
        self.prompts = np.asarray(prompts, dtype=np.int64)
        self.kernel = k = HybridLMKernel(self.sim, NumpyOps(), n, self.compressed)
        self.send_action = k.n_actions - 1
        k.reset(None, self.prompts, np.asarray(brows, dtype=np.int64), np.asarray(j0s, dtype=np.int64))
        self.session = BatchedSession(self.pair, [traces.prompt_token_ids(int(p)) for p in self.prompts],
                                      [int(traces.meta["prompts"][int(p)]["seed"]) for p in self.prompts],
                                      self.decoder)
        self.send_only = np.zeros(n, bool) if send_only is None else np.asarray(send_only, dtype=bool)
        self.running = np.ones(n, bool)
        self.final: list[Optional[dict[str, float]]] = [None] * n
        self._signals = np.zeros((n, 5), np.float32)
        self.obs = np.zeros((n, len(OBS_NAMES)), np.float32)
        self._observe()
        return self.obs.copy()

    def _observe(self) -> None:
        d = self.session.drafts() if not self.session.done else None
        if d is not None:
            self._signals[d.rows] = live_signals(d.signals, self.sim.vocab_size)
        self.kernel.observe(self.obs, signals=self._signals)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One decision per episode (ended episodes' actions are ignored)."""
        k, s = self.kernel, self.session
        a = np.asarray(actions, dtype=np.int64).reshape(-1).copy()
        if a.shape != (self.n,):
            raise ValueError(f"expected {self.n} actions, got {a.shape[0]}")
        bad = self.running & ((a < 0) | (a >= k.n_actions))
        if bad.any():
            raise ValueError(f"action {int(a[bad][0])} out of range: expected 0..{k.n_actions - 1}")
        a[self.send_only] = self.send_action
        d = s.drafts()
        rows = d.rows
        o = k.option(a)
        # a reference row uploads the full distribution (an exact LLM sample), whatever the last option is
        topk = [None if self.send_only[b] or self.sim.topk[int(oi)] >= self.sim.vocab_size else int(self.sim.topk[int(oi)])
                for b, oi in zip(rows, o[rows])]
        res = s.commit(a[rows] != 0, topk)
        # the kernel steps every episode; ended ones get a harmless accepted draft (their state is not read again)
        full = Draft(beta_full=np.zeros(self.n), accepted_full=np.ones(self.n, bool), beta=np.zeros(self.n),
                     accepted=np.ones(self.n, bool), end=np.ones(self.n, bool))
        dr = live_draft(res)
        for name in ("beta_full", "accepted_full", "beta", "accepted", "end"):
            getattr(full, name)[rows] = getattr(dr, name)
        a[~self.running] = self.send_action
        reward, term, info, _, _ = k.step(a, k.row, o, full)
        valid = self.running.copy()
        info = dict(info)
        info["valid"] = valid
        info["token"] = np.full(self.n, -1, np.int64)
        info["token"][rows] = res.token
        ended = np.zeros(self.n, bool)
        ended[rows] = res.end
        self.running &= ~ended
        if ended.any():  # the kernel's metrics of an episode are read the step it ends
            m = k.episode_metrics()
            for i in np.flatnonzero(ended):
                self.final[i] = {key: float(v[i]) for key, v in m.items()}
        if not s.done:
            self._observe()
        return self.obs.copy(), np.asarray(reward, dtype=np.float64), ended, info

    @property
    def done(self) -> bool:
        """Every episode has ended."""
        return not self.running.any()

    def output_tokens(self, i: int) -> list[int]:
        """Token ids of episode ``i``'s response."""
        return list(self.session.outputs[i])
