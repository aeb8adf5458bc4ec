"""``hlm-gym moe``: bad input is one line before any model loads; ``moe info`` describes the shipped spec."""

from __future__ import annotations

import pytest

from hlm_gym.cli.main import main


@pytest.mark.parametrize("argv, message", [
    (["moe", "build", "--experts", "0"], "argument --experts: expected a positive integer, got '0'"),
    (["moe", "build", "--experts", "1"], "an MoE needs at least 2 experts, got 1"),
    (["moe", "build", "--seed", "-3"], "argument --seed"),
    (["moe", "report", "--split", "dev"], "argument --split: invalid choice: 'dev'"),
    (["moe", "report", "--spec", "/nonexistent/spec"], "MoE spec folder /nonexistent/spec not found"),
    (["moe", "info", "--spec", "/nonexistent/spec"], "MoE spec folder /nonexistent/spec not found"),
    (["moe", "traces", "--split", "test"], "the following arguments are required: --out"),
    (["moe", "traces", "--split", "test", "--out", "/"], "is a folder; give the path of a .parquet file"),
    (["moe", "traces", "--split", "test", "--out", "x.parquet", "--spec", "/nonexistent/spec"],
     "MoE spec folder /nonexistent/spec not found"),
    (["moe", "traces", "--split", "test", "--out", "x.parquet", "--max-tokens", "0"], "argument --max-tokens"),
])
def test_bad_input_is_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hlm-gym: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.parquet").exists()


def test_build_refuses_an_unwritable_out_before_loading(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["moe", "build", "--out", str(tmp_path / "file" / "spec")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_info_describes_the_shipped_spec(capsys):
    assert main(["moe", "info"]) == 0
    out = capsys.readouterr().out
    assert "30 layers x 8 experts of 192 neurons" in out and "held-out relative MLP error" in out
