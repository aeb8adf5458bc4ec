"""``hlm_gym/HybridLM-v0`` and ``hlm_gym/HybridLMCompressed-v0``: the U-HLM decision problem.

One episode is one response. Per token the agent decides whether to **skip** (keep the SLM's
draft: no upload, no LLM) or **send** (upload the SLM's distribution, the LLM verifies the
draft and maybe resamples it), on a time-varying wireless channel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hlm_gym.environments.hybrid_lm.config import EnvConfig, EnvConfigError, make_config
from hlm_gym.environments.backends import ScalarOps
from hlm_gym.environments.hybrid_lm.kernel import Draft, HybridLMKernel
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
    batched envs accept any ``skip_window`` (they were limited to 62).

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

    **Live mode** (``mode="live"``) runs :class:`hlm_gym.lm.decoding.HybridSession` with the real
    pair on the trace's prompts and per-prompt seeds (so an always-send episode reproduces the
    trace). Skipped drafts are not verified, so ``beta``/``risk``/``error_rate`` of skipped
    tokens are NaN; ``verify="deferred"`` is not available live.
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
        """One decision on the real pair: the draft's acceptance comes from the LLM, the rest from the kernel."""
        k, live = self._kernel, self._live
        r = k.row
        o = k.option(a)
        if a == 0:
            rec = live.commit(False, None)
            draft = Draft(beta_full=math.nan, accepted_full=True, beta=math.nan, accepted=True, end=live.done)
        else:
            kk = self.sim.topk[o]
            rec = live.commit(True, None if kk >= self.sim.vocab_size else kk)
            draft = Draft(beta_full=float(rec.beta), accepted_full=bool(rec.accepted), beta=float(rec.beta),
                          accepted=bool(rec.accepted), end=live.done)
        reward, terminated, info, _, _ = k.step(a, r, o, draft)
        self._out.append((rec.token, "skipped" if a == 0 else ("rejected" if info["rejected"] else "accepted")))
        info["token"] = rec.token
        terminated = bool(terminated)
        if terminated:
            self._done = True
            skipped = k.skips > 0
            info.update(k.episode_metrics())
            # skipped drafts are not verified live: their risk is unknown
            info["risk"] = math.nan if skipped else 0.0
            info["error_rate"] = math.nan if skipped else 0.0
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
    """The real model pair behind ``mode="live"`` (loaded once per environment)."""

    def __init__(self, env: HybridLMEnv, pair=None) -> None:
        import torch

        from hlm_gym.lm.decoding import DecoderConfig
        from hlm_gym.lm.models import load_pair

        meta = env.sim.traces.meta
        cfg = env.config
        self.pair = pair if pair is not None else load_pair(
            slm=cfg.slm or meta.get("slm_spec"), llm=cfg.llm or meta.get("llm_spec"), device=cfg.device)
        for role in ("slm", "llm"):
            want, got = meta.get(f"{role}_fingerprint"), getattr(self.pair, f"{role}_fingerprint", None)
            if want and got and want != got:
                import warnings

                warnings.warn(f"live mode: the {role.upper()} ({got[:12]}...) is not the one the trace "
                              f"{env.sim.traces.path} was recorded with ({want[:12]}...); live and trace mode "
                              "will not agree. Rebuild the traces with 'hlm-gym traces build'.", stacklevel=3)
        self.config = DecoderConfig(mode=meta["mode"], max_new_tokens=int(meta["max_new_tokens"]),
                                    temperature=float(meta["temperature"]), k=int(meta["k"]),
                                    theta_max=float(meta["theta_max"]), stop_at_eos=bool(meta.get("stop_at_eos", True)))
        self.env = env
        self.session = None
        self.last_signals = np.zeros(5, dtype=np.float32)
        self._log_v = math.log(env.sim.vocab_size)
        self._torch = torch

    def start(self, prompt: int) -> None:
        from hlm_gym.lm.decoding import HybridSession

        traces = self.env.sim.traces
        ids = self._torch.as_tensor(traces.prompt_token_ids(prompt))
        seed = int(traces.meta["prompts"][prompt]["seed"])
        self.session = HybridSession(self.pair, ids, self.config, seed)

    def signals(self) -> np.ndarray:
        s = self.session.draft().signals
        v = np.array([s["u"], s["entropy"] / self._log_v, s["top1_prob"], s["margin"],
                      0.0 if math.isnan(s["saturation"]) else s["saturation"]], dtype=np.float32)
        v = np.clip(v, OBS_LOW[:5], OBS_HIGH[:5])
        self.last_signals = v
        return v

    def commit(self, send: bool, topk: Optional[int]):
        self.session.config = dataclasses.replace(self.config, topk_upload=topk)
        return self.session.commit(send)

    @property
    def done(self) -> bool:
        return self.session.done
