"""The observation layout shared by the environments and the policies.

Every HybridLM environment observes a ``Box(float32)`` vector with these entries (the
environment's docstring repeats this table with the exact bounds):

=====  ===============  =====================================================  ============
index  name             meaning                                                bounds
=====  ===============  =====================================================  ============
0      ``u``            U-HLM temperature-perturbation uncertainty             [0, 1]
1      ``entropy``      SLM entropy divided by ``log V``                       [0, 1]
2      ``top1_prob``    SLM top-1 probability                                  [0, 1]
3      ``margin``       SLM top-1 minus top-2 probability                      [0, 1]
4      ``saturation``   cosine of the SLM's last two hidden states             [-1, 1]
5      ``snr_db``       current uplink SNR in dB (clipped)                     [-50, 80]
6      ``log_rate``     ``log10(1 + uplink rate in bit/s)`` (estimate)         [0, 12]
7      ``pending``      skipped tokens since the last send, / ``max_tokens``    [0, 1]
8      ``position``     position in the response, / ``max_tokens``             [0, 1]
9      ``skip_frac``    fraction of the last ``skip_window`` tokens skipped    [0, 1]
=====  ===============  =====================================================  ============
"""

from __future__ import annotations

from typing import Any

import numpy as np

OBS_NAMES: tuple[str, ...] = ("u", "entropy", "top1_prob", "margin", "saturation", "snr_db", "log_rate",
                              "pending", "position", "skip_frac")
OBS_INDEX: dict[str, int] = {name: i for i, name in enumerate(OBS_NAMES)}
OBS_LOW = np.array([0, 0, 0, 0, -1, -50, 0, 0, 0, 0], dtype=np.float32)
OBS_HIGH = np.array([1, 1, 1, 1, 1, 80, 12, 1, 1, 1], dtype=np.float32)

SKIP, SEND = 0, 1


def write_observation(xp: Any, obs: Any, idx: Any, signals: Any, snr_db: Any, log_rate: Any, pending: Any,
                      position: Any, skip_count: Any, max_tokens: float, window: int) -> None:
    """Write observations (the layout above) of environments ``idx`` into ``obs``: the ONE builder.

    ``signals`` are the five draft signals (entropy already divided by ``log V``), ``snr_db``
    and ``log_rate`` the clipped channel values, ``pending``/``position``/``skip_count`` counts;
    ``xp`` is an array backend of :mod:`hlm_gym.environments.backends`.
    """
    xp.put_row(obs, idx, signals, (snr_db, log_rate, xp.minimum(xp.f64(pending) / max_tokens, 1.0),
                                   xp.minimum(xp.f64(position) / max_tokens, 1.0), xp.f64(skip_count) / window))
