"""On-policy distillation data and the warm start of ``hlm-gym slm build`` (issue 16).

Fast tests run on tiny random-init models with a stand-in tokenizer and a few synthetic
prompts; the one test that loads the embedded LLM is marked ``slow``.
"""

from __future__ import annotations

import json

import pytest
import torch

import hlm_gym.lm.distill as distill
import hlm_gym.lm.onpolicy as onpolicy
from hlm_gym.lm.distill import BuildConfig, DistillError, build, check_onpolicy_settings, export_artifact
from hlm_gym.lm.model_types import LoadedModel
from hlm_gym.lm.onpolicy import (TRAIN_FILE, VAL_FILE, continuation_data, continuation_example, decode_batch,
                                 mixed_row, pack_examples, sampler)
from hlm_gym.lm.prompts import Prompt
from hlm_gym.lm.slm import read_delta, slm_from_delta
from hlm_gym.lm.slm_report import clustered_stderr
from hlm_gym.lm.student import delta_state
from tests.tiny_models import EOS, VOCAB, tiny_model

torch.set_num_threads(1)


class ToyTokenizer:
    """A callable stand-in tokenizer: each word maps to one id in 3..VOCAB-1; id 2 ends a turn."""

    chat_template = None
    eos_token_id = EOS
    unk_token_id = None
    all_special_ids = [0, 1, EOS]

    class _Enc:
        def __init__(self, ids):
            self.input_ids = ids

    def __call__(self, text, add_special_tokens=True):
        return self._Enc([3 + sum(map(ord, w)) % (VOCAB - 3) for w in text.split()])

    def convert_tokens_to_ids(self, token):
        return EOS if token == "<|im_end|>" else 0

    def __len__(self):
        return VOCAB


def _prompts(n: int, seed: int) -> tuple[Prompt, ...]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words = [f"w{int(x)}" for x in torch.randint(0, 200, (int(torch.randint(3, 9, (1,), generator=g)),),
                                                      generator=g)]
        reply = [f"r{int(x)}" for x in torch.randint(0, 200, (40,), generator=g)]
        out.append(Prompt(f"p{seed}-{i}", " ".join(words), " ".join(reply)))
    return tuple(out)


@pytest.fixture(scope="module")
def tiny_llm() -> LoadedModel:
    return LoadedModel(tiny_model(3, layers=2), ToyTokenizer(), "tiny", "tiny-llm", "tiny-llm-fingerprint")


@pytest.fixture
def toy_data(monkeypatch):
    """Synthetic train/validation prompts in place of ShareGPT's, and no chat-template check batch."""
    monkeypatch.setattr(distill, "train_prompts", lambda: _prompts(40, 1))
    monkeypatch.setattr(distill, "eval_prompts", lambda: _prompts(12, 2))
    monkeypatch.setattr(distill, "check_acceptance", lambda *a: {"acceptance": 0.5, "positions": 1})


def _greedy(logits):
    return logits.argmax(-1)


# ----------------------------------------------------------------------------- batched decoding
def test_batched_decoding_matches_unbatched_full_recompute(tiny_llm):
    model = tiny_llm.model
    prompts = [[5, 9, 11], [7, 8, 9, 10, 12, 30, 31], [40], [3, 4, 5, 6, 7]]
    conts = decode_batch(model, prompts, 10, eos_id=None, pad_id=0, draw=_greedy)
    assert [len(c) for c in conts] == [10] * 4
    for p, c in zip(prompts, conts):
        ids = list(p)
        for _ in range(10):  # one prompt, no padding, no cache
            with torch.no_grad():
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert ids[len(p):] == c


def test_decoding_stops_after_eos_and_keeps_it():
    model = tiny_model(3, layers=2)
    calls = [0]

    def draw(logits):  # row 0 ends at its 3rd token; row 1 never does
        calls[0] += 1
        tok = torch.full((logits.shape[0],), 5)
        if calls[0] == 3:
            tok[0] = EOS
        return tok

    conts = decode_batch(model, [[4, 5], [6, 7, 8]], 6, eos_id=EOS, pad_id=0, draw=draw)
    assert conts == [[5, 5, EOS], [5] * 6]
    assert calls[0] == 6


def test_sampler_draws_from_the_full_softmax_with_its_generator():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(4000, 1)
    a = sampler(torch.Generator().manual_seed(7))(logits)
    b = sampler(torch.Generator().manual_seed(7))(logits)
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=4).double() / len(a)
    assert torch.allclose(freq, torch.softmax(logits[0].double(), -1), atol=0.03)


# ----------------------------------------------------------------------------- cached data
def test_continuation_data_shapes_and_cache_reuse(tiny_llm, tmp_path, monkeypatch):
    prompts = _prompts(20, 3)
    path = tmp_path / "run" / TRAIN_FILE
    args = (tiny_llm.model, tiny_llm.tokenizer, prompts, path, 9, 12, 64, 5, "fp")
    ex = continuation_data(*args, batch_size=4, progress=False)
    assert len(ex) == 9 and path.is_file()
    saved = json.loads(path.read_text())
    assert saved["settings"]["n_prompts"] == 9 and len(saved["continuations"]) == 9
    for ids, mask in ex:
        n_cont = sum(mask)
        assert len(ids) == len(mask) and 1 <= n_cont <= 12
        start = mask.index(1)
        assert mask[start:start + n_cont] == [1] * n_cont and mask[-1] == 0  # the last token predicts nothing
        assert ids[-1] == EOS or n_cont == 12
    # a second call reads the file and decodes nothing
    monkeypatch.setattr(onpolicy, "decode_batch", lambda *a: pytest.fail("decoded again"))
    assert continuation_data(*args, batch_size=4, progress=False) == ex
    monkeypatch.undo()
    # other settings (another LLM) are not reused
    other = continuation_data(tiny_llm.model, tiny_llm.tokenizer, prompts, path, 9, 12, 64, 5, "fp2",
                              batch_size=4, progress=False)
    assert json.loads(path.read_text())["settings"]["llm"] == "fp2" and len(other) == 9


def test_interrupted_generation_resumes_exactly(tiny_llm, tmp_path):
    prompts = _prompts(20, 4)
    full = continuation_data(tiny_llm.model, tiny_llm.tokenizer, prompts, tmp_path / "a.json", 10, 8, 64, 1, "fp",
                             batch_size=3, progress=False)
    path = tmp_path / "b.json"
    data = json.loads((tmp_path / "a.json").read_text())
    keep = sorted(data["continuations"], key=int)[:4]  # as if killed after some batches
    data["continuations"] = {k: data["continuations"][k] for k in keep}
    path.write_text(json.dumps(data))
    assert continuation_data(tiny_llm.model, tiny_llm.tokenizer, prompts, path, 10, 8, 64, 1, "fp",
                             batch_size=3, progress=False) == full


def test_a_cache_grows_by_a_segment_and_keeps_what_it_had(tiny_llm, tmp_path, monkeypatch):
    prompts = _prompts(30, 6)
    path = tmp_path / TRAIN_FILE
    args = (tiny_llm.model, tiny_llm.tokenizer, prompts, path)
    small = continuation_data(*args, 6, 8, 64, 2, "fp", batch_size=4, progress=False)
    data = json.loads(path.read_text())
    assert data["segments"] == [6]
    del data["segments"]  # a file written before segments existed reads as one segment
    path.write_text(json.dumps(data))
    decoded = []
    real = onpolicy.decode_batch

    def spy(model, rows, *rest):
        decoded.extend(rows)
        return real(model, rows, *rest)

    monkeypatch.setattr(onpolicy, "decode_batch", spy)
    grown = continuation_data(*args, 11, 8, 64, 2, "fp", batch_size=4, progress=False)
    assert grown[:6] == small and len(grown) == 11
    new_prompts = [ids for _, ids in onpolicy.choose_prompts(tiny_llm.tokenizer, prompts, 11, 64, 2)[6:]]
    assert sorted(map(list, decoded)) == sorted(new_prompts)  # only the new prompts were decoded
    assert json.loads(path.read_text())["segments"] == [6, 11]
    decoded.clear()
    assert continuation_data(*args, 11, 8, 64, 2, "fp", batch_size=4, progress=False) == grown and not decoded
    # a fresh cache of 11 is one segment: the first 6 are batched with the rest, so other draws
    fresh = continuation_data(tiny_llm.model, tiny_llm.tokenizer, prompts, tmp_path / "fresh.json", 11, 8, 64, 2,
                              "fp", batch_size=4, progress=False)
    assert json.loads((tmp_path / "fresh.json").read_text())["segments"] == [11] and len(fresh) == 11
    # another setting (tokens) regenerates instead of growing
    decoded.clear()
    continuation_data(*args, 11, 7, 64, 2, "fp", batch_size=4, progress=False)
    assert len(decoded) == 11 and json.loads(path.read_text())["segments"] == [11]


def test_continuation_example_masks_the_continuation():
    ids, mask = continuation_example([1, 2, 3], [7, 8])
    assert ids == [1, 2, 3, 7, 8] and mask == [0, 0, 1, 1, 0]


def test_pack_examples_rows():
    ex = [continuation_example(list(range(3, 3 + k)), [9] * k) for k in range(2, 12)]
    ids, mask = pack_examples(ex, 16, seed=0)
    assert ids.shape == mask.shape and ids.shape[1] == 16 and ids.shape[0] == sum(2 * k for k in range(2, 12)) // 16
    assert not mask[:, -1].any() and mask.any()
    assert pack_examples(ex, 16, n_rows=2)[0].shape == (2, 16)
    with pytest.raises(DistillError, match="not enough"):
        pack_examples(ex[:1], 64)


# ----------------------------------------------------------------------------- mixing
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.7, 0.75, 1.0])
def test_mixed_rows_hold_the_fraction(fraction):
    rows = [mixed_row(k, fraction, 7, 5) for k in range(400)]
    share = sum(on for on, _ in rows) / len(rows)
    assert abs(share - fraction) <= 1 / 400
    for w in range(0, 360, 40):  # every window of 40 rows holds the share up to one row
        assert abs(sum(on for on, _ in rows[w:w + 40]) - 40 * fraction) <= 1
    refs = [i for on, i in rows if not on]
    ons = [i for on, i in rows if on]
    assert refs == [k % 7 for k in range(len(refs))] and ons == [k % 5 for k in range(len(ons))]


def test_zero_fraction_is_the_old_row_order():
    assert [mixed_row(k, 0.0, 13, 0) for k in range(30)] == [(False, k % 13) for k in range(30)]


def test_bad_fraction_and_settings_are_clear_errors():
    with pytest.raises(DistillError, match=r"\[0, 1\]"):
        mixed_row(0, 1.5, 3, 3)
    with pytest.raises(DistillError, match="none"):
        mixed_row(0, 1.0, 3, 0)
    for kwargs, flag in (({"on_policy_fraction": -0.1}, "--on-policy-fraction"),
                         ({"on_policy_fraction": float("nan")}, "--on-policy-fraction"),
                         ({"on_policy_prompts": 0}, "--on-policy-prompts"),
                         ({"on_policy_tokens": 0}, "--on-policy-tokens"),
                         ({"on_policy_batch": 0}, "--on-policy-batch"),
                         ({"on_policy_eval_prompts": -1}, "--on-policy-eval-prompts")):
        with pytest.raises(DistillError, match=flag):
            check_onpolicy_settings(BuildConfig(**kwargs))
    check_onpolicy_settings(BuildConfig(on_policy_fraction=1))


@pytest.mark.parametrize("argv, message", [
    (["--on-policy-fraction", "2"], "--on-policy-fraction must lie in [0, 1], got 2.0"),
    (["--on-policy-prompts", "0"], "--on-policy-prompts must be an integer >= 1"),
    (["--init-from", "NOWHERE"], "not a folder"),
    (["--init-from", "hlm_gym/data/slm", "--layers", "0-3"], "drop --layers"),
    (["--init-from", "hlm_gym/data/slm", "--resume"], "--init-from starts a new run"),
    (["--extra-rank", "8"], "--extra-rank applies only to a new run started with --init-from"),
    (["--extra-rank", "8", "--resume"], "--extra-rank applies only to a new run started with --init-from"),
])
def test_cli_flag_errors_are_one_line(tmp_path, capsys, argv, message):
    from hlm_gym.cli.main import main

    argv = [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in argv]
    assert main(["slm", "build", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_init_from_a_folder_without_an_artifact_is_a_clear_error(tmp_path, capsys):
    from hlm_gym.cli.main import main

    (tmp_path / "empty").mkdir()
    assert main(["slm", "build", "--out", str(tmp_path / "run"), "--init-from", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--init-from" in err and "missing" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- build
def _tiny_cfg(**kw) -> BuildConfig:
    base = dict(layers=[0, 1], rank=4, alpha=8.0, steps=4, batch_size=2, seq_len=32, lr=1e-2, warmup=1,
                eval_every=2, eval_sequences=2, ckpt_every=2, vocab=40, mlp_width=48, calib_sequences=2,
                on_policy_prompts=10, on_policy_tokens=12, on_policy_batch=4, on_policy_eval_prompts=4,
                on_policy_max_prompt=64)
    base.update(kw)
    return BuildConfig(**base)


def test_build_with_onpolicy_rows_logs_both_validations_and_resumes(tiny_llm, tmp_path, toy_data, monkeypatch):
    run = tmp_path / "run"
    seen = []
    real = distill.mixed_row
    monkeypatch.setattr(distill, "mixed_row", lambda *a: seen.append(real(*a)[0]) or real(*a))
    build(_tiny_cfg(on_policy_fraction=0.5, steps=2), run, llm=tiny_llm, progress=False, log=lambda *a: None)
    assert (run / TRAIN_FILE).is_file() and (run / VAL_FILE).is_file()
    assert seen == [False, True, False, True]
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert "val_onpolicy_acc" in recs[-1] and 0 < recs[-1]["val_onpolicy_acc"] <= 1
    # the prompts continued for training are train prompts, those for monitoring validation prompts
    data = json.loads((run / TRAIN_FILE).read_text())
    assert data["settings"]["n_prompts"] == 10 and len(data["continuations"]) == 10
    assert set(data["prompts"]) <= {p.id for p in _prompts(40, 1)}
    assert set(json.loads((run / VAL_FILE).read_text())["prompts"]) <= {p.id for p in _prompts(12, 2)}
    # a resumed run reuses the cached continuations
    monkeypatch.setattr(onpolicy, "decode_batch", lambda *a: pytest.fail("decoded again"))
    _, cfg, summary = build(_tiny_cfg(steps=4), run, resume=True, llm=tiny_llm, progress=False, log=lambda *a: None)
    assert summary["steps"] == 4 and cfg.on_policy_fraction == 0.5


def test_init_from_round_trip(tiny_llm, tmp_path, toy_data):
    student, cfg, summary = build(_tiny_cfg(steps=3), tmp_path / "a", llm=tiny_llm, progress=False,
                                  log=lambda *a: None)
    with torch.no_grad():
        student.model.norm.weight.div_(0.8)  # as calibrate_temperature folds T = 0.8
    export_artifact(student, cfg, tiny_llm, tmp_path / "art", {**summary, "calibration": {"temperature": 0.8}})
    art, delta, vocab_ids, mlp_keep, _ = read_delta(tiny_llm, tmp_path / "art")
    # a run started from the artifact with a zero learning rate keeps its adapters and kept units,
    # with the draft temperature unfolded from the final norm
    logs = []
    warm, wcfg, _ = build(_tiny_cfg(steps=1, lr=0.0, layers=[1], rank=2, vocab=None, mlp_width=None,
                                    init_from=str(tmp_path / "art")),
                          tmp_path / "b", llm=tiny_llm, progress=False, log=logs.append)
    assert wcfg.layers == [0, 1] and wcfg.rank == 4 and wcfg.alpha == 8.0 and wcfg.mlp_width == 48
    assert torch.equal(warm.lm_head.ids, vocab_ids.long()) and torch.equal(warm.hlm_mlp_keep, mlp_keep.long())
    got = delta_state(warm)
    assert set(got) == set(delta)
    for name, t in delta.items():
        want = t.float() * (0.8 if name == "model.norm.weight" else 1.0)
        assert torch.allclose(got[name], want, atol=1e-6), name
    assert any("initialised from" in line for line in logs)
    # the run's checkpoint records the start and resumes without the artifact
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert saved["config"]["init_from"] == str(tmp_path / "art")
    (tmp_path / "art" / "slm.safetensors").unlink()
    _, _, summary = build(_tiny_cfg(steps=2), tmp_path / "b", resume=True, llm=tiny_llm, progress=False,
                          log=lambda *a: None)
    assert summary["steps"] == 2


def test_extra_rank_widens_the_artifacts_adapters_without_changing_the_start(tiny_llm, tmp_path, toy_data):
    student, cfg, summary = build(_tiny_cfg(steps=3), tmp_path / "a", llm=tiny_llm, progress=False,
                                  log=lambda *a: None)
    export_artifact(student, cfg, tiny_llm, tmp_path / "art", summary)
    _, delta, *_ = read_delta(tiny_llm, tmp_path / "art")
    warm, wcfg, _ = build(_tiny_cfg(steps=1, lr=0.0, init_from=str(tmp_path / "art"), extra_rank=3),
                          tmp_path / "b", llm=tiny_llm, progress=False, log=lambda *a: None)
    assert wcfg.rank == 7 and wcfg.alpha == 14.0  # the artifact's scale alpha/rank = 2 kept
    got = delta_state(warm)
    a_name = next(n for n in delta if n.endswith("lora_A"))
    b_name = a_name[:-1] + "B"
    assert got[a_name].shape[0] == 7 and got[b_name].shape[1] == 7
    assert torch.allclose(got[a_name][:4], delta[a_name].float(), atol=1e-6)
    assert torch.equal(got[b_name][:, 4:], torch.zeros_like(got[b_name][:, 4:]))  # new directions: no effect
    # so the widened student computes what the artifact's student computes
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    start, _, _ = build(_tiny_cfg(steps=1, lr=0.0, init_from=str(tmp_path / "art")), tmp_path / "c",
                        llm=tiny_llm, progress=False, log=lambda *a: None)
    with torch.no_grad():
        assert torch.allclose(warm(ids).logits, start(ids).logits, atol=1e-5)
    # it exports at the widened rank and loads back computing the same (fp16 adapters)
    export_artifact(warm, wcfg, tiny_llm, tmp_path / "wide", {})
    art, wide, *_ = read_delta(tiny_llm, tmp_path / "wide")
    assert art["rank"] == 7 and wide[a_name].shape[0] == 7
    with torch.no_grad():
        loaded = slm_from_delta(tiny_llm, tmp_path / "wide").model
        assert torch.allclose(loaded(ids).logits.float(), warm(ids).logits, atol=2e-3)
    # the run resumes at the widened rank without the artifact it started from
    (tmp_path / "art" / "slm.safetensors").unlink()
    resumed, rcfg, summary = build(_tiny_cfg(steps=2), tmp_path / "b", resume=True, llm=tiny_llm, progress=False,
                                   log=lambda *a: None)
    assert rcfg.rank == 7 and summary["steps"] == 2 and delta_state(resumed)[a_name].shape[0] == 7


@pytest.mark.parametrize("kwargs, message", [
    (dict(extra_rank=-1), "--extra-rank must be an integer >= 0"),
    (dict(extra_rank=4), "--extra-rank applies only to a new run started with --init-from"),
])
def test_extra_rank_errors(kwargs, message):
    with pytest.raises(DistillError, match=message):
        cfg = BuildConfig(**kwargs)
        distill.check_extra_rank(cfg.extra_rank, cfg.init_from)


def test_init_from_another_llms_artifact_is_refused(tiny_llm, tmp_path, toy_data):
    other = LoadedModel(tiny_llm.model, tiny_llm.tokenizer, "tiny", "tiny-llm", "another-fingerprint")
    student, cfg, summary = build(_tiny_cfg(steps=1), tmp_path / "a", llm=other, progress=False, log=lambda *a: None)
    export_artifact(student, cfg, other, tmp_path / "art", summary)
    with pytest.raises(DistillError, match="--init-from .*distilled from LLM"):
        build(_tiny_cfg(init_from=str(tmp_path / "art")), tmp_path / "b", llm=tiny_llm, progress=False,
              log=lambda *a: None)


# ----------------------------------------------------------------------------- report
def test_clustered_stderr_of_equal_clusters_is_the_stderr_of_their_means():
    sums = [(3.0, 5), (1.0, 5), (4.5, 5), (2.0, 5)]
    means = torch.tensor([a / n for a, n in sums], dtype=torch.float64)
    assert clustered_stderr(sums) == pytest.approx(float(means.std() / 2.0))
    assert clustered_stderr([(1.0, 3)]) != clustered_stderr([(1.0, 3)])  # NaN for one prompt


# ----------------------------------------------------------------------------- the embedded LLM
@pytest.mark.slow
def test_batched_continuations_of_the_embedded_llm_match_generate():
    from hlm_gym.lm.models import EMBEDDED_LLM, load_model
    from hlm_gym.lm.prompts import chat_input_ids

    llm = load_model(EMBEDDED_LLM)
    prompts = [chat_input_ids(llm.tokenizer, t).tolist() for t in ("What is the capital of France?",
                                                                      "Write a haiku about rain in autumn, please.")]
    eos = llm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    conts = decode_batch(llm.model, prompts, 12, eos, eos, _greedy)
    for p, c in zip(prompts, conts):
        gen = llm.model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=12, eos_token_id=eos,
                                 pad_token_id=eos)
        assert gen[0, len(p):].tolist() == c


def test_report_continuations_are_batched_deterministic_and_prefix_stable(tiny_llm, monkeypatch):
    import hlm_gym.lm.prompts as prompts_mod
    from hlm_gym.lm.slm_report import generated_sequences

    asked = []
    monkeypatch.setattr(prompts_mod, "sharegpt_prompts", lambda split: asked.append(split) or list(_prompts(30, 9)))
    tok = ToyTokenizer()
    a = generated_sequences(tiny_llm.model, tok, 7, 10, 64, seed=3, batch_size=4)
    b = generated_sequences(tiny_llm.model, tok, 7, 10, 64, seed=3, batch_size=4)
    assert set(asked) == {"test"} and len(a) == 7
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    for ids, mask in a:
        assert ids.shape == mask.shape and ids.shape[0] == 1 and 4 <= int(mask.sum()) <= 10
    short = generated_sequences(tiny_llm.model, tok, 3, 10, 64, seed=3, batch_size=4)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(short, a[:3]))
    other = generated_sequences(tiny_llm.model, tok, 7, 10, 64, seed=4, batch_size=4)
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, other))
