"""The policy interface shared by every baseline, the learned agents and the evaluation harness.

A policy maps a batch of observations (the layout of :mod:`hlm_gym.environments.hybrid_lm.observation`) to actions
(``SKIP = 0``, ``SEND = 1``), vectorised in numpy:

* ``act(obs)``: ``obs`` of shape ``(n, obs_dim)`` or ``(obs_dim,)`` -> ``int64`` actions of
  shape ``(n,)`` (``n = 1`` for a single observation);
* ``predict(obs, state=None, episode_start=None, deterministic=True) -> (actions, state)``:
  Stable-Baselines3's signature, so the harness can drive SB3 models and rules alike; a single
  observation gives a 0-d action array (as SB3 does);
* ``reset(n)``: called at the start of an evaluation with the number of parallel episodes
  (stateful policies clear their state; the rules here read everything they need from the
  observation, so it is a no-op for them);
* ``__call__(obs)`` is ``act``;
* ``n_actions``: the size of the action space the policy acts in (2 for the binary rules;
  an SB3 model's own). :func:`on_action_space` maps a binary policy onto a larger action
  space (``SEND`` -> the env's send action, e.g. the full distribution of the compressed env).

:func:`as_draft_policy` adapts any policy to the live decoder's ``policy(draft) -> bool send``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable

import numpy as np

from hlm_gym.environments.hybrid_lm.observation import OBS_INDEX, OBS_NAMES, SEND, SKIP
from hlm_gym.errors import HLMGymError

__all__ = ["Policy", "PolicyError", "MappedActions", "on_action_space", "as_batch", "as_draft_policy",
           "draft_observation", "SEND", "SKIP", "OBS_DIM"]

OBS_DIM = len(OBS_NAMES)


class PolicyError(HLMGymError, ValueError):
    """Bad policy spec, parameter or model file (one-line message)."""


def as_batch(obs: Any, obs_dim: int = OBS_DIM) -> np.ndarray:
    """``obs`` as a float64 array of shape ``(n, obs_dim)``."""
    arr = np.asarray(obs, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != obs_dim:
        raise PolicyError(f"observations must have shape (n, {obs_dim}) or ({obs_dim},), got {np.shape(obs)}")
    return arr


class Policy:
    """Base class: subclasses implement :meth:`_act` on a ``(n, obs_dim)`` float64 batch."""

    name: str = "policy"
    n_actions: int = 2  #: size of the action space the policy acts in (binary: SKIP/SEND)
    obs_dim: int = OBS_DIM  #: length of the observations it reads (default: the HybridLM layout)

    def _act(self, obs: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def act(self, obs: Any) -> np.ndarray:
        """Actions (``SKIP``/``SEND``) of shape ``(n,)`` for observations ``(n, obs_dim)`` or ``(obs_dim,)``."""
        batch = as_batch(obs, self.obs_dim)
        return np.asarray(self._act(batch), dtype=np.int64).reshape(batch.shape[0])

    __call__ = act

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:
        """SB3-style ``predict``: ``(actions, state)``; a single observation gives a 0-d array."""
        single = np.ndim(observation) == 1
        actions = self.act(observation)
        return (actions.reshape(()) if single else actions), state

    def reset(self, n: int = 1) -> None:
        """Start ``n`` new parallel episodes (no-op for stateless rules)."""

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for reports."""
        return {"name": self.name}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({params})"


class MappedActions(Policy):
    """``policy`` with its actions translated through ``table`` (action ``i`` -> ``table[i]``),
    e.g. a binary rule on the compressed env: ``(SKIP, SEND) -> (0, last action)``."""

    def __init__(self, policy: Policy, table: tuple[int, ...], n_actions: int) -> None:
        if len(table) != policy.n_actions or not all(0 <= a < n_actions for a in table):
            raise PolicyError(f"action table {table} does not map {policy.n_actions} actions into 0..{n_actions - 1}")
        self.policy = policy
        self.table = np.asarray(table, dtype=np.int64)
        self.n_actions = int(n_actions)
        self.obs_dim = policy.obs_dim
        self.name = policy.name

    def _act(self, obs: np.ndarray) -> np.ndarray:
        return self.table[np.asarray(self.policy.act(obs), dtype=np.int64)]

    def reset(self, n: int = 1) -> None:
        self.policy.reset(n)

    def reseed(self, seed: int | None) -> None:
        """Reseed the wrapped policy (when it is stochastic)."""
        if hasattr(self.policy, "reseed"):
            self.policy.reseed(seed)

    def describe(self) -> dict[str, Any]:
        return self.policy.describe() | {"actions": self.table.tolist()}


def on_action_space(policy: Policy, n_actions: int, send_action: int) -> Policy:
    """``policy`` acting in ``Discrete(n_actions)``: unchanged when it already does, a binary
    policy mapped ``SKIP -> 0``, ``SEND -> send_action``; :class:`PolicyError` otherwise."""
    if policy.n_actions == n_actions:
        return policy
    if policy.n_actions == 2:
        return MappedActions(policy, (SKIP, int(send_action)), n_actions)
    raise PolicyError(f"policy {policy.name!r} has {policy.n_actions} actions; the environment has {n_actions} "
                      "(only binary skip/send policies are mapped onto another action space)")


def draft_observation(signals: dict[str, float], *, position: int, pending: int, max_tokens: int,
                      vocab_size: int, snr_db: float = 30.0, rate_bps: float = 1e8,
                      skip_frac: float = 0.0) -> np.ndarray:
    """One observation vector (the env's layout) from a decoder draft's signals and context.

    ``signals['entropy']`` is in nats (the decoder's unit) and is divided by ``log V`` here, as
    the environments do. The channel entries default to a good link when no channel is given.
    """
    obs = np.zeros(OBS_DIM, dtype=np.float64)
    obs[OBS_INDEX["u"]] = signals["u"]
    obs[OBS_INDEX["entropy"]] = signals["entropy"] / math.log(max(vocab_size, 2))
    obs[OBS_INDEX["top1_prob"]] = signals["top1_prob"]
    obs[OBS_INDEX["margin"]] = signals["margin"]
    sat = signals.get("saturation", 0.0)
    obs[OBS_INDEX["saturation"]] = 0.0 if sat is None or not np.isfinite(sat) else sat
    obs[OBS_INDEX["snr_db"]] = snr_db
    obs[OBS_INDEX["log_rate"]] = math.log10(1.0 + max(rate_bps, 0.0))
    obs[OBS_INDEX["pending"]] = min(pending / max_tokens, 1.0)
    obs[OBS_INDEX["position"]] = min(position / max_tokens, 1.0)
    obs[OBS_INDEX["skip_frac"]] = skip_frac
    return obs


def as_draft_policy(policy: Policy, *, max_tokens: int, channel: Any = None, skip_window: int = 16,
                    snr_db: float = 30.0, rate_bps: float = 1e8) -> Callable[[Any], bool]:
    """Adapt ``policy`` to :meth:`hlm_gym.lm.decoding.HybridDecoder.generate` (``draft -> bool send``).

    ``channel`` is optional: an object with ``snr_db()`` and ``uplink_rate_bps()`` returning
    arrays (a one-link :class:`hlm_gym.wireless.channel.Channel`) or a callable returning
    ``(snr_db, rate_bps)``; without one the fixed ``snr_db``/``rate_bps`` are observed.
    ``skip_frac`` is tracked over the last ``skip_window`` decisions of this adapter, so make a
    new adapter per response.
    """
    policy.reset(1)
    window: deque[int] = deque(maxlen=skip_window)

    def _channel_state() -> tuple[float, float]:
        if channel is None:
            return snr_db, rate_bps
        if callable(channel) and not hasattr(channel, "snr_db"):
            s, r = channel()
            return float(s), float(r)
        return float(np.ravel(channel.snr_db())[0]), float(np.ravel(channel.uplink_rate_bps())[0])

    def _decide(draft: Any) -> bool:
        s, r = _channel_state()
        obs = draft_observation(draft.signals, position=draft.position, pending=draft.pending,
                                max_tokens=max_tokens, vocab_size=int(draft.q_probs.shape[-1]), snr_db=s,
                                rate_bps=r, skip_frac=(window.count(1) / skip_window))
        send = bool(policy.act(obs)[0] != SKIP)  # any upload action sends
        window.append(0 if send else 1)
        return send

    return _decide
