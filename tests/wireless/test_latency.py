"""Tests of the per-token account: payload bits, compute, airtime, latency and energy arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hlm_gym.wireless.cost import TokenCost, compute_times, distribution_bits, payload_bits, token_cost, token_id_bits
from hlm_gym.wireless.rate import RateModel
from hlm_gym.wireless.scenarios import load_scenario

COMPUTE = {"compute.t_slm_s": 0.02, "compute.t_uncertainty_sample_s": 0.001, "compute.uncertainty_samples": 10,
           "compute.t_llm_verify_s": 0.05, "compute.t_llm_prefill_a_s": 0.01, "compute.t_llm_prefill_b_s": 0.002,
           "compute.device_power_w": 4.0}


@pytest.fixture
def sc():
    """static-good with round compute numbers."""
    return load_scenario("static-good", **COMPUTE)


def test_payload_formula_full_distribution() -> None:
    p = load_scenario("static-good").payload
    assert token_id_bits(32000) == 15 and p.b_prob + token_id_bits(32000) == 23
    assert float(distribution_bits(p, None, 32000)) == 736000.0  # V (b + ceil log2 V) = 32000 * 23
    assert np.allclose(distribution_bits(p, np.array([0, 10, 32000, 40000]), 32000), [736000, 230, 736000, 736000])
    dense = load_scenario("static-good", **{"payload.full_includes_ids": False}).payload
    assert float(distribution_bits(dense, None, 32000)) == 32000 * 8


def test_payload_bits_with_pending_ids_draft_and_headers() -> None:
    p = load_scenario("static-good", **{"payload.uplink_header_bits": 40, "payload.downlink_header_bits": 24}).payload
    sent = np.array([True, True, False, True])
    pending = np.array([0, 3, 5, 2])
    topk = np.array([0, 16, 16, 1])
    up, dl = payload_bits(p, sent=sent, pending=pending, topk=topk, vocab_size=32000)
    ib = 15
    assert np.allclose(up, [736000 + ib + 40, 16 * 23 + 3 * ib + ib + 40, 0, 23 + 2 * ib + ib + 40])
    assert np.allclose(dl, [ib + 24, ib + 24, 0, ib + 24])
    up2, _ = payload_bits(p, sent=np.array([True]), pending=1, topk=None, vocab_size=49152)  # ceil(log2 49152) = 16
    assert up2[0] == 49152 * (8 + 16) + 16 + 16 + 40
    with pytest.raises(ValueError):
        payload_bits(p, sent=np.array([True]), pending=np.array([-1]))


def test_compute_times(sc) -> None:
    dev, srv = compute_times(sc.compute, sent=np.array([True, True, False]), pending=np.array([0, 4, 4]))
    assert np.allclose(dev, 0.02 + 10 * 0.001)
    assert np.allclose(srv, [0.05, 0.05 + 0.01 + 0.002 * 4, 0.0])
    dev_k, _ = compute_times(sc.compute, sent=np.array([True, True]), uncertainty_samples=np.array([0, 20]))
    assert np.allclose(dev_k, [0.02, 0.02 + 20 * 0.001])


def test_token_cost_arithmetic_from_rates(sc) -> None:
    sent = np.array([True, False, True])
    pending = np.array([2, 1, 0])
    topk = np.array([10, 10, 0])
    up_rate = np.array([1e6, 1e6, 2e6])
    dl_rate = np.array([5e5, 5e5, 1e6])
    c = sc.token_cost(sent=sent, pending=pending, topk=topk, up_rate_bps=up_rate, down_rate_bps=dl_rate)
    assert isinstance(c, TokenCost)
    ib = 15
    up_bits = np.array([10 * 23 + 2 * ib + ib, 0, 736000 + ib])
    dl_bits = np.array([ib, 0, ib])
    assert np.allclose(c.uplink_bits, up_bits) and np.allclose(c.downlink_bits, dl_bits)
    up_air = up_bits / up_rate
    dl_air = dl_bits / dl_rate
    dev = 0.02 + 10 * 0.001
    srv = np.array([0.05 + 0.01 + 0.002 * 2, 0.0, 0.05])
    assert np.allclose(c.uplink_airtime_s, up_air) and np.allclose(c.downlink_airtime_s, dl_air)
    assert np.allclose(c.airtime_s, up_air + dl_air)
    assert np.allclose(c.device_compute_s, dev) and np.allclose(c.server_compute_s, srv)
    assert np.allclose(c.compute_s, dev + srv)
    assert np.allclose(c.latency_s, dev + up_air + srv + dl_air)
    assert c.latency_s[1] == pytest.approx(dev)  # skipped: only the device's compute
    p_tx = 10 ** ((23.0 - 30.0) / 10)  # 23 dBm = 0.1995 W
    assert np.allclose(c.energy_tx_j, p_tx * up_air)
    assert np.allclose(c.energy_compute_j, 4.0 * dev)
    assert np.allclose(c.energy_j, p_tx * up_air + 4.0 * dev)  # default: no rx / idle power
    assert np.all(c.wait_s == 0)


def test_energy_terms(sc) -> None:
    s2 = sc.replace(**{"energy.pa_efficiency": 0.25, "energy.tx_circuit_power_w": 0.5,
                       "energy.rx_power_w": 1.0, "energy.idle_power_w": 0.3})
    sent = np.array([True])
    c = s2.token_cost(sent=sent, pending=0, topk=None, up_airtime_s=np.array([0.1]), up_wait_s=np.array([0.02]),
                      down_airtime_s=np.array([0.01]))
    p_tx = 10 ** ((23.0 - 30.0) / 10) / 0.25 + 0.5
    assert c.energy_tx_j[0] == pytest.approx(p_tx * 0.1)
    assert c.energy_rx_j[0] == pytest.approx(1.0 * 0.01)
    assert c.energy_idle_j[0] == pytest.approx(0.3 * (0.02 + 0.05))
    assert c.energy_j[0] == pytest.approx(c.energy_tx_j[0] + c.energy_rx_j[0] + c.energy_idle_j[0] + 4.0 * 0.03)
    assert c.latency_s[0] == pytest.approx(0.03 + 0.02 + 0.1 + 0.05 + 0.01)


def test_zero_rate_is_charged_the_outage_worst_case() -> None:
    sc = load_scenario("vehicular", **COMPUTE)
    c = sc.token_cost(sent=np.array([True, True]), pending=0, topk=np.array([4, 4]),
                      up_rate_bps=np.array([0.0, 1e6]), down_rate_bps=np.array([1e6, 1e6]))
    fb = RateModel(sc.rate).fallback_rate_bps(sc.link.bandwidth_hz)
    bits = 4 * 23 + 15
    assert c.uplink_wait_s[0] == pytest.approx(sc.rate.max_wait_slots * sc.rate.slot_s)
    assert c.uplink_airtime_s[0] == pytest.approx(bits / fb) and c.uplink_airtime_s[1] == pytest.approx(bits / 1e6)
    assert c.uplink_wait_s[1] == 0.0
    with pytest.raises(ValueError):
        sc.token_cost(sent=np.array([True]), pending=0)  # no rate and no airtime


def test_scalars_broadcast_and_shapes(sc) -> None:
    n = 7
    c = sc.token_cost(sent=np.ones(n, bool), pending=3, topk=8, up_rate_bps=1e7, down_rate_bps=np.full(n, 1e7))
    for v in c.as_dict().values():
        assert v.shape == (n,)


def test_channel_token_cost_composes_on_static_channel(sc) -> None:
    ch = sc.make_channel(4, np.random.default_rng(0))
    sent = np.array([True, False, True, True])
    pending = np.array([0, 2, 5, 1])
    topk = np.array([0, 0, 32, 256])
    c = ch.token_cost(sent=sent, pending=pending, topk=topk)
    ref = sc.token_cost(sent=sent, pending=pending, topk=topk, up_rate_bps=ch.uplink_rate_bps(),
                        down_rate_bps=ch.downlink_rate_bps())
    for k, v in c.as_dict().items():
        assert np.allclose(v, getattr(ref, k)), k
    t_before = ch.time_s
    ch.advance(c.latency_s)
    assert np.allclose(ch.time_s, t_before + c.latency_s)


def test_channel_token_cost_uses_channel_at_upload_time() -> None:
    # block fading with 1 ms blocks: the rate when the upload starts (after the SLM's compute) differs
    sc = load_scenario("static-good", **{**COMPUTE, "fading.model": "block", "fading.coherence_time_s": 0.001})
    ch = sc.make_channel(256, np.random.default_rng(3))
    sent = np.ones(256, bool)
    c = ch.token_cost(sent=sent, pending=0, topk=16)
    dev = c.device_compute_s
    start_rate = ch.rate_model.rate_bps(10 ** (ch.snr_db_at(dev) / 10), sc.link.bandwidth_hz)
    assert np.allclose(c.uplink_airtime_s, c.uplink_bits / start_rate)
    assert not np.allclose(start_rate, ch.uplink_rate_bps())


def test_vocab_too_small() -> None:
    with pytest.raises(ValueError):
        token_id_bits(1)
    assert token_id_bits(2) == 1 and token_id_bits(1024) == 10 and token_id_bits(1025) == 11
    assert math.ceil(math.log2(32000)) == 15
