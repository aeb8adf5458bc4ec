"""Analytic expert-selection rules of the WDMoE family (``hlm_gym/WDMoE-v0``).

Each reads the observation layout of :mod:`hlm_gym.environments.wdmoe.observation` (the gate
weights ``w`` and the experts' current call times ``t``, both per expert) and returns the
selection as the env's action: bit ``e`` set = use expert ``e``.

* :class:`GateTopK`: the router's top-``k`` experts (``k = E``: the dense model).
* :class:`WeightLatencyRatio`: WDMoE's rule: among the gate's top-``k`` candidates, keep the
  experts whose weight-to-latency ratio ``w_e / t_e`` is at least ``threshold`` times the best
  candidate's (so the number kept varies per token and layer: a dynamic ``k``).
* :class:`MyopicSelection`: the channel-aware myopic rule: the subset minimising this step's
  expected cost ``max_{e in S} t_e + risk_weight * q(S)``, with the quality loss estimated from
  the gate weights as if the experts' outputs were orthogonal with norms proportional to the
  weights, ``q(S) = sum_{e not in S} w_e^2 / sum_e w_e^2`` (the env's true loss uses the Gram
  matrix, which a base station does not have before the experts answer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hlm_gym.policies.base import Policy, PolicyError

__all__ = ["GateTopK", "WeightLatencyRatio", "MyopicSelection", "selection_action", "all_subsets"]


def selection_action(selected: np.ndarray) -> np.ndarray:
    """The env action (int64) of bool selections ``(n, E)``: bit ``e`` = expert ``e``."""
    sel = np.asarray(selected, dtype=bool)
    return (sel.astype(np.int64) << np.arange(sel.shape[-1], dtype=np.int64)).sum(-1)


def all_subsets(n_experts: int) -> np.ndarray:
    """Every non-empty selection of ``n_experts`` experts as bool rows ``(2**E - 1, E)``, by action."""
    a = np.arange(1, 1 << n_experts, dtype=np.int64)
    return ((a[:, None] >> np.arange(n_experts)) & 1).astype(bool)


class _SelectionRule(Policy):
    """A rule over ``E`` experts: observations of length ``2E + 2``, actions ``Discrete(2**E)``."""

    def __init__(self, n_experts: int) -> None:
        if not 1 <= int(n_experts) <= 16:
            raise PolicyError(f"a WDMoE rule needs 1..16 experts, got {n_experts}")
        self.n_experts = E = int(n_experts)
        self.n_actions = 1 << E
        self.obs_dim = 2 * E + 2

    def _split(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        E = self.n_experts
        return obs[:, :E], obs[:, E:2 * E]

    def _top(self, w: np.ndarray, k: int) -> np.ndarray:
        """Bool ``(n, E)``: the ``k`` largest gate weights (ties to the lower index)."""
        order = np.argsort(-w, axis=1, kind="stable")[:, :k]
        sel = np.zeros(w.shape, dtype=bool)
        np.put_along_axis(sel, order, True, axis=1)
        return sel


class GateTopK(_SelectionRule):
    """Use the router's ``k`` highest-weighted experts."""

    name = "topk"

    def __init__(self, k: int, n_experts: int) -> None:
        super().__init__(n_experts)
        if not 1 <= int(k) <= self.n_experts:
            raise PolicyError(f"topk needs 1 <= k <= {self.n_experts} experts, got {k}")
        self.k = int(k)

    def _act(self, obs: np.ndarray) -> np.ndarray:
        w, _ = self._split(obs)
        return selection_action(self._top(w, self.k))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k}


class WeightLatencyRatio(_SelectionRule):
    """WDMoE's weight-to-latency ratio rule with a threshold (a dynamic number of experts).

    Candidates are the gate's top-``k`` experts (default all); an expert is kept when its
    ratio ``w_e / t_e`` is at least ``threshold`` times the largest ratio among the candidates.
    ``threshold = 0`` keeps every candidate, ``threshold = 1`` only the best ratio.
    """

    name = "wlr"

    def __init__(self, threshold: float, n_experts: int, k: int | None = None) -> None:
        super().__init__(n_experts)
        if not 0.0 <= float(threshold) <= 1.0:
            raise PolicyError(f"wlr needs a threshold in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.k = self.n_experts if k is None else int(k)
        if not 1 <= self.k <= self.n_experts:
            raise PolicyError(f"wlr needs 1 <= k <= {self.n_experts} experts, got {k}")

    def _act(self, obs: np.ndarray) -> np.ndarray:
        w, t = self._split(obs)
        cand = self._top(w, self.k)
        ratio = np.where(cand, w / np.maximum(t, 1e-9), -np.inf)
        best = ratio.max(axis=1, keepdims=True)
        return selection_action(cand & (ratio >= self.threshold * best))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "k": self.k}


class MyopicSelection(_SelectionRule):
    """The subset minimising ``max_{e in S} t_e + risk_weight * sum_{e not in S} w_e^2 / sum w_e^2``
    (times in units of the env's reference latency, as observed)."""

    name = "myopic"

    def __init__(self, risk_weight: float, n_experts: int) -> None:
        super().__init__(n_experts)
        if not (np.isfinite(risk_weight) and risk_weight >= 0):
            raise PolicyError(f"myopic needs a risk weight >= 0, got {risk_weight}")
        self.risk_weight = float(risk_weight)
        self._subsets = all_subsets(self.n_experts)  # (S, E)
        self._actions = np.arange(1, 1 << self.n_experts, dtype=np.int64)

    def _act(self, obs: np.ndarray) -> np.ndarray:
        w, t = self._split(obs)
        keep = self._subsets
        latency = np.max(np.where(keep[None, :, :], t[:, None, :], 0.0), axis=2)  # (n, S)
        w2 = w * w
        lost = w2 @ (~keep).T.astype(np.float64) / np.maximum(w2.sum(axis=1, keepdims=True), 1e-18)
        return self._actions[np.argmin(latency + self.risk_weight * lost, axis=1)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "risk_weight": self.risk_weight}
