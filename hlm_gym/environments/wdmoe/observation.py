"""The WDMoE observation layout: names and bounds for ``E`` experts.

=========================  ===============================================================  ==========
index                      meaning                                                          bounds
=========================  ===============================================================  ==========
``0 .. E-1``               the router's gate weight of each expert (sums to 1)              [0, 1]
``E .. 2E-1``              each expert's call time on its device now (downlink, compute,    [0, 100]
                           uplink) / ``latency_ref_s``
``2E``                     MoE layer index / (layers - 1)                                   [0, 1]
``2E+1``                   token position in the sequence / the trace's token limit         [0, 1]
=========================  ===============================================================  ==========
"""

from __future__ import annotations

import numpy as np

__all__ = ["obs_names", "obs_bounds", "TIME_CLIP"]

#: Upper clip of the normalised expert call times (an outage wait can be long).
TIME_CLIP = 100.0


def obs_names(n_experts: int) -> tuple[str, ...]:
    """The observation's entry names for ``n_experts`` experts."""
    return (tuple(f"gate_{e}" for e in range(n_experts)) + tuple(f"time_{e}" for e in range(n_experts))
            + ("layer", "position"))


def obs_bounds(n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` float32 bounds of the observation for ``n_experts`` experts."""
    low = np.zeros(2 * n_experts + 2, dtype=np.float32)
    high = np.ones(2 * n_experts + 2, dtype=np.float32)
    high[n_experts:2 * n_experts] = TIME_CLIP
    return low, high
