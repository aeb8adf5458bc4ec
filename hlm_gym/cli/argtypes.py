"""Arguments shared by the ``hlm-gym`` sub-commands: types that reject bad values in one line,
and the options several commands take (``--env``, ``--risk-weight``, ``--threads``, ``--hp``).
Nothing heavy is imported here (the env ids are plain strings), so ``hlm-gym --help`` stays fast.

:func:`one_line_errors` makes a sub-parser report a bad flag as an
:class:`~hlm_gym.errors.HLMGymError` (``hlm-gym: error: argument --seed: ...``, exit 2, no
usage dump); values that need the harness (an available CUDA device, a scenario that exists,
a writable output folder, typed hyperparameters) are checked by the harness before any work.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any, NoReturn

from hlm_gym.environments.registration import DEFAULT_ENV_ID, ENV_IDS
from hlm_gym.errors import HLMGymError

__all__ = ["CommandLineError", "one_line_errors", "SEED_MAX", "positive_int", "nonneg_int", "seed", "device",
           "nonneg_float", "unit_float", "float_list", "str_list", "hyper_override", "add_env_argument",
           "add_risk_weight_argument", "add_threads_argument", "apply_threads", "add_backend_arguments"]

#: The largest ``--seed`` (numpy's legacy seeding takes 32 bits; the harness adds offsets to it).
SEED_MAX = 2**31 - 1
_DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


class CommandLineError(HLMGymError, ValueError):
    """A flag the parser itself refuses (a bad value, a missing required flag)."""


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` raise :class:`CommandLineError` instead of printing its usage and exiting,
    so the entry point reports ``hlm-gym: error: <command>: <message>`` in one line (exit 2)."""
    command = " ".join(parser.prog.split()[1:])  # "train", "traces build"; "" for hlm-gym itself

    def error(message: str) -> NoReturn:
        where = f"{command}: " if command else ""
        raise CommandLineError(f"{where}{message} (see hlm-gym {command + ' ' if command else ''}--help)")

    parser.error = error  # type: ignore[method-assign]
    return parser


def _integer(text: str) -> int | None:
    """``text`` as an integer (``1e5`` accepted); None when it is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value.is_integer() else None


def positive_int(text: str) -> int:
    """A positive integer; scientific notation of an integer (``1e5``) is accepted."""
    value = _integer(text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    value = _integer(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def seed(text: str) -> int:
    """A seed: an integer in [0, SEED_MAX]."""
    value = _integer(text)
    if value is None or not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {text!r}")
    return value


def device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (whether CUDA is there is checked when the command runs)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")
    return text


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1] (a probability)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def float_list(text: str) -> list[float]:
    """Comma-separated numbers; ``none`` for an empty list (an empty text or item is refused)."""
    if text.strip().lower() == "none":
        return []
    items = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (or none), got {text!r}")
    try:
        return [float(x) for x in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    """Comma-separated names (an empty text or item is refused)."""
    items = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return items


def hyper_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``--hp n_steps=64``); the harness checks key and value."""
    import yaml

    key, eq, val = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(val)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE is not valid YAML ({str(exc).splitlines()[0]})") from None


def add_env_argument(p: argparse.ArgumentParser) -> None:
    """``--env ENV_ID`` (the command checks it against the env families the harness knows)."""
    p.add_argument("--env", dest="env_id", default=DEFAULT_ENV_ID, metavar="ENV_ID",
                   help=f"environment id: {', '.join(ENV_IDS)} (default %(default)s)")


def add_risk_weight_argument(p: argparse.ArgumentParser, what: str = "risk weight lambda of the reward") -> None:
    """``--risk-weight L`` (old spelling ``--lambda`` still accepted, not shown)."""
    p.add_argument("--risk-weight", dest="risk_weight", type=nonneg_float, default=None, metavar="L",
                   help=f"{what} (default: the environment's)")
    p.add_argument("--lambda", dest="risk_weight", type=nonneg_float, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads N``: torch CPU threads."""
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0: torch's default)")


def add_backend_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """``--backend local|ray`` and ``--address``: where ``what`` runs (Ray: one task each)."""
    from hlm_gym.parallel.jobs import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help=f"where the work runs: local (this machine, the default) or ray ({what} as a Ray task, "
                        "retried if its worker dies; needs pip install \"hlm-gym[ray]\")")
    p.add_argument("--address", default=None, metavar="ADDRESS",
                   help="--backend ray: the Ray cluster (auto, HOST:PORT or ray://HOST:PORT; default: start a local "
                        "Ray instance on this machine's CPUs for this command)")


def apply_threads(n: int) -> None:
    """Set torch's CPU threads when ``n > 0`` (imports torch)."""
    if n and n > 0:
        import torch

        torch.set_num_threads(n)
