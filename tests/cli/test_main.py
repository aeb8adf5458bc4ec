"""The ``hlm-gym`` entry point: fast start (no heavy imports), every command registered, one error handler."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hlm_gym.cli import generate, slm, traces
from hlm_gym.cli.main import COMMAND_MODULES, build_parser, main
from hlm_gym.errors import HLMGymError

HEAVY = ("torch", "transformers", "gymnasium", "stable_baselines3", "scipy", "matplotlib")


def _run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_building_the_parser_imports_no_heavy_library() -> None:
    code = ("import sys; from hlm_gym.cli.main import build_parser; build_parser(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    assert _run_python(code) == "[]"


def test_import_hlm_gym_defers_gymnasium_but_still_registers_the_envs() -> None:
    code = ("import sys, hlm_gym; light = 'gymnasium' not in sys.modules; import gymnasium as gym; "
            "env = gym.make('hlm_gym/HybridLM-v0'); env.reset(seed=0); "
            "print(light, sorted(e for e in gym.registry if e.startswith('hlm_gym/')))")
    assert _run_python(code) == "True ['hlm_gym/HybridLM-v0', 'hlm_gym/HybridLMCompressed-v0', 'hlm_gym/WDMoE-v0']"
    code = "import gymnasium as gym, hlm_gym; print('hlm_gym/HybridLMCompressed-v0' in gym.registry)"
    assert _run_python(code) == "True"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("generate", "traces", "slm", "moe", "evaluate", "train", "compare"):
        assert f"    {name} " in out, name
    assert [m.__name__.rsplit(".", 1)[1] for m in COMMAND_MODULES] == ["generate", "traces", "slm", "moe", "evaluate",
                                                                        "train", "compare"]


@pytest.mark.parametrize("module, argv", [
    (generate, ["generate", "--prompt", "hi"]),
    (traces, ["traces", "build"]), (traces, ["traces", "info", "file.parquet"]),
    (slm, ["slm", "build"]), (slm, ["slm", "report"]),
])
def test_command_modules_register_their_commands(module, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers(dest="command", required=True))
    func = parser.parse_args(argv).func
    assert callable(func) and func.__module__ == module.__name__


def test_slm_build_defaults_are_the_build_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from hlm_gym.lm.distill import BuildConfig

    args = build_parser().parse_args(["slm", "build", "--rank", "3"])
    slm._resolve_defaults(args)
    d = BuildConfig()
    assert args.rank == 3
    assert (args.layers, args.steps, args.lr, args.vocab, args.mlp_width) == (d.layers, d.steps, d.lr, d.vocab,
                                                                             d.mlp_width)
    with pytest.raises(SystemExit):
        main(["slm", "build", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"optimizer steps (default {d.steps})" in shown and f"adapter rank (default {d.rank})" in shown


def test_user_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["traces", "info", "/nope/missing.parquet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hlm-gym: error: ") and "trace file not found" in err and len(err.splitlines()) == 1


def test_handler_catches_hlm_gym_errors_and_interrupts_only(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def raising(exc: BaseException):
        def run(args: argparse.Namespace) -> int:
            raise exc
        return run

    monkeypatch.setattr(traces, "_cmd_info", raising(HLMGymError("bad input\nsecond line")))
    assert main(["traces", "info", "x"]) == 2
    assert capsys.readouterr().err == "hlm-gym: error: bad input\n"
    monkeypatch.setattr(traces, "_cmd_info", raising(KeyboardInterrupt()))
    assert main(["traces", "info", "x"]) == 130
    monkeypatch.setattr(traces, "_cmd_info", raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # not a user error: the traceback is kept
        main(["traces", "info", "x"])
