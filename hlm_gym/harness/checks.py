"""Checks of the harness's settings, run once at the boundary before any work.

Each check returns the value it accepts (converted where useful) or raises a one-line
:class:`~hlm_gym.harness.errors.HarnessError` (the command's own subclass, passed as ``error``)
naming the flag, the value and what is allowed: seeds, counts, ``--device``, sweep lists,
scenario names, output folders.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from hlm_gym.paths import folder_problem
from hlm_gym.harness.errors import CompareError, DeviceError, HarnessError, OutputPathError

__all__ = ["SEED_MAX", "check_int", "check_seed", "check_number", "check_choice", "check_device", "check_sweep",
           "check_scenarios", "check_out_dir"]

#: The largest seed accepted (seeds feed numpy's legacy seeding, which takes 32 bits, plus offsets).
SEED_MAX = 2**31 - 1
_DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


def _show(value: Any) -> str:
    """A value in a message: numbers as written (``2``, ``0.5``), text quoted."""
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, flag: str, lo: int = 1, hi: Optional[int] = None,
              error: type[HarnessError] = HarnessError) -> int:
    """An integer in ``[lo, hi]``."""
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        allowed = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise error(f"{flag} {_show(value)}: expected {allowed}")
    return int(value)


def check_seed(value: Any, flag: str = "--seed", error: type[HarnessError] = HarnessError) -> int:
    """A seed: an integer in ``[0, SEED_MAX]``."""
    return check_int(value, flag, 0, SEED_MAX, error)


def check_number(value: Any, flag: str, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, hi_open: bool = False, error: type[HarnessError] = HarnessError) -> float:
    """A finite number in the given interval (``lo_open``/``hi_open``: the bound itself excluded)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (lo is None or value > lo or (not lo_open and value == lo))
          and (hi is None or value < hi or (not hi_open and value == hi)))
    if not ok:
        raise error(f"{flag} {_show(value)}: expected {_interval(lo, hi, lo_open, hi_open)}")
    return float(value)


def _interval(lo: Optional[float], hi: Optional[float], lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"a finite number {'>' if lo_open else '>='} {lo:g}"
    return "a finite number"


def check_choice(value: Any, flag: str, choices: Sequence[str], error: type[HarnessError] = HarnessError) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise error(f"{flag} {value!r}: expected one of {', '.join(choices)}")
    return value


def check_device(device: Any, flag: str = "--device") -> str:
    """``cpu``, ``auto``, ``cuda`` or ``cuda:N`` that torch can use: CUDA asked for but absent, or an
    index past the last device, is a :class:`DeviceError` (imports torch only for ``cuda``)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise DeviceError(f"{flag} {device!r}: expected cpu, cuda, cuda:N or auto")
    if not device.startswith("cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        build = "" if torch.version.cuda else f", torch {torch.__version__} is built without CUDA"
        raise DeviceError(f"{flag} {device}: torch sees no CUDA device{build}; use --device cpu or auto")
    n = torch.cuda.device_count()
    if ":" in device and int(device.split(":")[1]) >= n:
        raise DeviceError(f"{flag} {device}: torch sees {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return device


def check_sweep(values: Optional[Iterable[Any]], flag: str, lo: Optional[float] = None, hi: Optional[float] = None,
                lo_open: bool = False, hi_open: bool = False, allow_empty: bool = False,
                error: type[HarnessError] = CompareError) -> tuple[float, ...]:
    """A sweep list: non-empty (unless ``allow_empty``), each value finite and in the interval, none twice."""
    vals = tuple(values or ())
    if not vals and not allow_empty:
        raise error(f"{flag}: empty list; expected at least one {_interval(lo, hi, lo_open, hi_open)[2:]}")
    for v in vals:
        check_number(v, flag, lo, hi, lo_open, hi_open, error)
    dup = _first_duplicate(vals)
    if dup is not None:
        raise error(f"{flag}: {dup:g} is given twice; each value once")
    return tuple(float(v) for v in vals)


def _first_duplicate(values: Sequence[Any]) -> Any:
    seen: set = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def check_scenarios(names: Optional[Iterable[Any]], flag: str = "--scenarios",
                    error: type[HarnessError] = CompareError, load: Optional[Any] = None) -> tuple[Any, ...]:
    """A non-empty list of scenarios (names or YAML paths), none twice, each loaded now (with ``load``,
    an env family's ``load_scenario``; default: the HybridLM link scenarios) so that a bad one is
    refused before any work."""
    from hlm_gym.wireless.scenarios import ScenarioError, load_scenario

    load_scenario = load or load_scenario

    scenarios = tuple(names or ())
    if not scenarios:
        raise error(f"{flag}: empty list; expected at least one scenario name or YAML path")
    dup = _first_duplicate([str(s) for s in scenarios])
    if dup is not None:
        raise error(f"{flag}: {dup!r} is given twice; each scenario once")
    for sc in scenarios:
        if isinstance(sc, str) and not sc.strip():
            raise error(f"{flag} {sc!r}: expected a scenario name or YAML path")
        try:
            load_scenario(sc)
        except ScenarioError as exc:
            raise error(f"{flag}: {str(exc).splitlines()[0]}") from None
    return scenarios


def check_out_dir(path: Any, flag: str = "--out", create: bool = True) -> Path:
    """An output folder: not a file, creatable, writable. With ``create`` it is made (parents too);
    without, only checked (its nearest existing ancestor must be a writable folder)."""
    if path is None or not str(path).strip():
        raise OutputPathError(f"{flag} {'' if path is None else str(path)!r}: expected a folder path")
    p = Path(path)
    problem = folder_problem(p, probe=False)
    if problem:
        raise OutputPathError(f"{flag} {str(p)!r}: {problem}")
    if not create:
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):  # the real test of writability (root passes os.access)
            pass
    except OSError as exc:
        raise OutputPathError(f"{flag} {str(p)!r}: cannot write there ({exc.strerror or exc})") from None
    return p
