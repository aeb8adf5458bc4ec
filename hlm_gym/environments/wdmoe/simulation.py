"""What the WDMoE environments of the same options share (no Gymnasium types here).

:func:`build_simulation` gathers, for a :class:`~hlm_gym.environments.wdmoe.config.WDMoEConfig`:
the fleet (:mod:`hlm_gym.wireless.fleet`: devices, placement, base-station time), its channel
bank (per device, ``R`` realisations on a time grid; the channel at simulated time ``t`` is the
grid value at ``floor(t / dt)``, cyclic over a realisation), the WDMoE trace
(:mod:`hlm_gym.traces.wdmoe`) as :class:`MoETables` and the reward's reference latency.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from hlm_gym.environments.episodes import EpisodeDraw
from hlm_gym.environments.options import EnvConfigError
from hlm_gym.environments.wdmoe.config import WDMoEConfig

__all__ = ["MoETables", "Simulation", "build_simulation", "moe_tables", "episode_draw", "EPS"]

#: Floor of a quality loss denominator (a layer whose MLP output is ~0 loses nothing).
EPS = 1e-12


@dataclass
class MoETables:
    """Per-row arrays of a WDMoE trace (rows ordered prompt, token, layer; layer fastest).

    ``scores`` ``(R, E)`` float32 gate weights; ``gram`` ``(R, E, E)`` float32 Gram matrix of
    the experts' outputs; ``denom`` ``(R,)`` float64 the quality loss's denominator
    (``|y_all|^2`` or ``|h|^2``, at least :data:`EPS`); ``layer``/``position`` ``(R,)`` int64;
    ``starts``/``stops`` ``(P,)`` row range of each prompt.
    """

    scores: np.ndarray
    gram: np.ndarray
    denom: np.ndarray
    layer: np.ndarray
    position: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    n_layers: int
    n_experts: int
    max_tokens: int


def moe_tables(traces: Any, quality: str) -> MoETables:
    """:class:`MoETables` of a :class:`hlm_gym.traces.wdmoe.WDMoETraces` for a ``quality`` measure."""
    L, E = int(traces.n_layers), int(traces.n_experts)
    gram = np.ascontiguousarray(traces.gram, dtype=np.float32)
    if quality == "mlp":
        denom = gram.astype(np.float64).sum(axis=(1, 2))
    else:
        denom = np.asarray(traces.residual_norm2, dtype=np.float64)
    offsets = np.asarray(traces.prompt_offsets, dtype=np.int64)
    rows = len(gram)
    tok_lengths = np.diff(offsets) // L
    position = np.concatenate([np.repeat(np.arange(n), L) for n in tok_lengths]) if rows else np.zeros(0, np.int64)
    max_tokens = int(traces.meta.get("max_tokens", int(tok_lengths.max()) if len(tok_lengths) else 1))
    return MoETables(scores=np.ascontiguousarray(traces.scores, dtype=np.float32), gram=gram,
                     denom=np.maximum(denom, EPS), layer=np.tile(np.arange(L, dtype=np.int64), rows // L),
                     position=position.astype(np.int64), starts=offsets[:-1].copy(), stops=offsets[1:].copy(),
                     n_layers=L, n_experts=E, max_tokens=max(max_tokens, 1))


@dataclass
class Simulation:
    """Everything a WDMoE environment instance shares with others of the same options.

    ``expert_s``/``expert_j``: ``(R * G, E)`` float64, the call time (s) and device energy (J)
    of each *expert* (its device's, through the fleet's placement) at each grid point of each
    realisation (row ``r * G + g``); ``bs_layer_s``: the base station's time per layer;
    ``latency_ref``: the reward's latency normalisation (s per layer).
    """

    config: WDMoEConfig
    traces: Any
    tables: MoETables
    fleet: Any
    expert_s: np.ndarray
    expert_j: np.ndarray
    dt: float
    bank_size: int
    points: int
    bs_layer_s: float
    latency_ref: float

    @property
    def n_experts(self) -> int:
        """Experts per MoE layer."""
        return self.tables.n_experts

    @property
    def n_prompts(self) -> int:
        """Prompts (episodes' sequences) of the trace."""
        return len(self.tables.starts)


def load_env_traces(config: WDMoEConfig) -> Any:
    """The WDMoE trace an environment replays (``trace`` or the shipped ``split``), restricted to ``prompts``."""
    traces = read_traces(config.trace if config.trace is not None else config.split)
    if config.prompts is not None:
        n = len(traces.prompt_offsets) - 1
        bad = [i for i in config.prompts if not 0 <= i < n]
        if bad:
            raise EnvConfigError(f"bad option prompts: indices {bad} out of range 0..{n - 1}")
        traces = subset_traces(traces, config.prompts)
    return traces


def read_traces(source: str) -> Any:
    """The WDMoE trace of a file path or a shipped split name (:func:`hlm_gym.traces.wdmoe.load_wdmoe_traces`)."""
    from hlm_gym.traces.wdmoe import load_wdmoe_traces

    return load_wdmoe_traces(source)


def subset_traces(traces: Any, prompts: tuple[int, ...]) -> Any:
    """The trace restricted to ``prompts`` (in that order), as the same dataclass."""
    import dataclasses

    off = np.asarray(traces.prompt_offsets, dtype=np.int64)
    L = int(traces.n_layers)
    rows = np.concatenate([np.arange(off[p], off[p + 1]) for p in prompts])
    toks = np.concatenate([np.arange(off[p] // L, off[p + 1] // L) for p in prompts])
    lengths = np.array([off[p + 1] - off[p] for p in prompts], dtype=np.int64)
    meta = dict(traces.meta)
    for key in ("prompt_ids", "prompt_token_ids"):  # per-prompt metadata follows the prompts
        if isinstance(meta.get(key), list) and len(meta[key]) == len(off) - 1:
            meta[key] = [meta[key][p] for p in prompts]
    return dataclasses.replace(traces, scores=traces.scores[rows], gram=traces.gram[rows],
                               residual_norm2=traces.residual_norm2[rows], token_ids=traces.token_ids[toks],
                               prompt_offsets=np.concatenate([[0], np.cumsum(lengths)]), meta=meta)


def build_simulation(config: WDMoEConfig, traces: Optional[Any] = None, fleet: Optional[Any] = None) -> Simulation:
    """The :class:`Simulation` of ``config`` (``traces``/``fleet``: use these instead of loading them)."""
    from hlm_gym.wireless.bank import bank_shape
    from hlm_gym.wireless.fleet import auto_dt, fleet_bank, load_fleet, reference_layer_s

    if fleet is None:
        fleet = load_fleet(config.scenario)
    if traces is None:
        traces = load_env_traces(config)
    tables = moe_tables(traces, config.quality)
    if fleet.n_experts != tables.n_experts:
        where = config.trace if config.trace is not None else f"the shipped {config.split} trace"
        raise EnvConfigError(f"bad option scenario={os.fspath(config.scenario)!r}: its placement maps "
                             f"{fleet.n_experts} experts, but {where} has {tables.n_experts} experts per layer")
    dt = config.channel_dt_s or auto_dt(fleet)
    size, points = bank_shape(dt, config.channel_bank_size, config.channel_bank_points)
    bank = fleet_bank(fleet, dt, size, points, config.channel_seed)
    place = np.asarray(fleet.placement, dtype=np.int64)
    expert_s = np.ascontiguousarray(bank.expert_s[place].reshape(len(place), -1).T, dtype=np.float64)
    expert_j = np.ascontiguousarray(bank.expert_j[place].reshape(len(place), -1).T, dtype=np.float64)
    ref = config.latency_ref_s or reference_layer_s(fleet, bank)
    return Simulation(config=config, traces=traces, tables=tables, fleet=fleet, expert_s=expert_s,
                      expert_j=expert_j, dt=float(bank.dt), bank_size=int(bank.size), points=int(bank.points),
                      bs_layer_s=float(bank.bs_layer_s), latency_ref=float(ref))


def episode_draw(sim: Simulation) -> EpisodeDraw:
    """How the envs of ``sim`` pick an episode's prompt, channel realisation and start phase."""
    return EpisodeDraw(sim.n_prompts, sim.bank_size, sim.points)
