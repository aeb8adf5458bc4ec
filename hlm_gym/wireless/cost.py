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
* airtime: given (``up_airtime_s``/``up_wait_s`` from the channel), or bits x (1 / rate) from the
  instantaneous rates; a zero rate (outage) is then charged the worst case of the channel's
  ``start`` model: ``max_wait_slots`` slots of waiting, then the outage-threshold rate
  (:func:`hlm_gym.wireless.rate.effective_rates`);
* latency = device compute + [sent] (up wait + up airtime + server compute + down wait + down airtime);
* device energy = P_tx,drawn * up airtime + P_compute * device compute + P_rx * down airtime
  + P_idle * (waits + server compute), P_tx,drawn = 10^((tx_dBm - 30)/10) / pa_efficiency + P_circuit.

Propagation delay (microseconds at cell ranges) is neglected.

The latency and energy sums are written once, in :func:`account`; :func:`token_cost` (general,
vectorised) and :class:`CostModel` (the closed form the environments step with, on Python
scalars, numpy arrays or torch tensors) both evaluate it, so on the instantaneous-rate path they
agree bit for bit.
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

__all__ = ["TokenCost", "token_id_bits", "distribution_bits", "upload_bits0", "downlink_bits", "payload_bits",
           "server_compute_s", "compute_times", "tx_power_drawn_w", "account", "token_cost", "CostModel",
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


def upload_bits0(cfg: "PayloadConfig", dist_bits: "np.ndarray | float", vocab_size: int) -> "np.ndarray | float":
    """Uplink bits of a send with no pending tokens: distribution + draft id (if sent) + header."""
    return dist_bits + (token_id_bits(vocab_size) if cfg.send_draft_id else 0) + cfg.uplink_header_bits


def downlink_bits(cfg: "PayloadConfig", vocab_size: int) -> float:
    """Downlink bits of a send: the returned token id plus the downlink header."""
    return float(token_id_bits(vocab_size) + cfg.downlink_header_bits)


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
    up = upload_bits0(cfg, distribution_bits(cfg, topk, v), v) + pend * token_id_bits(v)
    up = np.where(sent_b, np.broadcast_to(up, shape), 0.0).astype(float)
    dl = np.where(sent_b, downlink_bits(cfg, v), 0.0)
    return up, dl


def server_compute_s(t_verify: float, prefill_a: float, prefill_b: float, pending: Any,
                     where: Callable[[Any, Any, Any], Any]) -> Any:
    """Base-station seconds of a send: verification + [pending > 0] (a + b * pending) catch-up prefill.

    On scalars or arrays: ``where(cond, a, b)`` is the array library's select (``np.where``,
    ``torch.where``, or a Python conditional for scalars).
    """
    return t_verify + where(pending > 0, prefill_a + prefill_b * pending, 0.0)


def compute_times(cfg: "ComputeConfig", *, sent: np.ndarray, pending: "np.ndarray | int" = 0,
                  uncertainty_samples: "np.ndarray | int | None" = None,
                  n: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(device_compute_s, server_compute_s), shape (n,): SLM + uncertainty; LLM verify + catch-up."""
    shape = _shape(n, sent, pending, uncertainty_samples)
    sent_b = np.broadcast_to(np.asarray(sent, dtype=bool), shape)
    pend = np.broadcast_to(np.asarray(pending, dtype=float), shape)
    k = cfg.uncertainty_samples if uncertainty_samples is None else np.asarray(uncertainty_samples, dtype=float)
    dev = np.broadcast_to(cfg.t_slm_s + k * cfg.t_uncertainty_sample_s, shape).astype(float)
    srv = server_compute_s(cfg.t_llm_verify_s, cfg.t_llm_prefill_a_s, cfg.t_llm_prefill_b_s, pend, np.where)
    return dev, np.where(sent_b, srv, 0.0)


def tx_power_drawn_w(scenario: "Scenario") -> float:
    """Power the device draws while transmitting: radiated / PA efficiency + circuit power [W]."""
    en = scenario.energy
    return 10.0 ** ((scenario.link.tx_power_dbm - 30.0) / 10.0) / en.pa_efficiency + en.tx_circuit_power_w


def account(dev_s: Any, srv_s: Any, up_wait: Any, up_air: Any, dl_wait: Any, dl_air: Any, p_tx: float,
            p_rx: float, p_dev: float, p_idle: float) -> tuple[Any, Any, Any, Any, Any, Any]:
    """THE latency and energy formula of one token, on scalars or arrays (elementwise).

    Returns ``(latency, energy_tx, energy_rx, energy_compute, energy_idle, energy)``::

        latency = dev_s + ((up_wait + dl_wait) + (up_air + dl_air)) + srv_s
        energy  = p_tx up_air + p_rx dl_air + p_dev dev_s + p_idle ((up_wait + dl_wait) + srv_s)

    (sums in this order). A skip is the same with zero waits, airtimes and server time.
    """
    waits = up_wait + dl_wait
    latency = dev_s + ((waits + (up_air + dl_air)) + srv_s)
    e_tx = p_tx * up_air
    e_rx = p_rx * dl_air
    e_cmp = p_dev * dev_s
    e_idle = p_idle * (waits + srv_s)
    return latency, e_tx, e_rx, e_cmp, e_idle, ((e_tx + e_rx) + e_cmp) + e_idle


def _wait_and_airtime(scenario: "Scenario", bits: np.ndarray, sent: np.ndarray, shape: tuple[int, ...],
                      given: Optional[np.ndarray], wait: Optional[np.ndarray], rate: Optional[np.ndarray],
                      bandwidth_hz: float, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(wait, airtime) of one direction: the given airtimes (and waits), else bits * (1 / effective rate)."""
    if given is not None:
        a = np.where(sent, np.broadcast_to(np.asarray(given, dtype=float), shape), 0.0)
        w = np.zeros(shape)
        if wait is not None:
            w = np.where(sent, np.broadcast_to(np.asarray(wait, dtype=float), shape), 0.0)
        return w, a
    if rate is None:
        if np.any(bits > 0):
            raise ValueError(f"{label}: give a rate (bit/s) or an airtime for links that send")
        return np.zeros(shape), np.zeros(shape)
    r = np.broadcast_to(np.asarray(rate, dtype=float), shape)
    if np.any(r < 0):
        raise ValueError(f"{label} rate must be >= 0")
    w, inv = effective_rates(scenario, r, bandwidth_hz)
    has = bits > 0
    return np.where(has, w, 0.0), np.where(has, bits * inv, 0.0)


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
    (+ waits) when given, else from ``up_rate_bps``/``down_rate_bps`` (bits times the inverse
    effective rate of :func:`hlm_gym.wireless.rate.effective_rates`, as :class:`CostModel`).
    Arrays broadcast to (n,).
    """
    arrays = (sent, pending, topk, up_rate_bps, down_rate_bps, up_airtime_s, down_airtime_s,
              up_wait_s, down_wait_s, uncertainty_samples)
    shape = _shape(None, *arrays)
    up_bits, dl_bits = payload_bits(scenario.payload, sent=sent, pending=pending, topk=topk,
                                    vocab_size=vocab_size, n=shape[0])
    dev_s, srv_s = compute_times(scenario.compute, sent=sent, pending=pending,
                                 uncertainty_samples=uncertainty_samples, n=shape[0])
    sent_b = np.broadcast_to(np.asarray(sent, dtype=bool), shape)
    up_w, up_a = _wait_and_airtime(scenario, up_bits, sent_b, shape, up_airtime_s, up_wait_s, up_rate_bps,
                                   scenario.link.bandwidth_hz, "uplink")
    dl_w, dl_a = _wait_and_airtime(scenario, dl_bits, sent_b, shape, down_airtime_s, down_wait_s, down_rate_bps,
                                   scenario.downlink_bandwidth_hz, "downlink")
    en = scenario.energy
    latency, e_tx, e_rx, e_cmp, e_idle, energy = account(
        dev_s, srv_s, up_w, up_a, dl_w, dl_a, tx_power_drawn_w(scenario), en.rx_power_w,
        scenario.compute.device_power_w, en.idle_power_w)
    return TokenCost(
        latency_s=latency, uplink_bits=up_bits, downlink_bits=dl_bits,
        uplink_wait_s=up_w, uplink_airtime_s=up_a, downlink_wait_s=dl_w, downlink_airtime_s=dl_a,
        airtime_s=up_a + dl_a, wait_s=up_w + dl_w, device_compute_s=dev_s, server_compute_s=srv_s,
        compute_s=dev_s + srv_s, energy_tx_j=e_tx, energy_rx_j=e_rx, energy_compute_j=e_cmp, energy_idle_j=e_idle,
        energy_j=energy,
    )


@dataclass(frozen=True)
class CostModel:
    """Closed-form per-token account, equal to :func:`token_cost` (rate path) bit for bit.

    Send with ``p`` pending tokens and option ``o`` (top-k size) at grid point ``g``
    (:func:`server_compute_s`, then :func:`account`)::

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
    def build(scenario: "Scenario", vocab_size: int, topk: tuple[int, ...], deferred: bool) -> "CostModel":
        """The account of ``scenario`` for upload options ``topk`` (sizes >= ``vocab_size``: the
        full distribution); ``deferred``: every pending token also uploads its distribution."""
        pay = scenario.payload
        ib = token_id_bits(vocab_size)
        dev, _ = compute_times(scenario.compute, sent=np.array([False]), n=1)
        bits0, pend = [], []
        for k in topk:
            dist = float(distribution_bits(pay, None if k >= vocab_size else np.array([k]), vocab_size).reshape(-1)[0])
            bits0.append(upload_bits0(pay, dist, vocab_size))
            pend.append(float(ib) + (dist if deferred else 0.0))
        en = scenario.energy
        c = scenario.compute
        return CostModel(dev_s=float(dev[0]), t_verify=float(c.t_llm_verify_s), prefill_a=float(c.t_llm_prefill_a_s),
                         prefill_b=float(c.t_llm_prefill_b_s), bits0=tuple(bits0), pend_bits=tuple(pend),
                         dl_bits=downlink_bits(pay, vocab_size), p_tx=float(tx_power_drawn_w(scenario)),
                         p_rx=float(en.rx_power_w), p_dev=float(c.device_power_w), p_idle=float(en.idle_power_w),
                         topk=tuple(topk))

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
        srv = server_compute_s(self.t_verify, self.prefill_a, self.prefill_b, p, where)
        lat, _, _, _, _, energy = account(self.dev_s, srv, up_wait, up_air, dl_wait, dl_air, self.p_tx, self.p_rx,
                                          self.p_dev, self.p_idle)
        return lat, up_bits, energy

    @property
    def skip_latency(self) -> float:
        """Latency of a skip: the device's compute."""
        return self.dev_s

    @property
    def skip_energy(self) -> float:
        """Device energy of a skip: compute power times compute time."""
        return self.p_dev * self.dev_s


def reference_latency(scenario: "Scenario", cost: CostModel, vocab_size: int) -> float:
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
