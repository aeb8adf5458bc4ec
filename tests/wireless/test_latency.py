"""Tests of the per-token account: payload bits, compute, airtime, latency and energy arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hlm_gym.wireless.channel import make_channel
from hlm_gym.wireless.cost import (CostModel, TokenCost, account, compute_times, distribution_bits, payload_bits,
                                    token_cost, token_id_bits)
from hlm_gym.wireless.rate import RateModel, effective_rates
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
    c = token_cost(sc, sent=sent, pending=pending, topk=topk, up_rate_bps=up_rate, down_rate_bps=dl_rate)
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
    c = token_cost(s2, sent=sent, pending=0, topk=None, up_airtime_s=np.array([0.1]), up_wait_s=np.array([0.02]),
                   down_airtime_s=np.array([0.01]))
    p_tx = 10 ** ((23.0 - 30.0) / 10) / 0.25 + 0.5
    assert c.energy_tx_j[0] == pytest.approx(p_tx * 0.1)
    assert c.energy_rx_j[0] == pytest.approx(1.0 * 0.01)
    assert c.energy_idle_j[0] == pytest.approx(0.3 * (0.02 + 0.05))
    assert c.energy_j[0] == pytest.approx(c.energy_tx_j[0] + c.energy_rx_j[0] + c.energy_idle_j[0] + 4.0 * 0.03)
    assert c.latency_s[0] == pytest.approx(0.03 + 0.02 + 0.1 + 0.05 + 0.01)


def test_zero_rate_is_charged_the_outage_worst_case() -> None:
    sc = load_scenario("vehicular", **COMPUTE)
    c = token_cost(sc, sent=np.array([True, True]), pending=0, topk=np.array([4, 4]),
                   up_rate_bps=np.array([0.0, 1e6]), down_rate_bps=np.array([1e6, 1e6]))
    fb = RateModel(sc.rate).fallback_rate_bps(sc.link.bandwidth_hz)
    bits = 4 * 23 + 15
    assert c.uplink_wait_s[0] == pytest.approx(sc.rate.max_wait_slots * sc.rate.slot_s)
    assert c.uplink_airtime_s[0] == pytest.approx(bits / fb) and c.uplink_airtime_s[1] == pytest.approx(bits / 1e6)
    assert c.uplink_wait_s[1] == 0.0
    with pytest.raises(ValueError):
        token_cost(sc, sent=np.array([True]), pending=0)  # no rate and no airtime


def test_scalars_broadcast_and_shapes(sc) -> None:
    n = 7
    c = token_cost(sc, sent=np.ones(n, bool), pending=3, topk=8, up_rate_bps=1e7, down_rate_bps=np.full(n, 1e7))
    for v in c.as_dict().values():
        assert v.shape == (n,)


def test_channel_token_cost_composes_on_static_channel(sc) -> None:
    ch = make_channel(sc, 4, np.random.default_rng(0))
    sent = np.array([True, False, True, True])
    pending = np.array([0, 2, 5, 1])
    topk = np.array([0, 0, 32, 256])
    c = ch.token_cost(sent=sent, pending=pending, topk=topk)
    ref = token_cost(sc, sent=sent, pending=pending, topk=topk, up_rate_bps=ch.uplink_rate_bps(),
                     down_rate_bps=ch.downlink_rate_bps())
    for k, v in c.as_dict().items():
        assert np.allclose(v, getattr(ref, k)), k
    t_before = ch.time_s
    ch.advance(c.latency_s)
    assert np.allclose(ch.time_s, t_before + c.latency_s)


def test_channel_token_cost_uses_channel_at_upload_time() -> None:
    # block fading with 1 ms blocks: the rate when the upload starts (after the SLM's compute) differs
    sc = load_scenario("static-good", **{**COMPUTE, "fading.model": "block", "fading.coherence_time_s": 0.001})
    ch = make_channel(sc, 256, np.random.default_rng(3))
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


def test_cost_model_equals_token_cost_bit_for_bit() -> None:
    """CostModel (the environments' closed form) and token_cost's rate path are one formula."""
    sc = load_scenario("vehicular", **{**COMPUTE, "energy.rx_power_w": 0.7, "energy.idle_power_w": 0.2,
                                       "energy.pa_efficiency": 0.4, "payload.uplink_header_bits": 40,
                                       "payload.downlink_header_bits": 24})
    v = 49152
    cm = CostModel.build(sc, v, (64, 512, v), deferred=False)
    up = np.array([0.0, 3.3e5, 1.7e7, 2.2e8, 9.1e8])  # incl. an outage
    dl = np.array([4.1e7, 0.0, 6.3e6, 1e9, 1.3e5])
    uw, ui = effective_rates(sc, up, sc.link.bandwidth_hz)
    dw, di = effective_rates(sc, dl, sc.downlink_bandwidth_hz)
    for o, k in enumerate(cm.topk):
        for pend in (0, 1, 7):
            ref = token_cost(sc, sent=np.ones(len(up), bool), pending=pend, topk=np.full(len(up), k), vocab_size=v,
                             up_rate_bps=up, down_rate_bps=dl)
            for i in range(len(up)):
                lat, bits, en = cm.send(o, pend, float(uw[i]), float(ui[i]), float(dw[i]), float(cm.dl_bits * di[i]))
                assert (lat, bits, en) == (ref.latency_s[i], ref.uplink_bits[i], ref.energy_j[i])
    skip = token_cost(sc, sent=np.zeros(1, bool), vocab_size=v)
    assert (cm.skip_latency, cm.skip_energy) == (skip.latency_s[0], skip.energy_j[0])
    assert skip.uplink_bits[0] == 0.0 and skip.airtime_s[0] == 0.0


def test_send_terms_on_arrays_equals_scalar_send() -> None:
    sc = load_scenario("pedestrian", **COMPUTE)
    cm = CostModel.build(sc, 4096, (8, 4096), deferred=True)
    rng = np.random.default_rng(0)
    n = 64
    o = rng.integers(0, 2, n)
    p = rng.integers(0, 5, n)
    up_wait, up_inv, dl_wait, dl_air = (np.where(rng.random(n) < 0.2, 0.1, 0.0), rng.uniform(1e-8, 1e-6, n),
                                        np.zeros(n), rng.uniform(1e-5, 1e-4, n))
    lat, bits, en = cm.send_terms(np.take(cm.bits0, o), np.take(cm.pend_bits, o), p.astype(float), up_wait, up_inv,
                                  dl_wait, dl_air, np.where)
    for i in range(n):
        assert cm.send(int(o[i]), int(p[i]), up_wait[i], up_inv[i], dl_wait[i], dl_air[i]) == (lat[i], bits[i], en[i])
    assert cm.pend_bits[0] == token_id_bits(4096) + float(distribution_bits(sc.payload, np.array([8]), 4096)[0])


def test_account_sums_its_terms() -> None:
    lat, e_tx, e_rx, e_cmp, e_idle, e = account(0.03, 0.05, 0.01, 0.2, 0.002, 0.004, 0.5, 1.0, 4.0, 0.3)
    assert lat == pytest.approx(0.03 + 0.01 + 0.2 + 0.002 + 0.004 + 0.05)
    assert (e_tx, e_rx, e_cmp) == (0.5 * 0.2, 1.0 * 0.004, 4.0 * 0.03)
    assert e_idle == pytest.approx(0.3 * (0.012 + 0.05)) and e == pytest.approx(e_tx + e_rx + e_cmp + e_idle)
