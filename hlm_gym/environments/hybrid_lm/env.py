"""``hlm_gym/HybridLM-v0`` and ``hlm_gym/HybridLMCompressed-v0``: the U-HLM decision problem.

One episode is one response. Per token the agent decides whether to **skip** (keep the SLM's
draft: no upload, no LLM) or **send** (upload the SLM's distribution, the LLM verifies the
draft and maybe resamples it), on a time-varying wireless channel.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hlm_gym.environments.hybrid_lm.config import EnvConfig, EnvConfigError, make_config
from hlm_gym.environments.backends import ScalarOps
from hlm_gym.environments.hybrid_lm.kernel import Draft, HybridLMKernel
from hlm_gym.environments.hybrid_lm.live import live_decoder_config, live_draft, live_signals, load_live_pair
from hlm_gym.environments.hybrid_lm.simulation import EpisodeDraw, Simulation, build_simulation
from hlm_gym.environments.hybrid_lm.observation import OBS_HIGH, OBS_LOW, OBS_NAMES

EXTRA_KWARGS = ("render_mode",)
EPISODE_KEYS = ("tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate", "tokens", "time_s")


def check_action(action, n: int) -> int:
    """The action as an int, or a ``ValueError`` naming it and the valid range."""
    if type(action) is int and 0 <= action < n:  # the common case, first
        return action
    if isinstance(action, (bool, np.bool_)):
        ok = False
    elif isinstance(action, (int, np.integer)):
        ok = True
    elif isinstance(action, np.ndarray) and action.shape in ((), (1,)) and np.issubdtype(action.dtype, np.integer):
        action = action.reshape(())[()]
        ok = True
    else:
        ok = False
    if not ok or not 0 <= int(action) < n:
        raise ValueError(f"invalid action {action!r}: expected an integer in 0..{n - 1} "
                         f"(0 = skip, {'1 = send' if n == 2 else 'i > 0 = send with the i-th top-k size'})")
    return int(action)


class HybridLMEnv(gym.Env):
    """Skip or send each SLM draft of one response over a wireless uplink.

    **Observation** ``Box(float32, shape=(10,))`` (layout of :mod:`hlm_gym.environments.hybrid_lm.observation`):

    =====  ==============  ===========================================================  ==========
    index  name            meaning                                                      bounds
    =====  ==============  ===========================================================  ==========
    0      ``u``           U-HLM temperature-perturbation uncertainty of the draft      [0, 1]
    1      ``entropy``     SLM entropy / ``log V``                                      [0, 1]
    2      ``top1_prob``   SLM top-1 probability                                        [0, 1]
    3      ``margin``      SLM top-1 minus top-2 probability                            [0, 1]
    4      ``saturation``  cosine of the SLM's last two hidden states                   [-1, 1]
    5      ``snr_db``      uplink SNR (dB, clipped) at the decision time                [-50, 80]
    6      ``log_rate``    ``log10(1 + uplink rate in bit/s)`` at the decision time     [0, 12]
    7      ``pending``     skipped tokens since the last send / ``max_tokens``          [0, 1]
    8      ``position``    tokens of the response so far / ``max_tokens``               [0, 1]
    9      ``skip_frac``   skipped decisions among the last ``skip_window`` / window    [0, 1]
    =====  ==============  ===========================================================  ==========

    **Action** ``Discrete(2)``: 0 = skip, 1 = send (``HybridLMCompressed-v0``:
    ``Discrete(1 + len(k_choices))``, ``i > 0`` = send the top-``k_choices[i-1]`` entries).

    **Reward** ``-(latency_s / latency_ref_s) - risk_weight * (risk - risk_target)`` for a
    skip and ``-(latency_s / latency_ref_s)`` for a send, with ``risk`` the skipped draft's
    rejection probability ``beta`` (``risk="beta"``) or ``1`` if it would have been rejected
    with the recorded uniform (``risk="error"``). With ``risk_target = 0`` (default) the return
    trades latency against expected rejections per token (the error rate); with
    ``risk_target = R > 0`` it is the Lagrangian of "mean rejection probability of the skipped
    tokens <= R", the ``risk`` that the evaluation harness reports.
    ``latency_ref_s`` defaults to the latency of a full-upload send with no pending tokens at
    the scenario's nominal mean SNR, so an always-send episode at the mean SNR scores about
    -1 per token.

    **Starting state**: ``reset`` draws one uniform integer from the env's generator
    (:class:`hlm_gym.environments.hybrid_lm.simulation.EpisodeDraw`) that picks a prompt of the split, a channel
    realisation of the bank and a start time in it; the first observation describes the first
    draft of that prompt's response. No pending tokens, position 0.

    **Episode end**: ``terminated`` when the response ends (its last recorded token, EOS or
    the trace's token limit); ``truncated`` by Gymnasium's ``TimeLimit`` after
    ``max_episode_steps`` decisions (registered default 128, the shipped traces' response
    limit; with ``verify="deferred"`` the rewinds add decisions, so long episodes can reach it
    before the response ends).

    **Arguments**: keyword options of :class:`hlm_gym.environments.hybrid_lm.config.EnvConfig` (``scenario``,
    ``split``, ``risk_weight``, ``risk_target``, ``risk``, ``verify``, ``mode``, ...); an
    unknown name or a bad value raises an error naming it and what is allowed.

    **Version history**: ``v0``: first release; ``risk_target`` added to the reward (default
    0 keeps the original reward); the single, numpy and torch envs run one step kernel
    (trajectories unchanged bit for bit, checked against trajectories recorded before) and the
    batched envs accept any ``skip_window`` (they were limited to 62); live mode reports the
    exact ``beta``, ``error``, ``risk`` and ``error_rate`` of skipped drafts (they were NaN) and
    draws a verification uniform at every position (a live episode with skips samples other
    tokens than before; always-send episodes are unchanged).

    **Latency/energy** per token: :mod:`hlm_gym.wireless.cost`'s account with the instantaneous
    uplink/downlink rates at the decision time (device compute; for a send also the upload of
    the distribution and the pending ids, the LLM's verification and catch-up, the downlink).
    The simulated clock advances by each token's latency; the channel is the scenario's
    (a bank of realisations sampled every ``channel_dt_s``, see
    :mod:`hlm_gym.wireless.bank`; each episode starts at a random realisation and time).

    **info** per step: ``latency_s``, ``uplink_bits``, ``sent``, ``rejected`` (the LLM
    replaced a draft at this send), ``beta``, ``error`` (a skipped draft that would have been
    rejected), ``snr_db``, ``rate_bps``, ``energy_j``; at the end of an episode also
    ``tokens_per_s`` (simulated), ``transmission_rate`` (sends / decisions), ``skip_rate``,
    ``risk`` (mean beta of skipped drafts), ``error_rate`` (unverified drafts in the final
    response that would have been rejected / response tokens), ``tokens``, ``time_s``.

    **Trace mode** (default) replays a recorded always-send trajectory (``hlm_gym.traces.store``):
    a skip keeps the recorded draft; whether it would have been rejected uses the recorded
    uniform; after a skipped draft that would have been rejected the replay still continues on
    the recorded (LLM-conditioned) prefix — an approximation live mode does not make. With
    ``verify="deferred"`` skipped drafts are verified at the next send as one speculative
    block (each pending position uploads its distribution too): the first rejected position
    gets the LLM's recorded token, the rest of the block is discarded, the replay rewinds to
    the position after it (the time already spent is kept), and the last token of a response
    is always sent — the output is exact. In the compressed variant a draft rejected under
    top-k truncation but accepted under the full distribution counts as rejected; the replay
    continues on the recorded prefix.

    **Live mode** (``mode="live"``) decodes with the real pair
    (:mod:`hlm_gym.environments.hybrid_lm.live`) on the trace's prompts and per-prompt seeds (so
    an always-send episode reproduces the trace). The LLM's distribution is computed at every
    position, so a skipped draft has its exact ``beta`` and a realised ``error`` (the uniform its
    verification would have drawn) and episodes report ``risk`` and ``error_rate`` as in trace
    mode; a skipped draft is kept in the response (the LLM continues on it).
    ``verify="deferred"`` is not available live.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}
    compressed = False

    def __init__(self, render_mode: Optional[str] = None, **kwargs: Any) -> None:
        config, extra = make_config(kwargs, extra_allowed=("pair",))
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvConfigError(f"bad option render_mode={render_mode!r}: expected None or 'ansi'")
        if config.mode == "live" and config.verify == "deferred":
            raise EnvConfigError("bad option verify='deferred': deferred verification is only available in "
                                 "trace mode")
        self.config: EnvConfig = config
        self.render_mode = render_mode
        self.sim: Simulation = build_simulation(config, self.compressed)
        self._kernel = HybridLMKernel(self.sim, ScalarOps, 1, self.compressed)
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        self.action_space = spaces.Discrete(self._kernel.n_actions)
        self._n_actions = self._kernel.n_actions
        self._episode_draw = EpisodeDraw.of(self.sim)
        self._obs = np.zeros(len(OBS_NAMES), dtype=np.float32)
        self._live = _LivePair(self, extra.get("pair")) if config.mode == "live" else None
        self._started = False
        self._done = False

    # ------------------------------------------------------------------ episode
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        ep = self._episode_draw
        prompt, brow, j0 = ep.split(int(self.np_random.integers(0, ep.total)))
        if options:
            prompt = self._prompt_option(options, prompt)
        self._prompt = prompt
        self._kernel.reset(None, prompt, brow, j0)
        self._out: list[tuple[int, str]] = []
        self._started, self._done = True, False
        if self._live is not None:
            self._live.start(prompt)
            self._kernel.observe(self._obs, signals=self._live.signals())
        else:
            self._kernel.observe(self._obs)
        return self._obs.copy(), {"prompt": prompt, "prompt_id": self.sim.traces.meta["prompts"][prompt]["id"]}

    def _prompt_option(self, options: dict, default: int) -> int:
        """The episode's prompt from reset ``options`` (``{"prompt": i}``); other keys are refused."""
        unknown = sorted(set(options) - {"prompt"})
        if unknown:
            raise EnvConfigError(f"bad reset option(s) {', '.join(map(repr, unknown))}: the only reset option is "
                                 "'prompt' (a prompt index of the trace)")
        prompt = options.get("prompt", default)
        n = self.sim.traces.n_prompts
        if isinstance(prompt, (bool, np.bool_)) or not isinstance(prompt, (int, np.integer)) or not 0 <= prompt < n:
            raise EnvConfigError(f"bad reset option prompt={prompt!r}: expected an integer in 0..{n - 1}")
        return int(prompt)

    # ------------------------------------------------------------------ step
    def step(self, action):
        a = check_action(action, self._n_actions)
        if not self._started or self._done:
            raise RuntimeError("call reset() before step() (the episode has ended)")
        if self._live is not None:
            return self._step_live(a)
        k = self._kernel
        r = k.row
        if k.deferred:
            a = k.send_action(a, r)
        reward, terminated, info, rewind, rewound = k.step(a, r, k.option(a))
        if rewound:  # the LLM's token at the rewind position, the rest of the block discarded
            del self._out[len(self._out) - (r - rewind):]
            self._out.append((rewind, "rejected"))
        elif a == 0:
            self._out.append((r, "skipped-wrong" if info["error"] else "skipped"))
        else:
            self._out.append((r, "rejected" if info["rejected"] else "accepted"))
        if terminated:
            self._done = True
            info.update(k.episode_metrics())
            k.observe(self._obs, rows=k.row - 1)  # the last row's signals (there is no next draft)
        else:
            k.observe(self._obs)
        return self._obs.copy(), reward, terminated, False, info

    # ------------------------------------------------------------------ live mode
    def _step_live(self, a: int):
        """One decision on the real pair: the draft's verdict and beta come from the LLM, the rest from the kernel."""
        k, live = self._kernel, self._live
        o = k.option(a)
        kk = self.sim.topk[o]
        res = live.commit(a != 0, None if kk >= self.sim.vocab_size else kk)
        d = live_draft(res)
        draft = Draft(beta_full=float(d.beta_full[0]), accepted_full=bool(d.accepted_full[0]),
                      beta=float(d.beta[0]), accepted=bool(d.accepted[0]), end=bool(d.end[0]))
        reward, terminated, info, _, _ = k.step(a, k.row, o, draft)
        token = int(res.token[0])
        self._out.append((token, "skipped-wrong" if info["error"] else "skipped") if a == 0
                         else (token, "rejected" if info["rejected"] else "accepted"))
        info["token"] = token
        terminated = bool(terminated)
        if terminated:
            self._done = True
            info.update(k.episode_metrics())
            k.observe(self._obs, signals=live.last_signals)
        else:
            k.observe(self._obs, signals=live.signals())
        return self._obs.copy(), reward, terminated, False, info

    # ------------------------------------------------------------------ render
    def render(self):
        if self.render_mode != "ansi":
            return None
        return render_ansi(self)

    @property
    def output_tokens(self) -> list[int]:
        """Token ids of the response so far (after any rewinds)."""
        if self._live is not None:
            return [tok for tok, _ in self._out]
        t = self.sim.tables
        out = []
        for row, status in self._out:
            out.append(int(t.token[row]) if status in ("accepted", "rejected") else int(t.draft[row]))
        return out


class HybridLMCompressedEnv(HybridLMEnv):
    """CU-HLM: the action also picks the top-k size of the uploaded distribution.

    ``Discrete(1 + len(k_choices))``: 0 = skip, ``i > 0`` = send the top-``k_choices[i-1]``
    entries (``k >= V``: the full distribution); acceptance uses the recorded per-k outcome
    with the same uniform; the payload is ``k (b_prob + ceil(log2 V))`` bits. Everything else
    as :class:`HybridLMEnv`.
    """

    compressed = True


MARKS = {"accepted": ("", ""), "rejected": ("<", ">"), "skipped": ("[", "]"), "skipped-wrong": ("[!", "]")}


def render_ansi(env: HybridLMEnv) -> str:
    """The response so far: ``text`` accepted, ``<text>`` resampled by the LLM, ``[text]`` skipped,
    ``[!text]`` skipped although it would have been rejected."""
    pieces = []
    if env._live is not None:
        tok = env._live.pair.tokenizer
        for token, status in env._out:
            left, right = MARKS[status]
            pieces.append(f"{left}{tok.decode([token])}{right}")
    else:
        t, traces = env.sim.tables, env.sim.traces
        for row, status in env._out:
            token = int(t.token[row]) if status in ("accepted", "rejected") else int(t.draft[row])
            left, right = MARKS[status]
            pieces.append(f"{left}{traces.token_text(token)}{right}")
    k = env._kernel
    head = (f"prompt {env._prompt}  tokens {len(env._out)}  sent {k.sends}/{k.steps}  "
            f"t={k.time:.3f}s  (text, <resampled>, [skipped], [!skipped-wrong])\n")
    return head + "".join(pieces) + "\n"


class _LivePair:
    """The real model pair behind ``mode="live"`` (loaded once per environment), one response at a
    time through :class:`hlm_gym.lm.batch_decoding.BatchedSession`."""

    def __init__(self, env: HybridLMEnv, pair=None) -> None:
        self.pair = load_live_pair(env.sim, pair, stacklevel=4)
        self.config = live_decoder_config(env.sim.traces.meta)
        self.env = env
        self.session = None
        self.last_signals = np.zeros(5, dtype=np.float32)

    def start(self, prompt: int) -> None:
        from hlm_gym.lm.batch_decoding import BatchedSession

        traces = self.env.sim.traces
        seed = int(traces.meta["prompts"][prompt]["seed"])
        self.session = BatchedSession(self.pair, [traces.prompt_token_ids(prompt)], [seed], self.config)

    def signals(self) -> np.ndarray:
        self.last_signals = live_signals(self.session.drafts().signals, self.env.sim.vocab_size)[0]
        return self.last_signals

    def commit(self, send: bool, topk: Optional[int]):
        return self.session.commit([bool(send)], [topk])

    @property
    def done(self) -> bool:
        return self.session.done
