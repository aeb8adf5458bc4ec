"""Tests of the WDMoE system model: fleet files, the expert-call bank and the layer latency."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from hlm_gym.errors import HLMGymError
from hlm_gym.wireless import fleet as fleet_mod
from hlm_gym.wireless.bank import auto_dt as scenario_auto_dt
from hlm_gym.wireless.channel import make_channel
from hlm_gym.wireless.fleet import (
    Fleet,
    FleetBank,
    FleetError,
    auto_dt,
    device_rng,
    fleet_bank,
    fleet_names,
    layer_latency,
    load_fleet,
    per_expert,
    reference_layer_s,
    summary,
)
from hlm_gym.wireless.rate import RateModel, effective_rates
from hlm_gym.wireless.scenarios import ScenarioError, load_scenario

SHIPPED = {"close-static", "mixed-vehicular"}
SMALL = dict(dt=1e-3, size=3, points=64)


def base_dict() -> dict:
    """A valid fleet as a plain dict: three static UMi LOS devices."""
    return {
        "description": "test fleet",
        "compute_classes": {"phone": {"flops_per_s": 2e10, "call_overhead_s": 3e-4, "power_w": 5.0}},
        "device_defaults": {"link": "static-good", "compute": "phone"},
        "devices": [{"distance_m": 50}, {"distance_m": 100}, {"distance_m": 150}],
    }


def write(tmp_path: Path, data: dict, name: str = "bad-fleet.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


# ---------------------------------------------------------------------------- loading
def test_shipped_fleets_load() -> None:
    assert SHIPPED <= set(fleet_names())
    for name in fleet_names():
        f = load_fleet(name)
        assert isinstance(f, Fleet) and f.name == name and f.description
        assert f.source == f"wdmoe/{name}.yaml"
        assert f.n_devices == 8 and f.n_experts == 8 and f.placement == tuple(range(8))
        assert f.expert_flops == 3 * 2 * 576 * 192 and f.payload_bits == 576 * 16
        assert f.bs_layer_s > 0 and np.all(f.compute_s > 0)
        assert load_fleet(f.to_dict()) == f  # the resolved dict reads back to the same fleet
    mixed = load_fleet("mixed-vehicular")
    dist = [d.distance_m for d in mixed.devices]
    assert min(dist) == 50 and max(dist) == 300
    assert sum(d.speed_kmh == 60 for d in mixed.devices) == 2
    assert len({d.compute.name for d in mixed.devices}) == 3
    assert all(d.link.link.bandwidth_hz == 12.5e6 for d in mixed.devices)


def test_fleet_files_are_not_link_scenarios() -> None:
    from hlm_gym.wireless.scenarios import list_scenarios
    assert not SHIPPED & set(list_scenarios())


def test_load_from_path_defaults_and_overrides(tmp_path: Path) -> None:
    raw = base_dict()
    raw["devices"][2] = {"name": "car", "link": "vehicular", "distance_m": 120, "speed_kmh": 30,
                         "link_overrides": {"rate.max_wait_slots": 10},
                         "compute": {"class": "phone", "power_w": 7.0}}
    raw["n_experts"] = 5
    f = load_fleet(write(tmp_path, raw, "my-fleet.yaml"))
    assert f.name == "my-fleet" and f.source == "my-fleet.yaml"
    assert [d.name for d in f.devices] == ["dev0", "dev1", "car"]
    car = f.devices[2]
    assert car.distance_m == 120 and car.speed_kmh == 30 and car.link.rate.max_wait_slots == 10
    assert car.compute.power_w == 7.0 and car.compute.flops_per_s == 2e10 and car.compute.name == "phone"
    assert f.devices[0].link == load_scenario("static-good", **{"link.distance_m": 50.0})
    assert f.placement == (0, 1, 2, 0, 1)  # n_experts without placement: e -> e mod N


BAD = [
    # (what to change, the key the message must name)
    (lambda d: d.update(devcies=[]), "devcies"),
    (lambda d: d["devices"][0].update(distance=5), "devices[0].distance"),
    (lambda d: d["devices"][1].update(distance_m=-5), "devices[1].distance_m"),
    (lambda d: d["devices"][1].update(distance_m="far"), "devices[1].distance_m"),
    (lambda d: d["devices"][0].update(speed_kmh=[3]), "devices[0].speed_kmh"),
    (lambda d: d.update(placement=[0, 1, 3]), "placement[2]"),
    (lambda d: d.update(placement=[0, "one"]), "placement[1]"),
    (lambda d: d.update(placement=[0, 1], n_experts=3), "n_experts"),
    (lambda d: d.update(payload={"hidden_size": 576.5}), "payload.hidden_size"),
    (lambda d: d.update(payload={"bits_per_element": 0}), "payload.bits_per_element"),
    (lambda d: d.update(expert={"flops": 1}), "expert.flops"),
    (lambda d: d.update(bs={"layer_s": -1.0}), "bs.layer_s"),
    (lambda d: d["compute_classes"]["phone"].update(flops_per_s=-1), "compute_classes.phone.flops_per_s"),
    (lambda d: d["compute_classes"]["phone"].pop("power_w"), "compute_classes.phone.power_w"),
    (lambda d: d["devices"][0].update(compute="laptop"), "devices[0].compute.class"),
    (lambda d: d["devices"][0].update(compute={"class": "phone", "watts": 1}), "devices[0].compute.watts"),
    (lambda d: d["device_defaults"].update(link="no-such-link"),
     "devices[0].link (no-such-link, from device_defaults)"),
    (lambda d: d["devices"][0].update(link=3), "devices[0].link"),
    (lambda d: d["devices"][0].update(link_overrides={"link.colour": 1}), "devices[0].link (static-good"),
    (lambda d: d["devices"][2].update(link_overrides={"link.colour": 1}), "link.colour: unknown key"),
    (lambda d: d["devices"][0].update(link_overrides=["x"]), "devices[0].link_overrides"),
    (lambda d: d["devices"][0].update(link_overrides=[]), "devices[0].link_overrides"),
    (lambda d: d["devices"][0].update(speed_kmh=2000), "devices[0].speed_kmh"),
    (lambda d: d["devices"][0].update(link="pedestrian"), "devices[0].distance_m"),
    (lambda d: d["device_defaults"].update(name="x"), "device_defaults.name"),
    (lambda d: d.update(devices={"count": 8}), "devices"),
    (lambda d: d.update(devices=[]), "devices"),
    (lambda d: d.pop("devices"), "devices"),
    (lambda d: d["devices"][1].update(name="dev0"), "devices"),
    (lambda d: d.update(description=7), "description"),
]


@pytest.mark.parametrize("change, key", BAD, ids=[k + f"-{i}" for i, (_, k) in enumerate(BAD)])
def test_bad_fleet_file_gives_one_line_naming_file_and_key(tmp_path: Path, change, key: str) -> None:
    raw = copy.deepcopy(base_dict())
    change(raw)
    path = write(tmp_path, raw)
    with pytest.raises(FleetError) as exc:
        load_fleet(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("bad-fleet.yaml: ") and key in msg, msg
    assert isinstance(exc.value, ScenarioError) and isinstance(exc.value, HLMGymError)


def test_bad_value_message_names_value_and_allowed(tmp_path: Path) -> None:
    raw = base_dict()
    raw["devices"][1]["distance_m"] = -5
    with pytest.raises(FleetError, match=r"bad-fleet.yaml: devices\[1\].distance_m: must be > 0, got -5.0$"):
        load_fleet(write(tmp_path, raw))
    raw = base_dict()
    raw["placement"] = [0, 1, 7]
    with pytest.raises(FleetError, match=r"placement\[2\]: device 7 does not exist; allowed: 0..2$"):
        load_fleet(write(tmp_path, raw))


def test_unknown_name_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="unknown fleet 'nope'; available: .*close-static"):
        load_fleet("nope")
    with pytest.raises(FleetError, match="fleet file not found"):
        load_fleet(tmp_path / "missing.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("devices: [\n")
    with pytest.raises(FleetError, match="^broken.yaml: invalid YAML") as exc:
        load_fleet(p)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------- the bank
def test_bank_shapes_types_and_finiteness() -> None:
    for name in SHIPPED:
        f = load_fleet(name)
        b = fleet_bank(f, seed=1, **SMALL)
        assert isinstance(b, FleetBank) and (b.n_devices, b.size, b.points) == (8, 3, 64) and b.dt == 1e-3
        for a, dt in ((b.expert_s, np.float64), (b.expert_j, np.float64), (b.ul_snr_db, np.float32),
                      (b.dl_snr_db, np.float32)):
            assert a.shape == (8, 3, 64) and a.dtype == dt and np.all(np.isfinite(a)) and not a.flags.writeable
        assert np.all(b.expert_s > b.compute_s[:, None, None]) and np.all(b.expert_j > 0)
        assert np.all(b.ul_snr_db >= fleet_mod.SNR_CLIP[0]) and np.all(b.ul_snr_db <= fleet_mod.SNR_CLIP[1])
        assert b.bs_layer_s == f.bs_layer_s
        assert fleet_bank(f, seed=1, **SMALL) is b  # cached


def test_default_grid_from_auto_dt() -> None:
    f = load_fleet("mixed-vehicular")
    assert auto_dt(f) == min(scenario_auto_dt(d.link) for d in f.devices)
    assert auto_dt(f) < 1e-3  # the 60 km/h cars set it
    assert auto_dt(load_fleet("close-static")) > auto_dt(f)


def _twin_fleet(n: int = 3) -> Fleet:
    """n identical devices on a faded, shadowed link."""
    raw = base_dict()
    raw["device_defaults"] = {"link": "vehicular", "compute": "phone"}
    raw["devices"] = [{"distance_m": 150} for _ in range(n)]
    return load_fleet(raw)


def test_device_channels_differ_and_reproduce() -> None:
    f = _twin_fleet()
    b = fleet_bank(f, seed=3, **SMALL)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.array_equal(b.ul_snr_db[i], b.ul_snr_db[j])
    fleet_mod._FLEET_BANK_CACHE.clear()
    again = fleet_bank(f, seed=3, **SMALL)
    assert again is not b
    np.testing.assert_array_equal(again.expert_s, b.expert_s)
    np.testing.assert_array_equal(again.ul_snr_db, b.ul_snr_db)
    assert not np.array_equal(fleet_bank(f, seed=4, **SMALL).ul_snr_db, b.ul_snr_db)
    # device n's channel depends on (seed, n) only: adding devices leaves the others as they were
    bigger = fleet_bank(_twin_fleet(5), seed=3, **SMALL)
    np.testing.assert_array_equal(bigger.expert_s[:3], b.expert_s)


def test_farther_device_has_longer_mean_call() -> None:
    raw = base_dict()
    raw["device_defaults"] = {"link": "vehicular", "compute": "phone"}
    raw["devices"] = [{"distance_m": 50}, {"distance_m": 150}, {"distance_m": 300}]
    b = fleet_bank(load_fleet(raw), dt=1e-3, size=8, points=512, seed=0)
    means = b.expert_s.mean(axis=(1, 2))
    assert means[0] < means[1] < means[2]
    mixed = load_fleet("mixed-vehicular")
    bm = fleet_bank(mixed, seed=0, dt=5e-4, size=8, points=2048)
    by_name = {d.name: bm.expert_s[i].mean() for i, d in enumerate(mixed.devices)}
    assert by_name["car-150"] < by_name["car-250"]


def test_expert_s_is_the_sum_of_its_parts_from_the_channel_layer() -> None:
    f = load_fleet("mixed-vehicular")
    b = fleet_bank(f, seed=5, **SMALL)
    r, g = 2, 37
    bits = 576 * 16
    for n, dev in enumerate(f.devices):
        sc = dev.link
        ch = make_channel(sc, n_links=SMALL["size"], rng=device_rng(5, n))
        t, idx = np.array([g * SMALL["dt"]]), np.array([r])
        ul_db, dl_db = ch.snr_db_at(t, idx), ch.snr_db_at(t, idx, downlink=True)
        rm = RateModel(sc.rate)
        ul_rate = rm.rate_bps(10 ** (ul_db / 10), sc.link.bandwidth_hz)
        dl_rate = rm.rate_bps(10 ** (dl_db / 10), sc.downlink_bandwidth_hz)
        ul_wait, ul_inv = effective_rates(sc, ul_rate, sc.link.bandwidth_hz)
        dl_wait, dl_inv = effective_rates(sc, dl_rate, sc.downlink_bandwidth_hz)
        compute = dev.compute.call_overhead_s + 3 * 2 * 576 * 192 / dev.compute.flops_per_s
        parts = dl_wait[0] + bits * dl_inv[0] + compute + ul_wait[0] + bits * ul_inv[0]
        assert b.expert_s[n, r, g] == pytest.approx(parts, rel=1e-12)
        p_tx = 10 ** ((sc.link.tx_power_dbm - 30) / 10)  # pa_efficiency 1, no circuit/rx/idle power here
        energy = p_tx * bits * ul_inv[0] + dev.compute.power_w * compute
        assert b.expert_j[n, r, g] == pytest.approx(energy, rel=1e-12)
        assert b.ul_snr_db[n, r, g] == pytest.approx(np.clip(ul_db[0], *fleet_mod.SNR_CLIP), abs=1e-4)


def test_static_device_by_hand() -> None:
    """static-good: no fading or shadowing, Shannon capped at 7.4063 bit/s/Hz; both directions capped at 50 m."""
    f = load_fleet(base_dict())
    b = fleet_bank(f, seed=0, **SMALL)
    rate = 20e6 * 7.4063
    expected = 3e-4 + 663552 / 2e10 + 2 * 9216 / rate
    np.testing.assert_allclose(b.expert_s[0], expected, rtol=1e-12)


def test_energy_includes_receive_and_idle_terms() -> None:
    raw = base_dict()
    raw["device_defaults"]["link_overrides"] = {"energy.rx_power_w": 1.0, "energy.idle_power_w": 0.5,
                                                "energy.pa_efficiency": 0.5}
    f = load_fleet(raw)
    b = fleet_bank(f, seed=0, **SMALL)
    air = 9216 / (20e6 * 7.4063)
    compute = 3e-4 + 663552 / 2e10
    p_tx = 10 ** ((23.0 - 30) / 10) / 0.5  # 23 dBm through a 50 % efficient amplifier
    expected = p_tx * air + 1.0 * air + 5.0 * compute  # no waits on this link
    np.testing.assert_allclose(b.expert_j[0], expected, rtol=1e-12)


# ---------------------------------------------------------------------------- layer latency
def test_layer_latency_is_max_over_selected_plus_bs() -> None:
    t = np.array([1.0, 5.0, 2.0, 3.0])
    sel = np.array([True, False, True, True])
    assert layer_latency(t, sel, 0.5) == pytest.approx(3.5)
    assert layer_latency(t, np.ones(4, bool), 0.5) == pytest.approx(5.5)
    assert layer_latency(t, np.zeros(4, bool), 0.5) == pytest.approx(0.5)  # empty selection: the BS alone
    batch_t = np.array([[1.0, 5.0, 2.0, 3.0], [4.0, 1.0, 1.0, 1.0]])
    batch_sel = np.array([[True, False, True, False], [False, True, True, True]])
    np.testing.assert_allclose(layer_latency(batch_t, batch_sel, 0.1), [2.1, 1.1])
    # two experts on one device run one after the other
    placement = [0, 0, 1, 2]
    t_dev = np.array([1.0, 1.0, 1.5, 0.2])
    assert layer_latency(t_dev, np.array([True, True, True, False]), 0.0, placement) == pytest.approx(2.0)
    assert layer_latency(t_dev, np.array([True, False, True, True]), 0.0, placement) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="placement"):
        layer_latency(t_dev, np.ones(4, bool), 0.0, [0, 1])


def test_per_expert_and_reference_layer_s() -> None:
    f = load_fleet("mixed-vehicular")
    b = fleet_bank(f, seed=2, **SMALL)
    pe = per_expert(b.expert_s, f.placement)
    assert pe.shape == (3, 64, 8)
    np.testing.assert_array_equal(pe[..., 5], b.expert_s[5])
    all_sel = layer_latency(pe, np.ones(8, bool), b.bs_layer_s)
    np.testing.assert_allclose(all_sel, b.expert_s.max(axis=0) + b.bs_layer_s)
    assert reference_layer_s(f, b) == pytest.approx(all_sel.mean())
    st = summary(f, b)
    assert st["best-single"]["mean"] <= st["single"]["mean"] <= st["all"]["mean"]
    assert st["all"]["mean"] == pytest.approx(reference_layer_s(f, b))


def test_reference_with_shared_devices() -> None:
    raw = base_dict()
    raw["placement"] = [0, 0, 1, 2, 2, 2]
    f = load_fleet(raw)
    b = fleet_bank(f, seed=0, **SMALL)
    pe = per_expert(b.expert_s, f.placement)
    ref = layer_latency(pe, np.ones(6, bool), b.bs_layer_s, f.placement).mean()
    assert reference_layer_s(f, b) == pytest.approx(ref)
    assert ref == pytest.approx(3 * b.expert_s[2].mean() + b.bs_layer_s)  # device 2 runs 3 calls


def test_main_prints_table(capsys: pytest.CaptureFixture) -> None:
    fleet_mod._main(["close-static", "--size", "2", "--points", "16"])
    out = capsys.readouterr().out
    assert "| close-static | all |" in out and "| close-static | best-single |" in out
