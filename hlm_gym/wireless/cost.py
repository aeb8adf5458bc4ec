"""Per-token cost account of the hybrid loop: bits, airtime, compute, latency and device energy.

Pure and vectorised: functions of arrays (one entry per link) and a scenario; no channel state.
The environment composes it with :class:`hlm_gym.wireless.channel.Channel` (see
:meth:`~hlm_gym.wireless.channel.Channel.token_cost`, which evaluates the transfers on the channel's future
and then calls :func:`token_cost` here with the resulting airtimes).

Per token and link (``sent``: the draft was uploaded for verification; else it was skipped):

* uplink bits (sent only): distribution + ceil(log2 V) * pending skipped ids + draft id + header,
  distribution = V (b_prob + ceil(log2 V)) in full (V b_prob if ``full_includes_ids`` is false),
  or k (b_prob + ceil(log2 V)) when top-k truncated; downlink bits: ceil(log2 V) + header;
* device compute: t_slm + K * t_uncertainty_sample (every token);
* base-station compute (sent only): t_llm_verify + [pending > 0] (a + b * pending), the batched
  catch-up prefill of the pending skipped tokens;
* airtime: given (``up_airtime_s``/``up_wait_s`` from the channel), or bits / rate from the
  instantaneous rates; a zero rate (outage) is then charged the worst case of the channel's
  ``start`` model: ``max_wait_slots`` slots of waiting, then the outage-threshold rate;
* latency = device compute + [sent] (up wait + up airtime + server compute + down wait + down airtime);
* device energy = P_tx,drawn * up airtime + P_compute * device compute + P_rx * down airtime
  + P_idle * (waits + server compute), P_tx,drawn = 10^((tx_dBm - 30)/10) / pa_efficiency + P_circuit.

Propagation delay (microseconds at cell ranges) is neglected.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from hlm_gym.wireless.rate import RateModel, effective_rates

if TYPE_CHECKING:  # pragma: no cover
    from hlm_gym.wireless.scenarios import ComputeConfig, PayloadConfig, Scenario

__all__ = ["TokenCost", "token_id_bits", "distribution_bits", "payload_bits", "compute_times", "token_cost", "CostModel",
           "reference_latency"]


@dataclass(frozen=True)
class TokenCost:
    """Per-link cost of one token; every field is a float array of shape (n,)."""

    latency_s: np.ndarray
    uplink_bits: np.ndarray
    downlink_bits: np.ndarray
    uplink_wait_s: np.ndarray
    uplink_airtime_s: np.ndarray
    downlink_wait_s: np.ndarray
    downlink_airtime_s: np.ndarray
    airtime_s: np.ndarray
    wait_s: np.ndarray
    device_compute_s: np.ndarray
    server_compute_s: np.ndarray
    compute_s: np.ndarray
    energy_tx_j: np.ndarray
    energy_rx_j: np.ndarray
    energy_compute_j: np.ndarray
    energy_idle_j: np.ndarray
    energy_j: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """Fields as a dict of arrays."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def token_id_bits(vocab_size: int) -> int:
    """Bits of one token id: ceil(log2 V)."""
    if vocab_size < 2:
        raise ValueError("vocab_size must be >= 2")
    return int(math.ceil(math.log2(vocab_size)))


def distribution_bits(cfg: "PayloadConfig", topk: "np.ndarray | int | None", vocab_size: int) -> np.ndarray:
    """Bits of the uploaded distribution: k (b + ceil(log2 V)); full when k is None, <= 0 or >= V."""
    ib = token_id_bits(vocab_size)
    full = vocab_size * (cfg.b_prob + ib) if cfg.full_includes_ids else vocab_size * cfg.b_prob
    if topk is None:
        return np.asarray(float(full))
    k = np.asarray(topk)
    if not np.issubdtype(k.dtype, np.integer):
        raise ValueError("topk must be integers")
    is_full = (k <= 0) | (k >= vocab_size)
    return np.where(is_full, float(full), k.astype(float) * (cfg.b_prob + ib))


def _shape(n: Optional[int], *arrays: object) -> tuple[int, ...]:
    if n is not None:
        return (int(n),)
    shape = np.broadcast_shapes(*(np.shape(a) for a in arrays if a is not None))
    return shape if shape else (1,)


def payload_bits(cfg: "PayloadConfig", *, sent: np.ndarray, pending: "np.ndarray | int" = 0,
                 topk: "np.ndarray | int | None" = None, vocab_size: Optional[int] = None,
                 n: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(uplink_bits, downlink_bits), shape (n,); zero where not ``sent``."""
    v = int(vocab_size or cfg.vocab_size)
    shape = _shape(n, sent, pending, topk)
    sent_b = np.broadcast_to(np.asarray(sent, dtype=bool), shape)
    pend = np.broadcast_to(np.asarray(pending), shape)
    if np.any(pend < 0):
        raise ValueError("pending must be >= 0")
    ib = token_id_bits(v)
    up = (distribution_bits(cfg, topk, v) + pend * ib + (ib if cfg.send_draft_id else 0)
          + cfg.uplink_header_bits)
    dl = float(ib + cfg.downlink_header_bits)
    up = np.where(sent_b, np.broadcast_to(up, shape), 0.0).astype(float)
    dl = np.where(sent_b, dl, 0.0)
    return up, dl


def compute_times(cfg: "ComputeConfig", *, sent: np.ndarray, pending: "np.ndarray | int" = 0,
                  uncertainty_samples: "np.ndarray | int | None" = None,
                  n: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(device_compute_s, server_compute_s), shape (n,): SLM + uncertainty; LLM verify + catch-up."""
    shape = _shape(n, sent, pending, uncertainty_samples)
    sent_b = np.broadcast_to(np.asarray(sent, dtype=bool), shape)
    pend = np.broadcast_to(np.asarray(pending, dtype=float), shape)
    k = cfg.uncertainty_samples if uncertainty_samples is None else np.asarray(uncertainty_samples, dtype=float)
    dev = np.broadcast_to(cfg.t_slm_s + k * cfg.t_uncertainty_sample_s, shape).astype(float)
    catch_up = np.where(pend > 0, cfg.t_llm_prefill_a_s + cfg.t_llm_prefill_b_s * pend, 0.0)
    srv = np.where(sent_b, cfg.t_llm_verify_s + catch_up, 0.0)
    return dev, srv


def token_cost(scenario: "Scenario", *, sent: np.ndarray, pending: "np.ndarray | int" = 0,
               topk: "np.ndarray | int | None" = None, vocab_size: Optional[int] = None,
               up_rate_bps: Optional[np.ndarray] = None, down_rate_bps: Optional[np.ndarray] = None,
               up_airtime_s: Optional[np.ndarray] = None, down_airtime_s: Optional[np.ndarray] = None,
               up_wait_s: Optional[np.ndarray] = None, down_wait_s: Optional[np.ndarray] = None,
               uncertainty_samples: "np.ndarray | int | None" = None) -> TokenCost:
    """Per-link cost of one token (see the module docstring for the account).

    ``sent`` (bool), ``pending`` (skipped tokens since the last upload, whose ids ride along and
    whose catch-up the LLM runs), ``topk`` (entries uploaded; None/0/>=V: full distribution),
    ``vocab_size`` (default ``payload.vocab_size``). Airtime from ``up_airtime_s``/``down_airtime_s``
    (+ waits) when given, else from ``up_rate_bps``/``down_rate_bps``. Arrays broadcast to (n,).
    """
    arrays = (sent, pending, topk, up_rate_bps, down_rate_bps, up_airtime_s, down_airtime_s,
              up_wait_s, down_wait_s, uncertainty_samples)
    shape = _shape(None, *arrays)
    up_bits, dl_bits = payload_bits(scenario.payload, sent=sent, pending=pending, topk=topk,
                                    vocab_size=vocab_size, n=shape[0])
    dev_s, srv_s = compute_times(scenario.compute, sent=sent, pending=pending,
                                 uncertainty_samples=uncertainty_samples, n=shape[0])
    sent_b = np.broadcast_to(np.asarray(sent, dtype=bool), shape)
    rm = RateModel(scenario.rate)
    slot_cap = scenario.rate.max_wait_slots * scenario.rate.slot_s

    def airtime(bits: np.ndarray, given: Optional[np.ndarray], wait: Optional[np.ndarray],
                rate: Optional[np.ndarray], bw: float, label: str) -> tuple[np.ndarray, np.ndarray]:
        if given is not None:
            a = np.where(sent_b, np.broadcast_to(np.asarray(given, dtype=float), shape), 0.0)
            w = np.zeros(shape)
            if wait is not None:
                w = np.where(sent_b, np.broadcast_to(np.asarray(wait, dtype=float), shape), 0.0)
            return w, a
        if rate is None:
            if np.any(bits > 0):
                raise ValueError(f"{label}: give a rate (bit/s) or an airtime for links that send")
            return np.zeros(shape), np.zeros(shape)
        r = np.broadcast_to(np.asarray(rate, dtype=float), shape)
        if np.any(r < 0):
            raise ValueError(f"{label} rate must be >= 0")
        outage = (r <= 0) & (bits > 0)
        r_eff = np.where(outage, rm.fallback_rate_bps(bw), np.where(r > 0, r, 1.0))
        return np.where(outage, slot_cap, 0.0), np.where(bits > 0, bits / r_eff, 0.0)

    up_w, up_a = airtime(up_bits, up_airtime_s, up_wait_s, up_rate_bps, scenario.link.bandwidth_hz, "uplink")
    dl_w, dl_a = airtime(dl_bits, down_airtime_s, down_wait_s, down_rate_bps, scenario.downlink_bandwidth_hz,
                         "downlink")
    wait = up_w + dl_w
    air = up_a + dl_a
    latency = dev_s + np.where(sent_b, wait + air + srv_s, 0.0)
    en = scenario.energy
    p_tx = 10.0 ** ((scenario.link.tx_power_dbm - 30.0) / 10.0) / en.pa_efficiency + en.tx_circuit_power_w
    e_tx = p_tx * up_a
    e_rx = en.rx_power_w * dl_a
    e_cmp = scenario.compute.device_power_w * dev_s
    e_idle = en.idle_power_w * (wait + srv_s)
    return TokenCost(
        latency_s=latency, uplink_bits=up_bits, downlink_bits=dl_bits,
        uplink_wait_s=up_w, uplink_airtime_s=up_a, downlink_wait_s=dl_w, downlink_airtime_s=dl_a,
        airtime_s=air, wait_s=wait, device_compute_s=dev_s, server_compute_s=srv_s, compute_s=dev_s + srv_s,
        energy_tx_j=e_tx, energy_rx_j=e_rx, energy_compute_j=e_cmp, energy_idle_j=e_idle,
        energy_j=e_tx + e_rx + e_cmp + e_idle,
    )


@dataclass(frozen=True)
class CostModel:
    """Closed-form per-token account, equal to :func:`hlm_gym.wireless.cost.token_cost` (rate path).

    Send with ``p`` pending tokens and option ``o`` (top-k size) at grid point ``g``::

        up_bits  = bits0[o] + p * pend_bits[o]
        up_air   = up_bits * up_inv[g]
        srv      = t_verify + (p > 0) * (prefill_a + prefill_b * p)
        latency  = dev_s + ((up_wait[g] + dl_wait[g]) + (up_air + dl_air[g]) + srv)
        energy   = p_tx * up_air + p_rx * dl_air[g] + p_dev * dev_s + p_idle * (waits + srv)

    Skip: ``latency = dev_s``, ``energy = p_dev * dev_s``, no bits. ``pend_bits[o]`` is one
    token id per pending token, plus (``verify="deferred"``) one distribution each, since a
    speculative block needs ``q`` at every drafted position.
    """

    dev_s: float
    t_verify: float
    prefill_a: float
    prefill_b: float
    bits0: tuple[float, ...]
    pend_bits: tuple[float, ...]
    dl_bits: float
    p_tx: float
    p_rx: float
    p_dev: float
    p_idle: float
    topk: tuple[int, ...]

    @staticmethod
    def build(scenario, vocab_size: int, topk: tuple[int, ...], deferred: bool) -> "CostModel":
        pay = scenario.payload
        ib = token_id_bits(vocab_size)
        dev, _ = compute_times(scenario.compute, sent=np.array([False]), n=1)
        bits0, pend = [], []
        for k in topk:
            dist = float(distribution_bits(pay, None if k >= vocab_size else np.array([k]), vocab_size).reshape(-1)[0])
            bits0.append(dist + (ib if pay.send_draft_id else 0) + pay.uplink_header_bits)
            pend.append(float(ib) + (dist if deferred else 0.0))
        en = scenario.energy
        p_tx = 10.0 ** ((scenario.link.tx_power_dbm - 30.0) / 10.0) / en.pa_efficiency + en.tx_circuit_power_w
        c = scenario.compute
        return CostModel(dev_s=float(dev[0]), t_verify=float(c.t_llm_verify_s), prefill_a=float(c.t_llm_prefill_a_s),
                         prefill_b=float(c.t_llm_prefill_b_s), bits0=tuple(bits0), pend_bits=tuple(pend),
                         dl_bits=float(ib + pay.downlink_header_bits), p_tx=float(p_tx), p_rx=float(en.rx_power_w),
                         p_dev=float(c.device_power_w), p_idle=float(en.idle_power_w), topk=tuple(topk))

    def send(self, o: int, p: int, up_wait: float, up_inv: float, dl_wait: float, dl_air: float):
        """(latency, uplink bits, energy) of a send with option ``o`` and ``p`` pending tokens (scalars)."""
        return self.send_terms(self.bits0[o], self.pend_bits[o], p, up_wait, up_inv, dl_wait, dl_air,
                               lambda c, a, b: a if c else b)

    def send_terms(self, bits0: Any, pend_bits: Any, p: Any, up_wait: Any, up_inv: Any, dl_wait: Any, dl_air: Any,
                   where: Callable[[Any, Any, Any], Any]):
        """(latency, uplink bits, energy) of sends: THE formula, on scalars or arrays.

        ``bits0``/``pend_bits`` are the chosen options' entries; ``where(cond, a, b)`` is the
        array library's select (numpy's, torch's, or a Python conditional for scalars). The
        same float64 operations in the same order on every backend.
        """
        up_bits = bits0 + p * pend_bits
        up_air = up_bits * up_inv
        srv = self.t_verify + where(p > 0, self.prefill_a + self.prefill_b * p, 0.0)
        waits = up_wait + dl_wait
        lat = self.dev_s + ((waits + (up_air + dl_air)) + srv)
        energy = ((self.p_tx * up_air + self.p_rx * dl_air) + self.p_dev * self.dev_s) + self.p_idle * (waits + srv)
        return lat, up_bits, energy

    @property
    def skip_latency(self) -> float:
        return self.dev_s

    @property
    def skip_energy(self) -> float:
        return self.p_dev * self.dev_s


def reference_latency(scenario, cost: CostModel, vocab_size: int) -> float:
    """Latency of a full-upload send with no pending tokens at the scenario's nominal mean SNR."""
    rm = RateModel(scenario.rate)
    snr = 10.0 ** (scenario.nominal_mean_snr_db / 10.0)
    up = rm.rate_bps(np.array([snr]), scenario.link.bandwidth_hz)
    dl = rm.rate_bps(np.array([snr * 10.0 ** (scenario.downlink_offset_db / 10.0)]), scenario.downlink_bandwidth_hz)
    uw, ui = effective_rates(scenario, up, scenario.link.bandwidth_hz)
    dw, di = effective_rates(scenario, dl, scenario.downlink_bandwidth_hz)
    o = len(cost.topk) - 1  # the full distribution is the last option
    lat, _, _ = cost.send(o, 0, float(uw[0]), float(ui[0]), float(dw[0]), float(cost.dl_bits * di[0]))
    return float(lat)
