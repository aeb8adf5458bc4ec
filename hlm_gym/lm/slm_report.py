"""``hlm-gym slm report``: how good and how cheap the SLM is, on held-out ShareGPT turns.

On the first ``n_prompts`` ShareGPT **test** turns (never seen by the recipe, which trains on
the train split and validates on the validation split), each chat-templated prompt plus its
reference reply (truncated to ``max_tokens``) is teacher-forced through both models; on
every position that predicts a reply token it measures

* the expected acceptance ``sum_v min(p_v, q_v)`` (p: LLM, q: SLM) and greedy agreement;
* the U-HLM relation: a draft ``d ~ q``, its temperature-perturbation uncertainty
  ``u`` (K=20, theta_max=2, :func:`hlm_gym.lm.uncertainty.temperature_uncertainty`) and its
  rejection probability ``beta = max(0, 1 - p(d)/q(d))``; the least-squares line
  ``beta = a u + b`` with Pearson r, and a scatter plot;

plus the per-token FLOPs of both models (:mod:`hlm_gym.lm.flops`) and their measured latency
of one KV-cached single-token decode step (median) on this machine.
"""

from __future__ import annotations

import io
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from hlm_gym.errors import HLMGymError
from hlm_gym.paths import atomic_write_bytes, atomic_write_text


class ReportError(HLMGymError, ValueError):
    """Bad report settings."""


def test_sequences(tokenizer, n_prompts: int, max_tokens: int, split: str = "test"):
    """(ids, mask) pairs for the first ``n_prompts`` usable ShareGPT turns of ``split`` (default test):
    prompt and reply cut to ``max_tokens``, the prompt to half of it; ``mask`` marks positions whose
    next token is a reply token; turns with fewer than 4 of them are skipped."""
    from hlm_gym.lm.chat_examples import encode_example
    from hlm_gym.lm.prompts import sharegpt_prompts

    out = []
    for prompt in sharegpt_prompts(split):
        enc = encode_example(tokenizer, prompt, max_prompt_tokens=max_tokens // 2,
                              max_reply_tokens=max_tokens)
        if enc is None:
            continue
        ids, mask = enc[0][:max_tokens], enc[1][:max_tokens]
        mask[-1] = 0
        if sum(mask) < 4:
            continue
        out.append((torch.tensor([ids]), torch.tensor([mask], dtype=torch.bool)))
        if len(out) == n_prompts:
            break
    return out


@torch.no_grad()
def generated_sequences(llm_model, tokenizer, n_prompts: int, new_tokens: int, max_prompt_tokens: int,
                        seed: int, batch_size: int = 16, split: str = "test"):
    """(ids, mask) pairs: the first ``n_prompts`` usable ``split`` prompts continued by the LLM itself.

    The LLM samples at temperature 1 from its full softmax (no top-k, no top-p), up to
    ``new_tokens`` tokens or ``<|im_end|>``, the same decoding as the on-policy training data
    (:mod:`hlm_gym.lm.onpolicy`); prompts are decoded ``batch_size`` at a time with the KV cache,
    batch ``b`` drawing from a generator seeded with ``seed * 100003 + b``. Prompts longer than
    ``max_prompt_tokens`` and continuations shorter than 4 tokens are skipped; ``mask`` marks the
    positions that predict a continuation token.
    """
    from hlm_gym.lm.onpolicy import continuation_example, decode_batch, sampler
    from hlm_gym.lm.prompts import chat_input_ids, sharegpt_prompts

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    candidates = (ids for ids in (chat_input_ids(tokenizer, p.text).tolist() for p in sharegpt_prompts(split)
                                  if p.text.strip())
                  if len(ids) <= max_prompt_tokens)
    out = []
    b = 0
    while len(out) < n_prompts:
        batch = [ids for _, ids in zip(range(batch_size), candidates)]
        if not batch:
            break
        gen = torch.Generator().manual_seed(seed * 100003 + b)
        for p_ids, cont in zip(batch, decode_batch(llm_model, batch, new_tokens, eos, eos, sampler(gen))):
            if len(cont) < 4 or len(out) == n_prompts:
                continue
            ids, mask = continuation_example(p_ids, cont)
            out.append((torch.tensor([ids]), torch.tensor([mask], dtype=torch.bool)))
        b += 1
    return out


def clustered_stderr(sums: list[tuple[float, int]]) -> float:
    """Standard error of ``sum(a) / sum(n)`` over prompts ``(a_i, n_i)`` (positions clustered by prompt).

    The positions of one prompt are correlated, so the plain per-position standard error is too
    small; this is the usual ratio-estimator (cluster-robust) standard error, with the
    ``k / (k - 1)`` small-sample factor over ``k`` prompts. NaN for fewer than two prompts.
    """
    k = len(sums)
    if k < 2:
        return float("nan")
    a = torch.tensor([s for s, _ in sums], dtype=torch.float64)
    n = torch.tensor([c for _, c in sums], dtype=torch.float64)
    mean = a.sum() / n.sum()
    return float(((a - mean * n) ** 2).sum().sqrt() / n.sum() * (k / (k - 1)) ** 0.5)


@torch.no_grad()
def decode_latency(model, context: int, steps: int, vocab: int, seed: int = 0) -> float:
    """Median seconds of one KV-cached single-token decode step after ``context`` tokens."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, max(context, 1)), generator=g)
    out = model(input_ids=ids, use_cache=True, cache=DynamicCache())
    cache = out.cache
    tok = out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps + 3):
        t0 = time.perf_counter()
        out = model(input_ids=tok, cache=cache, use_cache=True)
        times.append(time.perf_counter() - t0)
        cache = out.cache
        tok = out.logits[:, -1:].argmax(-1)
    return statistics.median(times[3:])


def _scatter_png(u, beta, fit, path: Path, seed: int, max_points: int = 6000,
                 title: str = "Distilled SLM vs LLM on held-out ShareGPT turns (reference replies)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(u))[:max_points]
    uj = u[idx] + rng.uniform(-0.012, 0.012, len(idx))  # u lives on a 1/K grid: jitter for legibility
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.scatter(uj, beta[idx], s=4, alpha=0.15, color="tab:blue", label=f"positions (subsample {len(idx)})")
    grid = np.unique(u)
    means = [beta[u == g].mean() for g in grid]
    ax.plot(grid, means, "o", color="tab:orange", ms=4, label="mean beta per u")
    xs = np.linspace(0, 1, 2)
    ax.plot(xs, fit["slope"] * xs + fit["intercept"], "r-", lw=2,
            label=f"fit: beta = {fit['slope']:.3f} u + {fit['intercept']:.3f} (r = {fit['r']:.3f})")
    ax.set_xlabel("temperature-perturbation uncertainty u (K=20, theta_max=2)")
    ax.set_ylabel("rejection probability beta = max(0, 1 - p(d)/q(d))")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _with_se(res: dict) -> str:
    """``0.5550 (s.e. 0.0030 by position, 0.0080 by prompt)``."""
    return (f"{res['expected_acceptance']:.4f} (s.e. {res['expected_acceptance_stderr']:.4f} by position, "
            f"{res['expected_acceptance_stderr_prompts']:.4f} by prompt)")


def run_report(slm_dir=None, n_prompts: int = 100, max_tokens: int = 256, context: int = 256,
               latency_steps: int = 50, seed: int = 0, out_dir="runs/slm_report",
               threads: int | None = None, print_table: bool = True, generated: int = 0,
               gen_tokens: int = 128) -> dict:
    """Compute the report (see the module docstring); writes ``report.json`` and ``beta_vs_u.png``."""
    import numpy as np
    from scipy import stats
    from tqdm.auto import tqdm

    from hlm_gym.lm.flops import max_context_within_ratio, model_token_flops
    from hlm_gym.lm.models import EMBEDDED_LLM, load_model
    from hlm_gym.lm.slm import read_artifact_config, slm_from_delta
    from hlm_gym.lm.speculative import rejection_probability
    from hlm_gym.lm.uncertainty import temperature_uncertainty

    if n_prompts < 1 or max_tokens < 8 or latency_steps < 1 or context < 1 or generated < 0 or gen_tokens < 1:
        raise ReportError("prompts, latency steps and context must be >= 1 and max tokens >= 8")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    from hlm_gym.lm.distill import check_output_folder

    out_dir = check_output_folder(out_dir, "report folder", ReportError)  # before the models load
    llm = load_model(EMBEDDED_LLM)
    slm = slm_from_delta(llm, slm_dir)
    art = read_artifact_config(slm_dir)
    def measure(seqs, desc):
        gen = torch.Generator().manual_seed(seed)
        acc, agree, us, betas, sums = [], [], [], [], []
        for ids, mask in tqdm(seqs, desc=desc, dynamic_ncols=True):
            with torch.no_grad():
                pl = llm.model(input_ids=ids, use_cache=False).logits[mask].float()
                ql = slm.model(input_ids=ids, use_cache=False).logits[mask].float()
                p, q = torch.softmax(pl, -1), torch.softmax(ql, -1)
                acc.append(torch.minimum(p, q).sum(-1))
                sums.append((float(acc[-1].sum()), int(acc[-1].numel())))
                agree.append((p.argmax(-1) == q.argmax(-1)).float())
                d = torch.multinomial(q, 1, generator=gen).squeeze(-1)
                for i in range(0, len(d), 32):
                    us.append(temperature_uncertainty(ql[i:i + 32], d[i:i + 32], gen, k=20, theta_max=2.0))
                betas.append(rejection_probability(q, p, d))
        acc_t, agree_t = torch.cat(acc), torch.cat(agree)
        u = torch.cat(us).numpy().astype(np.float64)
        beta = torch.cat(betas).numpy().astype(np.float64)
        lr = stats.linregress(u, beta)
        fit = {"slope": float(lr.slope), "intercept": float(lr.intercept), "r": float(lr.rvalue),
               "n": int(len(u)), "mean_u": float(u.mean()), "mean_beta": float(beta.mean())}
        res = {"prompts": len(seqs), "positions": int(len(acc_t)),
               "expected_acceptance": float(acc_t.mean()),
               "expected_acceptance_stderr": float(acc_t.std() / len(acc_t) ** 0.5),
               "expected_acceptance_stderr_prompts": clustered_stderr(sums),
               "greedy_agreement": float(agree_t.mean()), "beta_vs_u": fit}
        return res, u, beta

    seqs = test_sequences(llm.tokenizer, n_prompts, max_tokens)
    ref, u, beta = measure(seqs, "reference replies")
    fit = ref["beta_vs_u"]
    gen_res = None
    if generated > 0:
        gseqs = generated_sequences(llm.model, llm.tokenizer, generated, gen_tokens, max_tokens // 2, seed)
        gen_res, gu, gbeta = measure(gseqs, "LLM continuations")

    flops = {}
    for ctx in (1, context):
        f_s = model_token_flops(slm.model, context=ctx)
        f_l = model_token_flops(llm.model, context=ctx)
        flops[str(ctx)] = {"slm": f_s.as_dict(), "llm": f_l.as_dict(), "ratio": f_s.total / f_l.total}
    flops["max_context_at_half"] = max_context_within_ratio(slm.model, llm.model, 0.5)
    vocab = int(llm.model.config.vocab_size)
    lat_s = decode_latency(slm.model, context, latency_steps, vocab, seed)
    lat_l = decode_latency(llm.model, context, latency_steps, vocab, seed)

    report = {
        "slm": {"name": slm.name, "fingerprint": slm.fingerprint, "layers": art["layers"],
                "rank": art["rank"], "vocab": art.get("vocab")},
        "llm": {"name": llm.name, "fingerprint": llm.fingerprint},
        "data": {"split": "test", "prompts": len(seqs), "positions": ref["positions"],
                 "max_tokens": max_tokens, "teacher_forced_on": "reference replies"},
        "expected_acceptance": ref["expected_acceptance"],
        "expected_acceptance_stderr": ref["expected_acceptance_stderr"],
        "expected_acceptance_stderr_prompts": ref["expected_acceptance_stderr_prompts"],
        "greedy_agreement": ref["greedy_agreement"],
        "llm_continuations": None if gen_res is None else {
            **gen_res, "split": "test", "new_tokens": gen_tokens,
            "sampling": "temperature 1, no top-k/top-p, batches of 16 with the KV cache"},
        "flops_per_token": flops,
        "latency_s": {"context": context, "steps": latency_steps, "slm": lat_s, "llm": lat_l,
                      "ratio": lat_s / lat_l, "threads": torch.get_num_threads(),
                      "machine": platform.processor() or platform.machine()},
        "beta_vs_u": fit,
        "seed": seed,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))
    _scatter_png(u, beta, fit, out_dir / "beta_vs_u.png", seed)
    if gen_res is not None:
        _scatter_png(gu, gbeta, gen_res["beta_vs_u"], out_dir / "beta_vs_u_llm_continuations.png", seed,
                     title="Distilled SLM vs LLM on LLM continuations of held-out prompts")
    if print_table:
        f1, fc = flops["1"], flops[str(context)]
        rows = [
            ("reference replies of test turns: prompts / positions", f"{len(seqs)} / {ref['positions']}"),
            ("  expected acceptance E[sum min(p,q)]", _with_se(ref)),
            ("  greedy agreement", f"{report['greedy_agreement']:.4f}"),
            ("FLOPs/token SLM, LLM (context 1)", f"{f1['slm']['total'] / 1e6:.1f} M, {f1['llm']['total'] / 1e6:.1f} M"),
            ("FLOP ratio SLM/LLM (context 1)", f"{f1['ratio']:.3f}"),
            (f"FLOP ratio SLM/LLM (context {context})", f"{fc['ratio']:.3f}"),
            ("ratio <= 0.5 up to context", "every context" if flops["max_context_at_half"] is None
             else str(flops["max_context_at_half"])),
            (f"decode latency SLM, LLM (context {context})", f"{lat_s * 1e3:.2f} ms, {lat_l * 1e3:.2f} ms "
                                                            f"(ratio {lat_s / lat_l:.3f})"),
            ("beta = a u + b: slope a", f"{fit['slope']:.4f}"),
            ("intercept b", f"{fit['intercept']:.4f}"),
            ("Pearson r", f"{fit['r']:.4f}"),
        ]
        if gen_res is not None:
            g = gen_res
            rows += [
                ("LLM continuations of test prompts (T=1): prompts / positions", f"{g['prompts']} / {g['positions']}"),
                ("  expected acceptance", _with_se(g)),
                ("  greedy agreement", f"{g['greedy_agreement']:.4f}"),
                ("  beta = a u + b: slope, intercept, r",
                 f"{g['beta_vs_u']['slope']:.4f}, {g['beta_vs_u']['intercept']:.4f}, {g['beta_vs_u']['r']:.4f}"),
            ]
        w = max(len(k) for k, _ in rows)
        print(f"SLM report: {slm.name} vs {llm.name}")
        for k, v in rows:
            print(f"  {k:<{w}}  {v}")
        print(f"wrote {out_dir / 'report.json'} and {out_dir / 'beta_vs_u.png'}")
    return report
