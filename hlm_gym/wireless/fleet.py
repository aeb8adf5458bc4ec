"""WDMoE system model: expert calls on wireless devices, as latency and energy on a channel grid.

The base station (BS) runs attention and the gating network of each MoE layer; device ``n`` of
a :class:`Fleet` runs the experts placed on it (``fleet.placement``: expert -> device). Per token
and MoE layer, each SELECTED expert ``e`` on device ``n = placement[e]`` costs one call::

    call_s(n)  = dl_wait + bits / R_dl  +  compute_s(n)  +  ul_wait + bits / R_ul
    compute_s  = call_overhead_s + expert_flops / flops_per_s
    call_j(n)  = P_tx * ul_air + P_rx * dl_air + P_compute * compute_s + P_idle * (dl_wait + ul_wait)

with ``bits = hidden_size * bits_per_element + header_bits`` each way, the rates ``R`` of the
device's own link scenario at that moment, and the waits/airtimes of the scenario's rate model on
the instantaneous-rate path (:func:`hlm_gym.wireless.rate.effective_rates`: an outage (rate 0)
waits the capped ``rate.max_wait_slots * rate.slot_s``, then goes out at the outage-threshold
rate). The sums are :func:`hlm_gym.wireless.cost.account` with no server time. A layer waits for
the slowest selected device::

    layer_s = max over selected devices n of sum_{selected e on n} call_s(n)  +  bs_layer_s

(several selected experts on one device run one after the other; with one expert per device this
is the max over the selected experts). A token's latency is the sum over its MoE layers (the
environment sums). The channel is held for the whole call: every term uses the grid point at
which the call starts (the hybrid-LM bank's convention).

:func:`fleet_bank` samples every device's channel on a grid (``R`` realisations x ``G`` points,
step ``dt``) into a :class:`FleetBank`; device ``n``'s channel is drawn from a generator seeded
by ``SeedSequence(seed, spawn_key=(n,))``, so adding a device leaves the others' channels as
they were. ``python -m hlm_gym.wireless.fleet`` prints the layer-latency table of the bundled
fleets (docs/wdmoe_system_model.md).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from hlm_gym.wireless.bank import auto_dt as scenario_auto_dt
from hlm_gym.wireless.bank import bank_shape
from hlm_gym.wireless.channel import make_channel
from hlm_gym.wireless.cost import account
from hlm_gym.wireless.fleet_scenarios import (
    DeviceCompute,
    DeviceSpec,
    ExpertConfig,
    Fleet,
    FleetError,
    FleetPayload,
    fleet_names,
    load_fleet,
)
from hlm_gym.wireless.rate import RateModel, effective_rates

__all__ = ["Fleet", "DeviceSpec", "DeviceCompute", "FleetPayload", "ExpertConfig", "FleetError", "load_fleet",
           "fleet_names", "FleetBank", "CallCost", "SNR_CLIP", "auto_dt", "device_rng", "call_cost", "fleet_bank",
           "per_expert", "layer_latency", "reference_layer_s", "latency_stats", "summary"]

#: Range [dB] the banks' SNR observations are clipped to (the HybridLM observation's SNR range).
SNR_CLIP = (-50.0, 80.0)


def auto_dt(fleet: Fleet) -> float:
    """Grid step [s] fine enough for the fleet's fastest fading: the smallest
    :func:`hlm_gym.wireless.bank.auto_dt` over its devices' links."""
    return min(scenario_auto_dt(d.link) for d in fleet.devices)


def device_rng(seed: int, device: int) -> np.random.Generator:
    """The generator of device ``device``'s channel in a bank seeded with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(device),)))


@dataclass(frozen=True)
class CallCost:
    """One expert call's parts (arrays of one shape): waits and airtimes [s] each way, compute [s],
    total ``seconds`` and device energy ``joules``."""

    dl_wait_s: np.ndarray
    dl_air_s: np.ndarray
    compute_s: float
    ul_wait_s: np.ndarray
    ul_air_s: np.ndarray
    seconds: np.ndarray
    joules: np.ndarray


def call_cost(device: DeviceSpec, bits: float, compute_s: float, ul_snr_db: np.ndarray,
              dl_snr_db: np.ndarray) -> CallCost:
    """Cost of one expert call on ``device`` at the given uplink/downlink SNRs [dB] (any shape)."""
    sc = device.link
    rm = RateModel(sc.rate)
    with np.errstate(over="ignore"):
        ul_rate = rm.rate_bps(10.0 ** (np.asarray(ul_snr_db, dtype=float) / 10.0), sc.link.bandwidth_hz)
        dl_rate = rm.rate_bps(10.0 ** (np.asarray(dl_snr_db, dtype=float) / 10.0), sc.downlink_bandwidth_hz)
    ul_wait, ul_inv = effective_rates(sc, ul_rate, sc.link.bandwidth_hz)
    dl_wait, dl_inv = effective_rates(sc, dl_rate, sc.downlink_bandwidth_hz)
    ul_air, dl_air = bits * ul_inv, bits * dl_inv
    en = sc.energy
    seconds, _, _, _, _, joules = account(compute_s, 0.0, ul_wait, ul_air, dl_wait, dl_air, device.tx_power_w,
                                          en.rx_power_w, device.compute.power_w, en.idle_power_w)
    return CallCost(dl_wait, dl_air, compute_s, ul_wait, ul_air, seconds, joules)


@dataclass(frozen=True)
class FleetBank:
    """Expert-call latency and energy of every device on a grid of channel realisations.

    Arrays are ``(N, R, G)`` (device, realisation, grid point ``g`` at time ``g * dt``), read-only:
    ``expert_s`` seconds of one expert call started there (downlink wait + airtime, compute,
    uplink wait + airtime), ``expert_j`` the device's energy for it [J], ``ul_snr_db`` /
    ``dl_snr_db`` the SNRs [dB] clipped to :data:`SNR_CLIP` (float32, finite). ``compute_s``:
    (N,) compute part of a call; ``bs_layer_s``: the BS's own compute per layer. Realisation
    ``r`` of all devices together is one joint draw (the devices' channels are independent).
    """

    dt: float
    expert_s: np.ndarray
    expert_j: np.ndarray
    ul_snr_db: np.ndarray
    dl_snr_db: np.ndarray
    bs_layer_s: float
    compute_s: np.ndarray

    @property
    def n_devices(self) -> int:
        """Number of devices N."""
        return self.expert_s.shape[0]

    @property
    def size(self) -> int:
        """Number of realisations R."""
        return self.expert_s.shape[1]

    @property
    def points(self) -> int:
        """Grid points per realisation G."""
        return self.expert_s.shape[2]


_FLEET_BANK_CACHE: dict[tuple, FleetBank] = {}


def fleet_bank(fleet: Fleet, dt: Optional[float] = None, size: Optional[int] = None, points: Optional[int] = None,
               seed: int = 0, snr_clip: tuple[float, float] = SNR_CLIP) -> FleetBank:
    """The (cached) :class:`FleetBank` of a fleet. ``dt`` None: :func:`auto_dt`; ``size``/``points``
    None: :func:`hlm_gym.wireless.bank.bank_shape`'s defaults for ``dt``."""
    dt = float(auto_dt(fleet) if dt is None else dt)
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be > 0, got {dt!r}")
    size, points = bank_shape(dt, size, points)
    if size < 1 or points < 1:
        raise ValueError(f"size and points must be >= 1, got {size}, {points}")
    key = (repr(fleet.to_dict()), dt, size, points, int(seed), tuple(map(float, snr_clip)))
    bank = _FLEET_BANK_CACHE.get(key)
    if bank is not None:
        return bank
    n = fleet.n_devices
    expert_s = np.empty((n, size, points))
    expert_j = np.empty((n, size, points))
    ul_obs = np.empty((n, size, points), dtype=np.float32)
    dl_obs = np.empty((n, size, points), dtype=np.float32)
    compute_s = fleet.compute_s
    times = np.tile(np.arange(points, dtype=float) * dt, size)
    idx = np.repeat(np.arange(size), points)
    lo, hi = snr_clip
    for i, dev in enumerate(fleet.devices):
        ch = make_channel(dev.link, n_links=size, rng=device_rng(seed, i))
        ul_db = ch.snr_db_at(times, idx).reshape(size, points)
        dl_db = ch.snr_db_at(times, idx, downlink=True).reshape(size, points)
        c = call_cost(dev, fleet.payload_bits, float(compute_s[i]), ul_db, dl_db)
        expert_s[i], expert_j[i] = c.seconds, c.joules
        ul_obs[i] = np.clip(np.nan_to_num(ul_db, nan=lo, neginf=lo, posinf=hi), lo, hi)
        dl_obs[i] = np.clip(np.nan_to_num(dl_db, nan=lo, neginf=lo, posinf=hi), lo, hi)
    for a in (expert_s, expert_j, ul_obs, dl_obs, compute_s):
        a.setflags(write=False)
    bank = FleetBank(dt=dt, expert_s=expert_s, expert_j=expert_j, ul_snr_db=ul_obs, dl_snr_db=dl_obs,
                     bs_layer_s=float(fleet.bs_layer_s), compute_s=compute_s)
    if len(_FLEET_BANK_CACHE) > 8:
        _FLEET_BANK_CACHE.clear()
    _FLEET_BANK_CACHE[key] = bank
    return bank


# ------------------------------------------------------------------------------ layer latency
def per_expert(values: np.ndarray, placement: Sequence[int]) -> np.ndarray:
    """Per-device ``values`` (device axis first, e.g. ``bank.expert_s`` (N, R, G) or (N,)) mapped
    to experts through ``placement``, expert axis LAST: (R, G, E) or (E,)."""
    return np.moveaxis(np.asarray(values)[np.asarray(placement, dtype=np.int64)], 0, -1)


def layer_latency(expert_s: np.ndarray, selected: np.ndarray, bs_layer_s: float,
                  placement: Optional[Sequence[int]] = None) -> np.ndarray:
    """Latency [s] of MoE layers: max over the selected devices of their call time, plus ``bs_layer_s``.

    ``expert_s`` (..., E): each expert's call time (its device's, already mapped through the
    placement, e.g. by :func:`per_expert`); ``selected`` (..., E) bool. ``placement`` None: one
    expert per device (max over the selected experts). Given: selected experts sharing a device
    run one after the other (their times add up per device, then the max over devices). An
    empty selection costs ``bs_layer_s``.
    """
    t = np.where(np.asarray(selected, dtype=bool), np.asarray(expert_s, dtype=float), 0.0)
    if placement is not None:
        pl = np.asarray(placement, dtype=np.int64)
        if pl.shape != (t.shape[-1],):
            raise ValueError(f"placement has {pl.size} experts, expert_s has {t.shape[-1]}")
        onehot = (pl[:, None] == np.arange(int(pl.max()) + 1)[None, :]).astype(float)
        t = t @ onehot
    return t.max(axis=-1) + bs_layer_s


def _all_experts_layer_s(fleet: Fleet, bank: FleetBank) -> np.ndarray:
    """(R, G) layer latency with every expert selected (per device: its experts' calls in sequence)."""
    count = np.bincount(fleet.placement_array, minlength=fleet.n_devices).astype(float)
    used = np.flatnonzero(count > 0)
    return (count[used, None, None] * bank.expert_s[used]).max(axis=0) + bank.bs_layer_s


def reference_layer_s(fleet: Fleet, bank: FleetBank) -> float:
    """Normalising latency for rewards: the mean over the bank's grid points and realisations of
    the layer latency with ALL experts selected (the dense layer's cost on this fleet)."""
    return float(_all_experts_layer_s(fleet, bank).mean())


def latency_stats(samples: np.ndarray) -> dict[str, float]:
    """Mean and 50/95/99th percentiles [s] of latency samples."""
    x = np.asarray(samples, dtype=float).ravel()
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {"mean": float(x.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


def summary(fleet: Fleet, bank: FleetBank) -> dict[str, dict[str, float]]:
    """Layer-latency statistics on a bank: ``all`` experts; ``single``: one expert, pooled over
    which one; ``best-single``: the fastest expert's device at each grid point (an oracle)."""
    single = per_expert(bank.expert_s, fleet.placement) + bank.bs_layer_s
    return {"all": latency_stats(_all_experts_layer_s(fleet, bank)),
            "single": latency_stats(single),
            "best-single": latency_stats(single.min(axis=-1))}


def _main(argv: Optional[Sequence[str]] = None) -> None:
    """Print the layer-latency table of fleets (markdown)."""
    ap = argparse.ArgumentParser(prog="python -m hlm_gym.wireless.fleet", description=_main.__doc__)
    ap.add_argument("fleets", nargs="*", help="fleet names or YAML paths (default: every bundled fleet)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dt", type=float, default=None, help="grid step [s] (default: auto_dt)")
    ap.add_argument("--size", type=int, default=None, help="realisations (default: bank_shape)")
    ap.add_argument("--points", type=int, default=None, help="grid points (default: bank_shape)")
    args = ap.parse_args(argv)
    print("| fleet | selection | mean ms | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for name in args.fleets or fleet_names():
        fleet = load_fleet(name)
        bank = fleet_bank(fleet, args.dt, args.size, args.points, args.seed)
        for sel, st in summary(fleet, bank).items():
            print(f"| {fleet.name} | {sel} | " + " | ".join(f"{1e3 * st[k]:.3f}" for k in ("mean", "p50", "p95", "p99"))
                  + " |")
        per_dev = ", ".join(f"{d.name} {1e3 * bank.expert_s[i].mean():.3f}" for i, d in enumerate(fleet.devices))
        print(f"<!-- {fleet.name}: dt {bank.dt * 1e3:.3f} ms, R {bank.size}, G {bank.points}, seed {args.seed}; "
              f"mean call ms per device: {per_dev} -->")


if __name__ == "__main__":  # pragma: no cover
    _main()
