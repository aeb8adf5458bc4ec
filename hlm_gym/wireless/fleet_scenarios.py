"""WDMoE fleets: the devices that host the experts of a mixture-of-experts, loaded from YAML.

A fleet file ``envs/wdmoe/<name>.yaml`` (installed as ``hlm_gym._envs/wdmoe``) describes the
system model of :mod:`hlm_gym.wireless.fleet`: the hidden-state payload of one expert call,
the expert's FLOPs, the base station's own compute per MoE layer, reusable device compute
classes, and the devices. Each device has its own link, a HybridLM link scenario
(``envs/*.yaml``, by name or path, loaded with :func:`hlm_gym.wireless.scenarios.load_scenario`)
with per-device overrides, and its own compute speed and power::

    description: "..."
    payload: {hidden_size: 576, bits_per_element: 16, header_bits: 0}
    expert: {intermediate_size: 192}          # or flops_per_token: 663552
    bs: {layer_s: 1.0e-4}
    compute_classes:
      phone: {flops_per_s: 2.0e+10, call_overhead_s: 3.0e-4, power_w: 4.0}
    device_defaults:                          # merged into every device entry
      link: pedestrian
      link_overrides: {link.bandwidth_hz: 12.5e+6}
      compute: phone
    devices:
      - {distance_m: 20}
      - {name: car, link: vehicular, distance_m: 150, speed_kmh: 60, compute: {class: phone, power_w: 5}}
    placement: [0, 1]                         # expert e -> device; default e -> e mod N
    n_experts: 2                              # default len(placement), or N

Device keys: ``name`` (default ``dev<i>``), ``link`` (scenario name, path or mapping),
``distance_m`` (sets ``link.distance_m``; the link must use a path-loss budget, not a fixed
``link.mean_snr_db``), ``speed_kmh`` (sets ``fading.speed_kmh``), ``link_overrides`` (dotted
scenario keys, as :func:`load_scenario` takes them; merged over the defaults'), ``compute`` (a
class name, or a mapping with an optional ``class`` and overrides of its fields).

Validation reuses the scenario loader's error class and helpers: an unknown key, a wrong type
or an out-of-range value raises :class:`FleetError` (a :class:`ScenarioError`) with one line
naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from hlm_gym.wireless.cost import tx_power_drawn_w
from hlm_gym.wireless.scenarios import (
    FadingConfig,
    LinkConfig,
    Scenario,
    ScenarioError,
    _build,
    _check_rules,
    _coerce,
    _envs_root,
    _p,
    _read_yaml,
    load_scenario,
)

__all__ = ["FleetError", "FleetPayload", "ExpertConfig", "DeviceCompute", "DeviceSpec", "Fleet", "load_fleet",
           "fleet_names", "FLEET_FOLDER"]

#: Sub-folder of ``envs/`` holding the fleet files.
FLEET_FOLDER = "wdmoe"


class FleetError(ScenarioError):
    """Invalid WDMoE fleet file or value (one-line message naming the file and the key)."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FleetPayload:
    """Bits of one transfer (the hidden state down, the expert's output up, same size):
    ``hidden_size * bits_per_element + header_bits``."""

    hidden_size: int = _p(576, ge=1, le=1_000_000)
    bits_per_element: int = _p(16, ge=1, le=64)
    header_bits: int = _p(0, ge=0, le=10**9)

    @property
    def bits(self) -> int:
        """Bits per transfer, each direction."""
        return self.hidden_size * self.bits_per_element + self.header_bits


@dataclass(frozen=True)
class ExpertConfig:
    """One expert's FLOPs per token: ``flops_per_token``, or when unset the SiLU-gated MLP's
    3 matrices x 2 FLOP per multiply-add x hidden_size x ``intermediate_size``."""

    intermediate_size: int = _p(192, ge=1, le=10_000_000)
    flops_per_token: Optional[float] = _p(None, gt=0)


@dataclass(frozen=True)
class BSConfig:
    """The base station's own compute per MoE layer (attention + gating), seconds."""

    layer_s: float = _p(1.0e-4, ge=0, le=10.0)


@dataclass(frozen=True)
class DeviceCompute:
    """A device's compute for one expert call: ``call_overhead_s + flops / flops_per_s`` seconds
    at ``power_w`` watts. ``name``: the compute class it came from (or ``inline``)."""

    flops_per_s: float = _p(gt=0, le=1e18)
    call_overhead_s: float = _p(ge=0, le=10.0)
    power_w: float = _p(ge=0, le=10_000)
    name: str = _p("inline")
    description: str = _p("")

    def seconds(self, flops: float) -> float:
        """Seconds of one call of ``flops`` FLOPs."""
        return self.call_overhead_s + flops / self.flops_per_s


@dataclass(frozen=True)
class DeviceSpec:
    """One device: its name, its link scenario (per-device overrides applied) and its compute."""

    name: str
    link: Scenario
    compute: DeviceCompute

    @property
    def distance_m(self) -> float:
        """Distance to the base station [m] (``link.distance_m``)."""
        return self.link.link.distance_m

    @property
    def speed_kmh(self) -> float:
        """Speed [km/h] (``fading.speed_kmh``)."""
        return self.link.fading.speed_kmh

    @property
    def tx_power_w(self) -> float:
        """Power drawn while transmitting [W] (the link's tx power, PA efficiency and circuit power)."""
        return tx_power_drawn_w(self.link)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the link as a full scenario mapping); :func:`load_fleet` reads it back."""
        return {"name": self.name, "link": self.link.to_dict(), "compute": dataclasses.asdict(self.compute)}


@dataclass(frozen=True)
class Fleet:
    """A validated WDMoE fleet: devices, expert placement, payload, expert FLOPs, BS compute."""

    name: str
    description: str
    devices: tuple[DeviceSpec, ...]
    placement: tuple[int, ...]
    payload: FleetPayload
    expert: ExpertConfig
    bs_layer_s: float
    source: str = field(default="<dict>", compare=False)

    @property
    def n_devices(self) -> int:
        """Number of devices N."""
        return len(self.devices)

    @property
    def n_experts(self) -> int:
        """Number of experts E (= len(placement))."""
        return len(self.placement)

    @property
    def payload_bits(self) -> int:
        """Bits of one transfer (downlink hidden state or uplink output)."""
        return self.payload.bits

    @property
    def expert_flops(self) -> float:
        """FLOPs of one expert call for one token."""
        if self.expert.flops_per_token is not None:
            return float(self.expert.flops_per_token)
        return 6.0 * self.payload.hidden_size * self.expert.intermediate_size

    @property
    def compute_s(self) -> np.ndarray:
        """(N,) seconds of one expert call's compute on each device."""
        return np.array([d.compute.seconds(self.expert_flops) for d in self.devices])

    @property
    def placement_array(self) -> np.ndarray:
        """(E,) int64: the device of each expert."""
        return np.asarray(self.placement, dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-serialisable) of the resolved fleet, without ``source``."""
        return {
            "name": self.name,
            "description": self.description,
            "payload": dataclasses.asdict(self.payload),
            "expert": dataclasses.asdict(self.expert),
            "bs": {"layer_s": self.bs_layer_s},
            "devices": [d.to_dict() for d in self.devices],
            "placement": list(self.placement),
        }


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
_TOP_KEYS = ("name", "description", "payload", "expert", "bs", "compute_classes", "device_defaults", "devices",
             "placement", "n_experts")
_DEVICE_KEYS = ("name", "link", "distance_m", "speed_kmh", "link_overrides", "compute")
_RULES_DISTANCE = {f.name: f for f in dataclasses.fields(LinkConfig)}["distance_m"].metadata
_RULES_SPEED = {f.name: f for f in dataclasses.fields(FadingConfig)}["speed_kmh"].metadata


def fleet_names() -> list[str]:
    """Names of the bundled fleets (``envs/wdmoe/*.yaml``), sorted."""
    folder = _envs_root().joinpath(FLEET_FOLDER)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.is_file() and p.name.endswith(".yaml"))


def _mapping(value: Any, source: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FleetError(f"{source}: {key}: must be a mapping, got {type(value).__name__} {value!r}")
    return value


def _unknown(raw: Mapping[str, Any], allowed: tuple[str, ...], source: str, prefix: str) -> None:
    for k in raw:
        if k not in allowed:
            raise FleetError(f"{source}: {prefix}{k}: unknown key; allowed keys: {', '.join(allowed)}")


def _section(cls: type, raw: Mapping[str, Any], key: str, source: str) -> Any:
    """Build section ``key`` of ``raw`` as dataclass ``cls``, strictly (the scenario loader's rules)."""
    return _build(cls, raw.get(key, {}), source, key + ".")


def _compute_classes(raw: Any, source: str) -> dict[str, DeviceCompute]:
    out: dict[str, DeviceCompute] = {}
    for cname, spec in _mapping(raw, source, "compute_classes").items():
        if not isinstance(cname, str):
            raise FleetError(f"{source}: compute_classes: class names must be strings, got {cname!r}")
        spec = dict(_mapping(spec, source, f"compute_classes.{cname}"))
        spec.setdefault("name", cname)
        out[cname] = _section(DeviceCompute, {f"compute_classes.{cname}": spec}, f"compute_classes.{cname}", source)
    return out


def _device_compute(value: Any, classes: Mapping[str, DeviceCompute], source: str, key: str) -> DeviceCompute:
    allowed = ", ".join(classes) or "(none defined in compute_classes)"
    if isinstance(value, str):
        value = {"class": value}
    spec = dict(_mapping(value, source, key))
    base: dict[str, Any] = {}
    if "class" in spec:
        cname = spec.pop("class")
        if not isinstance(cname, str) or cname not in classes:
            raise FleetError(f"{source}: {key}.class: unknown compute class {cname!r}; allowed: {allowed}")
        base = dataclasses.asdict(classes[cname])
    return _section(DeviceCompute, {key: {**base, **spec}}, key, source)


def _resolve_link(ref: Any, base_dir: Optional[Path], source: str, key: str) -> Any:
    """A link reference as load_scenario takes it (a path relative to the fleet file's folder resolved)."""
    if isinstance(ref, Mapping):
        return dict(ref)
    if not isinstance(ref, str):
        raise FleetError(f"{source}: {key}: must be a scenario name, path or mapping, got {type(ref).__name__} {ref!r}")
    looks_like_path = ref.endswith((".yaml", ".yml")) or os.sep in ref
    if looks_like_path and base_dir is not None and not Path(ref).is_absolute() and (base_dir / ref).is_file():
        return str(base_dir / ref)
    return ref


def _device(i: int, entry: Any, defaults: Mapping[str, Any], classes: Mapping[str, DeviceCompute],
            base_dir: Optional[Path], source: str) -> DeviceSpec:
    entry = _mapping(entry, source, f"devices[{i}]")
    _unknown(entry, _DEVICE_KEYS, source, f"devices[{i}].")
    merged = {**defaults, **entry}

    def where(k: str) -> str:
        return f"devices[{i}].{k}" if k in entry else f"device_defaults.{k}"

    name = merged.get("name", f"dev{i}")
    _coerce(name, str, source, where("name"))
    if "link" not in merged:
        raise FleetError(f"{source}: devices[{i}].link: missing required key (or set device_defaults.link)")
    link_ref = _resolve_link(merged["link"], base_dir, source, where("link"))
    overrides: dict[str, Any] = {}  # the defaults' link_overrides, then the device's own
    parts = ((defaults.get("link_overrides"), "device_defaults"), (entry.get("link_overrides"), f"devices[{i}]"))
    for part, label in parts:
        for dk, dv in _mapping({} if part is None else part, source, f"{label}.link_overrides").items():
            if not isinstance(dk, str):
                raise FleetError(f"{source}: {label}.link_overrides: keys must be dotted strings, got {dk!r}")
            overrides[dk] = dv
    if merged.get("distance_m") is not None:
        d = _coerce(merged["distance_m"], float, source, where("distance_m"))
        _check_rules(d, _RULES_DISTANCE, source, where("distance_m"))
        overrides["link.distance_m"] = d
    if merged.get("speed_kmh") is not None:
        v = _coerce(merged["speed_kmh"], float, source, where("speed_kmh"))
        _check_rules(v, _RULES_SPEED, source, where("speed_kmh"))
        overrides["fading.speed_kmh"] = v
    try:
        sc = load_scenario(link_ref, **overrides)
    except ScenarioError as exc:
        ref = link_ref if isinstance(link_ref, str) else "a mapping"
        origin = "" if "link" in entry else ", from device_defaults"
        raise FleetError(f"{source}: devices[{i}].link ({ref}{origin}): {exc}") from None
    if "link.distance_m" in overrides:
        if sc.link.mean_snr_db is not None:
            raise FleetError(f"{source}: {where('distance_m')}: link {sc.name!r} sets link.mean_snr_db "
                             f"({sc.link.mean_snr_db:g} dB), so a distance has no effect; allowed: a path-loss link "
                             "(static-good, static-cell-edge, vehicular) or link_overrides {link.mean_snr_db: null}")
        if sc.link.distance_max_m is not None:
            raise FleetError(f"{source}: {where('distance_m')}: link {sc.name!r} draws the distance up to "
                             f"link.distance_max_m = {sc.link.distance_max_m:g} m; set link_overrides "
                             "{link.distance_max_m: null} to fix it")
    if "compute" not in merged:
        raise FleetError(f"{source}: devices[{i}].compute: missing required key (or set device_defaults.compute)")
    compute = _device_compute(merged["compute"], classes, source, where("compute"))
    return DeviceSpec(name=name, link=sc, compute=compute)


def _placement(raw: Mapping[str, Any], n_devices: int, source: str) -> tuple[int, ...]:
    n_experts = raw.get("n_experts")
    if n_experts is not None:
        n_experts = _coerce(n_experts, int, source, "n_experts")
        _check_rules(n_experts, {"ge": 1, "le": 1_000_000}, source, "n_experts")
    if raw.get("placement") is None:
        return tuple(e % n_devices for e in range(n_experts if n_experts is not None else n_devices))
    pl = raw["placement"]
    if not isinstance(pl, (list, tuple)) or not pl:
        raise FleetError(f"{source}: placement: must be a non-empty list of device indices (expert -> device), "
                         f"got {pl!r}")
    out = []
    for e, d in enumerate(pl):
        d = _coerce(d, int, source, f"placement[{e}]")
        if not 0 <= d < n_devices:
            raise FleetError(f"{source}: placement[{e}]: device {d} does not exist; allowed: 0..{n_devices - 1}")
        out.append(d)
    if n_experts is not None and n_experts != len(out):
        raise FleetError(f"{source}: n_experts: {n_experts} but placement lists {len(out)} experts")
    return tuple(out)


def _fleet_from_raw(raw: Mapping[str, Any], source: str, default_name: str, base_dir: Optional[Path]) -> Fleet:
    """Validate and build a fleet; the shared helpers' ScenarioErrors come out as FleetError."""
    try:
        return _validated(raw, source, default_name, base_dir)
    except FleetError:
        raise
    except ScenarioError as exc:
        raise FleetError(str(exc)) from None


def _validated(raw: Mapping[str, Any], source: str, default_name: str, base_dir: Optional[Path]) -> Fleet:
    _unknown(raw, _TOP_KEYS, source, "")
    name = _coerce(raw.get("name", default_name), str, source, "name")
    description = _coerce(raw.get("description", ""), str, source, "description")
    payload = _section(FleetPayload, raw, "payload", source)
    expert = _section(ExpertConfig, raw, "expert", source)
    bs = _section(BSConfig, raw, "bs", source)
    classes = _compute_classes(raw.get("compute_classes", {}), source)
    defaults = _mapping(raw.get("device_defaults", {}), source, "device_defaults")
    _unknown(defaults, tuple(k for k in _DEVICE_KEYS if k != "name"), source, "device_defaults.")
    devices = raw.get("devices")
    if devices is None:
        raise FleetError(f"{source}: devices: missing required key")
    if not isinstance(devices, (list, tuple)) or not devices:
        raise FleetError(f"{source}: devices: must be a non-empty list of device mappings, got {devices!r}")
    specs = tuple(_device(i, d, defaults, classes, base_dir, source) for i, d in enumerate(devices))
    names = [d.name for d in specs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise FleetError(f"{source}: devices: name {dup!r} is used twice; device names must be unique")
    placement = _placement(raw, len(specs), source)
    return Fleet(name=name, description=description, devices=specs, placement=placement, payload=payload,
                 expert=expert, bs_layer_s=bs.layer_s, source=source)


def _read(text: str, source: str) -> dict[str, Any]:
    """The YAML mapping of a fleet file (the scenario loader's reader; its errors as FleetError)."""
    try:
        return _read_yaml(text, source)
    except ScenarioError as exc:
        raise FleetError(str(exc)) from None


def load_fleet(spec: "str | os.PathLike[str] | Mapping[str, Any] | Fleet") -> Fleet:
    """Load and validate a fleet: a bundled name (:func:`fleet_names`, ``envs/wdmoe/<name>.yaml``),
    a YAML path, a mapping (e.g. :meth:`Fleet.to_dict`) or a :class:`Fleet`. Raises
    :class:`FleetError` (or :class:`ScenarioError`) with a one-line message on bad input."""
    if isinstance(spec, Fleet):
        return spec
    if isinstance(spec, Mapping):
        return _fleet_from_raw(spec, "<dict>", "custom", None)
    if not isinstance(spec, (str, os.PathLike)):
        raise FleetError(f"<spec>: cannot load a fleet from {type(spec).__name__}")
    s = os.fspath(spec)
    if s.endswith((".yaml", ".yml")) or os.sep in s or isinstance(spec, os.PathLike):
        path = Path(s)
        if not path.is_file():
            raise FleetError(f"{s}: fleet file not found")
        return _fleet_from_raw(_read(path.read_text(), path.name), path.name, path.stem, path.parent)
    res = _envs_root().joinpath(FLEET_FOLDER, f"{s}.yaml")
    if not res.is_file():
        raise FleetError(f"unknown fleet {s!r}; available: {', '.join(fleet_names()) or '(none)'}")
    source = f"{FLEET_FOLDER}/{s}.yaml"
    return _fleet_from_raw(_read(res.read_text(), source), source, s, None)
