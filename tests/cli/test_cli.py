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


# ------------------------------------------------------------------------------ train, evaluate, compare: bad input
# Each bad flag or hyperparameter is refused with one line naming it, its value and what is allowed
# (exit 2), before any training, evaluation or writing: the --out folder, which holds an earlier
# run's files, is left exactly as it was.

TRAIN = ["train", "--timesteps", "64", "--n-envs", "2", "--eval-episodes", "2", "--no-progress", "--no-reference"]
EVALUATE = ["evaluate", "--policy", "always", "--episodes", "2", "--num-envs", "2"]
COMPARE = ["compare", "--scenarios", "vehicular", "--risk-weights", "5", "--risk-targets", "none", "--timesteps", "64",
           "--episodes", "2", "--n-envs", "2", "--jobs", "1"]
EARLIER = {"summary.json": b'{"earlier": true}\n', "best_model.zip": b"earlier model", "results.csv": b"earlier,table\n",
           "summary.csv": b"earlier\n"}

BAD_INPUT = [
    # train: flags
    (TRAIN + ["--seed", "-1"], ["--seed", "'-1'", "[0, 2147483647]"]),
    (TRAIN + ["--seed", "1.5"], ["--seed", "'1.5'", "integer"]),
    (TRAIN + ["--seed", "5000000000"], ["--seed", "5000000000", "[0, 2147483647]"]),
    (TRAIN + ["--device", "gpu"], ["--device", "'gpu'", "cpu, cuda, cuda:N or auto"]),
    (TRAIN + ["--device", "cuda:999"], ["--device cuda:999", "CUDA device"]),
    (TRAIN + ["--scenario", "nope"], ["--scenario", "'nope'", "available: "]),
    (TRAIN + ["--risk-weight", "inf"], ["--risk-weight", "'inf'", "finite number >= 0"]),
    (TRAIN + ["--risk-weight", "-1"], ["--risk-weight", "'-1'", ">= 0"]),
    (TRAIN + ["--risk-target", "1.5"], ["--risk-target", "1.5", "[0, 1]"]),
    (TRAIN + ["--timesteps", "0"], ["--timesteps", "'0'", "positive integer"]),
    (TRAIN + ["--n-envs", "-2"], ["--n-envs", "'-2'", "positive integer"]),
    (TRAIN + ["--eval-freq", "x"], ["--eval-freq", "'x'", "positive integer"]),
    (TRAIN + ["--threads", "-1"], ["--threads", "'-1'", "integer >= 0"]),
    (TRAIN + ["--algo", "sac"], ["--algo", "'sac'", "ppo"]),
    (TRAIN + ["--traces", "/nonexistent/traces"], ["--traces", "/nonexistent/traces", "no train traces"]),
    (TRAIN + ["--hyperparams", "/nonexistent/ppo.yml"], ["--hyperparams", "/nonexistent/ppo.yml", "not found"]),
    # train: hyperparameters, typed and ranged per algorithm
    (TRAIN + ["--hp", "batch_size=0"], ["--hp batch_size=0", "an integer >= 2"]),
    (TRAIN + ["--hp", "n_steps=abc"], ["--hp n_steps=abc", "an integer >= 1"]),
    (TRAIN + ["--hp", "n_epochs=true"], ["--hp n_epochs=true", "an integer >= 1"]),
    (TRAIN + ["--hp", "n_epochs=2.5"], ["--hp n_epochs=2.5", "an integer >= 1"]),
    (TRAIN + ["--hp", "gamma=5"], ["--hp gamma=5", "a number in (0, 1]"]),
    (TRAIN + ["--hp", "gae_lambda=0"], ["--hp gae_lambda=0", "a number in (0, 1]"]),
    (TRAIN + ["--hp", "learning_rate=-1"], ["--hp learning_rate=-1", "a number > 0"]),
    (TRAIN + ["--hp", "learning_rate=lin_-3"], ["--hp learning_rate=lin_-3", "a number > 0 (or lin_"]),
    (TRAIN + ["--hp", "clip_range=1.5"], ["--hp clip_range=1.5", "a number in (0, 1]"]),
    (TRAIN + ["--hp", "ent_coef=-0.1"], ["--hp ent_coef=-0.1", "a number >= 0"]),
    (TRAIN + ["--hp", "vf_coef=nan"], ["--hp vf_coef=nan", "a number >= 0"]),
    (TRAIN + ["--hp", "use_sde=true"], ["--hp use_sde=true", "false"]),
    (TRAIN + ["--hp", "policy=CnnPolicy"], ["--hp policy=CnnPolicy", "MlpPolicy"]),
    (TRAIN + ["--hp", "policy_kwargs=dict(net_arch=[0])"], ["--hp policy_kwargs=dict(net_arch=[0])", "net_arch"]),
    (TRAIN + ["--hp", "policy_kwargs=dict(net_arch=[64]"], ["--hp policy_kwargs=", "SyntaxError"]),
    (TRAIN + ["--hp", "normalize=dict(clip_obs=-1)"], ["--hp normalize=", "clip_obs = a number > 0"]),
    (TRAIN + ["--hp", "n_stepz=8"], ["--hp", "unknown key 'n_stepz' for ppo"]),
    (TRAIN + ["--hp", "n_steps=1", "--n-envs", "1"], ["n_steps 1 x --n-envs 1", "at least 2 steps"]),
    (TRAIN + ["--hp", "gamma=[1"], ["--hp", "'gamma=[1'", "not valid YAML"]),
    (TRAIN + ["--hp", "gamma"], ["--hp", "'gamma'", "KEY=VALUE"]),
    (TRAIN + ["--algo", "dqn", "--hp", "batch_size=0"], ["--hp batch_size=0", "an integer >= 1"]),
    (TRAIN + ["--algo", "dqn", "--hp", "train_freq=[4, hour]"], ["--hp train_freq=", "[n, step]"]),
    (TRAIN + ["--algo", "dqn", "--hp", "exploration_final_eps=2"], ["--hp exploration_final_eps=2", "[0, 1]"]),
    (TRAIN + ["--algo", "a2c", "--hp", "rms_prop_eps=0"], ["--hp rms_prop_eps=0", "a number > 0"]),
    # evaluate
    (EVALUATE + ["--seed", "-5"], ["--seed", "'-5'", "[0, 2147483647]"]),
    (EVALUATE + ["--episodes", "0"], ["--episodes", "'0'", "positive integer"]),
    (EVALUATE + ["--num-envs", "0"], ["--num-envs", "'0'", "positive integer"]),
    (EVALUATE + ["--scenario", "nope"], ["--scenario", "'nope'", "available: "]),
    (EVALUATE + ["--split", "dev"], ["--split", "'dev'", "test"]),
    (EVALUATE + ["--risk-target", "2"], ["--risk-target", "2", "[0, 1]"]),
    (EVALUATE + ["--policy", "threshold:2"], ["threshold:2", "[0, 1]"]),
    (EVALUATE + ["--policy", "ppo:/nonexistent/model.zip"], ["/nonexistent/model.zip", "not found"]),
    (["evaluate", "--episodes", "2"], ["--policy", "required"]),
    # compare: sweeps, scenarios, budgets
    (COMPARE + ["--scenarios", ""], ["--scenarios", "''", "comma-separated names"]),
    (COMPARE + ["--scenarios", "vehicular,,pedestrian"], ["--scenarios", "'vehicular,,pedestrian'"]),
    (COMPARE + ["--scenarios", "vehicular,nope"], ["--scenarios", "'nope'", "available: "]),
    (COMPARE + ["--scenarios", "vehicular,vehicular"], ["--scenarios", "'vehicular' is given twice"]),
    (COMPARE + ["--thresholds", "2"], ["--thresholds 2", "a number in [0, 1]"]),
    (COMPARE + ["--thresholds", "0.5,nan"], ["--thresholds nan", "a number in [0, 1]"]),
    (COMPARE + ["--thresholds", ""], ["--thresholds", "''", "comma-separated numbers"]),
    (COMPARE + ["--thresholds", "none"], ["--thresholds", "empty list", "[0, 1]"]),
    (COMPARE + ["--ltt-deltas", "0"], ["--ltt-deltas 0", "a number in (0, 1)"]),
    (COMPARE + ["--ltt-deltas", "1"], ["--ltt-deltas 1", "a number in (0, 1)"]),
    (COMPARE + ["--ltt-deltas", "none"], ["--ltt-deltas", "empty list"]),
    (COMPARE + ["--risk-weights", "-1"], ["--risk-weights -1", ">= 0"]),
    (COMPARE + ["--risk-weights", "inf"], ["--risk-weights inf", "finite number >= 0"]),
    (COMPARE + ["--risk-weights", "5,5"], ["--risk-weights", "5 is given twice"]),
    (COMPARE + ["--risk-targets", "1.5"], ["--risk-targets 1.5", "a number in [0, 1]"]),
    (COMPARE + ["--risk-weights", "none"], ["no PPO runs", "--risk-weights", "--risk-targets"]),
    (COMPARE + ["--risk-weights", "10", "--risk-targets", "0"], ["--risk-weights 10 and --risk-targets 0 at --target-risk-weight 10", "same PPO run"]),
    (COMPARE + ["--risk-targets", "0.3", "--target-risk-weight", "0"], ["--target-risk-weight 0", "> 0"]),
    (COMPARE + ["--jobs", "-1"], ["--jobs", "'-1'", "integer >= 0"]),
    (COMPARE + ["--episodes", "0"], ["--episodes", "'0'", "positive integer"]),
    (COMPARE + ["--seed", "-1"], ["--seed", "'-1'", "[0, 2147483647]"]),
    (COMPARE + ["--device", "gpu"], ["--device", "'gpu'", "cpu, cuda, cuda:N or auto"]),
    (COMPARE + ["--device", "cuda:999"], ["--device cuda:999", "CUDA device"]),
    (COMPARE + ["--hp", "gamma=5"], ["--hp gamma=5", "a number in (0, 1]"]),
    (COMPARE + ["--hp", "batch_size=1"], ["--hp batch_size=1", "an integer >= 2"]),
    (COMPARE + ["--traces", "/nonexistent/traces"], ["--traces", "/nonexistent/traces"]),
]


def _ids(case):
    argv, _ = case
    return " ".join(argv[:1] + argv[len(TRAIN if argv[0] == "train" else EVALUATE if argv[0] == "evaluate" else COMPARE):])


@pytest.mark.parametrize("argv, fragments", BAD_INPUT, ids=[_ids(c) for c in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(argv, fragments, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name, data in EARLIER.items():
        (out / name).write_bytes(data)
    assert main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("hlm-gym: error: ") and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in captured.out + captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == EARLIER  # no lock, no partial folder, nothing replaced


@pytest.mark.parametrize("command", [TRAIN, EVALUATE, COMPARE], ids=["train", "evaluate", "compare"])
@pytest.mark.parametrize("where", ["file", "under-file", "empty"])
def test_bad_output_folder_is_refused_before_any_work(command, where, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = {"file": str(blocker), "under-file": str(blocker / "sub"), "empty": ""}[where]
    assert main([*command, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hlm-gym: error: --out ") and len(err.splitlines()) == 1, err
    assert {"file": "is a file, not a folder", "under-file": f"{blocker} is a file, not a folder",
            "empty": "expected a folder path"}[where] in err
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cuda_asked_for_but_absent_is_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; cuda:999 above covers a missing device")
    assert main([*TRAIN, "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("hlm-gym: error: --device cuda: torch sees no CUDA device"
                   + ("" if torch.version.cuda else f", torch {torch.__version__} is built without CUDA")
                   + "; use --device cpu or auto")
    assert not (tmp_path / "out").exists()
