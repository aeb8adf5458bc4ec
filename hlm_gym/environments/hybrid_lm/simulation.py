"""What the HybridLM environments of the same options share (no Gymnasium types here).

:func:`build_simulation` gathers, for an :class:`~hlm_gym.environments.hybrid_lm.config.EnvConfig`:
the scenario (:mod:`hlm_gym.wireless.scenarios`), the trace (:mod:`hlm_gym.traces.store`) as
:class:`TraceTables` (per-row arrays in observation units), the channel bank
(:class:`hlm_gym.wireless.bank.ChannelBank`: ``R`` realisations sampled on a time grid; the
channel seen at simulated time ``t`` is the grid value at ``floor(t / dt)``, cyclic over a
realisation), the token cost account (:class:`hlm_gym.wireless.cost.CostModel`) and the reward's
reference latency. :class:`EpisodeDraw` turns one uniform integer into an episode start
(prompt, realisation, start phase), identically for the single and the batched envs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hlm_gym.environments.hybrid_lm.config import EnvConfig, EnvConfigError
# EpisodeDraw and sub_env_seeds live in environments.episodes (shared by the families); importable from here too
from hlm_gym.environments.episodes import EpisodeDraw, sub_env_seeds
from hlm_gym.environments.hybrid_lm.observation import OBS_HIGH, OBS_LOW
from hlm_gym.wireless.bank import ChannelBank, auto_dt, bank_shape, channel_bank
from hlm_gym.wireless.cost import CostModel, reference_latency

__all__ = ["Simulation", "TraceTables", "EpisodeDraw", "build_simulation", "sub_env_seeds", "trace_tables",
           "load_env_traces", "load_env_scenario", "resolve_topk", "SNR_CLIP", "LOG_RATE_CLIP"]

SNR_CLIP = (float(OBS_LOW[5]), float(OBS_HIGH[5]))
LOG_RATE_CLIP = (float(OBS_LOW[6]), float(OBS_HIGH[6]))


# ------------------------------------------------------------------------------ scenario
def load_env_scenario(config: EnvConfig):
    from hlm_gym.wireless.scenarios import load_scenario

    return load_scenario(config.scenario, **dict(config.scenario_overrides))


# ------------------------------------------------------------------------------ trace tables
@dataclass
class TraceTables:
    """Per-row arrays of a trace for the environments (rows as in :class:`hlm_gym.traces.store.Traces`).

    ``signals`` is ``(n, 5)`` float32 in observation units (entropy divided by ``log V``);
    ``accepted``/``beta`` are ``(n, O)`` per top-k option (the last option is the full
    distribution); ``next_rej[o][r]`` is the first row ``>= r`` of the same prompt whose draft
    is rejected under option ``o`` (or a large sentinel).
    """

    signals: np.ndarray
    accepted: np.ndarray
    beta: np.ndarray
    beta_full: np.ndarray
    accepted_full: np.ndarray
    draft: np.ndarray
    token: np.ndarray
    end: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    next_rej: np.ndarray
    topk: tuple[int, ...]
    max_tokens: int


def trace_tables(traces, topk: tuple[int, ...]) -> TraceTables:
    """Build :class:`TraceTables` for options ``topk`` (each a recorded ``k`` or ``>= V``)."""
    from hlm_gym.traces.store import TraceError

    c = traces.columns
    V = traces.vocab_size
    sig = np.stack([c["u"].astype(np.float32),
                    (c["entropy"].astype(np.float64) / math.log(V)).astype(np.float32),
                    c["top1_prob"].astype(np.float32), c["margin"].astype(np.float32),
                    np.nan_to_num(c["saturation"].astype(np.float32), nan=0.0)], axis=1)
    sig = np.clip(sig, OBS_LOW[:5], OBS_HIGH[:5]).astype(np.float32)
    acc_cols, beta_cols = [], []
    for k in topk:
        if k >= V:
            acc_cols.append(c["accepted"].astype(bool))
            beta_cols.append(c["beta"].astype(np.float64))
        elif k in traces.k_choices:
            acc_cols.append(c[f"accepted_k{k}"].astype(bool))
            beta_cols.append(c[f"beta_k{k}"].astype(np.float64))
        else:
            raise TraceError(f"top-k size {k} was not recorded in {traces.path}; recorded: "
                             f"{list(traces.k_choices)} (and V={V})")
    acc = np.stack(acc_cols, axis=1)
    n = len(acc)
    starts_row = np.repeat(traces.offsets[:-1], traces.lengths)
    stops_row = np.repeat(traces.offsets[1:], traces.lengths)
    big = np.int64(1 << 40)
    next_rej = np.empty((len(topk), n), dtype=np.int64)
    for o in range(len(topk)):
        nr = np.full(n + 1, big, dtype=np.int64)
        rej = ~acc[:, o]
        for r in range(n - 1, -1, -1):  # once per trace load
            nr[r] = r if rej[r] else (nr[r + 1] if r + 1 < stops_row[r] else big)
        next_rej[o] = nr[:n]
    del starts_row
    return TraceTables(signals=sig, accepted=acc, beta=np.stack(beta_cols, axis=1),
                       beta_full=c["beta"].astype(np.float64),
                       accepted_full=c["accepted"].astype(bool), draft=c["draft"].astype(np.int64),
                       token=c["token"].astype(np.int64), end=c["end"].astype(bool),
                       starts=traces.offsets[:-1].astype(np.int64), stops=traces.offsets[1:].astype(np.int64),
                       next_rej=next_rej, topk=tuple(topk), max_tokens=int(traces.meta["max_new_tokens"]))


def resolve_topk(config: EnvConfig, traces, compressed: bool) -> tuple[int, ...]:
    """The top-k options: ``(V,)`` for the binary env, ``k_choices`` (default recorded + V) otherwise."""
    V = traces.vocab_size
    if not compressed:
        if config.k_choices is not None:
            raise EnvConfigError(f"bad option k_choices={config.k_choices!r}: only the compressed env "
                                 "(hlm_gym/HybridLMCompressed-v0) has top-k sizes; HybridLM-v0 always sends the full "
                                 "distribution")
        return (V,)
    ks = config.k_choices if config.k_choices is not None else tuple(traces.k_choices) + (V,)
    ks = tuple(min(int(k), V) for k in ks)
    if len(set(ks)) != len(ks):
        raise EnvConfigError(f"bad option k_choices={config.k_choices!r}: sizes >= V={V} all mean the full "
                             "distribution; give it once")
    for k in ks:
        if k < V and k not in traces.k_choices:
            raise EnvConfigError(f"bad option k_choices={config.k_choices!r}: {k} was not recorded in the trace "
                                 f"(recorded: {list(traces.k_choices)}, plus V={V})")
    return ks


def load_env_traces(config: EnvConfig):
    """The :class:`hlm_gym.traces.store.Traces` an environment replays (restricted to ``prompts``)."""
    from hlm_gym.traces.store import default_trace_path, load_traces, TraceError

    path = config.trace if config.trace is not None else default_trace_path(config.split)
    if config.trace is None and not path.is_file():
        raise TraceError(f"the shipped trace file {path} is missing; build it with 'hlm-gym traces build "
                         f"--split {config.split}' or pass trace=PATH")
    tr = _TRACE_CACHE.get(str(path))
    if tr is None or tr[0] != _mtime(path):
        tr = (_mtime(path), load_traces(path))
        _TRACE_CACHE[str(path)] = tr
    traces = tr[1]
    if config.prompts is not None:
        bad = [i for i in config.prompts if not 0 <= i < traces.n_prompts]
        if bad:
            raise EnvConfigError(f"bad option prompts: indices {bad} out of range 0..{traces.n_prompts - 1}")
        traces = traces.subset(config.prompts)
    return traces


def _mtime(path) -> float:
    import os

    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


_TRACE_CACHE: dict[str, tuple] = {}
_TABLE_CACHE: dict[tuple, TraceTables] = {}


def cached_tables(traces, topk: tuple[int, ...], key: tuple) -> TraceTables:
    t = _TABLE_CACHE.get(key)
    if t is None:
        if len(_TABLE_CACHE) > 16:
            _TABLE_CACHE.clear()
        t = _TABLE_CACHE[key] = trace_tables(traces, topk)
    return t


@dataclass
class Simulation:
    """Everything an environment instance shares with others of the same options."""

    config: EnvConfig
    scenario: Any
    traces: Any
    tables: TraceTables
    bank: ChannelBank
    cost: CostModel
    latency_ref: float
    topk: tuple[int, ...]
    max_tokens: int
    vocab_size: int


def build_simulation(config: EnvConfig, compressed: bool) -> Simulation:
    scenario = load_env_scenario(config)
    traces = load_env_traces(config)
    V = traces.vocab_size
    topk = resolve_topk(config, traces, compressed)
    key = (traces.path, _mtime(traces.path), config.prompts, topk)
    tables = cached_tables(traces, topk, key)
    dt = config.channel_dt_s or auto_dt(scenario)
    size, points = bank_shape(dt, config.channel_bank_size, config.channel_bank_points)
    bank = channel_bank(scenario, dt, size, points, config.channel_seed, V, SNR_CLIP, LOG_RATE_CLIP)
    cost = CostModel.build(scenario, V, topk, deferred=config.verify == "deferred")
    ref = config.latency_ref_s or reference_latency(scenario, CostModel.build(scenario, V, (V,), False), V)
    return Simulation(config, scenario, traces, tables, bank, cost, float(ref), topk, tables.max_tokens, V)
