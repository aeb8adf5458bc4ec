"""The ONE step kernel of the WDMoE family, shared by the single, numpy and torch envs.

:class:`WDMoEKernel` holds the state of ``n`` environments as numpy arrays or torch tensors
(:mod:`hlm_gym.environments.backends`; the single env is a batch of one) and advances each by
one decision: which experts of the current (token, MoE layer) to use. It decodes the action's
bits, resolves an empty selection to the gate's top-1 expert, charges the layer's latency (the
slowest selected device plus the base station; experts placed on one device run one after
another, as :func:`hlm_gym.wireless.fleet.layer_latency` has it) and the devices' energy, the quality loss of
the dropped experts (from the trace's Gram matrix), the reward, and moves to the next layer
(and token). Live mode supplies its own quality loss (:meth:`WDMoEKernel.step` takes
``quality``).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from hlm_gym.environments.backends import ALL
from hlm_gym.environments.wdmoe.observation import TIME_CLIP
from hlm_gym.environments.wdmoe.simulation import Simulation

__all__ = ["WDMoEKernel", "STEP_KEYS", "EPISODE_KEYS", "selection_bits"]

STEP_KEYS = ("latency_s", "step_quality_loss", "n_selected", "empty", "energy_j")
EPISODE_KEYS = ("latency_per_token_s", "tokens_per_s", "quality_loss", "experts_per_layer", "empty_rate",
                "energy_j_per_token", "tokens", "time_s")


def selection_bits(actions: np.ndarray, n_experts: int) -> np.ndarray:
    """The bool selection ``(..., E)`` of integer actions: bit ``e`` of the action selects expert ``e``."""
    a = np.asarray(actions, dtype=np.int64)
    return ((a[..., None] >> np.arange(n_experts)) & 1).astype(bool)


class WDMoEKernel:
    """State and dynamics of ``n`` WDMoE environments on an array backend ``xp`` (numpy or torch)."""

    def __init__(self, sim: Simulation, xp: Any, n: int) -> None:
        self.sim, self.xp, self.n = sim, xp, n
        t = sim.tables
        self.n_experts = E = t.n_experts
        self.n_layers = t.n_layers
        self.n_actions = 1 << E
        self.scores = xp.table(t.scores, "f32")
        self.gram = xp.table(t.gram, "f32")
        self.denom = xp.table(t.denom, "f")
        self.layer_of = xp.table(t.layer, "i")
        self.position_of = xp.table(t.position, "i")
        self.starts = xp.table(t.starts, "i")
        self.stops = xp.table(t.stops, "i")
        self.expert_s = xp.table(sim.expert_s, "f")
        self.expert_j = xp.table(sim.expert_j, "f")
        self.shifts = xp.from_host(np.arange(E, dtype=np.int64))
        place = np.asarray(sim.fleet.placement, dtype=np.int64)
        # experts sharing a device run one after another there: (E, N) one-hot to sum them per device
        self.per_device = None if len(set(place.tolist())) == len(place) else \
            xp.table(np.eye(int(place.max()) + 1)[place], "f")
        self.dt, self.points = sim.dt, sim.points
        self.bs, self.ref = sim.bs_layer_s, sim.latency_ref
        self.inv_layers = 1.0 / max(self.n_layers - 1, 1)
        self.inv_tokens = 1.0 / t.max_tokens
        self.risk_weight = xp.zeros(n, "f") + sim.config.risk_weight
        self.risk_target = xp.zeros(n, "f") + sim.config.risk_target
        # state
        self.row = xp.zeros(n, "i")
        self.stop = xp.zeros(n, "i")
        self.real = xp.zeros(n, "i")
        self.phase = xp.zeros(n, "i")
        self.t = xp.zeros(n, "f")
        self.steps = xp.zeros(n, "i")
        self.latency_sum = xp.zeros(n, "f")
        self.energy_sum = xp.zeros(n, "f")
        self.quality_sum = xp.zeros(n, "f")
        self.selected_sum = xp.zeros(n, "i")
        self.empty_sum = xp.zeros(n, "i")

    def set_reward_weights(self, risk_weights: np.ndarray, risk_targets: np.ndarray) -> None:
        """Per-environment ``risk_weight`` and ``risk_target`` (``n`` values each)."""
        self.risk_weight = self.xp.table(np.asarray(risk_weights, dtype=np.float64), "f")
        self.risk_target = self.xp.table(np.asarray(risk_targets, dtype=np.float64), "f")

    # ------------------------------------------------------------------ episodes
    def reset(self, idx: Any, prompt: Any, real: Any, phase: Any) -> None:
        """Start the episodes of environments ``idx`` at (``prompt``, channel ``real``isation, grid ``phase``)."""
        xp = self.xp
        prompt = xp.from_host(prompt)
        self.row[idx] = self.starts[prompt]
        self.stop[idx] = self.stops[prompt]
        self.real[idx] = xp.from_host(real)
        self.phase[idx] = xp.from_host(phase)
        for name in ("t", "latency_sum", "energy_sum", "quality_sum"):
            getattr(self, name)[idx] = 0.0
        for name in ("steps", "selected_sum", "empty_sum"):
            getattr(self, name)[idx] = 0

    def channel_rows(self, idx: Any = ALL) -> Any:
        """Rows of the expert time/energy tables for environments ``idx`` at their current simulated time."""
        g = (self.phase[idx] + self.xp.floor_int(self.t[idx] / self.dt)) % self.points
        return self.real[idx] * self.points + g

    def selection(self, actions: Any, row: Any, scores: Optional[Any] = None) -> tuple[Any, Any]:
        """The bool selection ``(n, E)`` of ``actions`` at trace rows ``row`` and which were empty
        (an empty selection uses the gate's top-1 expert; ``scores``: the gate weights to use
        instead of the trace's, live mode's)."""
        sel = ((actions[:, None] >> self.shifts) & 1) == 1
        empty = ~sel.any(1)
        top1 = (self.scores[row] if scores is None else scores).argmax(1)
        sel = sel | (empty[:, None] & (self.shifts[None, :] == top1[:, None]))
        return sel, empty

    def quality_loss(self, sel: Any, row: Any) -> Any:
        """The dropped experts' error ``u^T G u / denom`` of selections ``sel`` at trace rows ``row``."""
        lib = self.xp.lib
        drop = self.xp.f64(~sel)
        num = lib.einsum("ni,nij,nj->n", drop, self.xp.f64(self.gram[row]), drop)
        return self.xp.maximum(num, 0.0) / self.denom[row]

    def step(self, actions: Any, quality: Optional[Any] = None,
             scores: Optional[Any] = None) -> tuple[Any, Any, dict[str, Any]]:
        """Advance every environment by one decision (``actions``: integer array of ``n``).

        Returns ``(rewards, terminated, info)`` with the :data:`STEP_KEYS` arrays and the
        ``selection`` used (bool ``(n, E)``). ``quality``: the quality loss to charge instead of
        the trace's; ``scores``: the gate weights an empty selection falls back on instead of the
        trace's (live mode)."""
        xp = self.xp
        lib = xp.lib
        row = self.row
        sel, empty = self.selection(actions, row, scores)
        crow = self.channel_rows()
        busy = lib.where(sel, self.expert_s[crow], 0.0)
        if self.per_device is not None:
            busy = busy @ self.per_device
        latency = xp.amax(busy, 1) + self.bs
        energy = lib.where(sel, self.expert_j[crow], 0.0).sum(1)
        q = self.quality_loss(sel, row) if quality is None else quality
        rewards = -(latency / self.ref) - self.risk_weight * (q - self.risk_target)
        n_sel = sel.sum(1)
        self.t += latency
        self.latency_sum += latency
        self.energy_sum += energy
        self.quality_sum += q
        self.selected_sum += n_sel
        self.empty_sum += empty
        self.steps += 1
        self.row = row + 1
        term = self.row >= self.stop
        info = {"latency_s": latency, "step_quality_loss": q, "n_selected": n_sel, "empty": empty, "energy_j": energy,
                "selection": sel}
        return rewards, term, info

    # ------------------------------------------------------------------ observations and metrics
    def observe(self, obs: Any, idx: Any = ALL, row: Optional[Any] = None, scores: Optional[Any] = None) -> None:
        """Write the observations of environments ``idx`` into ``obs`` (``row``: their trace rows,
        default the current ones; an ended episode observes its last row; ``scores``: the gate
        weights to show instead of the trace's, live mode's)."""
        xp = self.xp
        E = self.n_experts
        r = self.row[idx] if row is None else row[idx]
        obs[idx, :E] = self.scores[r] if scores is None else scores
        obs[idx, E:2 * E] = xp.f32(xp.minimum(self.expert_s[self.channel_rows(idx)] / self.ref, TIME_CLIP))
        obs[idx, 2 * E] = xp.f32(xp.f64(self.layer_of[r]) * self.inv_layers)
        obs[idx, 2 * E + 1] = xp.f32(xp.minimum(xp.f64(self.position_of[r]) * self.inv_tokens, 1.0))

    def last_rows(self, term: Any) -> Any:
        """The trace rows to observe after a step: the last row of an ended episode, else the current one."""
        return self.xp.where(term, self.row - 1, self.row)

    def episode_metrics(self, idx: Any) -> dict[str, Any]:
        """The :data:`EPISODE_KEYS` of environments ``idx``, whose episodes end now."""
        xp = self.xp
        steps = xp.f64(self.steps[idx])
        tokens = xp.maximum(self.steps[idx] // self.n_layers, 1)
        tok = xp.f64(tokens)
        time_s = self.latency_sum[idx]
        return {"latency_per_token_s": time_s / tok, "tokens_per_s": tok / xp.maximum(time_s, 1e-12),
                "quality_loss": self.quality_sum[idx] / steps,
                "experts_per_layer": xp.f64(self.selected_sum[idx]) / steps,
                "empty_rate": xp.f64(self.empty_sum[idx]) / steps,
                "energy_j_per_token": self.energy_sum[idx] / tok, "tokens": tokens, "time_s": time_s}
