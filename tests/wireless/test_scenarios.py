"""Tests of scenario loading and strict validation."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hlm_gym.wireless.channel import make_channel
from hlm_gym.wireless.scenarios import (
    Scenario,
    ScenarioError,
    list_presets,
    list_scenarios,
    load_scenario,
)

REQUIRED = {"static-good", "static-cell-edge", "pedestrian", "vehicular", "cell-edge-fast-fading"}


def base_dict() -> dict:
    """A valid scenario as a plain dict."""
    return {
        "description": "test",
        "link": {"mean_snr_db": 10.0, "bandwidth_hz": 20e6},
        "fading": {"model": "jakes", "distribution": "rician", "k_factor": 3.0, "speed_kmh": 3.0},
        "rate": {"model": "shannon"},
        "compute": "phone-1b-edge-gpu-7b",
    }


def write(tmp_path: Path, data: dict, name: str = "bad-scenario.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def set_in(d: dict, dotted: str, value: object) -> dict:
    d = copy.deepcopy(d)
    cur = d
    parts = dotted.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return d


def test_every_bundled_scenario_loads() -> None:
    names = list_scenarios()
    assert REQUIRED <= set(names)
    for name in names:
        sc = load_scenario(name)
        assert isinstance(sc, Scenario) and sc.name == name and sc.source == f"{name}.yaml"
        assert sc.description and sc.compute.t_llm_verify_s > 0 and sc.compute.preset
    assert {"phone-1b-edge-gpu-7b", "measured-local"} <= set(list_presets("compute"))
    assert "nr-cqi-table1" in list_presets("mcs")
    assert load_scenario("vehicular").rate.mcs_table[0] == (-6.7, 0.1523)


def test_bundled_scenarios_make_channels() -> None:
    for name in list_scenarios():
        sc = load_scenario(name)
        if sc.fading.model == "sionna":
            continue  # needs the optional extra; covered in test_channel
        ch = make_channel(sc, 3, np.random.default_rng(0))
        ch.advance(0.05)
        assert np.all(np.isfinite(ch.snr_db())) and np.all(ch.uplink_rate_bps() >= 0)


def test_static_and_fading_scenarios_have_the_advertised_character() -> None:
    assert load_scenario("static-good").nominal_mean_snr_db > 20
    assert load_scenario("static-cell-edge").nominal_mean_snr_db < 3
    assert load_scenario("pedestrian").fading.speed_kmh == 3.0
    assert load_scenario("vehicular").fading.speed_kmh == 60.0
    cef = load_scenario("cell-edge-fast-fading")
    assert cef.rate.model == "mcs" and cef.nominal_mean_snr_db < cef.rate.mcs_table[0][0] + 10


def test_unknown_scenario_name_lists_available() -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario("pedestrain")
    msg = str(e.value)
    assert "pedestrain" in msg and "pedestrian" in msg and "static-good" in msg and "\n" not in msg


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path: Path) -> None:
    p = write(tmp_path, set_in(base_dict(), "fading.speed", 3.0))
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert "bad-scenario.yaml" in msg and "fading.speed" in msg and "speed_kmh" in msg and "\n" not in msg
    p = write(tmp_path, {**base_dict(), "chanel": {}})
    with pytest.raises(ScenarioError, match=r"bad-scenario\.yaml: chanel: unknown key.*link"):
        load_scenario(str(p))


BAD = [
    ("link.bandwidth_hz", -1.0),
    ("link.bandwidth_hz", 0.0),
    ("link.bandwidth_hz", "wide"),
    ("downlink.bandwidth_hz", -5e6),
    ("fading.speed_kmh", -3.0),
    ("fading.k_factor", -0.5),
    ("fading.model", "rayleighh"),
    ("fading.n_sinusoids", 3.5),
    ("fading.n_sinusoids", True),
    ("energy.rx_power_w", -0.1),
    ("energy.idle_power_w", -1.0),
    ("energy.pa_efficiency", 1.5),
    ("energy.pa_efficiency", 0.0),
    ("compute.device_power_w", -2.0),
    ("compute.t_slm_s", -0.01),
    ("payload.b_prob", 0),
    ("payload.b_prob", 65),
    ("payload.vocab_size", 1),
    ("payload.uplink_header_bits", -8),
    ("payload.full_includes_ids", "yes"),
    ("link.mean_snr_db", None),  # fine alone, but with a 3GPP model + tiny distance it fails below
    ("link.pathloss.model", "umi"),
    ("link.shadowing_std_db", -1.0),
    ("rate.gap_db", -3.0),
    ("rate.mcs_table", [[0.0, 1.0], [-1.0, 2.0]]),
    ("rate.mcs_table", [[0.0]]),
    ("fading.sionna.delay_spread_s", -1e-7),
    ("fading.sionna.tdl_model", "Z"),
]


@pytest.mark.parametrize("key,value", BAD)
def test_bad_values_name_file_and_key(tmp_path: Path, key: str, value: object) -> None:
    if key.startswith("compute."):
        data = {**base_dict(), "compute": {"preset": "phone-1b-edge-gpu-7b", key.split(".", 1)[1]: value}}
    else:
        data = set_in(base_dict(), key, value)
    if key == "link.mean_snr_db":
        data = set_in(data, "link.pathloss.model", "umi-nlos")
        data = set_in(data, "link.distance_m", 2.0)
        key = "link.distance_m"
    if key == "rate.mcs_table":
        data = set_in(data, "rate.model", "mcs")
    p = write(tmp_path, data)
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert "bad-scenario.yaml" in msg and key in msg and "\n" not in msg, msg
    assert isinstance(e.value, ValueError)


def test_bad_dotted_override_is_named() -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario("pedestrian", **{"fading.speed_kmh": -1.0})
    assert "pedestrian.yaml" in str(e.value) and "fading.speed_kmh" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        load_scenario("pedestrian", **{"link.snr": 3.0})
    assert "link.snr" in str(e.value) and "mean_snr_db" in str(e.value)


def test_overrides_dict_and_replace() -> None:
    sc = load_scenario("pedestrian", **{"link.mean_snr_db": 3.0}, fading={"speed_kmh": 30.0})
    assert sc.link.mean_snr_db == 3.0 and sc.fading.speed_kmh == 30.0 and sc.fading.k_factor == pytest.approx(7.943)
    sc2 = sc.replace(**{"compute.t_slm_s": 0.011})
    assert sc2.compute.t_slm_s == 0.011 and sc2.compute.t_llm_verify_s == sc.compute.t_llm_verify_s
    sc3 = sc.replace(compute="measured-local")
    assert sc3.compute.preset == "measured-local" and sc3.compute.t_llm_verify_s == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        sc.link = None  # type: ignore[misc]
    d = load_scenario(base_dict())
    assert d.source == "<dict>" and d.fading.k_factor == 3.0
    assert load_scenario(d.to_dict()) == d


def test_yaml_numeric_text_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "num.yaml"
    p.write_text("link:\n  mean_snr_db: 5\n  bandwidth_hz: 20e6\nfading:\n  model: none\n")
    assert load_scenario(p).link.bandwidth_hz == 20e6


def test_compute_preset_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="unknown compute preset 'phone-9b'.*phone-1b-edge-gpu-7b"):
        load_scenario(set_in(base_dict(), "compute", "phone-9b"))
    pre = tmp_path / "my-compute.yaml"
    pre.write_text("t_slm_s: 0.01\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(set_in(base_dict(), "compute", str(pre)))
    assert "my-compute.yaml" in str(e.value) and "missing required key" in str(e.value)
    pre.write_text(yaml.safe_dump({"t_slm_s": 0.01, "t_uncertainty_sample_s": 0.0, "uncertainty_samples": 20,
                                   "t_llm_verify_s": 0.02, "t_llm_prefill_a_s": 0.0, "t_llm_prefill_b_s": 0.001,
                                   "device_power_w": -3.0}))
    with pytest.raises(ScenarioError) as e:
        load_scenario(set_in(base_dict(), "compute", str(pre)))
    assert "my-compute.yaml" in str(e.value) and "device_power_w" in str(e.value)


def test_cross_field_checks(tmp_path: Path) -> None:
    cases = [
        (set_in(base_dict(), "link.mean_snr_db_max", 5.0), "link.mean_snr_db_max"),
        (set_in(set_in(base_dict(), "fading.model", "block"), "fading.speed_kmh", 0.0), "fading.coherence_time_s"),
        (set_in(base_dict(), "rate.model", "mcs"), "rate.mcs_table"),
        (set_in(set_in(base_dict(), "fading.distribution", "rayleigh"), "fading.k_factor", 2.0), "fading.k_factor"),
    ]
    for data, key in cases:
        with pytest.raises(ScenarioError) as e:
            load_scenario(write(tmp_path, data))
        assert "bad-scenario.yaml" in str(e.value) and key in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("link: [1, 2\n")
    with pytest.raises(ScenarioError, match="broken.yaml: invalid YAML"):
        load_scenario(p)


def test_sionna_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from hlm_gym.wireless import fading

    fading._generate_tdl_table.cache_clear()
    for mod in [m for m in sys.modules if m == "sionna" or m.startswith("sionna.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "sionna", None)  # makes `import sionna...` fail
    sc = load_scenario("pedestrian-tdl-a", **{"fading.sionna.seed": 12345})
    with pytest.raises(ImportError, match=r"pip install 'hlm-gym\[sionna\]'"):
        make_channel(sc, 2, np.random.default_rng(0))
