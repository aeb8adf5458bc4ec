"""Named wireless/compute scenarios: one frozen, nested, validated configuration object.

A :class:`Scenario` gathers everything the channel, rate and per-token cost models need:

* ``link``      large-scale uplink budget (path loss, shadowing, tx power, noise) or a mean SNR;
* ``downlink``  the downlink's bandwidth and SNR (an offset from the uplink, or its own budget);
* ``fading``    small-scale fading (none / block / sum-of-sinusoids Jakes / Sionna TDL table);
* ``rate``      Shannon rate with a gap, or an MCS table with outage, and the airtime model;
* ``payload``   bits per uploaded distribution / token id / header;
* ``compute``   SLM, uncertainty and LLM step times (from a preset file in ``envs/compute/``);
* ``energy``    device radio power terms.

The dataclass field defaults below are the ONE place holding defaults. Compute numbers and
MCS tables are data, kept only in preset files (``envs/compute/*.yaml``, ``envs/mcs/*.yaml``).

Usage::

    from hlm_gym.wireless.scenarios import load_scenario, list_scenarios, Scenario, ScenarioError
    from hlm_gym.wireless.channel import make_channel
    from hlm_gym.wireless.cost import token_cost
    sc = load_scenario("pedestrian", **{"link.mean_snr_db": 10.0})   # dotted overrides
    ch = make_channel(sc, n_links=1024, rng=np.random.default_rng(0))
    ch.advance(0.08); ch.snr_db(); ch.uplink_rate_bps()
    cost = token_cost(sc, sent=..., pending=..., topk=..., up_rate_bps=..., down_rate_bps=...)

Within the wireless layer this module imports only :mod:`hlm_gym.wireless.propagation`: the
channel, rate and cost models take a scenario, never the other way round.

``load_scenario`` accepts a bundled name (``list_scenarios()``), a YAML path, a dict or a
``Scenario``. Validation is strict: unknown names and keys, wrong types and out-of-range
values raise :class:`ScenarioError` (a ``ValueError``) with a one-line message naming the
file and the dotted key. YAML 1.1 reads ``20e6`` as text; numeric text is accepted for
float fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import yaml

from hlm_gym.errors import HLMGymError
from hlm_gym.wireless.propagation import SPEED_OF_LIGHT, default_shadowing_std_db, mean_snr_db_from_budget

__all__ = [
    "ScenarioError",
    "PathLossConfig",
    "LinkConfig",
    "DownlinkConfig",
    "SionnaConfig",
    "FadingConfig",
    "RateConfig",
    "PayloadConfig",
    "ComputeConfig",
    "EnergyConfig",
    "Scenario",
    "load_scenario",
    "list_scenarios",
    "list_presets",
    "DEFAULT_COMPUTE_PRESET",
]

#: Compute preset used when a scenario file has no ``compute`` section (a file in envs/compute/).
DEFAULT_COMPUTE_PRESET = "phone-1b-edge-gpu-7b"
_PRESET_KINDS = ("compute", "mcs")


class ScenarioError(HLMGymError, ValueError):
    """Invalid scenario: unknown name/key, wrong type or value out of range (one-line message)."""


def _p(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """Dataclass field with validation rules (ge, gt, le, lt, choices) stored in its metadata."""
    if default is dataclasses.MISSING:
        return field(metadata=rules)
    return field(default=default, metadata=rules)


# --------------------------------------------------------------------------------------------
# Configuration sections
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathLossConfig:
    """Path-loss model. ``log-distance``: PL(d) = ref_loss_db + 10*exponent*log10(d/ref_distance_m)
    (ref_loss_db None = free space at ref_distance_m and the carrier). ``umi-los``, ``umi-nlos``,
    ``uma-los``, ``uma-nlos``: 3GPP TR 38.901 Table 7.4.1-1 (d in [10 m, 5 km])."""

    model: str = _p("log-distance", choices=("log-distance", "umi-los", "umi-nlos", "uma-los", "uma-nlos"))
    ref_loss_db: Optional[float] = _p(None)
    ref_distance_m: float = _p(1.0, gt=0)
    exponent: float = _p(3.0, gt=0, le=10)
    h_bs_m: float = _p(10.0, gt=1.0, le=200)
    h_ut_m: float = _p(1.5, gt=1.0, le=22.5)


@dataclass(frozen=True)
class LinkConfig:
    """Large-scale uplink (device -> base station): mean SNR from a link budget, or given directly.

    Mean SNR [dB] = tx_power_dbm + antenna_gain_db - PL(distance) - (noise_density_dbm_hz
    + 10 log10(bandwidth_hz) + noise_figure_db). If ``mean_snr_db`` is set it replaces the budget
    (uniform in [mean_snr_db, mean_snr_db_max] per link when the maximum is set). Distance is
    uniform over the annulus area [distance_m, distance_max_m] when the maximum is set. Log-normal
    shadowing (std ``shadowing_std_db``; None = the 3GPP value of the path-loss model, 0 for
    log-distance) is drawn per link at reset; with ``shadowing_decorrelation_m`` it evolves with
    the distance travelled (exponential autocorrelation, Gudmundson)."""

    carrier_hz: float = _p(3.5e9, gt=0)
    bandwidth_hz: float = _p(20e6, gt=0)
    tx_power_dbm: float = _p(23.0, ge=-50, le=60)
    noise_density_dbm_hz: float = _p(-174.0, ge=-250, le=0)
    noise_figure_db: float = _p(5.0, ge=0, le=30)
    antenna_gain_db: float = _p(0.0, ge=-50, le=50)
    mean_snr_db: Optional[float] = _p(None, ge=-100, le=100)
    mean_snr_db_max: Optional[float] = _p(None, ge=-100, le=100)
    distance_m: float = _p(100.0, gt=0)
    distance_max_m: Optional[float] = _p(None, gt=0)
    pathloss: PathLossConfig = field(default_factory=PathLossConfig)
    shadowing_std_db: Optional[float] = _p(None, ge=0, le=30)
    shadowing_decorrelation_m: Optional[float] = _p(None, gt=0)


@dataclass(frozen=True)
class DownlinkConfig:
    """Downlink (base station -> device). Mean SNR = uplink mean SNR (incl. shadowing) + offset,
    offset = ``snr_offset_db`` (mode ``offset``) or the link-budget difference (mode ``budget``):
    (tx_power_dbm - link.tx_power_dbm) - (noise_figure_db - link.noise_figure_db)
    - 10 log10(bandwidth / link.bandwidth) (reciprocal path loss). Small-scale fading is the
    uplink's (``shared``, TDD reciprocity) or an independent realisation (``independent``)."""

    mode: str = _p("offset", choices=("offset", "budget"))
    snr_offset_db: float = _p(0.0, ge=-100, le=100)
    bandwidth_hz: Optional[float] = _p(None, gt=0)
    tx_power_dbm: float = _p(44.0, ge=-50, le=80)
    noise_figure_db: float = _p(9.0, ge=0, le=30)
    fading: str = _p("shared", choices=("shared", "independent"))


@dataclass(frozen=True)
class SionnaConfig:
    """Sionna TR 38.901 TDL backend: a table of flat power gains generated once, indexed by time.

    ``reduction``: ``subcarrier`` = |H(f0)|^2 with H(f) = sum_l a_l exp(-j 2 pi f tau_l) at
    f0 = ``subcarrier_hz`` from the carrier (flat fading as one subcarrier sees it; Rayleigh for
    the NLOS profiles); ``wideband`` = sum_l |a_l|^2 (the band-average power gain). Both have
    mean 1 (Sionna normalises the power delay profile)."""

    tdl_model: str = _p("A", choices=("A", "B", "C", "D", "E", "A10", "A30", "B100", "C60", "C300", "D10", "D30"))
    delay_spread_s: float = _p(100e-9, gt=0, le=1e-5)
    sample_period_s: Optional[float] = _p(None, gt=0, le=1.0)
    duration_s: float = _p(10.0, gt=0)
    n_realisations: int = _p(32, ge=1, le=100_000)
    reduction: str = _p("subcarrier", choices=("subcarrier", "wideband"))
    subcarrier_hz: float = _p(0.0)
    n_sinusoids: int = _p(20, ge=1, le=1024)
    seed: int = _p(0, ge=0)
    table_file: Optional[str] = _p(None)


@dataclass(frozen=True)
class FadingConfig:
    """Small-scale fading. ``none``: |h|^2 = 1. ``block``: i.i.d. gain per block of
    ``coherence_time_s`` (None = 0.423 / f_D). ``jakes``: continuous Clarke/Jakes fading by a
    sum of ``n_sinusoids`` sinusoids (autocorrelation J0(2 pi f_D tau), f_D = v f_c / c).
    ``sionna``: a Sionna TDL table (see :class:`SionnaConfig`; distribution/k_factor then come
    from the TDL profile). ``distribution`` ``rician`` adds a line-of-sight term with linear
    K factor ``k_factor`` arriving at ``los_aoa_deg`` to the direction of motion."""

    model: str = _p("none", choices=("none", "block", "jakes", "sionna"))
    distribution: str = _p("rayleigh", choices=("rayleigh", "rician"))
    k_factor: float = _p(0.0, ge=0, le=1e6)
    speed_kmh: float = _p(0.0, ge=0, le=1000)
    coherence_time_s: Optional[float] = _p(None, gt=0)
    n_sinusoids: int = _p(16, ge=1, le=1024)
    los_aoa_deg: float = _p(45.572996, ge=-360, le=360)
    sionna: SionnaConfig = field(default_factory=SionnaConfig)


@dataclass(frozen=True)
class RateConfig:
    """Rate and airtime model, shared by uplink and downlink (each with its own bandwidth).

    ``shannon``: B log2(1 + SNR / Gamma), Gamma = ``gap_db``, capped at
    ``max_spectral_efficiency``, 0 below ``outage_snr_db`` (if set). ``mcs``: B * efficiency of
    the highest ``mcs_table`` row (min SNR dB, bit/s/Hz) whose threshold the SNR reaches; 0
    (outage) below the lowest row. ``mcs_table`` may name a preset in ``envs/mcs/``.

    Airtime (see :meth:`hlm_gym.wireless.channel.Channel.uplink_transfer`): ``start`` = bits / rate at the
    moment transmission starts; while the channel is in outage the transfer waits in slots of
    ``slot_s``, at most ``max_wait_slots``, then goes out at the outage-threshold rate.
    ``integrate`` = the rate is re-evaluated every slot and the bits delivered are summed
    (outage slots count as waiting), at most ``max_integration_steps`` slots."""

    model: str = _p("shannon", choices=("shannon", "mcs"))
    gap_db: float = _p(0.0, ge=0, le=30)
    max_spectral_efficiency: Optional[float] = _p(None, gt=0, le=100)
    outage_snr_db: Optional[float] = _p(None, ge=-100, le=100)
    mcs_table: tuple[tuple[float, float], ...] = _p(())
    airtime: str = _p("start", choices=("start", "integrate"))
    slot_s: float = _p(0.5e-3, gt=0, le=1.0)
    max_wait_slots: int = _p(200, ge=0, le=10_000_000)
    max_integration_steps: int = _p(20_000, ge=1, le=100_000_000)


@dataclass(frozen=True)
class PayloadConfig:
    """Bits per upload: full distribution V*(b_prob + ceil(log2 V)) (V*b_prob if
    ``full_includes_ids`` is false), top-k k*(b_prob + ceil(log2 V)), plus ceil(log2 V) per
    pending skipped token id, plus the draft token id (``send_draft_id``), plus a header.
    The downlink carries the returned token id plus its header."""

    vocab_size: int = _p(32000, ge=2, le=100_000_000)
    b_prob: int = _p(8, ge=1, le=64)
    full_includes_ids: bool = _p(True)
    send_draft_id: bool = _p(True)
    uplink_header_bits: int = _p(0, ge=0, le=10**9)
    downlink_header_bits: int = _p(0, ge=0, le=10**9)


@dataclass(frozen=True)
class ComputeConfig:
    """Compute times (seconds) and device compute power; values only come from preset files.

    Device per token: t_slm_s + uncertainty_samples * t_uncertainty_sample_s. Base station per
    verification: t_llm_verify_s + [pending > 0] * (t_llm_prefill_a_s + t_llm_prefill_b_s * pending)
    (batched catch-up prefill of the pending skipped tokens)."""

    t_slm_s: float = _p(ge=0, le=3600)
    t_uncertainty_sample_s: float = _p(ge=0, le=3600)
    uncertainty_samples: int = _p(ge=0, le=100_000)
    t_llm_verify_s: float = _p(ge=0, le=3600)
    t_llm_prefill_a_s: float = _p(ge=0, le=3600)
    t_llm_prefill_b_s: float = _p(ge=0, le=3600)
    device_power_w: float = _p(ge=0, le=10_000)
    device: str = _p("")
    server: str = _p("")
    preset: Optional[str] = _p(None)


@dataclass(frozen=True)
class EnergyConfig:
    """Device radio energy: transmit power drawn = radiated / ``pa_efficiency`` +
    ``tx_circuit_power_w``; ``rx_power_w`` while receiving the downlink; ``idle_power_w`` while
    waiting (outage waits and the base station's compute). Defaults give the plain
    tx power x airtime + compute power x time account."""

    pa_efficiency: float = _p(1.0, gt=0, le=1)
    tx_circuit_power_w: float = _p(0.0, ge=0, le=1000)
    rx_power_w: float = _p(0.0, ge=0, le=1000)
    idle_power_w: float = _p(0.0, ge=0, le=1000)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A complete, validated scenario. Build it with :func:`load_scenario`."""

    name: str = _p("custom")
    description: str = _p("")
    link: LinkConfig = field(default_factory=LinkConfig)
    downlink: DownlinkConfig = field(default_factory=DownlinkConfig)
    fading: FadingConfig = field(default_factory=FadingConfig)
    rate: RateConfig = field(default_factory=RateConfig)
    payload: PayloadConfig = field(default_factory=PayloadConfig)
    compute: ComputeConfig
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    source: str = field(default="<dict>", compare=False, metadata={"internal": True})

    # ---------------------------------------------------------------- derived quantities
    @property
    def speed_mps(self) -> float:
        """Device speed in m/s."""
        return self.fading.speed_kmh / 3.6

    @property
    def doppler_hz(self) -> float:
        """Maximum Doppler shift f_D = v f_c / c [Hz]."""
        return self.speed_mps * self.link.carrier_hz / SPEED_OF_LIGHT

    @property
    def coherence_time_s(self) -> float:
        """Block length for block fading: configured, else 0.423 / f_D (inf when static)."""
        if self.fading.coherence_time_s is not None:
            return self.fading.coherence_time_s
        fd = self.doppler_hz
        return math.inf if fd <= 0 else 0.423 / fd

    @property
    def shadowing_std_db(self) -> float:
        """Effective shadowing std [dB] (the 3GPP value of the path-loss model when unset)."""
        if self.link.shadowing_std_db is not None:
            return self.link.shadowing_std_db
        return default_shadowing_std_db(self.link.pathloss.model)

    @property
    def downlink_bandwidth_hz(self) -> float:
        """Downlink bandwidth (the uplink's when not set)."""
        return self.downlink.bandwidth_hz or self.link.bandwidth_hz

    @property
    def downlink_offset_db(self) -> float:
        """Downlink mean SNR minus uplink mean SNR [dB]."""
        d = self.downlink
        if d.mode == "offset":
            return d.snr_offset_db
        return ((d.tx_power_dbm - self.link.tx_power_dbm) - (d.noise_figure_db - self.link.noise_figure_db)
                - 10.0 * math.log10(self.downlink_bandwidth_hz / self.link.bandwidth_hz))

    @property
    def nominal_mean_snr_db(self) -> float:
        """Uplink mean SNR at ``link.distance_m`` (or ``link.mean_snr_db``), without shadowing."""
        if self.link.mean_snr_db is not None:
            return self.link.mean_snr_db
        return float(mean_snr_db_from_budget(self.link, np.array([self.link.distance_m]))[0])

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (YAML-serialisable) of this scenario, without ``source``."""
        d = dataclasses.asdict(self)
        d.pop("source", None)
        d["rate"]["mcs_table"] = [list(r) for r in self.rate.mcs_table]
        return d

    def replace(self, **overrides: Any) -> "Scenario":
        """A new scenario with dotted overrides applied, validated like :func:`load_scenario`."""
        return load_scenario(self, **overrides)


_SECTIONS: dict[str, type] = {
    "link": LinkConfig,
    "downlink": DownlinkConfig,
    "fading": FadingConfig,
    "rate": RateConfig,
    "payload": PayloadConfig,
    "compute": ComputeConfig,
    "energy": EnergyConfig,
}


# --------------------------------------------------------------------------------------------
# Preset files
# --------------------------------------------------------------------------------------------
def _envs_root() -> Any:
    """The bundled preset folder (the repository's ``envs/``, installed as ``hlm_gym._envs``)."""
    return resources.files("hlm_gym._envs")


def list_scenarios() -> list[str]:
    """Names of the bundled scenarios (``envs/*.yaml``), sorted."""
    root = _envs_root()
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.is_file() and p.name.endswith(".yaml"))


def list_presets(kind: str) -> list[str]:
    """Names of bundled presets of ``kind`` (``compute`` or ``mcs``: ``envs/<kind>/*.yaml``)."""
    if kind not in _PRESET_KINDS:
        raise ScenarioError(f"unknown preset kind {kind!r}; allowed: {', '.join(_PRESET_KINDS)}")
    folder = _envs_root().joinpath(kind)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.is_file() and p.name.endswith(".yaml"))


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = " ".join(str(exc).split())
        raise ScenarioError(f"{source}: invalid YAML: {msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    return data


def _load_preset(kind: str, ref: str, where: str) -> tuple[dict[str, Any], str]:
    """Read preset ``ref`` (a bundled name or a YAML path) of ``kind``; returns (data, source)."""
    if ref.endswith((".yaml", ".yml")) or os.sep in ref:
        path = Path(ref)
        if not path.is_file():
            raise ScenarioError(f"{where}: {kind} preset file {ref!r} not found")
        return _read_yaml(path.read_text(), path.name), str(path)
    res = _envs_root().joinpath(kind, f"{ref}.yaml")
    if not res.is_file():
        avail = ", ".join(list_presets(kind)) or "(none)"
        raise ScenarioError(f"{where}: unknown {kind} preset {ref!r}; available: {avail}")
    return _read_yaml(res.read_text(), f"{kind}/{ref}.yaml"), f"{kind}/{ref}.yaml"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
_NUMERIC_TEXT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return the normalised value."""
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ScenarioError(f"{source}: {key}: must be {_type_name(base)}, got null")
    if base is float:
        if isinstance(value, bool):
            raise ScenarioError(f"{source}: {key}: must be a number, got bool {value!r}")
        if isinstance(value, (int, float)):
            v = float(value)
        elif isinstance(value, str) and _NUMERIC_TEXT.match(value):
            v = float(value)
        else:
            raise ScenarioError(f"{source}: {key}: must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(v):
            raise ScenarioError(f"{source}: {key}: must be finite, got {v!r}")
        return v
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{source}: {key}: must be an integer, got {type(value).__name__} {value!r}")
        return int(value)
    if base is bool:
        if not isinstance(value, bool):
            raise ScenarioError(f"{source}: {key}: must be true or false, got {type(value).__name__} {value!r}")
        return value
    if base is str:
        if not isinstance(value, str):
            raise ScenarioError(f"{source}: {key}: must be a string, got {type(value).__name__} {value!r}")
        return value
    if typing.get_origin(base) is tuple:  # the MCS table: rows of (min SNR dB, efficiency)
        if not isinstance(value, (list, tuple)):
            raise ScenarioError(f"{source}: {key}: must be a list of [min_snr_db, efficiency] rows")
        rows = []
        for i, row in enumerate(value):
            if not isinstance(row, (list, tuple)) or len(row) != 2:
                raise ScenarioError(f"{source}: {key}[{i}]: must be a pair [min_snr_db, efficiency], got {row!r}")
            rows.append((_coerce(row[0], float, source, f"{key}[{i}][0]"),
                         _coerce(row[1], float, source, f"{key}[{i}][1]")))
        return tuple(rows)
    raise TypeError(f"unsupported field type {tp!r}")  # pragma: no cover - programming error


def _check_rules(value: Any, rules: Mapping[str, Any], source: str, key: str) -> None:
    if value is None:
        return
    if "choices" in rules and value not in rules["choices"]:
        raise ScenarioError(f"{source}: {key}: must be one of {', '.join(map(str, rules['choices']))}; got {value!r}")
    for op, test, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                           ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        if op in rules and not test(value, rules[op]):
            raise ScenarioError(f"{source}: {key}: must be {word} {rules[op]:g}, got {value!r}")


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``, strictly (unknown keys, types, ranges)."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{source}: {where}: must be a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for k in raw:
        if k not in fields:
            raise ScenarioError(f"{source}: {prefix}{k}: unknown key; allowed keys: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ScenarioError(f"{source}: {key}: missing required key")
            continue
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], source, key + ".")
        else:
            v = _coerce(raw[name], tp, source, key)
            _check_rules(v, f.metadata, source, key)
            kwargs[name] = v
    return cls(**kwargs)


def _cross_check(sc: Scenario, source: str) -> None:
    """Checks that involve more than one field."""
    lk, fd, rt = sc.link, sc.fading, sc.rate
    if lk.mean_snr_db_max is not None:
        if lk.mean_snr_db is None:
            raise ScenarioError(f"{source}: link.mean_snr_db_max: needs link.mean_snr_db")
        if lk.mean_snr_db_max < lk.mean_snr_db:
            raise ScenarioError(f"{source}: link.mean_snr_db_max: must be >= link.mean_snr_db")
    if lk.distance_max_m is not None and lk.distance_max_m < lk.distance_m:
        raise ScenarioError(f"{source}: link.distance_max_m: must be >= link.distance_m")
    if lk.mean_snr_db is None and lk.pathloss.model != "log-distance":
        dmax = lk.distance_max_m or lk.distance_m
        if lk.distance_m < 10.0 or dmax > 5000.0:
            raise ScenarioError(f"{source}: link.distance_m: 3GPP {lk.pathloss.model} is defined "
                                "for 10 m <= d <= 5000 m")
        if lk.pathloss.model.startswith("uma") and lk.pathloss.h_ut_m > 13.0:
            raise ScenarioError(f"{source}: link.pathloss.h_ut_m: uma models here assume h_ut <= 13 m (h_E = 1 m)")
    if fd.model == "block" and fd.coherence_time_s is None and sc.doppler_hz <= 0:
        raise ScenarioError(f"{source}: fading.coherence_time_s: block fading needs a coherence time or speed_kmh > 0")
    if fd.model == "sionna" and fd.sionna.sample_period_s is None and sc.doppler_hz <= 0:
        raise ScenarioError(f"{source}: fading.sionna.sample_period_s: needed when speed_kmh is 0")
    if fd.distribution == "rayleigh" and fd.k_factor != 0 and fd.model in ("block", "jakes"):
        raise ScenarioError(f"{source}: fading.k_factor: only used with distribution rician (got rayleigh)")
    if rt.model == "mcs":
        if not rt.mcs_table:
            raise ScenarioError(f"{source}: rate.mcs_table: required when rate.model is mcs")
    elif rt.mcs_table:
        raise ScenarioError(f"{source}: rate.mcs_table: only used when rate.model is mcs")
    thr = [r[0] for r in rt.mcs_table]
    eff = [r[1] for r in rt.mcs_table]
    if any(b <= a for a, b in zip(thr, thr[1:])):
        raise ScenarioError(f"{source}: rate.mcs_table: min SNR thresholds must be strictly increasing")
    if any(e <= 0 for e in eff) or any(b < a for a, b in zip(eff, eff[1:])):
        raise ScenarioError(f"{source}: rate.mcs_table: efficiencies must be > 0 and non-decreasing")
    if rt.model == "mcs" and rt.outage_snr_db is not None:
        raise ScenarioError(f"{source}: rate.outage_snr_db: not used with mcs "
                            "(the table's lowest row is the outage threshold)")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    cur: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part)
        if nxt is None:
            nxt = {}
        if not isinstance(nxt, dict):
            raise ScenarioError(f"{source}: {'.'.join(parts[: i + 1])}: is not a section, cannot set {dotted}")
        cur[part] = nxt = dict(nxt)
        cur = nxt
    last = parts[-1]
    if isinstance(value, Mapping) and isinstance(cur.get(last), Mapping):
        merged = dict(cur[last])
        for k, v in value.items():
            _set_dotted(merged, str(k), v, source)
        cur[last] = merged
    else:
        cur[last] = value


def _resolve_presets(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Expand ``compute`` (preset name or {preset: name, ...overrides}) and a named MCS table."""
    raw = dict(raw)
    comp = raw.get("compute", DEFAULT_COMPUTE_PRESET)
    if isinstance(comp, str):
        comp = {"preset": comp}
    if not isinstance(comp, Mapping):
        raise ScenarioError(f"{source}: compute: must be a preset name or a mapping, got {type(comp).__name__}")
    comp = dict(comp)
    ref = comp.get("preset")
    if ref is not None:
        if not isinstance(ref, str):
            raise ScenarioError(f"{source}: compute.preset: must be a string, got {type(ref).__name__}")
        data, psrc = _load_preset("compute", ref, f"{source}: compute.preset")
        allowed = [f.name for f in dataclasses.fields(ComputeConfig) if f.name != "preset"]
        for k in data:
            if k not in allowed:
                raise ScenarioError(f"{psrc}: {k}: unknown key; allowed keys: {', '.join(allowed)}")
        missing = [k for k in allowed if k not in data and k not in ("device", "server")]
        if missing:
            raise ScenarioError(f"{psrc}: {missing[0]}: missing required key")
        # validate the preset's own values against its file name before merging
        _build(ComputeConfig, {**data, "preset": ref}, psrc, "")
        comp = {**data, **comp}
    raw["compute"] = comp
    rate = raw.get("rate")
    if isinstance(rate, Mapping) and isinstance(rate.get("mcs_table"), str):
        rate = dict(rate)
        data, psrc = _load_preset("mcs", rate["mcs_table"], f"{source}: rate.mcs_table")
        if set(data) - {"table", "description"} or "table" not in data:
            raise ScenarioError(f"{psrc}: top level: must have key 'table' (and optionally 'description') only")
        _coerce(data["table"], typing.get_type_hints(RateConfig)["mcs_table"], psrc, "table")
        rate["mcs_table"] = data["table"]
        raw["rate"] = rate
    return raw


def _scenario_from_raw(raw: dict[str, Any], source: str) -> Scenario:
    raw = _resolve_presets(raw, source)
    sc = _build(Scenario, raw, source, "")
    sc = dataclasses.replace(sc, source=source)
    _cross_check(sc, source)
    return sc


def load_scenario(spec: "str | os.PathLike[str] | Mapping[str, Any] | Scenario", **overrides: Any) -> Scenario:
    """Load and validate a scenario.

    ``spec``: a bundled name (see :func:`list_scenarios`), a path to a YAML file, a mapping, or
    a :class:`Scenario`. ``overrides``: dotted keys (``**{"link.mean_snr_db": 10.0}``) or whole
    sections (``fading={"speed_kmh": 30}``), validated like the file. Raises
    :class:`ScenarioError` with a one-line message naming the file and the dotted key.
    """
    if isinstance(spec, Scenario):
        raw = spec.to_dict()
        source = spec.source
    elif isinstance(spec, Mapping):
        raw = dict(spec)
        source = "<dict>"
    elif isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        if s.endswith((".yaml", ".yml")) or os.sep in s or isinstance(spec, os.PathLike):
            path = Path(s)
            if not path.is_file():
                raise ScenarioError(f"{s}: scenario file not found")
            source = path.name
            raw = _read_yaml(path.read_text(), source)
            raw.setdefault("name", path.stem)
        else:
            res = _envs_root().joinpath(f"{s}.yaml")
            if not res.is_file():
                raise ScenarioError(f"unknown scenario {s!r}; available: {', '.join(list_scenarios())}")
            source = f"{s}.yaml"
            raw = _read_yaml(res.read_text(), source)
            raw.setdefault("name", s)
    else:
        raise ScenarioError(f"<spec>: cannot load a scenario from {type(spec).__name__}")
    if overrides:
        raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
        comp = raw.get("compute", DEFAULT_COMPUTE_PRESET)
        raw["compute"] = {"preset": comp} if isinstance(comp, str) else comp
        # a new compute preset replaces the whole compute section (plus compute.* overrides)
        new_preset = overrides.get("compute.preset", overrides.get("compute"))
        if isinstance(new_preset, str):
            raw["compute"] = {}
        for k, v in overrides.items():
            if k == "compute" and isinstance(v, str):
                v = {"preset": v}
            _set_dotted(raw, k, v, source)
        if not source.endswith(" (with overrides)"):
            source = f"{source} (with overrides)"
    return _scenario_from_raw(raw, source)
