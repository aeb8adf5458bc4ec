"""How the environments of every family start episodes: :class:`EpisodeDraw`, :func:`sub_env_seeds`.

One uniform integer per episode start picks the prompt, the channel realisation and the start
phase, identically in the single and the batched envs of a family, so they start identical
episodes from identical generators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EpisodeDraw", "sub_env_seeds"]


def sub_env_seeds(seed, n: int) -> list:
    """Per-sub-env seeds of a batched reset: ``seed + i`` like gymnasium's vector envs, a list as is."""
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"expected {n} seeds, got {len(seeds)}")
    return seeds


@dataclass(frozen=True)
class EpisodeDraw:
    """How one uniform integer picks an episode's prompt, channel realisation and start phase.

    Every environment (single, numpy batched, torch batched) draws ``d`` uniform in
    ``0..total - 1`` from its generator and splits it with :meth:`split`, so the three
    implementations start identical episodes from identical generators.
    """

    n_prompts: int
    bank_size: int
    points: int

    @classmethod
    def of(cls, sim: Any) -> "EpisodeDraw":
        """The draw of a simulation with ``traces.n_prompts`` prompts and a channel ``bank``."""
        return cls(int(sim.traces.n_prompts), int(sim.bank.size), int(sim.bank.points))

    @property
    def total(self) -> int:
        return self.n_prompts * self.bank_size * self.points

    def split(self, draw):
        """``(prompt, bank row, start phase)`` of a draw (a Python int or an integer array)."""
        prompt, rest = divmod(draw, self.bank_size * self.points)
        brow, j0 = divmod(rest, self.points)
        return prompt, brow, j0

    def draw(self, gens: list, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One draw from each generator ``gens[i]`` for ``i`` in ``idx``, split (int64 arrays)."""
        draws = np.fromiter((gens[i].integers(0, self.total) for i in idx), dtype=np.int64, count=len(idx))
        return self.split(draws)

