"""``hlm_gym/WDMoE-v0``: which experts of a wireless distributed mixture-of-experts to use.

One episode is one sequence of tokens; one step is one (token, MoE layer) decision.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hlm_gym.environments.backends import NumpyOps
from hlm_gym.environments.options import EnvConfigError
from hlm_gym.environments.wdmoe.config import make_config
from hlm_gym.environments.wdmoe.kernel import STEP_KEYS, WDMoEKernel
from hlm_gym.environments.wdmoe.observation import obs_bounds
from hlm_gym.environments.wdmoe.simulation import build_simulation, episode_draw

__all__ = ["WDMoEEnv"]


class WDMoEEnv(gym.Env):
    """Choose the experts of each MoE layer, per token, when the experts live on wireless devices.

    The base station runs attention and each MoE layer's router; expert ``e`` runs on device
    ``placement[e]`` (:mod:`hlm_gym.wireless.fleet`). Using an expert costs a downlink of the
    hidden state, the device's compute and an uplink of the expert's output; the layer waits for
    the slowest selected device. Dropping experts saves time and device energy but loses their
    share of the layer's output (the quality loss, from the trace's Gram matrix of the experts'
    outputs, :mod:`hlm_gym.traces.wdmoe`).

    **Observation** ``Box(float32, shape=(2E + 2,))`` with ``E`` experts (default 8, shape 18):

    ==========  ============  =========================================================  ==========
    index       name          meaning                                                    bounds
    ==========  ============  =========================================================  ==========
    0..E-1      ``gate_e``    the router's gate weight of expert ``e`` (sum to 1)        [0, 1]
    E..2E-1     ``time_e``    expert ``e``'s call time on its device now (downlink,      [0, 100]
                              compute, uplink) / ``latency_ref_s``
    2E          ``layer``     MoE layer index / (layers - 1)                             [0, 1]
    2E+1        ``position``  token position / the trace's token limit                   [0, 1]
    ==========  ============  =========================================================  ==========

    **Action** ``Discrete(2**E)``: bit ``e`` of the action selects expert ``e``
    (:func:`hlm_gym.environments.wdmoe.kernel.selection_bits`). Every action is valid: the
    empty selection (action 0) uses the gate's top-1 expert, and ``info["empty"]`` says so.

    **Reward** ``-(latency_s / latency_ref_s) - risk_weight * (quality_loss - risk_target)``
    with ``latency_s`` the layer's latency (the maximum over the selected experts' call times,
    plus the base station's per-layer time) and ``quality_loss = u^T G u / d`` for the indicator
    ``u`` of the dropped experts, the Gram matrix ``G`` of the experts' outputs and
    ``d = |y_all|^2`` (``quality="mlp"``: the dropped share of the layer's output energy) or the
    residual stream's ``|h|^2`` (``quality="stream"``). ``latency_ref_s`` defaults to the mean
    all-experts layer latency of the fleet, so using every expert scores about -1 per step.

    **Starting state**: ``reset`` draws one uniform integer from the env's generator
    (:class:`hlm_gym.environments.episodes.EpisodeDraw`) that picks a sequence of the trace, a
    channel realisation of the fleet's bank and a start time in it; the first observation is
    the first token's first MoE layer.

    **Episode end**: ``terminated`` after the sequence's last token's last layer (tokens x
    layers decisions, e.g. 48 x 30 = 1440 for the shipped traces); not truncated unless a
    ``TimeLimit`` is added (``max_episode_steps`` at ``gym.make``).

    **Arguments**: keyword options of :class:`hlm_gym.environments.wdmoe.config.WDMoEConfig`
    (``scenario``, ``split``, ``trace``, ``risk_weight``, ``risk_target``, ``quality``, ...); an
    unknown name or a bad value raises an error naming it and what is allowed.

    **info** per step: ``latency_s``, ``step_quality_loss``, ``n_selected``, ``empty`` (the action
    selected no expert), ``energy_j``; at the end of an episode also ``latency_per_token_s``,
    ``tokens_per_s``, ``quality_loss`` (mean per decision), ``experts_per_layer``,
    ``empty_rate``, ``energy_j_per_token``, ``tokens``, ``time_s``.

    **Trace mode** replays a WDMoE trace recorded with every expert in use: the hidden states of
    later layers and tokens are those of the dense model whatever was dropped before (the
    quality loss of a decision is local to its layer).

    **Version history**: ``v0``: first release.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, render_mode: Optional[str] = None, **kwargs: Any) -> None:
        config, _ = make_config(kwargs)
        if render_mode not in (None, "ansi"):
            raise EnvConfigError(f"bad option render_mode={render_mode!r}: expected None or 'ansi'")
        self.config, self.render_mode = config, render_mode
        self.sim = sim = build_simulation(config)
        self._xp = NumpyOps()
        self._kernel = WDMoEKernel(sim, self._xp, 1)
        low, high = obs_bounds(sim.n_experts)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(self._kernel.n_actions)
        self._draw = episode_draw(sim)
        self._obs = np.zeros((1, len(low)), dtype=np.float32)
        self._last: dict[str, Any] = {}
        self._started = False

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """Start an episode (a random sequence, channel realisation and start time)."""
        if options:
            raise EnvConfigError(f"bad reset option(s) {', '.join(map(repr, sorted(options)))}: WDMoE-v0 takes none")
        super().reset(seed=seed)
        self._kernel.reset(np.arange(1), *self._draw.draw([self.np_random], [0]))
        self._kernel.observe(self._obs, np.arange(1))
        self._started = True
        self._last = {}
        return self._obs[0].copy(), {}

    def step(self, action):
        """Use the experts whose bits are set in ``action`` for the current (token, layer)."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = _check_action(action, self._kernel.n_actions)
        k = self._kernel
        rewards, term, info = k.step(np.array([a], dtype=np.int64))
        k.observe(self._obs, np.arange(1), k.last_rows(term))
        done = bool(term[0])
        out = {key: info[key][0].item() for key in STEP_KEYS}
        if done:
            out.update({key: v[0].item() for key, v in k.episode_metrics(np.arange(1)).items()})
            self._started = False
        self._last = out
        return self._obs[0].copy(), float(rewards[0]), done, False, out

    def render(self) -> Optional[str]:
        """``ansi``: one line with the last step's latency, quality loss and experts used."""
        if self.render_mode != "ansi":
            return None
        if not self._last:
            return "WDMoE-v0: no step yet"
        i = self._last
        return (f"latency {i['latency_s'] * 1e3:.3f} ms, quality loss {i['step_quality_loss']:.4f}, "
                f"experts {i['n_selected']}{' (empty: top-1)' if i['empty'] else ''}")


def _check_action(action: Any, n: int) -> int:
    """The action as an int, or a ``ValueError`` naming it and the valid range."""
    if isinstance(action, np.ndarray) and action.shape in ((), (1,)) and np.issubdtype(action.dtype, np.integer):
        action = action.reshape(())[()]
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)) or not 0 <= int(action) < n:
        raise ValueError(f"invalid action {action!r}: expected an integer in 0..{n - 1} "
                         "(bit e set = use expert e; 0 = the gate's top-1)")
    return int(action)
