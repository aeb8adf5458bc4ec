"""``hlm-gym moe report``: what the MoE's expert selection costs in held-out perplexity.

On the first ``n_prompts`` usable ShareGPT conversations of a held-out split (``test`` by
default; the recipe runs on ``train``), the chat-templated prompt plus its reference reply (cut
to ``max_tokens`` tokens, the prompt to at most half of them) is teacher-forced through

* the dense model;
* the MoE with the router's top-k experts at every token and layer, k = 1..E (k = E selects
  every expert, and must equal the dense model);
* the MoE with the oracle top-k: the k experts with the largest true output norms ``||y_e||``
  at that token and layer (k = 1..E-1; an upper reference for the router).

Perplexity is ``exp`` of the mean negative log-likelihood of the reply tokens (the positions
that predict a reply token, the closing ``<|im_end|>`` included). Every row of the MoE runs
the selected experts at all positions, prompt included.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from hlm_gym.lm.moe import MoEError, MoEModel
from hlm_gym.paths import atomic_write_text

__all__ = ["eval_batches", "markdown_table", "perplexity", "run_moe_report"]


def eval_batches(tokenizer, split: str, n_prompts: int, max_tokens: int,
                 batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(ids, attention_mask, reply_mask)`` batches of the first ``n_prompts`` usable conversations of ``split``.

    ``reply_mask[b, t]`` marks positions whose next token is a reply token. Conversations with
    fewer than 4 such positions are skipped. Batches are right-padded.
    """
    from hlm_gym.lm.slm_report import test_sequences

    seqs = [(ids[0].tolist(), mask[0].tolist()) for ids, mask in test_sequences(tokenizer, n_prompts, max_tokens, split)]
    out = []
    for k in range(0, len(seqs), batch_size):
        group = seqs[k:k + batch_size]
        width = max(len(s) for s, _ in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        attn = torch.zeros(len(group), width, dtype=torch.long)
        reply = torch.zeros(len(group), width, dtype=torch.bool)
        for r, (s, m) in enumerate(group):
            ids[r, :len(s)] = torch.tensor(s)
            attn[r, :len(s)] = 1
            reply[r, :len(s)] = torch.tensor(m, dtype=torch.bool)
        out.append((ids, attn, reply))
    return out


def _nll(logits: torch.Tensor, ids: torch.Tensor, reply: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihoods ``(n,)`` of the reply tokens (position t predicts token t+1)."""
    targets = torch.roll(ids, -1, dims=1)
    return torch.nn.functional.cross_entropy(logits[reply].float(), targets[reply], reduction="none")


@torch.no_grad()
def perplexity(moe: MoEModel, batches, top_k: Optional[int] = None, rank_by: str = "router",
               dense: bool = False) -> dict:
    """Held-out perplexity of one configuration: the dense model (``dense``), all experts (no
    ``top_k``) or the top-k by ``rank_by``; with its mean NLL and the NLL's standard error."""
    nll = []
    for ids, attn, reply in batches:
        if dense:
            logits = moe.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        else:
            logits = moe.logits(ids, attn, top_k=top_k, rank_by=rank_by)
        nll.append(_nll(logits, ids, reply))
    v = torch.cat(nll).double()
    mean = float(v.mean())
    return {"ppl": math.exp(mean), "nll": mean, "nll_stderr": float(v.std() / math.sqrt(len(v))), "tokens": len(v)}


def run_moe_report(spec_dir=None, split: str = "test", n_prompts: int = 24, max_tokens: int = 160,
                   batch_size: int = 8, oracle: bool = True, out_dir=None, threads: Optional[int] = None,
                   progress: bool = True, print_table: bool = True) -> dict:
    """Measure the table (see the module docstring); writes ``report.json`` and ``report.md`` into ``out_dir``."""
    from tqdm.auto import tqdm

    from hlm_gym.lm.models import EMBEDDED_LLM, load_model
    from hlm_gym.lm.moe import load_moe_spec
    from hlm_gym.lm.prompts import SPLITS
    from hlm_gym.paths import folder_problem

    if split not in SPLITS:
        raise MoEError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if n_prompts < 1 or max_tokens < 8 or batch_size < 1:
        raise MoEError("--prompts and --batch-size must be >= 1 and --max-tokens >= 8")
    if out_dir is not None and (problem := folder_problem(out_dir)):
        raise MoEError(f"report folder {out_dir}: {problem}")
    spec = load_moe_spec(spec_dir)
    if threads:
        torch.set_num_threads(threads)
    llm = load_model(EMBEDDED_LLM)
    moe = MoEModel(llm, spec)
    batches = eval_batches(llm.tokenizer, split, n_prompts, max_tokens, batch_size)
    if not batches:
        raise MoEError(f"no usable conversations in split {split!r}")
    e = spec.n_experts
    jobs = [("dense", None, "router", True)] + [(f"router top-{k}", k, "router", False) for k in range(1, e + 1)]
    if oracle:
        jobs += [(f"oracle top-{k}", k, "norm", False) for k in range(1, e)]
    t0 = time.perf_counter()
    results = {}
    for name, k, rank_by, dense in tqdm(jobs, desc="moe report", unit="config", disable=not progress,
                                        dynamic_ncols=True):
        results[name] = perplexity(moe, batches, k, rank_by, dense)
    ids, attn, _ = batches[0]
    with torch.no_grad():
        dense_logits = moe.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    diff = float((moe.logits(ids, attn, top_k=e) - dense_logits).abs().max())
    report = {
        "spec": {"fingerprint": spec.fingerprint, "n_experts": e, "expert_size": spec.expert_size,
                 "n_layers": spec.n_layers, "model_fingerprint": spec.model_fingerprint, "path": str(spec_dir or "shipped")},
        "model": {"name": llm.name, "fingerprint": llm.fingerprint},
        "data": {"split": split, "prompts": sum(int(b[0].shape[0]) for b in batches), "max_tokens": max_tokens,
                 "reply_tokens": results["dense"]["tokens"], "teacher_forced_on": "reference replies"},
        "results": results,
        "max_abs_logit_diff_all_experts_vs_dense": diff,
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(),
    }
    table = markdown_table(report)
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(out / "report.md", table + "\n")
    if print_table:
        print(table)
        print(f"\nall experts vs dense: max |logit difference| {diff:.3g}; {report['seconds']} s")
    moe.restore()
    return report


def markdown_table(report: dict) -> str:
    """The report's perplexity table in markdown (one row per k, dense on top)."""
    res, spec = report["results"], report["spec"]
    e, s = spec["n_experts"], spec["expert_size"]
    dense = res["dense"]
    oracle = any(name.startswith("oracle") for name in res)
    head = "| experts per token and layer (k) | active MLP neurons | router top-k perplexity |"
    sep = "|---|---|---|"
    if oracle:
        head += " oracle top-k perplexity |"
        sep += "---|"
    rows = [head, sep, f"| dense | {e * s} | {dense['ppl']:.2f} |" + (f" {dense['ppl']:.2f} |" if oracle else "")]
    for k in range(1, e + 1):
        r = res[f"router top-{k}"]
        row = f"| {k} | {k * s} | {r['ppl']:.2f} |"
        if oracle:
            o = res.get(f"oracle top-{k}", r if k == e else None)
            row += f" {o['ppl']:.2f} |" if o else " |"
        rows.append(row)
    d = report["data"]
    return (f"Held-out perplexity on {d['reply_tokens']} reply tokens of {d['prompts']} ShareGPT {d['split']} "
            f"conversations (max {d['max_tokens']} tokens each; dense NLL {dense['nll']:.3f} +- "
            f"{dense['nll_stderr']:.3f}):\n\n" + "\n".join(rows))
