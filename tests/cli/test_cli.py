"""``hlm-gym generate``: the live loop on the real embedded LLM, and its one-line errors."""

from __future__ import annotations

import pytest

from hlm_gym.cli.generate import render_tokens
from hlm_gym.cli.main import main


def test_render_tokens_plain_and_colour():
    pieces = [("a", "accepted"), ("b", "skipped"), ("c", "resampled")]
    assert render_tokens(pieces, colour=False) == "a[b]<c>"
    assert "\033[31mc" in render_tokens(pieces, colour=True)


@pytest.mark.slow  # loads the embedded LLM
def test_generate_prints_marked_tokens_and_summary(capsys):
    rc = main(["generate", "--prompt", "Say hi.", "--slm", "early-exit:4", "--policy", "threshold:0.2",
               "--max-new-tokens", "6", "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "transmission rate" in out and "skip rate" in out and "tokens/s" in out
    assert "legend: accepted [skipped] <resampled>" in out


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "  "], "empty prompt"),
    (["generate", "--prompt", "x", "--policy", "maybe"], "unknown policy"),
    (["generate", "--prompt", "x", "--policy", "threshold:1.5"], "value must be in [0, 1], got 1.5"),
    (["generate", "--prompt", "x", "--max-new-tokens", "-1"], "max_new_tokens must be a positive integer"),
    (["generate", "--prompt", "x", "--slm", "./nowhere"], "neither a model folder"),
])
def test_generate_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("hlm-gym: error:") and len(err.splitlines()) == 1
